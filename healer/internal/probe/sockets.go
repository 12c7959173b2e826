package probe

// The pool's sockets: which one a replica is probed through.

import (
	"errors"
	"net"
	"net/netip"
	"time"

	"github.com/miekg/dns"

	"github.com/dnspulse/dnspulse/healer/internal/check"
	"github.com/dnspulse/dnspulse/healer/internal/replica"
	"github.com/dnspulse/dnspulse/healer/internal/schedule"
)

func famIndex(v6 bool) int {
	if v6 {
		return 1
	}
	return 0
}

// sockFor picks the socket a replica at addr is probed through: the least loaded one of
// its family that has no other replica at the same address (replies are told apart by
// their source), opening another while there are fewer than targetsPerSocket each.
func (p *Pool) sockFor(addr netip.AddrPort) (*sock, error) {
	v6 := !addr.Addr().Is4()
	fam := &p.socks[famIndex(v6)]
	var best *sock
	for _, s := range *fam {
		if _, taken := s.byAddr[addr]; !taken && (best == nil || len(s.byAddr) < len(best.byAddr)) {
			best = s
		}
	}
	if best != nil && (len(best.byAddr) < targetsPerSocket || len(*fam) >= maxSockets) {
		return best, nil
	}
	s, err := openSock(v6)
	if err != nil {
		if best != nil {
			return best, nil
		}
		return nil, err
	}
	*fam = append(*fam, s)
	return s, nil
}

// slotsFor sizes a replica's table of probe slots: twice the probes it may have awaiting a
// reply, in time or late (lateWindow after their timeout), boosted (a hung replica's
// timeouts keep listening for the late replies that would tell a stall from a hang), so
// that a random ID finds a free slot at the first or second try.
func slotsFor(checks int, interval time.Duration) int {
	need := 2 * float64(checks*BoostFactor) * (lateWindow + 200*time.Millisecond).Seconds() / max(interval.Seconds(), 0.001)
	n := 128
	for float64(n) < need && n < 1<<16 {
		n *= 2
	}
	return n
}

// target is one replica as the loop probes it.
type target struct {
	name    string
	dnsAddr string
	addr    netip.AddrPort
	// err: its address does not resolve, or no socket could be opened: every round
	// reports it as the probes' error.
	err     error
	sock    *sock
	timeout schedule.Timeout
	// slots holds its probes awaiting a reply, each at the slot its DNS ID names (the ID's
	// low bits): a reply finds its probe in one look, without a map; seq numbers the
	// probes, so that a deadline outliving its probe is told from the next one there.
	slots []slot
	seq   uint32
	cache []answerCache // by check
	// inFlight counts its probes awaiting a reply in time (or over TCP).
	inFlight int
	gone     bool
}

// resolve reads the replica's address once, host names through the resolver.
func (t *target) resolve() {
	ap, err := netip.ParseAddrPort(t.dnsAddr)
	if err != nil {
		ua, rerr := net.ResolveUDPAddr("udp", t.dnsAddr)
		if rerr != nil {
			t.err = rerr
			return
		}
		ap = ua.AddrPort()
	}
	t.addr = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

type slotState uint8

const (
	free      slotState = iota
	waiting             // sent, its reply awaited until its deadline
	viaTCP              // truncated: its TCP retry runs
	listening           // timed out: a reply until the late window ends is a late reply
)

// slot is one probe. Times are nanoseconds since the pool's epoch.
type slot struct {
	seq   uint32
	id    uint16
	check uint16
	state slotState
	sent  int64
	// deadline is when it times out (waiting, and over TCP), or when its late window
	// ends (listening).
	deadline int64
}

// slotOf is the slot of the probe with DNS ID id.
func (t *target) slotOf(id uint16) *slot { return &t.slots[int(id)&(len(t.slots)-1)] }

// probe finds the probe seq at the slot of id; nil when that slot has moved on.
func (t *target) probe(id uint16, seq uint32) *slot {
	if sl := t.slotOf(id); sl.seq == seq && sl.state != free {
		return sl
	}
	return nil
}

// Judge fills res from a reply or an error: what probe results are made of, kept apart
// from the network so that it can be tested and fuzzed on its own.
func Judge(res *Result, c check.Check, reply *dns.Msg, err error, fresh replica.FreshnessSource) {
	if err != nil {
		res.Err = err
		res.Timeout = errors.Is(err, errTimeout)
		res.Late = errors.Is(err, ErrLate)
		return
	}
	if reply == nil {
		res.Err = errors.New("no reply")
		return
	}
	res.Rcode = reply.Rcode
	res.AnswerKey = check.AnswerKey(reply.Answer)
	res.TTL = check.MinTTL(reply.Answer)
	res.Failure = c.Failure(reply)
	if c.Canary && fresh != nil && res.Failure == "" {
		target := check.CNAMETarget(reply.Answer, c.Name)
		if target == "" {
			res.CanaryWhy = "no CNAME for " + c.Name
		} else {
			res.CanaryOK, res.CanaryWhy = fresh.Accept(target, res.Sent, res.TTL)
		}
	}
}
