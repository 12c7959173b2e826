package heal

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	eventsv1 "k8s.io/api/events/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"

	"github.com/dnspulse/dnspulse/e2e/cluster"
)

// ConditionServing is the readiness-gate condition the healer owns.
const ConditionServing = corev1.PodConditionType("dnspulse.io/serving")

// PodRecord is what the Observer saw of one CoreDNS pod, with the local time of each first sighting.
type PodRecord struct {
	Name       string
	UID        types.UID
	Owner      types.UID // controlling ReplicaSet
	IP         string
	FirstSeen  time.Time
	Ready      time.Time // first Ready=True
	GateFalse  time.Time // first dnspulse.io/serving=False
	InSlice    time.Time // first ready endpoint in the kube-dns EndpointSlice
	Drained    time.Time // first time out of the slice's ready endpoints after having been in
	Terminated time.Time // first deletionTimestamp
	Gone       time.Time // deleted from the API
	Events     []Event
	// ReadyChanges are the Ready condition's transitions after the first sighting, for the report
	// of a failed test ("+" became Ready, "-" not Ready).
	ReadyChanges []Transition
	// Gate is every change of the dnspulse.io/serving condition seen: What is its status and
	// reason ("False DNSReplicaDegraded"), Seen when the Observer saw it.
	Gate     []Transition
	podReady bool
}

// Transition is a change the Observer saw, with its local time.
type Transition struct {
	Seen time.Time
	What string
}

// Event is a Kubernetes Event on a pod, with the local time the Observer received it.
type Event struct {
	Seen     time.Time
	Type     string
	Reason   string
	Note     string
	Reporter string
	// Count is the occurrence: 1, or the Event's Series.Count.
	Count int32
}

// Observer watches the CoreDNS pods, the kube-dns EndpointSlices and the Events in the DNS
// namespace with informers, so that no transition is missed between two polls (the readiness gate
// is False only for the moment between drain and eviction).
type Observer struct {
	mu      sync.Mutex
	pdb     []Transition // the coredns PodDisruptionBudget's status, each change
	pods    map[types.UID]*PodRecord
	byName  map[string]*PodRecord
	inSlice map[types.UID]bool // ready in the kube-dns EndpointSlice now
	changed chan struct{}
	stop    context.CancelFunc
}

// Observe starts an Observer; Close stops it.
func Observe(ctx context.Context, c *cluster.Cluster) (*Observer, error) {
	ctx, cancel := context.WithCancel(ctx)
	o := &Observer{pods: map[types.UID]*PodRecord{}, byName: map[string]*PodRecord{}, inSlice: map[types.UID]bool{}, changed: make(chan struct{}), stop: cancel}
	f := informers.NewSharedInformerFactoryWithOptions(c.Client, 0, informers.WithNamespace(DNSNamespace))
	pods := f.Core().V1().Pods().Informer()
	slices := f.Discovery().V1().EndpointSlices().Informer()
	events := f.Events().V1().Events().Informer()
	pdbs := f.Policy().V1().PodDisruptionBudgets().Informer()
	handler := func(fn func(obj any, deleted bool)) cache.ResourceEventHandler {
		return cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { fn(obj, false) },
			UpdateFunc: func(_, obj any) { fn(obj, false) },
			DeleteFunc: func(obj any) {
				if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
					obj = d.Obj
				}
				fn(obj, true)
			},
		}
	}
	for _, reg := range []struct {
		inf cache.SharedIndexInformer
		fn  func(any, bool)
	}{{pods, o.onPod}, {slices, o.onSlice}, {events, o.onEvent}, {pdbs, o.onPDB}} {
		if _, err := reg.inf.AddEventHandler(handler(reg.fn)); err != nil {
			cancel()
			return nil, err
		}
	}
	f.Start(ctx.Done())
	for typ, ok := range f.WaitForCacheSync(ctx.Done()) {
		if !ok {
			cancel()
			return nil, fmt.Errorf("informer for %v did not sync", typ)
		}
	}
	return o, nil
}

// Close stops the informers.
func (o *Observer) Close() { o.stop() }

func (o *Observer) notify() {
	close(o.changed)
	o.changed = make(chan struct{})
}

func (o *Observer) record(p *corev1.Pod) *PodRecord {
	r := o.pods[p.UID]
	if r == nil {
		r = &PodRecord{Name: p.Name, UID: p.UID, FirstSeen: time.Now()}
		if ref := metav1.GetControllerOf(p); ref != nil {
			r.Owner = ref.UID
		}
		if old := o.byName[p.Name]; old != nil && old.UID == types.UID("name:"+p.Name) {
			r.Events = old.Events // Events that came before the pod
		}
		// The slice informer may have delivered the pod's endpoint before the pod informer the pod.
		if o.inSlice[p.UID] {
			r.InSlice = r.FirstSeen
		}
		o.pods[p.UID] = r
		o.byName[p.Name] = r
	}
	return r
}

