package cluster

import (
	"fmt"
	"net"
	"strings"
	"sync"

	"github.com/miekg/dns"
)

// UpstreamMode selects how the harness's upstream DNS server behaves; tests switch it to break the
// upstream of every replica at once.
type UpstreamMode int

const (
	UpstreamAnswer   UpstreamMode = iota // answer known names, NXDOMAIN otherwise
	UpstreamServfail                     // SERVFAIL everything
	UpstreamDrop                         // never answer
)

// Upstream is the tiny DNS server the pods' /etc/resolv.conf names (CoreDNS's `forward .
// /etc/resolv.conf` needs one): it listens on the bridge address, so no query ever leaves the
// machine, and answers only what the test told it.
type Upstream struct {
	// Addr is host:53 on the bridge.
	Addr    string
	mu      sync.Mutex
	records map[string]net.IP
	mode    UpstreamMode
	servers []*dns.Server
}

func startUpstream(ip string, records map[string]string) (*Upstream, error) {
	u := &Upstream{Addr: net.JoinHostPort(ip, "53"), records: map[string]net.IP{}}
	for name, addr := range records {
		if err := u.SetRecord(name, addr); err != nil {
			return nil, err
		}
	}
	for _, proto := range []string{"udp", "tcp"} {
		started := make(chan error, 1)
		s := &dns.Server{Addr: u.Addr, Net: proto, Handler: u, NotifyStartedFunc: func() { started <- nil }}
		go func() {
			if err := s.ListenAndServe(); err != nil {
				started <- err
			}
		}()
		if err := <-started; err != nil {
			u.stop()
			return nil, fmt.Errorf("listen %s/%s: %w", u.Addr, proto, err)
		}
		u.servers = append(u.servers, s)
	}
	return u, nil
}

// SetRecord makes the upstream answer name with an A record.
func (u *Upstream) SetRecord(name, addr string) error {
	ip := net.ParseIP(addr).To4()
	if ip == nil {
		return fmt.Errorf("upstream record %q: %q is not an IPv4 address", name, addr)
	}
	u.mu.Lock()
	u.records[dns.Fqdn(strings.ToLower(name))] = ip
	u.mu.Unlock()
	return nil
}

// SetMode switches between answering, SERVFAIL and silence.
func (u *Upstream) SetMode(m UpstreamMode) {
	u.mu.Lock()
	u.mode = m
	u.mu.Unlock()
}

// Mode is how the upstream behaves now.
func (u *Upstream) Mode() UpstreamMode {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.mode
}

func (u *Upstream) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	u.mu.Lock()
	mode := u.mode
	var ip net.IP
	if len(r.Question) == 1 {
		ip = u.records[strings.ToLower(r.Question[0].Name)]
	}
	u.mu.Unlock()
	if mode == UpstreamDrop {
		return
	}
	m := new(dns.Msg)
	m.SetReply(r)
	m.RecursionAvailable = true
	switch {
	case mode == UpstreamServfail:
		m.Rcode = dns.RcodeServerFailure
	case ip != nil && r.Question[0].Qtype == dns.TypeA:
		m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 30}, A: ip}}
	case ip != nil: // name exists, no data of this type
	default:
		m.Rcode = dns.RcodeNameError
	}
	_ = w.WriteMsg(m)
}

func (u *Upstream) stop() {
	for _, s := range u.servers {
		_ = s.Shutdown()
	}
}
