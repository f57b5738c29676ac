package httpproxy

import (
	"errors"
	"net"
	"net/netip"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// closedPort returns a loopback address that refuses connections: a TCP
// socket bound there, never listening, holds the port until the test
// ends. A port merely closed again could be handed to a listener bound
// after it, such as a front of the same test: TestServerHeaderModes then
// got a proxied answer instead of the local reply it checks (once in ~300
// runs under load), or a front forwarding to itself until its head grew
// to 431.
func closedPort(t testing.TB) netip.AddrPort {
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
	in4 := sa.(*unix.SockaddrInet4)
	return netip.AddrPortFrom(netip.AddrFrom4(in4.Addr), uint16(in4.Port))
}

// TestClosedPortHeld: while the test runs, no listener can take
// closedPort's address, and a connection to it is refused.
func TestClosedPortHeld(t *testing.T) {
	ap := closedPort(t)
	if ln, err := net.Listen("tcp", ap.String()); err == nil {
		ln.Close()
		t.Fatalf("a listener took %v", ap)
	}
	if c, err := net.Dial("tcp", ap.String()); !errors.Is(err, syscall.ECONNREFUSED) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("connect to %v: %v; want connection refused", ap, err)
	}
}
