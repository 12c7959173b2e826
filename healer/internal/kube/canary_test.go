package kube

import (
	"errors"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	k8stesting "k8s.io/client-go/testing"
)

func canaryHarness(t *testing.T, objs ...runtime.Object) (*harness, *canary) {
	cfg := baseConfig()
	cfg.Canary.Enabled = true
	h := newHarness(t, cfg, objs...)
	c, ok := h.m.Freshness().(*canary)
	if !ok {
		t.Fatalf("Freshness() = %T, want *canary", h.m.Freshness())
	}
	return h, c
}

func (h *harness) canaryValue() string {
	h.t.Helper()
	svc, err := h.client.CoreV1().Services("dnspulse").Get(h.ctx, "dnspulse-canary", metav1.GetOptions{})
	if err != nil {
		h.t.Fatalf("reading the canary service: %v", err)
	}
	return svc.Spec.ExternalName
}

func TestCanaryQuestion(t *testing.T) {
	_, c := canaryHarness(t)
	if got, want := c.Question(), "dnspulse-canary.dnspulse.svc.cluster.local."; got != want {
		t.Fatalf("Question() = %q, want %q", got, want)
	}
	cfg := baseConfig()
	h := newHarness(t, cfg)
	if h.m.Freshness() != nil {
		t.Fatal("Freshness() must be nil with the canary off")
	}
}

func TestCanaryAcceptWithinMaxLag(t *testing.T) {
	h, c := canaryHarness(t)
	if ok, why := c.Accept("anything.", h.clock.Now(), 0); !ok {
		t.Fatalf("before any value is confirmed every answer must pass, got %q", why)
	}
	c.step(h.ctx) // creates the Service
	v1 := h.canaryValue()
	if !strings.HasPrefix(v1, "1-") || !strings.HasSuffix(v1, "."+CanaryDomain) {
		t.Fatalf("first value %q, want 1-<random>.%s", v1, CanaryDomain)
	}
	if ok, why := c.Accept(strings.ToUpper(v1)+".", h.clock.Now(), 0); !ok {
		t.Fatalf("current value (any case, trailing dot) rejected: %s", why)
	}

	h.clock.Step(5 * time.Second)
	c.step(h.ctx) // rotates
	v2 := h.canaryValue()
	if v2 == v1 || !strings.HasPrefix(v2, "2-") {
		t.Fatalf("second value %q after %q", v2, v1)
	}
	replaced := h.clock.Now()
	if ok, why := c.Accept(v1+".", replaced.Add(2999*time.Millisecond), 0); !ok {
		t.Fatalf("previous value within max lag rejected: %s", why)
	}
	ok, why := c.Accept(v1+".", replaced.Add(3*time.Second), 0)
	if ok || !strings.Contains(why, "stale") {
		t.Fatalf("previous value at max lag accepted (ok=%v, why=%q)", ok, why)
	}
	if ok, _ := c.Accept(v2, replaced.Add(time.Hour), 0); !ok {
		t.Fatal("the current value must stay fresh however long it lasts")
	}
	if ok, _ := c.Accept("0-abc."+CanaryDomain, replaced, 0); ok {
		t.Fatal("an older unknown value was accepted")
	}
	if ok, _ := c.Accept("", replaced, 0); ok {
		t.Fatal("an empty answer was accepted")
	}
	if ok, why := c.Accept("9-abc."+CanaryDomain, replaced, 0); !ok {
		t.Fatalf("a newer value (another leader's) was rejected: %s", why)
	}
	// A cache counts the TTL down: an answer with 1s left of a 5s record sat in a cache for
	// 4s, and is judged with that.
	if ok, why := c.Accept(v2, replaced, 5*time.Second); !ok { // the record's own TTL: 5s
		t.Fatalf("current value rejected: %s", why)
	}
	if ok, why := c.Accept(v1+".", replaced.Add(6*time.Second), time.Second); !ok {
		t.Fatalf("previous value cached for 4s rejected 6s after its replacement (max lag 3s): %s", why)
	}
	if ok, _ := c.Accept(v1+".", replaced.Add(6*time.Second), 5*time.Second); ok {
		t.Fatal("previous value with its full TTL (fresh from the plugin) accepted 6s after its replacement (max lag 3s)")
	}
}

