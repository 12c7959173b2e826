package engine

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dnspulse/dnspulse/healer/api"
	"github.com/dnspulse/dnspulse/healer/audit"
	"github.com/dnspulse/dnspulse/healer/internal/check"
	"github.com/dnspulse/dnspulse/healer/internal/config"
	"github.com/dnspulse/dnspulse/healer/internal/metrics"
	"github.com/dnspulse/dnspulse/healer/internal/replica"
	"github.com/dnspulse/dnspulse/healer/internal/static"
)

// fakeDrainer records the steps the engine takes, in order.
type fakeDrainer struct {
	mu          sync.Mutex
	steps       []string
	anticipated []string // the replicas Anticipate was called for
}

func (f *fakeDrainer) add(s string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.steps = append(f.steps, s)
}

func (f *fakeDrainer) anticipations() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.anticipated...)
}

func (f *fakeDrainer) log() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.steps...)
}

func (f *fakeDrainer) CanEvict(context.Context, replica.Target) (bool, string) { return true, "" }
func (f *fakeDrainer) Anticipate(t replica.Target) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.anticipated = append(f.anticipated, t.Name)
}
func (f *fakeDrainer) Drain(_ context.Context, t replica.Target, _ []string) replica.Outcome {
	f.add("drain " + t.Name)
	return replica.Outcome{Action: api.ActionDrain, Result: api.ResultSuccess}
}
func (f *fakeDrainer) Undrain(_ context.Context, t replica.Target, _ string) replica.Outcome {
	f.add("undrain " + t.Name)
	return replica.Outcome{Action: api.ActionUndrain, Result: api.ResultSuccess}
}
func (f *fakeDrainer) Remediate(_ context.Context, t replica.Target, _ []string, _ bool) replica.Outcome {
	f.add("evict " + t.Name)
	return replica.Outcome{Action: api.ActionEvict, Result: api.ResultSuccess}
}

// memStore is a MemoryStore in the test.
type memStore struct {
	mu    sync.Mutex
	m     replica.Memory
	saves int
}

func (s *memStore) Load(context.Context) (replica.Memory, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m, nil
}

func (s *memStore) Save(_ context.Context, m replica.Memory) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m, s.saves = m, s.saves+1
	return nil
}

func (s *memStore) get() replica.Memory {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m
}

// runKubeLike runs the engine over fakes that look like pods (a cluster view, an owner),
// with fd as drainer and remediator and ms as memory.
func runKubeLike(t *testing.T, fakes []*fakeReplica, fd interface {
	replica.Remediator
	replica.Drainer
}, ms replica.MemoryStore, tune func(*config.Guards)) *syncBuffer {
	t.Helper()
	var ts []replica.Target
	for _, f := range fakes {
		f.target.ClusterView, f.target.ContainersReady, f.target.Owner, f.target.Node = true, !f.kubeletNotReady, "rs-1", "node-"+f.target.Name
		ts = append(ts, f.target)
	}
	ck, _ := check.Parse("probe.test/A")
	def := config.Default()
	g := def.Guards
	g.WarmUp, g.Cooldown, g.GlobalCooldown = 0, config.D(time.Hour), 0
	if tune != nil {
		tune(&g)
	}
	buf := &syncBuffer{}
	e, err := New(Config{Checks: []check.Check{ck}, Probe: def.Probe, Heartbeat: def.Heartbeat, Thresholds: def.Thresholds, Guards: g,
		Audit: audit.New(buf), Metrics: metrics.New(func() float64 { return 0 })},
		Mode{Name: "test", Discovery: static.NewDiscovery(ts), Remediator: fd, Drainer: fd, Memory: ms})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		if t.Failed() {
			t.Logf("audit:\n%s", buf.String())
		}
	})
	for _, f := range fakes {
		waitFor(t, func() bool { return lastState(buf.String(), f.target.Name) == "healthy" })
	}
	return buf
}

// Drain fast, evict on proof: the first degraded state drains (reversible), the eviction
// waits --remediate-after; a replica that recovers before it is undrained, not evicted.
func TestDrainFastEvictOnProof(t *testing.T) {
	fakes := []*fakeReplica{newFakeReplica(t, "a"), newFakeReplica(t, "b"), newFakeReplica(t, "c")}
	fd := &fakeDrainer{}
	runKubeLike(t, fakes, fd, nil, func(g *config.Guards) { g.RemediateAfter = config.D(time.Hour) })
	fakes[1].broken.Store(true)
	waitFor(t, func() bool { return len(fd.log()) >= 1 })
	fakes[1].broken.Store(false)
	waitFor(t, func() bool { return len(fd.log()) >= 2 })
	if got := strings.Join(fd.log(), ","); got != "drain b,undrain b" {
		t.Fatalf("steps %q, want a drain then an undrain and no eviction", got)
	}
	// Suspect before degraded: the drain's dry run was asked for ahead.
	if got := fd.anticipations(); !slices.Contains(got, "b") {
		t.Errorf("Anticipate called for %q, want b (suspect before its drain)", got)
	}

	fd2 := &fakeDrainer{}
	fakes2 := []*fakeReplica{newFakeReplica(t, "a"), newFakeReplica(t, "b"), newFakeReplica(t, "c")}
	fakes2[1].kubeletNotReady = true // the kubelet sees it too: the proof of G13
	runKubeLike(t, fakes2, fd2, nil, func(g *config.Guards) { g.RemediateAfter = config.D(500 * time.Millisecond) })
	fakes2[1].broken.Store(true)
	waitFor(t, func() bool { return len(fd2.log()) >= 2 })
	if got := strings.Join(fd2.log(), ","); got != "drain b,evict b" {
		t.Fatalf("steps %q, want the drain first, then the eviction", got)
	}
}

