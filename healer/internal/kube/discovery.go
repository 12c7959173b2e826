package kube

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"strconv"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"

	"github.com/dnspulse/dnspulse/healer/api"
	"github.com/dnspulse/dnspulse/healer/internal/replica"
)

// discovery keeps the CoreDNS pods as replica targets. The snapshot is rebuilt on informer
// events, not on every Targets call, because the engine asks far more often than pods
// change; each rebuild also goes to the replacement watcher and wakes the subscribers.
type discovery struct {
	inf          *watches
	pulsePort    int
	replacements *replacements
	log          *slog.Logger

	startOnce sync.Once
	synced    chan struct{}

	mu          sync.Mutex
	targets     []replica.Target
	warned      map[types.UID]bool // pods whose bad annotation was already logged
	subscribers []chan struct{}
}

func newDiscovery(inf *watches, pulsePort int, replacements *replacements, log *slog.Logger) (*discovery, error) {
	d := &discovery{inf: inf, pulsePort: pulsePort, replacements: replacements, log: log,
		synced: make(chan struct{}), warned: map[types.UID]bool{}}
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { d.rebuild() },
		UpdateFunc: func(any, any) { d.rebuild() },
		DeleteFunc: func(any) { d.rebuild() },
	}
	if _, err := inf.podInformer.AddEventHandler(handler); err != nil {
		return nil, fmt.Errorf("pod informer handler: %w", err)
	}
	if _, err := inf.sliceInf.AddEventHandler(handler); err != nil {
		return nil, fmt.Errorf("endpointslice informer handler: %w", err)
	}
	if inf.leaseInformer != nil {
		if _, err := inf.leaseInformer.AddEventHandler(handler); err != nil {
			return nil, fmt.Errorf("lease informer handler: %w", err)
		}
	}
	return d, nil
}

// subscribe returns a channel that gets a token after every rebuild (buffered: a rebuild
// never blocks on a slow subscriber). Call before Run.
func (d *discovery) subscribe() <-chan struct{} {
	ch := make(chan struct{}, 1)
	d.mu.Lock()
	d.subscribers = append(d.subscribers, ch)
	d.mu.Unlock()
	return ch
}

// Run starts the informers (once, however often it is called: the engine and Mode.Run
// both may), closes ready when the caches are synced and returns when ctx ends.
func (d *discovery) Run(ctx context.Context, ready chan<- struct{}) error {
	d.startOnce.Do(func() {
		d.inf.start(ctx.Done())
		go d.waitSynced(ctx)
	})
	select {
	case <-d.synced:
		if ready != nil {
			close(ready)
		}
	case <-ctx.Done():
		return fmt.Errorf("pods in namespace %s (selector %q) and endpointslices of service %s/%s: caches not synced before shutdown: %w",
			d.inf.namespace, d.inf.selector, d.inf.namespace, d.inf.service, ctx.Err())
	}
	<-ctx.Done()
	return nil
}

func (d *discovery) waitSynced(ctx context.Context) {
	// Log while waiting: an RBAC or connectivity problem otherwise looks like a silent hang.
	go func() {
		t := time.NewTicker(10 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-d.synced:
				return
			case <-t.C:
				d.log.Warn("still waiting for informer caches (check the apiserver address and RBAC: pods list/watch, endpointslices list/watch)",
					"namespace", d.inf.namespace, "selector", d.inf.selector.String(), "service", d.inf.service)
			}
		}
	}()
	if !cache.WaitForCacheSync(ctx.Done(), d.inf.synced()...) {
		return
	}
	d.rebuild()
	d.log.Info("informer caches synced", "namespace", d.inf.namespace, "selector", d.inf.selector.String(),
		"service", d.inf.service, "replicas", len(d.Targets()))
	close(d.synced)
}

// Targets returns the replicas, sorted by name.
func (d *discovery) Targets() []replica.Target {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]replica.Target(nil), d.targets...)
}

