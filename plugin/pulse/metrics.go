package pulse

import (
	"time"

	"github.com/coredns/coredns/plugin"

	"github.com/dnspulse/dnspulse/heartbeat"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// The metrics are set once per tick from the heartbeat, never on the query path: a
// prometheus counter per query would cost more than everything else pulse does.
var (
	windowQueries = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: plugin.Namespace, Subsystem: "pulse", Name: "window_queries",
		Help: "Client queries in the trailing window.",
	}, []string{"listener", "window"})
	windowRcodes = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: plugin.Namespace, Subsystem: "pulse", Name: "window_rcode_queries",
		Help: "Client queries in the trailing window by rcode (DROPPED: no reply at all).",
	}, []string{"listener", "window", "rcode"})
	windowLatency = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: plugin.Namespace, Subsystem: "pulse", Name: "window_latency_seconds",
		Help: "Latency quantiles of client queries in the trailing window.",
	}, []string{"listener", "window", "quantile"})
	windowRatio = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: plugin.Namespace, Subsystem: "pulse", Name: "window_ratio",
		Help: "Share of client queries answered NXDOMAIN or SERVFAIL in the trailing window.",
	}, []string{"listener", "window", "rcode"})
	windowEntropy = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: plugin.Namespace, Subsystem: "pulse", Name: "window_entropy_bits",
		Help: "Entropy of the rcodes (kind=rcode) and of the SERVFAIL client prefixes (kind=servfail_source) in the trailing window.",
	}, []string{"listener", "window", "kind"})
	heartbeatSeq = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: plugin.Namespace, Subsystem: "pulse", Name: "heartbeat_seq",
		Help: "Sequence number of the last heartbeat; grows by one every tick.",
	}, []string{"listener"})
	degraded = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: plugin.Namespace, Subsystem: "pulse", Name: "degraded",
		Help: "1 when the heartbeat's verdict is degraded.",
	}, []string{"listener"})
	selfProbeOK = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: plugin.Namespace, Subsystem: "pulse", Name: "self_probe_ok",
		Help: "1 when the last self-probe through the server's own listener succeeded.",
	}, []string{"listener"})
	selfProbeDuration = promauto.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: plugin.Namespace, Subsystem: "pulse", Name: "self_probe_duration_seconds",
		Help:    "Time of the self-probes.",
		Buckets: plugin.TimeBuckets,
	}, []string{"listener"})
	inflightQueries = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: plugin.Namespace, Subsystem: "pulse", Name: "inflight",
		Help: "Client queries that entered pulse and have not returned.",
	}, []string{"listener"})
	inflightOldest = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: plugin.Namespace, Subsystem: "pulse", Name: "inflight_oldest_seconds",
		Help: "Age of the oldest client query in flight; 0 when none is.",
	}, []string{"listener"})
	watchersGauge = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: plugin.Namespace, Subsystem: "pulse", Name: "watchers",
		Help: "Heartbeat streams (GET /pulse?watch=1) being served.",
	}, []string{"listener"})
	leaseRenewals = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace, Subsystem: "pulse", Name: "lease_renewals_total",
		Help: "Lease heartbeat renewals by result (success, error).",
	}, []string{"result"})
	gateOpens = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace, Subsystem: "pulse", Name: "readiness_gate_opens_total",
		Help: "Times pulse set its pod's readiness-gate condition True, by cause: absent (a new pod), drain-expired (False longer than readiness_gate_max_drain: no healer ended the drain).",
	}, []string{"cause"})
	gateErrors = promauto.NewCounter(prometheus.CounterOpts{
		Namespace: plugin.Namespace, Subsystem: "pulse", Name: "readiness_gate_errors_total",
		Help: "Failed reads or writes of the pod's readiness-gate condition (each retried).",
	})
)

// metricWindows are the windows exported as metrics: a scrape every few seconds makes
// nothing of the 200 ms one (it is for the healer, which reads every heartbeat).
var metricWindows = []string{heartbeat.Window1s, heartbeat.Window10s, heartbeat.Window60s}

func reportMetrics(listener string, hb *heartbeat.Heartbeat) {
	heartbeatSeq.WithLabelValues(listener).Set(float64(hb.Seq))
	degraded.WithLabelValues(listener).Set(b2f(hb.Verdict == heartbeat.VerdictDegraded))
	if f := hb.InFlight; f != nil {
		inflightQueries.WithLabelValues(listener).Set(float64(f.Count))
		inflightOldest.WithLabelValues(listener).Set(float64(f.OldestMicros) / 1e6)
	}
	for _, key := range metricWindows {
		w := hb.Windows[key]
		windowQueries.WithLabelValues(listener, key).Set(float64(w.Queries))
		// An rcode that left the window must not keep its last count.
		windowRcodes.DeletePartialMatch(prometheus.Labels{"listener": listener, "window": key})
		for name, n := range w.Rcodes {
			windowRcodes.WithLabelValues(listener, key, name).Set(float64(n))
		}
		windowRcodes.WithLabelValues(listener, key, "DROPPED").Set(float64(w.Dropped))
		for q, us := range map[string]uint64{"0.5": w.LatencyMicros.P50, "0.9": w.LatencyMicros.P90, "0.99": w.LatencyMicros.P99, "1": w.LatencyMicros.Max} {
			windowLatency.WithLabelValues(listener, key, q).Set(float64(us) / 1e6)
		}
		windowRatio.WithLabelValues(listener, key, "NXDOMAIN").Set(w.NXDomainRatio)
		windowRatio.WithLabelValues(listener, key, "SERVFAIL").Set(w.ServfailRatio)
		windowEntropy.WithLabelValues(listener, key, "rcode").Set(w.RcodeEntropy)
		windowEntropy.WithLabelValues(listener, key, "servfail_source").Set(w.ServfailSourceEntropy)
	}
}

func observeSelfProbe(listener string, sp heartbeat.SelfProbe) {
	selfProbeOK.WithLabelValues(listener).Set(b2f(sp.OK))
	selfProbeDuration.WithLabelValues(listener).Observe((time.Duration(sp.LatencyMicros) * time.Microsecond).Seconds())
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
