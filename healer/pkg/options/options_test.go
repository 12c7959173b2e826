package options

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/spf13/pflag"
)

func parse(t *testing.T, args ...string) (*Options, error) {
	t.Helper()
	o := New()
	fs := pflag.NewFlagSet("healer", pflag.ContinueOnError)
	o.AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	// As the command does: every problem of Complete and Validate together.
	return o, errors.Join(o.Complete(fs), o.Validate())
}

func TestEveryBriefFlagExists(t *testing.T) {
	fs := pflag.NewFlagSet("healer", pflag.ContinueOnError)
	New().AddFlags(fs)
	for _, name := range []string{"target", "check", "config", "probe-interval", "probe-timeout", "max-probe-qps",
		"pulse-interval", "pulse-timeout", "pulse-port", "dry-run", "remediate-exec", "audit-log", "metrics-addr",
		"kubeconfig", "namespace", "selector", "service", "canary", "canary-namespace", "canary-service",
		"canary-interval", "canary-max-lag", "readiness-gate", "allow-delete", "min-available", "max-degraded",
		"cooldown", "global-cooldown", "leader-elect", "leader-elect-namespace", "leader-elect-lease", "version"} {
		if fs.Lookup(name) == nil {
			t.Errorf("flag --%s missing", name)
		}
	}
	o := New()
	if o.ProbeInterval != 20*time.Millisecond || o.ProbeTimeout != 100*time.Millisecond || o.MaxProbeQPS != 500 ||
		o.PulsePort != 9155 || o.AuditLog != "-" || o.MetricsAddr != ":9156" || o.Namespace != "kube-system" ||
		o.Selector != "k8s-app=kube-dns" || o.Service != "kube-dns" || !o.Canary || o.CanaryService != "dnspulse-canary" ||
		o.CanaryInterval != 5*time.Second || o.CanaryMaxLag != 3*time.Second || o.MinAvailable != 1 || o.MaxDegraded != 1 ||
		o.Cooldown != 5*time.Minute || o.GlobalCooldown != time.Minute || !o.LeaderElect || o.LeaderElectLease != "dnspulse-healer" {
		t.Errorf("defaults differ from the brief: %+v", o)
	}
}

func TestStaticTargets(t *testing.T) {
	o, err := parse(t, "--target", "a=127.0.0.1:53@127.0.0.1:9155", "--target", "b=[::1]:1053", "--check", "x.example/AAAA")
	if err != nil {
		t.Fatal(err)
	}
	if !o.Static() || len(o.StaticTargets) != 2 {
		t.Fatalf("targets: %+v", o.StaticTargets)
	}
	a := o.StaticTargets[0]
	if a.Name != "a" || a.DNSAddr != "127.0.0.1:53" || a.PulseAddr != "127.0.0.1:9155" || !a.Ready || !a.Remediable {
		t.Errorf("a: %+v", a)
	}
	if o.StaticTargets[1].PulseAddr != "" {
		t.Errorf("b has no pulse: %+v", o.StaticTargets[1])
	}
	if len(o.CheckSpecs) != 1 || o.CheckSpecs[0].Type != dns.TypeAAAA {
		t.Errorf("checks: %+v", o.CheckSpecs)
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	_, err := parse(t, "--target", "nope", "--target", "b=127.0.0.1:99999", "--check", "x/BOGUS",
		"--probe-interval", "0s", "--max-probe-qps", "0", "--max-degraded", "0", "--pulse-port", "70000")
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"--target[0]", "--target[1]", "--check[0]"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %s:\n%v", want, err)
		}
	}
	o := New()
	o.ProbeInterval, o.MaxProbeQPS, o.MaxDegraded, o.PulsePort, o.RemediateExec = 0, 0, 0, 70000, "x"
	err = o.Validate()
	for _, want := range []string{"--probe-interval", "--max-probe-qps", "--max-degraded", "--pulse-port", "--remediate-exec"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %s:\n%v", want, err)
		}
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
	if len(o.CheckSpecs) != 1 || o.CheckSpecs[0].Name != "kubernetes.default.svc.cluster.local." {
		t.Errorf("Kubernetes mode default check: %+v", o.CheckSpecs)
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
	if len(o.CheckSpecs) != 3 {
		t.Fatalf("checks: %+v", o.CheckSpecs)
	}
	if c := o.CheckSpecs[0]; len(c.Answers) != 1 || c.Answers[0] != "10.96.0.1" {
		t.Errorf("exact answers: %+v", c)
	}
	if c := o.CheckSpecs[1]; c.Type != dns.TypeSRV || c.Answers != nil {
		t.Errorf("majority SRV: %+v", c)
	}
	if c := o.CheckSpecs[2]; c.Rcode != dns.RcodeNameError {
		t.Errorf("rcode: %+v", c)
	}
	if o.Thresholds.MinFailures != 3 || o.Thresholds.LatencyMargin != 60*time.Millisecond || o.Thresholds.RecentProbes != 5 {
		t.Errorf("thresholds: %+v", o.Thresholds)
	}
	if o.MinAvailable != 2 || !o.DryRun {
		t.Errorf("guards from the file: min-available %d dry-run %v", o.MinAvailable, o.DryRun)
	}
	if o.Cooldown != time.Minute {
		t.Errorf("the flag must win over the file: cooldown %s", o.Cooldown)
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
