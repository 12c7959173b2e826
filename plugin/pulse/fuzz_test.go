package pulse

import (
	"context"
	"testing"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/plugin/pkg/dnstest"
	"github.com/coredns/coredns/plugin/test"

	"github.com/miekg/dns"
)

// FuzzParse: any Corefile text yields a config or an error, never a panic.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"pulse", "pulse :9155", "pulse {\n tick 50ms\n self_probe a.b AAAA\n}", "pulse {\n lease ns\n servfail_ratio 0.3\n}", "pulse 1.2.3.4:x {\n}"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, input string) {
		cfg, err := parse(caddy.NewTestController("dns", input))
		if err == nil && (cfg.tick <= 0 || cfg.servfailRatio <= 0 || cfg.servfailRatio > 1) {
			t.Fatalf("accepted %q into an unusable config %+v", input, cfg)
		}
	})
}

// FuzzServeDNS: any wire message through pulse, with any rcode written or returned by the
// chain, is counted exactly once and passes the chain's result through.
func FuzzServeDNS(f *testing.F) {
	q := new(dns.Msg)
	q.SetQuestion("example.org.", dns.TypeA)
	b, _ := q.Pack()
	f.Add(b, uint8(0), false)
	f.Add(b, uint8(2), true)
	f.Add([]byte{0, 1, 2}, uint8(15), true)
	f.Fuzz(func(t *testing.T, wire []byte, rcode uint8, write bool) {
		r := new(dns.Msg)
		if err := r.Unpack(wire); err != nil {
			return
		}
		rc := int(rcode) % 24
		next := test.NextHandler(rc, nil)
		if write {
			next = writeRcode(rc, rc)
		}
		p := newTestPulse(next)
		status, _ := p.ServeDNS(context.Background(), dnstest.NewRecorder(&test.ResponseWriter{}), r)
		if status != rc {
			t.Fatalf("status %d, chain returned %d", status, rc)
		}
		if got := p.window1s(); got["queries"] != 1 {
			t.Fatalf("window %v after one query", got)
		}
	})
}
