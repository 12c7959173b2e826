//go:build e2e

package heal

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/dnspulse/dnspulse/e2e/cluster"
)

// One cluster for the package: the scenarios run one after the other on it, each starting from
// three healthy replicas (WaitSteady). Its own cluster (bridge dnspN with the next free N), not
// the one of package e2e: `make e2e` runs the packages one at a time (-p 1).
var (
	cl   *cluster.Cluster
	obs  *Observer
	root string
)

func TestMain(m *testing.M) { os.Exit(runMain(m)) }

func logf(f string, a ...any) {
	fmt.Fprintf(os.Stderr, "%s heal: %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(f, a...))
}

func runMain(m *testing.M) int {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var err error
	if root, err = RepoRoot(); err != nil {
		logf("%v", err)
		return 1
	}
	began := time.Now()
	cl, err = cluster.Start(ctx, cluster.Options{Logf: func(f string, a ...any) { logf("cluster: "+f, a...) }})
	if err != nil {
		logf("cluster start: %v", err)
		return 1
	}
	code := func() int {
		if err := PrepareCoreDNS(ctx, cl, root); err != nil {
			logf("CoreDNS with the Lease heartbeat: %v", err)
			return 1
		}
		logf("cluster DNS with pulse leases ready after %s", time.Since(began).Round(time.Millisecond))
		if obs, err = Observe(context.Background(), cl); err != nil {
			logf("observer: %v", err)
			return 1
		}
		defer obs.Close()
		if err := Install(ctx, cl, root, ""); err != nil {
			logf("helm install: %v", err)
			return 1
		}
		logf("healer installed with helm after %s (logs: %s)", time.Since(began).Round(time.Millisecond), cl.LogDir)
		return m.Run()
	}()
	if err := cl.Stop(context.Background()); err != nil {
		logf("cluster stop: %v", err)
		code = 1
	}
	if left := cl.Leftovers(); len(left) > 0 {
		logf("FAIL: left behind after Stop: %v", left)
		code = 1
	}
	return code
}
