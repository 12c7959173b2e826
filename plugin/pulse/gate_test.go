package pulse

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/coredns/caddy"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}

const testGate = corev1.PodConditionType(defaultGateCondition)

// gatePod is a CoreDNS pod that declares the gate, Ready by its containers, with the gate
// condition as given (nil: absent).
func gatePod(gate *corev1.PodCondition) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "coredns-abc", Namespace: "kube-system", UID: "uid-1"},
		Spec:       corev1.PodSpec{ReadinessGates: []corev1.PodReadinessGate{{ConditionType: testGate}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.7", Conditions: []corev1.PodCondition{
			{Type: corev1.ContainersReady, Status: corev1.ConditionTrue},
			{Type: corev1.PodReady, Status: corev1.ConditionFalse, Reason: "ReadinessGatesNotReady"},
		}},
	}
	if gate != nil {
		p.Status.Conditions = append(p.Status.Conditions, *gate)
	}
	return p
}

// fakeClock is the keeper's clock, stepped by the test.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) step(d time.Duration)    { c.t = c.t.Add(d) }
func newFakeClock() *fakeClock               { return &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }
func (c *fakeClock) ago(d time.Duration) any { return metav1.NewTime(c.t.Add(-d)) }

func newTestKeeper(t *testing.T, pod *corev1.Pod) (*gateKeeper, *fake.Clientset, *fakeClock) {
	t.Helper()
	cs := fake.NewClientset(pod)
	clk := newFakeClock()
	g := &gateKeeper{client: cs, namespace: "kube-system", pod: "coredns-abc", condition: testGate, maxDrain: 30 * time.Second, now: clk.now}
	g.lastObs = clk.now()
	return g, cs, clk
}

func patches(cs *fake.Clientset) []k8stesting.PatchAction {
	var out []k8stesting.PatchAction
	for _, a := range cs.Actions() {
		if p, ok := a.(k8stesting.PatchAction); ok {
			out = append(out, p)
		}
	}
	return out
}

