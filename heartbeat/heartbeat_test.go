package heartbeat

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

func valid() *Heartbeat {
	w := Window{Rcodes: map[string]uint64{"NOERROR": 3}, Queries: 3}
	return &Heartbeat{Version: 1, Replica: "r", Seq: 4, Time: time.Unix(1700000000, 5).UTC(), Started: time.Unix(1699999999, 0).UTC(),
		Tick: Duration(100 * time.Millisecond), Windows: map[string]Window{"1s": w, "10s": w, "60s": w},
		SelfProbe: SelfProbe{OK: true, Rcode: "NOERROR"}, Verdict: "healthy", Reasons: []string{}}
}

func TestRoundTrip(t *testing.T) {
	b, err := json.Marshal(valid())
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{`"version":1`, `"seq":4`, `"windows":{`, `"latencyMicros":{"p50":0`, `"rcodeEntropy":0`, `"nxdomainRatio":0`,
		`"servfailRatio":0`, `"servfailSourceEntropy":0`, `"selfProbe":{"ok":true,"rcode":"NOERROR","latencyMicros":0,"time":`, `"verdict":"healthy"`, `"reasons":[]`, `"tick":"100ms"`} {
		if !strings.Contains(string(b), key) {
			t.Errorf("encoded heartbeat lacks %s: %s", key, b)
		}
	}
	hb, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if hb.Seq != 4 || time.Duration(hb.Tick) != 100*time.Millisecond || !hb.Time.Equal(valid().Time) {
		t.Fatalf("round trip: %+v", hb)
	}
}

// TestInFlightIsOptional: the inflight field is written only when set, read when present,
// and a reader built before it existed (a struct without the field, as encoding/json
// decodes into it) reads a heartbeat that has it.
func TestInFlightIsOptional(t *testing.T) {
	without, _ := json.Marshal(valid())
	if strings.Contains(string(without), "inflight") {
		t.Fatalf("a heartbeat without InFlight must not carry the field: %s", without)
	}
	hb, err := Parse(without)
	if err != nil || hb.InFlight != nil {
		t.Fatalf("Parse of a heartbeat without inflight: %+v, %v", hb.InFlight, err)
	}
	with := valid()
	with.InFlight = &InFlight{Count: 3, OldestMicros: 2_500_000}
	b, _ := json.Marshal(with)
	if !strings.Contains(string(b), `"inflight":{"count":3,"oldestMicros":2500000}`) {
		t.Fatalf("encoded: %s", b)
	}
	hb, err = Parse(b)
	if err != nil || hb.InFlight == nil || *hb.InFlight != *with.InFlight {
		t.Fatalf("Parse: %+v, %v", hb.InFlight, err)
	}
	type oldHeartbeat struct { // the fields of v1 before inflight
		Version int               `json:"version"`
		Seq     uint64            `json:"seq"`
		Windows map[string]Window `json:"windows"`
		Verdict string            `json:"verdict"`
	}
	var old oldHeartbeat
	if err := json.Unmarshal(b, &old); err != nil || old.Seq != 4 || old.Verdict != "healthy" || len(old.Windows) != 3 {
		t.Fatalf("an old reader: %+v, %v", old, err)
	}
}

