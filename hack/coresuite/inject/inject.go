// Package inject is compiled into a copy of CoreDNS's own test/ package by
// hack/coresuite (make test-coredns-suite): that copy's NewInput, the funnel every test's
// Corefile goes through, calls Input. With PULSE_SUITE=1, Input puts `pulse` into every
// server block (on a loopback port of its own per Corefile); either way it counts the
// server blocks with CoreDNS's own Corefile parser, and with pulse it watches each
// Corefile's heartbeat while the server lives. Main writes what it saw to
// PULSE_SUITE_REPORT, the proof that pulse was there and saw queries.
package inject

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"reflect"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coredns/caddy"
	"github.com/coredns/caddy/caddyfile"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/dnspulse/dnspulse/heartbeat"
	_ "github.com/dnspulse/dnspulse/plugin/pulse" // registers the directive
)

// Corefile is what the harness saw of one Corefile.
type Corefile struct {
	Test string `json:"test"` // the test that made it, from the call stack
	// Blocks is the number of server blocks CoreDNS's parser finds (snippets aside);
	// WithPulse how many of them have a pulse directive. ParseError is set when the
	// parser rejects the Corefile (some tests want exactly that).
	Blocks     int    `json:"blocks"`
	WithPulse  int    `json:"withPulse"`
	Injected   int    `json:"injected"` // blocks Rewrite put pulse into
	ParseError string `json:"parseError,omitempty"`
	Pulse      string `json:"pulse,omitempty"` // the heartbeat listener
	// Heartbeats is how many GET /pulse answered while the server lived; Queries the
	// most client queries one of them counted in its 60 s window.
	Heartbeats int    `json:"heartbeats"`
	Queries    uint64 `json:"queries"`
}

// Report is written to PULSE_SUITE_REPORT when the run ends.
type Report struct {
	Inject    bool        `json:"inject"`
	Corefiles []*Corefile `json:"corefiles"`
	// ShutDown counts pulse's shutdown callbacks the harness ran for instances a test
	// stopped without them (see janitor); 0 without pulse.
	ShutDown int `json:"shutDown"`
}

var (
	mu      sync.Mutex
	report  = Report{Inject: os.Getenv("PULSE_SUITE") == "1"}
	stop    = make(chan struct{})
	watched sync.WaitGroup
)

// Main splices pulse into CoreDNS's directives (before prometheus, as build/coredns does;
// in both runs, so that the runs differ only by the Corefiles), runs the tests and writes
// the report. The copy's TestMain is `os.Exit(inject.Main(m))`.
func Main(m *testing.M) int {
	d := slices.Clone(dnsserver.Directives)
	i := slices.Index(d, "prometheus")
	if i < 0 || slices.Contains(d, "pulse") {
		fmt.Fprintln(os.Stderr, "inject: cannot place pulse before prometheus in", d)
		return 2
	}
	if err := dnsserver.SetDirectives(slices.Insert(d, i, "pulse")); err != nil {
		fmt.Fprintln(os.Stderr, "inject:", err)
		return 2
	}
	caddy.RegisterEventHook("dnspulse-suite", track)
	janitorDone := make(chan struct{})
	go func() { defer close(janitorDone); janitor() }()
	code := m.Run()
	close(stop)
	<-janitorDone
	watched.Wait()
	collect()
	if path := os.Getenv("PULSE_SUITE_REPORT"); path != "" {
		mu.Lock()
		b, err := json.MarshalIndent(&report, "", "  ")
		mu.Unlock()
		if err == nil {
			err = os.WriteFile(path, b, 0o644)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "inject: writing the report:", err)
			return 2
		}
	}
	return code
}

// Input is called with every Corefile the suite starts a server with.
func Input(corefile string) string {
	cf := &Corefile{Test: testName()}
	out := corefile
	if report.Inject {
		port, err := freePort()
		if err != nil {
			panic(fmt.Sprintf("inject: no free port: %v", err)) // the run would prove nothing
		}
		cf.Pulse = fmt.Sprintf("127.0.0.1:%d", port)
		out, cf.Injected = Rewrite(corefile, "pulse "+cf.Pulse)
	}
	cf.Blocks, cf.WithPulse, cf.ParseError = countBlocks(out)
	mu.Lock()
	report.Corefiles = append(report.Corefiles, cf)
	mu.Unlock()
	if cf.Injected > 0 {
		watched.Add(1)
		go func() { defer watched.Done(); watch(cf) }()
	}
	return out
}

