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
// the healer got to it. It also counts the datagrams the socket dropped for want of room
// (SO_RXQ_OVFL): replies the healer lost itself, whose probes must not count as timeouts.

// oobSize is the ancillary data a read needs room for: a timestamp and a drop count.
var oobSize = unix.CmsgSpace(int(unsafe.Sizeof(unix.Timespec{}))) + unix.CmsgSpace(4)

// msgTrunc is set on a datagram longer than the buffer it was read into.
const msgTrunc = syscall.MSG_TRUNC

// ancillary reads a datagram's ancillary data: its arrival time, mapped onto the monotonic
// clock through now (read right after the datagram; the kernel's stamp is wall-clock time,
// so only the short wait between arrival and now is measured on that clock), now without
// a stamp; and the socket's count of dropped datagrams (ok false without one).
func ancillary(oob []byte, now time.Time) (arrived time.Time, drops uint32, ok bool) {
	arrived = now
	for len(oob) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		n := int(h.Len)
		if n < unix.SizeofCmsghdr || n > len(oob) {
			break
		}
		switch {
		case h.Level == unix.SOL_SOCKET && h.Type == unix.SCM_TIMESTAMPNS && n >= unix.CmsgLen(int(unsafe.Sizeof(unix.Timespec{}))):
			ts := (*unix.Timespec)(unsafe.Pointer(&oob[unix.CmsgLen(0)]))
			if waited := now.UnixNano() - ts.Nano(); waited >= 0 && waited <= int64(time.Second) {
				arrived = now.Add(-time.Duration(waited)) // else the wall clock stepped: the read time
			}
		case h.Level == unix.SOL_SOCKET && h.Type == unix.SO_RXQ_OVFL && n >= unix.CmsgLen(4):
			drops, ok = *(*uint32)(unsafe.Pointer(&oob[unix.CmsgLen(0)])), true
		}
		oob = oob[min(unix.CmsgSpace(n-unix.CmsgLen(0)), len(oob)):]
	}
	return arrived, drops, ok
}
