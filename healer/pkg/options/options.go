// Package options holds the healer's configuration: flags (pflag), an optional YAML file
// for checks, thresholds and guards, defaults, and Validate, which reports every bad value
// at once naming the flag or the config key. Flags given on the command line take
// precedence over the file.
package options

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"
	"github.com/spf13/pflag"
	"sigs.k8s.io/yaml"

	"github.com/dnspulse/dnspulse/healer/pkg/detect"
	"github.com/dnspulse/dnspulse/healer/pkg/probe"
	"github.com/dnspulse/dnspulse/healer/pkg/replica"
)

// DefaultKubeCheck is the check used in Kubernetes mode when none is configured: every
// cluster DNS answers it.
const DefaultKubeCheck = "kubernetes.default.svc.cluster.local/A"

// Options is everything the healer is told.
type Options struct {
	Targets    []string
	Checks     []string
	ConfigFile string

	ProbeInterval time.Duration
	ProbeTimeout  time.Duration
	// ProbeMinTimeout is the floor of the adaptive probe timeout (see probe.Config).
	ProbeMinTimeout time.Duration
	MaxProbeQPS     int
	PulseInterval   time.Duration
	PulseTimeout    time.Duration
	PulseMinTimeout time.Duration
	PulsePort       int

	DryRun           bool
	RemediateExec    string
	RemediateTimeout time.Duration
	AuditLog         string
	MetricsAddr      string

	Kubeconfig      string
	Namespace       string
	Selector        string
	Service         string
	Canary          bool
	CanaryNamespace string
	CanaryService   string
	CanaryInterval  time.Duration
	CanaryMaxLag    time.Duration
	ReadinessGate   bool
	AllowDelete     bool

	MinAvailable   int
	MaxDegraded    int
	Cooldown       time.Duration
	GlobalCooldown time.Duration
	// RetryBackoff is the first wait after a blocked remediation (PDB), doubled up to
	// RetryBackoffMax, unless the Remediator says how long (Outcome.RetryAfter).
	RetryBackoff    time.Duration
	RetryBackoffMax time.Duration
	// RemediateAfter: how long a replica must stay degraded before it is acted on.
	RemediateAfter time.Duration
	// WarmUp: how long a replica must have been Ready before it may be acted on.
	WarmUp time.Duration

	LeaderElect          bool
	LeaderElectNamespace string
	LeaderElectLease     string

	Version bool

	// Thresholds come from the config file (detect.DefaultThresholds otherwise).
	Thresholds detect.Thresholds

	// Filled by Complete.
	StaticTargets []replica.Target
	CheckSpecs    []probe.Check
}

// New returns the defaults.
func New() *Options {
	return &Options{
		ProbeInterval:    20 * time.Millisecond,
		ProbeTimeout:     100 * time.Millisecond,
		ProbeMinTimeout:  40 * time.Millisecond,
		MaxProbeQPS:      500,
		PulseInterval:    20 * time.Millisecond,
		PulseTimeout:     100 * time.Millisecond,
		PulseMinTimeout:  40 * time.Millisecond,
		PulsePort:        9155,
		RemediateTimeout: 30 * time.Second,
		AuditLog:         "-",
		MetricsAddr:      ":9156",
		Namespace:        "kube-system",
		Selector:         "k8s-app=kube-dns",
		Service:          "kube-dns",
		Canary:           true,
		CanaryService:    "dnspulse-canary",
		CanaryInterval:   5 * time.Second,
		CanaryMaxLag:     3 * time.Second,
		MinAvailable:     1,
		MaxDegraded:      1,
		Cooldown:         5 * time.Minute,
		GlobalCooldown:   time.Minute,
		RetryBackoff:     5 * time.Second,
		RetryBackoffMax:  2 * time.Minute,
		RemediateAfter:   time.Second,
		WarmUp:           10 * time.Second,
		LeaderElect:      true,
		LeaderElectLease: "dnspulse-healer",
		Thresholds:       detect.DefaultThresholds(),
	}
}

