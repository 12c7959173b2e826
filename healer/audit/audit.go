// Package audit is the healer's audit log: one JSON object a line with "time" (RFC 3339,
// nanoseconds) and "event", the record an operator reads and every test parses. It both
// writes the lines (Log) and reads them back (Parse, Read): one schema, in one place
// (docs/design.md, "Interfaces that stay stable: the audit log").
package audit

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/dnspulse/dnspulse/healer/api"
)

// Event is the kind of an audit line.
type Event string

// The events. state, remediation and global carry the fields of their own line types;
// the others are Info lines (message and fields).
const (
	EventState       Event = "state"       // a replica changed state
	EventRemediation Event = "remediation" // an action on a replica, or why none was taken
	EventGlobal      Event = "global"      // every replica failing at once (alert), or that ending
	EventStart       Event = "start"       // the healer started (mode, dry run, checks)
	EventStop        Event = "stop"        // the healer is stopping
	EventReplica     Event = "replica"     // a replica was discovered
	EventReplicaGone Event = "replica-gone"
	EventLeader      Event = "leader"      // this healer started or stopped leading
	EventReplacement Event = "replacement" // an evicted replica's replacement is Ready, or is not in time
	EventCanary      Event = "canary"      // the freshness canary could not be written
	EventProbeQPSCap Event = "probe-qps-cap"
	EventCheck       Event = "check"     // a check became broken (misconfigured) or good again
	EventFlapping    Event = "flapping"  // a replica keeps entering degraded
	EventPartition   Event = "partition" // a replica unreachable for the healer, serving for the cluster
	EventMemory      Event = "memory"    // a new leader loaded the guards' memory
)

// Log writes audit lines; safe for concurrent use.
type Log struct {
	mu    sync.Mutex
	w     io.Writer
	close func() error
	now   func() time.Time
}

// Open opens path for appending ("-" is stdout).
func Open(path string) (*Log, error) {
	if path == "-" || path == "" {
		return New(os.Stdout), nil
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("--audit-log: %w", err)
	}
	l := New(f)
	l.close = f.Close
	return l, nil
}

// New writes to w.
func New(w io.Writer) *Log {
	return &Log{w: w, close: func() error { return nil }, now: time.Now}
}

// Close closes the file, if any.
func (l *Log) Close() error { return l.close() }

// stateLine is {"event":"state"}.
type stateLine struct {
	Time            string    `json:"time"`
	Event           Event     `json:"event"`
	Replica         string    `json:"replica"`
	From            api.State `json:"from"`
	To              api.State `json:"to"`
	Reasons         []string  `json:"reasons"`
	DetectionMillis *float64  `json:"detectionMillis,omitempty"`
}

// remediationLine is {"event":"remediation"}.
type remediationLine struct {
	Time    string     `json:"time"`
	Event   Event      `json:"event"`
	Replica string     `json:"replica"`
	Action  api.Action `json:"action"`
	DryRun  bool       `json:"dryRun"`
	Result  api.Result `json:"result"`
	Message string     `json:"message"`
}

// globalLine is {"event":"global"}.
type globalLine struct {
	Time     string   `json:"time"`
	Event    Event    `json:"event"`
	Active   bool     `json:"active"`
	Replicas []string `json:"replicas"`
	Reasons  []string `json:"reasons"`
}

// infoLine is any other event.
type infoLine struct {
	Time    string         `json:"time"`
	Event   Event          `json:"event"`
	Message string         `json:"message,omitempty"`
	Fields  map[string]any `json:"fields,omitempty"`
}

// Timestamp formats t as every line does.
func Timestamp(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// StateChange writes a state line at t; detection is the time from the first evidence to
// this state (0: not given).
func (l *Log) StateChange(t time.Time, replica string, from, to api.State, reasons []string, detection time.Duration) {
	s := stateLine{Time: Timestamp(t), Event: EventState, Replica: replica, From: from, To: to, Reasons: nonNil(reasons)}
	if detection > 0 {
		ms := float64(detection.Microseconds()) / 1000
		s.DetectionMillis = &ms
	}
	l.write(s)
}

// Remediated writes a remediation line.
func (l *Log) Remediated(replica string, action api.Action, dryRun bool, result api.Result, message string) {
	l.write(remediationLine{Time: Timestamp(l.now()), Event: EventRemediation, Replica: replica, Action: action, DryRun: dryRun, Result: result, Message: message})
}

// GlobalChange writes a global line.
func (l *Log) GlobalChange(active bool, replicas, reasons []string) {
	l.write(globalLine{Time: Timestamp(l.now()), Event: EventGlobal, Active: active, Replicas: nonNil(replicas), Reasons: nonNil(reasons)})
}

// Info writes any other event.
func (l *Log) Info(event Event, message string, fields map[string]any) {
	l.write(infoLine{Time: Timestamp(l.now()), Event: event, Message: message, Fields: fields})
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func (l *Log) write(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		return // the line types above always marshal
	}
	b = append(b, '\n')
	l.mu.Lock()
	defer l.mu.Unlock()
	_, _ = l.w.Write(b) // an unwritable audit log must not stop healing; metrics still count
}
