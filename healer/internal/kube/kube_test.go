package kube

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/events"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"

	"github.com/dnspulse/dnspulse/healer/api"
	"github.com/dnspulse/dnspulse/healer/audit"
	"github.com/dnspulse/dnspulse/healer/internal/config"
	"github.com/dnspulse/dnspulse/healer/internal/replica"
)

const testNS = "kube-system"

// harness is a Mode on a fake clientset with a fake clock and a fake event recorder.
type harness struct {
	t        *testing.T
	m        *Mode
	client   *fake.Clientset
	recorder *events.FakeRecorder
	clock    *clocktesting.FakeClock
	ctx      context.Context

	mu     sync.Mutex
	audits []map[string]any
}

// baseConfig is the defaults with the canary and leader election off.
func baseConfig() config.Kubernetes {
	k := config.Default().Kubernetes
	k.Namespace, k.Canary.Namespace, k.LeaderElection.Namespace = testNS, "dnspulse", "dnspulse"
	k.Canary.Enabled, k.LeaderElection.Enabled = false, false
	return k
}

// testOptions: pulse port 9155, identity healer-test, logs discarded.
func testOptions() Options {
	return Options{PulsePort: 9155, Identity: "healer-test", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

func newHarness(t *testing.T, cfg config.Kubernetes, objs ...runtime.Object) *harness {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	h := &harness{t: t, client: fake.NewClientset(objs...), recorder: events.NewFakeRecorder(100), ctx: ctx,
		clock: clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))}
	opts := testOptions()
	opts.Clock = h.clock
	opts.Audit = func(event audit.Event, fields map[string]any) {
		h.mu.Lock()
		defer h.mu.Unlock()
		f := map[string]any{"event": string(event)}
		for k, v := range fields {
			f[k] = v
		}
		h.audits = append(h.audits, f)
	}
	m, err := NewWithClient(ctx, cfg, opts, h.client, h.recorder)
	if err != nil {
		t.Fatalf("NewWithClient: %v", err)
	}
	h.m = m
	return h
}

// sync starts discovery and waits for the caches.
func (h *harness) sync() {
	h.t.Helper()
	ready := make(chan struct{})
	errc := make(chan error, 1)
	go func() { errc <- h.m.Discovery().Run(h.ctx, ready) }()
	select {
	case <-ready:
	case err := <-errc:
		h.t.Fatalf("discovery.Run: %v", err)
	case <-time.After(10 * time.Second):
		h.t.Fatal("caches not synced within 10s")
	}
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// events drains the fake recorder.
func (h *harness) events() []string {
	var out []string
	for {
		select {
		case e := <-h.recorder.Events:
			out = append(out, e)
		default:
			return out
		}
	}
}

// writes lists the mutating actions the code sent to the API.
func (h *harness) writes() []string {
	var out []string
	for _, a := range h.client.Actions() {
		switch a.GetVerb() {
		case "get", "list", "watch":
			continue
		}
		if isDryRunEviction(a) {
			continue // dryRun=All: the apiserver checks and stores nothing
		}
		r := a.GetResource().Resource
		if s := a.GetSubresource(); s != "" {
			r += "/" + s
		}
		out = append(out, a.GetVerb()+" "+r)
	}
	return out
}

var rsOwner = metav1.OwnerReference{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "coredns-abc", UID: "rs-uid", Controller: ptr.To(true)}

func pod(name, ip string, owner *metav1.OwnerReference) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNS, UID: types.UID("uid-" + name),
			Labels: map[string]string{"k8s-app": "kube-dns"}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip,
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
	}
	if owner != nil {
		p.OwnerReferences = []metav1.OwnerReference{*owner}
	}
	return p
}

func target(name, ip string) replica.Target {
	return replica.Target{Name: name, DNSAddr: ip + ":53", PulseAddr: ip + ":9155", Ready: true, Remediable: true}
}

func findTarget(ts []replica.Target, name string) (replica.Target, bool) {
	for _, t := range ts {
		if t.Name == name {
			return t, true
		}
	}
	return replica.Target{}, false
}

