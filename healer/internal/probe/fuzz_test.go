package probe

import (
	"strings"
	"testing"
	"time"

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

// FuzzJudgeReply holds the light path to the full one: a reply judged from the cache (the
// same reply again, as the next probe gets it) says exactly what unpacking it said, and
// scan's TTL is check.MinTTL's.
func FuzzJudgeReply(f *testing.F) {
	m := new(dns.Msg)
	m.SetQuestion("x.example.", dns.TypeA)
	m.Response = true
	m.SetEdns0(1232, false)
	m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: "x.example.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 7}, A: []byte{10, 0, 0, 1}},
		&dns.A{Hdr: dns.RR_Header{Name: "x.example.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 3}, A: []byte{10, 0, 0, 2}})
	seed, _ := m.Pack()
	f.Add(seed)
	m.Compress = true
	seed, _ = m.Pack()
	f.Add(seed)
	m.SetQuestion("canary.example.", dns.TypeCNAME)
	m.Answer = []dns.RR{&dns.CNAME{Hdr: dns.RR_Header{Name: "canary.example.", Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: 5}, Target: "v1.x."}}
	m.Rcode = dns.RcodeBadVers // extended: in the OPT record
	seed, _ = m.Pack()
	f.Add(seed)
	checks := []check.Check{
		{Name: "canary.example.", Type: dns.TypeCNAME, Canary: true},
		{Name: "x.example.", Type: dns.TypeA, Answers: []string{"10.0.0.1"}},
		{Name: "x.example.", Type: dns.TypeA, Majority: true},
	}
	f.Fuzz(func(t *testing.T, wire []byte) {
		var scratch []byte
		for _, c := range checks {
			var cache answerCache
			var full, light Result
			if !judgeReply(&full, c, wire, &cache, &scratch, fresh{cur: "v1.x."}) {
				return
			}
			reply := new(dns.Msg)
			if err := reply.Unpack(wire); err != nil {
				t.Fatalf("judged a reply that does not unpack")
			}
			if cache.sig == nil {
				continue // scan did not follow it: never cached
			}
			if _, minTTL, _ := scan(wire, nil); ttlDuration(minTTL) != check.MinTTL(reply.Answer) {
				t.Fatalf("scan TTL %d, MinTTL %s", minTTL, check.MinTTL(reply.Answer))
			}
			if !judgeReply(&light, c, wire, &cache, &scratch, fresh{cur: "v1.x."}) {
				t.Fatalf("the same reply again did not match")
			}
			if full.Rcode != light.Rcode || full.AnswerKey != light.AnswerKey || full.Failure != light.Failure || full.TTL != light.TTL ||
				full.CanaryOK != light.CanaryOK || full.CanaryWhy != light.CanaryWhy {
				t.Fatalf("cached %+v, unpacked %+v", light, full)
			}
		}
	})
}

// A reply that differs only by its TTLs is the cached answer with the new TTL; one that
// differs in its records is unpacked again.
func TestJudgeReplyCache(t *testing.T) {
	c := check.Check{Name: "x.example.", Type: dns.TypeA, Majority: true}
	pack := func(ttl uint32, ip byte) []byte {
		m := new(dns.Msg)
		m.SetQuestion(c.Name, c.Type)
		m.Response = true
		m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: c.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: ttl}, A: []byte{10, 0, 0, ip}}}
		b, _ := m.Pack()
		return b
	}
	var cache answerCache
	var scratch []byte
	for _, step := range []struct {
		wire []byte
		key  string
		ttl  time.Duration
	}{
		{pack(30, 1), "x.example. a 10.0.0.1", 30 * time.Second},
		{pack(29, 1), "x.example. a 10.0.0.1", 29 * time.Second},
		{pack(29, 2), "x.example. a 10.0.0.2", 29 * time.Second},
	} {
		var r Result
		if !judgeReply(&r, c, step.wire, &cache, &scratch, nil) {
			t.Fatal("no match")
		}
		if !strings.EqualFold(r.AnswerKey, step.key) || r.TTL != step.ttl {
			t.Errorf("key %q TTL %s, want %q %s", r.AnswerKey, r.TTL, step.key, step.ttl)
		}
	}
}
