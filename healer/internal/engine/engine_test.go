package engine

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dnspulse/dnspulse/healer/api"
	"github.com/dnspulse/dnspulse/healer/audit"
	"github.com/dnspulse/dnspulse/healer/internal/check"
	"github.com/dnspulse/dnspulse/healer/internal/config"
	"github.com/dnspulse/dnspulse/healer/internal/metrics"
	"github.com/dnspulse/dnspulse/healer/internal/replica"
	"github.com/dnspulse/dnspulse/healer/internal/static"
	"github.com/dnspulse/dnspulse/heartbeat"
)

// fakeReplica is an in-process DNS responder with a /pulse listener; broken makes both
// hang (a hung process).
type fakeReplica struct {
	target replica.Target
	broken atomic.Bool
	seq    atomic.Uint64
	// kubeletNotReady: as a pod, its containers are not ready (runKubeLike).
	kubeletNotReady bool
}

func newFakeReplica(t *testing.T, name string) *fakeReplica {
	t.Helper()
	f := &fakeReplica{}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		if f.broken.Load() {
			return
		}
		m := new(dns.Msg)
		m.SetReply(r)
		m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5}, A: net.IPv4(10, 0, 0, 1)})
		_ = w.WriteMsg(m)
	})}
	go func() { _ = srv.ActivateAndServe() }()
	t.Cleanup(func() { _ = srv.Shutdown() })
	hang := make(chan struct{})
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if f.broken.Load() {
			<-hang
			return
		}
		win := heartbeat.Window{Queries: 50, Rcodes: map[string]uint64{"NOERROR": 50}, LatencyMicros: heartbeat.Latency{P99: 300}}
		_ = json.NewEncoder(w).Encode(heartbeat.Heartbeat{
			Version: 1, Replica: name, Seq: f.seq.Add(1), Time: time.Now(), Tick: heartbeat.Duration(20 * time.Millisecond),
			Windows:   map[string]heartbeat.Window{"1s": win, "10s": win, "60s": win},
			SelfProbe: heartbeat.SelfProbe{OK: true, Rcode: "NOERROR", Time: time.Now()}, Verdict: heartbeat.VerdictHealthy,
		})
	}))
	t.Cleanup(func() { close(hang); hs.Close() })
	f.target = replica.Target{Name: name, DNSAddr: pc.LocalAddr().String(), PulseAddr: strings.TrimPrefix(hs.URL, "http://"), Ready: true, Remediable: true}
	return f
}

type recordingRemediator struct {
	mu    sync.Mutex
	calls []string
}

func (r *recordingRemediator) Remediate(_ context.Context, t replica.Target, _ []string, dryRun bool) replica.Outcome {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, t.Name)
	if dryRun {
		return replica.Outcome{Action: "exec", Result: "dry-run"}
	}
	return replica.Outcome{Action: "exec", Result: "success"}
}

func (r *recordingRemediator) names() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.calls...)
}

type leader bool

func (l leader) IsLeader() bool { return bool(l) }

// syncBuffer is the audit log's writer in tests.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func runEngine(t *testing.T, fakes []*fakeReplica, rem replica.Remediator, gate LeaderGate) (*syncBuffer, context.CancelFunc) {
	t.Helper()
	return runEngineWith(t, fakes, rem, gate, nil, nil)
}

// runEngineWith is runEngine with the guards changed by tune and Events to n.
func runEngineWith(t *testing.T, fakes []*fakeReplica, rem replica.Remediator, gate LeaderGate, tune func(*config.Guards), n replica.Notifier) (*syncBuffer, context.CancelFunc) {
	t.Helper()
	var ts []replica.Target
	for _, f := range fakes {
		ts = append(ts, f.target)
	}
	ck, _ := check.Parse("probe.test/A")
	buf := &syncBuffer{}
	def := config.Default()
	guards := config.Guards{MinAvailable: 1, MaxDegraded: 1, Cooldown: config.D(time.Hour), GlobalCooldown: config.D(time.Hour),
		RetryBackoff: config.D(time.Second), RetryBackoffMax: config.D(time.Second), FlapCount: 3, FlapWindow: config.D(time.Minute)}
	if tune != nil {
		tune(&guards)
	}
	e, err := New(Config{
		Checks: []check.Check{ck}, Probe: def.Probe, Heartbeat: def.Heartbeat, Thresholds: def.Thresholds,
		Guards: guards, Audit: audit.New(buf), Metrics: metrics.New(func() float64 { return 0 }),
	}, Mode{Name: "test", Discovery: static.NewDiscovery(ts), Remediator: rem, Leader: gate, Notifier: n})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
		if t.Failed() {
			t.Logf("audit:\n%s", buf.String())
		}
	})
	for _, f := range fakes {
		waitFor(t, func() bool { return lastState(buf.String(), f.target.Name) == "healthy" })
	}
	return buf, cancel
}

// lastState is the replica's latest state in the audit log ("" before any).
func lastState(log, name string) string {
	state := ""
	for _, l := range strings.Split(log, "\n") {
		var v struct{ Event, Replica, To string }
		if json.Unmarshal([]byte(l), &v) == nil && v.Event == "state" && v.Replica == name {
			state = v.To
		}
	}
	return state
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 20s")
		}
		time.Sleep(5 * time.Millisecond) // polling an observable condition, not synchronising
	}
}

