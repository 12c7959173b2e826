package pulse

import (
	"sync/atomic"

	"github.com/coredns/coredns/plugin"

	"github.com/miekg/dns"
)

// recorder wraps the client's ResponseWriter to learn the first rcode written. Each query
// gets a recorder of its own, never reused: the chain may keep the writer after ServeDNS
// returned (cache's serve_stale verify and prefetch goroutines do, and so may any plugin),
// so a pooled recorder was zeroed or handed to another client while still in use: a nil
// dereference that killed the process, or a reply written to the wrong client. What a late
// caller can reach here is immutable (the inner writer, the entry tick) or atomic (state).
//
// Recorders come from slabs of 64 (see recorderSlab): one allocation per 64 queries
// instead of one per query, and still never a reuse.
type recorder struct {
	dns.ResponseWriter // the inner writer; never changes
	start              int64
	// state: bits 0-11 the first rcode written, bit 12 set once one was. WriteMsg and
	// Write set it once, with a compare-and-swap, from whatever goroutine calls them.
	state atomic.Uint32
	shard uint16 // where the query is counted; never changes
}

const (
	rcodeMask = 0x0fff
	wroteBit  = 1 << 12
	maxShards = 1 << 16
)

// slabSize recorders are allocated at once.
const slabSize = 64

// recorderSlab hands out its recorders one by one, each exactly once (an atomic cursor),
// and is never refilled: a used recorder is never handed out again, and the garbage
// collector frees the slab when none of its 64 is referenced any more. A writer kept
// after return pins 2 KiB instead of 32 bytes; a malloc per query (~30 ns, the hot path's
// largest cost after the clock) becomes a cursor increment and 1/64 of a malloc.
type recorderSlab struct {
	next atomic.Uint32
	recs [slabSize]recorder
}

// slabs is the slab a shard currently hands recorders out of.
type slabs struct{ cur atomic.Pointer[recorderSlab] }

// get returns a recorder no one else has had.
func (s *slabs) get() *recorder {
	if sl := s.cur.Load(); sl != nil {
		if i := sl.next.Add(1) - 1; i < slabSize {
			return &sl.recs[i]
		}
	}
	return s.refill()
}

// refill starts a fresh slab, whose first recorder is the caller's. Should another
// goroutine on this shard refill at the same time, one of the two slabs is simply not
// shared; either way no recorder is handed out twice.
//
//go:noinline
func (s *slabs) refill() *recorder {
	sl := new(recorderSlab)
	sl.next.Store(1)
	s.cur.Store(sl)
	return &sl.recs[0]
}

// first returns the first rcode written and whether one was.
func (rw *recorder) first() (rcode int, wrote bool) {
	st := rw.state.Load()
	return int(st & rcodeMask), st&wroteBit != 0
}

// wrote keeps rcode if it is the first one written; later ones, and writes after
// ServeDNS returned, change nothing that is read (the query is counted once, at return).
func (rw *recorder) wrote(rcode int) {
	st := rw.state.Load()
	if st&wroteBit != 0 {
		return
	}
	rw.state.CompareAndSwap(st, st|wroteBit|uint32(min(max(rcode, 0), rcodeMask)))
}

// WriteMsg implements dns.ResponseWriter.
func (rw *recorder) WriteMsg(m *dns.Msg) error {
	if m != nil {
		rw.wrote(m.Rcode)
	}
	return rw.ResponseWriter.WriteMsg(m)
}

// Write implements dns.ResponseWriter; the rcode is the low four bits of byte 3.
func (rw *recorder) Write(b []byte) (int, error) {
	if len(b) >= 4 {
		rw.wrote(int(b[3] & 0x0f))
	}
	return rw.ResponseWriter.Write(b)
}

// SetPlugin and GetPlugin pass the plugin.PluginTracker protocol through to a writer
// further out that tracks which plugin answered.
func (rw *recorder) SetPlugin(name string) {
	if t, ok := rw.ResponseWriter.(plugin.PluginTracker); ok {
		t.SetPlugin(name)
	}
}

// GetPlugin implements plugin.PluginTracker.
func (rw *recorder) GetPlugin() string {
	if t, ok := rw.ResponseWriter.(plugin.PluginTracker); ok {
		return t.GetPlugin()
	}
	return ""
}

// outcome is the kind a query is counted as, the way CoreDNS's metrics plugin decides
// the rcode: what the chain wrote, else the code it returned when that is a code the
// server writes for it (plugin.ClientWrite false: SERVFAIL, REFUSED, FORMERR, NOTIMP).
// A query that got neither (erratic or acl dropped it) is counted as dropped, not as
// the NOERROR its returned 0 would suggest.
func outcome(wrote bool, written, returned int) int {
	rc := written
	if !wrote {
		if plugin.ClientWrite(returned) {
			return kindDropped
		}
		rc = returned
	}
	if rc < 0 || rc >= maxRcodeIndex {
		return kindOther
	}
	return rc
}
