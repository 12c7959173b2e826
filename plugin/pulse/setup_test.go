package pulse

import (
	"strings"
	"testing"
	"time"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"

	"github.com/miekg/dns"
)

func TestParse(t *testing.T) {
	tests := []struct {
		input   string
		wantErr string // substring; "" = no error
		check   func(t *testing.T, c config)
	}{
		{input: `pulse`, check: func(t *testing.T, c config) {
			if c.addr != ":9155" || c.tick != 50*time.Millisecond || c.servfailRatio != 0.25 || c.minQueries != 20 || c.lease || c.gate != "" {
				t.Errorf("defaults: %+v", c)
			}
			if got := c.selfProbeTimeout(); got != 100*time.Millisecond {
				t.Errorf("default self-probe timeout %v, want 100ms (not the 50ms tick)", got)
			}
		}},
		{input: `pulse 127.0.0.1:9999`, check: func(t *testing.T, c config) {
			if c.addr != "127.0.0.1:9999" {
				t.Errorf("addr %q", c.addr)
			}
		}},
		{input: "pulse :9155 {\n tick 50ms\n self_probe kubernetes.default.svc.cluster.local AAAA\n self_probe_timeout 200ms\n replica coredns-abc\n servfail_ratio 0.5\n p99 80ms\n min_queries 5\n lease kube-system\n lease_interval 3s\n watchers 3\n readiness_gate\n readiness_gate_max_drain 20s\n}",
			check: func(t *testing.T, c config) {
				want := config{addr: ":9155", tick: 50 * time.Millisecond, probeName: "kubernetes.default.svc.cluster.local.", probeType: dns.TypeAAAA,
					probeTimeout: 200 * time.Millisecond, replica: "coredns-abc", servfailRatio: 0.5, p99: 80 * time.Millisecond, minQueries: 5,
					lease: true, leaseNamespace: "kube-system", leaseInterval: 3 * time.Second, maxWatchers: 3,
					gate: "dnspulse.io/serving", maxDrain: 20 * time.Second}
				if c != want {
					t.Errorf("got %+v\nwant %+v", c, want)
				}
			}},
		{input: "pulse {\n lease\n}", check: func(t *testing.T, c config) {
			if !c.lease || c.leaseNamespace != "" {
				t.Errorf("lease %v ns %q", c.lease, c.leaseNamespace)
			}
		}},
		{input: `pulse :9155 :9156`, wantErr: "Wrong argument count"},
		{input: `pulse nonsense`, wantErr: `pulse address "nonsense"`},
		{input: `pulse 127.0.0.1:http`, wantErr: `port "http"`},
		{input: "pulse {\n watchers 2000\n}", wantErr: "watchers 2000: at most 1024"},
		{input: "pulse {\n watchers -1\n}", wantErr: `watchers "-1": must be a whole number`},
		{input: "pulse {\n tick fast\n}", wantErr: `Testfile:2 - Error during parsing: tick "fast": not a duration`},
		{input: "pulse {\n tick 1ms\n}", wantErr: "tick 1ms: must be between 10ms and 10s"},
		{input: "pulse {\n tick\n}", wantErr: "tick takes exactly one argument, got 0"},
		{input: "pulse {\n servfail_ratio 1.5\n}", wantErr: `servfail_ratio "1.5": must be a number in (0, 1]`},
		{input: "pulse {\n servfail_ratio NaN\n}", wantErr: "servfail_ratio"},
		{input: "pulse {\n min_queries -1\n}", wantErr: `min_queries "-1": must be a whole number`},
		{input: "pulse {\n p99 0s\n}", wantErr: "p99 0s: must be between"},
		{input: "pulse {\n self_probe\n}", wantErr: "self_probe takes NAME [TYPE]"},
		{input: "pulse {\n self_probe example.org. BOGUS\n}", wantErr: `self_probe type "BOGUS"`},
		{input: "pulse {\n self_probe_timeout 5s\n}", wantErr: "self_probe_timeout 5s: must be between"},
		{input: "pulse {\n tick 10ms\n self_probe_timeout 500ms\n}", wantErr: "longer than ten ticks"},
		{input: "pulse {\n replica Bad_Name\n}", wantErr: `replica "Bad_Name"`},
		{input: "pulse {\n lease a b\n}", wantErr: "lease takes at most one argument"},
		{input: "pulse {\n lease_interval 100ms\n}", wantErr: "lease_interval 100ms"},
		{input: "pulse {\n frobnicate 1\n}", wantErr: `Testfile:2 - Error during parsing: unknown property "frobnicate"`},
		{input: "pulse\npulse", wantErr: "this plugin"},
	}
	for _, tc := range tests {
		t.Run(strings.ReplaceAll(tc.input, "\n", " "), func(t *testing.T) {
			c := caddy.NewTestController("dns", tc.input)
			cfg, err := parse(c)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			tc.check(t, cfg)
		})
	}
}

func TestSetupWrapsErrors(t *testing.T) {
	c := caddy.NewTestController("dns", "pulse {\n tick x\n}")
	err := setup(c)
	if err == nil || !strings.HasPrefix(err.Error(), "plugin/pulse: ") {
		t.Fatalf("setup error %v: want it prefixed with plugin/pulse", err)
	}
}

func TestDefaultProbeName(t *testing.T) {
	for zone, want := range map[string]string{".": "dnspulse-self-probe.", "": "dnspulse-self-probe.", "Example.org.": "dnspulse-self-probe.example.org.", "cluster.local": "dnspulse-self-probe.cluster.local."} {
		if got := defaultProbeName(zone); got != want {
			t.Errorf("zone %q: %q, want %q", zone, got, want)
		}
	}
}

func TestProbeTarget(t *testing.T) {
	tests := []struct {
		cfg       dnsserver.Config
		addr, why string
	}{
		{dnsserver.Config{Port: "53"}, "127.0.0.1:53", ""},
		{dnsserver.Config{Port: "1053", ListenHosts: []string{"::"}}, "[::1]:1053", ""},
		{dnsserver.Config{Port: "53", ListenHosts: []string{"10.0.0.10"}}, "10.0.0.10:53", ""},
		{dnsserver.Config{Port: "853", Transport: "tls"}, "", "transport tls is not plain DNS"},
		// A block on port 0 gets its port when it listens, after pulse has started: there
		// is nothing to probe (the probe went to port 0 and failed, a degraded heartbeat).
		{dnsserver.Config{Port: "0"}, "", "port 0 is chosen at listen time"},
	}
	for _, tc := range tests {
		addr, why := probeTarget(&tc.cfg)
		if addr != tc.addr || why != tc.why {
			t.Errorf("probeTarget(port %s hosts %v transport %q) = %q, %q; want %q, %q", tc.cfg.Port, tc.cfg.ListenHosts, tc.cfg.Transport, addr, why, tc.addr, tc.why)
		}
	}
}
