package sdnotify

import "golang.org/x/sys/unix"

func monotonicUsec() uint64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts) // cannot fail for this clock
	return uint64(ts.Sec)*1e6 + uint64(ts.Nsec)/1e3
}
