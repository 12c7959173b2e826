// Package heartbeat holds the wire format of GET /pulse (version 1), shared by the pulse
// plugin that writes it and the healer that reads it. It imports nothing of CoreDNS so the
// healer does not link CoreDNS.
package heartbeat

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// Version is the only version of the heartbeat this package writes and accepts.
const Version = 1

// Path is where the pulse listener serves the heartbeat.
const Path = "/pulse"

// The window keys of Heartbeat.Windows.
const (
	// Window200ms is the latest traffic (150 to 250 ms of it: the plugin's snapshots are 100 ms
	// apart), for a reader that must see a fresh fault before the 1 s window shows it. It came
	// after the others: a heartbeat may lack it, and readers that predate it ignore it.
	Window200ms = "200ms"
	Window1s    = "1s"
	Window10s   = "10s"
	Window60s   = "60s"
)

// WindowKeys lists the windows a heartbeat carries, shortest first; every one but those
// in optionalWindows must be there.
var WindowKeys = []string{Window200ms, Window1s, Window10s, Window60s}

// optionalWindows has a bit set (of WindowKeys) for each window a heartbeat may lack.
const optionalWindows uint32 = 1 << 0

// The values of Heartbeat.Verdict.
const (
	VerdictHealthy  = "healthy"
	VerdictDegraded = "degraded"
)

// Heartbeat is the body of GET /pulse.
type Heartbeat struct {
	Version int `json:"version"`
	// Replica names the replica: the pod name in Kubernetes, else the host name.
	Replica string `json:"replica"`
	// Seq grows by one every tick, with or without traffic; a reader that sees it stop
	// knows the process (or its ticker) is stuck even when HTTP still answers.
	Seq     uint64            `json:"seq"`
	Time    time.Time         `json:"time"`
	Started time.Time         `json:"started"`
	Tick    Duration          `json:"tick"`
	Windows map[string]Window `json:"windows"`
	// SelfProbe is the last query the plugin sent through its own DNS listener.
	SelfProbe SelfProbe `json:"selfProbe"`
	// Verdict is the plugin's own opinion of itself, from the Corefile's thresholds.
	Verdict string   `json:"verdict"`
	Reasons []string `json:"reasons"`
	// InFlight is absent from the heartbeats of a pulse older than the field; readers that
	// predate it ignore it (encoding/json skips unknown fields).
	InFlight *InFlight `json:"inflight,omitempty"`
}

// InFlight counts client queries that entered pulse and have not returned.
type InFlight struct {
	Count        uint64 `json:"count"`
	OldestMicros uint64 `json:"oldestMicros"` // age of the oldest at Time; 0 when Count is 0
}

// Window is the client traffic of one trailing window. Self-probes are not counted.
type Window struct {
	Queries uint64 `json:"queries"`
	// Rcodes maps the rcode name as miekg/dns spells it (NOERROR, SERVFAIL, ...) to a count.
	Rcodes map[string]uint64 `json:"rcodes"`
	// Dropped counts queries that got no reply at all (erratic, acl drop); they are in
	// Queries but in no rcode.
	Dropped       uint64  `json:"dropped"`
	LatencyMicros Latency `json:"latencyMicros"`
	// RcodeEntropy is -sum p log2 p over the rcodes seen (dropped counts as one kind).
	RcodeEntropy  float64 `json:"rcodeEntropy"`
	NXDomainRatio float64 `json:"nxdomainRatio"`
	ServfailRatio float64 `json:"servfailRatio"`
	// ServfailSourceEntropy is the entropy, in bits, of the client prefixes (/24, /56)
	// that got SERVFAIL: near 0 when one client triggers them, high when everyone does.
	ServfailSourceEntropy float64 `json:"servfailSourceEntropy"`
}

// Latency holds quantiles of the time from query to reply, in microseconds.
type Latency struct {
	P50 uint64 `json:"p50"`
	P90 uint64 `json:"p90"`
	P99 uint64 `json:"p99"`
	Max uint64 `json:"max"`
}

// SelfProbe is the result of the plugin's last query through its own listener.
type SelfProbe struct {
	OK            bool      `json:"ok"`
	Rcode         string    `json:"rcode"`
	LatencyMicros uint64    `json:"latencyMicros"`
	Time          time.Time `json:"time"`
	Error         string    `json:"error,omitempty"`
	// PendingMicros is the age, at the heartbeat's time, of a self-probe sent and not yet
	// answered (0: none): a listener that stopped answering shows here within a tick, long
	// before the probe's timeout makes it a failure. Absent from older pulses' heartbeats.
	PendingMicros uint64 `json:"pendingMicros,omitempty"`
}

