//go:build integration

package main

import (
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
)

// TestBinaryListsPulse: the built binary lists pulse. CoreDNS 1.15 (caddy v1.1.4) prints
// plugin names without the "dns." prefix its registry uses; the registry name is checked
// below.
func TestBinaryListsPulse(t *testing.T) {
	bin := os.Getenv("COREDNS_BIN")
	if bin == "" {
		t.Fatal("COREDNS_BIN is not set: run through `make test-integration`")
	}
	out, err := exec.Command(bin, "-plugins").CombinedOutput()
	if err != nil {
		t.Fatalf("%s -plugins: %v\n%s", bin, err, out)
	}
	if !slices.Contains(strings.Fields(string(out)), "pulse") {
		t.Fatalf("-plugins does not list pulse:\n%s", out)
	}
}

func TestPulseRegisteredAndPlacedBeforePrometheus(t *testing.T) {
	if !slices.Contains(caddy.ListPlugins()["others"], "dns.pulse") {
		t.Fatalf("dns.pulse not registered: %v", caddy.ListPlugins()["others"])
	}
	d, err := spliceBefore(dnsserver.Directives, "pulse", "prometheus")
	if err != nil {
		t.Fatal(err)
	}
	if i := slices.Index(d, "pulse"); d[i+1] != "prometheus" || slices.Index(d, "cache") < i {
		t.Fatalf("pulse at %d of %v", i, d)
	}
}
