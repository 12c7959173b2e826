package probe

// Sending probes: the replicas now due, their queries batched per socket, a TCP retry for a
// truncated reply, and the heap of deadlines the loop judges.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"time"

	"github.com/miekg/dns"
)

// sendDue sends one round (every check once) to every replica due at now.
func (p *Pool) sendDue(now time.Time) {
	nowNs := p.ns(now)
	p.rounds.Due(now, func(t *target) time.Time {
		p.round(t, now, nowNs)
		return time.Time{}
	})
	for _, fam := range p.socks {
		for _, s := range fam {
			if len(s.out) > 0 {
				p.flush(s)
			}
		}
	}
}

// round queues one probe per check of t on its socket's batch.
func (p *Pool) round(t *target, now time.Time, nowNs int64) {
	if t.err != nil {
		for i, c := range p.checks {
			p.out = append(p.out, Result{Replica: t.name, Check: i, Sent: now, Err: t.err, Canary: c.Canary})
		}
		return
	}
	timeout := t.timeout.Get()
	for i := range p.checks {
		if t.inFlight >= p.maxInFlight || (p.limiter != nil && !p.limiter.AllowN(now, 1)) {
			p.Skipped.Add(1)
			continue
		}
		sl, id := p.newID(t)
		if sl == nil {
			p.Skipped.Add(1) // no free slot: cannot happen with slotsFor's room
			continue
		}
		seq := t.seq
		t.seq++
		*sl = slot{seq: seq, id: id, check: uint16(i), state: waiting, sent: nowNs, deadline: nowNs + int64(timeout)}
		t.inFlight++
		p.pending++
		p.due.push(deadline{at: sl.deadline, t: t, id: id, seq: seq})
		s := t.sock
		if len(s.out) == cap(s.out) {
			s.out = append(s.out[:cap(s.out)], make([]outMsg, len(s.out)+8)...)[:len(s.out)]
		}
		s.out = s.out[:len(s.out)+1]
		m := &s.out[len(s.out)-1]
		m.buf = append(m.buf[:0], p.queries[i]...) // the bytes stay with the slot for the next passes
		m.buf[0], m.buf[1] = byte(id>>8), byte(id)
		m.to = t.addr
		s.outRef = append(s.outRef, probeRef{t: t, id: id, seq: seq})
	}
}

// newID picks a random DNS ID whose slot is free; should the table be that full, one
// whose slot only listens for a late reply (which is forgotten). Nil after a few tries.
func (p *Pool) newID(t *target) (*slot, uint16) {
	for try := range 16 {
		id := uint16(rand.Uint32())
		switch sl := t.slotOf(id); {
		case sl.state == free:
			return sl, id
		case sl.state == listening && try >= 8:
			p.release(sl)
			return sl, id
		}
	}
	return nil, 0
}

// flush sends s's batch. A datagram the kernel refuses fails its probe: inconclusive when
// the healer's own buffers are full, an error of the replica's path otherwise.
func (p *Pool) flush(s *sock) {
	for i := 0; i < len(s.out); {
		n, err := s.bc.write(s.out[i:])
		if err == nil && n > 0 {
			i += n
			continue
		}
		if err == nil {
			err = fmt.Errorf("sendmmsg sent nothing")
		}
		ref := s.outRef[i]
		if sl := ref.t.probe(ref.id, ref.seq); sl != nil && sl.state == waiting {
			ref.t.inFlight--
			res := Result{Replica: ref.t.name, Check: int(sl.check), Sent: p.at(sl.sent), Canary: p.checks[sl.check].Canary}
			res.Err = err
			if localCongestion(err) {
				res.Err, res.Late = ErrLate, true
			}
			p.release(sl)
			p.out = append(p.out, res)
		}
		i++
	}
	s.out = s.out[:0]
	clear(s.outRef)
	s.outRef = s.outRef[:0]
}

// retryTCP asks a truncated probe's question again over TCP, within what is left of its
// timeout, in a goroutine of its own (a rare path: the checks' answers fit in UDP).
func (p *Pool) retryTCP(t *target, sl *slot) {
	sl.state = viaTCP
	id, seq, ci, sent := sl.id, sl.seq, int(sl.check), p.at(sl.sent)
	c, ctx, timeout := p.checks[ci], p.ctx, time.Duration(sl.deadline-sl.sent)
	go func() {
		tctx, cancel := context.WithDeadline(ctx, sent.Add(timeout))
		defer cancel()
		q := query(c)
		reply, err := exchangeTCP(tctx, t.addr.String(), q)
		res := Result{Replica: t.name, Check: ci, Sent: sent, Latency: time.Since(sent), TCP: true, Canary: c.Canary}
		if ctx.Err() != nil {
			return // shutting down: says nothing of the replica
		}
		Judge(&res, c, reply, err, p.fresh)
		p.mu.Lock()
		defer p.mu.Unlock()
		cur := t.probe(id, seq)
		if t.gone || cur == nil || cur.state != viaTCP {
			return
		}
		t.inFlight--
		p.release(cur)
		if res.Err == nil {
			t.timeout.Observe(res.Latency)
		}
		p.Results.Put(res)
	}()
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
		if ctx.Err() != nil || (errors.As(err, &ne) && ne.Timeout()) {
			return nil, errTimeout
		}
		return nil, err
	}
	return reply, nil
}

// deadline is one probe's deadline (or the end of its late window) in the loop's heap.
type deadline struct {
	at  int64
	t   *target
	seq uint32
	id  uint16
}

// deadlineHeap is a binary min-heap by at, by hand (no interface boxing per probe).
type deadlineHeap []deadline

func (h *deadlineHeap) push(d deadline) {
	*h = append(*h, d)
	s := *h
	for i := len(s) - 1; i > 0; {
		up := (i - 1) / 2
		if s[up].at <= s[i].at {
			break
		}
		s[up], s[i] = s[i], s[up]
		i = up
	}
}

func (h *deadlineHeap) pop() deadline {
	s := *h
	top := s[0]
	last := len(s) - 1
	s[0] = s[last]
	s[last] = deadline{}
	s = s[:last]
	for i := 0; ; {
		l := 2*i + 1
		if l >= len(s) {
			break
		}
		c := l
		if r := l + 1; r < len(s) && s[r].at < s[l].at {
			c = r
		}
		if s[i].at <= s[c].at {
			break
		}
		s[i], s[c] = s[c], s[i]
		i = c
	}
	*h = s
	return top
}
