package kube

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	clocktesting "k8s.io/utils/clock/testing"
)

func TestLeaseCollector(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	lease := func(name string, renewedAgo time.Duration, managed bool) *coordinationv1.Lease {
		l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "dnspulse-heartbeat", UID: types.UID("uid-" + name), ResourceVersion: "7"}}
		if managed {
			l.Labels = map[string]string{pulseLeaseLabel: pulseLeaseLabelValue}
		}
		renew := metav1.NewMicroTime(now.Add(-renewedAgo))
		seconds := int32(15)
		l.Spec.RenewTime, l.Spec.LeaseDurationSeconds = &renew, &seconds
		return l
	}
	objects := []runtime.Object{
		lease("gone-long-ago", time.Hour, true),        // pod gone, expired: deleted
		lease("alive-but-stale", time.Hour, true),      // its pod exists (hung): kept
		lease("gone-recently", 30*time.Second, true),   // pod gone, not expired long enough: kept
		lease("not-ours", time.Hour, false),            // no pulse label: kept
		lease("apiserver-cannot-say", time.Hour, true), // the pod read fails: kept
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "alive-but-stale", Namespace: "kube-system"}},
	}
	cs := fake.NewClientset(objects...)
	cs.PrependReactor("get", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.(k8stesting.GetAction).GetName() == "apiserver-cannot-say" {
			return true, nil, errors.New("connection refused")
		}
		return false, nil, nil
	})
	factory := informers.NewSharedInformerFactoryWithOptions(cs, 0, informers.WithNamespace("dnspulse-heartbeat"))
	lister := factory.Coordination().V1().Leases().Lister().Leases("dnspulse-heartbeat")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())

	leader := &leadership{}
	g := &leaseCollector{client: cs, leases: lister, leaseNS: "dnspulse-heartbeat", podNamespace: "kube-system",
		leader: leader, clock: clocktesting.NewFakeClock(now), log: slog.New(slog.DiscardHandler)}
	if got := g.collect(ctx); len(got) != 0 {
		t.Fatalf("a follower deleted %v", got)
	}
	leader.set(true)
	got := g.collect(ctx)
	if !slices.Equal(got, []string{"gone-long-ago"}) {
		t.Fatalf("deleted %v, want only gone-long-ago", got)
	}
	left, _ := cs.CoordinationV1().Leases("dnspulse-heartbeat").List(ctx, metav1.ListOptions{})
	if len(left.Items) != 4 {
		t.Errorf("%d Leases left, want 4", len(left.Items))
	}
	for _, a := range cs.Actions() {
		if d, ok := a.(k8stesting.DeleteAction); ok && (d.GetDeleteOptions().Preconditions == nil || d.GetDeleteOptions().Preconditions.ResourceVersion == nil) {
			t.Errorf("delete of %s without a resourceVersion precondition", d.GetName())
		}
	}
}
