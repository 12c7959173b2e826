package pulse

// ticks reads the CPU's time-stamp counter (constant-rate on every x86 CPU of the last
// decade). It is what the hot path times queries with: on virtual machines the vDSO
// clock behind time.Now and runtime.nanotime can cost 100-250 ns a read (measured on our
// CI machine), RDTSC a tenth of that. clock converts ticks to nanoseconds.
func ticks() int64