func currentGate(t *testing.T, cs *fake.Clientset) *corev1.PodCondition {
	t.Helper()
	p, err := cs.CoreV1().Pods("kube-system").Get(context.Background(), "coredns-abc", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return findPodCondition(p, testGate)
}

func TestGateAbsentIsOpened(t *testing.T) {
	g, cs, _ := newTestKeeper(t, gatePod(nil))
	before := counterValue(gateOpens.WithLabelValues("absent"))
	next := g.step(context.Background())
	if next != 5*time.Second {
		t.Errorf("next read in %v, want the poll interval 5s", next)
	}
	ps := patches(cs)
	if len(ps) != 1 || ps[0].GetSubresource() != "status" {
		t.Fatalf("patches %v: want one of pods/status", ps)
	}
	// The patch names the pod's UID (a precondition) and only the one condition.
	var body struct {
		Metadata map[string]any `json:"metadata"`
		Status   map[string]any `json:"status"`
	}
	if err := json.Unmarshal(ps[0].GetPatch(), &body); err != nil {
		t.Fatal(err)
	}
	conds, _ := body.Status["conditions"].([]any)
	if body.Metadata["uid"] != "uid-1" || len(body.Status) != 1 || len(conds) != 1 || len(body.Metadata) != 1 {
		t.Errorf("patch %s: want only metadata.uid and the one condition", ps[0].GetPatch())
	}
	c := currentGate(t, cs)
	if c == nil || c.Status != corev1.ConditionTrue || c.Reason != reasonGateStarted {
		t.Fatalf("gate after the patch: %+v", c)
	}
	p, _ := cs.CoreV1().Pods("kube-system").Get(context.Background(), "coredns-abc", metav1.GetOptions{})
	if len(p.Status.Conditions) != 3 || p.Status.PodIP != "10.0.0.7" || p.Status.Phase != corev1.PodRunning {
		t.Errorf("other status fields changed: %+v", p.Status)
	}
	if got := counterValue(gateOpens.WithLabelValues("absent")) - before; got != 1 {
		t.Errorf("opens{cause=absent} grew by %v, want 1", got)
	}
}

func TestGateTrueIsLeftAlone(t *testing.T) {
	g, cs, clk := newTestKeeper(t, gatePod(&corev1.PodCondition{Type: testGate, Status: corev1.ConditionTrue, Reason: "DNSPulseWatching"}))
	for range 20 {
		clk.step(g.step(context.Background()))
	}
	if ps := patches(cs); len(ps) != 0 {
		t.Errorf("patched a gate that is True: %v", ps)
	}
}

func TestGateFalseReopenedAfterTheBound(t *testing.T) {
	g, cs, clk := newTestKeeper(t, gatePod(nil))
	drain := &corev1.PodCondition{Type: testGate, Status: corev1.ConditionFalse, Reason: "DNSReplicaDegraded", LastTransitionTime: clk.ago(0).(metav1.Time)}
	if err := cs.Tracker().Update(corev1.SchemeGroupVersion.WithResource("pods"), gatePod(drain), "kube-system"); err != nil {
		t.Fatal(err)
	}
	before := counterValue(gateOpens.WithLabelValues("drain-expired"))
	start := clk.now()
	for clk.now().Sub(start) < time.Minute && len(patches(cs)) == 0 {
		next := g.step(context.Background())
		if next <= 0 || next > 5*time.Second {
			t.Fatalf("next read in %v: want within (0, 5s]", next)
		}
		clk.step(next)
	}
	ps := patches(cs)
	if len(ps) != 1 {
		t.Fatalf("patches %d, want 1", len(ps))
	}
	// The last step ran exactly at the bound: the keeper reads again when it falls due.
	if took := clk.now().Sub(start); took < 30*time.Second || took > 35*time.Second {
		t.Errorf("reopened %v after the drain began, want at 30s", took)
	}
	if c := currentGate(t, cs); c.Status != corev1.ConditionTrue || c.Reason != reasonDrainExpired {
		t.Errorf("gate %+v, want True by %s", c, reasonDrainExpired)
	}
	if got := counterValue(gateOpens.WithLabelValues("drain-expired")) - before; got != 1 {
		t.Errorf("opens{cause=drain-expired} grew by %v, want 1", got)
	}
}

// A lastTransitionTime far in the past (another node's clock, or a pod restarted while
// drained) counts only from this replica's previous read: the bound is never cut short.
func TestGateFalseClockSkewDoesNotShortenTheBound(t *testing.T) {
	g, cs, clk := newTestKeeper(t, gatePod(nil))
	drain := &corev1.PodCondition{Type: testGate, Status: corev1.ConditionFalse, LastTransitionTime: clk.ago(time.Hour).(metav1.Time)}
	if err := cs.Tracker().Update(corev1.SchemeGroupVersion.WithResource("pods"), gatePod(drain), "kube-system"); err != nil {
		t.Fatal(err)
	}
	if next := g.step(context.Background()); next != 5*time.Second || len(patches(cs)) != 0 {
		t.Fatalf("an old drain reopened at once (next %v, patches %d)", next, len(patches(cs)))
	}
	clk.step(29 * time.Second)
	g.step(context.Background())
	if len(patches(cs)) != 0 {
		t.Fatal("reopened before the bound")
	}
	clk.step(time.Second)
	g.step(context.Background())
	if len(patches(cs)) != 1 {
		t.Fatal("not reopened at the bound")
	}
}

// A new drain (another lastTransitionTime) restarts the count.
func TestGateNewDrainRestartsTheBound(t *testing.T) {
	g, cs, clk := newTestKeeper(t, gatePod(nil))
	set := func(ltt metav1.Time) {
		d := &corev1.PodCondition{Type: testGate, Status: corev1.ConditionFalse, LastTransitionTime: ltt}
		if err := cs.Tracker().Update(corev1.SchemeGroupVersion.WithResource("pods"), gatePod(d), "kube-system"); err != nil {
			t.Fatal(err)
		}
	}
	set(clk.ago(0).(metav1.Time))
	g.step(context.Background())
	clk.step(20 * time.Second)
	set(clk.ago(0).(metav1.Time)) // undrained and drained again in between
	g.step(context.Background())
	clk.step(20 * time.Second)
	g.step(context.Background())
	if len(patches(cs)) != 0 {
		t.Fatal("the second drain was cut short by the first one's time")
	}
	clk.step(10 * time.Second)
	g.step(context.Background())
	if len(patches(cs)) != 1 {
		t.Fatal("the second drain was not reopened at its bound")
	}
}

func TestGateUndeclaredIsLeftAlone(t *testing.T) {
	p := gatePod(nil)
	p.Spec.ReadinessGates = nil
	g, cs, clk := newTestKeeper(t, p)
	for range 5 {
		clk.step(g.step(context.Background()))
	}
	if len(patches(cs)) != 0 {
		t.Error("set a condition on a pod that does not declare the gate")
	}
}

func TestGateAPIErrorsAreRetriedWithBackoff(t *testing.T) {
	g, cs, clk := newTestKeeper(t, gatePod(nil))
	fail := 5
	cs.PrependReactor("list", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		if fail > 0 {
			fail--
			return true, nil, errors.New("apiserver unreachable")
		}
		return false, nil, nil
	})
	var waits []time.Duration
	for len(patches(cs)) == 0 && len(waits) < 10 {
		next := g.step(context.Background())
		waits = append(waits, next)
		clk.step(next)
	}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 5 * time.Second, 5 * time.Second, 5 * time.Second}
	if len(waits) != len(want) {
		t.Fatalf("waits %v, want %v", waits, want)
	}
	for i := range want {
		if waits[i] != want[i] {
			t.Fatalf("waits %v, want %v", waits, want)
		}
	}
	if g.failures != 0 {
		t.Errorf("failures %d after the recovery", g.failures)
	}
}

