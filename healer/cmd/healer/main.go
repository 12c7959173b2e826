// Command healer watches every CoreDNS replica from outside (probes) and inside (the pulse
// heartbeat) and replaces one that is degraded when that is safe. See docs/design.md.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
