// Package check is what the healer asks every replica and what it expects back: the
// checks of --check and the config file, and the rules that compare answers.
package check

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Check is one synthetic query sent to every replica and what its answer must be.
type Check struct {
	// Name is the fully qualified name asked.
	Name string
	// Type is the query type (dns.TypeA, ...).
	Type uint16
	// Rcode is the rcode the answer must carry (dns.RcodeSuccess unless configured).
	Rcode int
	// Answers, when non-nil, is the exact answer set expected (rdata as dig prints it,
	// e.g. "10.96.0.1" for A, "0 100 53 dns.example." for SRV), order ignored.
	Answers []string
	// Majority: without exact Answers, the answer must agree with the majority of the
	// replicas (judged by the detector, docs/design.md R2). Off for a name whose answers may
	// legitimately differ between replicas (a forwarded CDN or round-robin name): then only
	// the rcode is checked. By default on for names the cluster is authoritative for.
	Majority bool
	// Canary marks the freshness canary's CNAME check.
	Canary bool
}

// String names the check as --check spells it.
func (c Check) String() string {
	return c.Name + "/" + dns.TypeToString[c.Type]
}

// Parse reads QNAME[/QTYPE] (type A when omitted).
func Parse(s string) (Check, error) {
	name, typ, hasType := strings.Cut(strings.TrimSpace(s), "/")
	if name == "" {
		return Check{}, fmt.Errorf("check %q: empty name", s)
	}
	if _, ok := dns.IsDomainName(name); !ok {
		return Check{}, fmt.Errorf("check %q: %q is not a domain name", s, name)
	}
	c := Check{Name: dns.Fqdn(strings.ToLower(name)), Type: dns.TypeA, Rcode: dns.RcodeSuccess}
	if hasType {
		t, err := ParseType(typ)
		if err != nil {
			return Check{}, fmt.Errorf("check %q: %w", s, err)
		}
		c.Type = t
	}
	return c, nil
}

// ParseType reads a query type name such as A, AAAA, SRV, CNAME, TXT.
func ParseType(s string) (uint16, error) {
	t, ok := dns.StringToType[strings.ToUpper(strings.TrimSpace(s))]
	if !ok || t == dns.TypeNone {
		return 0, fmt.Errorf("unknown query type %q", s)
	}
	return t, nil
}

// ParseRcode reads an rcode name as miekg/dns spells it (NOERROR, NXDOMAIN, SERVFAIL...).
func ParseRcode(s string) (int, error) {
	r, ok := dns.StringToRcode[strings.ToUpper(strings.TrimSpace(s))]
	if !ok {
		return 0, fmt.Errorf("unknown rcode %q", s)
	}
	return r, nil
}

// AnswerKey reduces an answer section to a canonical string: one "owner TYPE rdata" line
// per record, lower-cased, sorted, TTL and class left out, so that two replicas that
// return the same records in another order or with other TTLs compare equal.
func AnswerKey(rrs []dns.RR) string {
	if len(rrs) == 0 {
		return ""
	}
	lines := make([]string, 0, len(rrs))
	for _, rr := range rrs {
		if rr == nil || rr.Header() == nil {
			continue
		}
		h := rr.Header()
		lines = append(lines, strings.ToLower(h.Name)+" "+dns.TypeToString[h.Rrtype]+" "+Rdata(rr))
	}
	sort.Strings(lines)
	lines = dedupe(lines)
	return strings.Join(lines, "\n")
}

// MinTTL is the smallest TTL of rrs, 0 when there is none.
func MinTTL(rrs []dns.RR) time.Duration {
	var m uint32
	for i, rr := range rrs {
		if rr == nil || rr.Header() == nil {
			continue
		}
		if t := rr.Header().Ttl; i == 0 || t < m {
			m = t
		}
	}
	return time.Duration(m) * time.Second
}

// Rdata is the record's data as dig prints it, without the header, lower-cased.
func Rdata(rr dns.RR) string {
	s := rr.String()
	if h := rr.Header().String(); strings.HasPrefix(s, h) {
		s = s[len(h):]
	}
	return strings.ToLower(strings.TrimSpace(s))
}

// rdataSet is the sorted set of the rdata of the records of type t in rrs.
func rdataSet(rrs []dns.RR, t uint16) []string {
	var out []string
	for _, rr := range rrs {
		if rr == nil || rr.Header() == nil || rr.Header().Rrtype != t {
			continue
		}
		out = append(out, Rdata(rr))
	}
	sort.Strings(out)
	return dedupe(out)
}

func dedupe(sorted []string) []string {
	if len(sorted) < 2 {
		return sorted
	}
	out := sorted[:1]
	for _, s := range sorted[1:] {
		if s != out[len(out)-1] {
			out = append(out, s)
		}
	}
	return out
}

// Failure says what is wrong with reply for the check, "" when it meets the check's own
// expectation (the majority comparison is the detector's, which sees every replica).
func (c Check) Failure(reply *dns.Msg) string {
	if reply.Rcode != c.Rcode {
		return "rcode " + rcodeName(reply.Rcode) + " (want " + rcodeName(c.Rcode) + ")"
	}
	if c.Answers != nil {
		want := make([]string, len(c.Answers))
		for i, a := range c.Answers {
			want[i] = strings.ToLower(strings.TrimSpace(a))
		}
		sort.Strings(want)
		want = dedupe(want)
		got := rdataSet(reply.Answer, c.Type)
		if strings.Join(got, ",") != strings.Join(want, ",") {
			return fmt.Sprintf("answer [%s] (want [%s])", strings.Join(got, ","), strings.Join(want, ","))
		}
	}
	return ""
}

func rcodeName(r int) string {
	if s, ok := dns.RcodeToString[r]; ok {
		return s
	}
	return fmt.Sprintf("RCODE%d", r)
}

// CNAMETarget is the target of the CNAME owned by name in rrs, "" if none.
func CNAMETarget(rrs []dns.RR, name string) string {
	for _, rr := range rrs {
		if c, ok := rr.(*dns.CNAME); ok && strings.EqualFold(c.Hdr.Name, name) {
			return strings.ToLower(c.Target)
		}
	}
	return ""
}