// The API failing must hold the clock: the value the replicas have stays current.
func TestCanaryUpdateFailureHoldsTheClock(t *testing.T) {
	h, c := canaryHarness(t)
	c.step(h.ctx)
	v1 := h.canaryValue()
	h.client.PrependReactor("update", "services", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errors.New("connection refused")
	})
	for range 5 {
		h.clock.Step(5 * time.Second)
		c.step(h.ctx)
	}
	if got := h.canaryValue(); got != v1 {
		t.Fatalf("service changed to %q despite failing updates", got)
	}
	if ok, why := c.Accept(v1, h.clock.Now().Add(time.Minute), 0); !ok {
		t.Fatalf("with the API down the last confirmed value must stay fresh: %s", why)
	}
	h.mu.Lock()
	n := 0
	for _, a := range h.audits {
		if a["event"] == "canary" {
			n++
		}
	}
	h.mu.Unlock()
	if n != 5 {
		t.Errorf("%d canary audit lines, want one per failed update (5)", n)
	}
}

// A write whose outcome is unknown may have landed: its value is not stale; it is retried
// as is, and the value it replaces gets its lag clock only from the confirmation.
func TestCanaryUnconfirmedWrite(t *testing.T) {
	h, c := canaryHarness(t)
	c.step(h.ctx)
	v1 := h.canaryValue()
	var lost string
	h.client.PrependReactor("update", "services", func(a k8stesting.Action) (bool, runtime.Object, error) {
		lost = a.(k8stesting.UpdateAction).GetObject().(*corev1.Service).Spec.ExternalName
		return true, nil, errors.New("http2: client connection lost")
	})
	h.clock.Step(5 * time.Second)
	c.step(h.ctx)
	if ok, why := c.Accept(lost, h.clock.Now(), 0); !ok {
		t.Fatalf("value of an unconfirmed write rejected: %s", why)
	}
	// A second unknown outcome retries the same value: an outage leaves one pending value.
	h.clock.Step(5 * time.Second)
	first := lost
	c.step(h.ctx)
	if lost != first {
		t.Fatalf("retried with a new value %q instead of %q", lost, first)
	}
	h.client.ReactionChain = h.client.ReactionChain[1:]
	h.clock.Step(5 * time.Second)
	c.step(h.ctx)
	confirmed := h.clock.Now()
	if v := h.canaryValue(); v != lost {
		t.Fatalf("after the API came back it wrote %q, want the pending %q", v, lost)
	}
	// The value replaced right after the API trouble gets recoveryGrace on top of max lag:
	// CoreDNS's watches reconnect seconds apart, and the last to catch up is not at fault.
	if ok, _ := c.Accept(v1, confirmed.Add(time.Second), 0); !ok {
		t.Errorf("%s rejected within max lag of the confirmation", v1)
	}
	if ok, _ := c.Accept(v1, confirmed.Add(3*time.Second+recoveryGrace-time.Millisecond), 0); !ok {
		t.Errorf("%s rejected within max lag + recovery grace of a confirmation after API trouble", v1)
	}
	if ok, _ := c.Accept(v1, confirmed.Add(4*time.Second+recoveryGrace), 0); ok {
		t.Errorf("%s accepted beyond max lag + recovery grace of the confirmation", v1)
	}
	if ok, _ := c.Accept(lost, confirmed.Add(time.Hour), 0); !ok {
		t.Error("current value rejected")
	}
	// The next rotation, with the API fine, has the plain max lag again.
	h.clock.Step(5 * time.Second)
	c.step(h.ctx)
	rotated := h.clock.Now()
	if ok, _ := c.Accept(lost, rotated.Add(4*time.Second), 0); ok {
		t.Errorf("%s accepted beyond max lag of a rotation without API trouble", lost)
	}
}

