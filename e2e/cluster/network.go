package cluster

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
)

// Every kernel object the harness creates is named with this prefix, so `make cluster-down` can find
// what a crashed run left behind without any state file.
const namePrefix = "dnsp"

// markerEnv is put in the environment of every process the harness starts (control plane and pods);
// cleanup finds strays by it in /proc/*/environ.
const markerEnv = "DNSPULSE_E2E_CLUSTER"

// run executes a command and returns its combined output in the error, so a failing `ip` or `tc`
// call says what it tried and why it failed.
func run(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// network is the pod network of one cluster: a bridge with an address in 198.18.0.0/15 (reserved
// for benchmarking, never routed: EndpointSlices refuse loopback) and one /24 per cluster so two
// clusters on one machine do not collide.
type network struct {
	index   int
	bridge  string
	gateway net.IP // the bridge's address: the apiserver and the upstream DNS listen here
	prefix  int

	mu   sync.Mutex // pods are set up concurrently
	next int        // last host octet handed out
	free []net.IP
}

func linkExists(name string) bool {
	_, err := os.Stat("/sys/class/net/" + name)
	return err == nil
}

// newNetwork picks the first unused cluster index and creates its bridge.
func newNetwork(ctx context.Context) (*network, error) {
	for i := 1; i < 250; i++ {
		br := fmt.Sprintf("%s%dbr", namePrefix, i)
		if linkExists(br) {
			continue
		}
		n := &network{index: i, bridge: br, gateway: net.IPv4(198, 18, byte(i), 1).To4(), prefix: 24, next: 1}
		if _, err := run(ctx, "ip", "link", "add", br, "type", "bridge"); err != nil {
			if linkExists(br) { // lost a race with another cluster starting
				continue
			}
			return nil, err
		}
		if _, err := run(ctx, "ip", "addr", "add", fmt.Sprintf("%s/%d", n.gateway, n.prefix), "dev", br); err != nil {
			return n, err
		}
		if _, err := run(ctx, "ip", "link", "set", br, "up"); err != nil {
			return n, err
		}
		return n, nil
	}
	return nil, fmt.Errorf("no free cluster index (bridges %s1br..%s249br all exist; run make cluster-down)", namePrefix, namePrefix)
}

func (n *network) allocate() (net.IP, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.free) > 0 {
		ip := n.free[0]
		n.free = n.free[1:]
		return ip, nil
	}
	if n.next >= 254 {
		return nil, fmt.Errorf("pod network %s/%d exhausted", n.gateway, n.prefix)
	}
	n.next++
	return net.IPv4(198, 18, byte(n.index), byte(n.next)).To4(), nil
}

func (n *network) release(ip net.IP) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.free = append(n.free, ip)
}

func (n *network) cidr() string { return fmt.Sprintf("198.18.%d.0/%d", n.index, n.prefix) }

func (n *network) destroy(ctx context.Context) error {
	if !linkExists(n.bridge) {
		return nil
	}
	_, err := run(ctx, "ip", "link", "del", n.bridge)
	return err
}

// podNet is one pod's sandbox network: a named netns with eth0, the peer of hostVeth on the bridge.
type podNet struct {
	netns    string
	hostVeth string
	ip       net.IP
}

func (n *network) addPod(ctx context.Context, id string, slot int, ip net.IP) (*podNet, error) {
	p := &podNet{netns: fmt.Sprintf("%s%d-%s", namePrefix, n.index, id), hostVeth: fmt.Sprintf("%s%dv%d", namePrefix, n.index, slot), ip: ip}
	tmpPeer := fmt.Sprintf("%s%dp%d", namePrefix, n.index, slot)
	steps := [][]string{
		{"ip", "netns", "add", p.netns},
		{"ip", "link", "add", p.hostVeth, "type", "veth", "peer", "name", tmpPeer},
		{"ip", "link", "set", tmpPeer, "netns", p.netns},
		{"ip", "link", "set", p.hostVeth, "master", n.bridge},
		{"ip", "link", "set", p.hostVeth, "up"},
		{"ip", "-n", p.netns, "link", "set", tmpPeer, "name", "eth0"},
		{"ip", "-n", p.netns, "addr", "add", fmt.Sprintf("%s/%d", ip, n.prefix), "dev", "eth0"},
		{"ip", "-n", p.netns, "link", "set", "eth0", "up"},
		{"ip", "-n", p.netns, "link", "set", "lo", "up"},
		{"ip", "-n", p.netns, "route", "add", "default", "via", n.gateway.String()},
	}
	for _, s := range steps {
		if _, err := run(ctx, s[0], s[1:]...); err != nil {
			return p, err
		}
	}
	return p, nil
}

// remove deletes the netns (which destroys eth0 and with it the host veth) and, should the veth
// outlive it, the veth. Idempotent.
func (p *podNet) remove(ctx context.Context) error {
	var errs []string
	if _, err := os.Stat("/run/netns/" + p.netns); err == nil {
		if _, err := run(ctx, "ip", "netns", "del", p.netns); err != nil {
			errs = append(errs, err.Error())
		}
	}
	// Deleting the netns destroys eth0 and its peer asynchronously: a veth that vanishes between
	// the check and the delete is not an error.
	if linkExists(p.hostVeth) {
		if _, err := run(ctx, "ip", "link", "del", p.hostVeth); err != nil && linkExists(p.hostVeth) {
			errs = append(errs, err.Error())
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}
