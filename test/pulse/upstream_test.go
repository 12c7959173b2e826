package pulse_test

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// upstream is a loopback DNS server (UDP and TCP) that answers A queries with TTL 1 and
// the address in ip, or, while silent, reads them and answers nothing: an upstream gone
// dark. It counts what it was asked while silent, per name.
type upstream struct {
	addr   string
	silent atomic.Bool
	ip     atomic.Value // net.IP

	mu           sync.Mutex
	askedSilent  map[string]int
	askedChanged chan struct{} // closed and replaced on every query received while silent
}

func startUpstream(t *testing.T) *upstream {
	t.Helper()
	u := &upstream{askedSilent: map[string]int{}, askedChanged: make(chan struct{})}
	u.ip.Store(net.IPv4(192, 0, 2, 1))
	// A free UDP port's TCP twin may be in use (any connection's ephemeral port): try another.
	var pc net.PacketConn
	var ln net.Listener
	var err error
	for range 20 {
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if ln, err = net.Listen("tcp", pc.LocalAddr().String()); err == nil {
			break
		}
		pc.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	u.addr = pc.LocalAddr().String()
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		if u.silent.Load() {
			u.mu.Lock()
			u.askedSilent[r.Question[0].Name]++
			close(u.askedChanged)
			u.askedChanged = make(chan struct{})
			u.mu.Unlock()
			return
		}
		m := new(dns.Msg)
		m.SetReply(r)
		if q := r.Question[0]; q.Qtype == dns.TypeA {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 1}, A: u.ip.Load().(net.IP)})
		}
		w.WriteMsg(m)
	})
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go srv.ActivateAndServe()
		<-started
		t.Cleanup(func() { srv.Shutdown() })
	}
	return u
}

// askedUntil waits until cond holds over the per-name counts of the queries asked while
// silent; false if timeout or stop came first.
func (u *upstream) askedUntil(timeout time.Duration, stop <-chan struct{}, cond func(map[string]int) bool) bool {
	deadline := time.After(timeout)
	for {
		u.mu.Lock()
		ok, changed := cond(u.askedSilent), u.askedChanged
		u.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-changed:
		case <-deadline:
			return false
		case <-stop:
			return false
		}
	}
}

func (u *upstream) waitAsked(t *testing.T, what string, timeout time.Duration, cond func(map[string]int) bool) {
	t.Helper()
	if !u.askedUntil(timeout, nil, cond) {
		t.Fatalf("timed out waiting for the upstream to be asked %s", what)
	}
}