func TestEngineRemediatesOneHungReplicaOnce(t *testing.T) {
	fakes := []*fakeReplica{newFakeReplica(t, "a"), newFakeReplica(t, "b"), newFakeReplica(t, "c")}
	rem := &recordingRemediator{}
	buf, _ := runEngine(t, fakes, rem, nil)
	fakes[1].broken.Store(true)
	waitFor(t, func() bool {
		return strings.Contains(buf.String(), `"event":"remediation","replica":"b","action":"exec","dryRun":false,"result":"success"`)
	})
	if !strings.Contains(buf.String(), `"replica":"b","from":"suspect","to":"degraded"`) && !strings.Contains(buf.String(), `"replica":"b","from":"healthy","to":"degraded"`) {
		t.Errorf("no degraded line for b")
	}
	// The cooldown holds: the still-degraded replica is not remediated again.
	waitFor(t, func() bool { return strings.Contains(buf.String(), `"result":"refused","message":"--cooldown`) })
	if got := rem.names(); len(got) != 1 || got[0] != "b" {
		t.Errorf("remediations %v, want exactly [b]", got)
	}
}

func TestEngineGlobalFailureNoRemediation(t *testing.T) {
	fakes := []*fakeReplica{newFakeReplica(t, "a"), newFakeReplica(t, "b"), newFakeReplica(t, "c")}
	rem := &recordingRemediator{}
	buf, _ := runEngine(t, fakes, rem, nil)
	for _, f := range fakes {
		f.broken.Store(true)
	}
	waitFor(t, func() bool { return strings.Contains(buf.String(), `"event":"global","active":true`) })
	if got := rem.names(); len(got) != 0 {
		t.Errorf("remediated %v in a global failure", got)
	}
	if strings.Contains(buf.String(), `"to":"degraded"`) {
		t.Errorf("degraded verdict in a global failure")
	}
}

func TestEngineFollowerNeverActs(t *testing.T) {
	fakes := []*fakeReplica{newFakeReplica(t, "a"), newFakeReplica(t, "b"), newFakeReplica(t, "c")}
	rem := &recordingRemediator{}
	buf, _ := runEngine(t, fakes, rem, leader(false))
	fakes[1].broken.Store(true)
	waitFor(t, func() bool {
		return strings.Contains(buf.String(), `"replica":"b","from":"suspect","to":"degraded"`) || strings.Contains(buf.String(), `"replica":"b","from":"healthy","to":"degraded"`)
	})
	// The verdict is logged; the remediation (which a leader starts in the evaluation that
	// judges it) never comes, through the whole episode until b recovers.
	fakes[1].broken.Store(false)
	waitFor(t, func() bool {
		out := buf.String()
		i := strings.Index(out, `"to":"degraded"`)
		return i >= 0 && lastState(out[i:], "b") == "healthy"
	})
	if got := rem.names(); len(got) != 0 {
		t.Errorf("a follower remediated %v", got)
	}
}

// recordingNotifier keeps the Event reasons per replica.
type recordingNotifier struct {
	mu      sync.Mutex
	reasons map[string][]api.Reason
}

func (n *recordingNotifier) Notify(t replica.Target, reason api.Reason, _ string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.reasons == nil {
		n.reasons = map[string][]api.Reason{}
	}
	n.reasons[t.Name] = append(n.reasons[t.Name], reason)
}

func (n *recordingNotifier) NotifyHealer(api.Reason, string) {}

func (n *recordingNotifier) count(name string, r api.Reason) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	c := 0
	for _, x := range n.reasons[name] {
		if x == r {
			c++
		}
	}
	return c
}

// A replica that hangs briefly, again and again, never stays degraded as long as
// --remediate-after; flapping is a fault all the same: it is remediated once it entered
// degraded FlapCount times, and the repeats are one ReplicaFlapping Event, not a storm.
func TestFlappingReplicaIsRemediated(t *testing.T) {
	fakes := []*fakeReplica{newFakeReplica(t, "a"), newFakeReplica(t, "b"), newFakeReplica(t, "c")}
	rem := &recordingRemediator{}
	n := &recordingNotifier{}
	buf, _ := runEngineWith(t, fakes, rem, nil, func(g *config.Guards) { g.RemediateAfter = config.D(time.Hour) }, n)
	entries := func() int {
		return strings.Count(buf.String(), `"replica":"b","from":"suspect","to":"degraded"`) + strings.Count(buf.String(), `"replica":"b","from":"healthy","to":"degraded"`)
	}
	for i := 1; len(rem.names()) == 0; i++ {
		if i > 10 {
			t.Fatalf("a replica degraded %d times was never remediated", entries())
		}
		want := entries() + 1
		fakes[1].broken.Store(true)
		waitFor(t, func() bool { return entries() >= want })
		fakes[1].broken.Store(false)
		waitFor(t, func() bool { return lastState(buf.String(), "b") == "healthy" || len(rem.names()) > 0 })
	}
	if got := rem.names(); len(got) != 1 || got[0] != "b" {
		t.Fatalf("remediations %v, want [b]", got)
	}
	if e := entries(); e < 3 {
		t.Errorf("remediated after %d entries into degraded, want 3 (FlapCount)", e)
	}
	if got := n.count("b", api.ReasonReplicaFlapping); got != 1 {
		t.Errorf("%d ReplicaFlapping Events, want 1", got)
	}
	if got := n.count("b", api.ReasonReplicaDegraded); got != 2 {
		t.Errorf("%d ReplicaDegraded Events, want 2 (the entries before it was flapping)", got)
	}
}
