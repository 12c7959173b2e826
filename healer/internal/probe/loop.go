package probe

import (
	"context"
	"time"

	"github.com/dnspulse/dnspulse/healer/internal/schedule"
)

// pollEvery is the longest a reply waits in a socket while any probe awaits one, and so
// the loop's period under load: passes come at most this often, each reading, judging and
// sending everything due. A reply's latency does not suffer from it (the kernel stamps
// arrivals), and a deadline judged up to this late is well within schedule.LateSlack.
const pollEvery = time.Millisecond

// run is the loop: one pass, then sleep until something is due (a round, a deadline, or
// the next read while replies are awaited), never sooner than pollEvery after the last
// pass began.
func (p *Pool) run(ctx context.Context) {
	p.rmsgs = newReadMsgs()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	defer p.closeAll()
	for {
		start := time.Now()
		next, out := p.lockedPass(start)
		p.Results.PutAll(out)
		clear(out)
		p.out = out[:0]

		timer.Reset(max(time.Until(next), time.Until(start.Add(pollEvery)), 0))
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-p.wake:
			timer.Stop()
			// Something new (a replica, a boost): act on it, but not before pollEvery.
			if d := time.Until(start.Add(pollEvery)); d > 0 {
				timer.Reset(d)
				select {
				case <-ctx.Done():
					return
				case <-timer.C:
				}
			}
		}
	}
}

func (p *Pool) lockedPass(start time.Time) (time.Time, []Result) {
	p.mu.Lock()
	defer p.mu.Unlock()
	next := p.pass(start) // before p.out is read: it appends to it
	return next, p.out
}

func (p *Pool) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, fam := range p.socks {
		for _, s := range fam {
			s.close()
		}
	}
	p.socks = [2][]*sock{}
}

// pass reads every waiting reply, judges the probes whose deadline passed, and sends the
// probes due, in that order: a reply that arrived before its deadline is read before the
// deadline is judged. It returns when the next pass is due.
func (p *Pool) pass(now time.Time) time.Time {
	if p.pending > 0 {
		p.readAll()
	}
	nowNs := p.ns(time.Now())
	p.expire(nowNs)
	p.sendDue(time.Now())

	next := now.Add(time.Hour)
	if t, ok := p.rounds.Next(); ok {
		next = t
	}
	if len(p.due) > 0 {
		next = minTime(next, p.at(p.due[0].at))
	}
	if p.pending > 0 {
		next = minTime(next, now.Add(pollEvery))
	}
	return next
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// ns is t on the loop's clock; at the other way round.
func (p *Pool) ns(t time.Time) int64  { return int64(t.Sub(p.epoch)) }
func (p *Pool) at(ns int64) time.Time { return p.epoch.Add(time.Duration(ns)) }

func newReadMsgs() []inMsg {
	ms := make([]inMsg, batch)
	buf := make([]byte, batch*maxReply)
	oob := make([]byte, batch*max(oobSize, 1))
	for i := range ms {
		ms[i].buf = buf[i*maxReply : (i+1)*maxReply]
		ms[i].oob = oob[i*max(oobSize, 1) : (i+1)*max(oobSize, 1)][:oobSize]
	}
	return ms
}

// readAll reads every socket until it is empty.
func (p *Pool) readAll() {
	for _, fam := range p.socks {
		for _, s := range fam {
			for {
				n, err := s.bc.read(p.rmsgs)
				if n > 0 {
					now := time.Now()
					for i := range p.rmsgs[:n] {
						p.reply(s, &p.rmsgs[i], now)
					}
				}
				if err != nil || n < len(p.rmsgs) {
					break
				}
			}
		}
	}
}

// reply handles one datagram read at now.
func (p *Pool) reply(s *sock, m *inMsg, now time.Time) {
	arrived, drops, counted := ancillary(m.oob[:m.nn], now)
	if counted && drops != s.drops {
		s.drops, s.lostBefore = drops, p.ns(now)
	}
	t := s.byAddr[m.from]
	msg := m.buf[:m.n]
	if t == nil || len(msg) < 12 || msg[2]&0x80 == 0 { // not a replica's, or not a response
		return
	}
	id := uint16(msg[0])<<8 | uint16(msg[1])
	sl := t.slotOf(id)
	if sl.state == free || sl.id != id {
		return
	}
	at := p.ns(arrived)
	if sl.state == waiting && at > sl.deadline {
		// It came after its deadline, which this pass has not judged yet: first the
		// timeout, as if judged on time, then the late reply.
		p.timedOut(t, sl, p.ns(now))
	}
	c := p.checks[sl.check]
	res := Result{Replica: t.name, Check: int(sl.check), Sent: p.at(sl.sent), Latency: time.Duration(max(at-sl.sent, 0)), Canary: c.Canary}
	switch sl.state {
	case waiting:
		if msg[2]&0x02 != 0 || m.flags&msgTrunc != 0 { // truncated, by the replica or by our buffer
			p.retryTCP(t, sl)
			return
		}
		if !judgeReply(&res, c, msg, &t.cache[sl.check], &p.scratch, p.fresh) {
			return // another question under a reused ID: keep waiting
		}
		t.inFlight--
		p.release(sl)
		t.timeout.Observe(res.Latency)
		p.out = append(p.out, res)
	case listening:
		if at > sl.deadline {
			p.release(sl)
			return
		}
		if !judgeReply(&res, c, msg, &t.cache[sl.check], &p.scratch, p.fresh) {
			return
		}
		p.release(sl)
		res.LateReply = true
		t.timeout.Observe(res.Latency) // the replica's real latency: the timeout follows it
		p.out = append(p.out, res)
	}
}

// release frees a slot.
func (p *Pool) release(sl *slot) {
	if sl.state != free {
		sl.state = free
		p.pending--
	}
}

// expire judges every deadline that passed by nowNs: a probe still waiting timed out (or,
// judged more than schedule.LateSlack after its deadline, is inconclusive); a late window
// that ended frees its slot.
func (p *Pool) expire(nowNs int64) {
	for len(p.due) > 0 && p.due[0].at <= nowNs {
		d := p.due.pop()
		if d.t.gone {
			continue
		}
		sl := d.t.probe(d.id, d.seq)
		if sl == nil || sl.deadline != d.at {
			continue // answered (the slot moved on), or its deadline changed
		}
		switch sl.state {
		case waiting:
			p.timedOut(d.t, sl, nowNs)
		case listening:
			p.release(sl)
		}
	}
}

// timedOut reports a probe whose deadline passed without a reply, judged at nowNs.
func (p *Pool) timedOut(t *target, sl *slot, nowNs int64) {
	t.inFlight--
	res := Result{Replica: t.name, Check: int(sl.check), Sent: p.at(sl.sent), Latency: time.Duration(nowNs - sl.sent), Canary: p.checks[sl.check].Canary}
	if schedule.Late(time.Duration(nowNs-sl.sent), time.Duration(sl.deadline-sl.sent)) || (t.sock != nil && sl.sent < t.sock.lostBefore) {
		// Judged long after its deadline (the healer was not running), or its reply may
		// have been among those the healer's own socket dropped: proves nothing.
		res.Err, res.Late = ErrLate, true
		p.release(sl)
	} else {
		res.Err, res.Timeout = errTimeout, true
		sl.state = listening
		sl.deadline = nowNs + int64(lateWindow)
		p.due.push(deadline{at: sl.deadline, t: t, id: sl.id, seq: sl.seq})
	}
	p.out = append(p.out, res)
}
