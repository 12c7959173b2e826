package pulse

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/dnspulse/dnspulse/heartbeat"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// The Lease heartbeat is the healer's slow path and what an operator sees with kubectl:
// one coordination.k8s.io/v1 Lease per replica, renewed every lease_interval, with a
// summary in annotations. It runs beside the DNS path and never touches it: a failure
// is logged and counted, and the next interval tries again.
const (
	annotationVerdict = "dnspulse.io/verdict"
	annotationSeq     = "dnspulse.io/seq"
	annotationSummary = "dnspulse.io/summary"
	annotationReasons = "dnspulse.io/reasons"
	leaseLabel        = "app.kubernetes.io/managed-by"
	leaseLabelValue   = "dnspulse-pulse"
)

type leaser struct {
	client    kubernetes.Interface
	namespace string
	name      string
	last      atomic.Pointer[heartbeat.Heartbeat]
	failures  int // consecutive, for log throttling; only the run goroutine touches it
}

// newInClusterLeaser builds a leaser from the pod's in-cluster config.
func newInClusterLeaser(namespace, name string) (*leaser, error) {
	if namespace == "" {
		ns, err := ownNamespace()
		if err != nil {
			return nil, fmt.Errorf("lease: no namespace given: %w", err)
		}
		namespace = ns
	}
	cs, err := inClusterClient()
	if err != nil {
		return nil, fmt.Errorf("lease: %w", err)
	}
	return &leaser{client: cs, namespace: namespace, name: name}, nil
}

func (l *leaser) update(hb *heartbeat.Heartbeat) { l.last.Store(hb) }

func (l *leaser) run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		l.renewLogged(ctx, interval)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (l *leaser) renewLogged(ctx context.Context, interval time.Duration) {
	rctx, cancel := context.WithTimeout(ctx, interval)
	defer cancel()
	if err := l.renew(rctx, interval); err != nil {
		if ctx.Err() != nil {
			return
		}
		leaseRenewals.WithLabelValues("error").Inc()
		if l.failures++; l.failures == 1 || l.failures%12 == 0 {
			log.Warningf("lease %s/%s: %v (%d failures in a row)", l.namespace, l.name, err, l.failures)
		}
		return
	}
	if l.failures > 0 {
		log.Infof("lease %s/%s: renewed again after %d failures", l.namespace, l.name, l.failures)
	}
	l.failures = 0
	leaseRenewals.WithLabelValues("success").Inc()
}

// renew creates or updates the Lease with the latest heartbeat's summary.
func (l *leaser) renew(ctx context.Context, interval time.Duration) error {
	hb := l.last.Load()
	if hb == nil {
		return fmt.Errorf("no heartbeat yet")
	}
	ann, err := leaseAnnotations(hb)
	if err != nil {
		return err
	}
	now := metav1.NewMicroTime(time.Now())
	holder := l.name
	seconds := int32(max(3*interval/time.Second, 1))
	leases := l.client.CoordinationV1().Leases(l.namespace)
	cur, err := leases.Get(ctx, l.name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		lease := &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: l.name, Namespace: l.namespace, Annotations: ann, Labels: map[string]string{leaseLabel: leaseLabelValue}},
			Spec:       coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: &seconds, AcquireTime: &now, RenewTime: &now},
		}
		_, err = leases.Create(ctx, lease, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	cur = cur.DeepCopy()
	if cur.Annotations == nil {
		cur.Annotations = map[string]string{}
	}
	for k, v := range ann {
		cur.Annotations[k] = v
	}
	if cur.Labels == nil {
		cur.Labels = map[string]string{}
	}
	cur.Labels[leaseLabel] = leaseLabelValue
	cur.Spec.HolderIdentity, cur.Spec.LeaseDurationSeconds, cur.Spec.RenewTime = &holder, &seconds, &now
	_, err = leases.Update(ctx, cur, metav1.UpdateOptions{})
	return err
}

// leaseSummary is the 10 s window, small enough for an annotation.
type leaseSummary struct {
	Queries       uint64  `json:"queries"`
	ServfailRatio float64 `json:"servfailRatio"`
	NXDomainRatio float64 `json:"nxdomainRatio"`
	P99Micros     uint64  `json:"p99Micros"`
	SelfProbeOK   bool    `json:"selfProbeOK"`
	Time          string  `json:"time"`
}

func leaseAnnotations(hb *heartbeat.Heartbeat) (map[string]string, error) {
	w := hb.Windows[heartbeat.Window10s]
	b, err := json.Marshal(leaseSummary{
		Queries: w.Queries, ServfailRatio: w.ServfailRatio, NXDomainRatio: w.NXDomainRatio,
		P99Micros: w.LatencyMicros.P99, SelfProbeOK: hb.SelfProbe.OK, Time: hb.Time.Format(time.RFC3339Nano),
	})
	if err != nil {
		return nil, err
	}
	return map[string]string{
		annotationVerdict: hb.Verdict,
		annotationSeq:     strconv.FormatUint(hb.Seq, 10),
		annotationSummary: string(b),
		annotationReasons: strings.Join(hb.Reasons, "; "),
	}, nil
}

// releaseTimeout bounds the Lease's deletion at shutdown: CoreDNS is exiting, past its
// lameduck, out of every endpoint, so a few seconds more of Terminating harm no client. 2 s
// was too short for a loaded apiserver (e2e at a load average of 16: the Get alone took
// longer); what is left behind the healer's leader deletes later.
const releaseTimeout = 5 * time.Second

// release deletes the Lease at a clean shutdown, best effort: a Lease cannot be owned by
// the Pod across namespaces (no garbage collection), so pulse removes its own, and the
// healer removes those of pods that died without it. Only a Lease this replica holds is
// deleted, and only as read (the UID and resourceVersion are preconditions).
func (l *leaser) release(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, releaseTimeout)
	defer cancel()
	leases := l.client.CoordinationV1().Leases(l.namespace)
	cur, err := leases.Get(ctx, l.name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return
	}
	if err == nil && (cur.Spec.HolderIdentity == nil || *cur.Spec.HolderIdentity != l.name) {
		return
	}
	if err == nil {
		err = leases.Delete(ctx, l.name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &cur.UID, ResourceVersion: &cur.ResourceVersion}})
	}
	if err != nil && !apierrors.IsNotFound(err) {
		log.Warningf("lease %s/%s: not deleted at shutdown (the healer removes it later): %v", l.namespace, l.name, err)
		return
	}
	log.Infof("lease %s/%s: deleted at shutdown", l.namespace, l.name)
}
