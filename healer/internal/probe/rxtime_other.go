//go:build unix && !linux

package probe

import (
	"syscall"
	"time"
)

// Elsewhere than Linux a reply's arrival is the time it is read: at most one pass of the
// loop (a millisecond) late.
var oobSize = 0

const msgTrunc = syscall.MSG_TRUNC

func ancillary(_ []byte, now time.Time) (time.Time, uint32, bool) { return now, 0, false }
