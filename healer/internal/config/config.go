// Package config is the healer's configuration, defined once: every setting is a field of
// Config with its default (Default), its file key (the json tag; --config is YAML decoded
// straight onto the defaults) and, for most, a flag (AddFlags) that wins over the file.
// Validate reports every bad value at once, naming the flag or the file key. The other
// packages are handed the section they use and never default or validate it again.
package config

import (
	"time"

	"github.com/dnspulse/dnspulse/healer/internal/check"
	"github.com/dnspulse/dnspulse/healer/internal/replica"
)

// DefaultKubeCheck is the check used in Kubernetes mode when none is configured: every
// cluster DNS answers it.
const DefaultKubeCheck = "kubernetes.default.svc.cluster.local/A"

// Config is everything the healer is told.
type Config struct {
	// Targets are the static-mode replicas, NAME=HOST:PORT[@PULSEHOST:PORT] (--target).
	Targets []string `json:"targets"`
	// Checks are the file's checks, each with its own expectation; CheckFlags the --check
	// values (NOERROR and an answer agreeing with the majority). Both are used.
	Checks     []CheckSpec `json:"checks"`
	CheckFlags []string    `json:"-"`

	Probe      Probe      `json:"probe"`
	Heartbeat  Heartbeat  `json:"heartbeat"`
	Thresholds Thresholds `json:"thresholds"`
	Guards     Guards     `json:"guards"`
	Kubernetes Kubernetes `json:"kubernetes"`
	Static     Static     `json:"static"`

	// AuditLog is the file the audit log is appended to; "-" is stdout (--audit-log).
	AuditLog string `json:"auditLog"`
	// MetricsAddr serves /metrics, /healthz and /readyz; "" serves nothing (--metrics-addr).
	MetricsAddr string `json:"metricsAddr"`
	// PprofAddr serves Go's profiles (/debug/pprof/); "" serves nothing (--pprof-addr).
	PprofAddr string `json:"pprofAddr"`

	// File is the --config file, "" for none; Version is --version.
	File    string `json:"-"`
	Version bool   `json:"-"`

	// Resolved by Parse from the fields above.
	StaticTargets []replica.Target `json:"-"`
	CheckList     []check.Check    `json:"-"`
}

// Probe is the external view's schedule (package probe).
type Probe struct {
	// Interval between two probes of a replica, per check (--probe-interval).
	Interval Duration `json:"interval"`
	// Timeout is the hard bound of one probe (--probe-timeout); MinTimeout the floor of the
	// adaptive timeout, clamp(8 x the replica's own latency, MinTimeout, Timeout).
	Timeout    Duration `json:"timeout"`
	MinTimeout Duration `json:"minTimeout"`
	// MaxQPS caps the probes of all replicas and checks together (--max-probe-qps); 0
	// sets no cap but the schedule itself (replicas x checks / Interval). A cap below the
	// schedule probes every replica less often, evenly, and says so at start-up.
	MaxQPS int `json:"maxQPS"`
}

// Heartbeat is the internal view's schedule (package hbreader).
type Heartbeat struct {
	// Stream watches every replica's heartbeat as a stream (GET /pulse?watch=1), polling
	// only an older pulse and a suspect replica; false polls every replica every Interval
	// (--pulse-stream).
	Stream bool `json:"stream"`
	// Interval between two polls of a replica's heartbeat, and between two reports of a
	// stalled stream (--pulse-interval).
	Interval   Duration `json:"interval"`
	Timeout    Duration `json:"timeout"`
	MinTimeout Duration `json:"minTimeout"`
	// Port is the pulse listener's port on the CoreDNS pods (--pulse-port); the pod
	// annotation dnspulse.io/pulse-port overrides it.
	Port int `json:"port"`
}

// Guards decide whether an action is safe (docs/design.md, "Guards").
type Guards struct {
	DryRun bool `json:"dryRun"`
	// MinAvailable healthy peers must remain for an action.
	MinAvailable int `json:"minAvailable"`
	// MaxDegraded: no action when more replicas than this are degraded.
	MaxDegraded int `json:"maxDegraded"`
	// Cooldown per replica and GlobalCooldown between any two actions.
	Cooldown       Duration `json:"cooldown"`
	GlobalCooldown Duration `json:"globalCooldown"`
	// RetryBackoff is the first wait after a blocked or failed remediation, doubled up to
	// RetryBackoffMax, unless the remediator says how long.
	RetryBackoff    Duration `json:"retryBackoff"`
	RetryBackoffMax Duration `json:"retryBackoffMax"`
	// RemediateAfter: a replica must have stayed degraded this long.
	RemediateAfter Duration `json:"remediateAfter"`
	// WarmUp: a replica must have been Ready this long (also how long it is young: R14).
	WarmUp Duration `json:"warmUp"`
	// FlapCount entries into degraded within FlapWindow make a replica flapping: acted on
	// without waiting RemediateAfter (G1), one aggregated Event. File keys only.
	FlapCount  int      `json:"flapCount"`
	FlapWindow Duration `json:"flapWindow"`
	// DrainsPerWindow drains of one replica within DrainWindow at most: a noisy replica
	// cannot churn the EndpointSlices. File keys only.
	DrainsPerWindow int      `json:"drainsPerWindow"`
	DrainWindow     Duration `json:"drainWindow"`
	// EvictionsPerOwner and EvictionsPerNode in an hour at most (G12); spent: an Event and
	// no action. File keys only.
	EvictionsPerOwner int `json:"evictionsPerOwner"`
	EvictionsPerNode  int `json:"evictionsPerNode"`
	// PartitionAfter: a replica degraded on unreachability alone that the cluster still
	// sees serving (the kubelet's readiness, its Lease) this long is reported as cut off
	// from the healer, and undrained (G13). File key only.
	PartitionAfter Duration `json:"partitionAfter"`
	// ReplacementTimeout: an eviction stays in flight until its replacement is Ready and
	// judged healthy, or this long (G5). File key only.
	ReplacementTimeout Duration `json:"replacementTimeout"`
}

