//go:build integration

package healer_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/dnspulse/dnspulse/heartbeat"
)

// The scale benchmark (make bench-scale, hack/bench-scale.sh): the real healer in static
// mode, its default flags but --dry-run, against N simulated replicas on loopback
// addresses 127.77.x.y, each a light DNS responder (one A record) and a pulse listener
// (GET /pulse, and GET /pulse?watch=1 streaming a line every 50 ms tick, pulse's default), comparing the
// poll design (--pulse-stream=false) with the stream design in one run, interleaved round
// by round. Per run: start-up until every replica is healthy; a steady window measuring
// the healer's CPU (utime+stime from /proc) and memory, the probes answered, the heartbeat
// bytes and polls served, and the audit lines a healthy fleet wrote (none wanted); then
// hangs injected into one replica at a time (DNS unanswered, the stream silent, GET /pulse
// unanswered: a stopped process), each timed from the injection to its degraded line.
// Skipped unless BENCH_SCALE=1; BENCH_OUT names the markdown fragment it appends to.

// scaleDesigns are the variants compared: the healer's flags and environment for each.
var scaleDesigns = map[string]struct {
	args, env []string
	base      bool // the healer built at BASE_REF (BENCH_SCALE_BASE_BIN), to compare two commits
}{
	"stream":      {},
	"stream@base": {base: true},
	"poll":        {args: []string{"--pulse-stream=false"}},
	// What Go picks by itself (>= 1.25) under a CPU limit of one core or less.
	"stream, GOMAXPROCS=1": {env: []string{"GOMAXPROCS=1"}},
	"poll, GOMAXPROCS=1":   {args: []string{"--pulse-stream=false"}, env: []string{"GOMAXPROCS=1"}},
	// Sparser probes, to show what they cost in detection (not a default).
	"stream, probes every 40ms": {args: []string{"--probe-interval=40ms"}},
}

func TestBenchScale(t *testing.T) {
	if os.Getenv("BENCH_SCALE") != "1" {
		t.Skip("BENCH_SCALE=1 runs the scale benchmark (make bench-scale)")
	}
	sizes := envInts("BENCH_SCALE_SIZES", []int{100, 1000})
	designs := strings.Split(envString("BENCH_SCALE_DESIGNS", "stream,poll"), ";")
	rounds := envInt("BENCH_SCALE_ROUNDS", 2)
	o := scaleOpts{
		window:     envDuration("BENCH_SCALE_WINDOW", 20*time.Second),
		injections: envInt("BENCH_SCALE_INJECTIONS", 8),
		profileDir: os.Getenv("BENCH_SCALE_PROFILE"),
	}
	for _, d := range designs {
		sd, ok := scaleDesigns[d]
		if !ok {
			t.Fatalf("BENCH_SCALE_DESIGNS: unknown design %q", d)
		}
		if sd.base && os.Getenv("BENCH_SCALE_BASE_BIN") == "" {
			t.Fatalf("BENCH_SCALE_DESIGNS: design %q needs BENCH_SCALE_BASE_BIN (make bench-scale BASE_REF=ref builds it)", d)
		}
	}
	var rows []string
	for _, n := range sizes {
		f := newFleet(t, n, 50*time.Millisecond) // pulse's default tick
		runs := map[string][]scaleRun{}
		for round := range rounds {
			order := slices.Clone(designs)
			if round%2 == 1 {
				slices.Reverse(order) // A/B, then B/A: the machine's drift falls on both
			}
			for _, d := range order {
				r := runScale(t, f, d, o, round)
				t.Logf("%d replicas, %s, round %d: %s", n, d, round+1, r)
				runs[d] = append(runs[d], r)
			}
		}
		for _, d := range designs {
			rows = append(rows, summarize(n, d, runs[d], runs[designs[0]]))
		}
	}
	report(t, "\n| replicas | design | rounds | healer CPU (cores), median | vs "+designs[0]+" | RSS MiB (peak) | probes/s answered | heartbeat KiB/s | /pulse polls/s | start-up to all healthy | audit lines in the steady window | hang detected: median / worst ms (n) | not detected in 10 s | false degraded |\n"+
		"|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"+strings.Join(rows, "\n"))
}

