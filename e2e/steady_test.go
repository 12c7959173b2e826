//go:build e2e

package e2e

import (
	"context"
	"testing"
	"time"
)

// steadyTimeout bounds the wait for the steady state before and after a test: the longest
// recovery a test may leave behind is a replaced CoreDNS pod (about 20 s on a loaded machine) or
// the pod informers' relist after an apiserver restart (client-go backs off up to 30 s).
const steadyTimeout = 3 * time.Minute

// steady makes the test start from the steady state (cluster.WaitSteady: the apiserver up, no
// harness fault in place, the node Ready, no pod Terminating, the CoreDNS Deployment with its
// three replicas Ready, and each of them answering) and leave it: at the end, after the test's own
// cleanups, every fault is undone and the steady state awaited again; a test that leaves the
// cluster unsteady fails itself rather than the test after it.
func steady(t *testing.T) {
	t.Helper()
	wait := func(ctx context.Context) error {
		if err := cl.WaitSteady(ctx, steadyTimeout, dnsNS+"/coredns"); err != nil {
			return err
		}
		return eachDNSPodAnswers(ctx)
	}
	if err := wait(context.Background()); err != nil {
		t.Fatalf("before the test: %v (logs: %s)", err, cl.LogDir)
	}
	t.Cleanup(func() {
		ctx := context.Background()
		if faults := cl.ActiveFaults(ctx); len(faults) > 0 {
			t.Errorf("the test left faults in place (undoing them): %v", faults)
		}
		if err := cl.ClearFaults(ctx); err != nil {
			t.Errorf("undoing faults: %v", err)
		}
		if err := wait(ctx); err != nil {
			t.Errorf("the test left the cluster unsteady: %v (logs: %s)", err, cl.LogDir)
		}
	})
}

// eachDNSPodAnswers waits until every Ready CoreDNS pod answers kubernetes.default over UDP.
func eachDNSPodAnswers(ctx context.Context) error {
	pods, err := listReadyDNSPods(ctx)
	if err != nil {
		return err
	}
	for _, p := range pods {
		deadline := time.Now().Add(30 * time.Second)
		for {
			err := answers("udp", p.Status.PodIP, time.Second)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				return err
			}
			time.Sleep(100 * time.Millisecond) // a query is the event: nothing to watch
		}
	}
	return nil
}
