package pulse

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dnspulse/dnspulse/heartbeat"

	"github.com/miekg/dns"
)

func startWatchRunner(t *testing.T, watchers int, tune func(*runner)) (*runner, string) {
	t.Helper()
	p := newTestPulse(writeRcode(dns.RcodeSuccess, 0))
	r := &runner{cfg: config{addr: "127.0.0.1:0", tick: 10 * time.Millisecond, replica: "w", probeName: "dnspulse-self-probe.", maxWatchers: watchers}, hub: p.hub}
	if tune != nil {
		tune(r)
	}
	if err := r.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.stop() })
	return r, "http://" + r.ln.Addr().String() + heartbeat.Path
}

func watch(t *testing.T, url string) (*http.Response, *heartbeat.StreamReader) {
	t.Helper()
	resp, err := http.Get(url + "?watch=1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp, heartbeat.NewStreamReader(resp.Body)
}

func TestWatchStreamsOneLinePerTick(t *testing.T) {
	r, url := startWatchRunner(t, 4, nil)
	resp, sr := watch(t, url)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != heartbeat.StreamContentType {
		t.Fatalf("GET ?watch=1: %s %q", resp.Status, resp.Header.Get("Content-Type"))
	}
	var hb heartbeat.Heartbeat
	if err := sr.Next(&hb); err != nil {
		t.Fatalf("first line: %v", err)
	}
	first := hb.Seq
	// The ticker is running: the lines that follow have growing seq, one tick apart
	// unless this reader was too slow for one (then a line is skipped, never repeated).
	prev := first
	for range 5 {
		if err := sr.Next(&hb); err != nil {
			t.Fatal(err)
		}
		if hb.Seq <= prev {
			t.Fatalf("seq %d after %d: lines must move forward", hb.Seq, prev)
		}
		prev = hb.Seq
	}
	if r.watch.count() != 1 {
		t.Fatalf("%d watchers registered, want 1", r.watch.count())
	}
	// GET /pulse is unchanged: one document, no newline.
	b := getBody(t, url)
	if len(b) == 0 || b[len(b)-1] != '}' {
		t.Fatalf("GET /pulse body ends with %q", b[max(0, len(b)-3):])
	}
	if _, err := heartbeat.Parse(b); err != nil {
		t.Fatal(err)
	}
}

func getBody(t *testing.T, url string) []byte {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET %s: %s %v", url, resp.Status, err)
	}
	return b
}

// TestWatchFirstLineAtOnce: the current heartbeat comes first, without waiting for a tick.
func TestWatchFirstLineAtOnce(t *testing.T) {
	_, url := startWatchRunner(t, 4, func(r *runner) { r.cfg.tick = 10 * time.Second })
	_, sr := watch(t, url)
	var hb heartbeat.Heartbeat
	done := make(chan error, 1)
	go func() { done <- sr.Next(&hb) }()
	select {
	case err := <-done:
		if err != nil || hb.Seq != 1 {
			t.Fatalf("first line: seq %d, %v; want the heartbeat of start (seq 1)", hb.Seq, err)
		}
	case <-time.After(5 * time.Second): // half the tick: the line did not wait for one
		t.Fatal("no first line before the first tick")
	}
}

func TestWatchersAreBounded(t *testing.T) {
	r, url := startWatchRunner(t, 2, nil)
	var hb heartbeat.Heartbeat
	first, sr := watch(t, url)
	if err := sr.Next(&hb); err != nil {
		t.Fatal(err)
	}
	_, sr2 := watch(t, url)
	if err := sr2.Next(&hb); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(url + "?watch=1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(body), "2 watchers already") {
		t.Fatalf("third watcher: %s, Retry-After %q, %q; want 503 saying why", resp.Status, resp.Header.Get("Retry-After"), body)
	}
	// Polling still works when the streams are full.
	getBody(t, url)
	// One leaves: a new one is served.
	first.Body.Close()
	waitFor(t, "the closed stream to be let go", func() bool { return r.watch.count() == 1 })
	_, sr3 := watch(t, url)
	if err := sr3.Next(&hb); err != nil {
		t.Fatalf("after one left: %v", err)
	}
}

func TestWatchZeroWatchersMeansNoStreams(t *testing.T) {
	_, url := startWatchRunner(t, 0, nil)
	resp, err := http.Get(url + "?watch=1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("watchers 0: %s, want 503", resp.Status)
	}
}