type scaleOpts struct {
	window     time.Duration
	injections int
	profileDir string
}

// scaleRun is what one run of the healer measured.
type scaleRun struct {
	cores, rss, hwm        float64       // cores; MiB
	simCores               float64       // the simulated fleet's own CPU (this process), for the machine's load
	probes, hbBytes, polls float64       // per second
	startup                time.Duration // -1: not every replica healthy in time
	healthyAtStart         int
	windowLines            int
	detections             []time.Duration
	missed, falseDegraded  int
}

func (r scaleRun) String() string {
	return fmt.Sprintf("cpu %.3f cores (fleet %.2f), rss %.0f MiB (peak %.0f), probes %.0f/s, heartbeat %.0f KiB/s, polls %.0f/s, start-up %s (%d healthy), %d audit lines in the window, detections %v, missed %d, false degraded %d",
		r.cores, r.simCores, r.rss, r.hwm, r.probes, r.hbBytes/1024, r.polls, r.startup, r.healthyAtStart, r.windowLines, r.detections, r.missed, r.falseDegraded)
}

func summarize(n int, design string, runs, base []scaleRun) string {
	med := func(rs []scaleRun, v func(scaleRun) float64) float64 {
		xs := make([]float64, len(rs))
		for i, r := range rs {
			xs[i] = v(r)
		}
		slices.Sort(xs)
		return xs[len(xs)/2]
	}
	cores := med(runs, func(r scaleRun) float64 { return r.cores })
	var all []string
	var det []time.Duration
	lines, missed, falses, peak := 0, 0, 0, 0.0
	var startups []string
	for _, r := range runs {
		all = append(all, fmt.Sprintf("%.3f", r.cores))
		det = append(det, r.detections...)
		lines += r.windowLines
		missed += r.missed
		falses += r.falseDegraded
		peak = max(peak, r.hwm)
		if r.startup < 0 {
			startups = append(startups, fmt.Sprintf("not in %s (%d of %d healthy)", startupWithin(n), r.healthyAtStart, n))
		} else {
			startups = append(startups, fmt.Sprintf("%.1f s", r.startup.Seconds()))
		}
	}
	detection := "none detected"
	if len(det) > 0 {
		slices.Sort(det)
		detection = fmt.Sprintf("%.0f / %.0f (%d)", ms(det[len(det)/2]), ms(det[len(det)-1]), len(det))
	}
	ratio := "1"
	if b := med(base, func(r scaleRun) float64 { return r.cores }); b > 0 && len(base) > 0 {
		ratio = fmt.Sprintf("%.2f×", cores/b)
	}
	return fmt.Sprintf("| %d | %s | %d | **%.3f** (%s) | %s | %.0f (%.0f) | %.0f | %.0f | %.0f | %s | %d | %s | %d | %d |",
		n, design, len(runs), cores, strings.Join(all, ", "), ratio,
		med(runs, func(r scaleRun) float64 { return r.rss }), peak,
		med(runs, func(r scaleRun) float64 { return r.probes }),
		med(runs, func(r scaleRun) float64 { return r.hbBytes / 1024 }),
		med(runs, func(r scaleRun) float64 { return r.polls }),
		strings.Join(startups, ", "), lines, detection, missed, falses)
}

func startupWithin(n int) time.Duration { return 20*time.Second + time.Duration(n)*30*time.Millisecond }

