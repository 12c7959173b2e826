package engine

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dnspulse/dnspulse/healer/internal/hbreader"
	"github.com/dnspulse/dnspulse/healer/internal/metrics"
	"github.com/dnspulse/dnspulse/healer/internal/probe"
)

// probeResults are the values of the result label of dnspulse_healer_probes_total.
var probeResults = [...]string{"ok", "late", "timeout", "error", "failure"}

// replicaMetrics are one replica's per-result series, each looked up (by its labels) the
// first time it is used and kept with the replica: at 1,000 replicas every 20 ms the
// label lookups per probe cost more than the rest of the engine's bookkeeping for it.
// Forgotten with the replica (Metrics.Forget drops the series).
type replicaMetrics struct {
	probes  [len(probeResults)]prometheus.Counter
	latency prometheus.Observer
	reads   [hbreader.Late + 1]prometheus.Counter // by hbreader.Kind
	invalid prometheus.Counter
}

func (rm *replicaMetrics) probe(m *metrics.Metrics, r *probe.Result) {
	i := 0 // ok
	switch {
	case r.Late:
		i = 1
	case r.Timeout:
		i = 2
	case r.Err != nil:
		i = 3
	case r.Failure != "":
		i = 4
	}
	if rm.probes[i] == nil {
		rm.probes[i] = m.Probes.WithLabelValues(r.Replica, probeResults[i])
	}
	rm.probes[i].Inc()
	if r.Err == nil {
		if rm.latency == nil {
			rm.latency = m.ProbeLatency.WithLabelValues(r.Replica)
		}
		rm.latency.Observe(r.Latency.Seconds())
	}
}

func (rm *replicaMetrics) heartbeat(m *metrics.Metrics, r *hbreader.Result) {
	if k := r.Kind; k >= 0 && int(k) < len(rm.reads) {
		if rm.reads[k] == nil {
			rm.reads[k] = m.Pulses.WithLabelValues(r.Replica, k.String())
		}
		rm.reads[k].Inc()
	}
	if r.Kind == hbreader.Invalid {
		if rm.invalid == nil {
			rm.invalid = m.HeartbeatInvalid.WithLabelValues(r.Replica)
		}
		rm.invalid.Inc()
	}
}
