// Package kube is the healer's Kubernetes mode: it finds the CoreDNS replicas with
// informers (discovery), replaces a degraded one through the Eviction API (remediator),
// records states and actions as Events on the pod (notifier), rotates the freshness
// canary (canary), opens the readiness gate of new pods (gateOpener) and takes part in
// leader election so that only one healer acts (elector). Mode builds each of them with
// exactly what it uses: the client, the listers, the clock, the logger, the notifier.
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
//	coordination.k8s.io leases           get, update  (resourceNames: [<lease>, <lease>-memory])
//	coordination.k8s.io leases           create       (create cannot be limited by name)
//	# in the pulse Lease namespace (--pulse-lease-namespace), when given
//	coordination.k8s.io leases           get, list, watch
//	coordination.k8s.io leases           delete       (the Leases of pods that are gone: leasegc.go)
//	# in the healer's own namespace ($POD_NAMESPACE): Events on its own pod
//	events.k8s.io      events            create, patch
//
// The delete verb is listed for completeness: without --allow-delete this package never
// deletes, and a chart that does not set it should not grant it. smoke_test.go runs the
// package against a real kube-apiserver as a user holding exactly these rules (smoke.sh).
package kube

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"sync"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"

	"github.com/dnspulse/dnspulse/healer/api"
	"github.com/dnspulse/dnspulse/healer/audit"
	"github.com/dnspulse/dnspulse/healer/internal/config"
	"github.com/dnspulse/dnspulse/healer/internal/replica"
)

// AuditFunc receives the events the engine does not see (leader changes, replacement
// ready, canary write failures). It must be safe for concurrent use.
type AuditFunc func(event audit.Event, fields map[string]any)

// Options are what Kubernetes mode is handed besides its configuration section.
type Options struct {
	// PulsePort is the default pulse listener port (--pulse-port; the pod annotation
	// dnspulse.io/pulse-port overrides it).
	PulsePort int
	// Identity is this healer's leader election identity; default $POD_NAME, else the
	// host name, each with a random suffix.
	Identity string
	Audit    AuditFunc
	Logger   *slog.Logger
	// Clock defaults to the real clock (tests step a fake one).
	Clock clock.WithTicker
}

// Mode is Kubernetes mode, built by New and driven by Run.
type Mode struct {
	cfg      config.Kubernetes
	identity string

	leader      *leadership
	watches     *watches
	discovery   *discovery
	notifier    *notifier
	remediator  *remediator
	gates       *gateOpener
	canary      *canary
	elector     *elector
	memory      *memoryStore
	leaseGC     *leaseCollector // nil without --pulse-lease-namespace
	broadcaster events.EventBroadcaster
	log         *slog.Logger
	audit       AuditFunc
}

// New builds Kubernetes mode from in-cluster config or cfg.Kubeconfig. It does not contact
// the apiserver; Run and Discovery().Run do.
func New(ctx context.Context, cfg config.Kubernetes, opts Options) (*Mode, error) {
	rc, err := restConfig(cfg.Kubeconfig)
	if err != nil {
		return nil, err
	}
	rc.UserAgent = api.ReportingController
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client for %s: %w", rc.Host, err)
	}
	broadcaster := events.NewBroadcaster(&events.EventSinkImpl{Interface: client.EventsV1()})
	m, err := NewWithClient(ctx, cfg, opts, client, broadcaster.NewRecorder(scheme.Scheme, api.ReportingController))
	if err != nil {
		return nil, err
	}
	m.broadcaster = broadcaster
	return m, nil
}

