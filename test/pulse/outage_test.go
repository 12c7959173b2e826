//go:build integration

package pulse_test

import (
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/dnspulse/dnspulse/heartbeat"

	"github.com/miekg/dns"
)

func aRecord(t *testing.T, m *dns.Msg) net.IP {
	t.Helper()
	for _, rr := range m.Answer {
		if a, ok := rr.(*dns.A); ok {
			return a.A
		}
	}
	return nil
}

// TestServeStaleVerifyDuringUpstreamOutage is issue 10's scenario: cache's serve_stale
// verify with a timeout serves the stale entry and leaves the verify running in a
// goroutine with the query's writer; forward retries the silent upstream two seconds
// later and calls RemoteAddr on that writer. With a pooled recorder in pulse that was a nil
// dereference, and every replica of a fleet crashed together in an upstream outage.
func TestServeStaleVerifyDuringUpstreamOutage(t *testing.T) {
	up := startUpstream(t)
	dnsPort, pulsePort := freePort(t), freePort(t)
	dnsAddr := fmt.Sprintf("127.0.0.1:%d", dnsPort)
	url := fmt.Sprintf("http://127.0.0.1:%d/pulse", pulsePort)
	// The Corefile; `success` only lowers the cache's minimum TTL from 5 s to the
	// upstream's 1 s, so that the entries go stale a second after they were cached.
	proc := startCoreDNS(t, fmt.Sprintf(`.:%d {
    bind 127.0.0.1
    pulse 127.0.0.1:%d {
        tick 20ms
    }
    cache 30 {
        success 9984 30 1
        serve_stale 1h verify 50ms
    }
    forward . %s
}
`, dnsPort, pulsePort, up.addr), url)

	c := &dns.Client{Timeout: 2 * time.Second}
	sent := 0
	ask := func(name string) *dns.Msg {
		t.Helper()
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		sent++
		resp, _, err := c.Exchange(m, dnsAddr)
		if err != nil {
			proc.alive(t)
			t.Fatalf("%s: %v", name, err)
		}
		if resp.Rcode != dns.RcodeSuccess {
			t.Fatalf("%s: rcode %s, want NOERROR (fresh or stale)", name, dns.RcodeToString[resp.Rcode])
		}
		return resp
	}
	names := make([]string, 8)
	for i := range names {
		names[i] = fmt.Sprintf("n%d.outage.test.", i)
		if ip := aRecord(t, ask(names[i])); !ip.Equal(net.IPv4(192, 0, 2, 1)) {
			t.Fatalf("%s: %v, want the upstream's 192.0.2.1", names[i], ip)
		}
	}

	up.silent.Store(true)
	// Stale answers while the upstream is dark, until forward has retried several of the
	// verifies: each retry calls RemoteAddr on a writer whose query was answered seconds
	// ago (with the crash, the process dies right there).
	retried := func(asked map[string]int) int {
		n := 0
		for _, k := range asked {
			if k >= 2 {
				n++
			}
		}
		return n
	}
	stop := make(chan struct{})
	defer close(stop)
	retriedEnough := make(chan bool, 1)
	go func() {
		retriedEnough <- up.askedUntil(30*time.Second, stop, func(a map[string]int) bool { return retried(a) >= 4 })
	}()
	stale := 0
	for done := false; !done; {
		select {
		case ok := <-retriedEnough:
			if !ok {
				t.Fatal("forward did not retry 4 of the verifies within 30 s")
			}
			done = true
		default:
		}
		for _, name := range names {
			proc.alive(t)
			if ip := aRecord(t, ask(name)); !ip.Equal(net.IPv4(192, 0, 2, 1)) {
				t.Fatalf("%s during the outage: %v, want the stale 192.0.2.1", name, ip)
			}
			stale++
		}
		time.Sleep(20 * time.Millisecond) // pacing: a client's rate, not a synchronisation
	}
	// A last round once the retries have happened, then the upstream comes back.
	for _, name := range names {
		ask(name)
	}
	proc.alive(t)
	up.ip.Store(net.IPv4(192, 0, 2, 2))
	up.silent.Store(false)
	deadline := time.Now().Add(15 * time.Second)
	for _, name := range names {
		for !aRecord(t, ask(name)).Equal(net.IPv4(192, 0, 2, 2)) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: still stale 15 s after the upstream came back", name)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	proc.alive(t)
	t.Logf("%d stale answers during the outage, %d client queries in all, process alive", stale, sent)

	// pulse counted every client query, none of them a failure.
	var hb *heartbeat.Heartbeat
	deadline = time.Now().Add(5 * time.Second)
	for hb = getHeartbeat(t, url); hb.Windows["60s"].Queries < uint64(sent) && time.Now().Before(deadline); hb = getHeartbeat(t, url) {
		time.Sleep(20 * time.Millisecond)
	}
	if w := hb.Windows["60s"]; w.Queries != uint64(sent) || w.Rcodes["NOERROR"] != uint64(sent) {
		t.Fatalf("60s window: %d queries, rcodes %v; want all %d NOERROR", w.Queries, w.Rcodes, sent)
	}
}

// TestInflightWhileUpstreamSilent: the heartbeat shows queries stuck in forward while the
// upstream is dark (the latency histogram cannot: they have not completed), and the age of
// the oldest grows from one heartbeat to the next.
func TestInflightWhileUpstreamSilent(t *testing.T) {
	up := startUpstream(t)
	up.silent.Store(true)
	dnsPort, pulsePort := freePort(t), freePort(t)
	dnsAddr := fmt.Sprintf("127.0.0.1:%d", dnsPort)
	url := fmt.Sprintf("http://127.0.0.1:%d/pulse", pulsePort)
	proc := startCoreDNS(t, fmt.Sprintf(`.:%d {
    bind 127.0.0.1
    pulse 127.0.0.1:%d {
        tick 20ms
    }
    forward . %s
}
`, dnsPort, pulsePort, up.addr), url)

	const stuck = 3
	var clients sync.WaitGroup
	rcodes := make(chan int, stuck)
	for i := range stuck {
		clients.Go(func() {
			m := new(dns.Msg)
			m.SetQuestion(fmt.Sprintf("s%d.inflight.test.", i), dns.TypeA)
			resp, _, err := (&dns.Client{Timeout: 10 * time.Second}).Exchange(m, dnsAddr)
			if err != nil {
				rcodes <- -1
				return
			}
			rcodes <- resp.Rcode
		})
	}
	up.waitAsked(t, "the 3 queries", 10*time.Second, func(a map[string]int) bool { return len(a) == stuck })

	// Two consecutive heartbeats (seq n and n+1) with the 3 queries in flight: the oldest
	// age must have grown between them.
	var prev *heartbeat.Heartbeat
	deadline := time.Now().Add(10 * time.Second)
	for {
		hb := getHeartbeat(t, url)
		if hb.InFlight == nil {
			t.Fatal("heartbeat without inflight")
		}
		if hb.InFlight.Count == stuck && prev != nil && hb.Seq == prev.Seq+1 {
			if hb.InFlight.OldestMicros <= prev.InFlight.OldestMicros {
				t.Fatalf("seq %d oldest %d µs, seq %d oldest %d µs: the age must grow every tick", prev.Seq, prev.InFlight.OldestMicros, hb.Seq, hb.InFlight.OldestMicros)
			}
			if w := hb.Windows["1s"]; w.Queries != 0 {
				t.Fatalf("1s window %+v: nothing has completed yet", w)
			}
			t.Logf("seq %d: %d in flight, oldest %v; seq %d: oldest %v", prev.Seq, prev.InFlight.Count, time.Duration(prev.InFlight.OldestMicros)*time.Microsecond,
				hb.Seq, time.Duration(hb.InFlight.OldestMicros)*time.Microsecond)
			break
		}
		if hb.InFlight.Count == stuck && (prev == nil || hb.Seq != prev.Seq) {
			prev = hb
		} else if hb.InFlight.Count != stuck {
			prev = nil
		}
		if time.Now().After(deadline) {
			t.Fatalf("no two consecutive heartbeats with %d queries in flight; last %+v", stuck, hb.InFlight)
		}
		time.Sleep(2 * time.Millisecond)
	}

	// The upstream answers forward's retry: the queries complete and leave the flight.
	up.silent.Store(false)
	clients.Wait()
	close(rcodes)
	for rc := range rcodes {
		if rc != dns.RcodeSuccess {
			t.Fatalf("a stuck query ended with %d, want NOERROR from the retry", rc)
		}
	}
	deadline = time.Now().Add(5 * time.Second)
	for {
		hb := getHeartbeat(t, url)
		if hb.InFlight.Count == 0 && hb.Windows["10s"].Queries == stuck {
			if hb.InFlight.OldestMicros != 0 {
				t.Fatalf("inflight %+v: oldest must be 0 with nothing in flight", hb.InFlight)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the answers: inflight %+v, 10s window %d queries; want 0 and %d", hb.InFlight, hb.Windows["10s"].Queries, stuck)
		}
		time.Sleep(20 * time.Millisecond)
	}
	proc.alive(t)
}