func (d *discovery) rebuild() {
	// Listing under the lock: two handlers rebuilding at once must not let the older
	// listing overwrite the newer snapshot.
	d.mu.Lock()
	defer d.mu.Unlock()
	pods, err := d.inf.pods.list()
	if err != nil {
		d.log.Error("listing cached pods", "namespace", d.inf.namespace, "err", err)
		return
	}
	slices, err := d.inf.slices.List(labels.Everything())
	if err != nil {
		d.log.Error("listing cached endpointslices", "namespace", d.inf.namespace, "err", err)
		return
	}
	ports, defPort := dnsPorts(slices)

	targets := make([]replica.Target, 0, len(pods))
	for _, p := range pods {
		if p.Status.PodIP == "" || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		port, ok := ports[p.Status.PodIP]
		if !ok {
			port = defPort
		}
		t := replica.Target{
			Name:            p.Name,
			DNSAddr:         net.JoinHostPort(p.Status.PodIP, strconv.Itoa(int(port))),
			PulseAddr:       d.pulseAddr(p),
			Node:            p.Spec.NodeName,
			Drained:         conditionIs(p, api.ConditionServing, corev1.ConditionFalse),
			ContainersReady: conditionIs(p, corev1.ContainersReady, corev1.ConditionTrue) && p.DeletionTimestamp == nil,
			Terminating:     p.DeletionTimestamp != nil,
			ClusterView:     true,
		}
		// A pod the healer drained is not Ready (its gate is False) but is still meant to
		// serve as far as its judgment goes: it is the same replica, only without traffic.
		t.Ready = podReady(p) || t.Drained && t.ContainersReady
		if ref := metav1.GetControllerOf(p); ref != nil {
			t.Owner = string(ref.UID)
		}
		t.LeaseKnown, t.LeaseFresh = d.lease(p.Name)
		t.Remediable, t.Why = remediable(p)
		targets = append(targets, t)
	}
	sort.Slice(targets, func(i, j int) bool { return targets[i].Name < targets[j].Name })
	d.targets = targets
	d.replacements.check(pods)
	for _, ch := range d.subscribers {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// lease reads the replica's pulse Lease: known when there is one, fresh when it was
// renewed within its duration and its verdict is not degraded.
func (d *discovery) lease(pod string) (known, fresh bool) {
	if d.inf.leases == nil {
		return false, false
	}
	l, err := d.inf.leases.Get(pod)
	if err != nil {
		return false, false
	}
	return true, leaseFresh(l, time.Now())
}

// leaseFresh says whether a pulse Lease was renewed within its duration (3 intervals) and
// does not say degraded.
func leaseFresh(l *coordinationv1.Lease, now time.Time) bool {
	if l.Spec.RenewTime == nil || l.Spec.LeaseDurationSeconds == nil {
		return false
	}
	if now.Sub(l.Spec.RenewTime.Time) > time.Duration(*l.Spec.LeaseDurationSeconds)*time.Second {
		return false
	}
	return l.Annotations[AnnotationLeaseVerdict] != "degraded"
}

// AnnotationLeaseVerdict is where pulse writes its verdict on its Lease.
const AnnotationLeaseVerdict = "dnspulse.io/verdict"

// conditionIs says whether the pod has condition t with status s.
func conditionIs(p *corev1.Pod, t corev1.PodConditionType, s corev1.ConditionStatus) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == t {
			return c.Status == s
		}
	}
	return false
}

func (d *discovery) pulseAddr(p *corev1.Pod) string {
	port := d.pulsePort
	if v, ok := p.Annotations[api.AnnotationPulsePort]; ok {
		n, err := strconv.Atoi(v)
		if err == nil && n > 0 && n <= 65535 {
			port = n
		} else if !d.warned[p.UID] {
			d.warned[p.UID] = true
			d.log.Warn("bad pulse port annotation, using --pulse-port", "pod", p.Namespace+"/"+p.Name,
				"annotation", api.AnnotationPulsePort, "value", v, "pulsePort", port)
		}
	}
	return net.JoinHostPort(p.Status.PodIP, strconv.Itoa(port))
}

// dnsPorts finds the DNS port per endpoint address, and one for pods not in any slice
// (yet): the slice's port named "dns" with protocol UDP, else its only UDP port, else 53.
func dnsPorts(slices []*discoveryv1.EndpointSlice) (map[string]int32, int32) {
	byAddr := map[string]int32{}
	def := int32(53)
	defSet := false
	for _, s := range slices {
		port, ok := sliceDNSPort(s)
		if !ok {
			continue
		}
		if !defSet {
			def, defSet = port, true
		}
		for _, ep := range s.Endpoints {
			for _, a := range ep.Addresses {
				byAddr[a] = port
			}
		}
	}
	return byAddr, def
}

func sliceDNSPort(s *discoveryv1.EndpointSlice) (int32, bool) {
	var udp []discoveryv1.EndpointPort
	for _, p := range s.Ports {
		if p.Port == nil || (p.Protocol != nil && *p.Protocol != corev1.ProtocolUDP) {
			continue
		}
		if p.Name != nil && *p.Name == "dns" {
			return *p.Port, true
		}
		udp = append(udp, p)
	}
	if len(udp) == 1 {
		return *udp[0].Port, true
	}
	return 0, false
}

func podReady(p *corev1.Pod) bool {
	if p.DeletionTimestamp != nil {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// remediable allows only pods whose controller recreates them: evicting anything else
// would remove a replica for good.
func remediable(p *corev1.Pod) (bool, string) {
	ref := metav1.GetControllerOf(p)
	if ref == nil {
		return false, "pod has no controller (not created by a ReplicaSet or DaemonSet)"
	}
	if ref.APIVersion == "apps/v1" && (ref.Kind == "ReplicaSet" || ref.Kind == "DaemonSet") {
		return true, ""
	}
	return false, fmt.Sprintf("pod is controlled by %s %s (%s), not by a ReplicaSet or DaemonSet", ref.Kind, ref.Name, ref.APIVersion)
}
