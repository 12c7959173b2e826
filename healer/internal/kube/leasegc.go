package kube

import (
	"context"
	"log/slog"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
	coordinationlisters "k8s.io/client-go/listers/coordination/v1"
	"k8s.io/utils/clock"
)

// The pulse Leases live in a namespace of their own (--pulse-lease-namespace), so that the
// CoreDNS ServiceAccount holds no right on any other Lease; an object cannot be owned by one
// in another namespace, so the garbage collector never removes them. pulse deletes its own at
// a clean exit; the leader removes those of pods that died without doing so.
const (
	// pulseLeaseLabel marks the Leases pulse writes (plugin/pulse/lease.go).
	pulseLeaseLabel, pulseLeaseLabelValue = "app.kubernetes.io/managed-by", "dnspulse-pulse"
	// leaseGCAfter: a Lease is a candidate once it has been expired this long (nobody renews it).
	leaseGCAfter = 2 * time.Minute
	// leaseGCInterval is how often the leader looks.
	leaseGCInterval = time.Minute
)

// leaseCollector deletes the pulse Leases whose pod is gone: expired for leaseGCAfter, and
// no pod of that name in the CoreDNS namespace by a live read (never the cache's word).
type leaseCollector struct {
	client       kubernetes.Interface
	leases       coordinationlisters.LeaseNamespaceLister
	leaseNS      string
	podNamespace string
	leader       *leadership
	clock        clock.WithTicker
	log          *slog.Logger
}

func (g *leaseCollector) run(ctx context.Context) {
	t := g.clock.NewTicker(leaseGCInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		}
		g.collect(ctx)
	}
}

// collect makes one pass; it returns the names of the Leases it deleted.
func (g *leaseCollector) collect(ctx context.Context) []string {
	if !g.leader.IsLeader() {
		return nil
	}
	sel := labels.SelectorFromSet(labels.Set{pulseLeaseLabel: pulseLeaseLabelValue})
	leases, err := g.leases.List(sel)
	if err != nil {
		return nil
	}
	var deleted []string
	for _, l := range leases {
		if !g.expired(l) {
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := g.client.CoreV1().Pods(g.podNamespace).Get(pctx, l.Name, metav1.GetOptions{})
		cancel()
		if !apierrors.IsNotFound(err) {
			continue // the pod exists, or the apiserver could not say: keep it
		}
		if !g.leader.IsLeader() {
			return deleted
		}
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err = g.client.CoordinationV1().Leases(g.leaseNS).Delete(dctx, l.Name, metav1.DeleteOptions{
			// Only as read: a Lease renewed meanwhile (a pod of that name came back) stays.
			Preconditions: &metav1.Preconditions{UID: &l.UID, ResourceVersion: &l.ResourceVersion},
		})
		cancel()
		if err != nil && !apierrors.IsNotFound(err) {
			g.log.Warn("deleting the pulse Lease of a pod that is gone", "lease", g.leaseNS+"/"+l.Name, "err", err)
			continue
		}
		deleted = append(deleted, l.Name)
		g.log.Info("pulse Lease deleted: its pod is gone and nobody renewed it", "lease", g.leaseNS+"/"+l.Name,
			"pod", g.podNamespace+"/"+l.Name)
	}
	return deleted
}

// expired says whether l's last renewal (or creation) plus its duration is leaseGCAfter past.
func (g *leaseCollector) expired(l *coordinationv1.Lease) bool {
	last := l.CreationTimestamp.Time
	if l.Spec.RenewTime != nil {
		last = l.Spec.RenewTime.Time
	}
	var d time.Duration
	if l.Spec.LeaseDurationSeconds != nil {
		d = time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second
	}
	return g.clock.Since(last) > d+leaseGCAfter
}
