package audit

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestLinesAsPinned(t *testing.T) {
	var buf bytes.Buffer
	l := New(&buf)
	l.now = func() time.Time { return time.Date(2026, 1, 2, 3, 4, 5, 123456789, time.UTC) }
	l.StateChange(l.now(), "coredns-a", "healthy", "degraded", nil, 42*time.Millisecond)
	l.Remediated("coredns-a", "exec", true, "dry-run", "would run: x coredns-a")
	l.GlobalChange(true, []string{"a", "b"}, nil)
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("want 3 lines, got %q", buf.String())
	}
	var state map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &state); err != nil {
		t.Fatal(err)
	}
	if state["time"] != "2026-01-02T03:04:05.123456789Z" || state["event"] != "state" || state["replica"] != "coredns-a" ||
		state["from"] != "healthy" || state["to"] != "degraded" {
		t.Errorf("state line %s", lines[0])
	}
	if r, ok := state["reasons"].([]any); !ok || len(r) != 0 {
		t.Errorf("reasons must be a JSON array, got %s", lines[0])
	}
	if _, err := time.Parse(time.RFC3339Nano, state["time"].(string)); err != nil {
		t.Error(err)
	}
	var rem map[string]any
	if err := json.Unmarshal([]byte(lines[1]), &rem); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{"event": "remediation", "replica": "coredns-a", "action": "exec", "dryRun": true, "result": "dry-run"} {
		if rem[k] != want {
			t.Errorf("remediation %s = %v, want %v", k, rem[k], want)
		}
	}
	if _, ok := rem["message"]; !ok {
		t.Errorf("no message: %s", lines[1])
	}
}