// runScale runs the healer once against the fleet with a design's flags.
func runScale(t *testing.T, f *fleet, design string, o scaleOpts, round int) scaleRun {
	t.Helper()
	f.resumeAll()
	dir := t.TempDir()
	auditPath := filepath.Join(dir, "audit.log")
	args := []string{"--check", "probe.test/A", "--dry-run", "--audit-log", auditPath, "--metrics-addr", "127.0.0.1:0"}
	profile := o.profileDir != "" && round == 0
	pprofAddr := ""
	if profile {
		pprofAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t, "127.0.0.1")))
		args = append(args, "--pprof-addr", pprofAddr)
	}
	args = append(args, scaleDesigns[design].args...)
	for _, r := range f.replicas {
		args = append(args, "--target", fmt.Sprintf("%s=%s@%s", r.name, netip.AddrPortFrom(r.ip, uint16(f.dnsPort)), netip.AddrPortFrom(r.ip, uint16(f.httpPort))))
	}
	bin := healerBin
	if scaleDesigns[design].base {
		bin = os.Getenv("BENCH_SCALE_BASE_BIN")
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), scaleDesigns[design].env...)
	logf, err := os.Create(filepath.Join(dir, "healer.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}
	t.Cleanup(stop)
	defer stop()
	pid := cmd.Process.Pid
	audit := &auditLog{path: auditPath}
	var run scaleRun

	// Start-up: every replica healthy.
	began := time.Now()
	within := startupWithin(f.n)
	states := map[string]string{}
	healthy := func() int {
		n := 0
		for _, s := range states {
			if s == "healthy" {
				n++
			}
		}
		return n
	}
	seen := 0
	for {
		audit.read(t)
		for _, l := range audit.lines[seen:] {
			if l.Event == "state" {
				states[l.Replica] = string(l.To)
				if l.To == "degraded" || l.To == "global" {
					run.falseDegraded++
				}
			}
		}
		seen = len(audit.lines)
		if run.healthyAtStart = healthy(); run.healthyAtStart == f.n {
			run.startup = time.Since(began)
			break
		}
		if time.Since(began) > within {
			run.startup = -1
			break
		}
		sleepFor(20 * time.Millisecond)
	}

	// The steady window.
	sleepFor(3 * time.Second)
	mark := audit.mark(t)
	cpu0, sim0, q0, b0, p0, t0 := procCPU(t, pid), procCPU(t, os.Getpid()), f.answered.Load(), f.hbBytes.Load(), f.polls.Load(), time.Now()
	var prof chan []byte
	if profile {
		prof = make(chan []byte, 1)
		go func() {
			prof <- fetch(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", pprofAddr, int(o.window.Seconds())), o.window+10*time.Second)
		}()
	}
	sleepFor(o.window)
	cpu1, sim1, q1, b1, p1, t1 := procCPU(t, pid), procCPU(t, os.Getpid()), f.answered.Load(), f.hbBytes.Load(), f.polls.Load(), time.Now()
	el := t1.Sub(t0).Seconds()
	run.cores = (cpu1 - cpu0).Seconds() / el
	run.simCores = (sim1 - sim0).Seconds() / el // this process: the fleet and the test
	run.probes, run.hbBytes, run.polls = float64(q1-q0)/el, float64(b1-b0)/el, float64(p1-p0)/el
	rss, hwm := procMem(t, pid)
	run.rss, run.hwm = float64(rss)/1024, float64(hwm)/1024
	run.windowLines = len(audit.from(t, mark))
	why := map[string]int{}
	for _, l := range audit.from(t, mark) {
		k := string(l.Event) + " " + string(l.To)
		if len(l.Reasons) > 0 {
			k += ": " + strings.TrimRight(strings.Map(func(r rune) rune {
				if r >= '0' && r <= '9' {
					return 'N'
				}
				return r
			}, l.Reasons[0]), " ")
		}
		why[k]++
	}
	for k, n := range why {
		t.Logf("audit lines in the steady window: %d x %s", n, k)
	}
	if prof != nil {
		if b := <-prof; len(b) > 0 {
			p := filepath.Join(o.profileDir, fmt.Sprintf("healer-%d-%s.pprof", f.n, strings.ReplaceAll(design, " ", "")))
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Errorf("profile: %v", err)
			}
			t.Logf("CPU profile of the healer: %s", p)
		}
	}

	// Hangs, one replica at a time.
	for i := range o.injections {
		victim := f.replicas[(i*f.n/max(o.injections, 1)+round*7+3)%f.n]
		m := audit.mark(t)
		injected := time.Now()
		victim.hang()
		deg, ok := waitLine(t, audit, m, 10*time.Second, func(l line) bool {
			return l.Event == "state" && l.Replica == victim.name && l.To == "degraded"
		})
		victim.resume()
		if ok {
			run.detections = append(run.detections, deg.Time.Sub(injected))
		} else {
			run.missed++
			if run.missed >= 2 && len(run.detections) == 0 {
				break // this design does not detect at this scale: no need to wait more
			}
		}
		waitLine(t, audit, m, 10*time.Second, func(l line) bool {
			return l.Event == "state" && l.Replica == victim.name && l.To == "healthy" && !l.Time.Before(injected)
		})
		sleepFor(time.Second)
		for _, l := range audit.from(t, m) {
			if l.Event == "state" && (l.To == "degraded" || l.To == "global") && l.Replica != victim.name {
				run.falseDegraded++
				t.Logf("false verdict: %s", l.Raw)
			}
		}
	}
	return run
}

// waitLine is auditLog.waitFrom without failing the test: ok false at the deadline.
func waitLine(t *testing.T, a *auditLog, from int, within time.Duration, match func(line) bool) (line, bool) {
	deadline := time.Now().Add(within)
	for {
		a.read(t)
		for i := from; i < len(a.lines); i++ {
			if match(a.lines[i]) {
				return a.lines[i], true
			}
		}
		if time.Now().After(deadline) {
			return line{}, false
		}
		sleepFor(5 * time.Millisecond)
	}
}

func sleepFor(d time.Duration) {
	t := time.NewTimer(d)
	<-t.C
}

func fetch(url string, timeout time.Duration) []byte {
	c := &http.Client{Timeout: timeout}
	resp, err := c.Get(url)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return b
}

// fleet is N simulated replicas, each at its own loopback address: DNS on dnsPort, its
// pulse listener on httpPort.
type fleet struct {
	n                 int
	tick              time.Duration
	start             time.Time
	dnsPort, httpPort int
	replicas          []*simReplica
	answered          atomic.Int64
	hbBytes           atomic.Int64
	polls             atomic.Int64
	// dnsFD, when not -1, is the one socket answering every replica's DNS (dnsLoop).
	dnsFD  int
	closed atomic.Bool
}

type simReplica struct {
	name  string
	ip    netip.Addr
	conn  *net.UDPConn
	srv   *http.Server
	phase time.Duration // its ticker's phase within the tick

	hung   atomic.Bool
	mu     sync.Mutex
	wakeup chan struct{} // closed when a hang ends
}

func newFleet(t *testing.T, n int, tick time.Duration) *fleet {
	t.Helper()
	f := &fleet{n: n, tick: tick, start: time.Now(), dnsFD: -1}
	for attempt := 0; ; attempt++ {
		f.dnsPort, f.httpPort = 20000+rand.IntN(10000), 30000+rand.IntN(2000)
		err := f.listen(t)
		if err == nil {
			break
		}
		f.close()
		f.closed.Store(false)
		if attempt == 5 {
			t.Fatalf("simulated fleet: %v", err)
		}
	}
	t.Cleanup(f.close)
	return f
}

func (f *fleet) listen(t *testing.T) error {
	f.replicas = f.replicas[:0]
	shared := f.listenDNS() == nil
	for i := range f.n {
		ip := netip.AddrFrom4([4]byte{127, 77, byte(i / 250), byte(i%250 + 1)})
		r := &simReplica{name: fmt.Sprintf("r%04d", i), ip: ip, phase: time.Duration(rand.Int64N(int64(f.tick))), wakeup: make(chan struct{})}
		close(r.wakeup)
		f.replicas = append(f.replicas, r)
		if !shared {
			conn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, uint16(f.dnsPort))))
			if err != nil {
				return err
			}
			r.conn = conn
			go f.serveDNS(r)
		}
		ln, err := net.Listen("tcp", netip.AddrPortFrom(ip, uint16(f.httpPort)).String())
		if err != nil {
			return err
		}
		r.srv = &http.Server{Handler: f.handler(r), ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = r.srv.Serve(ln) }()
	}
	if shared {
		go f.dnsLoop()
	}
	t.Logf("simulated fleet: %d replicas at 127.77.x.y, DNS port %d (one socket for all: %v), pulse port %d", f.n, f.dnsPort, shared, f.httpPort)
	return nil
}

