package config

import "github.com/spf13/pflag"

// AddFlags binds every flag to its field of c; a flag's default is the field's value
// when AddFlags is called (the default, or the --config file's value).
func (c *Config) AddFlags(fs *pflag.FlagSet) {
	fs.StringArrayVar(&c.Targets, "target", c.Targets, "static mode: a replica as NAME=HOST:PORT[@PULSEHOST:PORT] (repeatable)")
	fs.StringArrayVar(&c.CheckFlags, "check", c.CheckFlags, "a probe QNAME[/QTYPE] expecting NOERROR and an answer agreeing with the majority (repeatable; default "+DefaultKubeCheck+" in Kubernetes mode)")
	fs.StringVar(&c.File, "config", c.File, "optional YAML file setting any of these (see docs/design.md); flags take precedence")

	p := &c.Probe
	fs.Var(&p.Interval, "probe-interval", "time between two probes of a replica, per check")
	fs.Var(&p.Timeout, "probe-timeout", "hard timeout of one probe")
	fs.Var(&p.MinTimeout, "probe-min-timeout", "floor of the adaptive probe timeout (8 x the replica's own latency, at most --probe-timeout)")
	fs.IntVar(&p.MaxQPS, "max-probe-qps", p.MaxQPS, "cap on the probes per second of all replicas and checks together; 0: none but the schedule (replicas x checks / --probe-interval); below that, every replica is probed less often (said at start-up)")

	h := &c.Heartbeat
	fs.BoolVar(&h.Stream, "pulse-stream", h.Stream, "watch every replica's heartbeat as a stream (GET /pulse?watch=1), polling only an older pulse and a suspect replica; false polls every replica every --pulse-interval")
	fs.Var(&h.Interval, "pulse-interval", "time between two polls of a replica's /pulse (an older pulse, a suspect replica, or --pulse-stream=false)")
	fs.Var(&h.Timeout, "pulse-timeout", "hard timeout of one /pulse poll, and of opening a stream")
	fs.Var(&h.MinTimeout, "pulse-min-timeout", "floor of the adaptive /pulse timeout")
	fs.IntVar(&h.Port, "pulse-port", h.Port, "pulse listener port of the CoreDNS pods (pod annotation dnspulse.io/pulse-port overrides)")

	g := &c.Guards
	fs.BoolVar(&g.DryRun, "dry-run", g.DryRun, "decide and log, but never act")
	fs.IntVar(&g.MinAvailable, "min-available", g.MinAvailable, "healthy peers that must remain for an action")
	fs.IntVar(&g.MaxDegraded, "max-degraded", g.MaxDegraded, "no action when more replicas than this are degraded")
	fs.Var(&g.Cooldown, "cooldown", "minimum time between two remediations of the same replica")
	fs.Var(&g.GlobalCooldown, "global-cooldown", "minimum time between any two remediations")
	fs.Var(&g.RetryBackoff, "retry-backoff", "first wait after a blocked remediation (doubles up to --retry-backoff-max)")
	fs.Var(&g.RetryBackoffMax, "retry-backoff-max", "longest wait between retries of a blocked remediation")
	fs.Var(&g.RemediateAfter, "remediate-after", "act on a replica only once it has stayed degraded this long (the judgment itself is not delayed)")
	fs.Var(&g.WarmUp, "warm-up", "act on a replica only once it has been Ready this long (a fresh replacement, or any replica right after the healer starts, is judged but not remediated)")

	s := &c.Static
	fs.StringVar(&s.RemediateExec, "remediate-exec", s.RemediateExec, "static mode: command run to replace a degraded replica; its name is appended")
	fs.Var(&s.RemediateTimeout, "remediate-timeout", "static mode: time limit of --remediate-exec")

	fs.StringVar(&c.AuditLog, "audit-log", c.AuditLog, `file the audit log (JSON lines) is appended to; "-" is stdout`)
	fs.StringVar(&c.MetricsAddr, "metrics-addr", c.MetricsAddr, "HOST:PORT serving /metrics, /healthz and /readyz")
	fs.StringVar(&c.PprofAddr, "pprof-addr", c.PprofAddr, `HOST:PORT serving Go's profiles at /debug/pprof/ (e.g. 127.0.0.1:6060); "" serves none`)

	k := &c.Kubernetes
	fs.StringVar(&k.Kubeconfig, "kubeconfig", k.Kubeconfig, "kubeconfig file (default: in-cluster config)")
	fs.StringVar(&k.Namespace, "namespace", k.Namespace, "namespace of the CoreDNS pods")
	fs.StringVar(&k.Selector, "selector", k.Selector, "label selector of the CoreDNS pods")
	fs.StringVar(&k.Service, "service", k.Service, "the DNS Service whose EndpointSlices are watched")
	fs.StringVar(&k.ClusterDomain, "cluster-domain", k.ClusterDomain, "the cluster's DNS domain: the canary's and the default check's, and the names every replica must answer alike")
	fs.BoolVar(&k.Canary.Enabled, "canary", k.Canary.Enabled, "run the freshness canary (an ExternalName Service the healer rotates)")
	fs.StringVar(&k.Canary.Namespace, "canary-namespace", k.Canary.Namespace, "namespace of the canary Service (default: $POD_NAMESPACE, else --namespace)")
	fs.StringVar(&k.Canary.Service, "canary-service", k.Canary.Service, "name of the canary Service")
	fs.Var(&k.Canary.Interval, "canary-interval", "time between two rotations of the canary")
	fs.Var(&k.Canary.MaxLag, "canary-max-lag", "how long a replica may keep answering the previous canary value")
	fs.BoolVar(&k.ReadinessGate, "readiness-gate", k.ReadinessGate, "set the pod condition dnspulse.io/serving=False before evicting")
	fs.BoolVar(&k.AllowDelete, "allow-delete", k.AllowDelete, "fall back to DELETE when the Eviction API is not available (never on a PDB refusal)")
	fs.StringVar(&k.PulseLeaseNamespace, "pulse-lease-namespace", k.PulseLeaseNamespace, "namespace of the CoreDNS replicas' pulse Leases (Corefile: pulse { lease NAMESPACE }); empty: none are read")
	fs.BoolVar(&k.LeaderElection.Enabled, "leader-elect", k.LeaderElection.Enabled, "Kubernetes mode: only the holder of a Lease acts")
	fs.StringVar(&k.LeaderElection.Namespace, "leader-elect-namespace", k.LeaderElection.Namespace, "namespace of the leader Lease (default: the canary namespace)")
	fs.StringVar(&k.LeaderElection.Lease, "leader-elect-lease", k.LeaderElection.Lease, "name of the leader Lease")

	fs.BoolVar(&c.Version, "version", c.Version, "print the version and exit")
}
