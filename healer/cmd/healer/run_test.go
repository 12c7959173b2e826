package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dnspulse/dnspulse/healer/version"
)

func TestVersion(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"--version"}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	if strings.TrimSpace(out.String()) != "healer "+version.Version {
		t.Errorf("got %q", out.String())
	}
}

func TestBadConfigurationExits2NamingEveryFlag(t *testing.T) {
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"--target", "x", "--probe-interval", "0s", "--max-degraded", "0"}, &out, &errb)
	if code != 2 {
		t.Fatalf("exit %d, want 2", code)
	}
	for _, want := range []string{"--target[0]", "--probe-interval", "--max-degraded"} {
		if !strings.Contains(errb.String(), want) {
			t.Errorf("stderr does not name %s:\n%s", want, errb.String())
		}
	}
	if code := run(context.Background(), []string{"--no-such-flag"}, &out, &errb); code != 2 {
		t.Errorf("unknown flag: exit %d, want 2", code)
	}
}

// Static mode starts, writes its audit log, and exits 0 when its context ends (SIGTERM).
func TestStaticModeRunsAndStopsCleanly(t *testing.T) {
	audit := filepath.Join(t.TempDir(), "audit.log")
	ctx, cancel := context.WithCancel(context.Background())
	var out, errb bytes.Buffer
	done := make(chan int)
	go func() {
		done <- run(ctx, []string{"--target", "a=127.0.0.1:9", "--check", "x.example", "--audit-log", audit, "--metrics-addr", "127.0.0.1:0", "--dry-run"}, &out, &errb)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile(audit)
		if strings.Contains(string(b), `"event":"start"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no start line; stderr:\n%s", errb.String())
		}
		time.Sleep(5 * time.Millisecond) // polling the file for an observable line
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("exit %d after shutdown: %s", code, errb.String())
	}
	b, _ := os.ReadFile(audit)
	if !strings.Contains(string(b), `"event":"stop"`) {
		t.Errorf("no stop line:\n%s", b)
	}
}
