package config

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"

	"github.com/miekg/dns"
	"github.com/spf13/pflag"
	"sigs.k8s.io/yaml"

	"github.com/dnspulse/dnspulse/healer/internal/check"
	"github.com/dnspulse/dnspulse/healer/internal/replica"
)

// ErrFlags wraps a command line that pflag refused (it has printed why, and the usage, to
// the output given to Parse); pflag.ErrHelp is returned as is for -h/--help.
var ErrFlags = errors.New("bad command line")

// Parse builds the configuration: the defaults, then the --config file decoded onto them,
// then the flags given on the command line, then the values derived from those (targets,
// checks, namespaces). It returns the flag set too (its defaults are the file's values).
// A bad command line is ErrFlags or pflag.ErrHelp; problems in the file or the values are
// returned all at once, each naming its flag or key. Validate is separate.
func Parse(args []string, output io.Writer) (*Config, *pflag.FlagSet, error) {
	// First pass: only to find --config (and to report a bad command line once).
	first := Default()
	fs, err := parseFlags(first, args, output)
	if err != nil {
		return nil, fs, err
	}
	c := Default()
	var errs []string
	if first.File != "" {
		if err := c.decodeFile(first.File); err != nil {
			errs = append(errs, err.Error())
		}
	}
	// Second pass, onto the file's values: the flags given win.
	fs, err = parseFlags(c, args, io.Discard)
	if err != nil {
		return nil, fs, err
	}
	errs = append(errs, c.resolve()...)
	return c, fs, joinErrs(errs)
}

func parseFlags(c *Config, args []string, output io.Writer) (*pflag.FlagSet, error) {
	fs := pflag.NewFlagSet("healer", pflag.ContinueOnError)
	fs.SetOutput(output)
	c.AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return fs, err
		}
		return fs, fmt.Errorf("%w: %w", ErrFlags, err)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(output, "healer: unexpected arguments %q\n", fs.Args())
		return fs, fmt.Errorf("%w: unexpected arguments %q", ErrFlags, fs.Args())
	}
	return fs, nil
}

// decodeFile reads the YAML file strictly onto c: an unknown key is an error naming the
// file and the key, so a typo does not silently keep a default.
func (c *Config) decodeFile(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("--config: %w", err)
	}
	if err := yaml.UnmarshalStrict(b, c); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	c.File = path
	return nil
}

// resolve derives the typed targets and checks, and the namespaces that default to others.
func (c *Config) resolve() []string {
	var errs []string
	c.StaticTargets, c.CheckList = nil, nil
	seen := map[string]bool{}
	for i, s := range c.Targets {
		t, err := ParseTarget(s)
		if err != nil {
			errs = append(errs, fmt.Sprintf("--target[%d]: %v", i, err))
			continue
		}
		if seen[t.Name] {
			errs = append(errs, fmt.Sprintf("--target: replica name %q given twice", t.Name))
		}
		seen[t.Name] = true
		c.StaticTargets = append(c.StaticTargets, t)
	}
	for i, spec := range c.Checks {
		ck, err := spec.check(c.Kubernetes.ClusterDomain)
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s: checks[%d]: %v", c.File, i, err))
			continue
		}
		c.CheckList = append(c.CheckList, ck)
	}
	for i, s := range c.CheckFlags {
		ck, err := check.Parse(s)
		if err != nil {
			errs = append(errs, fmt.Sprintf("--check[%d]: %v", i, err))
			continue
		}
		ck.Majority = authoritative(ck.Name, c.Kubernetes.ClusterDomain)
		c.CheckList = append(c.CheckList, ck)
	}
	if len(c.Checks) == 0 && len(c.CheckFlags) == 0 && !c.IsStatic() {
		ck, _ := check.Parse(DefaultKubeCheck)
		ck.Name = "kubernetes.default.svc." + dns.Fqdn(strings.ToLower(c.Kubernetes.ClusterDomain))
		ck.Majority = true
		c.CheckList = append(c.CheckList, ck)
	}
	k := &c.Kubernetes
	if k.Canary.Namespace == "" {
		k.Canary.Namespace = os.Getenv("POD_NAMESPACE")
		if k.Canary.Namespace == "" {
			k.Canary.Namespace = k.Namespace
		}
	}
	if k.LeaderElection.Namespace == "" {
		k.LeaderElection.Namespace = k.Canary.Namespace
	}
	return errs
}

// authoritative says whether the cluster answers name itself (under the cluster domain), so
// that every replica must give the same answer (R2); a forwarded name may differ.
func authoritative(name, clusterDomain string) bool {
	return dns.IsSubDomain(dns.Fqdn(strings.ToLower(clusterDomain)), strings.ToLower(name))
}

// CheckSpec is one check of the config file, with its own expectation.
type CheckSpec struct {
	Name   string `json:"name"`
	Type   string `json:"type"`
	Expect struct {
		Rcode string `json:"rcode"`
		// Answers is "majority" (every replica the same answer), "any" (the rcode alone is
		// checked: answers may differ between replicas), or a list of exact rdata strings.
		// The default is majority for names under the cluster domain, any for the others.
		Answers any `json:"answers"`
	} `json:"expect"`
}

func (s CheckSpec) check(clusterDomain string) (check.Check, error) {
	spec := s.Name
	if s.Type != "" {
		spec += "/" + s.Type
	}
	c, err := check.Parse(spec)
	if err != nil {
		return c, fmt.Errorf("name/type: %w", err)
	}
	if s.Expect.Rcode != "" {
		r, err := check.ParseRcode(s.Expect.Rcode)
		if err != nil {
			return c, fmt.Errorf("expect.rcode: %w", err)
		}
		c.Rcode = r
	}
	c.Majority = authoritative(c.Name, clusterDomain)
	switch a := s.Expect.Answers.(type) {
	case nil:
	case string:
		switch a {
		case "majority":
			c.Majority = true
		case "any":
			c.Majority = false
		default:
			return c, fmt.Errorf("expect.answers: %q is neither \"majority\", \"any\" nor a list", a)
		}
	case []any:
		c.Answers = []string{}
		for i, v := range a {
			str, ok := v.(string)
			if !ok {
				return c, fmt.Errorf("expect.answers[%d]: want a string, got %v", i, v)
			}
			c.Answers = append(c.Answers, str)
		}
	default:
		return c, fmt.Errorf("expect.answers: want \"majority\", \"any\" or a list of strings, got %v", a)
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
	// Without a kubelet, nothing else judges the replica: its container counts as ready.
	return replica.Target{Name: name, DNSAddr: dnsAddr, PulseAddr: pulseAddr, Ready: true, Remediable: true, ContainersReady: true}, nil
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

func joinErrs(errs []string) error {
	if len(errs) == 0 {
		return nil
	}
	return errors.New(strings.Join(errs, "\n"))
}
