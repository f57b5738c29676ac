package fdtest

import (
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ResetWithin reports whether c's TCP state reaches CLOSE within d, as a
// reset puts it (a FIN alone never does), polling without reading or
// writing, which would change what the test looks at.
func ResetWithin(c syscall.Conn, d time.Duration) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return false
	}
	for deadline := time.Now().Add(d); ; time.Sleep(time.Millisecond) {
		state := uint8(0)
		rc.Control(func(fd uintptr) {
			if ti, err := unix.GetsockoptTCPInfo(int(fd), unix.SOL_TCP, unix.TCP_INFO); err == nil {
				state = ti.State
			}
		})
		if state == unix.BPF_TCP_CLOSE {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}
