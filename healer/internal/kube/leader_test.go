package kube

import (
	"context"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/events"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/dnspulse/dnspulse/healer/internal/config"
)

// Two healers on one apiserver: one leads (acts, rotates the canary), the other follows
// (refuses to act, tracks the canary by reading it) and takes over when the leader stops.
func TestTwoHealersOneLeader(t *testing.T) {
	client := fake.NewClientset(pod("a", "10.0.0.1", &rsOwner))
	start := func(identity string) (*Mode, *clocktesting.FakeClock, context.CancelFunc, chan error) {
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		cfg := baseConfig()
		cfg.LeaderElection.Enabled, cfg.Canary.Enabled = true, true
		le := &cfg.LeaderElection
		le.LeaseDuration, le.RenewDeadline, le.RetryPeriod = config.D(2*time.Second), config.D(time.Second), config.D(200*time.Millisecond)
		clk := clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
		opts := testOptions()
		opts.Identity, opts.Clock = identity, clk
		m, err := NewWithClient(ctx, cfg, opts, client, events.NewFakeRecorder(100))
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- m.Run(ctx) }()
		return m, clk, cancel, done
	}
	service := func() string {
		svc, err := client.CoreV1().Services("dnspulse").Get(context.Background(), "dnspulse-canary", metav1.GetOptions{})
		if err != nil {
			return ""
		}
		return svc.Spec.ExternalName
	}

	m1, _, stop1, done1 := start("healer-1")
	eventually(t, "healer-1 leads", m1.IsLeader)
	eventually(t, "canary created by healer-1", func() bool { return service() != "" })

	m2, clk2, _, _ := start("healer-2")
	v := service()
	// The follower learns the leader's value by reading the Service on its own ticker.
	eventually(t, "healer-2 follows the canary", func() bool {
		clk2.Step(5 * time.Second)
		ok, why := m2.Freshness().Accept(v, clk2.Now(), 0)
		return ok && why == ""
	})
	if m2.IsLeader() {
		t.Fatal("two leaders")
	}
	out := m2.Remediator().Remediate(context.Background(), target("a", "10.0.0.1"), nil, false)
	if out.Result != "refused" || !strings.Contains(out.Message, "leader") {
		t.Fatalf("follower's remediation: %+v, want refused", out)
	}

	stop1() // releases the lease (ReleaseOnCancel)
	if err := <-done1; err != nil {
		t.Fatalf("healer-1 Run: %v", err)
	}
	eventually(t, "healer-2 takes over", m2.IsLeader)
	// The new leader continues the counter from the Service it adopted.
	eventually(t, "healer-2 rotates the canary", func() bool {
		clk2.Step(5 * time.Second)
		n1, _ := canaryCounter(normalizeName(v))
		n2, ok := canaryCounter(normalizeName(service()))
		return ok && n2 > n1
	})
}
