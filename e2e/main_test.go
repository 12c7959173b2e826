//go:build e2e

// Package e2e proves dnspulse on a real local cluster (package e2e/cluster): real control plane,
// real CoreDNS pods built with pulse, real Eviction API and PDB. Run with `make e2e` (root).
package e2e

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/dnspulse/dnspulse/e2e/cluster"
)

// cl is the cluster every test of this package shares: starting one takes tens of seconds.
var cl *cluster.Cluster

func TestMain(m *testing.M) { os.Exit(runMain(m)) }

func runMain(m *testing.M) int {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	began := time.Now()
	var err error
	cl, err = cluster.Start(ctx, cluster.Options{Logf: func(f string, a ...any) {
		fmt.Fprintf(os.Stderr, "%s cluster: %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(f, a...))
	}})
	if err != nil {
		fmt.Fprintf(os.Stderr, "cluster start: %v\n", err)
		if left := cluster.Leftovers("", 0); len(left) > 0 {
			fmt.Fprintf(os.Stderr, "left behind after a failed start: %v\n", left)
			return 1
		}
		return 1
	}
	fmt.Fprintf(os.Stderr, "cluster started in %s (logs: %s)\n", time.Since(began).Round(time.Millisecond), cl.LogDir)
	code := m.Run()
	if err := cl.Stop(context.Background()); err != nil {
		fmt.Fprintf(os.Stderr, "cluster stop: %v\n", err)
		code = 1
	}
	// The teardown claim: nothing of the cluster survives it.
	if left := cl.Leftovers(); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: left behind after Stop: %v\n", left)
		code = 1
	}
	return code
}
