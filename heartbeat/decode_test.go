package heartbeat

import (
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// busy is a heartbeat as pulse writes it under load: every window with several rcodes,
// a degraded verdict with reasons, queries in flight.
func busy() *Heartbeat {
	hb := valid()
	hb.Seq = 123456
	hb.Time = time.Date(2026, 11, 26, 5, 0, 0, 123456789, time.UTC)
	for i, k := range WindowKeys {
		n := uint64(1000 * (i + 1))
		hb.Windows[k] = Window{Queries: n, Rcodes: map[string]uint64{"NOERROR": n - 40, "NXDOMAIN": 20, "SERVFAIL": 15, "DROPPED": 5},
			Dropped: 5, LatencyMicros: Latency{P50: 191, P90: 415, P99: 1023, Max: 1310},
			RcodeEntropy: 0.2745, NXDomainRatio: 0.02, ServfailRatio: 0.015, ServfailSourceEntropy: 1.5}
	}
	hb.SelfProbe = SelfProbe{OK: false, Rcode: "SERVFAIL", LatencyMicros: 1200, Time: hb.Time.Add(-time.Millisecond), Error: "rcode SERVFAIL"}
	hb.Verdict = VerdictDegraded
	hb.Reasons = []string{"self-probe failed: rcode SERVFAIL", "servfail ratio 0.30 > 0.25 over 120 queries in 1s"}
	hb.InFlight = &InFlight{Count: 3, OldestMicros: 250000}
	return hb
}

func marshal(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// sameAsParse decodes body with d into hb and fails unless the outcome is Parse's: the
// same error text, or no error and an equal heartbeat.
func sameAsParse(t *testing.T, d *Decoder, hb *Heartbeat, body []byte) {
	t.Helper()
	want, werr := Parse(body)
	gerr := d.Decode(body, hb)
	switch {
	case (werr == nil) != (gerr == nil):
		t.Fatalf("%q:\nParse error %v\nDecode error %v", body, werr, gerr)
	case werr != nil:
		if werr.Error() != gerr.Error() || errors.Is(werr, ErrForeign) != errors.Is(gerr, ErrForeign) {
			t.Fatalf("%q:\nParse error %v\nDecode error %v", body, werr, gerr)
		}
	case !reflect.DeepEqual(*want, *hb):
		t.Fatalf("%q:\nParse  %#v\nDecode %#v", body, *want, *hb)
	}
}

func TestDecoderMatchesParse(t *testing.T) {
	good := string(marshal(t, busy()))
	plain := string(marshal(t, valid()))
	tests := map[string]string{
		"busy":                      good,
		"healthy, no inflight":      plain,
		"indented":                  strings.ReplaceAll(good, ",", ",\n  "),
		"unknown field, any value":  strings.Replace(good, `{"version"`, `{"future":{"a":[1,2.5,"x",true,false,{}]},"version"`, 1),
		"key differs only by case":  strings.Replace(good, `"seq":`, `"SEQ":`, 1),
		"repeated key":              strings.Replace(good, `"seq":123456`, `"seq":1,"seq":123456`, 1),
		"repeated latency object":   strings.Replace(good, `"latencyMicros":{"p50":191`, `"latencyMicros":{"p90":7},"latencyMicros":{"p50":191`, 1),
		"repeated rcodes":           strings.Replace(good, `"rcodes":{`, `"rcodes":{"OTHER":1},"rcodes":{`, 1),
		"repeated window":           strings.Replace(good, `"windows":{`, `"windows":{"1s":{"queries":9},`, 1),
		"null reasons":              strings.Replace(good, `"reasons":[`, `"reasons":null,"x":[`, 1),
		"no reasons":                strings.Replace(plain, `,"reasons":[]`, ``, 1),
		"escaped string":            strings.Replace(good, `"replica":"r"`, `"replica":"r\u00e9\n"`, 1),
		"non-ASCII string":          strings.Replace(good, `"replica":"r"`, `"replica":"ré"`, 1),
		"float seq":                 strings.Replace(good, `"seq":123456`, `"seq":1.5`, 1),
		"negative queries":          strings.Replace(good, `"queries":1000`, `"queries":-1`, 1),
		"exponent ratio":            strings.Replace(good, `"nxdomainRatio":0.02`, `"nxdomainRatio":2e-2`, 1),
		"ratio out of range":        strings.Replace(good, `"servfailRatio":0.015`, `"servfailRatio":1.5`, 1),
		"huge float":                strings.Replace(good, `"rcodeEntropy":0.2745`, `"rcodeEntropy":1e999`, 1),
		"leading zero":              strings.Replace(good, `"seq":123456`, `"seq":0123456`, 1),
		"version 2":                 strings.Replace(good, `"version":1`, `"version":2`, 1),
		"no time":                   strings.Replace(plain, `"time":"2023-11-14T22:13:20.000000005Z",`, ``, 1),
		"time with offset":          strings.Replace(good, `"time":"2026-11-26T05:00:00.123456789Z"`, `"time":"2026-11-26T07:00:00.123456789+02:00"`, 1),
		"bad time":                  strings.Replace(good, `"time":"2026-11-26T05:00:00.123456789Z"`, `"time":"yesterday"`, 1),
		"bad tick":                  strings.Replace(good, `"tick":"100ms"`, `"tick":"soon"`, 1),
		"numeric tick":              strings.Replace(good, `"tick":"100ms"`, `"tick":100`, 1),
		"other tick":                strings.Replace(good, `"tick":"100ms"`, `"tick":"20ms"`, 1),
		"missing window":            strings.Replace(plain, `"60s":`, `"6s":`, 1),
		"extra window":              strings.Replace(good, `"windows":{`, `"windows":{"5s":{},`, 1),
		"unknown rcode name":        strings.Replace(good, `"NXDOMAIN":20`, `"RCODE25":20`, 1),
		"inflight age without load": strings.Replace(good, `"count":3`, `"count":0`, 1),
		"inflight null":             strings.Replace(good, `"inflight":{"count":3,"oldestMicros":250000}`, `"inflight":null`, 1),
		"no self-probe":             strings.Replace(plain, `"selfProbe":{"ok":true,"rcode":"NOERROR","latencyMicros":0,"time":"0001-01-01T00:00:00Z"},`, ``, 1),
		"bad verdict":               strings.Replace(good, `"degraded"`, `"fine"`, 1),
		"trailing data":             good + ` {}`,
		"trailing space":            good + " \n",
		"truncated":                 good[:len(good)/2],
		"empty":                     ``,
		"null":                      `null`,
		"array":                     `[]`,
		"foreign":                   `{"status":"ok"}`,
		"too large":                 `{"replica":"` + strings.Repeat("x", MaxBodyBytes) + `"}`,
	}
	for name, body := range tests {
		t.Run(name, func(t *testing.T) {
			var d Decoder
			sameAsParse(t, &d, new(Heartbeat), []byte(body))
			// And into a heartbeat that held another one: nothing of it may remain.
			hb := new(Heartbeat)
			if err := d.Decode(marshal(t, busy()), hb); err != nil {
				t.Fatal(err)
			}
			sameAsParse(t, &d, hb, []byte(body))
		})
	}
}

// TestDecoderReusesStorage: decoding the next tick of the same replica allocates nothing.
func TestDecoderReusesStorage(t *testing.T) {
	var bodies [][]byte
	for i := range 16 {
		hb := busy()
		hb.Seq += uint64(i)
		hb.Time = hb.Time.Add(time.Duration(i) * 100 * time.Millisecond)
		w := hb.Windows[Window1s]
		w.Queries += uint64(i)
		w.Rcodes["NOERROR"] += uint64(i)
		hb.Windows[Window1s] = w
		hb.InFlight.OldestMicros += uint64(i)
		bodies = append(bodies, marshal(t, hb))
	}
	var d Decoder
	hb := new(Heartbeat)
	d.Decode(bodies[0], hb) // the first fills the storage
	i := 0
	if n := testing.AllocsPerRun(100, func() {
		if err := d.Decode(bodies[i%len(bodies)], hb); err != nil {
			t.Fatal(err)
		}
		i++
	}); n != 0 {
		t.Fatalf("%v allocations per decode of the next tick, want 0", n)
	}
	want, _ := Parse(bodies[(i-1)%len(bodies)])
	if !reflect.DeepEqual(*want, *hb) {
		t.Fatalf("after reuse:\n%#v\nwant\n%#v", *hb, *want)
	}
}

// FuzzDecoderMatchesParse: any body, decoded into a heartbeat that held the previous
// input's, gives Parse's outcome: the same accept or reject, the same error, the same
// heartbeat.
func FuzzDecoderMatchesParse(f *testing.F) {
	f.Add(marshal(f, busy()))
	f.Add(marshal(f, valid()))
	f.Add([]byte(`{"version":1,"seq":1,"SEQ":2}`))
	f.Add([]byte(`{"windows":{"1s":{"rcodes":{"NOERROR":1}},"1s":{}}}`))
	f.Add([]byte(`{"reasons":["a\"b"],"inflight":{"count":0,"oldestMicros":1}}`))
	var d Decoder
	hb := new(Heartbeat)
	f.Fuzz(func(t *testing.T, body []byte) {
		sameAsParse(t, &d, hb, body)
	})
}

func TestStreamReader(t *testing.T) {
	a, b := marshal(t, valid()), marshal(t, busy())
	stream := string(a) + "\n\r\n" + string(b) + "\r\n" + "{not json}\n" + string(a) + "\n"
	r := NewStreamReader(strings.NewReader(stream))
	hb := new(Heartbeat)
	for i, want := range []struct {
		seq uint64
		err string
	}{{4, ""}, {123456, ""}, {0, "malformed JSON"}, {4, ""}, {0, "EOF"}} {
		err := r.Next(hb)
		if want.err != "" {
			if err == nil || !strings.Contains(err.Error(), want.err) {
				t.Fatalf("line %d: error %v, want %q", i, err, want.err)
			}
			continue
		}
		if err != nil || hb.Seq != want.seq {
			t.Fatalf("line %d: seq %d, error %v; want seq %d", i, hb.Seq, err, want.seq)
		}
	}
	if err := r.Next(hb); !errors.Is(err, io.EOF) {
		t.Fatalf("after the end: %v, want io.EOF again", err)
	}
}

func TestStreamReaderLimits(t *testing.T) {
	long := strings.Repeat(" ", MaxBodyBytes+10) + "\n" + string(marshal(t, valid())) + "\n"
	r := NewStreamReader(strings.NewReader(long))
	hb := new(Heartbeat)
	if err := r.Next(hb); !errors.Is(err, ErrLineTooLong) {
		t.Fatalf("oversized line: %v, want ErrLineTooLong", err)
	}
	if err := r.Next(hb); !errors.Is(err, ErrLineTooLong) {
		t.Fatalf("after an oversized line: %v, want ErrLineTooLong (the stream cannot resynchronise)", err)
	}
	half := marshal(t, valid())
	r = NewStreamReader(strings.NewReader(string(half[:40])))
	if err := r.Next(hb); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("stream cut in a line: %v, want io.ErrUnexpectedEOF", err)
	}
	// A line of exactly MaxBodyBytes is read (and rejected by Parse's rules, not the reader's).
	exact := `{"x":"` + strings.Repeat("y", MaxBodyBytes-8) + `"}`
	r = NewStreamReader(strings.NewReader(exact + "\n"))
	if err := r.Next(hb); err == nil || errors.Is(err, ErrLineTooLong) {
		t.Fatalf("line of %d bytes: %v, want a heartbeat error, not ErrLineTooLong", len(exact), err)
	}
}

// BenchmarkDecode compares Parse (encoding/json) with the Decoder on a busy heartbeat,
// the next tick each time. Run: go test -run '^$' -bench Decode ./heartbeat, compare with
// benchstat -col /decoder.
// parseKeep is Parse keeping only the windows keep names, as a Decoder with KeepWindows
// should decode a heartbeat whose other windows are valid.
func parseKeep(t *testing.T, body []byte, keep ...string) *Heartbeat {
	t.Helper()
	hb, err := Parse(body)
	if err != nil {
		t.Fatal(err)
	}
	for k := range hb.Windows {
		if !slices.Contains(keep, k) {
			delete(hb.Windows, k)
		}
	}
	return hb
}

func TestDecoderKeepWindows(t *testing.T) {
	good := string(marshal(t, busy()))
	d := Decoder{KeepWindows: []string{Window1s}}
	hb := new(Heartbeat)
	// Decoded into the same heartbeat one after the other: what an earlier decode left
	// (the full one's 10s and 60s windows) must not stay.
	var full Decoder
	if err := full.Decode([]byte(good), hb); err != nil || len(hb.Windows) != len(WindowKeys) {
		t.Fatalf("full decode: %v, %d windows", err, len(hb.Windows))
	}
	for name, body := range map[string]string{
		"busy":               good,
		"healthy":            string(marshal(t, valid())),
		"indented":           strings.ReplaceAll(good, ",", ",\n  "),
		"escaped string":     strings.Replace(good, `"replica":"r"`, `"replica":"r\u00e9\n"`, 1), // the slow path
		"60s window bad":     strings.Replace(good, `"60s":{"queries":3000`, `"60s":{"queries":3000,"servfailRatio":7,"x":[1,{}]`, 1),
		"10s window foreign": strings.Replace(good, `"10s":{"queries":2000`, `"10s":{"queries":"many"`, 1),
	} {
		if err := d.Decode([]byte(body), hb); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		fixed := strings.NewReplacer(`,"servfailRatio":7,"x":[1,{}]`, ``, `"queries":"many"`, `"queries":2000`).Replace(body)
		if want := parseKeep(t, []byte(fixed), Window1s); !reflect.DeepEqual(*want, *hb) {
			t.Fatalf("%s:\n%#v\nwant\n%#v", name, *hb, *want)
		}
	}
	// What is still wrong when only 1s is kept: a window missing, or not an object, and
	// anything wrong in the 1s window, with Parse's error.
	edit := func(f func(windows map[string]any)) string {
		var m map[string]any
		if err := json.Unmarshal([]byte(good), &m); err != nil {
			t.Fatal(err)
		}
		f(m["windows"].(map[string]any))
		return string(marshal(t, m))
	}
	for name, tc := range map[string]struct{ body, err string }{
		"60s missing":     {edit(func(w map[string]any) { delete(w, Window60s) }), `window "60s" missing`},
		"10s not object":  {edit(func(w map[string]any) { w[Window10s] = []any{w[Window10s]} }), "malformed JSON"},
		"1s ratio":        {edit(func(w map[string]any) { w[Window1s].(map[string]any)["servfailRatio"] = 1.5 }), "servfailRatio 1.5 out of [0,1]"},
		"1s syntax error": {strings.Replace(good, `"queries":1000`, `"queries":1000,,`, 1), "malformed JSON"},
	} {
		err := d.Decode([]byte(tc.body), hb)
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: error %v, want %q", name, err, tc.err)
		}
	}
}

