//go:build integration

// The tests run the real healer binary in static mode against real custom
// CoreDNS processes on loopback addresses, one test per fault-matrix row that needs no
// Kubernetes, and assert the verdicts and (dry-run) actions from the audit log.
package healer_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dnspulse/dnspulse/healer/audit"
	"github.com/dnspulse/dnspulse/heartbeat"
)

var corednsBin, healerBin string

func TestMain(m *testing.M) {
	var err error
	corednsBin, err = binary("COREDNS_BIN", "coredns")
	if err == nil {
		healerBin, err = binary("HEALER_BIN", "healer")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// binary finds a binary: the env var when set (it must exist), else _output/bin, built
// with `make build` when missing.
func binary(env, name string) (string, error) {
	if p := os.Getenv(env); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%s=%s: %w", env, p, err)
		}
		return p, nil
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		return "", err
	}
	p := filepath.Join(root, "_output", "bin", name)
	if _, err := os.Stat(p); err == nil {
		return p, nil
	}
	cmd := exec.Command("make", "build")
	cmd.Dir = root
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("make build for %s: %w", name, err)
	}
	return p, nil
}

// command runs a binary under test.
func command(bin string, args ...string) *exec.Cmd { return exec.Command(bin, args...) }

// freePort returns a port free for both UDP and TCP on ip.
func freePort(t testing.TB, ip string) int {
	t.Helper()
	for i := 0; i < 50; i++ {
		l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenPacket("udp", net.JoinHostPort(ip, strconv.Itoa(port)))
		l.Close()
		if err != nil {
			continue
		}
		pc.Close()
		return port
	}
	t.Fatal("no free port")
	return 0
}

// Upstream modes: what a replica's forward target does.
const (
	modeNormal int32 = iota
	modeServfail
	modeBlackhole
	modeDelay
	modeDifferent
	// modeDelayClients delays every name but the self-probe's: the replica's own view of
	// itself stays fast, only its p99 (and the healer's probes) show the slowness.
	modeDelayClients
	// modeRefused: an ACL upstream that refuses this replica's source address.
	modeRefused
)

// upstream is one replica's forward target, in-process, so a test switches its fault on
// and off at an exact moment without touching CoreDNS.
type upstream struct {
	addr  string
	mode  atomic.Int32
	delay time.Duration
	// ttl of the answers (default 30s); index numbers the upstream (round-robin answers).
	ttl   uint32
	index int

	mu  sync.Mutex
	srv *dns.Server
}

func newUpstream(t testing.TB) *upstream {
	u := &upstream{delay: 80 * time.Millisecond, ttl: 30}
	u.addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t, "127.0.0.1")))
	u.start(t)
	t.Cleanup(u.stop)
	return u
}

func (u *upstream) start(t testing.TB) {
	u.mu.Lock()
	defer u.mu.Unlock()
	pc, err := net.ListenPacket("udp", u.addr)
	if err != nil {
		t.Fatalf("upstream %s: %v", u.addr, err)
	}
	u.srv = &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(u.serve)}
	started := make(chan struct{})
	u.srv.NotifyStartedFunc = func() { close(started) }
	go func() { _ = u.srv.ActivateAndServe() }()
	<-started
}

// stop closes the socket: the port is dead (ICMP unreachable, forward's connection refused).
func (u *upstream) stop() {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.srv != nil {
		_ = u.srv.Shutdown()
		u.srv = nil
	}
}