// TestNewerFieldsAreOptional: the 200ms window and the self-probe's pendingMicros came after
// version 1's first pulses. A heartbeat without them (an older pulse) parses, with or
// without the decoder; one with them parses to the same values either way, and a reader
// that keeps only 1s skips them.
func TestNewerFieldsAreOptional(t *testing.T) {
	old := marshal(t, valid())
	if strings.Contains(string(old), Window200ms) || strings.Contains(string(old), "pendingMicros") {
		t.Fatalf("valid() is meant to be an older pulse's heartbeat: %s", old)
	}
	var d Decoder
	for name, body := range map[string][]byte{"older pulse": old} {
		hb, err := Parse(body)
		if err != nil {
			t.Fatalf("%s: Parse: %v", name, err)
		}
		if _, ok := hb.Windows[Window200ms]; ok || hb.SelfProbe.PendingMicros != 0 {
			t.Fatalf("%s: %+v", name, hb)
		}
		var got Heartbeat
		if err := d.Decode(body, &got); err != nil || !reflect.DeepEqual(*hb, got) {
			t.Fatalf("%s: Decode %v\n%#v\nwant\n%#v", name, err, got, *hb)
		}
	}
	newer := valid()
	newer.Windows[Window200ms] = Window{Queries: 40, Rcodes: map[string]uint64{"SERVFAIL": 30, "NOERROR": 10}, ServfailRatio: 0.75}
	newer.SelfProbe.PendingMicros = 61_000
	b := marshal(t, newer)
	if !strings.Contains(string(b), `"pendingMicros":61000`) || !strings.Contains(string(b), `"200ms":{"queries":40`) {
		t.Fatalf("encoded: %s", b)
	}
	var got Heartbeat
	if err := d.Decode(b, &got); err != nil || got.SelfProbe.PendingMicros != 61_000 || got.Windows[Window200ms].Rcodes["SERVFAIL"] != 30 {
		t.Fatalf("Decode: %v, %+v", err, got)
	}
	// Decoded into the same heartbeat, an older pulse's leaves nothing of the newer one.
	if err := d.Decode(old, &got); err != nil || got.SelfProbe.PendingMicros != 0 || len(got.Windows) != 3 {
		t.Fatalf("Decode of an older heartbeat after a newer one: %v, %+v", err, got)
	}
	// The 200ms window, when there, is validated as the others.
	newer.Windows[Window200ms] = Window{Queries: 1, ServfailRatio: 2}
	if _, err := Parse(marshal(t, newer)); err == nil || !strings.Contains(err.Error(), `window "200ms": servfailRatio 2`) {
		t.Fatalf("a bad 200ms window: %v", err)
	}
	one := Decoder{KeepWindows: []string{Window1s}}
	if err := one.Decode(marshal(t, newer), &got); err != nil || len(got.Windows) != 1 {
		t.Fatalf("keeping 1s, a bad 200ms window is skipped: %v, %v", err, got.Windows)
	}
}

func TestParseRejects(t *testing.T) {
	mutate := func(f func(*Heartbeat)) string {
		hb := valid()
		f(hb)
		b, _ := json.Marshal(hb)
		return string(b)
	}
	tests := []struct {
		name, body, want string
		foreign          bool
	}{
		{"not JSON", "<html>", "malformed JSON", false},
		{"foreign JSON", `{"status":"ok"}`, "version 0", true},
		{"version 2", mutate(func(h *Heartbeat) { h.Version = 2 }), "version 2", true},
		{"no time", mutate(func(h *Heartbeat) { h.Time = time.Time{} }), "no time", true},
		{"missing window", mutate(func(h *Heartbeat) { delete(h.Windows, "60s") }), `window "60s" missing`, true},
		{"bad verdict", mutate(func(h *Heartbeat) { h.Verdict = "fine" }), `verdict "fine"`, false},
		{"ratio out of range", mutate(func(h *Heartbeat) { w := h.Windows["1s"]; w.ServfailRatio = 2; h.Windows["1s"] = w }), "servfailRatio 2 out of [0,1]", false},
		{"negative entropy", mutate(func(h *Heartbeat) { w := h.Windows["10s"]; w.RcodeEntropy = -1; h.Windows["10s"] = w }), "rcodeEntropy -1", false},
		{"inflight age without queries", mutate(func(h *Heartbeat) { h.InFlight = &InFlight{OldestMicros: 5} }), "inflight oldestMicros 5 with count 0", false},
		{"bad tick", strings.Replace(mutate(func(*Heartbeat) {}), `"100ms"`, `"soon"`, 1), "duration", false},
		{"too large", `{"replica":"` + strings.Repeat("x", MaxBodyBytes) + `"}`, "larger than", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Decode(strings.NewReader(tc.body))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
			if errors.Is(err, ErrForeign) != tc.foreign {
				t.Fatalf("errors.Is(err, ErrForeign) = %v, want %v", !tc.foreign, tc.foreign)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	b, _ := json.Marshal(valid())
	f.Add(b)
	f.Add([]byte(`{"version":1}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, body []byte) {
		hb, err := Parse(body)
		if err == nil {
			if hb.Version != Version || len(hb.Windows) < 3 {
				t.Fatalf("accepted %q as %+v", body, hb)
			}
		}
	})
}
