// Package static is the healer's mode without Kubernetes (CoreDNS on VMs, or trying
// dnspulse locally): the replicas come from --target, and a degraded one is replaced by
// running --remediate-exec, or not at all.
package static

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/dnspulse/dnspulse/healer/api"
	"github.com/dnspulse/dnspulse/healer/internal/replica"
)

// Discovery is a fixed list of replicas, always Ready and Remediable.
type Discovery struct{ targets []replica.Target }

// NewDiscovery returns a Discovery of targets.
func NewDiscovery(targets []replica.Target) *Discovery {
	ts := slices.Clone(targets)
	slices.SortFunc(ts, func(a, b replica.Target) int { return strings.Compare(a.Name, b.Name) })
	return &Discovery{targets: ts}
}

// Run implements replica.Discovery: the set is known at once and never changes.
func (d *Discovery) Run(ctx context.Context, ready chan<- struct{}) error {
	close(ready)
	<-ctx.Done()
	return nil
}

// Targets implements replica.Discovery.
func (d *Discovery) Targets() []replica.Target { return slices.Clone(d.targets) }

// maxOutput bounds the command's output kept in the audit message.
const maxOutput = 2048

// Exec runs a command to replace a replica: argv from --remediate-exec split on spaces
// (no shell), with the replica's name appended.
type Exec struct {
	argv    []string
	timeout time.Duration
}

// NewExec returns nil when cmd is empty (no remediation configured).
func NewExec(cmd string, timeout time.Duration) *Exec {
	argv := strings.Fields(cmd)
	if len(argv) == 0 {
		return nil
	}
	return &Exec{argv: argv, timeout: timeout}
}

// Remediate implements replica.Remediator.
func (e *Exec) Remediate(ctx context.Context, t replica.Target, reasons []string, dryRun bool) replica.Outcome {
	args := append(slices.Clone(e.argv[1:]), t.Name)
	line := strings.Join(append([]string{e.argv[0]}, args...), " ")
	if dryRun {
		return replica.Outcome{Action: api.ActionExec, Result: api.ResultDryRun, Message: "would run: " + line}
	}
	cctx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	cmd := exec.CommandContext(cctx, e.argv[0], args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	output := strings.TrimSpace(out.String())
	if len(output) > maxOutput {
		output = output[:maxOutput] + "..."
	}
	msg := "ran: " + line
	if output != "" {
		msg += "; output: " + output
	}
	switch {
	case errors.Is(cctx.Err(), context.DeadlineExceeded):
		return replica.Outcome{Action: api.ActionExec, Result: api.ResultError, Message: fmt.Sprintf("%s; killed after --remediate-timeout %s", msg, e.timeout)}
	case err != nil:
		return replica.Outcome{Action: api.ActionExec, Result: api.ResultError, Message: fmt.Sprintf("%s; %v", msg, err)}
	}
	return replica.Outcome{Action: api.ActionExec, Result: api.ResultSuccess, Message: msg}
}

// None is the Remediator when no command is configured: it only says so.
type None struct{}

// Remediate implements replica.Remediator.
func (None) Remediate(_ context.Context, t replica.Target, _ []string, dryRun bool) replica.Outcome {
	if dryRun {
		return replica.Outcome{Action: api.ActionNone, Result: api.ResultDryRun, Message: "no --remediate-exec configured; alert only"}
	}
	return replica.Outcome{Action: api.ActionNone, Result: api.ResultRefused, Message: "no --remediate-exec configured; alert only"}
}

// Notifier does nothing: in static mode the audit log is the record.
type Notifier struct{}

// Notify implements replica.Notifier.
func (Notifier) Notify(replica.Target, api.Reason, string) {}

// NotifyHealer implements replica.Notifier.
func (Notifier) NotifyHealer(api.Reason, string) {}