// NewWithClient builds Kubernetes mode on a given client and event recorder (tests use
// fake.NewClientset and events.NewFakeRecorder). Events reach the API only through the
// recorder given here. cfg is taken as package config validated and completed it.
func NewWithClient(ctx context.Context, cfg config.Kubernetes, opts Options, client kubernetes.Interface, recorder events.EventRecorder) (*Mode, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	if opts.Audit == nil {
		opts.Audit = func(audit.Event, map[string]any) {}
	}
	if opts.Identity == "" {
		opts.Identity = defaultIdentity()
	}
	log := opts.Logger.With("mode", "kubernetes")
	inf, err := newWatches(client, cfg.Namespace, cfg.Selector, cfg.Service)
	if err != nil {
		return nil, err
	}
	if cfg.PulseLeaseNamespace != "" {
		inf.watchLeases(client, cfg.PulseLeaseNamespace)
	}
	leader := &leadership{}
	if !cfg.LeaderElection.Enabled {
		leader.set(true)
	}
	m := &Mode{cfg: cfg, identity: opts.Identity, leader: leader, watches: inf, log: log, audit: opts.Audit}
	m.notifier = &notifier{recorder: recorder, namespace: cfg.Namespace, pods: inf.pods, self: selfPod(), log: log}
	replacements := newReplacements(inf.pods, m.notifier, opts.Audit, opts.Clock, log)
	m.discovery, err = newDiscovery(inf, opts.PulsePort, replacements, log)
	if err != nil {
		return nil, err
	}
	gate := &gatePatcher{client: client, clock: opts.Clock}
	drains := newDrainSet()
	m.remediator = &remediator{
		client: client, pods: inf.pods, namespace: cfg.Namespace, leader: leader,
		leaseRef:      cfg.LeaderElection.Namespace + "/" + cfg.LeaderElection.Lease,
		identity:      opts.Identity,
		readinessGate: cfg.ReadinessGate, allowDelete: cfg.AllowDelete,
		gate: gate, notifier: m.notifier, replacements: replacements, baseCtx: ctx, log: log,
		drains: drains,
	}
	m.gates = &gateOpener{pods: inf.pods, changed: m.discovery.subscribe(), leader: leader, gate: gate,
		enabled: cfg.ReadinessGate, drains: drains, clock: opts.Clock, log: log}
	m.memory = &memoryStore{client: client, namespace: cfg.LeaderElection.Namespace, name: MemoryLeaseName(cfg.LeaderElection.Lease)}
	if inf.leases != nil {
		m.leaseGC = &leaseCollector{client: client, leases: inf.leases, leaseNS: cfg.PulseLeaseNamespace,
			podNamespace: cfg.Namespace, leader: leader, clock: opts.Clock, log: log}
	}
	if cfg.Canary.Enabled {
		m.canary = newCanary(client, cfg.Canary, cfg.ClusterDomain, leader, opts.Clock, log, opts.Audit)
	}
	if cfg.LeaderElection.Enabled {
		m.elector = &elector{client: client, cfg: cfg.LeaderElection, identity: opts.Identity, leader: leader,
			canary: m.canary, log: log, audit: opts.Audit}
	}
	return m, nil
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

// selfPod is a reference to the healer's own pod, from the downward API, or nil.
func selfPod() *corev1.Pod {
	name, ns := os.Getenv("POD_NAME"), os.Getenv("POD_NAMESPACE")
	if name == "" || ns == "" {
		return nil
	}
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
}

func defaultIdentity() string {
	base := os.Getenv("POD_NAME")
	if base == "" {
		base, _ = os.Hostname()
	}
	if base == "" {
		base = api.ReportingController
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
func (m *Mode) Remediator() replica.Remediator { return m.remediator }

// Drainer drains pods through the readiness gate, or is nil with --readiness-gate off.
func (m *Mode) Drainer() replica.Drainer {
	if !m.cfg.ReadinessGate {
		return nil
	}
	return m.remediator
}

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
func (m *Mode) IsLeader() bool { return m.leader.IsLeader() }

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
	wg.Go(func() { m.gates.run(ctx) })
	if m.leaseGC != nil {
		wg.Go(func() { m.leaseGC.run(ctx) })
	}
	if m.canary != nil {
		// Followers read the Service so that their view of fresh answers follows the leader's.
		wg.Go(func() { m.canary.follow(ctx) })
	}
	if m.elector != nil {
		wg.Go(func() {
			if err := m.elector.run(ctx); err != nil {
				errc <- err
			}
		})
	} else {
		m.audit(audit.EventLeader, map[string]any{"identity": m.identity, "leader": true, "why": "leader election disabled"})
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
