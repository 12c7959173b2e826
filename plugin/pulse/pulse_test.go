package pulse

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/pkg/dnstest"
	"github.com/coredns/coredns/plugin/test"

	"github.com/miekg/dns"
)

func newTestPulse(next plugin.Handler) *Pulse {
	return &Pulse{Next: next, hub: newHub("test", 2), probeName: "dnspulse-self-probe.", answerProbe: true}
}

func (p *Pulse) window1s() map[string]uint64 {
	w := summarize(p.hub.store.window(p.hub.now(), time.Second))
	out := map[string]uint64{"queries": w.Queries, "dropped": w.Dropped}
	for k, v := range w.Rcodes {
		out[k] = v
	}
	return out
}

// writeRcode is a handler that writes a reply with rcode and returns ret.
func writeRcode(rcode, ret int) plugin.Handler {
	return test.HandlerFunc(func(_ context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
		m := new(dns.Msg)
		m.SetRcode(r, rcode)
		w.WriteMsg(m)
		return ret, nil
	})
}

// writeBytes answers through ResponseWriter.Write, as some plugins (dnstap replay, proxies) do.
func writeBytes(rcode int) plugin.Handler {
	return test.HandlerFunc(func(_ context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
		m := new(dns.Msg)
		m.SetRcode(r, rcode)
		b, _ := m.Pack()
		w.Write(b)
		return rcode, nil
	})
}

func TestServeDNSRcodePaths(t *testing.T) {
	tests := []struct {
		name       string
		next       plugin.Handler
		wantKind   string
		wantStatus int
		wantErr    bool
	}{
		{"NOERROR written", writeRcode(dns.RcodeSuccess, dns.RcodeSuccess), "NOERROR", 0, false},
		{"NXDOMAIN written", writeRcode(dns.RcodeNameError, dns.RcodeNameError), "NXDOMAIN", 3, false},
		{"SERVFAIL written by a plugin", test.ErrorHandler(), "SERVFAIL", 2, false},
		{"SERVFAIL written by the server", test.NextHandler(dns.RcodeServerFailure, errors.New("upstream down")), "SERVFAIL", 2, true},
		{"REFUSED written by the server", test.NextHandler(dns.RcodeRefused, nil), "REFUSED", 5, false},
		{"FORMERR written by the server", test.NextHandler(dns.RcodeFormatError, nil), "FORMERR", 1, false},
		{"NOTIMP written by the server", test.NextHandler(dns.RcodeNotImplemented, nil), "NOTIMP", 4, false},
		{"dropped: nothing written, 0 returned", test.NextHandler(dns.RcodeSuccess, nil), "dropped", 0, false},
		{"dropped: nothing written, error returned with 0", test.NextHandler(dns.RcodeSuccess, errors.New("x")), "dropped", 0, true},
		{"written wins over returned", writeRcode(dns.RcodeNameError, dns.RcodeServerFailure), "NXDOMAIN", 2, false},
		{"Write([]byte) path", writeBytes(dns.RcodeRefused), "REFUSED", 5, false},
		{"no next plugin", nil, "SERVFAIL", 2, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := newTestPulse(tc.next)
			req := new(dns.Msg)
			req.SetQuestion("example.org.", dns.TypeA)
			rec := dnstest.NewRecorder(&test.ResponseWriter{})
			status, err := p.ServeDNS(context.Background(), rec, req)
			if status != tc.wantStatus || (err != nil) != tc.wantErr {
				t.Fatalf("ServeDNS = %d, %v; want %d, err %v: pulse must pass the chain's result through", status, err, tc.wantStatus, tc.wantErr)
			}
			got := p.window1s()
			if got["queries"] != 1 || got[tc.wantKind] != 1 {
				t.Fatalf("window %v: want one query counted as %s", got, tc.wantKind)
			}
			if tc.wantKind != "dropped" && got["dropped"] != 0 {
				t.Fatalf("window %v: counted as dropped too", got)
			}
		})
	}
}

func TestSelfProbeKeptOutOfWindows(t *testing.T) {
	p := newTestPulse(writeRcode(dns.RcodeSuccess, 0))
	probe := new(dns.Msg)
	probe.SetQuestion("DNSPULSE-self-probe.", dns.TypeA)
	p.hub.probeID.Store(uint32(probe.Id) + 1)

	rec := dnstest.NewRecorder(&test.ResponseWriter{})
	if _, err := p.ServeDNS(context.Background(), rec, probe); err != nil {
		t.Fatal(err)
	}
	if rec.Msg == nil || rec.Rcode != dns.RcodeSuccess || len(rec.Msg.Answer) != 1 {
		t.Fatalf("synthetic self-probe not answered by pulse: %v", rec.Msg)
	}
	// A client asking the same name with another id is client traffic.
	client := probe.Copy()
	client.Id = probe.Id + 1
	p.ServeDNS(context.Background(), dnstest.NewRecorder(&test.ResponseWriter{}), client)
	if got := p.window1s(); got["queries"] != 1 {
		t.Fatalf("window %v: want only the client's query", got)
	}
}

func TestCustomSelfProbeGoesThroughChain(t *testing.T) {
	reached := 0
	next := test.HandlerFunc(func(_ context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
		reached++
		m := new(dns.Msg)
		m.SetReply(r)
		w.WriteMsg(m)
		return 0, nil
	})
	p := newTestPulse(next)
	p.probeName, p.answerProbe = "kubernetes.default.svc.cluster.local.", false
	probe := new(dns.Msg)
	probe.SetQuestion("kubernetes.default.svc.cluster.local.", dns.TypeA)
	p.hub.probeID.Store(uint32(probe.Id) + 1)
	p.ServeDNS(context.Background(), dnstest.NewRecorder(&test.ResponseWriter{}), probe)
	if reached != 1 {
		t.Fatal("a custom self-probe must go through the rest of the chain")
	}
	if got := p.window1s(); got["queries"] != 0 {
		t.Fatalf("self-probe counted as client traffic: %v", got)
	}
}

func TestServeDNSDoesNotAllocate(t *testing.T) {
	p := newTestPulse(test.NextHandler(dns.RcodeSuccess, nil))
	req := new(dns.Msg)
	req.SetQuestion("example.org.", dns.TypeA)
	w := &test.ResponseWriter{}
	ctx := context.Background()
	p.ServeDNS(ctx, w, req) // warm the recorder pool
	if n := testing.AllocsPerRun(1000, func() { p.ServeDNS(ctx, w, req) }); n != 0 {
		t.Fatalf("ServeDNS allocates %v times per query, want 0", n)
	}
}
