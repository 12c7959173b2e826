// Package heal drives the dnspulse healer, installed with its Helm chart, on the local cluster of
// package e2e/cluster: it injects one fault at a time into a CoreDNS replica and records, from the
// API and the healer's audit log, when each step of the healing happened. The end-to-end tests
// (build tag e2e), `make bench-e2e` and `make demo` are built on it.
package heal

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/dnspulse/dnspulse/e2e/cluster"
)

const (
	// DNSNamespace, DNSSelector: the cluster DNS as e2e/cluster/manifests/coredns.yaml deploys it.
	DNSNamespace = "kube-system"
	DNSSelector  = "k8s-app=kube-dns"
	// HealerNamespace is where the chart is installed.
	HealerNamespace = "dnspulse-system"
	// Release is the Helm release name; the chart names its objects after it (fullname = release).
	Release = "dnspulse-healer"
	// ForwardedName is answered by the harness's upstream only: a check on it goes through
	// `forward`, so a replica whose upstream is broken fails it while its cluster.local answers work.
	ForwardedName = "probe.dnspulse.test"
	forwardedIP   = "192.0.2.53"
	// LeaseNamespace holds the replicas' pulse Leases (build/coredns/lease-rbac.yaml): the
	// CoreDNS ServiceAccount writes Leases there and nowhere else.
	LeaseNamespace = "dnspulse-heartbeat"
	// PartitionAfter is guards.partitionAfter in Values (45s by default): how long a replica
	// the healer cannot reach but the cluster sees serving waits before it is reported.
	PartitionAfter = 6 * time.Second
	// MaxDrain is pulse's readiness_gate_max_drain in Corefile (its default): a gate False
	// longer than this is opened again by pulse itself.
	MaxDrain = 30 * time.Second
)

// CanaryMaxLag is canary.maxLag in Values: how long a replica may answer a replaced canary
// value before it is stale.
const CanaryMaxLag = 3 * time.Second

// WarmUp is remediation.warmUp in Values: how long a replica must have been Ready before the
// healer acts on it.
const WarmUp = 10 * time.Second

// Values are the chart values every scenario starts from. The healer's own defaults (20 ms
// probes, 100 ms timeout) assume an idle node; the e2e machine is shared and loaded, so the probes
// get 250 ms (still far below a client's 2-5 s resolver timeout) and the cooldowns are short so
// that scenarios can follow each other. DNSPULSE_E2E_PROBE_DEFAULTS=1 leaves the probes and
// heartbeat reads at the chart's defaults (make bench-e2e: healing timed as a user gets it).
const Values = `image:
  repository: dnspulse/healer
  tag: dev
checks:
  - kubernetes.default.svc.cluster.local/A
  - ` + ForwardedName + `/A
` + loadedMachineProbes + `canary:
  interval: 2s
  maxLag: 3s
coredns:
  pulseLeaseNamespace: ` + LeaseNamespace + `
remediation:
  readinessGate: true
  warmUp: 10s
  cooldown: 10s
  globalCooldown: 2s
  retryBackoff: 1s
  retryBackoffMax: 4s
config:
  guards:
    # One node, and a suite that evicts again and again: the hourly eviction budgets (G12)
    # are the production defaults' business, not the suite's.
    evictionsPerNode: 1000
    evictionsPerOwner: 1000
    # A replica cut off from the healer but serving is reported after this (45s by default).
    partitionAfter: 6s
`

// loadedMachineProbes are the probe and heartbeat-read settings of Values.
const loadedMachineProbes = `probe:
  interval: 50ms
  timeout: 250ms
  minTimeout: 100ms
pulse:
  interval: 50ms
  timeout: 250ms
  minTimeout: 100ms
`

// ProbeDefaults is DNSPULSE_E2E_PROBE_DEFAULTS=1: the chart's own probe and heartbeat-read
// settings instead of loadedMachineProbes.
var ProbeDefaults = os.Getenv("DNSPULSE_E2E_PROBE_DEFAULTS") == "1"

func values() string {
	if ProbeDefaults {
		return strings.Replace(Values, loadedMachineProbes, "", 1)
	}
	return Values
}

// Corefile is the e2e cluster's Corefile with pulse's opt-in Lease heartbeat in LeaseNamespace
// (the healer reads it: G13's independent view), pulse opening its own readiness gate (fail
// open), and ForwardedName's zone kept out of the cache so that a broken upstream shows at once
// rather than after the TTL.
const Corefile = `.:53 {
    errors
    health {
       lameduck 5s
    }
    ready
    pulse :9155 {
       lease ` + LeaseNamespace + `
       lease_interval 2s
       readiness_gate
    }
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }
    prometheus :9153
    forward . /etc/resolv.conf {
       max_concurrent 1000
    }
    cache 30 {
       disable success cluster.local dnspulse.test
       disable denial cluster.local dnspulse.test
    }
    loop
    reload
    loadbalance
}
`

