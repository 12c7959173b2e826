package cluster

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"k8s.io/client-go/rest"
)

// StopAPIServer stops kube-apiserver (SIGTERM, then SIGKILL after 5s) and leaves the rest of the
// cluster running: the "control plane unreachable" fault. StartAPIServer brings it back with the
// same flags, address and state (etcd keeps everything).
func (c *Cluster) StopAPIServer(ctx context.Context) error {
	c.mu.Lock()
	p := c.proc("kube-apiserver")
	c.mu.Unlock()
	if p == nil {
		return fmt.Errorf("kube-apiserver is not one of this cluster's processes")
	}
	p.stop(ctx, 5*time.Second)
	return nil
}

// StartAPIServer restarts a stopped kube-apiserver with the argv it first ran with and waits for
// /readyz. It is a no-op when the apiserver is running.
func (c *Cluster) StartAPIServer(ctx context.Context) error {
	c.mu.Lock()
	idx := -1
	for i, p := range c.procs {
		if p.name == "kube-apiserver" {
			idx = i
		}
	}
	if idx < 0 {
		c.mu.Unlock()
		return fmt.Errorf("kube-apiserver is not one of this cluster's processes")
	}
	old := c.procs[idx]
	c.mu.Unlock()
	if !old.exited() {
		return nil
	}
	p, err := startProcess(old.name, filepath.Join(c.LogDir, old.name+".log"), c.StateDir, c.env(), old.cmd.Args...)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.procs[idx] = p
	c.mu.Unlock()
	tlsCfg, err := rest.TLSConfigFor(c.Config)
	if err != nil {
		return err
	}
	return c.waitHTTP(ctx, "kube-apiserver", "https://"+c.APIServer+"/readyz", tlsCfg)
}

// RestartAPIServer stops kube-apiserver, keeps it down for down, and starts it again.
func (c *Cluster) RestartAPIServer(ctx context.Context, down time.Duration) error {
	if err := c.StopAPIServer(ctx); err != nil {
		return err
	}
	select {
	case <-ctx.Done():
	case <-time.After(down):
	}
	return c.StartAPIServer(ctx)
}
