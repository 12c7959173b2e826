package probe

import (
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The ancillary data of a read: the kernel's stamp (wall-clock) becomes a time on the
// monotonic clock before the read, and the drop count is read beside it.
func TestAncillary(t *testing.T) {
	oob := make([]byte, oobSize)
	now := time.Now()
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.Level, h.Type = unix.SOL_SOCKET, unix.SCM_TIMESTAMPNS
	h.SetLen(unix.CmsgLen(int(unsafe.Sizeof(unix.Timespec{}))))
	*(*unix.Timespec)(unsafe.Pointer(&oob[unix.CmsgLen(0)])) = unix.NsecToTimespec(now.Add(-3 * time.Millisecond).UnixNano())
	off := unix.CmsgSpace(int(unsafe.Sizeof(unix.Timespec{})))
	h2 := (*unix.Cmsghdr)(unsafe.Pointer(&oob[off]))
	h2.Level, h2.Type = unix.SOL_SOCKET, unix.SO_RXQ_OVFL
	h2.SetLen(unix.CmsgLen(4))
	*(*uint32)(unsafe.Pointer(&oob[off+unix.CmsgLen(0)])) = 7
	at, drops, ok := ancillary(oob, now)
	if d := now.Sub(at); d < 2*time.Millisecond || d > 4*time.Millisecond || drops != 7 || !ok {
		t.Errorf("arrived %s before the read, drops %d (%v); want 3ms, 7", d, drops, ok)
	}
	if at, _, ok := ancillary(nil, now); !at.Equal(now) || ok {
		t.Errorf("no ancillary data: %v %v", at, ok)
	}
}