func TestDiscoveryPodsComeAndGo(t *testing.T) {
	stsOwner := metav1.OwnerReference{APIVersion: "apps/v1", Kind: "StatefulSet", Name: "dns", UID: "sts", Controller: ptr.To(true)}
	other := pod("not-dns", "10.0.0.9", &rsOwner)
	other.Labels = map[string]string{"app": "web"}
	noIP := pod("pending", "", &rsOwner)
	noIP.Status.Phase = corev1.PodPending
	h := newHarness(t, baseConfig(), pod("a", "10.0.0.1", &rsOwner), pod("sts-0", "10.0.0.2", &stsOwner), other, noIP)
	h.sync()

	ts := h.m.Discovery().Targets()
	if len(ts) != 2 || ts[0].Name != "a" || ts[1].Name != "sts-0" {
		t.Fatalf("targets = %+v, want a and sts-0 (sorted; not the unlabelled pod, not the pod without IP)", ts)
	}
	a := ts[0]
	if a.DNSAddr != "10.0.0.1:53" || a.PulseAddr != "10.0.0.1:9155" || !a.Ready || !a.Remediable {
		t.Errorf("target a = %+v", a)
	}
	if ts[1].Remediable || !strings.Contains(ts[1].Why, "StatefulSet") {
		t.Errorf("StatefulSet pod must not be remediable, with a reason: %+v", ts[1])
	}

	// The DNS Service's EndpointSlice names the port the pods serve DNS on.
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "kube-dns-x", Namespace: testNS, Labels: map[string]string{discoveryv1.LabelServiceName: "kube-dns"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.0.0.1"}}},
		Ports: []discoveryv1.EndpointPort{
			{Name: ptr.To("dns-tcp"), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To[int32](1053)},
			{Name: ptr.To("metrics"), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To[int32](9153)},
			{Name: ptr.To("dns"), Protocol: ptr.To(corev1.ProtocolUDP), Port: ptr.To[int32](1053)},
		},
	}
	if _, err := h.client.DiscoveryV1().EndpointSlices(testNS).Create(h.ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "DNS port from the EndpointSlice", func() bool {
		a, _ := findTarget(h.m.Discovery().Targets(), "a")
		return a.DNSAddr == "10.0.0.1:1053"
	})

	// A new pod with its own pulse port annotation appears.
	b := pod("b", "10.0.0.3", &metav1.OwnerReference{APIVersion: "apps/v1", Kind: "DaemonSet", Name: "dns", UID: "ds", Controller: ptr.To(true)})
	b.Annotations = map[string]string{api.AnnotationPulsePort: "9999"}
	if _, err := h.client.CoreV1().Pods(testNS).Create(h.ctx, b, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "pod b discovered", func() bool {
		tb, ok := findTarget(h.m.Discovery().Targets(), "b")
		return ok && tb.PulseAddr == "10.0.0.3:9999" && tb.Remediable && tb.DNSAddr == "10.0.0.3:1053"
	})

	// b starts terminating: watched, but not Ready.
	b, _ = h.client.CoreV1().Pods(testNS).Get(h.ctx, "b", metav1.GetOptions{})
	b.DeletionTimestamp = ptr.To(metav1.Now())
	if _, err := h.client.CoreV1().Pods(testNS).Update(h.ctx, b, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "terminating pod b not Ready", func() bool {
		tb, ok := findTarget(h.m.Discovery().Targets(), "b")
		return ok && !tb.Ready
	})

	// a goes away.
	if err := h.client.CoreV1().Pods(testNS).Delete(h.ctx, "a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "pod a removed", func() bool {
		_, ok := findTarget(h.m.Discovery().Targets(), "a")
		return !ok
	})
}

func TestDiscoveryBadSelector(t *testing.T) {
	cfg := baseConfig()
	cfg.Selector = "k8s-app in (("
	_, err := NewWithClient(context.Background(), cfg, testOptions(), fake.NewClientset(), nil)
	if err == nil || !strings.Contains(err.Error(), "--selector") {
		t.Fatalf("err = %v, want one naming --selector", err)
	}
}

// evictReactor answers create pods/eviction; on success it deletes the pod as the
// apiserver would.
func evictReactor(h *harness, err error) {
	h.client.PrependReactor("create", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() != "eviction" {
			return false, nil, nil
		}
		if err != nil {
			return true, nil, err
		}
		if isDryRunEviction(a) {
			return true, nil, nil
		}
		name := a.(k8stesting.CreateAction).GetObject().(interface{ GetName() string }).GetName()
		return true, nil, h.client.Tracker().Delete(corev1.SchemeGroupVersion.WithResource("pods"), testNS, name)
	})
}

