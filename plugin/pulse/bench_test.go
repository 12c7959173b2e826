package pulse

import (
	"context"
	"testing"

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
