//go:build !linux

package sdnotify

// monotonicUsec is 0 where there is no systemd: nobody reads it.
func monotonicUsec() uint64 { return 0 }