// FuzzDecoderKeepWindows: a body Parse accepts decodes with KeepWindows as Parse decodes
// it, less the other windows; whatever Decode accepts has every window and a valid 1s.
func FuzzDecoderKeepWindows(f *testing.F) {
	f.Add(marshal(f, busy()))
	f.Add(marshal(f, valid()))
	f.Add([]byte(`{"windows":{"1s":{"rcodes":{"NOERROR":1}},"10s":{"a":"\u00e9"},"60s":{}}}`))
	d := Decoder{KeepWindows: []string{Window1s}}
	hb := new(Heartbeat)
	f.Fuzz(func(t *testing.T, body []byte) {
		err := d.Decode(body, hb)
		if want, perr := Parse(body); perr == nil {
			delete(want.Windows, Window200ms)
			delete(want.Windows, Window10s)
			delete(want.Windows, Window60s)
			if err != nil || !reflect.DeepEqual(*want, *hb) {
				t.Fatalf("%q: Parse accepts it; Decode %v\n%#v\nwant\n%#v", body, err, *hb, *want)
			}
		}
		if err == nil {
			if _, ok := hb.Windows[Window1s]; !ok || len(hb.Windows) != 1 {
				t.Fatalf("%q: accepted with windows %v", body, hb.Windows)
			}
			if err := hb.Windows[Window1s].validate(); err != nil {
				t.Fatalf("%q: accepted with a bad 1s window: %v", body, err)
			}
		}
	})
}

