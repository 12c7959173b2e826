//go:build unix && !linux

package probe

import (
	"errors"
	"net"
	"os"
	"time"
)

// Elsewhere than Linux (a developer's machine) the probes' sockets are net.UDPConns, read
// one datagram at a time without waiting (a read deadline in the past).
type udpConn struct{ c *net.UDPConn }

func openConn(v6 bool) (batchConn, error) {
	network, laddr := "udp4", &net.UDPAddr{IP: net.IPv4zero}
	if v6 {
		network, laddr = "udp6", &net.UDPAddr{IP: net.IPv6unspecified}
	}
	c, err := net.ListenUDP(network, laddr)
	if err != nil {
		return nil, err
	}
	_ = c.SetReadBuffer(rcvBuf)
	return &udpConn{c: c}, nil
}

func (u *udpConn) close() error { return u.c.Close() }

func (u *udpConn) read(ms []inMsg) (int, error) {
	_ = u.c.SetReadDeadline(time.Now())
	for i := range ms {
		n, _, flags, from, err := u.c.ReadMsgUDPAddrPort(ms[i].buf, nil)
		if err != nil {
			if i == 0 && !errors.Is(err, os.ErrDeadlineExceeded) {
				return 0, err
			}
			return i, nil
		}
		ms[i].n, ms[i].nn, ms[i].flags, ms[i].from = n, 0, flags, from
	}
	return len(ms), nil
}

func (u *udpConn) write(ms []outMsg) (int, error) {
	for i := range ms {
		if _, err := u.c.WriteToUDPAddrPort(ms[i].buf, ms[i].to); err != nil {
			if i == 0 {
				return 0, err
			}
			return i, nil
		}
	}
	return len(ms), nil
}
