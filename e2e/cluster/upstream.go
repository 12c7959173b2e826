package cluster

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"

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

// upstreamBindWait is how long startUpstream waits for port 53 of the bridge address to be free:
// on a machine shared with other tests, a DNS server listening on the wildcard address (a CoreDNS
// integration test on .:53) holds that port for a moment, and every address's port 53 with it.
const upstreamBindWait = time.Minute

func startUpstream(ip string, records map[string]string, logf func(string, ...any)) (*Upstream, error) {
	u := &Upstream{Addr: net.JoinHostPort(ip, "53"), records: map[string]net.IP{}}
	for name, addr := range records {
		if err := u.SetRecord(name, addr); err != nil {
			return nil, err
		}
	}
	deadline := time.Now().Add(upstreamBindWait)
	for _, proto := range []string{"udp", "tcp"} {
		for attempt := 1; ; attempt++ {
			s, err := u.serve(proto)
			if err == nil {
				u.servers = append(u.servers, s)
				break
			}
			if !errors.Is(err, syscall.EADDRINUSE) || time.Now().After(deadline) {
				u.stop()
				return nil, fmt.Errorf("listen %s/%s: %w", u.Addr, proto, err)
			}
			if attempt == 1 {
				logf("upstream DNS: %s/%s in use by another process (a DNS server on the wildcard address?); retrying for up to %s", u.Addr, proto, upstreamBindWait)
			}
			time.Sleep(500 * time.Millisecond) // another process's socket: no event to wait for
		}
	}
	return u, nil
}

// serve starts one server and returns once it listens, or with the error that stopped it.
func (u *Upstream) serve(proto string) (*dns.Server, error) {
	started := make(chan error, 1)
	s := &dns.Server{Addr: u.Addr, Net: proto, Handler: u, NotifyStartedFunc: func() { started <- nil }}
	go func() {
		if err := s.ListenAndServe(); err != nil {
			started <- err
		}
	}()
	return s, <-started
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
