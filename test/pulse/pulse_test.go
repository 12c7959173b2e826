//go:build integration

// Package pulse_test drives the real custom CoreDNS binary (COREDNS_BIN, built by
// `make build`) on loopback addresses and checks what /pulse says about known traffic.
package pulse_test

import (
	"bufio"
	"fmt"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dnspulse/dnspulse/heartbeat"

	"github.com/miekg/dns"
)

func corednsBin(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("COREDNS_BIN")
	if bin == "" {
		t.Fatal("COREDNS_BIN is not set: run through `make test-integration`")
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("COREDNS_BIN: %v", err)
	}
	return bin
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	pc, err := net.ListenPacket("udp", ln.Addr().String())
	if err != nil {
		return freePort(t)
	}
	pc.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// coredns is a running CoreDNS process.
type coredns struct {
	pid     int
	exited  chan struct{} // closed when the process has ended
	waitErr error         // its exit status, once exited is closed
	log     string        // path of its stdout and stderr
}

func (c *coredns) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := syscall.Kill(c.pid, sig); err != nil {
		t.Fatalf("%v: %v", sig, err)
	}
}

// alive fails the test if the process has exited.
func (c *coredns) alive(t *testing.T) {
	t.Helper()
	select {
	case <-c.exited:
		t.Fatalf("coredns exited: %v (its log follows)", c.waitErr)
	default:
	}
}