func TestGatePatchErrorIsRetried(t *testing.T) {
	g, cs, clk := newTestKeeper(t, gatePod(nil))
	denied := true
	cs.PrependReactor("patch", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		if denied {
			return true, nil, errors.New(`pods "coredns-abc" is forbidden: ValidatingAdmissionPolicy denied`)
		}
		return false, nil, nil
	})
	if next := g.step(context.Background()); next != time.Second || g.failures != 1 {
		t.Fatalf("next %v failures %d after a refused patch", next, g.failures)
	}
	denied = false
	clk.step(time.Second)
	g.step(context.Background())
	if c := currentGate(t, cs); c == nil || c.Status != corev1.ConditionTrue {
		t.Fatalf("gate %+v after the retry", c)
	}
}

func TestGateNeverPanics(t *testing.T) {
	for name, react := range map[string]k8stesting.ReactionFunc{
		"a panicking client": func(k8stesting.Action) (bool, runtime.Object, error) { panic("boom") },
		"a wrong object":     func(k8stesting.Action) (bool, runtime.Object, error) { return true, &corev1.ConfigMap{}, nil },
		"an empty list":      func(k8stesting.Action) (bool, runtime.Object, error) { return true, &corev1.PodList{}, nil },
		"another pod": func(k8stesting.Action) (bool, runtime.Object, error) {
			return true, &corev1.PodList{Items: []corev1.Pod{{}}}, nil
		},
	} {
		t.Run(name, func(t *testing.T) {
			g, cs, _ := newTestKeeper(t, gatePod(nil))
			cs.PrependReactor("*", "*", react)
			if next := g.stepSafely(context.Background()); next != time.Second || g.failures != 1 {
				t.Errorf("next %v failures %d", next, g.failures)
			}
		})
	}
}

func TestGateRunEndsWithContext(t *testing.T) {
	g, cs, _ := newTestKeeper(t, gatePod(nil))
	g.now = time.Now
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { g.run(ctx); close(done) }()
	deadline := time.Now().Add(5 * time.Second)
	for len(patches(cs)) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("run did not end with its context")
	}
	if len(patches(cs)) != 1 {
		t.Errorf("patches %d: run opens the gate at once", len(patches(cs)))
	}
}

func TestParseGate(t *testing.T) {
	for input, want := range map[string]string{
		"pulse {\n readiness_gate\n}":                                    "",
		"pulse {\n readiness_gate example.com/ok\n}":                     "",
		"pulse {\n readiness_gate Ready_2\n}":                            "",
		"pulse {\n readiness_gate\n readiness_gate_max_drain 45s\n}":     "",
		"pulse {\n readiness_gate a b\n}":                                "readiness_gate takes at most one argument",
		"pulse {\n readiness_gate bad/name/\n}":                          `readiness_gate "bad/name/": not a condition type`,
		"pulse {\n readiness_gate -x\n}":                                 `readiness_gate "-x": not a condition type`,
		"pulse {\n readiness_gate\n readiness_gate_max_drain 1s\n}":      "readiness_gate_max_drain 1s: must be between 10s and 1h0m0s",
		"pulse {\n readiness_gate\n readiness_gate_max_drain forever\n}": `readiness_gate_max_drain "forever": not a duration`,
		"pulse {\n readiness_gate_max_drain 45s\n}":                      "readiness_gate_max_drain without readiness_gate",
	} {
		c := caddy.NewTestController("dns", input)
		cfg, err := parse(c)
		if want == "" {
			if err != nil || cfg.gate == "" {
				t.Errorf("%q: gate %q err %v", input, cfg.gate, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want one containing %q", input, err, want)
		}
	}
	c := caddy.NewTestController("dns", "pulse {\n readiness_gate\n readiness_gate_max_drain 45s\n}")
	if cfg, _ := parse(c); cfg.gate != defaultGateCondition || cfg.maxDrain != 45*time.Second {
		t.Errorf("gate %q max drain %v", cfg.gate, cfg.maxDrain)
	}
}