func BenchmarkDecode(b *testing.B) {
	var bodies [][]byte
	for i := range 16 {
		hb := busy()
		hb.Seq += uint64(i)
		bodies = append(bodies, marshal(b, hb))
	}
	b.Run("decoder=encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(bodies[0])))
		for i := 0; b.Loop(); i++ {
			if _, err := Parse(bodies[i%len(bodies)]); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("decoder=fast", func(b *testing.B) {
		var d Decoder
		hb := new(Heartbeat)
		b.ReportAllocs()
		b.SetBytes(int64(len(bodies[0])))
		for i := 0; b.Loop(); i++ {
			if err := d.Decode(bodies[i%len(bodies)], hb); err != nil {
				b.Fatal(err)
			}
		}
	})
	// As the healer's stream reader decodes: a new Heartbeat per line (the detector keeps
	// the last one), every window or only the 1s one it reads.
	for _, keep := range [][]string{nil, {Window1s}} {
		name := "decoder=fast,fresh-heartbeat,windows=all"
		if keep != nil {
			name = "decoder=fast,fresh-heartbeat,windows=1s"
		}
		b.Run(name, func(b *testing.B) {
			d := Decoder{KeepWindows: keep}
			b.ReportAllocs()
			b.SetBytes(int64(len(bodies[0])))
			for i := 0; b.Loop(); i++ {
				if err := d.Decode(bodies[i%len(bodies)], new(Heartbeat)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
