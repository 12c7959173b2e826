// Command coresuite runs CoreDNS's own integration tests, the test/ package of the CoreDNS
// module this repository builds against (from the module cache), twice: without pulse,
// then with pulse in every server block, and compares the outcomes test by test. It is
// `make test-coredns-suite`.
//
// The copy of test/ lives in a module of its own under -work (a stable path, so the Go
// build cache serves the second run of the day); its NewInput, the funnel of every
// Corefile in the suite, is patched to call hack/coresuite/inject, which puts pulse in and
// reports what it did: the proof that the run with pulse really had it (blocks counted by
// CoreDNS's own parser, heartbeats answered, queries pulse counted). One test binary
// serves both runs; PULSE_SUITE=1 is the only difference.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/dnspulse/dnspulse/hack/coresuite/inject"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

type options struct {
	work    string
	coredns string // the CoreDNS module's directory; empty: from go list
	run     string
	timeout time.Duration
}

func run(args []string, stdout, stderr io.Writer) int {
	var o options
	fs := flag.NewFlagSet("coresuite", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.work, "work", "_output/coredns-suite", "work directory (kept between runs for the build cache)")
	fs.StringVar(&o.coredns, "coredns", "", "CoreDNS module directory (default: the version in go.mod, from the module cache)")
	fs.StringVar(&o.run, "run", "", "only the tests matching this regexp (go test -run)")
	fs.DurationVar(&o.timeout, "timeout", 15*time.Minute, "limit for each of the two runs")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "coresuite: unexpected arguments %q\n", fs.Args())
		return 2
	}
	s, err := prepare(o, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "coresuite:", err)
		return 1
	}
	var res [2]*result
	for i, inj := range []bool{false, true} {
		r, err := s.runSuite(inj, o.run, 1, "")
		if err != nil {
			fmt.Fprintln(stderr, "coresuite:", err)
			return 1
		}
		res[i] = r
	}
	// A test whose outcome differs is run again, reruns times in each mode: one that
	// fails and passes both with and without pulse is flaky, not pulse's doing.
	var differ []string
	for t, a := range res[0].outcome {
		if !strings.Contains(t, "/") && a != res[1].outcome[t] {
			differ = append(differ, t)
		}
	}
	for t := range res[1].outcome {
		if _, ok := res[0].outcome[t]; !ok && !strings.Contains(t, "/") {
			differ = append(differ, t)
		}
	}
	slices.Sort(differ)
	var again [2]*result
	if len(differ) > 0 {
		pattern := "^(" + strings.Join(differ, "|") + ")$"
		for i, inj := range []bool{false, true} {
			r, err := s.runSuite(inj, pattern, reruns, "-again")
			if err != nil {
				fmt.Fprintln(stderr, "coresuite:", err)
				return 1
			}
			again[i] = r
		}
	}
	var out bytes.Buffer
	ok := summarize(&out, s, res[0], res[1], again[0], again[1])
	os.WriteFile(filepath.Join(s.work, "summary.txt"), out.Bytes(), 0o644)
	stdout.Write(out.Bytes())
	if !ok {
		return 1
	}
	return 0
}

type suite struct {
	options
	repo, version, corednsDir string
	log                       io.Writer
}

