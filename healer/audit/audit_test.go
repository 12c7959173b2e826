package audit

import (
	"errors"

	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/dnspulse/dnspulse/healer/api"
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

// TestReadBack: what Log writes, Parse reads back field by field, and Read skips the
// other lines of a mixed stream.
func TestReadBack(t *testing.T) {
	var buf bytes.Buffer
	l := New(&buf)
	at := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	l.now = func() time.Time { return at }
	l.StateChange(at, "a", api.Healthy, api.Degraded, []string{"why"}, 42*time.Millisecond)
	buf.WriteString("time=2026-01-02T03:04:05Z level=INFO msg=\"a slog line\"\n")
	l.Remediated("a", api.ActionEvict, false, api.ResultBlocked, "pdb")
	l.GlobalChange(true, []string{"a", "b"}, []string{"all"})
	l.Info(EventLeader, "", map[string]any{"leader": true})
	lines, err := Read(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if len(lines) != 4 {
		t.Fatalf("want 4 audit lines, got %d: %v", len(lines), lines)
	}
	s := lines[0]
	if s.Event != EventState || s.Replica != "a" || s.From != api.Healthy || s.To != api.Degraded || !s.Time.Equal(at) ||
		len(s.Reasons) != 1 || s.DetectionMillis == nil || *s.DetectionMillis != 42 {
		t.Errorf("state line read back as %+v", s)
	}
	r := lines[1]
	if r.Event != EventRemediation || r.Action != api.ActionEvict || r.Result != api.ResultBlocked || r.Message != "pdb" || r.DryRun {
		t.Errorf("remediation line read back as %+v", r)
	}
	if g := lines[2]; g.Event != EventGlobal || !g.Active || len(g.Replicas) != 2 {
		t.Errorf("global line read back as %+v", g)
	}
	if i := lines[3]; i.Event != EventLeader || i.Fields["leader"] != true {
		t.Errorf("info line read back as %+v", i)
	}
}

func TestParseRefusesBrokenLines(t *testing.T) {
	for _, bad := range []string{
		`{"event":"state"`,
		`{"time":"2026-01-02T03:04:05Z","event":""}`,
		`{"event":"state","replica":"a","to":"degraded","reasons":[]}`,
		`{"time":"2026-01-02T03:04:05Z","event":"state","replica":"a","reasons":[]}`,
		`{"time":"2026-01-02T03:04:05Z","event":"remediation","replica":"a","action":"evict"}`,
	} {
		if _, err := Parse([]byte(bad)); err == nil || errors.Is(err, ErrNotAudit) {
			t.Errorf("Parse(%s) = %v, want an error naming the problem", bad, err)
		}
	}
	if _, err := Parse([]byte("level=INFO msg=x")); !errors.Is(err, ErrNotAudit) {
		t.Errorf("a slog line: %v, want ErrNotAudit", err)
	}
}