func (f *fleet) close() {
	f.closed.Store(true)
	if f.dnsFD >= 0 {
		_ = unix.Close(f.dnsFD)
		f.dnsFD = -1
	}
	for _, r := range f.replicas {
		r.resume()
		if r.conn != nil {
			_ = r.conn.Close()
		}
		if r.srv != nil {
			_ = r.srv.Close()
		}
	}
}

// listenDNS opens the one socket that answers for every replica: bound to the DNS port on
// any address but only on the loopback device (SO_BINDTODEVICE, root), told each query's
// destination address (IP_PKTINFO) and answering from it. It is polled (dnsLoop) rather
// than woken per query: on loopback the healer's own send system call delivers each probe,
// and waking a reader there would charge the healer for the simulator's wake-ups. Without
// root, each replica gets a socket of its own (serveDNS).
func (f *fleet) listenDNS() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	for _, err := range []error{
		unix.SetsockoptString(fd, unix.SOL_SOCKET, unix.SO_BINDTODEVICE, "lo"),
		unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_PKTINFO, 1),
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20),
		unix.Bind(fd, &unix.SockaddrInet4{Port: f.dnsPort}),
	} {
		if err != nil {
			_ = unix.Close(fd)
			return err
		}
	}
	f.dnsFD = fd
	return nil
}

