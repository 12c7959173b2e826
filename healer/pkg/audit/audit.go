// Package audit writes the healer's decisions as JSON lines, the record an operator (and
// the tests) read: one object a line with "time" (RFC 3339, nanoseconds) and "event".
package audit

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
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

// State is {"event":"state"}: a replica changed state.
type State struct {
	Time    string   `json:"time"`
	Event   string   `json:"event"`
	Replica string   `json:"replica"`
	From    string   `json:"from"`
	To      string   `json:"to"`
	Reasons []string `json:"reasons"`
	// DetectionMillis is the time from the first evidence to this verdict.
	DetectionMillis *float64 `json:"detectionMillis,omitempty"`
}

// Remediation is {"event":"remediation"}: an action on a replica, or why none was taken.
type Remediation struct {
	Time    string `json:"time"`
	Event   string `json:"event"`
	Replica string `json:"replica"`
	Action  string `json:"action"`
	DryRun  bool   `json:"dryRun"`
	Result  string `json:"result"`
	Message string `json:"message"`
}

// Global is {"event":"global"}: every replica failing at once; alert, no eviction.
type Global struct {
	Time     string   `json:"time"`
	Event    string   `json:"event"`
	Active   bool     `json:"active"`
	Replicas []string `json:"replicas"`
	Reasons  []string `json:"reasons"`
}

// Info is any other event ("start", "stop", "leader", ...).
type Info struct {
	Time    string         `json:"time"`
	Event   string         `json:"event"`
	Message string         `json:"message,omitempty"`
	Fields  map[string]any `json:"fields,omitempty"`
}

// Timestamp formats t as every line does.
func Timestamp(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// StateChange writes a state line at t.
func (l *Log) StateChange(t time.Time, replica, from, to string, reasons []string, detection time.Duration) {
	if reasons == nil {
		reasons = []string{}
	}
	s := State{Time: Timestamp(t), Event: "state", Replica: replica, From: from, To: to, Reasons: reasons}
	if detection > 0 {
		ms := float64(detection.Microseconds()) / 1000
		s.DetectionMillis = &ms
	}
	l.write(s)
}

// Remediated writes a remediation line.
func (l *Log) Remediated(replica, action string, dryRun bool, result, message string) {
	l.write(Remediation{Time: Timestamp(l.now()), Event: "remediation", Replica: replica, Action: action, DryRun: dryRun, Result: result, Message: message})
}

// GlobalChange writes a global line.
func (l *Log) GlobalChange(active bool, replicas, reasons []string) {
	if replicas == nil {
		replicas = []string{}
	}
	if reasons == nil {
		reasons = []string{}
	}
	l.write(Global{Time: Timestamp(l.now()), Event: "global", Active: active, Replicas: replicas, Reasons: reasons})
}

// Event writes any other event.
func (l *Log) Event(event, message string, fields map[string]any) {
	l.write(Info{Time: Timestamp(l.now()), Event: event, Message: message, Fields: fields})
}

func (l *Log) write(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		return // the types above always marshal
	}
	b = append(b, '\n')
	l.mu.Lock()
	defer l.mu.Unlock()
	_, _ = l.w.Write(b) // an unwritable audit log must not stop healing; metrics still count
}
