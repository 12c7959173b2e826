package kube

import (
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

// dryRuns counts the eviction dry runs sent to the API.
func (h *harness) dryRuns() int {
	n := 0
	for _, a := range h.client.Actions() {
		if a.GetVerb() == "create" && a.GetSubresource() == "eviction" && isDryRunEviction(a) {
			n++
		}
	}
	return n
}

// A replica turned suspect: the eviction's dry run goes ahead, and the drain that follows
// uses it (one dry run in all, then the patch); a second suspicion a moment later sends none.
func TestAnticipatedDryRunServesTheDrain(t *testing.T) {
	cfg := baseConfig()
	cfg.ReadinessGate = true
	h := newHarness(t, cfg, gatedPod("a", "10.0.0.1"))
	h.sync()
	d := h.m.remediator
	d.Anticipate(target("a", "10.0.0.1"))
	eventually(t, "the dry run ahead", func() bool { return h.dryRuns() == 1 })
	d.Anticipate(target("a", "10.0.0.1"))
	out := d.Drain(h.ctx, target("a", "10.0.0.1"), []string{"probe timeouts"})
	if out.Result != "success" || !strings.Contains(out.Message, "before the drain") {
		t.Fatalf("drain: %+v, want success on the dry run run ahead", out)
	}
	if n := h.dryRuns(); n != 1 {
		t.Fatalf("%d dry runs, want the one run ahead only", n)
	}
	if w := strings.Join(h.writes(), ","); w != "patch pods/status" {
		t.Fatalf("writes = %s, want the gate's patch only", w)
	}
}

// A dry run ahead that the budget refused admits nothing: the drain asks again, and with
// the budget still spent, drains nothing.
func TestAnticipatedRefusalIsAskedAgain(t *testing.T) {
	cfg := baseConfig()
	cfg.ReadinessGate = true
	h := newHarness(t, cfg, gatedPod("a", "10.0.0.1"))
	h.sync()
	evictReactor(h, errTooManyRequests(0))
	d := h.m.remediator
	d.Anticipate(target("a", "10.0.0.1"))
	eventually(t, "the dry run ahead", func() bool { return h.dryRuns() == 1 })
	out := d.Drain(h.ctx, target("a", "10.0.0.1"), []string{"probe timeouts"})
	if out.Result != "blocked" || len(h.writes()) != 0 {
		t.Fatalf("drain: %+v, writes %v; want blocked, nothing written", out, h.writes())
	}
	if n := h.dryRuns(); n != 2 {
		t.Fatalf("%d dry runs, want 2 (ahead, and the drain's own)", n)
	}
}

// Nothing is run ahead for a healer that does not lead, nor for a pod without the gate.
func TestAnticipateOnlyWhereADrainCouldFollow(t *testing.T) {
	cfg := baseConfig()
	cfg.ReadinessGate = true
	h := newHarness(t, cfg, gatedPod("a", "10.0.0.1"), pod("b", "10.0.0.2", &rsOwner))
	h.sync()
	d := h.m.remediator
	d.Anticipate(target("b", "10.0.0.2")) // no readiness gate declared
	d.leader.v.Store(false)
	d.Anticipate(target("a", "10.0.0.1"))
	if a := d.ahead.latest; a != nil || h.dryRuns() != 0 {
		t.Fatalf("ran ahead: %+v, %d dry runs", a, h.dryRuns())
	}
}

// An admission run ahead stands for admissionFresh, and for its pod only.
func TestAdmissionRunAheadExpires(t *testing.T) {
	var a anticipation
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ad, ok := a.begin("uid-a", at)
	if !ok {
		t.Fatal("begin refused with nothing under way")
	}
	if _, again := a.begin("uid-b", at); again {
		t.Fatal("a second dry run ahead while one is under way")
	}
	ad.ok, ad.why = true, "allowed"
	close(ad.done)
	ctx := t.Context()
	if _, ok := a.admitted(ctx, "uid-a", at.Add(admissionFresh-time.Millisecond)); !ok {
		t.Error("not admitted within admissionFresh")
	}
	if _, ok := a.admitted(ctx, "uid-a", at.Add(admissionFresh)); ok {
		t.Error("admitted at admissionFresh")
	}
	if _, ok := a.admitted(ctx, types.UID("uid-b"), at); ok {
		t.Error("another pod admitted by a's dry run")
	}
	// Done, but one dry run ahead per anticipateSpacing; and none again for a fresh pod.
	if _, ok := a.begin("uid-b", at.Add(anticipateSpacing-time.Millisecond)); ok {
		t.Error("a dry run ahead within anticipateSpacing of the last")
	}
	if _, ok := a.begin("uid-a", at.Add(anticipateSpacing)); ok {
		t.Error("a second dry run ahead for a pod whose admission is fresh")
	}
	if _, ok := a.begin("uid-b", at.Add(anticipateSpacing)); !ok {
		t.Error("no dry run ahead for another pod after anticipateSpacing")
	}
}
