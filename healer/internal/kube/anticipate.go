package kube

import (
	"context"
	"fmt"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/dnspulse/dnspulse/healer/internal/replica"
)

// admissionFresh is how long an eviction's dry run, done ahead of a drain, admits that drain.
// The apiserver's own check reads the PodDisruptionBudget's status, which the disruption
// controller updates asynchronously: an admission a second old is as current as the budget it
// read. Within that second the healer evicts nothing else (one action at a time, G5), and
// a drain it admitted wrongly is undone when the eviction is refused.
const admissionFresh = time.Second

// anticipateTimeout bounds a dry run run ahead.
const anticipateTimeout = 5 * time.Second

// anticipateSpacing is the least time between two dry runs run ahead: a fleet whose
// replicas keep turning suspect costs the apiserver at most ten a second. A drain that finds
// none for its pod runs its own.
const anticipateSpacing = 100 * time.Millisecond

// admission is one dry run of a pod's eviction run ahead of its drain.
type admission struct {
	uid  types.UID
	at   time.Time     // when the dry run was sent
	done chan struct{} // closed when ok and why are set
	ok   bool
	why  string
}

// anticipation holds the latest dry run run ahead, one at a time: a suspect replica is
// seldom more than one, and a noisy fleet must not turn its suspicions into API calls.
type anticipation struct {
	mu     sync.Mutex
	latest *admission
}

// begin starts a dry run for uid at now, unless one is under way, one began less than
// anticipateSpacing ago, or one for uid is fresh.
func (a *anticipation) begin(uid types.UID, now time.Time) (*admission, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if l := a.latest; l != nil {
		if now.Sub(l.at) < anticipateSpacing {
			return nil, false
		}
		select {
		case <-l.done:
			if l.uid == uid && now.Sub(l.at) < admissionFresh/2 {
				return nil, false
			}
		default:
			return nil, false // one under way
		}
	}
	a.latest = &admission{uid: uid, at: now, done: make(chan struct{})}
	return a.latest, true
}

// admitted returns the admission for uid run ahead and not older than admissionFresh at
// now, waiting for one under way (up to ctx); ok is false when there is none, or it did not
// admit the eviction.
func (a *anticipation) admitted(ctx context.Context, uid types.UID, now time.Time) (admission, bool) {
	a.mu.Lock()
	l := a.latest
	a.mu.Unlock()
	if l == nil || l.uid != uid {
		return admission{}, false
	}
	select {
	case <-l.done:
	case <-ctx.Done():
		return admission{}, false
	}
	return *l, l.ok && now.Sub(l.at) < admissionFresh
}

// Anticipate implements replica.Drainer: a replica turned suspect may be drained in a moment;
// the eviction's dry run is run now, in the background, so that the drain needs only its
// own call. It changes nothing, and runs only where a drain could follow.
func (r *remediator) Anticipate(t replica.Target) {
	if !r.readinessGate || !r.leader.IsLeader() {
		return
	}
	pod := r.pods.get(t.Name)
	if pod == nil || pod.DeletionTimestamp != nil || !declaresGate(pod) {
		return
	}
	a, ok := r.ahead.begin(pod.UID, time.Now())
	if !ok {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(r.baseCtx, anticipateTimeout)
		defer cancel()
		a.ok, a.why = r.CanEvict(ctx, t)
		close(a.done)
	}()
}

// admit says whether the pod's eviction would be admitted now: by a dry run run ahead
// (Anticipate) and fresh, or by one run now.
func (r *remediator) admit(ctx context.Context, t replica.Target, uid types.UID) (bool, string) {
	now := time.Now()
	if a, ok := r.ahead.admitted(ctx, uid, now); ok {
		return true, fmt.Sprintf("%s (%s before the drain)", a.why, time.Since(a.at).Round(time.Millisecond))
	}
	return r.CanEvict(ctx, t)
}
