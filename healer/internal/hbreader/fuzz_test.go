package hbreader

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// FuzzFetch serves arbitrary bodies at /pulse and checks the reader classifies each one
// (OK only with a heartbeat that validates), never panics, and tracks seq on whatever it
// accepts.
func FuzzFetch(f *testing.F) {
	good, _ := json.Marshal(validHB(1))
	f.Add(good)
	f.Add([]byte(`{"version":1}`))
	f.Add([]byte(`{"version":1,"time":"2026-01-01T00:00:00Z","verdict":"healthy","windows":{"1s":{"servfailRatio":2}}}`))
	f.Add([]byte(`null`))
	f.Add([]byte{0xff, 0xfe})
	var body []byte
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(body) }))
	defer srv.Close()
	f.Fuzz(func(t *testing.T, b []byte) {
		body = b
		hb, kind, err := Fetch(context.Background(), srv.Client(), srv.URL+"/pulse")
		switch kind {
		case OK:
			if hb == nil || err != nil || hb.Validate() != nil {
				t.Fatalf("OK without a valid heartbeat: %v %v", hb, err)
			}
			var tr seqTracker
			tr.observe(hb, time.Now(), time.Millisecond)
			tr.observe(hb, time.Now().Add(time.Hour), time.Millisecond)
		case Invalid, Unreachable:
			if hb != nil || err == nil {
				t.Fatalf("%v with hb %v err %v", kind, hb, err)
			}
		}
	})
}