// Reachability is not proof (G13): a replica the healer cannot reach while the kubelet sees
// it ready is drained at first, then reported as a partition and undrained; never evicted.
func TestUnreachableButServingIsAPartition(t *testing.T) {
	fakes := []*fakeReplica{newFakeReplica(t, "a"), newFakeReplica(t, "b"), newFakeReplica(t, "c")}
	fd := &fakeDrainer{}
	buf := runKubeLike(t, fakes, fd, nil, func(g *config.Guards) {
		g.RemediateAfter, g.PartitionAfter = config.D(100*time.Millisecond), config.D(time.Second)
	})
	fakes[1].broken.Store(true)
	waitFor(t, func() bool { return strings.Contains(buf.String(), `"event":"partition"`) })
	waitFor(t, func() bool { return len(fd.log()) >= 2 })
	if got := strings.Join(fd.log(), ","); got != "drain b,undrain b" {
		t.Fatalf("steps %q, want drain then undrain, no eviction", got)
	}
}

// The guards' memory holds across leaders: an eviction whose replacement is still awaited
// (another leader's) blocks the next one until it is healthy or timed out; each eviction is
// saved with its owner and node.
func TestMemoryOfEarlierLeadersHolds(t *testing.T) {
	ms := &memStore{m: replica.Memory{Pending: &replica.Pending{Replica: "gone", Owner: "rs-1", At: time.Now(), Existing: []string{"a", "b", "c"}}}}
	fakes := []*fakeReplica{newFakeReplica(t, "a"), newFakeReplica(t, "b"), newFakeReplica(t, "c")}
	fakes[1].kubeletNotReady = true
	fd := &fakeDrainer{}
	buf := runKubeLike(t, fakes, fd, ms, func(g *config.Guards) {
		g.RemediateAfter, g.ReplacementTimeout = config.D(100*time.Millisecond), config.D(2*time.Second)
	})
	waitFor(t, func() bool { return strings.Contains(buf.String(), `"event":"memory"`) })
	loaded := time.Now()
	fakes[1].broken.Store(true)
	waitFor(t, func() bool { return strings.Contains(strings.Join(fd.log(), ","), "evict b") })
	if d := time.Since(loaded); d < time.Second {
		t.Errorf("evicted %s after loading a memory awaiting a replacement for 2s", d)
	}
	if !strings.Contains(buf.String(), `"result":"timeout"`) {
		t.Errorf("no replacement timeout line before the eviction")
	}
	waitFor(t, func() bool { m := ms.get(); return len(m.Actions) == 1 && m.Pending != nil })
	m := ms.get()
	if a := m.Actions[0]; a.Replica != "b" || a.Owner != "rs-1" || a.Node != "node-b" || m.Pending.Replica != "b" {
		t.Errorf("memory saved %+v", m)
	}
}

// writeAhead is a remediator that records what the memory store held when it was asked to evict.
type writeAhead struct {
	*fakeDrainer
	ms      *memStore
	mu      sync.Mutex
	pending *replica.Pending
}

func (w *writeAhead) Remediate(ctx context.Context, t replica.Target, reasons []string, dryRun bool) replica.Outcome {
	w.mu.Lock()
	w.pending = w.ms.get().Pending
	w.mu.Unlock()
	return w.fakeDrainer.Remediate(ctx, t, reasons, dryRun)
}

// The eviction is in the guards' memory before the Eviction is sent: a leader killed right
// after it leaves its successor the cooldown and the awaited replacement.
func TestEvictionIsSavedBeforeItIsSent(t *testing.T) {
	fakes := []*fakeReplica{newFakeReplica(t, "a"), newFakeReplica(t, "b"), newFakeReplica(t, "c")}
	fakes[1].kubeletNotReady = true
	ms := &memStore{}
	w := &writeAhead{fakeDrainer: &fakeDrainer{}, ms: ms}
	runKubeLike(t, fakes, w, ms, nil)
	fakes[1].broken.Store(true)
	waitFor(t, func() bool { return strings.Contains(strings.Join(w.log(), ","), "evict b") })
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.pending == nil || w.pending.Replica != "b" {
		t.Fatalf("memory at the eviction: pending %+v, want b's replacement awaited", w.pending)
	}
}