// AddFlags binds every flag to o.
func (o *Options) AddFlags(fs *pflag.FlagSet) {
	fs.StringArrayVar(&o.Targets, "target", o.Targets, "static mode: a replica as NAME=HOST:PORT[@PULSEHOST:PORT] (repeatable)")
	fs.StringArrayVar(&o.Checks, "check", o.Checks, "a probe QNAME[/QTYPE] expecting NOERROR and an answer agreeing with the majority (repeatable; default "+DefaultKubeCheck+" in Kubernetes mode)")
	fs.StringVar(&o.ConfigFile, "config", o.ConfigFile, "optional YAML file with checks, thresholds and guards (flags take precedence)")
	fs.DurationVar(&o.ProbeInterval, "probe-interval", o.ProbeInterval, "time between two probes of a replica, per check")
	fs.DurationVar(&o.ProbeTimeout, "probe-timeout", o.ProbeTimeout, "hard timeout of one probe")
	fs.DurationVar(&o.ProbeMinTimeout, "probe-min-timeout", o.ProbeMinTimeout, "floor of the adaptive probe timeout (8 x the replica's own latency, at most --probe-timeout)")
	fs.IntVar(&o.MaxProbeQPS, "max-probe-qps", o.MaxProbeQPS, "cap on the probes per second of all replicas and checks together")
	fs.DurationVar(&o.PulseInterval, "pulse-interval", o.PulseInterval, "time between two polls of a replica's /pulse")
	fs.DurationVar(&o.PulseTimeout, "pulse-timeout", o.PulseTimeout, "hard timeout of one /pulse poll")
	fs.DurationVar(&o.PulseMinTimeout, "pulse-min-timeout", o.PulseMinTimeout, "floor of the adaptive /pulse timeout")
	fs.IntVar(&o.PulsePort, "pulse-port", o.PulsePort, "pulse listener port of the CoreDNS pods (pod annotation dnspulse.io/pulse-port overrides)")
	fs.BoolVar(&o.DryRun, "dry-run", o.DryRun, "decide and log, but never act")
	fs.StringVar(&o.RemediateExec, "remediate-exec", o.RemediateExec, "static mode: command run to replace a degraded replica; its name is appended")
	fs.DurationVar(&o.RemediateTimeout, "remediate-timeout", o.RemediateTimeout, "static mode: time limit of --remediate-exec")
	fs.StringVar(&o.AuditLog, "audit-log", o.AuditLog, `file the audit log (JSON lines) is appended to; "-" is stdout`)
	fs.StringVar(&o.MetricsAddr, "metrics-addr", o.MetricsAddr, "HOST:PORT serving /metrics, /healthz and /readyz")
	fs.StringVar(&o.Kubeconfig, "kubeconfig", o.Kubeconfig, "kubeconfig file (default: in-cluster config)")
	fs.StringVar(&o.Namespace, "namespace", o.Namespace, "namespace of the CoreDNS pods")
	fs.StringVar(&o.Selector, "selector", o.Selector, "label selector of the CoreDNS pods")
	fs.StringVar(&o.Service, "service", o.Service, "the DNS Service whose EndpointSlices are watched")
	fs.BoolVar(&o.Canary, "canary", o.Canary, "run the freshness canary (an ExternalName Service the healer rotates)")
	fs.StringVar(&o.CanaryNamespace, "canary-namespace", o.CanaryNamespace, "namespace of the canary Service (default: $POD_NAMESPACE, else --namespace)")
	fs.StringVar(&o.CanaryService, "canary-service", o.CanaryService, "name of the canary Service")
	fs.DurationVar(&o.CanaryInterval, "canary-interval", o.CanaryInterval, "time between two rotations of the canary")
	fs.DurationVar(&o.CanaryMaxLag, "canary-max-lag", o.CanaryMaxLag, "how long a replica may keep answering the previous canary value")
	fs.BoolVar(&o.ReadinessGate, "readiness-gate", o.ReadinessGate, "set the pod condition dnspulse.io/serving=False before evicting")
	fs.BoolVar(&o.AllowDelete, "allow-delete", o.AllowDelete, "fall back to DELETE when the Eviction API is not available (never on a PDB refusal)")
	fs.IntVar(&o.MinAvailable, "min-available", o.MinAvailable, "healthy peers that must remain for an action")
	fs.IntVar(&o.MaxDegraded, "max-degraded", o.MaxDegraded, "no action when more replicas than this are degraded")
	fs.DurationVar(&o.Cooldown, "cooldown", o.Cooldown, "minimum time between two remediations of the same replica")
	fs.DurationVar(&o.GlobalCooldown, "global-cooldown", o.GlobalCooldown, "minimum time between any two remediations")
	fs.DurationVar(&o.RetryBackoff, "retry-backoff", o.RetryBackoff, "first wait after a blocked remediation (doubles up to --retry-backoff-max)")
	fs.DurationVar(&o.RetryBackoffMax, "retry-backoff-max", o.RetryBackoffMax, "longest wait between retries of a blocked remediation")
	fs.DurationVar(&o.RemediateAfter, "remediate-after", o.RemediateAfter, "act on a replica only once it has stayed degraded this long (the verdict itself is not delayed)")
	fs.DurationVar(&o.WarmUp, "warm-up", o.WarmUp, "act on a replica only once it has been Ready this long (a fresh replacement, or any replica right after the healer starts, is judged but not remediated)")
	fs.BoolVar(&o.LeaderElect, "leader-elect", o.LeaderElect, "Kubernetes mode: only the holder of a Lease acts")
	fs.StringVar(&o.LeaderElectNamespace, "leader-elect-namespace", o.LeaderElectNamespace, "namespace of the leader Lease (default: the canary namespace)")
	fs.StringVar(&o.LeaderElectLease, "leader-elect-lease", o.LeaderElectLease, "name of the leader Lease")
	fs.BoolVar(&o.Version, "version", o.Version, "print the version and exit")
}