func TestCanaryRefusesForeignService(t *testing.T) {
	foreign := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "dnspulse-canary", Namespace: "dnspulse"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: "10.96.0.50"}}
	h, c := canaryHarness(t, foreign)
	c.step(h.ctx)
	c.step(h.ctx)
	for _, w := range h.writes() {
		t.Errorf("wrote %s to a Service it does not own", w)
	}
	if ok, _ := c.Accept("whatever", h.clock.Now(), 0); !ok {
		t.Error("without a canary value no replica may be judged stale")
	}
}

// An existing canary Service (a previous leader's) is adopted, and its counter continues.
func TestCanaryAdoptsExistingValue(t *testing.T) {
	old := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "dnspulse-canary", Namespace: "dnspulse"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "41-aaaaaa." + CanaryDomain}}
	h, c := canaryHarness(t, old)
	c.step(h.ctx)
	adopted := h.clock.Now()
	if ok, why := c.Accept("41-aaaaaa."+CanaryDomain+".", adopted, 0); !ok {
		t.Fatalf("adopted value rejected: %s", why)
	}
	// 40 may have been replaced by the previous leader a moment before: not stale yet.
	if ok, why := c.Accept("40-bbbbbb."+CanaryDomain, adopted.Add(2*time.Second), 0); !ok {
		t.Fatalf("previous leader's value rejected within max lag of adoption: %s", why)
	}
	if ok, _ := c.Accept("40-bbbbbb."+CanaryDomain, adopted.Add(3*time.Second), 0); ok {
		t.Fatal("previous leader's value accepted beyond max lag of adoption")
	}
	c.step(h.ctx)
	if v := h.canaryValue(); !strings.HasPrefix(v, "42-") {
		t.Fatalf("next value %q, want counter 42", v)
	}
}

// A follower reads the Service every interval, as often as the leader rotates it, and can
// read 28 then 30: 29, which it never read, was replaced at the latest when it read 30. A
// replica still answering 29 a moment later is not stale (a standby judged healthy replicas
// degraded for it, in make bench-e2e); one answering it past the max lag is.
func TestCanaryFollowerSkippedValue(t *testing.T) {
	h, c := canaryHarness(t)
	svc := func(v string) *corev1.Service {
		return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "dnspulse-canary", Namespace: "dnspulse"},
			Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: v}}
	}
	c.confirm(svc("27-yyyyyy."+CanaryDomain), 27)
	h.clock.Step(2 * time.Second)
	c.confirm(svc("28-aaaaaa."+CanaryDomain), 28)
	h.clock.Step(2 * time.Second)
	c.confirm(svc("30-cccccc."+CanaryDomain), 30)
	read := h.clock.Now()
	if ok, why := c.Accept("29-bbbbbb."+CanaryDomain+".", read.Add(100*time.Millisecond), 0); !ok {
		t.Fatalf("a skipped value answered 100ms after the newer one was read rejected: %s", why)
	}
	if ok, why := c.Accept("28-aaaaaa."+CanaryDomain, read.Add(100*time.Millisecond), 0); !ok {
		t.Fatalf("the value read before, replaced when 30 was read, rejected within max lag: %s", why)
	}
	ok, why := c.Accept("29-bbbbbb."+CanaryDomain, read.Add(3*time.Second), 0)
	if ok || !strings.Contains(why, "never read") || !strings.Contains(why, "stale") {
		t.Fatalf("a skipped value past max lag: ok=%v, why=%q", ok, why)
	}
	if ok, _ := c.Accept("26-zzzzzz."+CanaryDomain, read.Add(100*time.Millisecond), 0); ok {
		t.Fatal("a value older than any read or skipped was accepted")
	}
}
