package pulse

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/pkg/uniq"

	"github.com/miekg/dns"
)

func init() { plugin.Register("pulse", setup) }

// runners holds the runner of each listener address for the instance being started:
// two server blocks with the same pulse address share one listener, as with ready.
var runners = uniq.New()

func setup(c *caddy.Controller) error {
	cfg, err := parse(c)
	if err != nil {
		return plugin.Error("pulse", err)
	}
	srvCfg := dnsserver.GetConfig(c)
	defaultName := defaultProbeName(srvCfg.Zone)
	if cfg.probeName == "" {
		cfg.probeName = defaultName
	}
	h := hubFor(cfg.addr, runtime.GOMAXPROCS(0))
	p := &Pulse{hub: h, probeName: strings.ToLower(cfg.probeName), answerProbe: strings.EqualFold(cfg.probeName, defaultName)}

	r := &runner{cfg: cfg, hub: h}
	startRunner := func() error {
		r.probeAddr, r.probeWhy = probeTarget(srvCfg)
		if cfg.lease {
			l, err := newInClusterLeaser(cfg.leaseNamespace, cfg.replica)
			if err != nil {
				// The Lease is an extra; DNS must come up without it. Say so loudly.
				log.Errorf("lease heartbeat disabled: %v", err)
			} else {
				r.lease = l
			}
		}
		if cfg.gate != "" {
			g, err := newInClusterGateKeeper(cfg.gate, cfg.maxDrain)
			if err != nil {
				// DNS comes up without it; the pod may stay unready until the healer opens it.
				log.Errorf("readiness gate not kept open by pulse: %v", err)
			} else {
				r.gate = g
			}
		}
		return r.start()
	}
	c.OnStartup(func() error { p.traced = srvCfg.Handler("trace") != nil; return nil })
	runners.Set(cfg.addr, startRunner)
	c.OnStartup(func() error { return runners.ForEach() })
	c.OnRestartFailed(func() error { runners.Set(cfg.addr, startRunner); return runners.ForEach() })
	stop := func() error { runners.Unset(cfg.addr); return r.stop() }
	c.OnRestart(stop)
	c.OnFinalShutdown(func() error {
		err := stop()
		if r.lease != nil {
			r.lease.release(context.Background()) // a reload keeps it; an exit removes it
		}
		return err
	})

	srvCfg.AddPlugin(func(next plugin.Handler) plugin.Handler {
		p.Next = next
		return p
	})
	return nil
}

func defaultProbeName(zone string) string {
	zone = dns.Fqdn(zone)
	if zone == "." {
		return "dnspulse-self-probe."
	}
	return strings.ToLower("dnspulse-self-probe." + zone)
}

// probeTarget is where the self-probe goes: the server block's own listener, on
// loopback when it listens on every address.
func probeTarget(c *dnsserver.Config) (addr, why string) {
	if c.Transport != "" && c.Transport != "dns" {
		return "", "transport " + c.Transport + " is not plain DNS"
	}
	if c.Port == "0" {
		// The kernel picks the port when the server listens, after pulse starts.
		return "", "port 0 is chosen at listen time"
	}
	host := ""
	if len(c.ListenHosts) > 0 {
		host = c.ListenHosts[0]
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
		if ip != nil && ip.To4() == nil {
			host = "::1"
		}
	}
	return net.JoinHostPort(host, c.Port), ""
}

func parse(c *caddy.Controller) (config, error) {
	cfg := defaultConfig()
	seen := false
	for c.Next() {
		if seen {
			return cfg, plugin.ErrOnce
		}
		seen = true
		args := c.RemainingArgs()
		switch len(args) {
		case 0:
		case 1:
			if err := parseAddr(c, args[0]); err != nil {
				return cfg, err
			}
			cfg.addr = args[0]
		default:
			return cfg, c.ArgErr()
		}
		for c.NextBlock() {
			if err := parseOption(c, &cfg); err != nil {
				return cfg, err
			}
		}
	}
	if cfg.replica == "" {
		cfg.replica = defaultReplica()
	}
	if cfg.gate == "" && cfg.maxDrain != defaultMaxDrain {
		return cfg, c.Errf("readiness_gate_max_drain without readiness_gate")
	}
	if cfg.probeTimeout > 0 && cfg.probeTimeout > cfg.tick*10 {
		return cfg, c.Errf("self_probe_timeout %v is longer than ten ticks (%v)", cfg.probeTimeout, cfg.tick)
	}
	return cfg, nil
}