// Static says whether the healer runs in static mode (targets from flags or the file).
func (o *Options) Static() bool { return len(o.Targets) > 0 }

// File is the YAML config file. Durations are Go duration strings ("250ms").
type File struct {
	Checks     []FileCheck     `json:"checks"`
	Targets    []string        `json:"targets"`
	Thresholds *FileThresholds `json:"thresholds"`
	Guards     *FileGuards     `json:"guards"`
}

// FileCheck is one check with its own expectation.
type FileCheck struct {
	Name   string `json:"name"`
	Type   string `json:"type"`
	Expect struct {
		Rcode string `json:"rcode"`
		// Answers is "majority" (default) or a list of exact rdata strings.
		Answers any `json:"answers"`
	} `json:"expect"`
}

// FileThresholds overrides detect.Thresholds (unset keys keep their defaults).
type FileThresholds struct {
	RecentProbes     *int      `json:"recentProbes"`
	Window           *Duration `json:"window"`
	MinFailures      *int      `json:"minFailures"`
	RecoverSuccesses *int      `json:"recoverSuccesses"`
	LatencyMargin    *Duration `json:"latencyMargin"`
	LatencyFactor    *float64  `json:"latencyFactor"`
	AnswerMismatches *int      `json:"answerMismatches"`
	AnswerGrace      *Duration `json:"answerGrace"`
	CanaryMisses     *int      `json:"canaryMisses"`
	ServfailMargin   *float64  `json:"servfailMargin"`
	NXDomainMargin   *float64  `json:"nxdomainMargin"`
	PulseFailures    *int      `json:"pulseFailures"`
	GlobalSettle     *Duration `json:"globalSettle"`
	GlobalAfter      *Duration `json:"globalAfter"`
}

// FileGuards are the guards and timings that a file may set; the flag of the same
// meaning wins when given.
type FileGuards struct {
	DryRun          *bool     `json:"dryRun"`
	MinAvailable    *int      `json:"minAvailable"`
	MaxDegraded     *int      `json:"maxDegraded"`
	Cooldown        *Duration `json:"cooldown"`
	GlobalCooldown  *Duration `json:"globalCooldown"`
	RetryBackoff    *Duration `json:"retryBackoff"`
	RetryBackoffMax *Duration `json:"retryBackoffMax"`
	RemediateAfter  *Duration `json:"remediateAfter"`
	WarmUp          *Duration `json:"warmUp"`
	ProbeInterval   *Duration `json:"probeInterval"`
	ProbeTimeout    *Duration `json:"probeTimeout"`
	MaxProbeQPS     *int      `json:"maxProbeQPS"`
	PulseInterval   *Duration `json:"pulseInterval"`
	PulseTimeout    *Duration `json:"pulseTimeout"`
}

