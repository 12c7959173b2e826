package pulse

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/dnspulse/dnspulse/heartbeat"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

func testHeartbeat(seq uint64, verdict string) *heartbeat.Heartbeat {
	return &heartbeat.Heartbeat{Seq: seq, Verdict: verdict, Time: time.Now(), Reasons: []string{},
		SelfProbe: heartbeat.SelfProbe{OK: true},
		Windows:   map[string]heartbeat.Window{"10s": {Queries: 42, ServfailRatio: 0.5, LatencyMicros: heartbeat.Latency{P99: 1234}}}}
}

func TestLeaseCreatedThenRenewed(t *testing.T) {
	cs := fake.NewClientset()
	l := &leaser{client: cs, namespace: "kube-system", name: "coredns-abc"}
	ctx := context.Background()
	if err := l.renew(ctx, 5*time.Second); err == nil {
		t.Fatal("renew before any heartbeat: want an error, not an empty Lease")
	}
	l.update(testHeartbeat(7, "healthy"))
	if err := l.renew(ctx, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	lease, err := cs.CoordinationV1().Leases("kube-system").Get(ctx, "coredns-abc", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if *lease.Spec.HolderIdentity != "coredns-abc" || *lease.Spec.LeaseDurationSeconds != 15 || lease.Annotations[annotationSeq] != "7" ||
		lease.Annotations[annotationVerdict] != "healthy" || !strings.Contains(lease.Annotations[annotationSummary], `"queries":42`) {
		t.Fatalf("lease %+v annotations %v", lease.Spec, lease.Annotations)
	}
	first := lease.Spec.RenewTime.Time

	l.update(testHeartbeat(9, "degraded"))
	if err := l.renew(ctx, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	lease, _ = cs.CoordinationV1().Leases("kube-system").Get(ctx, "coredns-abc", metav1.GetOptions{})
	if lease.Annotations[annotationSeq] != "9" || lease.Annotations[annotationVerdict] != "degraded" || lease.Spec.RenewTime.Time.Before(first) {
		t.Fatalf("not renewed: %v %v", lease.Annotations, lease.Spec.RenewTime)
	}
}

func TestLeaseFailureIsCountedNotFatal(t *testing.T) {
	cs := fake.NewClientset()
	cs.PrependReactor("get", "leases", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errors.New("apiserver unreachable")
	})
	l := &leaser{client: cs, namespace: "kube-system", name: "coredns-abc"}
	l.update(testHeartbeat(1, "healthy"))
	l.renewLogged(context.Background(), time.Second)
	l.renewLogged(context.Background(), time.Second)
	if l.failures != 2 {
		t.Fatalf("failures %d, want 2", l.failures)
	}
}

func TestLeaseReleasedAtShutdown(t *testing.T) {
	ctx := context.Background()
	cs := fake.NewClientset()
	l := &leaser{client: cs, namespace: "dnspulse-heartbeat", name: "coredns-abc"}
	l.release(ctx) // none yet: nothing to do, no error
	l.update(testHeartbeat(1, "healthy"))
	if err := l.renew(ctx, time.Second); err != nil {
		t.Fatal(err)
	}
	l.release(ctx)
	if _, err := cs.CoordinationV1().Leases("dnspulse-heartbeat").Get(ctx, "coredns-abc", metav1.GetOptions{}); err == nil {
		t.Fatal("the Lease survived a clean shutdown")
	}

	// One held by someone else (a replica of the same name elsewhere) is not ours to delete.
	if err := l.renew(ctx, time.Second); err != nil {
		t.Fatal(err)
	}
	other := "someone-else"
	cur, _ := cs.CoordinationV1().Leases("dnspulse-heartbeat").Get(ctx, "coredns-abc", metav1.GetOptions{})
	cur.Spec.HolderIdentity = &other
	if _, err := cs.CoordinationV1().Leases("dnspulse-heartbeat").Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	l.release(ctx)
	if _, err := cs.CoordinationV1().Leases("dnspulse-heartbeat").Get(ctx, "coredns-abc", metav1.GetOptions{}); err != nil {
		t.Fatalf("deleted a Lease held by another: %v", err)
	}
}