// startCoreDNS runs the binary on corefile and waits until /pulse answers; the process
// is killed when the test ends, whatever happens.
func startCoreDNS(t *testing.T, corefile, pulseURL string) *coredns {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "Corefile")
	if err := os.WriteFile(path, []byte(corefile), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(corednsBin(t), "-conf", path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	logf, _ := os.Create(filepath.Join(dir, "coredns.log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &coredns{pid: cmd.Process.Pid, exited: make(chan struct{}), log: filepath.Join(dir, "coredns.log")}
	go func() { c.waitErr = cmd.Wait(); close(c.exited) }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGCONT) // a test may have frozen it
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-c.exited
		if t.Failed() {
			b, _ := os.ReadFile(c.log)
			t.Logf("coredns log:\n%s", b)
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		c.alive(t)
		if resp, err := http.Get(pulseURL); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return c
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("coredns did not serve /pulse within 20s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func getHeartbeat(t *testing.T, url string) *heartbeat.Heartbeat {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	hb, err := heartbeat.Decode(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return hb
}

func TestKnownMixExactCounts(t *testing.T) {
	dnsPort, pulsePort := freePort(t), freePort(t)
	dnsAddr := fmt.Sprintf("127.0.0.1:%d", dnsPort)
	url := fmt.Sprintf("http://127.0.0.1:%d/pulse", pulsePort)
	startCoreDNS(t, fmt.Sprintf(`.:%d {
    bind 127.0.0.1
    pulse 127.0.0.1:%d {
        tick 20ms
        replica mix-test
    }
    cache 30
    acl refused.test {
        block
    }
    acl dropped.test {
        drop
    }
    template IN A ok.test {
        answer "{{ .Name }} 60 IN A 192.0.2.1"
    }
    template IN A nx.test {
        rcode NXDOMAIN
    }
    template IN A fail.test {
        rcode SERVFAIL
    }
}
`, dnsPort, pulsePort), url)

	mix := []struct {
		zone  string
		n     int
		rcode int // -1: no reply expected
	}{{"ok.test.", 10, dns.RcodeSuccess}, {"nx.test.", 5, dns.RcodeNameError}, {"fail.test.", 3, dns.RcodeServerFailure}, {"refused.test.", 2, dns.RcodeRefused}, {"dropped.test.", 4, -1}}
	c := &dns.Client{Timeout: 300 * time.Millisecond}
	for _, m := range mix {
		for i := range m.n {
			q := new(dns.Msg)
			name := fmt.Sprintf("q%d.%s", i, m.zone)
			if m.zone == "ok.test." {
				// One name: nine of the ten are cache hits, which pulse sees only
				// because it sits before cache (right before prometheus).
				name = "same.ok.test."
			}
			q.SetQuestion(name, dns.TypeA)
			resp, _, err := c.Exchange(q, dnsAddr)
			if m.rcode < 0 {
				if err == nil {
					t.Fatalf("%s: got a reply %v, want none", m.zone, resp.Rcode)
				}
				continue
			}
			if err != nil || resp.Rcode != m.rcode {
				t.Fatalf("%s: rcode %v err %v, want %s", m.zone, resp, err, dns.RcodeToString[m.rcode])
			}
		}
	}

	var hb *heartbeat.Heartbeat
	deadline := time.Now().Add(5 * time.Second)
	for hb = getHeartbeat(t, url); hb.Windows["60s"].Queries < 24 && time.Now().Before(deadline); hb = getHeartbeat(t, url) {
		time.Sleep(20 * time.Millisecond)
	}
	if !hb.SelfProbe.OK || hb.Seq < 3 || hb.Replica != "mix-test" {
		t.Fatalf("heartbeat: seq %d selfProbe %+v replica %q", hb.Seq, hb.SelfProbe, hb.Replica)
	}
	for _, key := range []string{"10s", "60s"} {
		w := hb.Windows[key]
		want := map[string]uint64{"NOERROR": 10, "NXDOMAIN": 5, "SERVFAIL": 3, "REFUSED": 2}
		if w.Queries != 24 || w.Dropped != 4 || fmt.Sprint(w.Rcodes) != fmt.Sprint(want) {
			t.Fatalf("%s window: queries %d dropped %d rcodes %v; want 24, 4, %v (self-probes must not count)", key, w.Queries, w.Dropped, w.Rcodes, want)
		}
		// Hand-computed: -sum p log2 p over 10, 5, 3, 2, 4 (dropped is a kind) of 24.
		var h float64
		for _, n := range []float64{10, 5, 3, 2, 4} {
			h -= n / 24 * math.Log2(n/24)
		}
		if math.Abs(w.RcodeEntropy-h) > 1e-9 || math.Abs(h-2.1023) > 1e-4 {
			t.Errorf("%s rcodeEntropy %v, want %v", key, w.RcodeEntropy, h)
		}
		if w.NXDomainRatio != 5.0/24 || w.ServfailRatio != 3.0/24 {
			t.Errorf("%s ratios nx %v sf %v, want %v %v", key, w.NXDomainRatio, w.ServfailRatio, 5.0/24, 3.0/24)
		}
		if w.ServfailSourceEntropy != 0 {
			t.Errorf("%s servfailSourceEntropy %v: one client (127.0.0.1) is one source", key, w.ServfailSourceEntropy)
		}
		if w.LatencyMicros.Max == 0 || w.LatencyMicros.P50 > w.LatencyMicros.P99 || w.LatencyMicros.P99 > w.LatencyMicros.Max {
			t.Errorf("%s latency %+v", key, w.LatencyMicros)
		}
	}
	// The same mix shows in the metrics of the prometheus plugin? Not configured here; the
	// heartbeat is the contract.
}

var corefileFence = regexp.MustCompile("(?s)~~~ corefile\n(.*?)~~~")

// TestReadmeExamples starts the real binary on every `~~~ corefile` block of the plugin's
// README, as CoreDNS's own readme test does, rewriting only ports and addresses.
func TestReadmeExamples(t *testing.T) {
	readme, err := os.ReadFile("../../plugin/pulse/README.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := corefileFence.FindAllStringSubmatch(string(readme), -1)
	if len(blocks) < 3 {
		t.Fatalf("README has %d corefile examples; want at least 3", len(blocks))
	}
	for i, b := range blocks {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			dnsPort, pulsePort := freePort(t), freePort(t)
			cf := rewriteAddrs(b[1], dnsPort, pulsePort)
			url := fmt.Sprintf("http://127.0.0.1:%d/pulse", pulsePort)
			startCoreDNS(t, cf, url)
			hb := getHeartbeat(t, url)
			if hb.Version != 1 {
				t.Fatalf("heartbeat version %d", hb.Version)
			}
		})
	}
}

// rewriteAddrs points the server blocks at a free loopback port and pulse at another,
// forwards to a dead loopback port, drops what needs a cluster (lease, kubernetes), and leaves
// the rest as the README has it.
func rewriteAddrs(cf string, dnsPort, pulsePort int) string {
	var out []string
	skip := false // inside a kubernetes block: it needs a cluster, proven end to end
	sc := bufio.NewScanner(strings.NewReader(cf))
	for sc.Scan() {
		line := sc.Text()
		trim := strings.TrimSpace(line)
		if skip {
			skip = trim != "}"
			continue
		}
		switch {
		case strings.HasPrefix(trim, "kubernetes ") || trim == "kubernetes":
			skip = strings.HasSuffix(trim, "{")
			continue
		case strings.HasSuffix(trim, "{") && !strings.HasPrefix(trim, "pulse") && !strings.HasPrefix(line, " ") && !strings.HasPrefix(line, "\t"):
			zones := strings.Fields(strings.TrimSuffix(trim, "{"))
			for j, z := range zones {
				if k := strings.LastIndex(z, ":"); k >= 0 {
					z = z[:k]
				}
				zones[j] = fmt.Sprintf("%s:%d", z, dnsPort)
			}
			line = strings.Join(zones, " ") + " {\n    bind 127.0.0.1"
		case strings.HasPrefix(trim, "pulse"):
			rest := strings.TrimPrefix(trim, "pulse")
			open := strings.HasSuffix(rest, "{")
			line = fmt.Sprintf("    pulse 127.0.0.1:%d", pulsePort)
			if open {
				line += " {"
			}
		case strings.HasPrefix(trim, "lease"):
			continue // needs a cluster; proven end to end
		case strings.HasPrefix(trim, "bind "):
			continue
		case strings.HasPrefix(trim, "forward . "):
			line = "    forward . 127.0.0.1:9" // no traffic off loopback, whatever the README names
		}
		out = append(out, line)
	}
	return strings.Join(out, "\n") + "\n"
}
