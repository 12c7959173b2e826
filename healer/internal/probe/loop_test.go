package probe

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dnspulse/dnspulse/healer/internal/check"
	"github.com/dnspulse/dnspulse/healer/internal/config"
	"github.com/dnspulse/dnspulse/healer/internal/replica"
	"github.com/dnspulse/dnspulse/healer/internal/schedule"
)

var checkX = check.Check{Name: "x.example.", Type: dns.TypeA, Rcode: dns.RcodeSuccess}

// fakeLoop is a pool whose loop is driven by hand on a fake clock: one replica "r" at a
// fake socket, one probe sent at 0 with a 40 ms timeout.
func fakeLoop(t *testing.T) (*Pool, *target, *sock) {
	t.Helper()
	p := newPool(t, config.Probe{Interval: config.D(20 * time.Millisecond), Timeout: config.D(100 * time.Millisecond), MinTimeout: config.D(40 * time.Millisecond)},
		[]check.Check{checkX})
	tg := &target{name: "r", err: errors.New("no socket in this test")}
	p.addLocked(tg)
	tg.err = nil
	tg.addr = netip.MustParseAddrPort("192.0.2.1:53")
	s := &sock{byAddr: map[netip.AddrPort]*target{tg.addr: tg}}
	tg.sock = s
	send(p, tg, 0, 7)
	return p, tg, s
}

// send records a probe of tg sent at the given time (ms) with ID id, as round does.
func send(p *Pool, tg *target, atMs int, id uint16) {
	seq := tg.seq
	tg.seq++
	sl := tg.slotOf(id)
	sent := int64(atMs) * int64(time.Millisecond)
	*sl = slot{seq: seq, id: id, state: waiting, sent: sent, deadline: sent + int64(40*time.Millisecond)}
	tg.inFlight++
	p.pending++
	p.due.push(deadline{at: sl.deadline, t: tg, id: id, seq: seq})
}

func ms64(n int) int64 { return int64(n) * int64(time.Millisecond) }

// replyMsg is a datagram from addr answering x.example. with ID id.
func replyMsg(t *testing.T, addr netip.AddrPort, id uint16, q check.Check) *inMsg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(q.Name, q.Type)
	m.Response = true
	m.Id = id
	m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 30}, A: net.IPv4(10, 0, 0, 1)})
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return &inMsg{buf: b, n: len(b), from: addr}
}

func (p *Pool) takeOut() []Result {
	out := append([]Result(nil), p.out...)
	p.out = p.out[:0]
	return out
}

// A probe unanswered at its deadline is a timeout; its reply within the late window after
// that is a late reply to the same probe, with its real latency.
func TestTimeoutThenLateReply(t *testing.T) {
	p, tg, s := fakeLoop(t)
	p.expire(ms64(39))
	if out := p.takeOut(); len(out) != 0 {
		t.Fatalf("before the deadline: %+v", out)
	}
	p.expire(ms64(41))
	out := p.takeOut()
	if len(out) != 1 || !out[0].Timeout || out[0].Late || out[0].Latency != 41*time.Millisecond || !out[0].Sent.Equal(p.at(0)) {
		t.Fatalf("at the deadline: %+v, want one timeout", out)
	}
	p.reply(s, replyMsg(t, tg.addr, 7, checkX), p.at(ms64(300)))
	out = p.takeOut()
	if len(out) != 1 || !out[0].LateReply || !out[0].OK() || out[0].Latency != 300*time.Millisecond || !out[0].Sent.Equal(p.at(0)) || out[0].TTL != 30*time.Second {
		t.Fatalf("late reply: %+v", out)
	}
	if p.pending != 0 || tg.inFlight != 0 || tg.slotOf(7).state != free {
		t.Errorf("slot not freed: pending %d, in flight %d", p.pending, tg.inFlight)
	}
}

// A deadline judged more than schedule.LateSlack after it was due proves nothing: the
// healer itself was not running. No late reply follows.
func TestJudgedLateIsInconclusive(t *testing.T) {
	p, tg, s := fakeLoop(t)
	p.expire(ms64(40) + int64(schedule.LateSlack) + ms64(1))
	out := p.takeOut()
	if len(out) != 1 || !out[0].Late || out[0].Timeout || !errors.Is(out[0].Err, ErrLate) {
		t.Fatalf("%+v, want one inconclusive result", out)
	}
	p.reply(s, replyMsg(t, tg.addr, 7, checkX), p.at(ms64(60)))
	if out := p.takeOut(); len(out) != 0 {
		t.Errorf("a reply to an inconclusive probe: %+v", out)
	}
}

// A probe sent before the healer's own socket was found to have dropped datagrams may
// have lost its reply there: its timeout proves nothing.
func TestDroppedByTheHealerIsInconclusive(t *testing.T) {
	p, _, s := fakeLoop(t)
	s.lostBefore = ms64(5)
	p.expire(ms64(41))
	if out := p.takeOut(); len(out) != 1 || !out[0].Late || out[0].Timeout {
		t.Fatalf("%+v, want one inconclusive result", out)
	}
}