// dnsLoop answers the queries waiting in the shared socket every millisecond, in batches.
func (f *fleet) dnsLoop() {
	const batch = 64
	fd := f.dnsFD
	var (
		in, out       [batch]unix.Mmsghdr
		inIov, outIov [batch]unix.Iovec
		from          [batch]unix.RawSockaddrInet4
		bufs          [batch][512]byte
		reply         [batch][512]byte
		inCtl         [batch][64]byte
		outCtl        [batch][64]byte
	)
	pktinfoSpace := unix.CmsgSpace(unix.SizeofInet4Pktinfo)
	for !f.closed.Load() {
		for i := range batch {
			inIov[i] = unix.Iovec{Base: &bufs[i][0]}
			inIov[i].SetLen(len(bufs[i]))
			in[i] = unix.Mmsghdr{}
			in[i].Hdr.Iov = &inIov[i]
			in[i].Hdr.SetIovlen(1)
			in[i].Hdr.Name = (*byte)(unsafe.Pointer(&from[i]))
			in[i].Hdr.Namelen = unix.SizeofSockaddrInet4
			in[i].Hdr.Control = &inCtl[i][0]
			in[i].Hdr.SetControllen(len(inCtl[i]))
		}
		n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&in[0])), batch, unix.MSG_DONTWAIT, 0, 0)
		if errno != 0 || n == 0 {
			if errno == unix.EBADF {
				return
			}
			sleepFor(time.Millisecond)
			continue
		}
		m := 0
		for i := range int(n) {
			dst, ok := pktinfoDst(inCtl[i][:in[i].Hdr.Controllen])
			a := dst.As4()
			idx := int(a[2])*250 + int(a[3]) - 1
			if !ok || a[0] != 127 || a[1] != 77 || idx < 0 || idx >= len(f.replicas) || f.replicas[idx].hung.Load() {
				continue
			}
			ans := dnsAnswer(bufs[i][:in[i].Len], reply[m][:0])
			if ans == nil {
				continue
			}
			outIov[m] = unix.Iovec{Base: &reply[m][0]}
			outIov[m].SetLen(len(ans))
			out[m] = unix.Mmsghdr{}
			out[m].Hdr.Iov = &outIov[m]
			out[m].Hdr.SetIovlen(1)
			out[m].Hdr.Name = (*byte)(unsafe.Pointer(&from[i]))
			out[m].Hdr.Namelen = unix.SizeofSockaddrInet4
			h := (*unix.Cmsghdr)(unsafe.Pointer(&outCtl[m][0]))
			h.Level, h.Type = unix.IPPROTO_IP, unix.IP_PKTINFO
			h.SetLen(unix.CmsgLen(unix.SizeofInet4Pktinfo))
			*(*unix.Inet4Pktinfo)(unsafe.Pointer(&outCtl[m][unix.CmsgLen(0)])) = unix.Inet4Pktinfo{Spec_dst: a}
			out[m].Hdr.Control = &outCtl[m][0]
			out[m].Hdr.SetControllen(pktinfoSpace)
			m++
		}
		if m > 0 {
			sent, _, _ := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&out[0])), uintptr(m), 0, 0, 0)
			f.answered.Add(int64(int(sent)))
		}
		if int(n) < batch {
			sleepFor(time.Millisecond)
		}
	}
}

