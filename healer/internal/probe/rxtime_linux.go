package probe

import (
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The kernel stamps each datagram as it arrives (SO_TIMESTAMPNS): a probe's latency is
// then the replica's and the network's, not how long the reply waited for the healer to
// read it, and a reply that arrived before its deadline counts as in time however late
// the healer got to it.

// oobSize is the ancillary data a read needs room for: one timestamp.
var oobSize = unix.CmsgSpace(int(unsafe.Sizeof(unix.Timespec{})))

// msgTrunc is set on a datagram longer than the buffer it was read into.
const msgTrunc = syscall.MSG_TRUNC

// rxTime is the arrival time in the ancillary data of a read, mapped onto the monotonic
// clock through now (read right after the datagram): the kernel's stamp is wall-clock
// time, so only the short wait between arrival and now is measured on that clock.
func rxTime(oob []byte, now time.Time) (time.Time, bool) {
	for len(oob) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		n := int(h.Len)
		if n < unix.SizeofCmsghdr || n > len(oob) {
			return now, false
		}
		if h.Level == unix.SOL_SOCKET && h.Type == unix.SCM_TIMESTAMPNS && n >= unix.CmsgLen(int(unsafe.Sizeof(unix.Timespec{}))) {
			ts := (*unix.Timespec)(unsafe.Pointer(&oob[unix.CmsgLen(0)]))
			waited := now.UnixNano() - (int64(ts.Sec)*1e9 + int64(ts.Nsec))
			if waited < 0 || waited > int64(time.Second) {
				return now, false // the wall clock stepped: trust the read time
			}
			return now.Add(-time.Duration(waited)), true
		}
		oob = oob[min(unix.CmsgSpace(n-unix.CmsgLen(0)), len(oob)):]
	}
	return now, false
}