func TestRemediateBlockedByPDB(t *testing.T) {
	for _, allowDelete := range []bool{false, true} {
		t.Run(fmt.Sprintf("allowDelete=%v", allowDelete), func(t *testing.T) {
			cfg := baseConfig()
			cfg.AllowDelete = allowDelete
			h := newHarness(t, cfg, pod("a", "10.0.0.1", &rsOwner))
			h.sync()
			evictReactor(h, errTooManyRequests(0))

			out := h.m.Remediator().Remediate(h.ctx, target("a", "10.0.0.1"), []string{"probe timeouts"}, false)
			// The server gave no Retry-After: the outcome carries none, and the engine's own
			// backoff (retry-backoff, doubling) decides when to ask again.
			if out.Result != "blocked" || out.Action != "evict" || out.RetryAfter != 0 {
				t.Fatalf("first refusal: %+v, want blocked with no RetryAfter", out)
			}
			for _, w := range h.writes() {
				if strings.HasPrefix(w, "delete") {
					t.Fatalf("a PDB refusal must never lead to a delete; writes: %v", h.writes())
				}
			}
			// A 429 without Retry-After is the budget's answer: asked once.
			if got := h.writes(); len(got) != 1 || got[0] != "create pods/eviction" {
				t.Errorf("writes = %v, want one eviction", got)
			}
			ev := strings.Join(h.events(), "\n")
			if !strings.Contains(ev, "Warning EvictionBlocked") {
				t.Errorf("no EvictionBlocked event; events: %s", ev)
			}
		})
	}
}

// The apiserver's transient 429 (the pod changed between its read and its delete; it says
// Retry-After 10) is asked again at once and the second attempt evicts.
func TestRemediateRetriesTransient429(t *testing.T) {
	h := newHarness(t, baseConfig(), pod("a", "10.0.0.1", &rsOwner))
	h.sync()
	evictReactor(h, nil)
	var refused atomic.Int32
	h.client.PrependReactor("create", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() != "eviction" || isDryRunEviction(a) || refused.Add(1) > 1 {
			return false, nil, nil
		}
		return true, nil, errTooManyRequests(10)
	})
	out := h.m.Remediator().Remediate(h.ctx, target("a", "10.0.0.1"), nil, false)
	if out.Result != "success" || !strings.Contains(out.Message, "attempt 1") {
		t.Fatalf("outcome %+v, want success after a second attempt", out)
	}
	if w := strings.Join(h.writes(), ","); w != "create pods/eviction,create pods/eviction" {
		t.Fatalf("writes = %s, want two evictions", w)
	}
}

// The budget's "no" to the eviction right after the healer's own drain (the pod still read
// Ready while the disruption controller already counted it out: seen in e2e): once the pod
// reads NotReady, the eviction is tried again, and passes as an unhealthy pod's.
func TestRemediateRetriesAfterItsOwnDrainRaced(t *testing.T) {
	cfg := baseConfig()
	cfg.ReadinessGate = true
	h := newHarness(t, cfg, gatedPod("a", "10.0.0.1"), gatedPod("b", "10.0.0.2"))
	h.sync()
	evictReactor(h, nil)
	var refused atomic.Int32
	h.client.PrependReactor("create", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() != "eviction" || isDryRunEviction(a) || refused.Add(1) > 1 {
			return false, nil, nil
		}
		// The kubelet's part: the gate False turns the pod NotReady, a little later.
		obj, err := h.client.Tracker().Get(corev1.SchemeGroupVersion.WithResource("pods"), testNS, "a")
		if err != nil {
			return true, nil, err
		}
		p := obj.(*corev1.Pod).DeepCopy()
		for i := range p.Status.Conditions {
			if p.Status.Conditions[i].Type == corev1.PodReady {
				p.Status.Conditions[i].Status = corev1.ConditionFalse
			}
		}
		if err := h.client.Tracker().Update(corev1.SchemeGroupVersion.WithResource("pods"), p, testNS); err != nil {
			return true, nil, err
		}
		return true, nil, errTooManyRequests(0)
	})
	out := h.m.Remediator().Remediate(h.ctx, target("a", "10.0.0.1"), nil, false)
	if out.Result != "success" || !strings.Contains(out.Message, "attempt 1") {
		t.Fatalf("outcome %+v, want success at the second attempt", out)
	}
	if n := refused.Load(); n != 2 {
		t.Fatalf("%d evictions, want 2", n)
	}
}