// pktinfoDst is the destination address in a datagram's IP_PKTINFO.
func pktinfoDst(ctl []byte) (netip.Addr, bool) {
	for len(ctl) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&ctl[0]))
		l := int(h.Len)
		if l < unix.SizeofCmsghdr || l > len(ctl) {
			return netip.Addr{}, false
		}
		if h.Level == unix.IPPROTO_IP && h.Type == unix.IP_PKTINFO {
			pi := (*unix.Inet4Pktinfo)(unsafe.Pointer(&ctl[unix.CmsgLen(0)]))
			return netip.AddrFrom4(pi.Addr), true
		}
		ctl = ctl[min(unix.CmsgSpace(l-unix.CmsgLen(0)), len(ctl)):]
	}
	return netip.Addr{}, false
}

func (f *fleet) resumeAll() {
	for _, r := range f.replicas {
		r.resume()
	}
}

// hang stops the replica as SIGSTOP would: no DNS answer, no line, no HTTP answer.
func (r *simReplica) hang() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.hung.Load() {
		r.wakeup = make(chan struct{})
		r.hung.Store(true)
	}
}

func (r *simReplica) resume() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.hung.Load() {
		r.hung.Store(false)
		close(r.wakeup)
	}
}

// waitAwake blocks while the replica is hung.
func (r *simReplica) waitAwake(ctx context.Context) bool {
	r.mu.Lock()
	w := r.wakeup
	r.mu.Unlock()
	select {
	case <-w:
		return true
	case <-ctx.Done():
		return false
	}
}

// serveDNS answers every query with one A record (TTL 30), unless hung.
func (f *fleet) serveDNS(r *simReplica) {
	buf := make([]byte, 1500)
	out := make([]byte, 0, 1500)
	for {
		n, from, err := r.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		if r.hung.Load() {
			continue
		}
		if out = dnsAnswer(buf[:n], out[:0]); out == nil {
			continue
		}
		if _, err := r.conn.WriteToUDPAddrPort(out, from); err == nil {
			f.answered.Add(1)
		}
	}
}

