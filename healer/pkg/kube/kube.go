// Package kube is the healer's Kubernetes mode: it finds the CoreDNS replicas with
// informers (Discovery), replaces a degraded one through the Eviction API (Remediator),
// records verdicts and actions as Events on the pod (Notifier), rotates the freshness
// canary (FreshnessSource) and takes part in leader election so that only one healer acts.
//
// Least RBAC this package needs (the chart grants exactly this):
//
//	# in the CoreDNS namespace (--namespace)
//	""                 pods              get, list, watch
//	""                 pods/eviction     create
//	""                 pods/status       patch        (only with --readiness-gate: drain before
//	                                                   eviction, and set the gate True on new pods)
//	""                 pods              delete       (only with --allow-delete; not granted otherwise)
//	discovery.k8s.io   endpointslices    list, watch
//	events.k8s.io      events            create, patch
//	# in the canary namespace (--canary-namespace)
//	""                 services          get, update  (resourceNames: [<--canary-service>])
//	""                 services          create       (create cannot be limited by name)
//	# in the leader election namespace (--leader-elect-namespace)
//	coordination.k8s.io leases           get, create, update
//
// The delete verb is listed for completeness: without --allow-delete this package never
// deletes, and a chart that does not set it should not grant it. smoke_test.go runs the
// package against a real kube-apiserver as a user holding exactly these rules (smoke.sh).
package kube

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"

	"github.com/dnspulse/dnspulse/healer/pkg/replica"
)

// Config is what Kubernetes mode needs from the healer's options.
type Config struct {
	// Kubeconfig is a kubeconfig file; empty means in-cluster config.
	Kubeconfig string
	// Namespace and Selector find the CoreDNS pods; Service is the DNS Service whose
	// EndpointSlices give the DNS port.
	Namespace, Selector, Service string
	// PulsePort is the default pulse listener port (pod annotation dnspulse.io/pulse-port overrides).
	PulsePort int

	// Canary enables the freshness canary: an ExternalName Service the healer rotates.
	Canary                         bool
	CanaryNamespace, CanaryService string
	CanaryInterval, CanaryMaxLag   time.Duration
	// ClusterDomain is the cluster's DNS domain for the canary question (default cluster.local).
	ClusterDomain string

	// ReadinessGate sets the pod condition dnspulse.io/serving=False before evicting.
	ReadinessGate bool
	// AllowDelete permits DELETE when the Eviction API itself is unavailable (404/405); never on 429.
	AllowDelete bool

	// LeaderElect enables leader election; when false this healer always acts as leader.
	LeaderElect                            bool
	LeaderElectNamespace, LeaderElectLease string
	// Identity is this healer's leader election identity; default $POD_NAME, else hostname,
	// each with a random suffix.
	Identity string
	// LeaseDuration, RenewDeadline and RetryPeriod tune leader election; zero means the
	// client-go defaults (15s, 10s, 2s). A crashed leader is replaced after LeaseDuration.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration

	// Audit, if set, receives events the engine does not see (leader changes, replacement
	// ready, canary rotation failures). It must be safe for concurrent use.
	Audit func(event string, fields map[string]any)
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Mode is Kubernetes mode, built by New and driven by Run.
type Mode struct {
	cfg      Config
	client   kubernetes.Interface
	clock    clock.WithTicker
	log      *slog.Logger
	identity string
	// baseCtx outlives single remediations: replacement watches run on it.
	baseCtx context.Context

	leader    atomic.Bool
	discovery *discovery
	remed     *remediator
	notifier  *notifier
	canary    *canary

	broadcaster events.EventBroadcaster
}

const (
	// ConditionServing is the readiness gate condition type set to False before evicting.
	ConditionServing = "dnspulse.io/serving"
	// AnnotationPulsePort overrides --pulse-port per pod.
	AnnotationPulsePort = "dnspulse.io/pulse-port"
	// ReportingController names this component in Events.
	ReportingController = "dnspulse-healer"
)

// New builds Kubernetes mode from in-cluster config or cfg.Kubeconfig. It does not contact
// the apiserver; Run and Discovery().Run do.
func New(ctx context.Context, cfg Config) (*Mode, error) {
	rc, err := restConfig(cfg.Kubeconfig)
	if err != nil {
		return nil, err
	}
	rc.UserAgent = ReportingController
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client for %s: %w", rc.Host, err)
	}
	broadcaster := events.NewBroadcaster(&events.EventSinkImpl{Interface: client.EventsV1()})
	m, err := NewWithClient(ctx, cfg, client, broadcaster.NewRecorder(scheme.Scheme, ReportingController))
	if err != nil {
		return nil, err
	}
	m.broadcaster = broadcaster
	return m, nil
}