func TestWatchBadParameter(t *testing.T) {
	_, url := startWatchRunner(t, 2, nil)
	for q, want := range map[string]int{"?watch=yes": 400, "?watch=0": 200, "?other=1": 200} {
		resp, err := http.Get(url + q)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("%s: %s %q, want %d", q, resp.Status, body, want)
		}
		if want == 400 && !strings.Contains(string(body), `watch="yes": want 1`) {
			t.Fatalf("%s: %q does not say what is wrong", q, body)
		}
		if want == 200 {
			if _, err := heartbeat.Parse(body); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
	}
	// HEAD with watch=1 answers the headers of one heartbeat and ends.
	req, _ := http.NewRequest(http.MethodHead, url+"?watch=1", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("HEAD ?watch=1: %s %q", resp.Status, resp.Header.Get("Content-Type"))
	}
}

// smallBuffers makes the server's sockets send little before a write blocks, so that a
// reader that stops reading is stuck within a few lines.
type smallBuffers struct{ net.Listener }

func (l smallBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetWriteBuffer(4096)
	}
	return c, err
}

// TestWatchDisconnectsAStuckReader: a client that stops reading is disconnected once a
// write has been stuck for stuckAfter, and frees its place.
func TestWatchDisconnectsAStuckReader(t *testing.T) {
	r, _ := startWatchRunner(t, 2, func(r *runner) {
		r.stuck = 200 * time.Millisecond
		r.wrapListener = func(l net.Listener) net.Listener { return smallBuffers{l} }
	})
	d := net.Dialer{}
	c, err := d.Dial("tcp", r.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.(*net.TCPConn).SetReadBuffer(4096)
	if _, err := c.Write([]byte("GET " + heartbeat.Path + "?watch=1 HTTP/1.1\r\nHost: pulse\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the watcher to be registered", func() bool { return r.watch.count() == 1 })
	// It never reads: the kernel buffers fill, a write blocks, the deadline passes.
	waitFor(t, "the stuck watcher to be disconnected", func() bool { return r.watch.count() == 0 })
	// The connection is closed: reading what was buffered ends in EOF or a reset.
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = io.Copy(io.Discard, bufio.NewReader(c))
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("the server kept the stuck connection open")
	}
}

// TestWatchSkipsLinesForASlowReader: lines published while a watcher is busy are not
// queued: it gets the newest when it is ready.
func TestWatchSkipsLinesForASlowReader(t *testing.T) {
	ws := newWatchers(1)
	w, _, _ := ws.add()
	for i := range 5 {
		line := []byte{byte('0' + i), '\n'}
		ws.publish(&line)
	}
	<-w.wake
	if got := w.line.Swap(nil); got == nil || string(*got) != "4\n" {
		t.Fatalf("a slow watcher got %q, want only the newest line", *got)
	}
	select {
	case <-w.wake:
		t.Fatal("woken again for lines it has skipped")
	default:
	}
}

// TestPublishDoesNotAllocate: the per-tick cost of watchers is a pointer store and a
// wake-up each; the line is encoded once, by the ticker, whatever their number.
func TestPublishDoesNotAllocate(t *testing.T) {
	ws := newWatchers(10)
	for range 10 {
		w, _, _ := ws.add()
		go func() {
			for range w.wake {
			}
		}()
	}
	line := []byte("{}\n")
	if n := testing.AllocsPerRun(1000, func() { ws.publish(&line) }); n != 0 {
		t.Fatalf("publish to 10 watchers allocates %v times", n)
	}
}

// TestStopEndsStreams: a reload (runner stop) ends the streams at once; the watchers see
// the end of the stream and reconnect to the next runner.
func TestStopEndsStreams(t *testing.T) {
	r, url := startWatchRunner(t, 2, nil)
	_, sr := watch(t, url)
	var hb heartbeat.Heartbeat
	if err := sr.Next(&hb); err != nil {
		t.Fatal(err)
	}
	if err := r.stop(); err != nil {
		t.Fatalf("stop with a stream open: %v", err)
	}
	for {
		if err := sr.Next(&hb); err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !strings.Contains(err.Error(), "connection reset") {
				t.Fatalf("stream after stop: %v", err)
			}
			break
		}
	}
}
