package pulse

import _ "unsafe" // for go:linkname

// The hot path needs a monotonic clock and a shard index, both cheaper than the
// public API offers: time.Now reads two clocks (wall and monotonic), and Go has no
// public "which P am I on". runtime.nanotime and runtime.procPin are kept linkable
// by the runtime on purpose (go.dev/issue/67401), so this is stable.

//go:linkname nanotime runtime.nanotime
func nanotime() int64

//go:linkname procPin runtime.procPin
func procPin() int

//go:linkname procUnpin runtime.procUnpin
func procUnpin()

// shardHint returns the index of the P the caller runs on. The goroutine may move right
// after; that costs at worst one contended cache line, never a wrong count, because the
// shards are written with atomics.
func shardHint() int {
	p := procPin()
	procUnpin()
	return p
}
