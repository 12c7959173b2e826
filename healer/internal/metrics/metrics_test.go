package metrics

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestServer(t *testing.T) {
	m := New(func() float64 { return 7 })
	m.SetState("dns-a", "degraded")
	m.Transitions.WithLabelValues("healthy", "degraded").Inc()
	m.Remediations.WithLabelValues("evict", "dry-run").Inc()
	m.ProbeLatency.WithLabelValues("dns-a").Observe(0.001)
	m.DetectionLatency.Observe(0.05)
	s, err := Listen("127.0.0.1:0", m)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Serve(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	base := "http://" + s.Addr()
	if code, _ := get(t, base+"/healthz"); code != 200 {
		t.Errorf("/healthz %d", code)
	}
	if code, _ := get(t, base+"/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz before discovery: %d, want 503", code)
	}
	s.Ready.Store(true)
	if code, _ := get(t, base+"/readyz"); code != 200 {
		t.Errorf("/readyz after discovery: %d", code)
	}
	_, body := get(t, base+"/metrics")
	for _, want := range []string{
		`dnspulse_healer_replica_state{replica="dns-a",state="degraded"} 1`,
		`dnspulse_healer_replica_state{replica="dns-a",state="healthy"} 0`,
		`dnspulse_healer_state_transitions_total{from="healthy",to="degraded"} 1`,
		`dnspulse_healer_remediations_total{action="evict",result="dry-run"} 1`,
		`dnspulse_healer_probe_duration_seconds_count{replica="dns-a"} 1`,
		`dnspulse_healer_detection_latency_seconds_count 1`,
		`dnspulse_healer_probes_skipped_total 7`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	m.Forget("dns-a")
	if _, body := get(t, base+"/metrics"); strings.Contains(body, `replica="dns-a"`) {
		t.Errorf("a forgotten replica is still exported")
	}
}