// prepare copies CoreDNS's test/ into a module of its own and builds the test binary.
func prepare(o options, log io.Writer) (*suite, error) {
	s := &suite{options: o, log: log}
	var err error
	if s.repo, err = os.Getwd(); err != nil {
		return nil, err
	}
	mod, err := goOut(s.repo, "list", "-m", "-f", "{{.Dir}} {{.Version}}", "github.com/coredns/coredns")
	if err != nil {
		return nil, err
	}
	f := strings.Fields(mod)
	if len(f) != 2 {
		return nil, fmt.Errorf("go list -m github.com/coredns/coredns: %q", mod)
	}
	s.corednsDir, s.version = f[0], f[1]
	if o.coredns != "" {
		s.corednsDir = o.coredns
	}
	if s.work, err = filepath.Abs(o.work); err != nil {
		return nil, err
	}
	dst := filepath.Join(s.work, "test")
	if err := os.RemoveAll(dst); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return nil, err
	}
	src := filepath.Join(s.corednsDir, "test")
	entries, err := os.ReadDir(src)
	if err != nil {
		return nil, fmt.Errorf("CoreDNS's test package: %w", err)
	}
	for _, e := range entries {
		if e.IsDir() {
			return nil, fmt.Errorf("%s has a directory %s: copy it too", src, e.Name())
		}
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			return nil, err
		}
		if strings.HasSuffix(e.Name(), ".go") && bytes.Contains(b, []byte("func TestMain(")) {
			return nil, fmt.Errorf("%s has a TestMain of its own; the harness needs its own", e.Name())
		}
		if e.Name() == "server.go" {
			if b, err = patchServer(b); err != nil {
				return nil, err
			}
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644); err != nil {
			return nil, err
		}
	}
	mainTest := "package test\n\nimport (\n\t\"os\"\n\t\"testing\"\n\n\t\"github.com/dnspulse/dnspulse/hack/coresuite/inject\"\n)\n\n" +
		"// TestMain is the dnspulse harness's (hack/coresuite): it splices pulse into the directives and reports.\n" +
		"func TestMain(m *testing.M) { os.Exit(inject.Main(m)) }\n"
	if err := os.WriteFile(filepath.Join(dst, "zz_pulse_harness_test.go"), []byte(mainTest), 0o644); err != nil {
		return nil, err
	}
	// The tests read ../plugin/tls/*.pem and ../plugin/*/README.md.
	link := filepath.Join(s.work, "plugin")
	os.Remove(link)
	if err := os.Symlink(filepath.Join(s.corednsDir, "plugin"), link); err != nil {
		return nil, err
	}
	gomod := fmt.Sprintf("module coresuite.local\n\ngo 1.26\n\nrequire (\n\tgithub.com/coredns/coredns %s\n\tgithub.com/dnspulse/dnspulse v0.0.0-00010101000000-000000000000\n)\n\nreplace github.com/dnspulse/dnspulse => %s\n", s.version, s.repo)
	if err := os.WriteFile(filepath.Join(s.work, "go.mod"), []byte(gomod), 0o644); err != nil {
		return nil, err
	}
	// go.sum: ours and CoreDNS's (its test package needs modules that only its tests use).
	var sums []string
	for _, p := range []string{filepath.Join(s.repo, "go.sum"), filepath.Join(s.corednsDir, "go.sum")} {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		sums = append(sums, strings.Split(strings.TrimSpace(string(b)), "\n")...)
	}
	slices.Sort(sums)
	if err := os.WriteFile(filepath.Join(s.work, "go.sum"), []byte(strings.Join(slices.Compact(sums), "\n")+"\n"), 0o644); err != nil {
		return nil, err
	}
	fmt.Fprintf(log, "coresuite: CoreDNS %s test/ copied to %s; building the test binary\n", s.version, dst)
	if _, err := goOut(s.work, "mod", "tidy"); err != nil {
		return nil, err
	}
	if _, err := goOut(s.work, "test", "-c", "-o", filepath.Join(s.work, "suite.test"), "./test"); err != nil {
		return nil, err
	}
	return s, nil
}

const newInput = "return &Input{corefile: []byte(corefile)}"

// patchServer makes NewInput hand every Corefile to inject.Input.
func patchServer(b []byte) ([]byte, error) {
	if n := bytes.Count(b, []byte(newInput)); n != 1 {
		return nil, fmt.Errorf("test/server.go: %q found %d times, want once: the harness cannot hook NewInput", newInput, n)
	}
	b = bytes.Replace(b, []byte(newInput), []byte("return &Input{corefile: []byte(inject.Input(corefile))}"), 1)
	// A group of its own after CoreDNS's, as third-party imports go: TestImportOrdering
	// checks the copy too.
	start := bytes.Index(b, []byte("import (\n"))
	end := bytes.Index(b[max(start, 0):], []byte("\n)\n"))
	if start < 0 || end < 0 {
		return nil, errors.New("test/server.go: no import block")
	}
	end += start
	return slices.Concat(b[:end], []byte("\n\n\t\"github.com/dnspulse/dnspulse/hack/coresuite/inject\""), b[end:]), nil
}

func goOut(dir string, args ...string) (string, error) {
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out.String())
	}
	return strings.TrimSpace(out.String()), nil
}

// reruns is how many times a test whose outcome differs runs again in each mode.
const reruns = 5

// result is one run: each test's outcome and its output.
type result struct {
	inject   bool
	outcome  map[string]string          // test -> pass, fail, skip (the last, with -count)
	seen     map[string]map[string]bool // test -> every outcome it had
	output   map[string][]string
	report   inject.Report
	took     time.Duration
	exitCode int
}