// dnsAnswer builds the reply to query q in out: the question and one A record, no EDNS.
func dnsAnswer(q, out []byte) []byte {
	if len(q) < 12 {
		return nil
	}
	off := 12
	for off < len(q) && q[off] != 0 {
		off += 1 + int(q[off])
	}
	off += 5 // the root label, type, class
	if off > len(q) {
		return nil
	}
	out = append(out, q[0], q[1], 0x80|q[2]&0x79, 0x80, 0, 1, 0, 1, 0, 0, 0, 0)
	out = append(out, q[12:off]...)
	return append(out, 0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 10, 0, 0, 1)
}

// handler is a replica's pulse listener: GET /pulse, and the stream.
func (f *fleet) handler(r *simReplica) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path != heartbeat.Path {
			http.NotFound(w, req)
			return
		}
		if !r.waitAwake(req.Context()) {
			return
		}
		if req.URL.Query().Get(heartbeat.WatchParam) == "1" {
			f.stream(r, w, req)
			return
		}
		f.polls.Add(1)
		w.Header().Set("Content-Type", "application/json")
		n, _ := w.Write(f.doc(r, time.Now(), nil))
		f.hbBytes.Add(int64(n))
	})
}

// stream writes the current heartbeat, then one per tick at the replica's phase; none while
// the replica is hung (the connection stays open).
func (f *fleet) stream(r *simReplica, w http.ResponseWriter, req *http.Request) {
	w.Header().Set("Content-Type", heartbeat.StreamContentType)
	fl := w.(http.Flusher)
	var buf []byte
	write := func() bool {
		buf = append(f.doc(r, time.Now(), buf[:0]), '\n')
		n, err := w.Write(buf)
		fl.Flush()
		f.hbBytes.Add(int64(n))
		return err == nil
	}
	if !write() {
		return
	}
	since := time.Since(f.start) - r.phase
	timer := time.NewTimer(f.tick - since%f.tick)
	defer timer.Stop()
	for {
		select {
		case <-req.Context().Done():
			return
		case <-timer.C:
		}
		since = time.Since(f.start) - r.phase
		timer.Reset(f.tick - since%f.tick)
		if r.hung.Load() {
			continue
		}
		if !write() {
			return
		}
	}
}

// doc is the replica's heartbeat at now (seq counts its ticks), as pulse writes it.
func (f *fleet) doc(r *simReplica, now time.Time, b []byte) []byte {
	seq := uint64((now.Sub(f.start) - r.phase) / f.tick)
	b = append(b, `{"version":1,"replica":"`...)
	b = append(b, r.name...)
	b = append(b, `","seq":`...)
	b = strconv.AppendUint(b, seq, 10)
	b = append(b, `,"time":"`...)
	b = now.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","started":"`...)
	b = f.start.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","tick":"`...)
	b = append(b, f.tick.String()...)
	b = append(b, `","windows":{`...)
	for i, w := range []struct {
		key string
		n   int
	}{{"200ms", 10}, {"1s", 50}, {"10s", 500}, {"60s", 3000}} {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `"`+w.key+`":{"queries":`...)
		b = strconv.AppendInt(b, int64(w.n), 10)
		b = append(b, `,"rcodes":{"NOERROR":`...)
		b = strconv.AppendInt(b, int64(w.n), 10)
		b = append(b, `},"dropped":0,"latencyMicros":{"p50":110,"p90":240,"p99":510,"max":900},"rcodeEntropy":0,"nxdomainRatio":0,"servfailRatio":0,"servfailSourceEntropy":0}`...)
	}
	b = append(b, `},"selfProbe":{"ok":true,"rcode":"NOERROR","latencyMicros":120,"time":"`...)
	b = now.UTC().AppendFormat(b, time.RFC3339Nano)
	return append(b, `"},"verdict":"healthy","reasons":[],"inflight":{"count":0,"oldestMicros":0}}`...)
}

func envInts(name string, def []int) []int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	var out []int
	for _, s := range strings.Split(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return def
		}
		out = append(out, n)
	}
	return out
}

func envString(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
