package pulse

import (
	"math"
	"net"
	"strconv"

	"github.com/dnspulse/dnspulse/heartbeat"

	"github.com/miekg/dns"
)

// summarize turns a window's counts into its heartbeat form.
func summarize(c *counts) heartbeat.Window {
	w := heartbeat.Window{Rcodes: map[string]uint64{}}
	for k, n := range c.kinds {
		if n == 0 {
			continue
		}
		w.Queries += n
		switch k {
		case kindDropped:
			w.Dropped = n
		default:
			w.Rcodes[kindName(k)] = n
		}
	}
	if w.Queries == 0 {
		return w
	}
	q := float64(w.Queries)
	w.NXDomainRatio = float64(c.kinds[dns.RcodeNameError]) / q
	w.ServfailRatio = float64(c.kinds[dns.RcodeServerFailure]) / q
	w.RcodeEntropy = entropy(c.kinds[:])
	w.ServfailSourceEntropy = entropy(c.sources[:])
	w.LatencyMicros = heartbeat.Latency{
		P50: quantile(&c.latency, w.Queries, 0.50, c.max),
		P90: quantile(&c.latency, w.Queries, 0.90, c.max),
		P99: quantile(&c.latency, w.Queries, 0.99, c.max),
		Max: c.max,
	}
	return w
}

// kindName spells an outcome kind the way miekg/dns spells rcodes.
func kindName(k int) string {
	switch k {
	case kindDropped:
		return "DROPPED"
	case kindOther:
		return "OTHER"
	}
	if s, ok := dns.RcodeToString[k]; ok {
		return s
	}
	return "RCODE" + strconv.Itoa(k)
}

// entropy is -sum p log2 p over the non-zero counts, in bits; 0 for no data.
func entropy(counts []uint64) float64 {
	var n uint64
	for _, c := range counts {
		n += c
	}
	if n == 0 {
		return 0
	}
	var h float64
	for _, c := range counts {
		if c == 0 {
			continue
		}
		p := float64(c) / float64(n)
		h -= p * math.Log2(p)
	}
	if h < 0 { // -0 and rounding below zero for a single kind
		h = 0
	}
	return h
}

// sourceHash hashes the client's /24 (IPv4) or /56 (IPv6) prefix: one misbehaving
// client, or one node's pods behind it, is one source. FNV-1a over the prefix bytes.
func sourceHash(a net.Addr) uint32 {
	var ip net.IP
	switch v := a.(type) {
	case *net.UDPAddr:
		ip = v.IP
	case *net.TCPAddr:
		ip = v.IP
	default:
		return 0
	}
	prefix := ip.To4()
	if prefix != nil {
		prefix = prefix[:3]
	} else if len(ip) == net.IPv6len {
		prefix = ip[:7]
	} else {
		return 0
	}
	h := uint32(2166136261)
	for _, b := range prefix {
		h ^= uint32(b)
		h *= 16777619
	}
	return h
}