// Rewrite puts line (a directive) first into every server block of corefile and returns
// how many blocks it put it into. It reads the Corefile as caddy's parser does: tokens as
// its lexer makes them (whitespace separates them, "..." quotes, # comments to the end of
// the line), so braces in quoted strings and comments are not taken for blocks; a block's
// addresses end at the end of their line (unless it ends with a comma) or at an open
// brace; snippets, (name) { ... }, and top-level imports are left alone; a Corefile of one
// server block without braces gets the line after its addresses.
func Rewrite(corefile, line string) (string, int) {
	toks := lex(corefile)
	var b strings.Builder
	last, n := 0, 0 // the text copied so far; blocks injected
	insertAfter := func(off int) {
		b.WriteString(corefile[last:off])
		b.WriteString("\n" + line + "\n")
		last = off
		n++
	}
	for i := 0; i < len(toks); {
		if t := toks[i]; t.text == "import" && !t.quoted && (i == 0 || toks[i-1].line != t.line) {
			for i++; i < len(toks) && toks[i].line == t.line; i++ {
			}
			continue
		}
		// Addresses, up to an open brace or the end of their line.
		first := i
		for i < len(toks) && !(toks[i].text == "{" && !toks[i].quoted) {
			more := strings.HasSuffix(toks[i].text, ",")
			i++
			if i < len(toks) && !more && toks[i].line != toks[i-1].line {
				break
			}
		}
		snippet := i-first == 1 && strings.HasPrefix(toks[first].text, "(") && strings.HasSuffix(toks[first].text, ")")
		if i >= len(toks) || toks[i].text != "{" || toks[i].quoted {
			if !snippet && i > first { // no braces: the rest of the file is this block
				lineEnd := strings.IndexByte(corefile[toks[i-1].end:], '\n')
				if lineEnd < 0 {
					lineEnd = len(corefile) - toks[i-1].end
				}
				insertAfter(toks[i-1].end + lineEnd)
			}
			break
		}
		if !snippet {
			insertAfter(toks[i].end)
		}
		for depth := 0; i < len(toks); i++ { // to the matching close brace
			if toks[i].quoted {
				continue
			}
			if toks[i].text == "{" {
				depth++
			} else if toks[i].text == "}" {
				if depth--; depth == 0 {
					i++
					break
				}
			}
		}
	}
	b.WriteString(corefile[last:])
	return b.String(), n
}

type token struct {
	text   string
	quoted bool
	line   int // 0-based line of its first character
	end    int // byte offset just after it
}

// lex splits a Corefile into tokens as caddy's lexer does.
func lex(s string) []token {
	var toks []token
	var cur strings.Builder
	inTok, quoted, escaped, comment := false, false, false, false
	line, tokLine := 0, 0
	emit := func(end int) {
		toks = append(toks, token{text: cur.String(), quoted: quoted, line: tokLine, end: end})
		cur.Reset()
		inTok, quoted = false, false
	}
	for i, ch := range s {
		switch {
		case quoted:
			switch {
			case escaped:
				if ch != '"' {
					cur.WriteByte('\\')
				}
				cur.WriteRune(ch)
				escaped = false
			case ch == '\\':
				escaped = true
			case ch == '"':
				emit(i + 1)
			default:
				cur.WriteRune(ch)
			}
			if ch == '\n' {
				line++
			}
		case ch == '\n' || ch == ' ' || ch == '\t' || ch == '\r' || ch == '\f' || ch == '\v':
			if inTok {
				emit(i)
			}
			if ch == '\n' {
				line++
				comment = false
			}
		case comment:
		case ch == '#':
			comment = true
		case !inTok:
			inTok, tokLine = true, line
			if ch == '"' {
				quoted = true
			} else {
				cur.WriteRune(ch)
			}
		default:
			cur.WriteRune(ch)
		}
	}
	if inTok {
		emit(len(s))
	}
	return toks
}

// countBlocks parses corefile as CoreDNS would and counts its server blocks (snippets
// aside) and those with a pulse directive.
func countBlocks(corefile string) (blocks, withPulse int, parseErr string) {
	sbs, err := caddyfile.Parse("Corefile", strings.NewReader(corefile), nil)
	if err != nil {
		return 0, 0, err.Error()
	}
	for _, sb := range sbs {
		if len(sb.Keys) == 1 && strings.HasPrefix(sb.Keys[0], "(") {
			continue
		}
		blocks++
		if _, ok := sb.Tokens["pulse"]; ok {
			withPulse++
		}
	}
	return blocks, withPulse, ""
}

// instance is what the janitor knows of a started instance.
type instance struct {
	restarted, finalDone bool
	goneSince            time.Time
}

var (
	instMu    sync.Mutex
	instances = map[*caddy.Instance]*instance{}
)

// track follows every instance that starts: whether it was restarted away (its OnRestart
// ran, and not its OnRestartFailed) and whether its final shutdown callbacks ran.
func track(ev caddy.EventName, info any) error {
	inst, ok := info.(*caddy.Instance)
	if ev != caddy.InstanceStartupEvent || !ok {
		return nil
	}
	st := &instance{}
	set := func(f func()) func() error {
		return func() error { instMu.Lock(); f(); instMu.Unlock(); return nil }
	}
	inst.OnRestart = append(inst.OnRestart, set(func() { st.restarted = true }))
	inst.OnRestartFailed = append(inst.OnRestartFailed, set(func() { st.restarted = false }))
	inst.OnFinalShutdown = append(inst.OnFinalShutdown, set(func() { st.finalDone = true }))
	instMu.Lock()
	instances[inst] = st
	instMu.Unlock()
	return nil
}

