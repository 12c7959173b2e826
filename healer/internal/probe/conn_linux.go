package probe

import (
	"encoding/binary"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// On Linux the probes' sockets are plain descriptors kept out of Go's network poller: the
// loop reads them every pass anyway (MSG_DONTWAIT), so a reply need not wake the process,
// which at thousands of replies a second would cost more than reading them. recvmmsg and
// sendmmsg move a batch per system call; the kernel stamps each arrival (SO_TIMESTAMPNS)
// and says when the socket dropped datagrams (SO_RXQ_OVFL).
type rawConn struct {
	fd    int
	v6    bool
	hs    []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6 // large enough for either family
}

func openConn(v6 bool) (batchConn, error) {
	family := unix.AF_INET
	if v6 {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return nil, err
	}
	var sa unix.Sockaddr = &unix.SockaddrInet4{}
	if v6 {
		sa = &unix.SockaddrInet6{}
	}
	if err := unix.Bind(fd, sa); err != nil {
		_ = unix.Close(fd)
		return nil, err
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, rcvBuf) // best effort: capped by the kernel
	// Best effort: without stamps a reply arrives when read; without drop counts a reply
	// the socket dropped is a timeout.
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1)
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RXQ_OVFL, 1)
	return &rawConn{fd: fd, v6: v6, hs: make([]unix.Mmsghdr, batch), iovs: make([]unix.Iovec, batch), names: make([]unix.RawSockaddrInet6, batch)}, nil
}

func (c *rawConn) close() error { return unix.Close(c.fd) }

// read fills ms with the datagrams waiting, without waiting for one.
func (c *rawConn) read(ms []inMsg) (int, error) {
	n := min(len(ms), len(c.hs))
	for i := range n {
		h := &c.hs[i]
		*h = unix.Mmsghdr{}
		c.iovs[i].Base = unsafe.SliceData(ms[i].buf)
		c.iovs[i].SetLen(len(ms[i].buf))
		h.Hdr.Iov = &c.iovs[i]
		h.Hdr.SetIovlen(1)
		h.Hdr.Name = (*byte)(unsafe.Pointer(&c.names[i]))
		h.Hdr.Namelen = unix.SizeofSockaddrInet6
		if len(ms[i].oob) > 0 {
			h.Hdr.Control = unsafe.SliceData(ms[i].oob)
			h.Hdr.SetControllen(len(ms[i].oob))
		}
	}
	got, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(c.fd), uintptr(unsafe.Pointer(&c.hs[0])), uintptr(n), unix.MSG_DONTWAIT, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	for i := range int(got) {
		h := &c.hs[i]
		ms[i].n, ms[i].nn, ms[i].flags = int(h.Len), int(h.Hdr.Controllen), int(h.Hdr.Flags)
		ms[i].from = sockaddrAddr(&c.names[i])
	}
	return int(got), nil
}

// write sends ms, as many as the kernel takes in one call.
func (c *rawConn) write(ms []outMsg) (int, error) {
	n := min(len(ms), len(c.hs))
	for i := range n {
		h := &c.hs[i]
		*h = unix.Mmsghdr{}
		c.iovs[i].Base = unsafe.SliceData(ms[i].buf)
		c.iovs[i].SetLen(len(ms[i].buf))
		h.Hdr.Iov = &c.iovs[i]
		h.Hdr.SetIovlen(1)
		h.Hdr.Name = (*byte)(unsafe.Pointer(&c.names[i]))
		h.Hdr.Namelen = putSockaddr(&c.names[i], ms[i].to, c.v6)
	}
	sent, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(c.fd), uintptr(unsafe.Pointer(&c.hs[0])), uintptr(n), 0, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(sent), nil
}

// sockaddrAddr reads a source address (IPv4-mapped IPv6 addresses unmapped).
func sockaddrAddr(sa *unix.RawSockaddrInet6) netip.AddrPort {
	port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
	if sa.Family == unix.AF_INET {
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), port)
	}
	return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), port)
}

// putSockaddr writes a destination address, an IPv4 one as IPv4-mapped on an IPv6 socket.
func putSockaddr(sa *unix.RawSockaddrInet6, ap netip.AddrPort, v6 bool) uint32 {
	if !v6 {
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		*sa4 = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: ap.Addr().As4()}
		binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa4.Port))[:], ap.Port())
		return unix.SizeofSockaddrInet4
	}
	*sa = unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: ap.Addr().As16()}
	binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:], ap.Port())
	return unix.SizeofSockaddrInet6
}