func TestRemediateBlockedUsesServerRetryAfter(t *testing.T) {
	h := newHarness(t, baseConfig(), pod("a", "10.0.0.1", &rsOwner))
	h.sync()
	evictReactor(h, errTooManyRequests(7))
	out := h.m.Remediator().Remediate(h.ctx, target("a", "10.0.0.1"), nil, false)
	if out.Result != "blocked" || out.RetryAfter != 7*time.Second {
		t.Fatalf("outcome %+v, want blocked with the server's 7s", out)
	}
}

func TestRemediateEvictionUnavailable(t *testing.T) {
	notFound := errNotFoundEviction()
	for _, allowDelete := range []bool{false, true} {
		t.Run(fmt.Sprintf("allowDelete=%v", allowDelete), func(t *testing.T) {
			cfg := baseConfig()
			cfg.AllowDelete = allowDelete
			h := newHarness(t, cfg, pod("a", "10.0.0.1", &rsOwner))
			h.sync()
			evictReactor(h, notFound)
			out := h.m.Remediator().Remediate(h.ctx, target("a", "10.0.0.1"), nil, false)
			writes := strings.Join(h.writes(), ",")
			if allowDelete {
				if out.Action != "delete" || out.Result != "success" || writes != "create pods/eviction,delete pods" {
					t.Fatalf("outcome %+v writes %s, want eviction then delete", out, writes)
				}
				return
			}
			if out.Result != "refused" || strings.Contains(writes, "delete") {
				t.Fatalf("outcome %+v writes %s, want refused without delete", out, writes)
			}
			if !strings.Contains(out.Message, "--allow-delete") {
				t.Errorf("message should name --allow-delete: %q", out.Message)
			}
		})
	}
}

func TestRemediateRefusals(t *testing.T) {
	stsOwner := metav1.OwnerReference{APIVersion: "apps/v1", Kind: "StatefulSet", Name: "dns", UID: "sts", Controller: ptr.To(true)}
	terminating := pod("term", "10.0.0.4", &rsOwner)
	terminating.DeletionTimestamp = ptr.To(metav1.Now())
	terminating.Finalizers = []string{"x"}
	cases := []struct {
		name   string
		target replica.Target
		want   string
	}{
		{"no controller", target("bare", "10.0.0.2"), "no controller"},
		{"statefulset", target("sts-0", "10.0.0.3"), "StatefulSet"},
		{"gone", target("ghost", "10.0.0.9"), "gone"},
		{"ip changed", target("a", "10.0.0.99"), "IP"},
		{"terminating", target("term", "10.0.0.4"), "terminating"},
	}
	h := newHarness(t, baseConfig(), pod("a", "10.0.0.1", &rsOwner), pod("bare", "10.0.0.2", nil), pod("sts-0", "10.0.0.3", &stsOwner), terminating)
	h.sync()
	evictReactor(h, nil)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out := h.m.Remediator().Remediate(h.ctx, c.target, nil, false)
			if out.Result != "refused" || !strings.Contains(out.Message, c.want) {
				t.Fatalf("outcome %+v, want refused mentioning %q", out, c.want)
			}
		})
	}
	if w := h.writes(); len(w) != 0 {
		t.Fatalf("refusals must not write; writes: %v", w)
	}
}

func TestRemediateRefusedWhenNotLeader(t *testing.T) {
	cfg := baseConfig()
	cfg.LeaderElection.Enabled = true // not yet elected
	h := newHarness(t, cfg, pod("a", "10.0.0.1", &rsOwner))
	h.sync()
	out := h.m.Remediator().Remediate(h.ctx, target("a", "10.0.0.1"), nil, false)
	if out.Result != "refused" || !strings.Contains(out.Message, "leader") {
		t.Fatalf("outcome %+v, want refused: not the leader", out)
	}
	if w := h.writes(); len(w) != 0 {
		t.Fatalf("writes: %v", w)
	}
}

func TestRemediateDryRunWritesNothing(t *testing.T) {
	cfg := baseConfig()
	cfg.ReadinessGate = true
	cfg.AllowDelete = true
	h := newHarness(t, cfg, pod("a", "10.0.0.1", &rsOwner))
	h.sync()
	evictReactor(h, nil)
	out := h.m.Remediator().Remediate(h.ctx, target("a", "10.0.0.1"), []string{"servfail ratio"}, true)
	if out.Result != "dry-run" || out.Action != "evict" || !strings.Contains(out.Message, "would") {
		t.Fatalf("outcome %+v, want dry-run", out)
	}
	if w := h.writes(); len(w) != 0 {
		t.Fatalf("dry-run wrote to the API: %v", w)
	}
}

