// Package version holds the healer's version, stamped at build time with
// -ldflags "-X github.com/dnspulse/dnspulse/healer/version.Version=...".
package version

// Version is the healer's release; "dev" when built without the Makefile.
var Version = "dev"