func (s *suite) runSuite(inj bool, run string, count int, tag string) (*result, error) {
	start := time.Now()
	name := map[bool]string{false: "without", true: "with"}[inj] + tag
	fmt.Fprintf(s.log, "coresuite: running CoreDNS's test/ %s pulse (-run %q, -count %d)\n", name, run, count)
	reportPath := filepath.Join(s.work, "report-"+name+".json")
	os.Remove(reportPath)
	args := []string{"-test.v=test2json", fmt.Sprintf("-test.count=%d", count), "-test.timeout=" + s.timeout.String()}
	if run != "" {
		args = append(args, "-test.run="+run)
	}
	cmd := exec.Command(filepath.Join(s.work, "suite.test"), args...)
	cmd.Dir = filepath.Join(s.work, "test")
	cmd.Env = append(os.Environ(), "PULSE_SUITE="+map[bool]string{false: "0", true: "1"}[inj], "PULSE_SUITE_REPORT="+reportPath)
	t2j := exec.Command("go", "tool", "test2json", "-t", "-p", "coredns/test")
	pipe, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = cmd.Stdout
	t2j.Stdin = pipe
	var events bytes.Buffer
	t2j.Stdout = &events
	t2j.Stderr = s.log
	if err := t2j.Start(); err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	runErr := cmd.Wait()
	if err := t2j.Wait(); err != nil {
		return nil, fmt.Errorf("test2json: %w", err)
	}
	os.WriteFile(filepath.Join(s.work, "events-"+name+".json"), events.Bytes(), 0o644)
	r := &result{inject: inj, outcome: map[string]string{}, seen: map[string]map[string]bool{}, output: map[string][]string{}}
	var ee *exec.ExitError
	if errors.As(runErr, &ee) {
		r.exitCode = ee.ExitCode()
	} else if runErr != nil {
		return nil, runErr
	}
	sc := bufio.NewScanner(&events)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var ev struct{ Action, Test, Output string }
		if json.Unmarshal(sc.Bytes(), &ev) != nil || ev.Test == "" {
			continue
		}
		switch ev.Action {
		case "pass", "fail", "skip":
			r.outcome[ev.Test] = ev.Action
			if r.seen[ev.Test] == nil {
				r.seen[ev.Test] = map[string]bool{}
			}
			r.seen[ev.Test][ev.Action] = true
		case "output":
			r.output[ev.Test] = append(r.output[ev.Test], strings.TrimRight(ev.Output, "\n"))
		}
	}
	b, err := os.ReadFile(reportPath)
	if err != nil {
		return nil, fmt.Errorf("the %s run wrote no report (did it crash?): %w", name, err)
	}
	if err := json.Unmarshal(b, &r.report); err != nil {
		return nil, err
	}
	r.took = time.Since(start)
	return r, nil
}