// Duration reads a Go duration string from YAML.
type Duration time.Duration

// UnmarshalJSON implements json.Unmarshaler (sigs.k8s.io/yaml goes through JSON).
func (d *Duration) UnmarshalJSON(b []byte) error {
	s, err := strconv.Unquote(string(b))
	if err != nil {
		return fmt.Errorf("want a duration string such as \"250ms\", got %s", b)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// Complete reads the config file (if any), applies it under the flags that were set on
// the command line, and parses targets and checks. It returns every problem at once.
func (o *Options) Complete(fs *pflag.FlagSet) error {
	var errs []string
	var fileChecks []FileCheck
	if o.ConfigFile != "" {
		f, err := LoadFile(o.ConfigFile)
		if err != nil {
			errs = append(errs, err.Error())
		} else {
			fileChecks = f.Checks
			if !changed(fs, "target") {
				o.Targets = append(o.Targets, f.Targets...)
			}
			o.applyFile(fs, f)
		}
	}
	for i, s := range o.Targets {
		t, err := ParseTarget(s)
		if err != nil {
			errs = append(errs, fmt.Sprintf("--target[%d]: %v", i, err))
			continue
		}
		o.StaticTargets = append(o.StaticTargets, t)
	}
	seen := map[string]bool{}
	for _, t := range o.StaticTargets {
		if seen[t.Name] {
			errs = append(errs, fmt.Sprintf("--target: replica name %q given twice", t.Name))
		}
		seen[t.Name] = true
	}
	for i, fc := range fileChecks {
		c, err := fc.check()
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s: checks[%d]: %v", o.ConfigFile, i, err))
			continue
		}
		o.CheckSpecs = append(o.CheckSpecs, c)
	}
	for i, s := range o.Checks {
		c, err := probe.ParseCheck(s)
		if err != nil {
			errs = append(errs, fmt.Sprintf("--check[%d]: %v", i, err))
			continue
		}
		o.CheckSpecs = append(o.CheckSpecs, c)
	}
	if len(o.CheckSpecs) == 0 && len(o.Checks) == 0 && len(fileChecks) == 0 && !o.Static() {
		c, _ := probe.ParseCheck(DefaultKubeCheck)
		o.CheckSpecs = append(o.CheckSpecs, c)
	}
	if o.CanaryNamespace == "" {
		o.CanaryNamespace = os.Getenv("POD_NAMESPACE")
		if o.CanaryNamespace == "" {
			o.CanaryNamespace = o.Namespace
		}
	}
	if o.LeaderElectNamespace == "" {
		o.LeaderElectNamespace = o.CanaryNamespace
	}
	return joinErrs(errs)
}

func changed(fs *pflag.FlagSet, name string) bool {
	return fs != nil && fs.Changed(name)
}

func (o *Options) applyFile(fs *pflag.FlagSet, f *File) {
	if g := f.Guards; g != nil {
		setBool(fs, "dry-run", &o.DryRun, g.DryRun)
		setInt(fs, "min-available", &o.MinAvailable, g.MinAvailable)
		setInt(fs, "max-degraded", &o.MaxDegraded, g.MaxDegraded)
		setInt(fs, "max-probe-qps", &o.MaxProbeQPS, g.MaxProbeQPS)
		setDur(fs, "cooldown", &o.Cooldown, g.Cooldown)
		setDur(fs, "global-cooldown", &o.GlobalCooldown, g.GlobalCooldown)
		setDur(fs, "retry-backoff", &o.RetryBackoff, g.RetryBackoff)
		setDur(fs, "retry-backoff-max", &o.RetryBackoffMax, g.RetryBackoffMax)
		setDur(fs, "remediate-after", &o.RemediateAfter, g.RemediateAfter)
		setDur(fs, "warm-up", &o.WarmUp, g.WarmUp)
		setDur(fs, "probe-interval", &o.ProbeInterval, g.ProbeInterval)
		setDur(fs, "probe-timeout", &o.ProbeTimeout, g.ProbeTimeout)
		setDur(fs, "pulse-interval", &o.PulseInterval, g.PulseInterval)
		setDur(fs, "pulse-timeout", &o.PulseTimeout, g.PulseTimeout)
	}
	if t := f.Thresholds; t != nil {
		th := &o.Thresholds
		setInt(nil, "", &th.RecentProbes, t.RecentProbes)
		setDur(nil, "", &th.Window, t.Window)
		setInt(nil, "", &th.MinFailures, t.MinFailures)
		setInt(nil, "", &th.RecoverSuccesses, t.RecoverSuccesses)
		setDur(nil, "", &th.LatencyMargin, t.LatencyMargin)
		if t.LatencyFactor != nil {
			th.LatencyFactor = *t.LatencyFactor
		}
		setInt(nil, "", &th.AnswerMismatches, t.AnswerMismatches)
		setDur(nil, "", &th.AnswerGrace, t.AnswerGrace)
		setInt(nil, "", &th.CanaryMisses, t.CanaryMisses)
		if t.ServfailMargin != nil {
			th.ServfailMargin = *t.ServfailMargin
		}
		if t.NXDomainMargin != nil {
			th.NXDomainMargin = *t.NXDomainMargin
		}
		setInt(nil, "", &th.PulseFailures, t.PulseFailures)
		setDur(nil, "", &th.GlobalSettle, t.GlobalSettle)
		setDur(nil, "", &th.GlobalAfter, t.GlobalAfter)
	}
}

func setBool(fs *pflag.FlagSet, flag string, dst *bool, v *bool) {
	if v != nil && !changed(fs, flag) {
		*dst = *v
	}
}

func setInt(fs *pflag.FlagSet, flag string, dst *int, v *int) {
	if v != nil && !changed(fs, flag) {
		*dst = *v
	}
}

func setDur(fs *pflag.FlagSet, flag string, dst *time.Duration, v *Duration) {
	if v != nil && !changed(fs, flag) {
		*dst = time.Duration(*v)
	}
}

// LoadFile reads and strictly decodes the YAML file: an unknown key is an error naming
// the file and the key, so a typo does not silently keep a default.
func LoadFile(path string) (*File, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--config: %w", err)
	}
	var f File
	if err := yaml.UnmarshalStrict(b, &f); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &f, nil
}

