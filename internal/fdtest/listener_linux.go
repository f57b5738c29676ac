package fdtest

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// FullListener is a blocking loopback listener whose accept queue is
// full: the kernel drops every new SYN, so a connect to it stays under
// way (the SYN resent after 1 s, 3 s, …) until the test accepts the
// connection that fills the queue. Its raw accepts wait up to
// acceptTimeout (SO_RCVTIMEO: an accept interrupted by a signal is not
// restarted, so callers retry on EINTR). Both sockets close at the test's
// end.
func FullListener(t testing.TB, acceptTimeout time.Duration) (fd int, dst netip.AddrPort) {
	t.Helper()
	fd, dst = boundLoopback(t)
	if err := unix.Listen(fd, 0); err != nil { // room for one queued connection
		t.Fatal(err)
	}
	tv := unix.NsecToTimeval(acceptTimeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	filler, err := net.DialTimeout("tcp4", dst.String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { filler.Close() })
	return fd, dst
}

// RefusedAddr is a loopback address whose connects are refused for the
// whole test: a socket bound there that never listens holds the port. A
// port merely closed again could be handed to a listener bound after it,
// often the same test's own server or proxy, which then answered where a
// refusal was due.
func RefusedAddr(t testing.TB) netip.AddrPort {
	t.Helper()
	_, addr := boundLoopback(t)
	return addr
}

// boundLoopback is a TCP socket bound to a port of its own on 127.0.0.1,
// closed at the test's end.
func boundLoopback(t testing.TB) (int, netip.AddrPort) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return fd, netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(sa.(*unix.SockaddrInet4).Port))
}