func (u *upstream) serve(w dns.ResponseWriter, r *dns.Msg) {
	mode := u.mode.Load()
	switch mode {
	case modeBlackhole:
		return
	case modeDelay:
		time.Sleep(u.delay)
	case modeDelayClients:
		if !strings.EqualFold(r.Question[0].Name, "selfcheck.test.") {
			time.Sleep(u.delay)
		}
	}
	m := new(dns.Msg)
	m.SetReply(r)
	m.RecursionAvailable = true
	q := r.Question[0]
	name := strings.ToLower(q.Name)
	if mode == modeServfail || name == "bad.test." { // bad.test.: a name whose servers are broken
		m.Rcode = dns.RcodeServerFailure
		_ = w.WriteMsg(m)
		return
	}
	if mode == modeRefused {
		m.Rcode = dns.RcodeRefused
		_ = w.WriteMsg(m)
		return
	}
	ip := map[string]string{"probe.test.": "10.0.0.1", "selfcheck.test.": "10.0.0.2", "load.test.": "10.0.0.3",
		"probe.cluster.local.": "10.0.0.4", "rr.test.": fmt.Sprintf("10.0.1.%d", u.index+1)}[name]
	switch {
	case ip == "":
		m.Rcode = dns.RcodeNameError
	case q.Qtype == dns.TypeA:
		if mode == modeDifferent && (name == "probe.test." || name == "probe.cluster.local.") {
			ip = "10.0.0.99"
		}
		m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: u.ttl}, A: net.ParseIP(ip)})
	}
	_ = w.WriteMsg(m)
}

// replicaProc is one real custom CoreDNS process.
type replicaProc struct {
	name      string
	ip        string
	dnsAddr   string
	pulseAddr string
	up        *upstream
	cmd       *exec.Cmd
}

// corefile is a replica's Corefile: the pulse line as a user writes it first (every option
// at its default: tick 50ms, the self-probe answered by pulse itself), extra lines (a
// cache), and forward to the replica's own upstream.
const corefile = `.:%d {
    bind %s
    pulse %s
    %s
    forward . %s {
        max_fails 0
    }
}
`

func startReplica(t testing.TB, name, ip string, up *upstream, extra string) *replicaProc {
	t.Helper()
	dir := t.TempDir()
	port, pport := freePort(t, ip), freePort(t, ip)
	r := &replicaProc{name: name, ip: ip, up: up,
		dnsAddr: net.JoinHostPort(ip, strconv.Itoa(port)), pulseAddr: net.JoinHostPort(ip, strconv.Itoa(pport))}
	conf := filepath.Join(dir, "Corefile")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(corefile, port, ip, r.pulseAddr, extra, up.addr)), 0o644); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "coredns.log"))
	if err != nil {
		t.Fatal(err)
	}
	r.cmd = command(corednsBin, "-conf", conf)
	r.cmd.Stdout, r.cmd.Stderr = logf, logf
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = r.cmd.Process.Signal(syscall.SIGCONT) // a stopped process must not outlive the test
		_ = r.cmd.Process.Kill()
		_ = r.cmd.Wait()
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("coredns %s log (tail):\n%s", name, tail(b, 2000))
		}
	})
	waitFor(t, 30*time.Second, "replica "+name+" serving with a heartbeat", func() bool {
		hb, err := r.heartbeat()
		if err != nil || hb.Seq < 2 {
			return false
		}
		m := new(dns.Msg)
		m.SetQuestion("probe.test.", dns.TypeA)
		resp, err := dns.Exchange(m, r.dnsAddr)
		return err == nil && resp.Rcode == dns.RcodeSuccess && len(resp.Answer) == 1
	})
	return r
}

var pulseClient = &http.Client{Timeout: time.Second}

func (r *replicaProc) heartbeat() (*heartbeat.Heartbeat, error) {
	resp, err := pulseClient.Get("http://" + r.pulseAddr + heartbeat.Path)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return heartbeat.Decode(resp.Body)
}

func (r *replicaProc) signal(t testing.TB, sig syscall.Signal) {
	t.Helper()
	if err := r.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("%s: %v", r.name, err)
	}
}

func (r *replicaProc) target() string {
	return fmt.Sprintf("%s=%s@%s", r.name, r.dnsAddr, r.pulseAddr)
}

// cluster is three replicas, each with its own upstream, and the healer watching them.
type cluster struct {
	replicas []*replicaProc
	byName   map[string]*replicaProc
	audit    *auditLog
	healer   *exec.Cmd
}

