package config

import (
	"fmt"
	"net"
	"slices"

	"github.com/miekg/dns"
	"k8s.io/apimachinery/pkg/labels"
)

// maxChecks is how many checks the detector tracks one by one (the canary's included).
const maxChecks = 16

// Validate reports every bad value at once, each naming its flag or file key.
func (c *Config) Validate() error {
	var errs []string
	bad := func(flag, why string) { errs = append(errs, "--"+flag+": "+why) }
	badKey := func(key, why string) { errs = append(errs, c.keyPrefix()+key+": "+why) }
	type durationFlag struct {
		flag    string
		d       Duration
		nonZero bool
	}
	for _, f := range []durationFlag{
		{"probe-interval", c.Probe.Interval, true}, {"probe-timeout", c.Probe.Timeout, true},
		{"probe-min-timeout", c.Probe.MinTimeout, true}, {"pulse-interval", c.Heartbeat.Interval, true},
		{"pulse-timeout", c.Heartbeat.Timeout, true}, {"pulse-min-timeout", c.Heartbeat.MinTimeout, true},
		{"remediate-timeout", c.Static.RemediateTimeout, true}, {"retry-backoff", c.Guards.RetryBackoff, true},
		{"retry-backoff-max", c.Guards.RetryBackoffMax, true}, {"cooldown", c.Guards.Cooldown, false},
		{"global-cooldown", c.Guards.GlobalCooldown, false}, {"remediate-after", c.Guards.RemediateAfter, false},
		{"warm-up", c.Guards.WarmUp, false},
	} {
		switch {
		case f.nonZero && f.d <= 0:
			bad(f.flag, fmt.Sprintf("must be > 0, got %s", f.d.D()))
		case f.d < 0:
			bad(f.flag, "must be >= 0")
		}
	}
	if c.Probe.MaxQPS < 0 {
		bad("max-probe-qps", fmt.Sprintf("must be >= 0 (0: no cap), got %d", c.Probe.MaxQPS))
	}
	if c.Heartbeat.Port < 1 || c.Heartbeat.Port > 65535 {
		bad("pulse-port", fmt.Sprintf("%d out of [1,65535]", c.Heartbeat.Port))
	}
	if c.Guards.MinAvailable < 0 {
		bad("min-available", "must be >= 0")
	}
	if c.Guards.MaxDegraded < 1 {
		bad("max-degraded", "must be >= 1")
	}
	if c.Guards.FlapCount < 2 {
		badKey("guards.flapCount", "must be >= 2")
	}
	for key, v := range map[string]Duration{"guards.flapWindow": c.Guards.FlapWindow, "guards.drainWindow": c.Guards.DrainWindow,
		"guards.partitionAfter": c.Guards.PartitionAfter, "guards.replacementTimeout": c.Guards.ReplacementTimeout} {
		if v <= 0 {
			badKey(key, "must be > 0")
		}
	}
	for key, v := range map[string]int{"guards.drainsPerWindow": c.Guards.DrainsPerWindow,
		"guards.evictionsPerOwner": c.Guards.EvictionsPerOwner, "guards.evictionsPerNode": c.Guards.EvictionsPerNode} {
		if v < 1 {
			badKey(key, "must be >= 1")
		}
	}
	if n := len(c.CheckList) + 1; n > maxChecks {
		bad("check", fmt.Sprintf("%d checks (with the canary's): at most %d", n, maxChecks))
	}
	for flag, addr := range map[string]string{"metrics-addr": c.MetricsAddr, "pprof-addr": c.PprofAddr} {
		if _, _, err := net.SplitHostPort(addr); addr != "" && err != nil {
			bad(flag, err.Error())
		}
	}
	if c.AuditLog == "" {
		bad("audit-log", `must be a file or "-"`)
	}
	for _, ck := range c.CheckList {
		if ck.Type == dns.TypeNone {
			bad("check", ck.Name+": no type")
		}
	}
	if c.IsStatic() {
		if len(c.CheckList) == 0 {
			bad("check", "static mode needs at least one --check (or checks in --config)")
		}
		if c.Kubernetes.Kubeconfig != "" {
			bad("kubeconfig", "not used in static mode (with --target)")
		}
	} else {
		c.validateKubernetes(bad, badKey)
		if c.Static.RemediateExec != "" {
			bad("remediate-exec", "only in static mode (with --target)")
		}
	}
	errs = append(errs, c.Thresholds.validate(c.keyPrefix()+"thresholds.")...)
	slices.Sort(errs) // the same problems, always in the same order
	return joinErrs(errs)
}

func (c *Config) validateKubernetes(bad, badKey func(string, string)) {
	k := c.Kubernetes
	if k.Namespace == "" {
		bad("namespace", "must not be empty")
	}
	if k.Service == "" {
		bad("service", "must not be empty")
	}
	if k.Selector == "" {
		bad("selector", "must not be empty")
	} else if _, err := labels.Parse(k.Selector); err != nil {
		bad("selector", err.Error())
	}
	if _, ok := dns.IsDomainName(k.ClusterDomain); !ok || k.ClusterDomain == "" {
		badKey("kubernetes.clusterDomain", fmt.Sprintf("%q is not a domain name", k.ClusterDomain))
	}
	if k.Canary.Enabled {
		if k.Canary.Service == "" {
			bad("canary-service", "must not be empty with --canary")
		}
		if k.Canary.Interval <= 0 {
			bad("canary-interval", fmt.Sprintf("must be > 0, got %s", k.Canary.Interval.D()))
		}
		if k.Canary.MaxLag <= 0 {
			bad("canary-max-lag", fmt.Sprintf("must be > 0, got %s", k.Canary.MaxLag.D()))
		}
	}
	if le := k.LeaderElection; le.Enabled {
		if le.Lease == "" {
			bad("leader-elect-lease", "must not be empty with --leader-elect")
		}
		ld, rd, rp := le.LeaseDuration.D(), le.RenewDeadline.D(), le.RetryPeriod.D()
		if !(ld > rd && float64(rd) > 1.2*float64(rp) && rp > 0) {
			badKey("kubernetes.leaderElection", fmt.Sprintf("leaseDuration (%v) > renewDeadline (%v) > 1.2 x retryPeriod (%v) > 0 is required", ld, rd, rp))
		}
	}
}

// keyPrefix names the config file before a key ("healer.yaml: "), or nothing.
func (c *Config) keyPrefix() string {
	if c.File != "" {
		return c.File + ": "
	}
	return ""
}