// leaseRBAC is build/coredns/lease-rbac.yaml: what pulse's `lease` needs for the coredns ServiceAccount.
const leaseRBACFile = "build/coredns/lease-rbac.yaml"

// PrepareCoreDNS switches the cluster DNS to Corefile (plus the Lease RBAC) and restarts it, so
// that every replica runs with the Lease heartbeat. It returns once the new replicas are Ready.
func PrepareCoreDNS(ctx context.Context, c *cluster.Cluster, repoRoot string) error {
	if err := c.Upstream.SetRecord(ForwardedName, forwardedIP); err != nil {
		return err
	}
	rbac, err := os.ReadFile(filepath.Join(repoRoot, leaseRBACFile))
	if err != nil {
		return err
	}
	if err := c.Apply(ctx, rbac); err != nil {
		return fmt.Errorf("%s: %w", leaseRBACFile, err)
	}
	return SetCorefile(ctx, c, Corefile, true)
}

// SetCorefile puts corefile in the coredns ConfigMap and, when it changed (or always),
// restarts the Deployment as `kubectl rollout restart` does, so that every replica runs it;
// it returns once the rollout is complete.
func SetCorefile(ctx context.Context, c *cluster.Cluster, corefile string, always bool) error {
	cm, err := c.Client.CoreV1().ConfigMaps(DNSNamespace).Get(ctx, "coredns", metav1.GetOptions{})
	if err != nil {
		return err
	}
	if cm.Data["Corefile"] == corefile && !always {
		return nil
	}
	cm.Data["Corefile"] = corefile
	if _, err := c.Client.CoreV1().ConfigMaps(DNSNamespace).Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		return err
	}
	// kubectl rollout restart: a new template annotation, so every replica reads the new Corefile.
	patch := fmt.Sprintf(`{"spec":{"template":{"metadata":{"annotations":{"dnspulse.io/restartedAt":%q}}}}}`, time.Now().Format(time.RFC3339Nano))
	if _, err := c.Client.AppsV1().Deployments(DNSNamespace).Patch(ctx, "coredns", types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		return err
	}
	return c.WaitDeploymentReady(ctx, DNSNamespace, "coredns")
}

// Helm runs the helm binary of the cluster against it, with its caches in a private folder.
func Helm(ctx context.Context, c *cluster.Cluster, args ...string) (string, error) {
	home := filepath.Join(c.StateDir, "helm")
	if err := os.MkdirAll(home, 0o755); err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, filepath.Join(c.BinDir, "helm"), append(args, "--kubeconfig", c.Kubeconfig)...)
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+home+"/cache", "HELM_CONFIG_HOME="+home+"/config", "HELM_DATA_HOME="+home+"/data")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("helm %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// Install runs `helm upgrade --install` of healer/chart into HealerNamespace with Values plus
// extra (more values YAML, may be empty) and waits for the Deployment to be Ready.
func Install(ctx context.Context, c *cluster.Cluster, repoRoot, extra string) error {
	if err := c.CreateNamespace(ctx, HealerNamespace); err != nil {
		return err
	}
	dir := filepath.Join(c.StateDir, "helm")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	base := filepath.Join(dir, "values.yaml")
	if err := os.WriteFile(base, []byte(values()), 0o644); err != nil {
		return err
	}
	args := []string{"upgrade", "--install", Release, filepath.Join(repoRoot, "healer", "chart"),
		"--namespace", HealerNamespace, "-f", base, "--wait", "--timeout", "3m"}
	if extra != "" {
		more := filepath.Join(dir, "extra.yaml")
		if err := os.WriteFile(more, []byte(extra), 0o644); err != nil {
			return err
		}
		args = append(args, "-f", more)
	}
	if _, err := Helm(ctx, c, args...); err != nil {
		return err
	}
	return c.WaitDeploymentReady(ctx, HealerNamespace, Release)
}

// Uninstall removes the release (its RBAC, canary Service and Deployment).
func Uninstall(ctx context.Context, c *cluster.Cluster) error {
	_, err := Helm(ctx, c, "uninstall", Release, "--namespace", HealerNamespace, "--wait", "--timeout", "2m")
	return err
}

// RepoRoot is the repository root above the working directory (where go.mod and e2e/ are).
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "healer", "chart", "Chart.yaml")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no healer/chart/Chart.yaml above the working directory")
		}
		dir = parent
	}
}