// A reply that arrived (by the kernel's stamp) after its deadline, read before the loop
// judged the deadline, is the timeout and then the late reply, in that order.
func TestReplyAfterUnjudgedDeadline(t *testing.T) {
	p, tg, s := fakeLoop(t)
	p.reply(s, replyMsg(t, tg.addr, 7, checkX), p.at(ms64(45)))
	out := p.takeOut()
	if len(out) != 2 || !out[0].Timeout || !out[1].LateReply || out[1].Latency != 45*time.Millisecond {
		t.Fatalf("%+v, want the timeout then the late reply", out)
	}
	p.expire(ms64(2000))
	if out := p.takeOut(); len(out) != 0 || p.pending != 0 {
		t.Errorf("after the late window: %+v, pending %d", out, p.pending)
	}
}

// A reply in time ends the probe; what does not match it (another source, an unknown ID,
// another question, a query rather than a response) is ignored.
func TestRepliesMatchSourceIDAndQuestion(t *testing.T) {
	p, tg, s := fakeLoop(t)
	other := netip.MustParseAddrPort("192.0.2.2:53")
	p.reply(s, replyMsg(t, other, 7, checkX), p.at(ms64(1)))                                             // spoofed source
	p.reply(s, replyMsg(t, tg.addr, 8, checkX), p.at(ms64(1)))                                           // unknown ID
	p.reply(s, replyMsg(t, tg.addr, 7, check.Check{Name: "y.example.", Type: dns.TypeA}), p.at(ms64(1))) // another question
	q := replyMsg(t, tg.addr, 7, checkX)
	q.buf[2] &^= 0x80 // a query
	p.reply(s, q, p.at(ms64(1)))
	if out := p.takeOut(); len(out) != 0 {
		t.Fatalf("matched: %+v", out)
	}
	p.reply(s, replyMsg(t, tg.addr, 7, checkX), p.at(ms64(2)))
	out := p.takeOut()
	if len(out) != 1 || !out[0].OK() || out[0].Latency != 2*time.Millisecond || out[0].AnswerKey != "x.example. A 10.0.0.1" {
		t.Fatalf("%+v, want the answer", out)
	}
	p.expire(ms64(50))
	if out := p.takeOut(); len(out) != 0 {
		t.Errorf("an answered probe timed out: %+v", out)
	}
}

// The slot table: every probe awaiting a reply has its own ID, at the slot the ID names;
// a hung replica boosted for long enough fills it with late windows, and the oldest of
// them are forgotten rather than a probe skipped.
func TestSlotsAndIDs(t *testing.T) {
	p, tg, _ := fakeLoop(t)
	n := len(tg.slots)
	for i := 1; i < 3*n; i++ {
		p.expire(ms64(i))
		p.takeOut()
		round := p.maxInFlight
		p.maxInFlight = 1 << 20
		p.round(tg, p.at(ms64(i)), ms64(i))
		p.maxInFlight = round
	}
	inFlight := 0
	for i, sl := range tg.slots {
		if sl.state != free && int(sl.id)&(n-1) != i {
			t.Fatalf("probe with ID %d at slot %d", sl.id, i)
		}
		if sl.state == waiting {
			inFlight++
		}
	}
	if inFlight < 30 || p.Skipped.Load() > 0 {
		t.Errorf("%d probes in flight, %d skipped, for a table of %d", inFlight, p.Skipped.Load(), n)
	}
}

// Hundreds of replicas share a few sockets; each gets its own answers.
func TestManyReplicasShareSockets(t *testing.T) {
	const n = 150
	var mu sync.Mutex
	answered := map[string]int{}
	var ts []replica.Target
	for i := range n {
		addr, _ := server(t, func(w dns.ResponseWriter, r *dns.Msg) {
			mu.Lock()
			answered[w.LocalAddr().String()]++
			mu.Unlock()
			answerA(w, r)
		})
		ts = append(ts, replica.Target{Name: fmt.Sprintf("r%03d", i), DNSAddr: addr})
	}
	// Two names at one address: told apart by their sockets.
	ts = append(ts, replica.Target{Name: "twin", DNSAddr: ts[0].DNSAddr})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p := newPool(t, config.Probe{Interval: config.D(20 * time.Millisecond), Timeout: config.D(time.Second), MinTimeout: config.D(500 * time.Millisecond)},
		[]check.Check{checkX})
	p.Sync(ctx, ts)
	p.mu.Lock()
	socks := len(p.socks[0])
	p.mu.Unlock()
	want := (n + targetsPerSocket - 1) / targetsPerSocket
	if want == 1 {
		want = 2 // the twin cannot share the first one's
	}
	if socks != want {
		t.Errorf("%d sockets for %d replicas, want %d", socks, n+1, want)
	}
	ok := map[string]bool{}
	for len(ok) < n+1 {
		for _, r := range collect(t, p, 1) {
			if !r.OK() {
				t.Fatalf("%s: %+v", r.Replica, r)
			}
			ok[r.Replica] = true
		}
	}
	// Gone: no more probes, and the sockets of nobody are closed.
	p.Sync(ctx, ts[:1])
	p.mu.Lock()
	socks = len(p.socks[0])
	p.mu.Unlock()
	if socks != 1 {
		t.Errorf("%d sockets left for one replica", socks)
	}
}

func TestSlotsFor(t *testing.T) {
	// One check every 20 ms boosted x4, each probe remembered for the late window: 240,
	// twice that for room.
	if n := slotsFor(1, 20*time.Millisecond); n != 512 {
		t.Errorf("%d slots, want 512", n)
	}
	if n := slotsFor(1, time.Second); n != 128 {
		t.Errorf("%d slots, want the floor 128", n)
	}
}
