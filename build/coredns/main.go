// Command coredns is CoreDNS v1.15 with every upstream plugin plus dnspulse's pulse,
// which is spliced into the plugin chain immediately before prometheus: it then sees
// every query with its final rcode and latency (cache hits included) and leaves the
// prometheus plugin's "plugin" label intact.
//
// People who build CoreDNS the upstream way get the same by adding the line
//
//	pulse:github.com/dnspulse/dnspulse/plugin/pulse
//
// to plugin.cfg just above "prometheus:metrics" and running `go generate && make`.
package main

import (
	"fmt"
	"os"
	"slices"

	"github.com/coredns/coredns/core/dnsserver"
	_ "github.com/coredns/coredns/core/plugin" // every upstream plugin
	"github.com/coredns/coredns/coremain"

	_ "github.com/dnspulse/dnspulse/plugin/pulse"
)

// GitCommit is stamped with -ldflags "-X main.GitCommit=..." by the Makefile.
var GitCommit = "unknown"

func main() {
	directives, err := spliceBefore(dnsserver.Directives, "pulse", "prometheus")
	if err == nil {
		err = dnsserver.SetDirectives(directives)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "coredns:", err)
		os.Exit(1)
	}
	coremain.GitCommit = GitCommit
	coremain.Run()
}

// spliceBefore returns a copy of list with name inserted immediately before anchor.
func spliceBefore(list []string, name, anchor string) ([]string, error) {
	if slices.Contains(list, name) {
		return nil, fmt.Errorf("directive %q is already in the plugin chain", name)
	}
	i := slices.Index(list, anchor)
	if i < 0 {
		return nil, fmt.Errorf("directive %q not found; cannot place %q before it", anchor, name)
	}
	return slices.Insert(slices.Clone(list), i, name), nil
}