// janitor stops pulse's runner (its ticker, janitor, self-probe and listener) for the
// instances a test stopped with Instance.Stop alone, as most of CoreDNS's tests do, a
// second after they stopped: what the process would do when it exits. Without it every
// runner outlives its test, one per Corefile, and the hundreds that pile up slow the rest
// of the run down until UDP queries time out. It runs only pulse's own shutdown callbacks
// (told apart by their function's package): other plugins are left exactly as the suite
// leaves them, so that the run without pulse is CoreDNS's suite unchanged. A test that
// runs the callbacks itself, or restarts the instance, is left alone.
func janitor() {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		running := map[*caddy.Instance]bool{}
		for _, i := range caddy.Instances() {
			running[i] = true
		}
		var due []*caddy.Instance
		instMu.Lock()
		for inst, st := range instances {
			switch {
			case running[inst]:
				st.goneSince = time.Time{}
			case st.restarted || st.finalDone:
				delete(instances, inst)
			case st.goneSince.IsZero():
				st.goneSince = time.Now()
			case time.Since(st.goneSince) >= time.Second:
				due = append(due, inst)
				delete(instances, inst)
			}
		}
		instMu.Unlock()
		for _, inst := range due {
			for _, fn := range slices.Concat(inst.OnShutdown, inst.OnFinalShutdown) {
				if strings.HasPrefix(runtime.FuncForPC(reflect.ValueOf(fn).Pointer()).Name(), pulsePackage+".") {
					fn()
					mu.Lock()
					report.ShutDown++
					mu.Unlock()
				}
			}
		}
	}
}

const pulsePackage = "github.com/dnspulse/dnspulse/plugin/pulse"

// watch polls the Corefile's heartbeat every 100 ms: until it first answers (at most
// 20 s: some Corefiles never start), then until it has stopped answering three times in a
// row (the server was shut down), or the run ends.
func watch(cf *Corefile) {
	c := &http.Client{Timeout: time.Second}
	url := "http://" + cf.Pulse + heartbeat.Path
	deadline := time.Now().Add(20 * time.Second)
	misses := 0
	for first := true; ; first = false {
		if !first {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
		hb, err := get(c, url)
		mu.Lock()
		seen := cf.Heartbeats
		if err == nil {
			cf.Heartbeats++
			cf.Queries = max(cf.Queries, hb.Windows[heartbeat.Window60s].Queries)
		}
		mu.Unlock()
		switch {
		case err == nil:
			misses = 0
		case seen == 0 && time.Now().After(deadline):
			return
		case seen > 0:
			if misses++; misses >= 3 {
				return
			}
		}
	}
}

// collect reads, once the tests are done, every heartbeat still served: a test that stops
// its server with Instance.Stop, as most do, leaves pulse's listener up (shutdown callbacks
// are not run), and its 60 s window still holds the queries of a short test that ended
// before the watcher's first poll. It waits two ticks for the last queries to show.
func collect() {
	var wg sync.WaitGroup
	c := &http.Client{Timeout: time.Second}
	mu.Lock()
	cfs := slices.Clone(report.Corefiles)
	mu.Unlock()
	for _, cf := range cfs {
		if cf.Pulse == "" {
			continue
		}
		wg.Go(func() {
			url := "http://" + cf.Pulse + heartbeat.Path
			first, err := get(c, url)
			if err != nil {
				return
			}
			hb := first
			for deadline := time.Now().Add(2 * time.Second); hb.Seq < first.Seq+2 && time.Now().Before(deadline); {
				time.Sleep(10 * time.Millisecond)
				if next, err := get(c, url); err == nil {
					hb = next
				}
			}
			mu.Lock()
			cf.Heartbeats++
			cf.Queries = max(cf.Queries, hb.Windows[heartbeat.Window60s].Queries)
			mu.Unlock()
		})
	}
	wg.Wait()
}

func get(c *http.Client, url string) (*heartbeat.Heartbeat, error) {
	resp, err := c.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return heartbeat.Decode(resp.Body)
}

var testFunc = regexp.MustCompile(`\.(Test[A-Za-z0-9_]*)(\.|$)`)

// testName finds the test function on the call stack.
func testName() string {
	pcs := make([]uintptr, 64)
	frames := runtime.CallersFrames(pcs[:runtime.Callers(2, pcs)])
	for {
		f, more := frames.Next()
		if m := testFunc.FindStringSubmatch(f.Function); m != nil {
			return m[1]
		}
		if !more {
			return "?"
		}
	}
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
