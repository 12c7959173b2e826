// Package healer holds the healer's integration tests and detection benchmark (build tag
// integration; `make test-integration`, `make bench-detect`): the real healer binary in
// static mode against real custom CoreDNS processes on loopback addresses. Without the tag
// the package is empty, so `go test ./test/healer` reports no tests instead of failing.
package healer
