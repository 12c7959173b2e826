package static

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dnspulse/dnspulse/healer/internal/replica"
)

func TestExec(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "restart.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho restarting \"$1\" \"$2\"\n[ \"$2\" = bad ] && exit 3\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	e := NewExec(script+" --now", 5*time.Second)
	ctx := context.Background()
	o := e.Remediate(ctx, replica.Target{Name: "dns-b"}, nil, false)
	if o.Result != "success" || o.Action != "exec" || !strings.Contains(o.Message, "restarting --now dns-b") {
		t.Errorf("success: %+v", o)
	}
	o = e.Remediate(ctx, replica.Target{Name: "bad"}, nil, false)
	if o.Result != "error" || !strings.Contains(o.Message, "exit status 3") {
		t.Errorf("failure: %+v", o)
	}
	o = e.Remediate(ctx, replica.Target{Name: "dns-b"}, nil, true)
	if o.Result != "dry-run" || !strings.Contains(o.Message, "would run") {
		t.Errorf("dry run: %+v", o)
	}
	sleeper := filepath.Join(dir, "sleep.sh")
	if err := os.WriteFile(sleeper, []byte("#!/bin/sh\nexec sleep 10\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	slow := NewExec(sleeper, 50*time.Millisecond)
	o = slow.Remediate(ctx, replica.Target{Name: "x"}, nil, false)
	if o.Result != "error" || !strings.Contains(o.Message, "--remediate-timeout") {
		t.Errorf("timeout: %+v", o)
	}
	if NewExec("  ", time.Second) != nil {
		t.Errorf("empty command must mean no remediator")
	}
}

func TestDiscoverySortedAndReady(t *testing.T) {
	d := NewDiscovery([]replica.Target{{Name: "b"}, {Name: "a"}})
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error)
	go func() { done <- d.Run(ctx, ready) }()
	<-ready
	if ts := d.Targets(); ts[0].Name != "a" || ts[1].Name != "b" {
		t.Errorf("not sorted: %v", ts)
	}
	cancel()
	if err := <-done; err != nil {
		t.Error(err)
	}
}