// clusterOpts change what startClusterWith starts.
type clusterOpts struct {
	// corefile is extra lines in every replica's server block (e.g. "cache 30").
	corefile string
	// ttl of the upstreams' answers (default 30s).
	ttl uint32
	// beforeHealer runs once the replicas serve, before the healer starts.
	beforeHealer func(t testing.TB, c *cluster)
	// healerArgs are added to the healer's (default) flags.
	healerArgs []string
	// skipHealthy returns as soon as the healer runs (the test waits for what it needs).
	skipHealthy bool
}

// startCluster starts three replicas and the healer with its defaults (but --dry-run, the
// audit log in a file, metrics on a free port, and --check probe.test/A), and returns once
// every replica is healthy and past the healer's warm-up: the faults are injected then.
func startCluster(t testing.TB, extraHealerArgs ...string) *cluster {
	t.Helper()
	return startClusterWith(t, clusterOpts{healerArgs: extraHealerArgs})
}

func startClusterWith(t testing.TB, o clusterOpts) *cluster {
	t.Helper()
	// A random 127.0.0.x block per cluster: the addresses stay distinct between replicas.
	base := 10 + rand.IntN(200)
	c := &cluster{byName: map[string]*replicaProc{}}
	for i, name := range []string{"dns-a", "dns-b", "dns-c"} {
		ip := fmt.Sprintf("127.0.0.%d", base+i)
		up := newUpstream(t)
		up.index = i
		if o.ttl > 0 {
			up.ttl = o.ttl
		}
		r := startReplica(t, name, ip, up, o.corefile)
		c.replicas = append(c.replicas, r)
		c.byName[name] = r
	}
	if o.beforeHealer != nil {
		o.beforeHealer(t, c)
	}
	dir := t.TempDir()
	auditPath := filepath.Join(dir, "audit.log")
	args := []string{"--check", "probe.test/A", "--dry-run", "--audit-log", auditPath, "--metrics-addr", "127.0.0.1:0"}
	for _, r := range c.replicas {
		args = append(args, "--target", r.target())
	}
	args = append(args, o.healerArgs...)
	logf, err := os.Create(filepath.Join(dir, "healer.log"))
	if err != nil {
		t.Fatal(err)
	}
	c.healer = command(healerBin, args...)
	c.healer.Stdout, c.healer.Stderr = logf, logf
	if err := c.healer.Start(); err != nil {
		t.Fatal(err)
	}
	c.audit = &auditLog{path: auditPath}
	t.Cleanup(func() {
		_ = c.healer.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = c.healer.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = c.healer.Process.Kill()
			<-done
		}
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("healer log (tail):\n%s", tail(b, 3000))
			a, _ := os.ReadFile(auditPath)
			t.Logf("audit log:\n%s", tail(a, 6000))
		}
	})
	if o.skipHealthy {
		return c
	}
	for _, r := range c.replicas {
		c.audit.wait(t, 30*time.Second, r.name+" healthy", func(l line) bool {
			return l.Event == "state" && l.Replica == r.name && l.To == "healthy"
		})
	}
	c.pastWarmUp(t, warmUpOf(o.healerArgs))
	return c
}

// hold lets the healer judge the cluster for d, measured on the replicas' own heartbeats
// (seq moves one tick at a time).
func (c *cluster) hold(t testing.TB, d time.Duration) {
	t.Helper()
	r := c.replicas[0]
	start, err := r.heartbeat()
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, d+verdictWithin, fmt.Sprintf("%s of heartbeats", d), func() bool {
		hb, err := r.heartbeat()
		return err == nil && time.Duration(hb.Seq-start.Seq)*time.Duration(hb.Tick) >= d
	})
}

// warmUpOf is the --warm-up in args, else the healer's default (10s).
func warmUpOf(args []string) time.Duration {
	d := 10 * time.Second
	for i, a := range args {
		v, ok := strings.CutPrefix(a, "--warm-up=")
		if !ok && a == "--warm-up" && i+1 < len(args) {
			v, ok = args[i+1], true
		}
		if p, err := time.ParseDuration(v); ok && err == nil {
			d = p
		}
	}
	return d
}

