package cluster

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"syscall"
	"time"
)

// PodSandbox names the kernel objects behind a running pod, for fault injection and inspection.
type PodSandbox struct {
	Namespace, Name string
	// Netns is the network namespace's name (`ip netns exec NETNS ...`).
	Netns string
	// HostVeth is the bridge side of the pod's eth0: where tc netem shapes its traffic.
	HostVeth string
	IP       net.IP
	// PID of the first container's main process (our binary), 0 while it is not running.
	PID int
	// Dir holds the pod's materialised volumes (see VolumeDir), resolv.conf and hosts.
	Dir string
}

// Sandbox returns the sandbox of the running pod ns/name.
func (c *Cluster) Sandbox(ns, name string) (*PodSandbox, error) {
	r, err := c.Node.pod(ns, name)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.net == nil {
		return nil, fmt.Errorf("pod %s/%s has no sandbox yet", ns, name)
	}
	s := &PodSandbox{Namespace: ns, Name: name, Netns: r.net.netns, HostVeth: r.net.hostVeth, IP: r.net.ip, Dir: r.dir}
	if len(r.containers) > 0 {
		s.PID = r.containers[0].pid()
	}
	return s, nil
}

// PodPID is the PID of container (empty: the first) of pod ns/name.
func (c *Cluster) PodPID(ns, name, container string) (int, error) {
	r, err := c.Node.pod(ns, name)
	if err != nil {
		return 0, err
	}
	r.mu.Lock()
	cs := r.containers
	r.mu.Unlock()
	for _, ct := range cs {
		if container == "" || ct.spec.Name == container {
			if pid := ct.pid(); pid > 0 {
				return pid, nil
			}
			return 0, fmt.Errorf("container %s of pod %s/%s is not running", ct.spec.Name, ns, name)
		}
	}
	return 0, fmt.Errorf("pod %s/%s has no container %q", ns, name, container)
}

// VolumeDir is the host folder behind volume vol of pod ns/name. Files written here appear in that
// pod only: rewrite its Corefile here to break one replica's upstream (the reload plugin applies it).
func (c *Cluster) VolumeDir(ns, name, vol string) (string, error) {
	r, err := c.Node.pod(ns, name)
	if err != nil {
		return "", err
	}
	return r.volumeDir(vol), nil
}

// Freeze stops the pod's main process (SIGSTOP): the "process hung" fault. Thaw undoes it.
func (c *Cluster) Freeze(ns, name string) error { return c.signalPod(ns, name, syscall.SIGSTOP) }

// Thaw continues a frozen pod (SIGCONT).
func (c *Cluster) Thaw(ns, name string) error { return c.signalPod(ns, name, syscall.SIGCONT) }

func (c *Cluster) signalPod(ns, name string, sig syscall.Signal) error {
	pid, err := c.PodPID(ns, name, "")
	if err != nil {
		return err
	}
	return signalPID(pid, sig)
}

// Netem adds delay (with jitter) and loss (percent, 0 for none) to everything the pod sends and
// receives through its veth (`tc qdisc replace dev VETH root netem ...` on the host side, which
// shapes traffic towards the pod; the pod side is shaped too, inside its netns).
func (c *Cluster) Netem(ctx context.Context, ns, name string, delay, jitter time.Duration, lossPercent float64) error {
	s, err := c.Sandbox(ns, name)
	if err != nil {
		return err
	}
	args := []string{"netem"}
	if delay > 0 {
		args = append(args, "delay", fmt.Sprintf("%dus", delay.Microseconds()))
		if jitter > 0 {
			args = append(args, fmt.Sprintf("%dus", jitter.Microseconds()))
		}
	}
	if lossPercent > 0 {
		args = append(args, "loss", strconv.FormatFloat(lossPercent, 'f', -1, 64)+"%")
	}
	if _, err := run(ctx, "tc", append([]string{"qdisc", "replace", "dev", s.HostVeth, "root"}, args...)...); err != nil {
		return err
	}
	_, err = run(ctx, "ip", append([]string{"netns", "exec", s.Netns, "tc", "qdisc", "replace", "dev", "eth0", "root"}, args...)...)
	return err
}

// ClearNetem removes the pod's netem qdiscs.
func (c *Cluster) ClearNetem(ctx context.Context, ns, name string) error {
	s, err := c.Sandbox(ns, name)
	if err != nil {
		return err
	}
	_, err1 := run(ctx, "tc", "qdisc", "del", "dev", s.HostVeth, "root")
	_, err2 := run(ctx, "ip", "netns", "exec", s.Netns, "tc", "qdisc", "del", "dev", "eth0", "root")
	if err1 != nil {
		return err1
	}
	return err2
}

// InPod runs argv inside the pod's network namespace (ip netns exec), e.g. iptables.
func (c *Cluster) InPod(ctx context.Context, ns, name string, argv ...string) (string, error) {
	s, err := c.Sandbox(ns, name)
	if err != nil {
		return "", err
	}
	return run(ctx, "ip", append([]string{"netns", "exec", s.Netns}, argv...)...)
}

func iptablesPath() (string, error) {
	for _, p := range []string{"iptables", "iptables-nft", "iptables-legacy"} {
		if path, err := exec.LookPath(p); err == nil {
			return path, nil
		}
	}
	return "", fmt.Errorf("iptables not found (apt-get install iptables): needed for this fault")
}

// DropDNSUDP drops UDP port 53 arriving in the pod (TCP keeps working): on=false removes the rule.
func (c *Cluster) DropDNSUDP(ctx context.Context, ns, name string, on bool) error {
	ipt, err := iptablesPath()
	if err != nil {
		return err
	}
	op := "-I"
	if !on {
		op = "-D"
	}
	_, err = c.InPod(ctx, ns, name, ipt, "-w", op, "INPUT", "-p", "udp", "--dport", "53", "-j", "DROP")
	return err
}

// CutAPIServer drops the pod's traffic to the apiserver (its watches go stale, the rest of its
// network works): on=false restores it.
func (c *Cluster) CutAPIServer(ctx context.Context, ns, name string, on bool) error {
	ipt, err := iptablesPath()
	if err != nil {
		return err
	}
	host, port, _ := net.SplitHostPort(c.APIServer)
	op := "-I"
	if !on {
		op = "-D"
	}
	_, err = c.InPod(ctx, ns, name, ipt, "-w", op, "OUTPUT", "-p", "tcp", "-d", host, "--dport", port, "-j", "DROP")
	return err
}