func TestRemediateReadinessGateThenEvictThenReplacement(t *testing.T) {
	cfg := baseConfig()
	cfg.ReadinessGate = true
	h := newHarness(t, cfg, gatedPod("a", "10.0.0.1"), gatedPod("b", "10.0.0.2"))
	h.sync()
	evictReactor(h, nil)
	var gateSeen bool
	// Prepended last, so it runs before evictReactor removes the pod.
	h.client.PrependReactor("create", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() == "eviction" {
			// At eviction time the condition must already be on the pod.
			p, err := h.client.Tracker().Get(corev1.SchemeGroupVersion.WithResource("pods"), testNS, "a")
			if err == nil {
				for _, c := range p.(*corev1.Pod).Status.Conditions {
					if c.Type == api.ConditionServing && c.Status == corev1.ConditionFalse {
						gateSeen = true
					}
				}
			}
		}
		return false, nil, nil
	})

	out := h.m.Remediator().Remediate(h.ctx, target("a", "10.0.0.1"), []string{"self-probe failing"}, false)
	if out.Result != "success" || out.Action != "evict" {
		t.Fatalf("outcome %+v, want evict success", out)
	}
	if w := strings.Join(h.writes(), ","); w != "patch pods/status,create pods/eviction" {
		t.Fatalf("writes = %s, want the readiness gate patch before the eviction", w)
	}
	if !gateSeen {
		t.Fatalf("condition %s=False was not on the pod when it was evicted", api.ConditionServing)
	}
	ev := strings.Join(h.events(), "\n")
	for _, want := range []string{"Normal ReadinessGateSet", "Normal Evicted"} {
		if !strings.Contains(ev, want) {
			t.Errorf("missing event %q in:\n%s", want, ev)
		}
	}

	// b already existed: it is not the replacement. A new pod of the same ReplicaSet is.
	repl := pod("a-new", "10.0.0.5", &rsOwner)
	repl.Status.Conditions[0].Status = corev1.ConditionFalse
	if _, err := h.client.CoreV1().Pods(testNS).Create(h.ctx, repl, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a-new discovered", func() bool { _, ok := findTarget(h.m.Discovery().Targets(), "a-new"); return ok })
	if a := h.replacementAudits(); len(a) != 0 {
		t.Fatalf("replacement reported before it was Ready: %v", a)
	}
	repl.Status.Conditions[0].Status = corev1.ConditionTrue
	if _, err := h.client.CoreV1().Pods(testNS).UpdateStatus(h.ctx, repl, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "replacement ready audit", func() bool { return len(h.replacementAudits()) == 1 })
	a := h.replacementAudits()[0]
	if a["replacement"] != "a-new" || a["result"] != "ready" {
		t.Fatalf("replacement audit = %v", a)
	}
	eventually(t, "ReplacementReady event", func() bool {
		return strings.Contains(strings.Join(h.events(), "\n"), "Normal ReplacementReady")
	})
}

func (h *harness) replacementAudits() []map[string]any {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []map[string]any
	for _, a := range h.audits {
		if a["event"] == "replacement" {
			out = append(out, a)
		}
	}
	return out
}

func TestNotifierRecordsEventOnPod(t *testing.T) {
	h := newHarness(t, baseConfig(), pod("a", "10.0.0.1", &rsOwner))
	h.sync()
	h.m.Notifier().Notify(target("a", "10.0.0.1"), api.ReasonReplicaDegraded, "probes time out; self-probe failing")
	h.m.Notifier().Notify(target("gone", "10.0.0.7"), api.ReasonReplacementReady, "back")
	ev := h.events()
	if len(ev) != 2 || !strings.Contains(ev[0], "Warning ReplicaDegraded") || !strings.Contains(ev[0], "probes time out") {
		t.Fatalf("events = %q", ev)
	}
}

func TestConfigErrorsNameTheFlag(t *testing.T) {
	// The values themselves are validated by package config (TestKubernetesValuesValidatedHere).
	cfg := baseConfig()
	cfg.Kubeconfig = "/nonexistent/kubeconfig"
	if _, err := New(context.Background(), cfg, testOptions()); err == nil || !strings.Contains(err.Error(), "--kubeconfig") {
		t.Fatalf("err = %v, want one naming --kubeconfig", err)
	}
}

