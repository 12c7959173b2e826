package pulse

import (
	"sync"
	"sync/atomic"

	"github.com/miekg/dns"
)

// probeMemory is how many of the last self-probes are still recognised as pulse's own:
// 1024 ticks, 100 s at the default tick. A probe is recognised by its DNS id, then its
// name; one that arrives after its deadline (a server that stalled and now serves its
// backlog) is still a self-probe, kept out of the client windows, not a client query
// with whatever rcode the chain gives an unknown name.
const probeMemory = 1024

// probeIDs is the set of the DNS ids of the last probeMemory self-probes: a 65536-bit
// map that ServeDNS tests with one load, and a ring, written only by the self-probe (one
// at a time), of the ids in the order they were sent, to forget the oldest.
type probeIDs struct {
	bits [1 << 16 / 64]atomic.Uint64

	mu   sync.Mutex
	ring [probeMemory]uint16
	n    int
}

func (s *probeIDs) has(id uint16) bool { return s.bits[id>>6].Load()&(1<<(id&63)) != 0 }

// next picks the id of a new self-probe, one not in the set, and remembers it in place of
// the oldest.
func (s *probeIDs) next() uint16 {
	s.mu.Lock()
	defer s.mu.Unlock()
	id := dns.Id()
	for s.has(id) {
		id = dns.Id()
	}
	if s.n >= probeMemory {
		old := s.ring[s.n%probeMemory]
		s.bits[old>>6].And(^(uint64(1) << (old & 63)))
	}
	s.ring[s.n%probeMemory] = id
	s.n++
	s.bits[id>>6].Or(1 << (id & 63))
	return id
}