func (fc FileCheck) check() (probe.Check, error) {
	spec := fc.Name
	if fc.Type != "" {
		spec += "/" + fc.Type
	}
	c, err := probe.ParseCheck(spec)
	if err != nil {
		return c, fmt.Errorf("name/type: %w", err)
	}
	if fc.Expect.Rcode != "" {
		r, err := probe.ParseRcode(fc.Expect.Rcode)
		if err != nil {
			return c, fmt.Errorf("expect.rcode: %w", err)
		}
		c.Rcode = r
	}
	switch a := fc.Expect.Answers.(type) {
	case nil:
	case string:
		if a != "majority" {
			return c, fmt.Errorf("expect.answers: %q is neither \"majority\" nor a list", a)
		}
	case []any:
		c.Answers = []string{}
		for i, v := range a {
			s, ok := v.(string)
			if !ok {
				return c, fmt.Errorf("expect.answers[%d]: want a string, got %v", i, v)
			}
			c.Answers = append(c.Answers, s)
		}
	default:
		return c, fmt.Errorf("expect.answers: want \"majority\" or a list of strings, got %v", a)
	}
	return c, nil
}

// ParseTarget reads NAME=HOST:PORT[@PULSEHOST:PORT].
func ParseTarget(s string) (replica.Target, error) {
	name, rest, ok := strings.Cut(s, "=")
	if !ok || name == "" {
		return replica.Target{}, fmt.Errorf("%q: want NAME=HOST:PORT[@PULSEHOST:PORT]", s)
	}
	dnsAddr, pulseAddr, _ := strings.Cut(rest, "@")
	if err := checkHostPort(dnsAddr); err != nil {
		return replica.Target{}, fmt.Errorf("%q: DNS address: %w", s, err)
	}
	if pulseAddr != "" {
		if err := checkHostPort(pulseAddr); err != nil {
			return replica.Target{}, fmt.Errorf("%q: pulse address: %w", s, err)
		}
	}
	return replica.Target{Name: name, DNSAddr: dnsAddr, PulseAddr: pulseAddr, Ready: true, Remediable: true}, nil
}