// NewWithClient builds Kubernetes mode on a given client and event recorder (tests use
// fake.NewClientset and events.NewFakeRecorder). Events reach the API only through the
// recorder given here.
func NewWithClient(ctx context.Context, cfg Config, client kubernetes.Interface, recorder events.EventRecorder) (*Mode, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ClusterDomain == "" {
		cfg.ClusterDomain = "cluster.local"
	}
	if cfg.CanaryNamespace == "" {
		cfg.CanaryNamespace = cfg.Namespace
	}
	if cfg.LeaderElectNamespace == "" {
		cfg.LeaderElectNamespace = cfg.CanaryNamespace
	}
	if cfg.LeaderElectLease == "" {
		cfg.LeaderElectLease = "dnspulse-healer"
	}
	if cfg.LeaseDuration == 0 {
		cfg.LeaseDuration = leaseDuration
	}
	if cfg.RenewDeadline == 0 {
		cfg.RenewDeadline = renewDeadline
	}
	if cfg.RetryPeriod == 0 {
		cfg.RetryPeriod = retryPeriod
	}
	if cfg.LeaderElect && !(cfg.LeaseDuration > cfg.RenewDeadline && float64(cfg.RenewDeadline) > 1.2*float64(cfg.RetryPeriod)) {
		return nil, fmt.Errorf("kubernetes mode: leader election needs lease duration (%v) > renew deadline (%v) > 1.2 x retry period (%v)",
			cfg.LeaseDuration, cfg.RenewDeadline, cfg.RetryPeriod)
	}
	if cfg.Identity == "" {
		cfg.Identity = defaultIdentity()
	}
	m := &Mode{
		cfg:      cfg,
		client:   client,
		clock:    clock.RealClock{},
		log:      cfg.Logger.With("mode", "kubernetes"),
		identity: cfg.Identity,
		baseCtx:  ctx,
	}
	if !cfg.LeaderElect {
		m.leader.Store(true)
	}
	disc, err := newDiscovery(m)
	if err != nil {
		return nil, err
	}
	m.discovery = disc
	m.notifier = &notifier{recorder: recorder, namespace: cfg.Namespace, discovery: disc}
	m.remed = newRemediator(m)
	if cfg.Canary {
		m.canary = newCanary(m)
	}
	return m, nil
}

func (c Config) validate() error {
	var errs []error
	if c.Namespace == "" {
		errs = append(errs, errors.New("kubernetes mode: --namespace must not be empty"))
	}
	if c.Service == "" {
		errs = append(errs, errors.New("kubernetes mode: --service must not be empty"))
	}
	if c.PulsePort < 0 || c.PulsePort > 65535 {
		errs = append(errs, fmt.Errorf("kubernetes mode: --pulse-port %d out of range 0..65535", c.PulsePort))
	}
	if c.Canary {
		if c.CanaryService == "" {
			errs = append(errs, errors.New("kubernetes mode: --canary-service must not be empty with --canary"))
		}
		if c.CanaryInterval <= 0 {
			errs = append(errs, fmt.Errorf("kubernetes mode: --canary-interval %v must be positive", c.CanaryInterval))
		}
		if c.CanaryMaxLag <= 0 {
			errs = append(errs, fmt.Errorf("kubernetes mode: --canary-max-lag %v must be positive", c.CanaryMaxLag))
		}
	}
	return errors.Join(errs...)
}

// restConfig loads the kubeconfig file when given, else the in-cluster config.
func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("--kubeconfig %s: %w", kubeconfig, err)
		}
		return rc, nil
	}
	rc, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("in-cluster config (give --kubeconfig outside a cluster): %w", err)
	}
	return rc, nil
}

func defaultIdentity() string {
	base := os.Getenv("POD_NAME")
	if base == "" {
		base, _ = os.Hostname()
	}
	if base == "" {
		base = "dnspulse-healer"
	}
	return base + "_" + randomSuffix(4)
}

func randomSuffix(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on supported platforms
	return hex.EncodeToString(b)
}

// Discovery yields the CoreDNS pods as targets.
func (m *Mode) Discovery() replica.Discovery { return m.discovery }

// Remediator evicts pods (leader only).
func (m *Mode) Remediator() replica.Remediator { return m.remed }

// Notifier records Events on the pods.
func (m *Mode) Notifier() replica.Notifier { return m.notifier }

// Freshness is the canary, or nil when the canary is off.
func (m *Mode) Freshness() replica.FreshnessSource {
	if m.canary == nil {
		return nil
	}
	return m.canary
}

// IsLeader says whether this healer currently holds the lease (always true without
// leader election).
func (m *Mode) IsLeader() bool { return m.leader.Load() }

// Identity is this healer's leader election identity.
func (m *Mode) Identity() string { return m.identity }

// Run starts the informers, the event sink, leader election and (while leading) the canary
// rotation, and returns when ctx ends. It returns an error only when something cannot start.
func (m *Mode) Run(parent context.Context) error {
	if m.broadcaster != nil {
		if err := m.broadcaster.StartRecordingToSinkWithContext(parent); err != nil {
			return fmt.Errorf("starting the event sink: %w", err)
		}
		defer m.broadcaster.Shutdown()
	}
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 2)
	wg.Go(func() {
		if err := m.discovery.Run(ctx, nil); err != nil {
			errc <- err
		}
	})
	wg.Go(func() { m.openGates(ctx) })
	if m.canary != nil {
		// Followers read the Service so that their view of fresh answers follows the leader's.
		wg.Go(func() { m.canary.follow(ctx) })
	}
	if m.cfg.LeaderElect {
		wg.Go(func() {
			if err := m.runLeaderElection(ctx); err != nil {
				errc <- err
			}
		})
	} else {
		m.audit("leader", map[string]any{"identity": m.identity, "leader": true, "why": "leader election disabled"})
		if m.canary != nil {
			wg.Go(func() { m.canary.rotate(ctx) })
		}
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		cancel() // one part failed to start: stop the others rather than run half a healer
	}
	wg.Wait()
	if parent.Err() != nil {
		return nil // shutdown, not failure: parts that stopped early say so because of it
	}
	return err
}

func (m *Mode) audit(event string, fields map[string]any) {
	if m.cfg.Audit != nil {
		m.cfg.Audit(event, fields)
	}
}