// summarize writes the comparison and the proof of injection; false when they fail.
// offAgain and onAgain are the reruns of the tests whose outcome differed (nil if none).
func summarize(w io.Writer, s *suite, off, on, offAgain, onAgain *result) bool {
	ok := true
	fmt.Fprintf(w, "CoreDNS %s test/ package, without and with pulse in every server block\n\n", s.version)
	var names []string
	for t := range off.outcome {
		names = append(names, t)
	}
	for t := range on.outcome {
		if _, dup := off.outcome[t]; !dup {
			names = append(names, t)
		}
	}
	slices.Sort(names)
	count := func(r *result, top bool) map[string]int {
		c := map[string]int{}
		for t, o := range r.outcome {
			if top == !strings.Contains(t, "/") {
				c[o]++
			}
		}
		return c
	}
	for _, top := range []bool{true, false} {
		kind := map[bool]string{true: "tests", false: "subtests"}[top]
		a, b := count(off, top), count(on, top)
		fmt.Fprintf(w, "%-9s without pulse: %3d pass %3d fail %3d skip | with pulse: %3d pass %3d fail %3d skip\n", kind, a["pass"], a["fail"], a["skip"], b["pass"], b["fail"], b["skip"])
	}
	fmt.Fprintf(w, "run time: %v without, %v with; exit codes %d, %d\n\n", off.took.Round(time.Second), on.took.Round(time.Second), off.exitCode, on.exitCode)

	var diff, flaky, bothFail []string
	for _, t := range names {
		a, b := off.outcome[t], on.outcome[t]
		if a == b {
			if a == "fail" && !strings.Contains(t, "/") {
				bothFail = append(bothFail, fmt.Sprintf("  %-40s %s", t, reason(off.output[t])))
			}
			continue
		}
		top, _, _ := strings.Cut(t, "/")
		line := fmt.Sprintf("  %-60s without: %-5s with: %-5s", t, orNone(a), orNone(b))
		if offAgain != nil {
			without, with := outcomes(off, offAgain, top), outcomes(on, onAgain, top)
			line += fmt.Sprintf(" | %s, again %d times each: without %s, with %s", top, reruns, without, with)
			// pulse's doing only if it fails with pulse and never without.
			if !strings.Contains(with, "fail") || strings.Contains(without, "fail") {
				flaky = append(flaky, line)
				continue
			}
		}
		diff = append(diff, line)
	}
	if len(diff) > 0 {
		ok = false
		fmt.Fprintf(w, "DIFFERENT OUTCOMES (%d):\n%s\n\n", len(diff), strings.Join(diff, "\n"))
	} else {
		fmt.Fprintf(w, "Same outcome for all %d tests and subtests", len(names))
		if len(flaky) > 0 {
			fmt.Fprintf(w, " but %d that are flaky both with and without pulse", len(flaky))
		}
		fmt.Fprint(w, ".\n\n")
	}
	if len(flaky) > 0 {
		fmt.Fprintf(w, "Flaky (failed without pulse too, or never with it: not pulse's doing):\n%s\n\n", strings.Join(flaky, "\n"))
	}
	if len(bothFail) > 0 {
		fmt.Fprintf(w, "Failing in both runs (%d), first message without pulse:\n%s\n\n", len(bothFail), strings.Join(bothFail, "\n"))
	}
	var skipped []string
	for _, t := range names {
		if off.outcome[t] == "skip" && on.outcome[t] == "skip" {
			skipped = append(skipped, fmt.Sprintf("  %-40s %s", t, reason(off.output[t])))
		}
	}
	if len(skipped) > 0 {
		fmt.Fprintf(w, "Skipped in both runs (%d):\n%s\n\n", len(skipped), strings.Join(skipped, "\n"))
	}

	// The proof.
	var cf, blocks, with, injected, parseErr, listening, counted int
	var queries uint64
	perTest := map[string]uint64{}
	for _, c := range on.report.Corefiles {
		cf++
		blocks += c.Blocks
		with += c.WithPulse
		injected += c.Injected
		if c.ParseError != "" {
			parseErr++
		}
		if c.Heartbeats > 0 {
			listening++
		}
		if c.Queries > 0 {
			counted++
		}
		queries += c.Queries
		perTest[c.Test] += c.Queries
	}
	offWith := 0
	for _, c := range off.report.Corefiles {
		offWith += c.WithPulse
	}
	fmt.Fprintf(w, "Injection (with pulse): %d Corefiles, %d server blocks by CoreDNS's parser, %d of them with pulse (%d injected); %d Corefiles the parser rejects (as the tests mean it to)\n", cf, blocks, with, injected, parseErr)
	fmt.Fprintf(w, "Heartbeats: %d of the %d listeners answered GET /pulse; %d Corefiles' pulse counted client queries, %d in all\n", listening, cf-parseErr, counted, queries)
	fmt.Fprintf(w, "Without pulse: %d Corefiles, %d blocks with pulse\n", len(off.report.Corefiles), offWith)
	fmt.Fprintf(w, "pulse runners the harness stopped after a test stopped its instance without shutdown callbacks: %d (without pulse: %d)\n", on.report.ShutDown, off.report.ShutDown)
	var top []string
	for t, n := range perTest {
		if n > 0 {
			top = append(top, fmt.Sprintf("%s=%d", t, n))
		}
	}
	slices.Sort(top)
	fmt.Fprintf(w, "Queries pulse counted, by test: %s\n", strings.Join(top, " "))
	switch {
	case cf == 0 || with != blocks:
		ok = false
		fmt.Fprintf(w, "PROOF FAILED: %d of %d blocks had pulse\n", with, blocks)
	case queries == 0:
		ok = false
		fmt.Fprintln(w, "PROOF FAILED: pulse counted no query in the whole run")
	case offWith != 0 || len(off.report.Corefiles) == 0:
		ok = false
		fmt.Fprintln(w, "PROOF FAILED: the run without pulse had pulse, or saw no Corefile")
	}
	return ok
}

// outcomes lists the outcomes a test had in a run and its reruns: "fail+pass".
func outcomes(first, again *result, test string) string {
	set := map[string]bool{}
	for _, r := range []*result{first, again} {
		for o := range r.seen[test] {
			set[o] = true
		}
	}
	var l []string
	for o := range set {
		l = append(l, o)
	}
	slices.Sort(l)
	return strings.Join(l, "+")
}

func orNone(s string) string {
	if s == "" {
		return "(not run)"
	}
	return s
}

// reason is the first line of a failing test's output that says why.
func reason(lines []string) string {
	for _, l := range lines {
		l = strings.TrimSpace(l)
		if strings.Contains(l, ".go:") {
			return truncate(l, 150)
		}
	}
	for _, l := range lines {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "===") && !strings.HasPrefix(l, "---") {
			return truncate(l, 150)
		}
	}
	return "(no output)"
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
