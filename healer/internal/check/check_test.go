package check

import (
	"testing"

	"github.com/miekg/dns"
)

func rr(t *testing.T, s string) dns.RR {
	t.Helper()
	r, err := dns.NewRR(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestAnswerKeyIgnoresOrderTTLAndCase(t *testing.T) {
	a := AnswerKey([]dns.RR{rr(t, "x.example. 30 IN A 10.0.0.2"), rr(t, "x.example. 30 IN A 10.0.0.1")})
	b := AnswerKey([]dns.RR{rr(t, "X.Example. 5 IN A 10.0.0.1"), rr(t, "x.example. 300 IN A 10.0.0.2")})
	if a != b {
		t.Errorf("same set compared different:\n%s\n%s", a, b)
	}
	c := AnswerKey([]dns.RR{rr(t, "x.example. 30 IN A 10.0.0.1")})
	if a == c {
		t.Errorf("different sets compared equal")
	}
	if AnswerKey(nil) != "" {
		t.Errorf("empty answer not empty key")
	}
}

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in      string
		name    string
		typ     uint16
		wantErr bool
	}{
		{"kubernetes.default.svc.cluster.local", "kubernetes.default.svc.cluster.local.", dns.TypeA, false},
		{"_dns._udp.kube-dns.kube-system.svc.cluster.local/srv", "_dns._udp.kube-dns.kube-system.svc.cluster.local.", dns.TypeSRV, false},
		{"Example.COM./AAAA", "example.com.", dns.TypeAAAA, false},
		{"x.example/BOGUS", "", 0, true},
		{"", "", 0, true},
		{"/A", "", 0, true},
	} {
		c, err := Parse(tc.in)
		if (err != nil) != tc.wantErr {
			t.Errorf("%q: err %v, wantErr %v", tc.in, err, tc.wantErr)
			continue
		}
		if err == nil && (c.Name != tc.name || c.Type != tc.typ) {
			t.Errorf("%q: got %s %d", tc.in, c.Name, c.Type)
		}
	}
}
