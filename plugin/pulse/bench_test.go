package pulse

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/test"

	"github.com/miekg/dns"
)

// BenchmarkServeDNS compares the same chain with and without pulse in front of it. The
// terminal handler writes a prepared reply, so every nanosecond and allocation beyond
// chain=bare is pulse's. Run by hack/bench-plugin.sh, which feeds benchstat -col /chain.
func BenchmarkServeDNS(b *testing.B) {
	req := new(dns.Msg)
	req.SetQuestion("example.org.", dns.TypeA)
	reply := new(dns.Msg)
	reply.SetReply(req)
	answer := plugin.HandlerFunc(func(_ context.Context, w dns.ResponseWriter, _ *dns.Msg) (int, error) {
		w.WriteMsg(reply)
		return dns.RcodeSuccess, nil
	})
	p := newTestPulse(answer)
	p.hub = newHub("bench", 64) // as many shards as a big machine's Ps
	chains := []struct {
		name string
		h    plugin.Handler
	}{{"bare", answer}, {"pulse", p}}
	for _, c := range chains {
		b.Run("chain="+c.name, func(b *testing.B) {
			ctx := context.Background()
			w := &test.ResponseWriter{}
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					c.h.ServeDNS(ctx, w, req)
				}
			})
		})
	}
}

// BenchmarkTick is the ticker's own work per tick but the self-probe: build the heartbeat
// (every window summarised from the store's counters, the queries in flight) and encode it,
// with the counters of a busy server behind it.
func BenchmarkTick(b *testing.B) {
	h := newHub("bench", 8)
	for i := range 100_000 {
		kind := dns.RcodeSuccess
		switch i % 20 {
		case 0:
			kind = dns.RcodeNameError
		case 1:
			kind = dns.RcodeServerFailure
		}
		h.store.record(i%8, time.Duration(100+i%5000)*time.Microsecond, kind, uint32(i))
		if i%10_000 == 0 {
			h.store.snapshot(h.now())
		}
	}
	r := &runner{cfg: defaultConfig(), hub: h}
	r.cfg.replica = "bench"
	b.ReportAllocs()
	var buf bytes.Buffer
	for i := 0; b.Loop(); i++ {
		hb := r.build(time.Now(), uint64(i))
		buf.Reset()
		if err := json.NewEncoder(&buf).Encode(hb); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(buf.Len()), "bytes/heartbeat")
}
