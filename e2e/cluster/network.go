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
//
// Addresses are handed out round-robin, as CNI's host-local IPAM does: a freed address is reused
// only once the range has wrapped around. Reusing it at once (the first version kept a free list)
// gave a replacement pod the address its predecessor had seconds before, while every neighbour
// (the healer's pod, the host) still had an ARP entry for it pointing at the dead pod's MAC: the
// healer could not reach the new pod for seconds and judged a healthy replacement degraded
// (issue 13). Each pod's MAC is moreover derived from its address (0a:58 + the four address
// bytes, as CNI's bridge plugin and kubenet did), so that even a reused address (the range
// wrapped, or a test forces it with ReuseAddressNext) resolves to the MAC neighbours have cached.
type network struct {
	index   int
	bridge  string
	gateway net.IP // the bridge's address: the apiserver and the upstream DNS listen here
	prefix  int

	mu    sync.Mutex    // pods are set up concurrently
	last  int           // last host octet handed out
	inUse map[byte]bool // host octets of live pods
	reuse net.IP        // ReuseAddressNext: the next allocation takes this address if free
}

// First and last host octet of a pod address: .1 is the bridge, .255 the broadcast.
const (
	firstHost = 2
	lastHost  = 254
)

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
		n := &network{index: i, bridge: br, gateway: net.IPv4(198, 18, byte(i), 1).To4(), prefix: 24,
			last: firstHost - 1, inUse: map[byte]bool{}}
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

func (n *network) addr(host int) net.IP { return net.IPv4(198, 18, byte(n.index), byte(host)).To4() }

// allocate hands out the next free address after the last one handed out, wrapping around the
// range (host-local's round-robin), unless ReuseAddressNext asked for a free address.
func (n *network) allocate() (net.IP, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if ip := n.reuse; ip != nil {
		n.reuse = nil
		if host := ip.To4()[3]; !n.inUse[host] {
			n.inUse[host] = true
			return ip, nil
		}
	}
	span := lastHost - firstHost + 1
	for i := 1; i <= span; i++ {
		host := firstHost + (n.last-firstHost+i)%span
		if !n.inUse[byte(host)] {
			n.inUse[byte(host)] = true
			n.last = host
			return n.addr(host), nil
		}
	}
	return nil, fmt.Errorf("pod network %s/%d exhausted", n.gateway, n.prefix)
}

func (n *network) release(ip net.IP) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.inUse, ip.To4()[3])
}

// reuseNext makes the next allocation return ip if it is free then.
func (n *network) reuseNext(ip net.IP) error {
	ip4 := ip.To4()
	if ip4 == nil || !ip4.Equal(n.addr(int(ip4[3]))) || ip4[3] < firstHost || ip4[3] > lastHost {
		return fmt.Errorf("%s is not a pod address of %s", ip, n.cidr())
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.reuse = ip4
	return nil
}

// hwAddrFor is the MAC of the pod with address ip: locally administered, unicast, 0a:58 followed
// by the address (CNI's hwaddr.GenerateHardwareAddr4).
func hwAddrFor(ip net.IP) string {
	ip4 := ip.To4()
	return fmt.Sprintf("0a:58:%02x:%02x:%02x:%02x", ip4[0], ip4[1], ip4[2], ip4[3])
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
		{"ip", "-n", p.netns, "link", "set", tmpPeer, "address", hwAddrFor(ip)},
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