func TestLeaderElectionRotatesCanaryAndReleases(t *testing.T) {
	cfg := baseConfig()
	cfg.LeaderElection.Enabled = true
	cfg.Canary.Enabled = true
	h := newHarness(t, cfg, pod("a", "10.0.0.1", &rsOwner))
	ctx, cancel := context.WithCancel(h.ctx)
	done := make(chan error, 1)
	go func() { done <- h.m.Run(ctx) }()
	eventually(t, "leadership", h.m.IsLeader)
	lease, err := h.client.CoordinationV1().Leases("dnspulse").Get(h.ctx, "dnspulse-healer", metav1.GetOptions{})
	if err != nil || lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity != "healer-test" {
		t.Fatalf("lease = %+v, %v; want held by healer-test", lease, err)
	}
	eventually(t, "canary service created by the leader", func() bool {
		svc, err := h.client.CoreV1().Services("dnspulse").Get(h.ctx, "dnspulse-canary", metav1.GetOptions{})
		return err == nil && svc.Spec.Type == corev1.ServiceTypeExternalName && strings.HasSuffix(svc.Spec.ExternalName, CanaryDomain)
	})
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if h.m.IsLeader() {
		t.Error("still leader after shutdown")
	}
	lease, err = h.client.CoordinationV1().Leases("dnspulse").Get(h.ctx, "dnspulse-healer", metav1.GetOptions{})
	if err != nil || (lease.Spec.HolderIdentity != nil && *lease.Spec.HolderIdentity != "") {
		t.Fatalf("lease not released on cancel: %+v, %v", lease.Spec, err)
	}
}

func errTooManyRequests(retryAfterSeconds int) error {
	return apierrors.NewTooManyRequests("Cannot evict pod as it would violate the pod's disruption budget.", retryAfterSeconds)
}

func errNotFoundEviction() error {
	return apierrors.NewNotFound(schema.GroupResource{Resource: "pods/eviction"}, "")
}

func isDryRunEviction(a k8stesting.Action) bool {
	c, ok := a.(k8stesting.CreateAction)
	if !ok || a.GetSubresource() != "eviction" {
		return false
	}
	ev, ok := c.GetObject().(*policyv1.Eviction)
	return ok && ev.DeleteOptions != nil && len(ev.DeleteOptions.DryRun) == 1 && ev.DeleteOptions.DryRun[0] == metav1.DryRunAll
}

func TestRemediateDryRunAsksTheServer(t *testing.T) {
	h := newHarness(t, baseConfig(), pod("a", "10.0.0.1", &rsOwner))
	h.sync()
	evictReactor(h, errTooManyRequests(0))
	out := h.m.Remediator().Remediate(h.ctx, target("a", "10.0.0.1"), nil, true)
	if out.Result != "dry-run" || !strings.Contains(out.Message, "PodDisruptionBudget would block") {
		t.Fatalf("outcome %+v, want dry-run telling that the PDB would block", out)
	}
	var dry int
	for _, a := range h.client.Actions() {
		if a.GetVerb() == "create" && a.GetSubresource() == "eviction" {
			if !isDryRunEviction(a) {
				t.Fatalf("dry run sent a real eviction: %+v", a)
			}
			dry++
		}
	}
	if dry != 1 {
		t.Fatalf("%d dry-run evictions, want 1", dry)
	}
}

// A PodDisruptionBudget that allows none: nothing is drained at all (the server-side dry
// run says so first), and nothing evicted.
// gatedPod is a pod that declares the readiness gate, with it open.
func gatedPod(name, ip string) *corev1.Pod {
	p := pod(name, ip, &rsOwner)
	p.Spec.ReadinessGates = []corev1.PodReadinessGate{{ConditionType: api.ConditionServing}}
	p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{Type: api.ConditionServing, Status: corev1.ConditionTrue})
	return p
}

func TestRemediateBlockedDrainsNothing(t *testing.T) {
	cfg := baseConfig()
	cfg.ReadinessGate = true
	h := newHarness(t, cfg, gatedPod("a", "10.0.0.1"))
	h.sync()
	evictReactor(h, errTooManyRequests(0))
	out := h.m.Remediator().Remediate(h.ctx, target("a", "10.0.0.1"), nil, false)
	if out.Result != "blocked" || !strings.Contains(out.Message, "not drained") {
		t.Fatalf("outcome %+v, want blocked before any drain", out)
	}
	if w := h.writes(); len(w) != 0 {
		t.Fatalf("writes = %v, want none (a dry run only)", w)
	}
	d := h.m.remediator
	if out := d.Drain(h.ctx, target("a", "10.0.0.1"), []string{"x"}); out.Result != "blocked" || len(h.writes()) != 0 {
		t.Fatalf("Drain with the PDB spent: %+v, writes %v; want blocked and nothing written", out, h.writes())
	}
}

