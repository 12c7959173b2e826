//go:build !amd64

package pulse

// ticks is the monotonic clock in nanoseconds where no cheaper counter is wired up.
func ticks() int64 { return nanotime() }