// pastWarmUp waits until warmUp has passed since the healer first saw the replicas (its
// "replica" audit lines): a younger replica is judged on hard evidence only, and no action
// is taken on it (docs/design.md R14, G3). A wait on the healer's own clock, not a guess.
func (c *cluster) pastWarmUp(t testing.TB, warmUp time.Duration) {
	t.Helper()
	var seen time.Time
	for _, r := range c.replicas {
		l := c.audit.wait(t, 30*time.Second, r.name+" discovered", func(l line) bool {
			return l.Event == audit.EventReplica && l.Fields["replica"] == r.name
		})
		if l.Time.After(seen) {
			seen = l.Time
		}
	}
	if d := time.Until(seen.Add(warmUp + 100*time.Millisecond)); d > 0 {
		timer := time.NewTimer(d)
		defer timer.Stop()
		<-timer.C
	}
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// line is one audit line, as the healer's own audit package reads it back.
type line = audit.Line

// auditLog tails the healer's audit file.
type auditLog struct {
	path   string
	offset int64
	buf    []byte
	lines  []line
}

func (a *auditLog) read(t testing.TB) {
	f, err := os.Open(a.path)
	if os.IsNotExist(err) {
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Seek(a.offset, 0); err != nil {
		t.Fatal(err)
	}
	var chunk bytes.Buffer
	n, _ := chunk.ReadFrom(f)
	a.offset += n
	a.buf = append(a.buf, chunk.Bytes()...)
	for {
		i := bytes.IndexByte(a.buf, '\n')
		if i < 0 {
			return
		}
		raw := a.buf[:i]
		a.buf = a.buf[i+1:]
		l, err := audit.Parse(raw)
		if err != nil {
			t.Fatalf("the healer's audit file holds a line that is not a valid audit line: %v", err)
		}
		a.lines = append(a.lines, l)
	}
}

// wait returns the first line from the start of the log that matches.
func (a *auditLog) wait(t testing.TB, within time.Duration, what string, match func(line) bool) line {
	t.Helper()
	return a.waitFrom(t, 0, within, what, match)
}

// waitFrom returns the first line at index from or later (see mark) that matches,
// failing the test at the deadline.
func (a *auditLog) waitFrom(t testing.TB, from int, within time.Duration, what string, match func(line) bool) line {
	t.Helper()
	var found line
	waitFor(t, within, what, func() bool {
		a.read(t)
		for i := from; i < len(a.lines); i++ {
			if match(a.lines[i]) {
				found = a.lines[i]
				return true
			}
		}
		return false
	})
	return found
}

// mark is the index of the next line, to look only at what follows.
func (a *auditLog) mark(t testing.TB) int {
	a.read(t)
	return len(a.lines)
}

// from returns the lines at index i or later.
func (a *auditLog) from(t testing.TB, i int) []line {
	a.read(t)
	return a.lines[i:]
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		<-tick.C
	}
}

// load sends queries for names from gen to addr at about qps until ctx ends.
func load(ctx context.Context, addr string, qps, workers int, gen func(i int) string) *atomic.Int64 {
	var sent atomic.Int64
	per := time.Duration(float64(time.Second) * float64(workers) / float64(qps))
	for w := 0; w < workers; w++ {
		go func(w int) {
			c := &dns.Client{Timeout: 500 * time.Millisecond}
			conn, err := c.Dial(addr)
			if err != nil {
				return
			}
			defer conn.Close()
			tick := time.NewTicker(per)
			defer tick.Stop()
			for i := 0; ; i++ {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				m := new(dns.Msg)
				m.SetQuestion(gen(w*1_000_000+i), dns.TypeA)
				_, _, _ = c.ExchangeWithConnContext(ctx, m, conn)
				sent.Add(1)
			}
		}(w)
	}
	return &sent
}
