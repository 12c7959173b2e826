//go:build integration

package pulse_test

import (
	"fmt"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/dnspulse/dnspulse/heartbeat"
)

// TestWatchStreamStallsWithTheProcess: the stream of the real binary brings a heartbeat per
// tick, each one a valid v1 document; when the process is frozen the lines stop (the
// evidence a reader acts on), and they resume, seq moving on, when it thaws.
func TestWatchStreamStallsWithTheProcess(t *testing.T) {
	dnsPort, pulsePort := freePort(t), freePort(t)
	url := fmt.Sprintf("http://127.0.0.1:%d%s", pulsePort, heartbeat.Path)
	proc := startCoreDNS(t, fmt.Sprintf(`.:%d {
    bind 127.0.0.1
    pulse 127.0.0.1:%d {
        tick 20ms
        watchers 2
    }
    whoami
}
`, dnsPort, pulsePort), url)

	resp, err := http.Get(url + "?watch=1")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != heartbeat.StreamContentType {
		t.Fatalf("GET ?watch=1: %s %q", resp.Status, resp.Header.Get("Content-Type"))
	}
	type line struct {
		seq uint64
		at  time.Time
		err error
	}
	lines := make(chan line, 1024)
	go func() {
		sr := heartbeat.NewStreamReader(resp.Body)
		var hb heartbeat.Heartbeat
		for {
			err := sr.Next(&hb)
			if err == nil && hb.InFlight == nil {
				err = fmt.Errorf("seq %d: no inflight field", hb.Seq)
			}
			lines <- line{hb.Seq, time.Now(), err}
			if err != nil {
				return
			}
		}
	}()
	next := func(within time.Duration) (line, bool) {
		select {
		case l := <-lines:
			if l.err != nil {
				t.Fatalf("stream: %v", l.err)
			}
			return l, true
		case <-time.After(within):
			return line{}, false
		}
	}
	var last line
	for i := range 10 {
		l, ok := next(5 * time.Second)
		if !ok {
			t.Fatalf("line %d: none within 5 s", i)
		}
		if i > 0 && l.seq <= last.seq {
			t.Fatalf("seq %d after %d", l.seq, last.seq)
		}
		last = l
	}

	proc.signal(t, syscall.SIGSTOP)
	// Lines already on their way may still come; then none while the process is frozen.
	for {
		l, ok := next(200 * time.Millisecond)
		if !ok {
			break
		}
		last = l
	}
	if l, ok := next(500 * time.Millisecond); ok {
		t.Fatalf("a line (seq %d) from a frozen process", l.seq)
	}
	proc.signal(t, syscall.SIGCONT)
	l, ok := next(5 * time.Second)
	if !ok {
		t.Fatal("no line within 5 s of the process thawing")
	}
	if l.seq <= last.seq {
		t.Fatalf("after the freeze seq %d, before %d", l.seq, last.seq)
	}
	proc.alive(t)
}
