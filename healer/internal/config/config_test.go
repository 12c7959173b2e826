package config

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/spf13/pflag"
)

func parse(t *testing.T, args ...string) (*Config, error) {
	t.Helper()
	c, _, err := Parse(args, io.Discard)
	if errors.Is(err, ErrFlags) {
		return nil, err
	}
	// As the command does: every problem of Parse and Validate together.
	return c, errors.Join(err, c.Validate())
}

func TestEveryBriefFlagExists(t *testing.T) {
	fs := pflag.NewFlagSet("healer", pflag.ContinueOnError)
	Default().AddFlags(fs)
	for _, name := range []string{"target", "check", "config", "probe-interval", "probe-timeout", "max-probe-qps",
		"pulse-interval", "pulse-timeout", "pulse-port", "dry-run", "remediate-exec", "audit-log", "metrics-addr",
		"kubeconfig", "namespace", "selector", "service", "canary", "canary-namespace", "canary-service",
		"canary-interval", "canary-max-lag", "readiness-gate", "allow-delete", "min-available", "max-degraded",
		"cooldown", "global-cooldown", "leader-elect", "leader-elect-namespace", "leader-elect-lease", "version"} {
		if fs.Lookup(name) == nil {
			t.Errorf("flag --%s missing", name)
		}
	}
	o := Default()
	k := o.Kubernetes
	if o.Probe.Interval.D() != 20*time.Millisecond || o.Probe.Timeout.D() != 100*time.Millisecond || o.Probe.MaxQPS != 0 ||
		o.Heartbeat.Port != 9155 || o.AuditLog != "-" || o.MetricsAddr != ":9156" || k.Namespace != "kube-system" ||
		k.Selector != "k8s-app=kube-dns" || k.Service != "kube-dns" || !k.Canary.Enabled || k.Canary.Service != "dnspulse-canary" ||
		k.Canary.Interval.D() != 5*time.Second || k.Canary.MaxLag.D() != 3*time.Second || o.Guards.MinAvailable != 1 || o.Guards.MaxDegraded != 1 ||
		o.Guards.Cooldown.D() != 5*time.Minute || o.Guards.GlobalCooldown.D() != time.Minute || !k.LeaderElection.Enabled || k.LeaderElection.Lease != "dnspulse-healer" {
		t.Errorf("defaults differ from the brief: %+v", o)
	}
}

func TestStaticTargets(t *testing.T) {
	o, err := parse(t, "--target", "a=127.0.0.1:53@127.0.0.1:9155", "--target", "b=[::1]:1053", "--check", "x.example/AAAA")
	if err != nil {
		t.Fatal(err)
	}
	if !o.IsStatic() || len(o.StaticTargets) != 2 {
		t.Fatalf("targets: %+v", o.StaticTargets)
	}
	a := o.StaticTargets[0]
	if a.Name != "a" || a.DNSAddr != "127.0.0.1:53" || a.PulseAddr != "127.0.0.1:9155" || !a.Ready || !a.Remediable {
		t.Errorf("a: %+v", a)
	}
	if o.StaticTargets[1].PulseAddr != "" {
		t.Errorf("b has no pulse: %+v", o.StaticTargets[1])
	}
	if len(o.CheckList) != 1 || o.CheckList[0].Type != dns.TypeAAAA {
		t.Errorf("checks: %+v", o.CheckList)
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	_, err := parse(t, "--target", "nope", "--target", "b=127.0.0.1:99999", "--check", "x/BOGUS",
		"--probe-interval", "0s", "--max-probe-qps", "-1", "--max-degraded", "0", "--pulse-port", "70000")
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"--target[0]", "--target[1]", "--check[0]"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %s:\n%v", want, err)
		}
	}
	o := Default()
	o.Probe.Interval, o.Probe.MaxQPS, o.Guards.MaxDegraded, o.Heartbeat.Port, o.Static.RemediateExec = 0, -1, 0, 70000, "x"
	o.PprofAddr = "6060"
	err = o.Validate()
	for _, want := range []string{"--probe-interval", "--max-probe-qps", "--max-degraded", "--pulse-port", "--remediate-exec", "--pprof-addr"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %s:\n%v", want, err)
		}
	}
}

