package probe

import (
	"errors"
	"net/netip"
	"syscall"
)

// Sockets. Every probe of every replica goes out through a few unconnected UDP sockets,
// read and written in batches (recvmmsg, sendmmsg): one system call moves dozens of
// probes, where a socket per replica, each with its own reader, cost a wake-up and two
// system calls per probe. A reply is matched by its source address (the replica), then
// its ID and question, as a connected socket would have filtered it.
const (
	// targetsPerSocket: a socket's receive buffer holds the replies of that many replicas
	// through a stall of the healer of tens of milliseconds (at 50 a second each, 256
	// replicas fill 400 KiB in about 30 ms); a reply dropped anyway makes its probe
	// inconclusive, not a timeout (sock.lostBefore). Fewer sockets, bigger batches.
	targetsPerSocket = 256
	// maxSockets bounds the sockets per address family, and the system calls per pass.
	maxSockets = 32
	// batch is how many datagrams one system call reads or writes at most.
	batch = 64
	// rcvBuf is the receive buffer asked for (the kernel caps it at net.core.rmem_max).
	rcvBuf = 1 << 20
	// maxReply is the largest reply read over UDP; a longer one is retried over TCP, as a
	// truncated one is (the probes advertise 1232 bytes).
	maxReply = 4096
)

// A batchConn is one UDP socket that reads and writes datagrams in batches, never waiting
// to read (conn_linux.go: recvmmsg and sendmmsg).
type batchConn interface {
	// read fills ms with waiting datagrams; 0 and no error when none waits.
	read(ms []inMsg) (int, error)
	// write sends ms in order, returning how many it sent; the error is the first one's.
	write(ms []outMsg) (int, error)
	close() error
}

// inMsg is a datagram read: its buffers, then what the read filled in.
type inMsg struct {
	buf, oob     []byte
	n, nn, flags int
	from         netip.AddrPort
}

// outMsg is a datagram to send.
type outMsg struct {
	buf []byte
	to  netip.AddrPort
}

// sock is one UDP socket and the replicas probed through it.
type sock struct {
	bc     batchConn
	v6     bool
	byAddr map[netip.AddrPort]*target
	// drops is the socket's count of datagrams dropped for want of room, as last read;
	// lostBefore is when a read last found it grown (on the loop's clock): a probe sent
	// before then may have lost its reply in the healer's own socket, and its timeout
	// proves nothing.
	drops      uint32
	lostBefore int64
	// out is the batch being built by a pass: the datagrams and whose probes they are.
	out    []outMsg
	outRef []probeRef
}

// probeRef names one probe: a target's slot (by the probe's ID) and its sequence number.
type probeRef struct {
	t   *target
	seq uint32
	id  uint16
}

func openSock(v6 bool) (*sock, error) {
	bc, err := openConn(v6)
	if err != nil {
		return nil, err
	}
	return &sock{bc: bc, v6: v6, byAddr: map[netip.AddrPort]*target{}}, nil
}

func (s *sock) close() { _ = s.bc.close() }

// localCongestion says whether a send failed for a reason of the healer's own host (a full
// buffer): the probe says nothing about the replica.
func localCongestion(err error) bool {
	return errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EWOULDBLOCK) || errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM)
}
