package cluster

import (
	"context"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
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

// Freeze stops the pod's main process (SIGSTOP): the "process hung" fault. It returns once every
// thread of the process is stopped (a thread busy on another CPU may otherwise answer one more
// query). Thaw undoes it.
func (c *Cluster) Freeze(ns, name string) error { return c.signalPod(ns, name, syscall.SIGSTOP, true) }

// Thaw continues a frozen pod (SIGCONT) and returns once no thread is stopped.
func (c *Cluster) Thaw(ns, name string) error { return c.signalPod(ns, name, syscall.SIGCONT, false) }

func (c *Cluster) signalPod(ns, name string, sig syscall.Signal, stopped bool) error {
	pid, err := c.PodPID(ns, name, "")
	if err != nil {
		return err
	}
	if err := signalPID(pid, sig); err != nil {
		return err
	}
	deadline := time.Now().Add(5 * time.Second)
	for !allThreads(pid, stopped) {
		if time.Now().After(deadline) {
			return fmt.Errorf("pod %s/%s (pid %d): threads not %s 5s after %v", ns, name, pid, map[bool]string{true: "stopped", false: "running"}[stopped], sig)
		}
		time.Sleep(5 * time.Millisecond) // the kernel offers no event for another process's stop
	}
	return nil
}

// allThreads says whether every thread of pid is stopped (stopped=true) or none is.
func allThreads(pid int, stopped bool) bool {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return true // gone: nothing left to wait for
	}
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, t.Name()))
		if err != nil {
			continue
		}
		// The state follows the parenthesised command name, which may itself contain spaces.
		i := strings.LastIndexByte(string(b), ')')
		if i < 0 || i+2 >= len(b) {
			continue
		}
		isStopped := b[i+2] == 'T' || b[i+2] == 't'
		if isStopped != stopped {
			return false
		}
	}
	return true
}

// delayQueue is the NFQUEUE number the Delay fault uses; queues are per network namespace.
const delayQueue = 7

// Delay makes every exchange with the pod take d longer (± jitter): packets arriving on its eth0
// are held for d before delivery (see delayer; the "+80 ms replica" fault). d = 0 removes it.
func (c *Cluster) Delay(ctx context.Context, ns, name string, d, jitter time.Duration) error {
	r, err := c.Node.pod(ns, name)
	if err != nil {
		return err
	}
	ipt, err := iptablesPath()
	if err != nil {
		return err
	}
	r.mu.Lock()
	dl := r.delay
	netns := ""
	if r.net != nil {
		netns = r.net.netns
	}
	r.mu.Unlock()
	rule := []string{"INPUT", "!", "-i", "lo", "-j", "NFQUEUE", "--queue-num", strconv.Itoa(delayQueue), "--queue-bypass"}
	if d <= 0 {
		if dl == nil {
			return nil
		}
		_, err := c.InPod(ctx, ns, name, append([]string{ipt, "-w", "-D"}, rule...)...)
		dl.close()
		r.mu.Lock()
		r.delay = nil
		r.mu.Unlock()
		return err
	}
	if dl == nil {
		if netns == "" {
			return fmt.Errorf("pod %s/%s has no sandbox", ns, name)
		}
		if dl, err = openDelayer("/run/netns/"+netns, delayQueue); err != nil {
			return err
		}
		if _, err := c.InPod(ctx, ns, name, append([]string{ipt, "-w", "-I"}, rule...)...); err != nil {
			dl.close()
			return err
		}
		r.mu.Lock()
		r.delay = dl
		r.mu.Unlock()
	}
	dl.delay.Store(int64(d))
	dl.jitter.Store(int64(jitter))
	return nil
}

// Loss drops percent (0-100) of the packets the pod receives and sends, with iptables' statistic
// match in its netns (this machine's kernel has no sch_netem; the effect for a client is the same
// random loss). percent 0 removes it.
func (c *Cluster) Loss(ctx context.Context, ns, name string, percent float64) error {
	r, err := c.Node.pod(ns, name)
	if err != nil {
		return err
	}
	ipt, err := iptablesPath()
	if err != nil {
		return err
	}
	r.mu.Lock()
	old := r.lossRule
	r.lossRule = ""
	r.mu.Unlock()
	if old != "" {
		for _, chain := range []string{"INPUT", "OUTPUT"} {
			if _, err := c.InPod(ctx, ns, name, ipt, "-w", "-D", chain, "-m", "statistic", "--mode", "random", "--probability", old, "-j", "DROP"); err != nil {
				return err
			}
		}
	}
	if percent <= 0 {
		return nil
	}
	// Each direction drops p so that a request-response exchange is lost with probability percent.
	p := 1 - sqrt(1-min(percent, 100)/100)
	prob := strconv.FormatFloat(p, 'f', 6, 64)
	for _, chain := range []string{"INPUT", "OUTPUT"} {
		if _, err := c.InPod(ctx, ns, name, ipt, "-w", "-I", chain, "-m", "statistic", "--mode", "random", "--probability", prob, "-j", "DROP"); err != nil {
			return err
		}
	}
	r.mu.Lock()
	r.lossRule = prob
	r.mu.Unlock()
	return nil
}

func sqrt(x float64) float64 { return math.Sqrt(x) }

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
	// Both directions: with only the pod's ACKs dropped, watch events would still be delivered.
	if _, err := c.InPod(ctx, ns, name, ipt, "-w", op, "OUTPUT", "-p", "tcp", "-d", host, "--dport", port, "-j", "DROP"); err != nil {
		return err
	}
	_, err = c.InPod(ctx, ns, name, ipt, "-w", op, "INPUT", "-p", "tcp", "-s", host, "--sport", port, "-j", "DROP")
	return err
}

// PodTerminating says whether the node agent has begun terminating pod ns/name (its containers
// got SIGTERM): from then on until the pod is deleted from the apiserver.
func (c *Cluster) PodTerminating(ns, name string) bool {
	c.Node.mu.Lock()
	defer c.Node.mu.Unlock()
	for _, r := range c.Node.pods {
		if r.ns == ns && r.name == name && r.isTerminating() {
			return true
		}
	}
	return false
}

// ReuseAddressNext makes the next pod sandbox get ip (an address of PodCIDR) if it is free then,
// instead of the next address round-robin: what a test does to prove that a replacement pod given
// the address of a pod that was deleted moments ago is reachable at once by every neighbour.
func (c *Cluster) ReuseAddressNext(ip net.IP) error { return c.net.reuseNext(ip) }