// Streams by default; --pulse-stream=false polls; no profiles unless asked.
func TestHeartbeatStreamAndPprofDefaults(t *testing.T) {
	o := Default()
	if !o.Heartbeat.Stream || o.PprofAddr != "" || o.Probe.MaxQPS != 0 {
		t.Errorf("defaults: stream %v, pprof %q, max-probe-qps %d", o.Heartbeat.Stream, o.PprofAddr, o.Probe.MaxQPS)
	}
	c, err := parse(t, "--target", "a=127.0.0.1:53", "--check", "x.example", "--pulse-stream=false", "--pprof-addr", "127.0.0.1:6060")
	if err != nil || c.Heartbeat.Stream || c.PprofAddr != "127.0.0.1:6060" {
		t.Errorf("flags: stream %v, pprof %q, err %v", c.Heartbeat.Stream, c.PprofAddr, err)
	}
}

func TestStaticNeedsACheck(t *testing.T) {
	_, err := parse(t, "--target", "a=127.0.0.1:53")
	if err == nil || !strings.Contains(err.Error(), "--check") {
		t.Errorf("want a --check error, got %v", err)
	}
	o, err := parse(t)
	if err != nil {
		t.Fatal(err)
	}
	if len(o.CheckList) != 1 || o.CheckList[0].Name != "kubernetes.default.svc.cluster.local." {
		t.Errorf("Kubernetes mode default check: %+v", o.CheckList)
	}
}

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "healer.yaml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestConfigFileAndFlagPrecedence(t *testing.T) {
	p := writeFile(t, `
checks:
- name: kubernetes.default.svc.cluster.local
  type: A
  expect:
    answers: ["10.96.0.1"]
- name: _dns._udp.kube-dns.kube-system.svc.cluster.local
  type: SRV
  expect:
    answers: majority
- name: gone.default.svc.cluster.local
  expect:
    rcode: NXDOMAIN
thresholds:
  minFailures: 3
  latencyMargin: 60ms
guards:
  minAvailable: 2
  cooldown: 10m
  dryRun: true
`)
	o, err := parse(t, "--config", p, "--cooldown", "1m", "--target", "a=127.0.0.1:53")
	if err != nil {
		t.Fatal(err)
	}
	if len(o.CheckList) != 3 {
		t.Fatalf("checks: %+v", o.CheckList)
	}
	if c := o.CheckList[0]; len(c.Answers) != 1 || c.Answers[0] != "10.96.0.1" {
		t.Errorf("exact answers: %+v", c)
	}
	if c := o.CheckList[1]; c.Type != dns.TypeSRV || c.Answers != nil {
		t.Errorf("majority SRV: %+v", c)
	}
	if c := o.CheckList[2]; c.Rcode != dns.RcodeNameError {
		t.Errorf("rcode: %+v", c)
	}
	if o.Thresholds.MinFailures != 3 || o.Thresholds.LatencyMargin.D() != 60*time.Millisecond || o.Thresholds.RecentProbes != 5 {
		t.Errorf("thresholds: %+v", o.Thresholds)
	}
	if o.Guards.MinAvailable != 2 || !o.Guards.DryRun {
		t.Errorf("guards from the file: min-available %d dry-run %v", o.Guards.MinAvailable, o.Guards.DryRun)
	}
	if o.Guards.Cooldown.D() != time.Minute {
		t.Errorf("the flag must win over the file: cooldown %s", o.Guards.Cooldown.D())
	}
}

func TestConfigFileErrorsNameTheKey(t *testing.T) {
	p := writeFile(t, `
checks:
- name: x.example
  type: NOPE
- name: y.example
  expect:
    rcode: WHAT
    answers: 5
thresholds:
  minFailures: 0
`)
	_, err := parse(t, "--config", p, "--target", "a=127.0.0.1:53")
	for _, want := range []string{"checks[0]", "checks[1]", "thresholds.minFailures"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %s:\n%v", want, err)
		}
	}
	p = writeFile(t, "thresholds:\n  minFailurez: 3\n")
	if _, err := parse(t, "--config", p); err == nil || !strings.Contains(err.Error(), "minFailurez") {
		t.Errorf("unknown key not reported: %v", err)
	}
	if _, err := parse(t, "--config", "/nonexistent.yaml"); err == nil || !strings.Contains(err.Error(), "--config") {
		t.Errorf("missing file: %v", err)
	}
}