// Kubernetes is Kubernetes mode (package kube).
type Kubernetes struct {
	// Kubeconfig is a kubeconfig file; "" means in-cluster config.
	Kubeconfig string `json:"kubeconfig"`
	// Namespace and Selector find the CoreDNS pods; Service is the DNS Service whose
	// EndpointSlices give the DNS port.
	Namespace string `json:"namespace"`
	Selector  string `json:"selector"`
	Service   string `json:"service"`
	// ClusterDomain is the cluster's DNS domain (the canary's question).
	ClusterDomain string `json:"clusterDomain"`
	Canary        Canary `json:"canary"`
	// ReadinessGate sets the pod condition dnspulse.io/serving=False before evicting.
	ReadinessGate bool `json:"readinessGate"`
	// AllowDelete permits DELETE when the Eviction API is unavailable (404/405), never on 429.
	AllowDelete    bool           `json:"allowDelete"`
	LeaderElection LeaderElection `json:"leaderElection"`
	// PulseLeaseNamespace is where the CoreDNS replicas keep their pulse Leases (the
	// Corefile's `lease NAMESPACE`), one named after each pod; "" reads none. A Lease is the
	// replica's own word through the apiserver, independent of the healer's network path
	// (docs/design.md, "Reachability is not proof").
	PulseLeaseNamespace string `json:"pulseLeaseNamespace"`
}

// Canary is the freshness canary: an ExternalName Service the leader rotates.
type Canary struct {
	Enabled bool `json:"enabled"`
	// Namespace defaults to $POD_NAMESPACE, else Kubernetes.Namespace.
	Namespace string   `json:"namespace"`
	Service   string   `json:"service"`
	Interval  Duration `json:"interval"`
	// MaxLag is how long a replica may keep answering the previous value.
	MaxLag Duration `json:"maxLag"`
}

// LeaderElection makes only one healer act.
type LeaderElection struct {
	Enabled bool `json:"enabled"`
	// Namespace defaults to the canary namespace.
	Namespace string `json:"namespace"`
	Lease     string `json:"lease"`
	// LeaseDuration > RenewDeadline > 1.2 x RetryPeriod (client-go's rule); a crashed
	// leader is replaced after LeaseDuration. File keys only, no flags.
	LeaseDuration Duration `json:"leaseDuration"`
	RenewDeadline Duration `json:"renewDeadline"`
	RetryPeriod   Duration `json:"retryPeriod"`
}

// Static is static mode's remediation.
type Static struct {
	// RemediateExec is run with the replica's name appended (--remediate-exec).
	RemediateExec    string   `json:"remediateExec"`
	RemediateTimeout Duration `json:"remediateTimeout"`
}

// Default returns the defaults.
func Default() *Config {
	return &Config{
		Probe: Probe{
			Interval: D(20 * time.Millisecond), Timeout: D(100 * time.Millisecond), MinTimeout: D(40 * time.Millisecond),
			MaxQPS: 0,
		},
		Heartbeat: Heartbeat{
			Stream:   true,
			Interval: D(20 * time.Millisecond), Timeout: D(100 * time.Millisecond), MinTimeout: D(40 * time.Millisecond),
			Port: 9155,
		},
		Thresholds: DefaultThresholds(),
		Guards: Guards{
			MinAvailable: 1, MaxDegraded: 1,
			Cooldown: D(5 * time.Minute), GlobalCooldown: D(time.Minute),
			RetryBackoff: D(5 * time.Second), RetryBackoffMax: D(2 * time.Minute),
			RemediateAfter: D(time.Second), WarmUp: D(10 * time.Second),
			FlapCount: 3, FlapWindow: D(5 * time.Minute),
			DrainsPerWindow: 3, DrainWindow: D(10 * time.Minute),
			EvictionsPerOwner: 5, EvictionsPerNode: 3,
			PartitionAfter: D(45 * time.Second), ReplacementTimeout: D(2 * time.Minute),
		},
		Kubernetes: Kubernetes{
			Namespace: "kube-system", Selector: "k8s-app=kube-dns", Service: "kube-dns", ClusterDomain: "cluster.local",
			Canary: Canary{Enabled: true, Service: "dnspulse-canary", Interval: D(5 * time.Second), MaxLag: D(3 * time.Second)},
			LeaderElection: LeaderElection{
				Enabled: true, Lease: "dnspulse-healer",
				// kube-controller-manager's timings.
				LeaseDuration: D(15 * time.Second), RenewDeadline: D(10 * time.Second), RetryPeriod: D(2 * time.Second),
			},
		},
		Static:      Static{RemediateTimeout: D(30 * time.Second)},
		AuditLog:    "-",
		MetricsAddr: ":9156",
	}
}

// IsStatic says whether the healer runs in static mode (targets from flags or the file).
func (c *Config) IsStatic() bool { return len(c.Targets) > 0 }