// Duration is a time.Duration that reads and writes as a Go duration string ("100ms").
type Duration time.Duration

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration: %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration: %w", err)
	}
	*d = Duration(v)
	return nil
}

// MaxBodyBytes bounds what a reader accepts; a real heartbeat is about 1.5 KiB.
const MaxBodyBytes = 64 << 10

// ErrForeign is wrapped by Decode when the body is JSON but not a version-1 heartbeat.
var ErrForeign = errors.New("not a version 1 pulse heartbeat")

// Decode reads one heartbeat and checks that it is one: a malformed, oversized or foreign
// body is an error that says what is wrong, never a panic.
func Decode(r io.Reader) (*Heartbeat, error) {
	body, err := io.ReadAll(io.LimitReader(r, MaxBodyBytes+1))
	if err != nil {
		return nil, fmt.Errorf("heartbeat: reading body: %w", err)
	}
	return Parse(body)
}

// Parse is Decode on a byte slice.
func Parse(body []byte) (*Heartbeat, error) {
	return parse(body, allWindows)
}

// allWindows has a bit set for each of WindowKeys.
var allWindows uint32 = 1<<len(WindowKeys) - 1

// parse is Parse keeping only the windows in keep (bits of WindowKeys): the others must be
// there but are not validated (Decoder.KeepWindows).
func parse(body []byte, keep uint32) (*Heartbeat, error) {
	if len(body) > MaxBodyBytes {
		return nil, fmt.Errorf("heartbeat: body larger than %d bytes", MaxBodyBytes)
	}
	var hb Heartbeat
	if err := json.Unmarshal(body, &hb); err != nil {
		return nil, fmt.Errorf("heartbeat: malformed JSON: %w", err)
	}
	if err := hb.validate(keep, 0); err != nil {
		return nil, err
	}
	for i, k := range WindowKeys {
		if keep&(1<<i) == 0 {
			delete(hb.Windows, k)
		}
	}
	return &hb, nil
}

// Validate reports the first way hb is not a usable version-1 heartbeat.
func (hb *Heartbeat) Validate() error {
	return hb.validate(allWindows, 0)
}

// validate is Validate for the windows in keep; those in skipped (bits of WindowKeys) were
// seen but not decoded, and count as present.
func (hb *Heartbeat) validate(keep, skipped uint32) error {
	switch {
	case hb.Version != Version:
		return fmt.Errorf("heartbeat: version %d: %w", hb.Version, ErrForeign)
	case hb.Time.IsZero():
		return fmt.Errorf("heartbeat: no time: %w", ErrForeign)
	case hb.Verdict != VerdictHealthy && hb.Verdict != VerdictDegraded:
		return fmt.Errorf("heartbeat: verdict %q is neither %q nor %q", hb.Verdict, VerdictHealthy, VerdictDegraded)
	}
	if f := hb.InFlight; f != nil && f.Count == 0 && f.OldestMicros != 0 {
		return fmt.Errorf("heartbeat: inflight oldestMicros %d with count 0", f.OldestMicros)
	}
	for i, k := range WindowKeys {
		w, ok := hb.Windows[k]
		if !ok && skipped&(1<<i) == 0 {
			if optionalWindows&(1<<i) != 0 {
				continue
			}
			return fmt.Errorf("heartbeat: window %q missing: %w", k, ErrForeign)
		}
		if keep&(1<<i) == 0 {
			continue
		}
		if err := w.validate(); err != nil {
			return fmt.Errorf("heartbeat: window %q: %w", k, err)
		}
	}
	return nil
}

func (w Window) validate() error {
	// In a fixed order, so that the first problem is always the same one.
	switch r := w.NXDomainRatio; {
	case r < 0 || r > 1 || r != r:
		return fmt.Errorf("nxdomainRatio %v out of [0,1]", r)
	}
	switch r := w.ServfailRatio; {
	case r < 0 || r > 1 || r != r:
		return fmt.Errorf("servfailRatio %v out of [0,1]", r)
	}
	switch e := w.RcodeEntropy; {
	case e < 0 || e > 64 || e != e:
		return fmt.Errorf("rcodeEntropy %v out of range", e)
	}
	switch e := w.ServfailSourceEntropy; {
	case e < 0 || e > 64 || e != e:
		return fmt.Errorf("servfailSourceEntropy %v out of range", e)
	}
	return nil
}
