package probe

import (
	"testing"

	"github.com/miekg/dns"

	"github.com/dnspulse/dnspulse/healer/internal/check"
)

// FuzzJudge feeds arbitrary wire data through the path a reply takes (unpack, answer key,
// expectation, canary) and checks it never panics and stays deterministic.
func FuzzJudge(f *testing.F) {
	m := new(dns.Msg)
	m.SetQuestion("canary.example.", dns.TypeCNAME)
	m.Answer = append(m.Answer, &dns.CNAME{Hdr: dns.RR_Header{Name: "canary.example.", Rrtype: dns.TypeCNAME, Class: dns.ClassINET}, Target: "v1.x."})
	seed, _ := m.Pack()
	f.Add(seed)
	m.Answer = append(m.Answer, &dns.SRV{Hdr: dns.RR_Header{Name: "_a._udp.x.", Rrtype: dns.TypeSRV, Class: dns.ClassINET}, Target: "y.", Port: 53})
	seed, _ = m.Pack()
	f.Add(seed)
	f.Add([]byte{0, 1, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0})
	checks := []check.Check{
		{Name: "canary.example.", Type: dns.TypeCNAME, Canary: true},
		{Name: "x.example.", Type: dns.TypeA, Answers: []string{"10.0.0.1"}},
		{Name: "x.example.", Type: dns.TypeSRV},
	}
	f.Fuzz(func(t *testing.T, wire []byte) {
		reply := new(dns.Msg)
		if err := reply.Unpack(wire); err != nil {
			return
		}
		for _, c := range checks {
			var a, b Result
			Judge(&a, c, reply, nil, fresh{cur: "v1.x."})
			Judge(&b, c, reply.Copy(), nil, fresh{cur: "v1.x."})
			if a.AnswerKey != b.AnswerKey || a.Failure != b.Failure || a.CanaryOK != b.CanaryOK {
				t.Fatalf("not deterministic: %+v vs %+v", a, b)
			}
			_ = a.OK()
		}
	})
}