// TestFileDecodesOntoDefaults: a key the file sets changes that field alone; every section
// is reachable from the file, and a flag still wins.
func TestFileDecodesOntoDefaults(t *testing.T) {
	p := writeFile(t, `
probe: {interval: 50ms, maxQPS: 900}
heartbeat: {port: 9999}
kubernetes:
  namespace: dns
  canary: {maxLag: 7s}
  leaderElection: {leaseDuration: 30s, renewDeadline: 20s, retryPeriod: 4s}
static: {remediateTimeout: 3s}
metricsAddr: ":1234"
`)
	c, err := parse(t, "--config", p, "--max-probe-qps", "100")
	if err != nil {
		t.Fatal(err)
	}
	d := Default()
	if c.Probe.Interval.D() != 50*time.Millisecond || c.Probe.Timeout != d.Probe.Timeout || c.Probe.MaxQPS != 100 {
		t.Errorf("probe: %+v", c.Probe)
	}
	if c.Heartbeat.Port != 9999 || c.MetricsAddr != ":1234" || c.Static.RemediateTimeout.D() != 3*time.Second {
		t.Errorf("heartbeat %+v metrics %q static %+v", c.Heartbeat, c.MetricsAddr, c.Static)
	}
	k := c.Kubernetes
	if k.Namespace != "dns" || k.Selector != d.Kubernetes.Selector || k.Canary.MaxLag.D() != 7*time.Second || k.Canary.Interval != d.Kubernetes.Canary.Interval {
		t.Errorf("kubernetes: %+v", k)
	}
	if k.LeaderElection.LeaseDuration.D() != 30*time.Second || !k.LeaderElection.Enabled {
		t.Errorf("leader election: %+v", k.LeaderElection)
	}
}

// TestNamespacesDefaultOnce: the canary namespace is $POD_NAMESPACE, else --namespace; the
// leader Lease's is the canary's. Decided here and nowhere else.
func TestNamespacesDefaultOnce(t *testing.T) {
	t.Setenv("POD_NAMESPACE", "")
	c, err := parse(t, "--namespace", "dns")
	if err != nil {
		t.Fatal(err)
	}
	if c.Kubernetes.Canary.Namespace != "dns" || c.Kubernetes.LeaderElection.Namespace != "dns" {
		t.Errorf("without POD_NAMESPACE: canary %q lease %q", c.Kubernetes.Canary.Namespace, c.Kubernetes.LeaderElection.Namespace)
	}
	t.Setenv("POD_NAMESPACE", "healer")
	c, err = parse(t, "--namespace", "dns")
	if err != nil {
		t.Fatal(err)
	}
	if c.Kubernetes.Canary.Namespace != "healer" || c.Kubernetes.LeaderElection.Namespace != "healer" {
		t.Errorf("with POD_NAMESPACE: canary %q lease %q", c.Kubernetes.Canary.Namespace, c.Kubernetes.LeaderElection.Namespace)
	}
}

func TestKubernetesValuesValidatedHere(t *testing.T) {
	p := writeFile(t, "kubernetes:\n  leaderElection: {leaseDuration: 5s, renewDeadline: 10s}\n  clusterDomain: \"bad..domain\"\n")
	_, err := parse(t, "--config", p, "--namespace", "", "--service", "", "--selector", "a in (", "--canary-service", "", "--canary-interval", "0s")
	for _, want := range []string{"--namespace", "--service", "--selector", "--canary-service", "--canary-interval", "kubernetes.leaderElection", "kubernetes.clusterDomain"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %s:\n%v", want, err)
		}
	}
}

func TestBadCommandLine(t *testing.T) {
	if _, _, err := Parse([]string{"--nope"}, io.Discard); !errors.Is(err, ErrFlags) {
		t.Errorf("unknown flag: %v", err)
	}
	if _, _, err := Parse([]string{"stray"}, io.Discard); !errors.Is(err, ErrFlags) {
		t.Errorf("stray argument: %v", err)
	}
	if _, _, err := Parse([]string{"--probe-interval", "soon"}, io.Discard); !errors.Is(err, ErrFlags) {
		t.Errorf("bad duration: %v", err)
	}
}
