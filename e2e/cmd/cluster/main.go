// Command cluster runs the e2e local cluster until interrupted (`make cluster`), or removes what
// crashed runs left behind (`make cluster-down`, i.e. `cluster -down`).
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/dnspulse/dnspulse/e2e/cluster"
)

func main() { os.Exit(run()) }

func run() int {
	fs := flag.NewFlagSet("cluster", flag.ContinueOnError)
	down := fs.Bool("down", false, "remove every process, netns, link, bridge and state folder a dnspulse cluster left behind, then exit")
	binDir := fs.String("bin-dir", "", "folder with etcd, kube-*, kubectl, coredns, healer (default: _output/bin of the repository)")
	stateDir := fs.String("state-dir", "", "folder for certificates, etcd data, kubeconfig and logs (default: a new temp folder, removed on exit)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	logger := log.New(os.Stderr, "cluster: ", log.Ltime|log.Lmicroseconds)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *down {
		if err := cluster.CleanupAll(ctx, logger.Printf); err != nil {
			logger.Printf("cleanup: %v", err)
			return 1
		}
		logger.Printf("nothing left")
		return 0
	}
	began := time.Now()
	c, err := cluster.Start(ctx, cluster.Options{BinDir: *binDir, StateDir: *stateDir, Logf: logger.Printf})
	if err != nil {
		logger.Printf("start: %v", err)
		return 1
	}
	defer func() {
		logger.Printf("stopping")
		if err := c.Stop(context.Background()); err != nil {
			logger.Printf("stop: %v", err)
		}
		if left := c.Leftovers(); len(left) > 0 {
			logger.Printf("left behind (run make cluster-down): %v", left)
		}
	}()
	kubectl := filepath.Join(c.BinDir, "kubectl")
	fmt.Printf(`
dnspulse local cluster up in %s
  apiserver   https://%s   (pods reach it there; no kube-proxy: use pod IPs)
  pod network %s   upstream DNS %s
  logs        %s

  export KUBECONFIG=%s
  %s get pods -n kube-system -o wide
  %s get endpointslices -n kube-system -l kubernetes.io/service-name=kube-dns

Ctrl-C stops and removes everything.
`, time.Since(began).Round(time.Millisecond), c.APIServer, c.PodCIDR, c.Upstream.Addr, c.LogDir, c.Kubeconfig, kubectl, kubectl)
	<-ctx.Done()
	return 0
}
