package cluster

import (
	"context"
	"time"
)

// The node agent's API calls, named in its log and counted by Node.APIFailures.
const (
	CallPodStatus  = "pod status"
	CallPodDelete  = "pod delete"
	CallNodeLease  = "node lease"
	CallNodeStatus = "node status"
)

const (
	// apiCallTimeout bounds one write of the node agent: a request stuck on a dying apiserver must
	// not hold a pod's loop (watches are not affected: this is a context per call).
	apiCallTimeout = 10 * time.Second
	// apiBackoffMin and apiBackoffMax bound the wait between attempts of a failed call: 200ms
	// doubling, as the kubelet's status manager and node lease controller retry (their ceilings are
	// 7-10s; ours is lower so that a test waits less once the apiserver is back).
	apiBackoffMin = 200 * time.Millisecond
	apiBackoffMax = 5 * time.Second
)

// apiRetry follows one API call that the node agent repeats until it succeeds, as a kubelet does:
// what failed while the apiserver was away (a status update, the final DELETE of a terminated pod,
// the node Lease) is written once it is back. It keeps the backoff and logs boundedly: the first
// failure, then the 2nd, 4th, 8th... (an outage of minutes is a handful of lines), and the
// recovery with the number of failures and how long they lasted.
type apiRetry struct {
	n        *Node
	call     string // one of the Call* names
	what     string // the object, for the log
	failures int
	since    time.Time
	backoff  time.Duration
}

func (n *Node) retrier(call, what string) *apiRetry {
	return &apiRetry{n: n, call: call, what: what}
}

// failing says whether the last attempt failed.
func (a *apiRetry) failing() bool { return a.failures > 0 }

// result records the outcome of an attempt; after a failure, delay is how long to wait before
// the next one.
func (a *apiRetry) result(err error) {
	logf := a.n.c.opts.Logf
	if err == nil {
		if a.failures > 0 {
			logf("node agent: %s %s succeeded after %d failed attempts over %s", a.call, a.what, a.failures, time.Since(a.since).Round(time.Millisecond))
		}
		a.failures, a.backoff = 0, 0
		return
	}
	if a.failures == 0 {
		a.since = time.Now()
	}
	a.failures++
	a.n.countFailure(a.call)
	if a.failures&(a.failures-1) == 0 { // 1, 2, 4, 8, ...
		logf("node agent: %s %s failed (attempt %d, retrying with backoff): %v", a.call, a.what, a.failures, err)
	}
	a.backoff = min(max(2*a.backoff, apiBackoffMin), apiBackoffMax)
}

// delay is the wait before the next attempt of a failing call.
func (a *apiRetry) delay() time.Duration { return a.backoff }

// until calls fn until it returns nil or done(err) says the error is final, waiting with backoff
// between attempts. It gives up only when ctx or stop ends (the node agent is going away) and
// returns fn's last error then.
func (a *apiRetry) until(ctx context.Context, stop <-chan struct{}, fn func(context.Context) error, done func(error) bool) error {
	for {
		callCtx, cancel := context.WithTimeout(ctx, apiCallTimeout)
		err := fn(callCtx)
		cancel()
		if err == nil || done(err) {
			a.result(nil)
			return nil
		}
		a.result(err)
		select {
		case <-ctx.Done():
			return err
		case <-stop:
			return err
		case <-time.After(a.delay()):
		}
	}
}
