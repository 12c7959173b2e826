//go:build e2e

package heal

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Issue 12's acceptance: remediation that can never make cluster DNS worse. The gate fails open
// (pulse and the leader both reopen it), a partition is reported and not evicted, the guards hold
// across leaders, and two hung replicas are healed one at a time.

// newPodWithin is how soon a new CoreDNS pod must be Ready with no healer at all.
const newPodWithin = 30 * time.Second

// setGate sets the readiness-gate condition of a CoreDNS pod as an operator (or a dead healer)
// would have left it.
func setGate(ctx context.Context, pod, status, reason string) error {
	patch := fmt.Sprintf(`{"status":{"conditions":[{"type":%q,"status":%q,"reason":%q,"message":"set by the e2e test","lastTransitionTime":%q}]}}`,
		ConditionServing, status, reason, time.Now().UTC().Format(time.RFC3339))
	_, err := cl.Client.CoreV1().Pods(DNSNamespace).Patch(ctx, pod, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}, "status")
	return err
}

// gateChange is the first change of pod's gate to a status starting with want seen at or after
// since, if any.
func gateChange(pod string, since time.Time, want string) (Transition, bool) {
	r, _ := obs.Pod(pod)
	for _, g := range r.Gate {
		if !g.Seen.Before(since) && strings.HasPrefix(g.What, want) {
			return g, true
		}
	}
	return Transition{}, false
}