// An eviction refused after the drain (a PDB that changed between the dry run and the
// eviction): the gate is restored.
func TestRemediateBlockedAfterDrainRestoresReadinessGate(t *testing.T) {
	cfg := baseConfig()
	cfg.ReadinessGate = true
	h := newHarness(t, cfg, gatedPod("a", "10.0.0.1"))
	h.sync()
	if out := h.m.remediator.Drain(h.ctx, target("a", "10.0.0.1"), []string{"probe timeouts"}); out.Result != "success" {
		t.Fatalf("drain: %+v", out)
	}
	evictReactor(h, errTooManyRequests(0))
	out := h.m.Remediator().Remediate(h.ctx, target("a", "10.0.0.1"), nil, false)
	if out.Result != "blocked" || !strings.Contains(out.Message, "True restored") {
		t.Fatalf("outcome %+v, want blocked with the gate restored", out)
	}
	if w := strings.Join(h.writes(), ","); w != "patch pods/status,create pods/eviction,patch pods/status" {
		t.Fatalf("writes = %s, want drain, eviction, restore", w)
	}
	p, err := h.client.CoreV1().Pods(testNS).Get(h.ctx, "a", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !conditionIs(p, api.ConditionServing, corev1.ConditionTrue) {
		t.Fatalf("conditions = %+v, want %s=True after a blocked eviction", p.Status.Conditions, api.ConditionServing)
	}
}

func TestOpenGates(t *testing.T) {
	gated := func(name, ip string) *corev1.Pod {
		p := pod(name, ip, &rsOwner)
		p.Spec.ReadinessGates = []corev1.PodReadinessGate{{ConditionType: api.ConditionServing}}
		return p
	}
	fresh := gated("fresh", "10.0.0.1")
	drained := gated("drained", "10.0.0.2")
	drained.Status.Conditions = append(drained.Status.Conditions, corev1.PodCondition{Type: api.ConditionServing, Status: corev1.ConditionFalse,
		LastTransitionTime: metav1.NewTime(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))})
	plain := pod("plain", "10.0.0.3", &rsOwner)

	cfg := baseConfig()
	cfg.ReadinessGate = true
	h := newHarness(t, cfg, fresh, drained, plain)
	h.m.remediator.drains.add(drained.UID, h.clock.Now()) // a drain this healer holds
	go h.m.gates.run(h.ctx)
	h.sync()
	eventually(t, "gate opened on the new pod", func() bool {
		p, err := h.client.CoreV1().Pods(testNS).Get(h.ctx, "fresh", metav1.GetOptions{})
		return err == nil && conditionIs(p, api.ConditionServing, corev1.ConditionTrue)
	})
	// A later pod event must not touch the drained pod or the pod without the gate.
	if _, err := h.client.CoreV1().Pods(testNS).Create(h.ctx, gated("late", "10.0.0.4"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "gate opened on the late pod", func() bool {
		p, err := h.client.CoreV1().Pods(testNS).Get(h.ctx, "late", metav1.GetOptions{})
		return err == nil && conditionIs(p, api.ConditionServing, corev1.ConditionTrue)
	})
	var patched []string
	for _, a := range h.client.Actions() {
		if a.GetVerb() == "patch" {
			patched = append(patched, a.(k8stesting.PatchAction).GetName())
		}
	}
	if strings.Join(patched, ",") != "fresh,late" {
		t.Fatalf("patched %v, want only fresh and late", patched)
	}
	// The healer no longer holds the drain (a leader killed between drain and eviction):
	// the gate is reopened once drainAbandonedAfter has passed.
	h.m.remediator.drains.forget(drained.UID)
	h.clock.Step(drainAbandonedAfter + gateResync)
	eventually(t, "the abandoned drain reopened", func() bool {
		p, err := h.client.CoreV1().Pods(testNS).Get(h.ctx, "drained", metav1.GetOptions{})
		return err == nil && conditionIs(p, api.ConditionServing, corev1.ConditionTrue)
	})
}
