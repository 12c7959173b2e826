package inject

import (
	"strings"
	"testing"
)

func TestRewritePutsPulseInEveryServerBlock(t *testing.T) {
	const line = "pulse 127.0.0.1:9999"
	tests := []struct {
		name, in string
		blocks   int
	}{
		{"empty block on one line", "example.org:0 { }", 1},
		{"empty block", "example.org:0 {\n}", 1},
		{"two blocks, nested plugin blocks", ".:0 {\n  cache 30 {\n    serve_stale\n  }\n  forward . 127.0.0.1:9\n}\nexample.org:0 {\n  whoami\n}\n", 2},
		{"braces in quotes and comments", ".:0 {\n  # a { comment }\n  template IN A x {\n    answer \"{{ .Name }} 60 IN A 1.2.3.4\"\n  }\n}\n", 1},
		{"snippet and import", "(common) {\n  whoami\n}\n.:0 {\n  import common\n}\nb.org:0 {\n  import common\n}\n", 2},
		{"addresses over two lines", "a.org:0,\n  b.org:0 {\n  whoami\n}\n", 1},
		{"several addresses on a line", "a.org:0 b.org:0 {\n  whoami\n}\n", 1},
		{"no braces", ".:0\nwhoami\nlog\n", 1},
		{"no braces, addresses only", ".:0", 1},
		{"quoted brace is not a block", ".:0 {\n  template IN A x {\n    answer \"{\"\n  }\n}\n", 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, n := Rewrite(tc.in, line)
			if n != tc.blocks {
				t.Fatalf("injected %d blocks, want %d:\n%s", n, tc.blocks, out)
			}
			blocks, withPulse, perr := countBlocks(out)
			if perr != "" || blocks != tc.blocks || withPulse != tc.blocks {
				t.Fatalf("CoreDNS's parser finds %d blocks, %d with pulse (err %q) in:\n%s", blocks, withPulse, perr, out)
			}
			// Nothing but the new lines: removing them gives the input back.
			if back := strings.ReplaceAll(out, "\n"+line+"\n", ""); back != tc.in && strings.TrimRight(back, "\n") != strings.TrimRight(tc.in, "\n") {
				t.Fatalf("rewrite changed more than it added:\n%q\n%q", tc.in, out)
			}
		})
	}
}

func TestRewriteLeavesAnUnparseableCorefileUnparseable(t *testing.T) {
	in := ".:0 {\n  whoami\n" // no closing brace
	out, _ := Rewrite(in, "pulse 127.0.0.1:9999")
	if _, _, perr := countBlocks(out); perr == "" {
		t.Fatalf("a broken Corefile became valid:\n%s", out)
	}
}

func TestTestName(t *testing.T) {
	if got := testName(); got != "TestTestName" {
		t.Fatalf("testName() = %q", got)
	}
}