func (o *Observer) onPod(obj any, deleted bool) {
	p, ok := obj.(*corev1.Pod)
	if !ok || p.Labels["k8s-app"] != "kube-dns" {
		return
	}
	now := time.Now()
	o.mu.Lock()
	defer o.mu.Unlock()
	r := o.record(p)
	if p.Status.PodIP != "" {
		r.IP = p.Status.PodIP
	}
	wasReady := r.podReady
	r.podReady = false
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue {
			r.podReady = true
			if r.Ready.IsZero() {
				r.Ready = now
			}
		}
		if cond.Type == ConditionServing && cond.Status == corev1.ConditionFalse && r.GateFalse.IsZero() {
			r.GateFalse = now
		}
		if cond.Type == ConditionServing {
			what := string(cond.Status) + " " + cond.Reason
			if n := len(r.Gate); n == 0 || r.Gate[n-1].What != what {
				r.Gate = append(r.Gate, Transition{Seen: now, What: what})
			}
		}
	}
	if p.DeletionTimestamp != nil && r.Terminated.IsZero() {
		r.Terminated = now
	}
	if deleted && r.Gone.IsZero() {
		r.Gone = now
		r.podReady = false
	}
	if r.podReady != wasReady && !r.Ready.IsZero() {
		what := "-"
		if r.podReady {
			what = "+"
		}
		r.ReadyChanges = append(r.ReadyChanges, Transition{Seen: now, What: what})
	}
	o.notify()
}

func (o *Observer) onPDB(obj any, deleted bool) {
	b, ok := obj.(*policyv1.PodDisruptionBudget)
	if !ok || deleted || b.Name != "coredns" {
		return
	}
	st := b.Status
	what := fmt.Sprintf("generation %d observed %d, healthy %d of %d expected (desired %d), disruptions allowed %d, disrupted pods %d",
		b.Generation, st.ObservedGeneration, st.CurrentHealthy, st.ExpectedPods, st.DesiredHealthy, st.DisruptionsAllowed, len(st.DisruptedPods))
	o.mu.Lock()
	defer o.mu.Unlock()
	if n := len(o.pdb); n > 0 && o.pdb[n-1].What == what {
		return
	}
	o.pdb = append(o.pdb, Transition{Seen: time.Now(), What: what})
	o.notify()
}

// PDBChanges are the coredns PodDisruptionBudget's status changes seen since since.
func (o *Observer) PDBChanges(since time.Time) []Transition {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []Transition
	for _, t := range o.pdb {
		if !t.Seen.Before(since) {
			out = append(out, t)
		}
	}
	return out
}

func (o *Observer) onSlice(obj any, deleted bool) {
	s, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok || s.Labels[discoveryv1.LabelServiceName] != "kube-dns" {
		return
	}
	now := time.Now()
	ready := map[types.UID]bool{}
	if !deleted {
		for _, ep := range s.Endpoints {
			if ep.TargetRef != nil && ep.TargetRef.Kind == "Pod" && (ep.Conditions.Ready == nil || *ep.Conditions.Ready) {
				ready[ep.TargetRef.UID] = true
			}
		}
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.inSlice = ready
	for uid, r := range o.pods {
		if ready[uid] {
			if r.InSlice.IsZero() {
				r.InSlice = now
			}
		} else if !r.InSlice.IsZero() && r.Drained.IsZero() {
			r.Drained = now
		}
	}
	o.notify()
}

func (o *Observer) onEvent(obj any, deleted bool) {
	e, ok := obj.(*eventsv1.Event)
	if !ok || deleted || e.Regarding.Kind != "Pod" {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	r := o.byName[e.Regarding.Name]
	if r == nil {
		// An Event may arrive before the pod's informer delivered it, or after it went away; keep it
		// under its name.
		r = &PodRecord{Name: e.Regarding.Name, UID: types.UID("name:" + e.Regarding.Name), FirstSeen: time.Now()}
		o.byName[r.Name] = r
	}
	// client-go's events.k8s.io recorder folds an Event that recurs on the same object with the
	// same reason into a series of the first one (same note, Series.Count grows): a new count is a
	// new occurrence, seen now.
	count := int32(1)
	if e.Series != nil {
		count = e.Series.Count
	}
	for _, have := range r.Events {
		if have.Reason == e.Reason && have.Note == e.Note && have.Count == count {
			return // an update of an occurrence we already have
		}
	}
	r.Events = append(r.Events, Event{Seen: time.Now(), Type: e.Type, Reason: e.Reason, Note: e.Note, Reporter: e.ReportingController, Count: count})
	o.notify()
}

func (r *PodRecord) copy() PodRecord {
	cp := *r
	cp.Events = append([]Event(nil), r.Events...)
	cp.ReadyChanges = append([]Transition(nil), r.ReadyChanges...)
	cp.Gate = append([]Transition(nil), r.Gate...)
	return cp
}

// Pod returns a copy of the record of the pod named name.
func (o *Observer) Pod(name string) (PodRecord, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	r := o.byName[name]
	if r == nil {
		return PodRecord{}, false
	}
	return r.copy(), true
}

// ReadyPods are the CoreDNS pods that are Ready, not terminating, and ready in the EndpointSlice,
// sorted by name.
func (o *Observer) ReadyPods() []PodRecord {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []PodRecord
	for _, r := range o.pods {
		if r.podReady && r.Terminated.IsZero() && r.Gone.IsZero() && o.inSlice[r.UID] && r.IP != "" {
			out = append(out, r.copy())
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// All returns copies of every record, pods first seen first.
func (o *Observer) All() []PodRecord {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []PodRecord
	for _, r := range o.byName {
		out = append(out, r.copy())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].FirstSeen.Before(out[j].FirstSeen) })
	return out
}

// Wait calls cond on every change the informers deliver (and at least every 200 ms, for
// conditions on other sources such as the audit log) until it returns true or timeout passes.
func (o *Observer) Wait(ctx context.Context, timeout time.Duration, what string, cond func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		o.mu.Lock()
		ch := o.changed
		o.mu.Unlock()
		if cond() {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting %s for %s: %w", timeout, what, ctx.Err())
		case <-ch:
		case <-time.After(200 * time.Millisecond):
		}
	}
}
