package chart

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// README.md's values table is generated from values.yaml's helm-docs comments (`# --`
// directly above a key, continued by the following `#` lines). TestREADME fails when the
// table differs; UPDATE_README=1 go test ./healer/chart -run TestREADME rewrites it.
const (
	tableBegin = "<!-- values:begin (generated from values.yaml by readme_test.go: UPDATE_README=1 go test ./healer/chart -run TestREADME) -->"
	tableEnd   = "<!-- values:end -->"
)

type documented struct {
	path        string
	description string
	line        int
}

var (
	keyLine = regexp.MustCompile(`^( *)([A-Za-z0-9_.-]+):(.*)$`)
	docLine = regexp.MustCompile(`^ *# -- ?(.*)$`)
	comment = regexp.MustCompile(`^ *#(?: (.*))?$`)
)

// parseDocs returns the documented keys of values.yaml in file order.
func parseDocs(src []byte) ([]documented, error) {
	type frame struct {
		indent int
		key    string
	}
	var (
		stack   []frame
		pending *documented
		out     []documented
	)
	sc := bufio.NewScanner(bytes.NewReader(src))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if m := docLine.FindStringSubmatch(line); m != nil {
			pending = &documented{description: strings.TrimSpace(m[1]), line: n}
			continue
		}
		if m := comment.FindStringSubmatch(line); m != nil {
			if pending != nil {
				pending.description += " " + strings.TrimSpace(m[1])
			}
			continue
		}
		if strings.TrimSpace(line) == "" {
			if pending != nil {
				return nil, fmt.Errorf("values.yaml:%d: `# --` comment followed by a blank line, not by its key", pending.line)
			}
			continue
		}
		m := keyLine.FindStringSubmatch(line)
		if m == nil {
			pending = nil // a list item or a continuation: part of a value
			continue
		}
		indent := len(m[1])
		for len(stack) > 0 && stack[len(stack)-1].indent >= indent {
			stack = stack[:len(stack)-1]
		}
		var path []string
		for _, f := range stack {
			path = append(path, f.key)
		}
		path = append(path, m[2])
		if pending != nil {
			pending.path = strings.Join(path, ".")
			out = append(out, *pending)
			pending = nil
		}
		stack = append(stack, frame{indent, m[2]})
	}
	return out, sc.Err()
}

func lookup(m map[string]any, path string) (any, bool) {
	var cur any = m
	for _, k := range strings.Split(path, ".") {
		mm, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = mm[k]; !ok {
			return nil, false
		}
	}
	return cur, true
}

func typeOf(v any) string {
	switch x := v.(type) {
	case string:
		return "string"
	case bool:
		return "bool"
	case float64:
		if x == float64(int64(x)) {
			return "int"
		}
		return "float"
	case []any:
		return "list"
	case map[string]any:
		return "object"
	default:
		return fmt.Sprintf("%T", v)
	}
}

// valuesTable renders the Markdown table, and checks that every leaf value is documented
// (by its own `# --` comment or by an ancestor's).
func valuesTable(src []byte) (string, error) {
	docs, err := parseDocs(src)
	if err != nil {
		return "", err
	}
	var vals map[string]any
	if err := yaml.Unmarshal(src, &vals); err != nil {
		return "", fmt.Errorf("values.yaml: %w", err)
	}
	covered := map[string]bool{}
	var b strings.Builder
	b.WriteString("| Key | Type | Default | Description |\n|-----|------|---------|-------------|\n")
	for _, d := range docs {
		v, ok := lookup(vals, d.path)
		if !ok {
			return "", fmt.Errorf("values.yaml:%d: documented key %s not found in the parsed values", d.line, d.path)
		}
		def, err := json.Marshal(v)
		if err != nil {
			return "", err
		}
		covered[d.path] = true
		fmt.Fprintf(&b, "| %s | %s | `%s` | %s |\n", d.path, typeOf(v), escape(string(def)), escape(d.description))
	}
	var undocumented []string
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		for p := prefix; p != ""; {
			if covered[p] {
				return
			}
			i := strings.LastIndex(p, ".")
			if i < 0 {
				break
			}
			p = p[:i]
		}
		m, ok := v.(map[string]any)
		if !ok || len(m) == 0 {
			undocumented = append(undocumented, prefix)
			return
		}
		for k, child := range m {
			p := k
			if prefix != "" {
				p = prefix + "." + k
			}
			walk(p, child)
		}
	}
	walk("", vals)
	if len(undocumented) > 0 {
		sort.Strings(undocumented)
		return "", fmt.Errorf("values.yaml: no `# --` comment for %s", strings.Join(undocumented, ", "))
	}
	return b.String(), nil
}

func escape(s string) string { return strings.ReplaceAll(s, "|", `\|`) }

func TestREADME(t *testing.T) {
	src, err := os.ReadFile("values.yaml")
	if err != nil {
		t.Fatal(err)
	}
	table, err := valuesTable(src)
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	before, rest, ok1 := strings.Cut(string(readme), tableBegin)
	_, after, ok2 := strings.Cut(rest, tableEnd)
	if !ok1 || !ok2 {
		t.Fatalf("README.md lacks the markers %q ... %q", tableBegin, tableEnd)
	}
	want := before + tableBegin + "\n" + table + tableEnd + after
	if want == string(readme) {
		return
	}
	if os.Getenv("UPDATE_README") != "" {
		if err := os.WriteFile("README.md", []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Errorf("README.md's values table differs from values.yaml; run: UPDATE_README=1 go test ./healer/chart -run TestREADME\nwant:\n%s", table)
}

func TestParseDocs(t *testing.T) {
	src := []byte("# -- top\na: 1\nb:\n  # -- nested,\n  # continued\n  c: x\n  d: [1]\ne:\n  - # -- not a key\n    f: 2\n")
	docs, err := parseDocs(src)
	if err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprint(docs)
	want := "[{a top 1} {b.c nested, continued 4}]"
	if got != want {
		t.Errorf("parseDocs = %s, want %s", got, want)
	}
	if _, err := valuesTable(src); err == nil || !strings.Contains(err.Error(), "b.d") || !strings.Contains(err.Error(), "e") {
		t.Errorf("undocumented b.d and e not reported: %v", err)
	}
	if _, err := parseDocs([]byte("# -- orphan\n\na: 1\n")); err == nil || !strings.Contains(err.Error(), "values.yaml:1") {
		t.Errorf("orphan comment not reported with its line: %v", err)
	}
}
