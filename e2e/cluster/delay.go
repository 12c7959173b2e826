package cluster

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// delayer adds latency to one pod without sch_netem (which this machine's kernel lacks): iptables
// in the pod's netns sends every packet arriving on eth0 to an NFQUEUE, and this reader, bound to
// that queue inside the pod's netns, accepts each packet only after the delay. So each exchange
// with the pod takes that much longer, like `tc netem delay` on the host side of its veth.
type delayer struct {
	fd     int
	queue  uint16
	delay  atomic.Int64 // nanoseconds
	jitter atomic.Int64
	wmu    sync.Mutex // serialises writes; with closed, keeps a late verdict off a reused fd number
	closed atomic.Bool
	done   chan struct{}
}

const (
	nfnlSubsysQueue  = 3
	nfqnlMsgPacket   = 0
	nfqnlMsgVerdict  = 1
	nfqnlMsgConfig   = 2
	nfqaCfgCmd       = 1
	nfqaCfgParams    = 2
	nfqaPacketHdr    = 1
	nfqaVerdictHdr   = 2
	nfqnlCfgCmdBind  = 1
	nfqnlCopyMeta    = 1
	nfAccept         = 1
	netlinkHeaderLen = 16
)

// openDelayer binds NFQUEUE queue inside the network namespace at netnsPath.
func openDelayer(netnsPath string, queue uint16) (*delayer, error) {
	type result struct {
		fd  int
		err error
	}
	ch := make(chan result, 1)
	go func() {
		// Lock the thread for setns; if switching back fails the goroutine exits locked and Go
		// discards the thread, so no other goroutine ever runs in the pod's netns.
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			ch <- result{-1, err}
			return
		}
		defer unix.Close(orig)
		target, err := unix.Open(netnsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			ch <- result{-1, err}
			return
		}
		defer unix.Close(target)
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			ch <- result{-1, fmt.Errorf("setns %s: %w", netnsPath, err)}
			return
		}
		fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err == nil {
			runtime.UnlockOSThread()
		}
		ch <- result{fd, err}
	}()
	res := <-ch
	if res.err != nil {
		return nil, fmt.Errorf("netfilter netlink socket in %s: %w", netnsPath, res.err)
	}
	d := &delayer{fd: res.fd, queue: queue, done: make(chan struct{})}
	if err := unix.Bind(d.fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(d.fd)
		return nil, err
	}
	_ = unix.SetsockoptInt(d.fd, unix.SOL_NETLINK, unix.NETLINK_NO_ENOBUFS, 1)
	// close() on another thread does not wake a blocked recvfrom: poll the closed flag instead.
	_ = unix.SetsockoptTimeval(d.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 200000})
	bind := d.msg(nfqnlMsgConfig, unix.NLM_F_REQUEST|unix.NLM_F_ACK,
		attr(nfqaCfgCmd, []byte{nfqnlCfgCmdBind, 0, 0, unix.AF_INET}))
	params := make([]byte, 5)
	params[4] = nfqnlCopyMeta
	setParams := d.msg(nfqnlMsgConfig, unix.NLM_F_REQUEST|unix.NLM_F_ACK, attr(nfqaCfgParams, params))
	for _, m := range [][]byte{bind, setParams} {
		if err := d.request(m); err != nil {
			unix.Close(d.fd)
			return nil, fmt.Errorf("NFQUEUE %d config: %w", queue, err)
		}
	}
	go d.loop()
	return d, nil
}

func attr(typ uint16, payload []byte) []byte {
	l := 4 + len(payload)
	b := make([]byte, (l+3)&^3)
	binary.NativeEndian.PutUint16(b[0:], uint16(l))
	binary.NativeEndian.PutUint16(b[2:], typ)
	copy(b[4:], payload)
	return b
}

func (d *delayer) msg(typ uint16, flags uint16, attrs ...[]byte) []byte {
	b := make([]byte, netlinkHeaderLen+4)
	binary.NativeEndian.PutUint16(b[4:], nfnlSubsysQueue<<8|typ)
	binary.NativeEndian.PutUint16(b[6:], flags)
	b[16] = unix.AF_UNSPEC
	binary.BigEndian.PutUint16(b[18:], d.queue)
	for _, a := range attrs {
		b = append(b, a...)
	}
	binary.NativeEndian.PutUint32(b[0:], uint32(len(b)))
	return b
}

// request sends a config message and reads its ack (before the reader loop starts).
func (d *delayer) request(m []byte) error {
	if err := unix.Sendto(d.fd, m, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	buf := make([]byte, 4096)
	n, _, err := unix.Recvfrom(d.fd, buf, 0)
	if err != nil {
		return err
	}
	if n < netlinkHeaderLen+4 || binary.NativeEndian.Uint16(buf[4:]) != unix.NLMSG_ERROR {
		return errors.New("unexpected netlink reply")
	}
	if code := int32(binary.NativeEndian.Uint32(buf[16:])); code != 0 {
		return unix.Errno(-code)
	}
	return nil
}

func (d *delayer) loop() {
	defer close(d.done)
	buf := make([]byte, 1<<16)
	for {
		if d.closed.Load() {
			return
		}
		n, _, err := unix.Recvfrom(d.fd, buf, 0)
		if err != nil {
			if errors.Is(err, unix.EINTR) || errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.EAGAIN) {
				continue
			}
			return
		}
		for off := 0; off+netlinkHeaderLen <= n; {
			l := int(binary.NativeEndian.Uint32(buf[off:]))
			if l < netlinkHeaderLen || off+l > n {
				break
			}
			if binary.NativeEndian.Uint16(buf[off+4:]) == nfnlSubsysQueue<<8|nfqnlMsgPacket {
				if id, ok := packetID(buf[off+netlinkHeaderLen+4 : off+l]); ok {
					d.hold(id)
				}
			}
			off += (l + 3) &^ 3
		}
	}
}

func packetID(attrs []byte) (uint32, bool) {
	for len(attrs) >= 4 {
		l := int(binary.NativeEndian.Uint16(attrs))
		typ := binary.NativeEndian.Uint16(attrs[2:]) & 0x3fff
		if l < 4 || l > len(attrs) {
			return 0, false
		}
		if typ == nfqaPacketHdr && l >= 8 {
			return binary.BigEndian.Uint32(attrs[4:]), true
		}
		attrs = attrs[min((l+3)&^3, len(attrs)):]
	}
	return 0, false
}

func (d *delayer) hold(id uint32) {
	wait := time.Duration(d.delay.Load())
	if j := d.jitter.Load(); j > 0 {
		wait += time.Duration(rand.Int64N(2*j+1) - j)
	}
	verdict := make([]byte, 8)
	binary.BigEndian.PutUint32(verdict[0:], nfAccept)
	binary.BigEndian.PutUint32(verdict[4:], id)
	m := d.msg(nfqnlMsgVerdict, unix.NLM_F_REQUEST, attr(nfqaVerdictHdr, verdict))
	time.AfterFunc(max(wait, 0), func() {
		d.wmu.Lock()
		defer d.wmu.Unlock()
		if d.closed.Load() {
			return
		}
		_ = unix.Sendto(d.fd, m, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
	})
}

// close unbinds the queue (with --queue-bypass in the rule, packets then pass undelayed).
func (d *delayer) close() {
	d.wmu.Lock()
	d.closed.Store(true)
	d.wmu.Unlock()
	<-d.done
	unix.Close(d.fd)
}
