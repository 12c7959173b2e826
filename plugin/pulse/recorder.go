package pulse

import (
	"sync"

	"github.com/coredns/coredns/plugin"

	"github.com/miekg/dns"
)

// recorder wraps the client's ResponseWriter to learn the rcode that was written. It is
// pooled: the chain takes it as an interface, so it always escapes to the heap, and a
// fresh one per query would be the hot path's only allocation.
type recorder struct {
	dns.ResponseWriter
	start int64 // ticks() when the query entered pulse
	rcode int
	wrote bool
}

var recorders = sync.Pool{New: func() any { return new(recorder) }}

func getRecorder(w dns.ResponseWriter) *recorder {
	rw := recorders.Get().(*recorder)
	rw.ResponseWriter = w
	return rw
}

func putRecorder(rw *recorder) {
	*rw = recorder{}
	recorders.Put(rw)
}

// WriteMsg implements dns.ResponseWriter.
func (rw *recorder) WriteMsg(m *dns.Msg) error {
	if !rw.wrote {
		rw.wrote = true
		rw.rcode = m.Rcode
	}
	return rw.ResponseWriter.WriteMsg(m)
}

// Write implements dns.ResponseWriter; the rcode is the low four bits of byte 3.
func (rw *recorder) Write(b []byte) (int, error) {
	if !rw.wrote && len(b) >= 4 {
		rw.wrote = true
		rw.rcode = int(b[3] & 0x0f)
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