func checkHostPort(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return err
	}
	if host == "" {
		return errors.New("empty host")
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("port %q out of [1,65535]", port)
	}
	return nil
}

// Validate reports every bad value at once, each naming its flag or config key.
func (o *Options) Validate() error {
	var errs []string
	bad := func(flag, why string) { errs = append(errs, "--"+flag+": "+why) }
	positive := func(flag string, d time.Duration) {
		if d <= 0 {
			bad(flag, fmt.Sprintf("must be > 0, got %s", d))
		}
	}
	positive("probe-interval", o.ProbeInterval)
	positive("probe-timeout", o.ProbeTimeout)
	positive("probe-min-timeout", o.ProbeMinTimeout)
	positive("pulse-interval", o.PulseInterval)
	positive("pulse-timeout", o.PulseTimeout)
	positive("pulse-min-timeout", o.PulseMinTimeout)
	positive("remediate-timeout", o.RemediateTimeout)
	positive("canary-interval", o.CanaryInterval)
	positive("canary-max-lag", o.CanaryMaxLag)
	positive("retry-backoff", o.RetryBackoff)
	positive("retry-backoff-max", o.RetryBackoffMax)
	if o.Cooldown < 0 {
		bad("cooldown", "must be >= 0")
	}
	if o.RemediateAfter < 0 {
		bad("remediate-after", "must be >= 0")
	}
	if o.WarmUp < 0 {
		bad("warm-up", "must be >= 0")
	}
	if o.GlobalCooldown < 0 {
		bad("global-cooldown", "must be >= 0")
	}
	if o.MaxProbeQPS < 1 {
		bad("max-probe-qps", fmt.Sprintf("must be >= 1, got %d", o.MaxProbeQPS))
	}
	if o.PulsePort < 1 || o.PulsePort > 65535 {
		bad("pulse-port", fmt.Sprintf("%d out of [1,65535]", o.PulsePort))
	}
	if o.MinAvailable < 0 {
		bad("min-available", "must be >= 0")
	}
	if o.MaxDegraded < 1 {
		bad("max-degraded", "must be >= 1")
	}
	if o.MetricsAddr != "" {
		if _, _, err := net.SplitHostPort(o.MetricsAddr); err != nil {
			bad("metrics-addr", err.Error())
		}
	}
	if o.AuditLog == "" {
		bad("audit-log", `must be a file or "-"`)
	}
	if o.RemediateExec != "" && !o.Static() {
		bad("remediate-exec", "only in static mode (with --target)")
	}
	if o.Static() && len(o.CheckSpecs) == 0 && len(o.Checks) == 0 {
		bad("check", "static mode needs at least one --check (or checks in --config)")
	}
	if o.Static() && o.Kubeconfig != "" {
		bad("kubeconfig", "not used in static mode (with --target)")
	}
	if o.Selector == "" && !o.Static() {
		bad("selector", "must not be empty")
	}
	prefix := "thresholds."
	if o.ConfigFile != "" {
		prefix = o.ConfigFile + ": thresholds."
	}
	errs = append(errs, o.Thresholds.Validate(prefix)...)
	for _, c := range o.CheckSpecs {
		if c.Type == dns.TypeNone {
			bad("check", c.Name+": no type")
		}
	}
	return joinErrs(errs)
}

func joinErrs(errs []string) error {
	if len(errs) == 0 {
		return nil
	}
	return errors.New(strings.Join(errs, "\n"))
}