// scaleHealer sets the healer Deployment's replicas and waits until that many healer pods run
// (and no other is left, when n is 0).
func scaleHealer(ctx context.Context, n int32) error {
	patch := fmt.Sprintf(`{"spec":{"replicas":%d}}`, n)
	if _, err := cl.Client.AppsV1().Deployments(HealerNamespace).Patch(ctx, Release, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		return err
	}
	if n > 0 {
		return cl.WaitDeploymentReady(ctx, HealerNamespace, Release)
	}
	return obs.Wait(ctx, 2*time.Minute, "no healer pod left", func() bool {
		pods, err := cl.Client.CoreV1().Pods(HealerNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/instance=" + Release})
		return err == nil && len(pods.Items) == 0
	})
}

// rolloutRestart is `kubectl rollout restart deployment/coredns`: a new template annotation.
func rolloutRestart(ctx context.Context) error {
	patch := fmt.Sprintf(`{"spec":{"template":{"metadata":{"annotations":{"kubectl.kubernetes.io/restartedAt":%q}}}}}`, time.Now().Format(time.RFC3339Nano))
	_, err := cl.Client.AppsV1().Deployments(DNSNamespace).Patch(ctx, "coredns", types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{})
	return err
}

// Without any healer (scaled to zero), a rollout of CoreDNS brings every new pod to Ready within
// 30 s: pulse opens its own gate. A drain the healer left behind is reopened by pulse once it has
// lasted readiness_gate_max_drain. The old pods' Leases are gone with them (pulse deletes its own).
func TestFailOpenWithoutHealer(t *testing.T) {
	ctx, pods := begin(t)
	d, err := cl.Client.AppsV1().Deployments(HealerNamespace).Get(ctx, Release, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	replicas := *d.Spec.Replicas
	if err := scaleHealer(ctx, 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := scaleHealer(context.Background(), replicas); err != nil {
			t.Errorf("healer back to %d replicas: %v", replicas, err)
		}
	})
	t.Logf("healer scaled to 0")

	old := map[string]bool{}
	for _, p := range pods {
		old[p.Name] = true
	}
	t0 := time.Now()
	if err := rolloutRestart(ctx); err != nil {
		t.Fatal(err)
	}
	var fresh []PodRecord
	err = obs.Wait(ctx, 3*time.Minute, "the rollout to complete without a healer", func() bool {
		fresh = nil
		for _, p := range obs.ReadyPods() {
			if !old[p.Name] {
				fresh = append(fresh, p)
			}
		}
		for name := range old {
			if r, _ := obs.Pod(name); r.Gone.IsZero() {
				return false
			}
		}
		return len(fresh) == len(pods)
	})
	for _, p := range obs.All() {
		if !old[p.Name] && !p.FirstSeen.Before(t0) {
			ready := "never"
			if !p.Ready.IsZero() {
				ready = p.Ready.Sub(p.FirstSeen).Round(time.Millisecond).String()
			}
			t.Logf("new pod %s: seen at +%.3fs, Ready after %s; gate %v", p.Name, p.FirstSeen.Sub(t0).Seconds(), ready, p.Gate)
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range fresh {
		if took := p.Ready.Sub(p.FirstSeen); took > newPodWithin {
			t.Errorf("new pod %s Ready %s after it appeared, more than %s", p.Name, took.Round(time.Millisecond), newPodWithin)
		}
		if len(p.Gate) == 0 || p.Gate[0].What != "True PulseStarted" {
			t.Errorf("new pod %s: gate %v, want first set True by pulse (PulseStarted)", p.Name, p.Gate)
		}
	}
	// pulse deletes its own Lease at a clean exit: a Lease cannot be owned across namespaces.
	for name := range old {
		err := obs.Wait(ctx, 30*time.Second, "the Lease of the old pod "+name+" deleted", func() bool {
			_, err := cl.Client.CoordinationV1().Leases(LeaseNamespace).Get(ctx, name, metav1.GetOptions{})
			return apierrors.IsNotFound(err)
		})
		if err != nil {
			t.Error(err)
		}
	}

	// A drain left behind with no healer to end it: pulse opens it again at its bound.
	target := fresh[0].Name
	t1 := time.Now()
	if err := setGate(ctx, target, "False", "E2EAbandonedDrain"); err != nil {
		t.Fatal(err)
	}
	var reopened Transition
	err = obs.Wait(ctx, MaxDrain+20*time.Second, "pulse to reopen the gate of "+target, func() bool {
		var ok bool
		reopened, ok = gateChange(target, t1, "True")
		return ok
	})
	if err != nil {
		t.Fatal(err)
	}
	took := reopened.Seen.Sub(t1)
	t.Logf("gate of %s set False at %s, reopened after %s (%s)", target, t1.Format("15:04:05.000"), took.Round(time.Millisecond), reopened.What)
	// pulse reads every MaxDrain/6 (5s) and times the drain from its reads: at the bound, at most
	// one read interval and a second later.
	if took < MaxDrain-time.Second || took > MaxDrain+6*time.Second {
		t.Errorf("reopened %s after the drain began: want %s to %s", took.Round(time.Millisecond), MaxDrain, MaxDrain+6*time.Second)
	}
	if reopened.What != "True DrainExpired" {
		t.Errorf("reopened as %q, want True DrainExpired (by pulse)", reopened.What)
	}
}

// A gate left False with no eviction under way (a healer killed between drain and eviction; here
// set by hand): the leader's gate opener reopens it within 10 s.
func TestAbandonedDrainReopenedByLeader(t *testing.T) {
	ctx, pods := begin(t)
	leader, err := waitLeader(ctx, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	target := pods[0].Name
	t1 := time.Now()
	if err := setGate(ctx, target, "False", "DNSReplicaDegraded"); err != nil {
		t.Fatal(err)
	}
	var reopened Transition
	err = obs.Wait(ctx, 20*time.Second, "the leader to reopen the gate of "+target, func() bool {
		var ok bool
		reopened, ok = gateChange(target, t1, "True")
		return ok
	})
	if err != nil {
		t.Fatal(err)
	}
	took := reopened.Seen.Sub(t1)
	t.Logf("gate of %s set False, reopened after %s (%s; leader %s)", target, took.Round(time.Millisecond), reopened.What, leader)
	if took > 10*time.Second {
		t.Errorf("reopened %s after the drain was abandoned, more than 10s", took.Round(time.Millisecond))
	}
	if reopened.What != "True DrainAbandoned" {
		t.Errorf("reopened as %q, want True DrainAbandoned (the leader's gate opener)", reopened.What)
	}
	noEviction(t, t1, pods)
}

// The healer cut off from one CoreDNS pod by its own network (a DROP toward the pod's address in
// every healer pod's network namespace; the pod itself, its node and the apiserver see it serve):
// no eviction, and a ReplicaUnreachable Event that names the partition.
func TestPartitionNoEviction(t *testing.T) {
	ctx, pods := begin(t)
	target, peers := pick(pods)
	ipt, err := iptables()
	if err != nil {
		t.Fatal(err)
	}
	healers, err := cl.Client.CoreV1().Pods(HealerNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/instance=" + Release})
	if err != nil {
		t.Fatal(err)
	}
	rule := func(op string) []string { return []string{ipt, "-w", op, "OUTPUT", "-d", target.IP, "-j", "DROP"} }
	t0 := time.Now()
	for _, h := range healers.Items {
		t.Cleanup(func() { _, _ = cl.InPod(context.Background(), HealerNamespace, h.Name, rule("-D")...) })
		if _, err := cl.InPod(ctx, HealerNamespace, h.Name, rule("-I")...); err != nil {
			t.Fatalf("cutting healer %s off from %s: %v", h.Name, target.IP, err)
		}
	}
	t.Logf("every healer cut off from %s (%s)", target.Name, target.IP)
	var note string
	err = obs.Wait(ctx, 90*time.Second, "a ReplicaUnreachable Event on "+target.Name, func() bool {
		r, _ := obs.Pod(target.Name)
		for _, ev := range r.Events {
			if ev.Reason == "ReplicaUnreachable" && !ev.Seen.Before(t0) {
				note = fmt.Sprintf("+%.3fs %s", ev.Seen.Sub(t0).Seconds(), ev.Note)
				return true
			}
		}
		return false
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Event ReplicaUnreachable: %s", note)
	if !strings.Contains(note, "partition") {
		t.Errorf("the Event does not name the partition: %s", note)
	}
	if _, ok := FindAudit(cl, t0, func(l AuditLine) bool { return l.Event == "partition" }); !ok {
		t.Error("no partition audit line")
	}
	// A drain while the evidence was partial is undone once the partition is reported; then hold
	// the cut a while: nothing may evict the replica.
	hold := time.Now().Add(2 * PartitionAfter)
	_ = obs.Wait(ctx, 3*PartitionAfter, "the end of the partition window", func() bool {
		r, _ := obs.Pod(target.Name)
		return !r.Terminated.IsZero() || time.Now().After(hold)
	})
	r, _ := obs.Pod(target.Name)
	t.Logf("gate of %s: %v", target.Name, r.Gate)
	for _, l := range AuditSince(cl, t0) {
		if l.Replica == target.Name && (l.Event == "remediation" || l.Event == "partition" || l.Event == "state") || l.Event == "partition" {
			t.Logf("+%.3fs %s", l.Time.Sub(t0).Seconds(), l)
		}
	}
	if n := len(r.Gate); n == 0 || !strings.HasPrefix(r.Gate[n-1].What, "True") {
		t.Errorf("%s left drained: gate %v", target.Name, r.Gate)
	}
	noEviction(t, t0, pods)
	untouched(t, peers, t0)
}

// Two of three replicas hung at once: the cluster confirms each (kubelet readiness, its stale
// Lease), so the healer replaces both, one at a time (the second only once the first's
// replacement is Ready), within 20 s, and leaves the healthy one alone.
func TestTwoReplicasHung(t *testing.T) {
	ctx, pods := begin(t)
	hung, healthy := pods[:2], pods[2:]
	t0 := time.Now()
	for _, p := range hung {
		t.Cleanup(func() { _ = cl.Thaw(DNSNamespace, p.Name) })
		if err := cl.Freeze(DNSNamespace, p.Name); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("hung %s and %s", hung[0].Name, hung[1].Name)
	err := obs.Wait(ctx, 2*time.Minute, "both hung replicas evicted", func() bool {
		for _, p := range hung {
			if r, _ := obs.Pod(p.Name); r.Terminated.IsZero() {
				return false
			}
		}
		return true
	})
	known := map[string]bool{}
	for _, p := range pods {
		known[p.Name] = true
	}
	var evicted []PodRecord
	for _, p := range hung {
		r, _ := obs.Pod(p.Name)
		evicted = append(evicted, r)
		if !r.Terminated.IsZero() {
			t.Logf("%s evicted at +%.3fs", p.Name, r.Terminated.Sub(t0).Seconds())
		}
	}
	for _, p := range obs.All() {
		if !known[p.Name] && !p.Ready.IsZero() && !p.FirstSeen.Before(t0) {
			t.Logf("replacement %s Ready at +%.3fs", p.Name, p.Ready.Sub(t0).Seconds())
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	if evicted[1].Terminated.Before(evicted[0].Terminated) {
		evicted[0], evicted[1] = evicted[1], evicted[0]
	}
	if last := evicted[1].Terminated.Sub(t0); last > 20*time.Second {
		t.Errorf("the second hung replica was evicted %.3fs after the fault, more than 20s", last.Seconds())
	}
	// One at a time: a replacement of the first was Ready before the second eviction.
	var firstRepl PodRecord
	for _, p := range obs.All() {
		if !known[p.Name] && !p.Ready.IsZero() && !p.FirstSeen.Before(t0) && (firstRepl.Name == "" || p.Ready.Before(firstRepl.Ready)) {
			firstRepl = p
		}
	}
	if firstRepl.Name == "" || !firstRepl.Ready.Before(evicted[1].Terminated) {
		t.Errorf("%s was evicted before a replacement of %s was Ready (first replacement %s Ready at %s)",
			evicted[1].Name, evicted[0].Name, firstRepl.Name, firstRepl.Ready.Format("15:04:05.000"))
	}
	for _, p := range hung {
		// The line is written when the Eviction call returns, a moment after the pod is terminating.
		if err := obs.Wait(ctx, 10*time.Second, "a successful evict remediation line for "+p.Name, func() bool {
			_, ok := FindAudit(cl, t0, func(l AuditLine) bool {
				return l.Event == "remediation" && l.Replica == p.Name && l.Action == "evict" && l.Result == "success"
			})
			return ok
		}); err != nil {
			t.Error(err)
		}
	}
	untouched(t, healthy, t0)
}

// The leader killed in the middle of a remediation: it evicted one hung replica and died before
// the replacement was Ready. The new leader reads the guards' memory: it does not evict another
// replica (a second one hung meanwhile) until that replacement is Ready, and it does not evict
// the first again.
func TestLeaderKilledMidRemediation(t *testing.T) {
	ctx, pods := begin(t)
	first, second := pods[0], pods[1]
	leader, err := waitLeader(ctx, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	t.Cleanup(func() { _ = cl.Thaw(DNSNamespace, first.Name) })
	if err := cl.Freeze(DNSNamespace, first.Name); err != nil {
		t.Fatal(err)
	}
	if err := obs.Wait(ctx, time.Minute, "the eviction of "+first.Name, func() bool {
		r, _ := obs.Pod(first.Name)
		return !r.Terminated.IsZero()
	}); err != nil {
		t.Fatal(err)
	}
	// Killed once its eviction is done and said: the audit line is written when the Eviction
	// call returns, a moment after the pod is terminating, and a SIGKILL in between loses the
	// line (not the guards' memory, written ahead) and with it this test's count of evictions.
	if err := obs.Wait(ctx, 10*time.Second, "the audit line of the eviction of "+first.Name, func() bool {
		_, ok := FindAudit(cl, t0, func(l AuditLine) bool {
			return l.Event == "remediation" && l.Replica == first.Name && l.Action == "evict" && l.Result == "success"
		})
		return ok
	}); err != nil {
		t.Fatal(err)
	}
	pid, err := cl.PodPID(HealerNamespace, leader, "healer")
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	zero := int64(0)
	if err := cl.Client.CoreV1().Pods(HealerNamespace).Delete(ctx, leader, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s evicted at +%.3fs; leader %s killed at +%.3fs", first.Name, obs.mustPod(first.Name).Terminated.Sub(t0).Seconds(), leader, killed.Sub(t0).Seconds())

	// The replacement is held back (stopped as soon as it runs) so that the next leader meets an
	// eviction whose replacement is not Ready; a second replica hangs meanwhile.
	known := map[string]bool{}
	for _, p := range pods {
		known[p.Name] = true
	}
	var repl string
	if err := obs.Wait(ctx, time.Minute, "the replacement of "+first.Name+" running", func() bool {
		for _, p := range obs.All() {
			if !known[p.Name] && p.Owner == first.Owner && !p.FirstSeen.Before(t0) {
				if err := cl.Freeze(DNSNamespace, p.Name); err == nil {
					repl = p.Name
					return true
				}
			}
		}
		return false
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.Thaw(DNSNamespace, repl) })
	t.Cleanup(func() { _ = cl.Thaw(DNSNamespace, second.Name) })
	if err := cl.Freeze(DNSNamespace, second.Name); err != nil {
		t.Fatal(err)
	}
	t.Logf("replacement %s held back (Ready before: %v); %s hung at +%.3fs", repl, !obs.mustPod(repl).Ready.IsZero(), second.Name, time.Since(t0).Seconds())

	next, err := waitLeader(ctx, killed)
	if err != nil {
		t.Fatal(err)
	}
	led := time.Now()
	t.Logf("%s leads at +%.3fs", next, led.Sub(t0).Seconds())
	// While the replacement is not Ready, the new leader evicts nothing.
	hold := led.Add(10 * time.Second)
	_ = obs.Wait(ctx, 12*time.Second, "the new leader's first 10s", func() bool {
		return !obs.mustPod(second.Name).Terminated.IsZero() || !obs.mustPod(repl).Terminated.IsZero() || time.Now().After(hold)
	})
	if r := obs.mustPod(second.Name); !r.Terminated.IsZero() {
		t.Errorf("%s evicted at +%.3fs, before the replacement %s of the previous eviction was Ready", second.Name, r.Terminated.Sub(t0).Seconds(), repl)
	}
	if r := obs.mustPod(repl); !r.Terminated.IsZero() {
		t.Errorf("the replacement %s was evicted while its own eviction was in flight", repl)
	}
	// Released: the replacement becomes Ready, and only then is the second replica evicted.
	thawed := time.Now()
	if err := cl.Thaw(DNSNamespace, repl); err != nil {
		t.Fatal(err)
	}
	if err := obs.Wait(ctx, 2*time.Minute, "the eviction of "+second.Name, func() bool {
		return !obs.mustPod(second.Name).Terminated.IsZero()
	}); err != nil {
		t.Fatal(err)
	}
	r2, rr := obs.mustPod(second.Name), obs.mustPod(repl)
	t.Logf("replacement %s thawed at +%.3fs, Ready changes %v; %s evicted at +%.3fs", repl, thawed.Sub(t0).Seconds(), rr.ReadyChanges, second.Name, r2.Terminated.Sub(t0).Seconds())
	readyAfterThaw := false
	for _, c := range rr.ReadyChanges {
		readyAfterThaw = readyAfterThaw || c.What == "+" && c.Seen.After(thawed) && c.Seen.Before(r2.Terminated)
	}
	if !readyAfterThaw && !(rr.Ready.After(thawed) && rr.Ready.Before(r2.Terminated)) {
		t.Errorf("%s was evicted before the replacement %s was Ready again", second.Name, repl)
	}
	// The audit line is written when the Eviction call returns, a moment after the pod is terminating.
	_ = obs.Wait(ctx, 10*time.Second, "the audit line of the eviction of "+second.Name, func() bool {
		_, ok := FindAudit(cl, t0, func(l AuditLine) bool {
			return l.Event == "remediation" && l.Replica == second.Name && l.Action == "evict" && l.Result == "success"
		})
		return ok
	})
	evictions := map[string]int{}
	for _, l := range AuditSince(cl, t0) {
		if l.Event == "remediation" && l.Action == "evict" && l.Result == "success" {
			evictions[l.Replica]++
			t.Logf("+%.3fs %s", l.Time.Sub(t0).Seconds(), l)
		}
	}
	if evictions[first.Name] != 1 || evictions[second.Name] != 1 || evictions[repl] != 0 {
		t.Errorf("evictions %v: want %s and %s once each, nothing else", evictions, first.Name, second.Name)
	}
	if l, ok := FindAudit(cl, killed, func(l AuditLine) bool {
		return l.Event == "remediation" && l.Action == "evict" && l.Result == "success"
	}); ok && (l.Replica != second.Name || l.Pod != next) {
		t.Errorf("the first eviction after the leader was killed: %s; want %s's, by %s", l, second.Name, next)
	}
}

// mustPod is the record of the pod named name, the zero record when the Observer never saw it.
func (o *Observer) mustPod(name string) PodRecord {
	r, _ := o.Pod(name)
	return r
}
