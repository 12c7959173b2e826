// Package metrics holds the healer's dnspulse_healer_* metrics, on a registry of its own
// (nothing global), and the HTTP server for /metrics, /healthz and /readyz.
package metrics

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/dnspulse/dnspulse/healer/api"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics is every healer metric.
type Metrics struct {
	Registry *prometheus.Registry

	ProbeLatency     *prometheus.HistogramVec // replica
	Probes           *prometheus.CounterVec   // replica, result
	Pulses           *prometheus.CounterVec   // replica, result (ok, unreachable, invalid)
	HeartbeatInvalid *prometheus.CounterVec   // replica
	State            *prometheus.GaugeVec     // replica, state
	Transitions      *prometheus.CounterVec   // from, to
	Remediations     *prometheus.CounterVec   // action, result
	DetectionLatency prometheus.Histogram
	ProbesSkipped    prometheus.CounterFunc
	CheckBroken      *prometheus.GaugeVec // check
}

// New registers every metric on a fresh registry. skipped reports probes not sent (qps cap).
func New(skipped func() float64) *Metrics {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	ns, sub := "dnspulse", "healer"
	m := &Metrics{
		Registry: reg,
		ProbeLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "probe_duration_seconds",
			Help:    "Latency of the healer's probes per replica (answered probes only).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25},
		}, []string{"replica"}),
		Probes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "probes_total",
			Help: "Probes per replica by result (ok, timeout, error, failure).",
		}, []string{"replica", "result"}),
		Pulses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "heartbeat_polls_total",
			Help: "Heartbeat polls per replica by result (ok, unreachable, invalid).",
		}, []string{"replica", "result"}),
		HeartbeatInvalid: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "heartbeat_invalid_total",
			Help: "Bodies at a replica's pulse address that were not a version-1 heartbeat.",
		}, []string{"replica"}),
		State: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "replica_state",
			Help: "1 for the replica's current state, 0 for the others.",
		}, []string{"replica", "state"}),
		Transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "state_transitions_total",
			Help: "State transitions by from and to state.",
		}, []string{"from", "to"}),
		Remediations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "remediations_total",
			Help: "Remediations by action and result (success, dry-run, blocked, refused, error).",
		}, []string{"action", "result"}),
		DetectionLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "detection_latency_seconds",
			Help:    "Time from the first failing evidence to the degraded state.",
			Buckets: []float64{.01, .025, .05, .075, .1, .15, .2, .3, .5, 1, 2.5},
		}),
		ProbesSkipped: prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "probes_skipped_total",
			Help: "Probes not sent because of --max-probe-qps or too many in flight.",
		}, skipped),
	}
	m.CheckBroken = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: ns, Subsystem: sub, Name: "check_broken",
		Help: "1 while a check is answered wrong the same way by every replica: a misconfigured check, left out of the judgment.",
	}, []string{"check"})
	reg.MustRegister(m.ProbeLatency, m.Probes, m.Pulses, m.HeartbeatInvalid, m.State, m.Transitions,
		m.Remediations, m.DetectionLatency, m.ProbesSkipped, m.CheckBroken)
	return m
}

// SetState makes state the replica's one hot state.
func (m *Metrics) SetState(replica string, state api.State) {
	for _, s := range api.States {
		v := 0.0
		if s == state {
			v = 1
		}
		m.State.WithLabelValues(replica, string(s)).Set(v)
	}
}

// SetCheckBroken sets the check's broken gauge.
func (m *Metrics) SetCheckBroken(check string, broken bool) {
	v := 0.0
	if broken {
		v = 1
	}
	m.CheckBroken.WithLabelValues(check).Set(v)
}

// Forget drops a replica that is gone.
func (m *Metrics) Forget(replica string) {
	m.State.DeletePartialMatch(prometheus.Labels{"replica": replica})
	m.ProbeLatency.DeletePartialMatch(prometheus.Labels{"replica": replica})
	m.Probes.DeletePartialMatch(prometheus.Labels{"replica": replica})
	m.Pulses.DeletePartialMatch(prometheus.Labels{"replica": replica})
	m.HeartbeatInvalid.DeletePartialMatch(prometheus.Labels{"replica": replica})
}

// Server serves /metrics, /healthz and /readyz. Ready is set once the first set of
// replicas is known.
type Server struct {
	Ready atomic.Bool
	srv   *http.Server
	ln    net.Listener
}

// Listen binds addr now, so that a bad --metrics-addr fails at start.
func Listen(addr string, m *Metrics) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	s := &Server{ln: ln}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("OK")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !s.Ready.Load() {
			http.Error(w, "replicas not discovered yet", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("OK"))
	})
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	return s, nil
}

// Addr is the bound address.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Serve serves until ctx ends.
func (s *Server) Serve(ctx context.Context) error {
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = s.srv.Shutdown(sctx)
	}()
	if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
