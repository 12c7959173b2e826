package probe

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"

	"github.com/dnspulse/dnspulse/healer/internal/schedule"
)

// errTimeout is what a probe that got no reply in time reports.
var errTimeout = errors.New("timeout")

// ErrLate is what a probe reports when its timeout fired much later than set: the healer
// itself was not running (an overloaded node, a long GC), so a reply may well have been
// waiting unread. Such a probe proves nothing about the replica and is not counted.
var ErrLate = errors.New("healer stalled past the probe deadline: inconclusive")

// replyGrace is how long a timed-out probe waits for a reply already on its way in.
const replyGrace = 2 * time.Millisecond

// udpMux sends every probe to one replica over a single connected UDP socket and matches
// replies by message ID. One socket per replica, instead of one per probe, keeps the
// healer's cost per probe to two syscalls, which is what lets it probe 100 replicas every
// 20 ms within a quarter of a core.
type udpMux struct {
	conn *net.UDPConn

	mu      sync.Mutex
	pending map[uint16]chan *dns.Msg
	// late are probes that timed out but whose reply is still awaited for lateWindow: a
	// reply that comes late proves the replica alive (a stall, not a hang) and how slow.
	late   map[uint16]lateWait
	closed bool
}

// lateWait is a timed-out probe still listening for its reply.
type lateWait struct {
	question dns.Question
	until    time.Time
	reply    func(*dns.Msg, time.Time)
}

// lateWindow is how long after its timeout a probe's reply is still taken as a late reply.
const lateWindow = time.Second

func dialMux(addr string) (*udpMux, error) {
	raddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, err
	}
	conn, err := net.DialUDP("udp", nil, raddr)
	if err != nil {
		return nil, err
	}
	m := &udpMux{conn: conn, pending: make(map[uint16]chan *dns.Msg), late: make(map[uint16]lateWait)}
	go m.readLoop()
	return m, nil
}

func (m *udpMux) close() {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	m.conn.Close()
}

// readLoop hands each reply to the probe waiting for its ID. Errors such as ICMP port
// unreachable (ECONNREFUSED on a connected socket) are not tied to one probe: those probes
// simply time out.
func (m *udpMux) readLoop() {
	buf := make([]byte, dns.MaxMsgSize)
	for {
		n, err := m.conn.Read(buf)
		if err != nil {
			m.mu.Lock()
			closed := m.closed
			m.mu.Unlock()
			if closed || errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		reply := new(dns.Msg)
		if err := reply.Unpack(buf[:n]); err != nil {
			continue // a mangled datagram matches no probe; the probe times out
		}
		now := time.Now()
		m.mu.Lock()
		ch, ok := m.pending[reply.Id]
		if ok {
			delete(m.pending, reply.Id)
		}
		lw, late := m.late[reply.Id]
		if late {
			delete(m.late, reply.Id)
		}
		m.mu.Unlock()
		switch {
		case ok:
			ch <- reply // buffered 1, sent once: never blocks
		case late && now.Before(lw.until) && sameQuestion(reply, lw.question):
			lw.reply(reply, now)
		}
	}
}

// exchange sends q (its ID is overwritten) and waits for the reply to it until ctx ends.
// When it times out, onLate (if not nil) still gets the reply should it come within
// lateWindow, with the time it arrived.
func (m *udpMux) exchange(ctx context.Context, q *dns.Msg, onLate func(*dns.Msg, time.Time)) (*dns.Msg, error) {
	ch := make(chan *dns.Msg, 1)
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, net.ErrClosed
	}
	id := uint16(rand.Uint32())
	for taken := true; taken; id++ {
		_, pend := m.pending[id]
		lw, late := m.late[id]
		if late && time.Now().After(lw.until) {
			delete(m.late, id) // expired: the ID is free again
			late = false
		}
		if taken = pend || late; !taken {
			break
		}
	}
	q.Id = id
	m.pending[id] = ch
	m.mu.Unlock()
	forget := func() {
		m.mu.Lock()
		if m.pending[id] == ch {
			delete(m.pending, id)
		}
		m.mu.Unlock()
	}

	wire, err := q.Pack()
	if err != nil {
		forget()
		return nil, err
	}
	if _, err := m.conn.Write(wire); err != nil {
		forget()
		return nil, err
	}
	for {
		select {
		case reply := <-ch:
			if !sameQuestion(reply, q.Question[0]) {
				// A reply to an earlier probe that reused this ID after it timed out.
				m.mu.Lock()
				m.pending[id] = ch
				m.mu.Unlock()
				continue
			}
			return reply, nil
		case <-ctx.Done():
			if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
				forget()
				return nil, ctx.Err()
			}
			if dl, ok := ctx.Deadline(); ok && time.Since(dl) > schedule.LateSlack {
				forget()
				return nil, ErrLate
			}
			// A reply may be in the socket that the read loop has not had the CPU to hand
			// over yet: a short grace tells a slow healer from a silent replica. A reply
			// in the grace proves the replica answered, but not how fast: inconclusive.
			grace := time.NewTimer(replyGrace)
			defer grace.Stop()
			select {
			case <-ch:
				forget()
				return nil, ErrLate
			case <-grace.C:
				m.mu.Lock()
				if m.pending[id] == ch {
					delete(m.pending, id)
					if onLate != nil && !m.closed {
						m.late[id] = lateWait{question: q.Question[0], until: time.Now().Add(lateWindow), reply: onLate}
					}
				}
				m.mu.Unlock()
				return nil, errTimeout
			}
		}
	}
}

// sameQuestion says whether reply answers q (an ID reused after a timeout may bring the
// reply to an earlier probe).
func sameQuestion(reply *dns.Msg, q dns.Question) bool {
	return len(reply.Question) == 1 && strings.EqualFold(reply.Question[0].Name, q.Name) && reply.Question[0].Qtype == q.Qtype
}

// exchangeTCP is the retry of a truncated answer.
func exchangeTCP(ctx context.Context, addr string, q *dns.Msg) (*dns.Msg, error) {
	c := &dns.Client{Net: "tcp"}
	if dl, ok := ctx.Deadline(); ok {
		c.Timeout = time.Until(dl)
	}
	reply, _, err := c.ExchangeContext(ctx, q, addr)
	if err != nil {
		var ne net.Error
		if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
			return nil, errTimeout
		}
		return nil, err
	}
	return reply, nil
}
