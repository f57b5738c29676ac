// Package fdtest is test support for descriptors and sockets: it runs
// the process out of descriptors, as a proxy under a connection flood is,
// so that tests can check what accept, pipe and epoll do then and after,
// it tells when a socket has been reset, and it makes a listener whose
// accept queue is full, so that a connect to it stays under way; it also
// refuses a system call as a container's seccomp profile does. A test
// that fills the descriptor table or refuses a call runs alone in a copy
// of the test binary.
package fdtest

import (
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// Exhaust lowers the process's descriptor limit to 64 above the ones in
// use and fills those; release (idempotent, also run at the test's end)
// gives them back and restores the limit. Tests that call it run in a
// process of their own (InOwnProcess): a descriptor another test's
// leftovers close after the fill would let the call meant to fail succeed.
func Exhaust(t testing.TB) (release func()) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	probe, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(probe)
	low := lim
	low.Cur = uint64(probe) + 64 // room above the descriptors in use, then filled
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	var fill []int
	release = func() {
		for _, fd := range fill {
			unix.Close(fd)
		}
		fill = nil
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
	t.Cleanup(release)
	for {
		fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			break
		}
		fill = append(fill, fd)
	}
	return release
}
