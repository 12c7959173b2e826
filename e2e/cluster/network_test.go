package cluster

import (
	"net"
	"testing"
)

func testNetwork() *network {
	return &network{index: 7, gateway: net.IPv4(198, 18, 7, 1).To4(), prefix: 24, last: firstHost - 1, inUse: map[byte]bool{}}
}

// A freed address is not handed out again until the range has wrapped (host-local's round-robin):
// a neighbour's ARP entry for it would point at the dead pod's MAC.
func TestAllocateRoundRobin(t *testing.T) {
	n := testNetwork()
	a, _ := n.allocate()
	b, _ := n.allocate()
	if a.String() != "198.18.7.2" || b.String() != "198.18.7.3" {
		t.Fatalf("first addresses %s, %s; want .2, .3", a, b)
	}
	n.release(a)
	c, _ := n.allocate()
	if c.Equal(a) {
		t.Fatalf("the address %s was reused at once", a)
	}
	// Wrap around: everything up to .254 handed out, then the first free one from the start.
	for i := 5; i <= lastHost; i++ {
		if _, err := n.allocate(); err != nil {
			t.Fatalf("allocation %d: %v", i, err)
		}
	}
	d, err := n.allocate()
	if err != nil || !d.Equal(a) {
		t.Fatalf("after wrapping: %v, %v; want %s (the only free address)", d, err, a)
	}
	if _, err := n.allocate(); err == nil {
		t.Fatal("allocation from a full range succeeded")
	}
	n.release(b)
	if e, _ := n.allocate(); !e.Equal(b) {
		t.Fatalf("got %s, want the freed %s", e, b)
	}
}

func TestReuseAddressNext(t *testing.T) {
	n := testNetwork()
	a, _ := n.allocate()
	if err := n.reuseNext(a); err != nil {
		t.Fatal(err)
	}
	// In use: the hint is dropped and the next address comes round-robin.
	if b, _ := n.allocate(); b.Equal(a) {
		t.Fatalf("%s handed out twice", a)
	}
	n.release(a)
	if err := n.reuseNext(a); err != nil {
		t.Fatal(err)
	}
	if c, _ := n.allocate(); !c.Equal(a) {
		t.Fatalf("got %s, want the reused %s", c, a)
	}
	for _, bad := range []string{"198.18.8.5", "198.18.7.1", "198.18.7.255", "::1"} {
		if err := n.reuseNext(net.ParseIP(bad)); err == nil {
			t.Errorf("reuseNext(%s) accepted", bad)
		}
	}
}

func TestHWAddrFor(t *testing.T) {
	if got := hwAddrFor(net.IPv4(198, 18, 3, 17)); got != "0a:58:c6:12:03:11" {
		t.Fatalf("got %s", got)
	}
}