// parseOption reads one line of the block; each option has its own small parser.
func parseOption(c *caddy.Controller, cfg *config) error {
	var err error
	switch c.Val() {
	case "tick":
		cfg.tick, err = parseDuration(c, 10*time.Millisecond, 10*time.Second)
	case "self_probe":
		cfg.probeName, cfg.probeType, err = parseSelfProbe(c)
	case "self_probe_timeout":
		cfg.probeTimeout, err = parseDuration(c, time.Millisecond, time.Second)
	case "replica":
		cfg.replica, err = parseWord(c)
	case "servfail_ratio":
		cfg.servfailRatio, err = parseRatio(c)
	case "p99":
		cfg.p99, err = parseDuration(c, time.Millisecond, time.Minute)
	case "min_queries":
		cfg.minQueries, err = parseCount(c)
	case "lease":
		cfg.lease = true
		cfg.leaseNamespace, err = parseOptionalWord(c)
	case "lease_interval":
		cfg.leaseInterval, err = parseDuration(c, time.Second, 10*time.Minute)
	case "readiness_gate":
		cfg.gate, err = parseGateCondition(c)
	case "readiness_gate_max_drain":
		cfg.maxDrain, err = parseDuration(c, minMaxDrain, time.Hour)
	case "watchers":
		cfg.maxWatchers, err = parseCountUpTo(c, maxWatchersLimit)
	default:
		return c.Errf("unknown property %q", c.Val())
	}
	return err
}

func parseAddr(c *caddy.Controller, addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return c.Errf("pulse address %q: %v", addr, err)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return c.Errf("pulse address %q: port %q is not a number from 0 to 65535", addr, port)
	}
	return nil
}

func oneArg(c *caddy.Controller) (string, error) {
	name := c.Val()
	args := c.RemainingArgs()
	if len(args) != 1 {
		return "", c.Errf("%s takes exactly one argument, got %d", name, len(args))
	}
	return args[0], nil
}

func parseDuration(c *caddy.Controller, lo, hi time.Duration) (time.Duration, error) {
	name := c.Val()
	s, err := oneArg(c)
	if err != nil {
		return 0, err
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, c.Errf("%s %q: not a duration (e.g. 100ms, 5s)", name, s)
	}
	if d < lo || d > hi {
		return 0, c.Errf("%s %v: must be between %v and %v", name, d, lo, hi)
	}
	return d, nil
}

func parseRatio(c *caddy.Controller) (float64, error) {
	name := c.Val()
	s, err := oneArg(c)
	if err != nil {
		return 0, err
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f <= 0 || f > 1 || f != f {
		return 0, c.Errf("%s %q: must be a number in (0, 1]", name, s)
	}
	return f, nil
}

func parseCount(c *caddy.Controller) (uint64, error) {
	name := c.Val()
	s, err := oneArg(c)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, c.Errf("%s %q: must be a whole number", name, s)
	}
	return n, nil
}

// parseCountUpTo reads a whole number from 0 to most.
func parseCountUpTo(c *caddy.Controller, most uint64) (int, error) {
	name := c.Val()
	n, err := parseCount(c)
	if err != nil {
		return 0, err
	}
	if n > most {
		return 0, c.Errf("%s %d: at most %d", name, n, most)
	}
	return int(n), nil
}

func parseWord(c *caddy.Controller) (string, error) {
	name := c.Val()
	s, err := oneArg(c)
	if err != nil {
		return "", err
	}
	if err := validName(s); err != nil {
		return "", c.Errf("%s %q: %v", name, s, err)
	}
	return s, nil
}

func parseOptionalWord(c *caddy.Controller) (string, error) {
	name := c.Val()
	args := c.RemainingArgs()
	switch len(args) {
	case 0:
		return "", nil
	case 1:
		if err := validName(args[0]); err != nil {
			return "", c.Errf("%s %q: %v", name, args[0], err)
		}
		return args[0], nil
	}
	return "", c.Errf("%s takes at most one argument, got %d", name, len(args))
}

// validName accepts a Kubernetes object name (DNS-1123 subdomain), which replica and
// Lease names must be.
func validName(s string) error {
	if len(s) == 0 || len(s) > 253 {
		return errors.New("must be 1 to 253 characters")
	}
	for i, r := range s {
		ok := r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || (r == '-' || r == '.') && i > 0 && i < len(s)-1
		if !ok {
			return fmt.Errorf("must be lower-case letters, digits, '-' and '.', starting and ending with a letter or digit")
		}
	}
	return nil
}

func parseSelfProbe(c *caddy.Controller) (string, uint16, error) {
	args := c.RemainingArgs()
	if len(args) < 1 || len(args) > 2 {
		return "", 0, c.Errf("self_probe takes NAME [TYPE], got %d arguments", len(args))
	}
	name := dns.Fqdn(args[0])
	if _, ok := dns.IsDomainName(name); !ok {
		return "", 0, c.Errf("self_probe name %q is not a domain name", args[0])
	}
	qtype := dns.TypeA
	if len(args) == 2 {
		t, ok := dns.StringToType[strings.ToUpper(args[1])]
		if !ok {
			return "", 0, c.Errf("self_probe type %q is not a DNS type", args[1])
		}
		qtype = t
	}
	return name, qtype, nil
}

// defaultReplica names the replica: the pod name that Kubernetes gives through the
// downward API (POD_NAME), else the host name, which is the pod name in a pod anyway.
func defaultReplica() string {
	if n := os.Getenv("POD_NAME"); n != "" {
		return n
	}
	if n, err := os.Hostname(); err == nil {
		return n
	}
	return "unknown"
}
