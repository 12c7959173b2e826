//go:build e2e

package heal

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// cachedFor is how long the test watches the canary rotate through a plain cache: ten of its
// rotations (every 2 s in Values), each value answered from the cache for up to the
// record's TTL (30 s, the Corefile's `ttl 30`), far past the canary's max lag (3 s).
// DNSPULSE_CANARY_HOLD changes it (make bench-detect holds every benign situation as long).
const cachedFor = 20 * time.Second

// The benign row of make bench-detect's table that this test fills when
// DNSPULSE_BENCH_CANARY_OUT names a file (hack/bench-detect.sh puts it in the table).
const canaryRowName = "a canary answered through a plain `cache 30` (in-cluster: e2e TestCanaryThroughPlainCache)"

// TestCanaryThroughPlainCache: with a plain `cache 30` (kubeadm's Corefile turns the cache off
// for cluster.local; many clusters' do not), a replica answers the freshness canary from its
// cache for up to the record's TTL after each rotation, the replaced value included. The
// healer judges a canary answer by when it was fetched (its TTL counted down), so a healthy
// replica behind a cache is never "behind": no canary reason in any state, no degraded state,
// no drain, through ten rotations. The test proves the cache did serve replaced values.
func TestCanaryThroughPlainCache(t *testing.T) {
	ctx, _ := begin(t)
	t.Cleanup(func() {
		// Back to the suite's Corefile (begin's cleanup, which runs after this one, then waits
		// for the cluster to be steady again).
		if err := SetCorefile(context.Background(), cl, Corefile, false); err != nil {
			t.Errorf("restoring the Corefile: %v", err)
		}
	})
	plain, ok := plainCache(Corefile)
	if !ok {
		t.Fatal("the suite's Corefile has no cache block with `disable ... cluster.local` to make plain")
	}
	if err := SetCorefile(ctx, cl, plain, false); err != nil {
		t.Fatal(err)
	}
	pods, err := WaitSteady(ctx, cl, obs, 3, steadyTimeout)
	if err != nil {
		t.Fatalf("after switching to a plain cache: %v", err)
	}
	// WaitSteady waited past the healer's warm-up, after which the canary rule (R3) applies.
	since := time.Now()

	svc, err := cl.Client.CoreV1().Services(HealerNamespace).Get(ctx, "dnspulse-canary", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the canary Service: %v", err)
	}
	name := fmt.Sprintf("%s.%s.svc.cluster.local.", svc.Name, svc.Namespace)
	hold := cachedFor
	if v := os.Getenv("DNSPULSE_CANARY_HOLD"); v != "" {
		if hold, err = time.ParseDuration(v); err != nil || hold <= 0 {
			t.Fatalf("DNSPULSE_CANARY_HOLD=%q: want a positive duration such as 30s", v)
		}
	}
	replaced, answers := 0, 0
	for end := time.Now().Add(hold); time.Now().Before(end); {
		svc, err := cl.Client.CoreV1().Services(HealerNamespace).Get(ctx, "dnspulse-canary", metav1.GetOptions{})
		if err != nil {
			t.Fatalf("the canary Service: %v", err)
		}
		current := dns.Fqdn(svc.Spec.ExternalName)
		for _, p := range pods {
			target, ttl, err := canaryAnswer(p.IP, name)
			if err != nil {
				continue // a replica busy for a moment; the healer's view is what is judged
			}
			answers++
			if !strings.EqualFold(target, current) && ttl < 30 {
				replaced++ // the cache answered a value the leader has replaced
			}
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(200 * time.Millisecond): // sampling the answers, not synchronising
		}
	}
	t.Logf("%d canary answers from the replicas, %d of them a replaced value from the cache", answers, replaced)
	if replaced == 0 {
		t.Fatalf("no replica answered a replaced canary value from its cache in %s: the test did not test the cache", hold)
	}
	degraded, actions, suspects, global := 0, 0, 0, false
	for _, l := range AuditSince(cl, since) {
		switch l.Event {
		case "remediation":
			actions++
			t.Errorf("an action on a healthy replica behind a plain cache: %s", l)
		case "state":
			canaryReason := strings.Contains(strings.Join(l.Reasons, "; "), "canary")
			switch l.To {
			case "degraded":
				degraded++
			case "suspect":
				suspects++
			case "global":
				global = true
			}
			if l.To == "degraded" || l.To == "global" || canaryReason {
				t.Errorf("a healthy replica behind a plain cache judged: %s", l)
			}
		}
	}
	untouched(t, pods, since)
	if out := os.Getenv("DNSPULSE_BENCH_CANARY_OUT"); out != "" {
		// The same columns as test/healer's benign table; the cache's work in the name column.
		row := fmt.Sprintf("| %s; %d of %d answers a replaced value from the cache | %s | %d | %d | %d | %v |\n",
			canaryRowName, replaced, answers, hold, degraded, actions, suspects, global)
		if err := os.WriteFile(out, []byte(row), 0o644); err != nil {
			t.Errorf("DNSPULSE_BENCH_CANARY_OUT: %v", err)
		}
	}
}

// plainCache turns the Corefile's cache block (kubeadm's, which disables the cache for
// cluster.local) into a plain `cache 30`.
func plainCache(corefile string) (string, bool) {
	i := strings.Index(corefile, "cache 30 {")
	if i < 0 {
		return "", false
	}
	j := strings.Index(corefile[i:], "}")
	if j < 0 || !strings.Contains(corefile[i:i+j], "cluster.local") {
		return "", false
	}
	return corefile[:i] + "cache 30" + corefile[i+j+1:], true
}

// canaryAnswer asks server for name's CNAME and returns its target and TTL.
func canaryAnswer(server, name string) (string, uint32, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeCNAME)
	c := &dns.Client{Timeout: 500 * time.Millisecond}
	r, _, err := c.Exchange(m, net.JoinHostPort(server, "53"))
	if err != nil {
		return "", 0, err
	}
	for _, rr := range r.Answer {
		if cn, ok := rr.(*dns.CNAME); ok {
			return cn.Target, cn.Hdr.Ttl, nil
		}
	}
	return "", 0, fmt.Errorf("%s from %s: rcode %s, no CNAME", name, server, dns.RcodeToString[r.Rcode])
}
