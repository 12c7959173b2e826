package hbreader

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dnspulse/dnspulse/healer/internal/config"
	"github.com/dnspulse/dnspulse/healer/internal/replica"
	"github.com/dnspulse/dnspulse/heartbeat"
)

func validHB(seq uint64) *heartbeat.Heartbeat {
	w := heartbeat.Window{Queries: 1, Rcodes: map[string]uint64{"NOERROR": 1}}
	return &heartbeat.Heartbeat{
		Version: 1, Replica: "r", Seq: seq, Time: time.Now(), Started: time.Now(),
		Tick:    heartbeat.Duration(20 * time.Millisecond),
		Windows: map[string]heartbeat.Window{"1s": w, "10s": w, "60s": w}, Verdict: heartbeat.VerdictHealthy,
		SelfProbe: heartbeat.SelfProbe{OK: true, Rcode: "NOERROR", Time: time.Now()},
	}
}

func TestFetchClassifies(t *testing.T) {
	good, _ := json.Marshal(validHB(7))
	for _, tc := range []struct {
		name   string
		status int
		body   string
		want   Kind
	}{
		{"valid", 200, string(good), OK},
		{"malformed", 200, "{not json", Invalid},
		{"foreign JSON", 200, `{"status":"ok"}`, Invalid},
		{"wrong version", 200, strings.Replace(string(good), `"version":1`, `"version":2`, 1), Invalid},
		{"html", 200, "<html>hello</html>", Invalid},
		{"oversized", 200, `{"x":"` + strings.Repeat("a", heartbeat.MaxBodyBytes) + `"}`, Invalid},
		{"server error", 500, "boom", Unreachable},
		{"not found", 404, "", Unreachable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				w.WriteHeader(tc.status)
				_, _ = w.Write([]byte(tc.body))
			}))
			defer srv.Close()
			hb, kind, err := Fetch(context.Background(), srv.Client(), srv.URL+heartbeat.Path)
			if kind != tc.want {
				t.Fatalf("kind %v, want %v (err %v)", kind, tc.want, err)
			}
			if (kind == OK) != (hb != nil) || (kind == OK) == (err != nil) {
				t.Errorf("kind %v with hb %v err %v", kind, hb != nil, err)
			}
		})
	}
}

func TestFetchUnreachable(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	if _, kind, _ := Fetch(context.Background(), http.DefaultClient, url+heartbeat.Path); kind != Unreachable {
		t.Errorf("closed port: kind %v", kind)
	}
	hang := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { <-hang }))
	defer slow.Close()
	defer close(hang)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	if _, kind, _ := Fetch(ctx, slow.Client(), slow.URL+heartbeat.Path); kind != Unreachable {
		t.Errorf("hung server: kind %v", kind)
	}
}

func TestTrackSeqStaleness(t *testing.T) {
	var tr seqTracker
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	step := func(seq uint64, at time.Duration) bool {
		stale, _ := tr.observe(validHB(seq), t0.Add(at), 20*time.Millisecond)
		return stale
	}
	if step(1, 0) || step(2, 20*time.Millisecond) || step(2, 40*time.Millisecond) {
		t.Fatal("stale too early")
	}
	if step(2, 80*time.Millisecond) {
		t.Fatal("3 ticks (60ms) not yet exceeded: not stale")
	}
	if !step(2, 81*time.Millisecond+20*time.Millisecond) {
		t.Fatal("seq unchanged for 81ms > 3 ticks: want stale")
	}
	if step(3, 120*time.Millisecond) {
		t.Fatal("seq moved: not stale")
	}
}

func TestPoolPollsAndCountsInvalid(t *testing.T) {
	var seq atomic.Uint64
	good := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(validHB(seq.Add(1)))
	}))
	defer good.Close()
	foreign := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte(`{"hello":"world"}`))
	}))
	defer foreign.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p := NewPool(config.Heartbeat{Interval: config.D(10 * time.Millisecond), Timeout: config.D(time.Second)})
	p.Sync(ctx, []replica.Target{
		{Name: "good", PulseAddr: strings.TrimPrefix(good.URL, "http://")},
		{Name: "foreign", PulseAddr: strings.TrimPrefix(foreign.URL, "http://")},
		{Name: "none"},
	})
	seen := map[string]Result{}
	deadline := time.After(10 * time.Second)
	for len(seen) < 2 {
		select {
		case <-p.Results.Ready():
			for _, r := range p.Results.Take(nil) {
				seen[r.Replica] = r
			}
		case <-deadline:
			t.Fatalf("results: %v", seen)
		}
	}
	if seen["good"].Kind != OK || seen["good"].HB == nil {
		t.Errorf("good: %+v", seen["good"])
	}
	if seen["foreign"].Kind != Invalid || p.Invalid.Load() == 0 {
		t.Errorf("foreign: %+v, invalid count %d", seen["foreign"], p.Invalid.Load())
	}
}
