package rawsys

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// closeOnCleanup closes fd when the test ends.
func closeOnCleanup(t *testing.T, fd int) {
	t.Helper()
	t.Cleanup(func() { unix.Close(fd) })
}

// socketPair returns a connected non-blocking AF_UNIX stream pair.
func socketPair(t *testing.T) (int, int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socketpair: %v", err)
	}
	closeOnCleanup(t, fds[0])
	closeOnCleanup(t, fds[1])
	return fds[0], fds[1]
}

// tcpPair returns both ends of a loopback TCP connection as non-blocking
// descriptors, made with x/sys/unix only (not with the code under test).
func tcpPair(t *testing.T) (int, int) {
	t.Helper()
	ln, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socket: %v", err)
	}
	defer unix.Close(ln)
	if err := unix.Bind(ln, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatalf("bind: %v", err)
	}
	if err := unix.Listen(ln, 1); err != nil {
		t.Fatalf("listen: %v", err)
	}
	sa, err := unix.Getsockname(ln)
	if err != nil {
		t.Fatalf("getsockname: %v", err)
	}
	c, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socket: %v", err)
	}
	closeOnCleanup(t, c)
	if err := unix.Connect(c, sa); err != nil { // blocking: done on return
		t.Fatalf("connect: %v", err)
	}
	if err := unix.SetNonblock(c, true); err != nil {
		t.Fatalf("set non-blocking: %v", err)
	}
	s, _, err := unix.Accept4(ln, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
	if err != nil {
		t.Fatalf("accept: %v", err)
	}
	closeOnCleanup(t, s)
	return c, s
}

// waitFor polls fd for events, failing the test if none come within 5 s.
func waitFor(t *testing.T, fd int, events int16) int16 {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			t.Fatalf("fd %d: no poll events %#x within 5 s", fd, events)
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: events}}
		n, err := unix.Poll(pfd, int(left/time.Millisecond)+1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			t.Fatalf("poll: %v", err)
		}
		if n > 0 {
			return pfd[0].Revents
		}
	}
}

// readN reads exactly n bytes from the non-blocking fd with Read, waiting
// for readability between reads; it fails on EOF or after 5 s.
func readN(t *testing.T, fd, n int) []byte {
	t.Helper()
	out := make([]byte, 0, n)
	buf := make([]byte, 64<<10)
	for len(out) < n {
		m, err := Read(fd, buf[:min(len(buf), n-len(out))])
		switch {
		case err == unix.EAGAIN:
			waitFor(t, fd, unix.POLLIN)
		case err != nil:
			t.Fatalf("read after %d of %d bytes: %v", len(out), n, err)
		case m == 0:
			t.Fatalf("EOF after %d of %d bytes", len(out), n)
		default:
			out = append(out, buf[:m]...)
		}
	}
	return out
}

// pattern returns n bytes that differ from position to position.
func pattern(n int, seed byte) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i*7) + seed
	}
	return p
}

// TestWriteReadRoundTrip checks that bytes written with Write on one end
// of a socketpair or a loopback TCP pair come out unchanged with Read on
// the other, with the counts returned right, and that an empty socket then
// reads as unix.EAGAIN.
func TestWriteReadRoundTrip(t *testing.T) {
	pairs := []struct {
		name string
		pair func(*testing.T) (int, int)
	}{
		{"socketpair", socketPair},
		{"tcp", tcpPair},
	}
	sizes := []int{1, 100, 4096, 60000}
	for _, p := range pairs {
		for _, size := range sizes {
			t.Run(p.name+"/"+strconv.Itoa(size), func(t *testing.T) {
				a, b := p.pair(t)
				want := pattern(size, byte(size))
				n, err := Write(a, want)
				if err != nil || n != size {
					t.Fatalf("Write = %d, %v; want %d, nil", n, err, size)
				}
				if got := readN(t, b, size); !bytes.Equal(got, want) {
					t.Fatalf("read back %d bytes that differ from those written", len(got))
				}
				if n, err := Read(b, make([]byte, 16)); err != unix.EAGAIN {
					t.Fatalf("Read of drained socket = %d, %v; want 0, EAGAIN", n, err)
				}
			})
		}
	}
}

// TestReadErrors checks the errors Read returns: unix.EAGAIN (comparable
// with ==, as callers compare it) on an empty non-blocking socket, with
// n = 0, for a non-empty and for a nil buffer; EBADF on a bad descriptor.
func TestReadErrors(t *testing.T) {
	a, _ := socketPair(t)
	tests := []struct {
		name string
		fd   int
		p    []byte
		want error
	}{
		{"empty socket", a, make([]byte, 10), unix.EAGAIN},
		{"bad fd", -1, make([]byte, 10), unix.EBADF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := Read(tt.fd, tt.p)
			if err != tt.want || n != 0 {
				t.Fatalf("Read = %d, %v (%T); want 0, %v", n, err, err, tt.want)
			}
		})
	}
}

// TestZeroLength checks that Read and Write with an empty or nil buffer
// return 0, nil and move no data.
func TestZeroLength(t *testing.T) {
	a, b := socketPair(t)
	for _, p := range [][]byte{nil, {}} {
		if n, err := Write(a, p); n != 0 || err != nil {
			t.Errorf("Write(%#v) = %d, %v; want 0, nil", p, n, err)
		}
	}
	if _, err := Write(b, []byte("x")); err != nil {
		t.Fatal(err)
	}
	for _, p := range [][]byte{nil, {}} {
		if n, err := Read(a, p); n != 0 || err != nil {
			t.Errorf("Read(%#v) = %d, %v; want 0, nil", p, n, err)
		}
	}
	if got := readN(t, a, 1); string(got) != "x" {
		t.Errorf("read %q after zero-length reads; want %q", got, "x")
	}
	if n, err := Read(b, make([]byte, 1)); err != unix.EAGAIN {
		t.Errorf("zero-length writes delivered something: Read = %d, %v", n, err)
	}
}

// TestWriteFullSocket checks that Write to a socket whose buffer is full
// returns 0 and an error equal to unix.EAGAIN, and Write to a bad
// descriptor EBADF.
func TestWriteFullSocket(t *testing.T) {
	a, _ := socketPair(t)
	buf := make([]byte, 64<<10)
	total := 0
	for {
		n, err := Write(a, buf)
		if err == unix.EAGAIN {
			if n != 0 {
				t.Fatalf("Write with EAGAIN returned n = %d", n)
			}
			break
		}
		if err != nil {
			t.Fatalf("Write after %d bytes: %v", total, err)
		}
		total += n
		if total > 1<<30 {
			t.Fatal("socket never filled up")
		}
	}
	if total == 0 {
		t.Fatal("no byte written before EAGAIN")
	}
	if n, err := Write(-1, buf); n != 0 || err != unix.EBADF {
		t.Fatalf("Write(-1) = %d, %v; want 0, EBADF", n, err)
	}
}

// TestWritev2 checks that Writev2 delivers exactly a then b, skipping an
// empty or nil buffer on either side, and returns the byte count.
func TestWritev2(t *testing.T) {
	tests := []struct {
		name string
		a, b []byte
	}{
		{"both", []byte("head:"), []byte("body")},
		{"empty a", []byte{}, []byte("body")},
		{"nil a", nil, []byte("body")},
		{"empty b", []byte("head:"), []byte{}},
		{"nil b", []byte("head:"), nil},
		{"big", pattern(40000, 1), pattern(50000, 2)},
		{"both empty", nil, []byte{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, r := tcpPair(t)
			want := append(append([]byte{}, tt.a...), tt.b...)
			n, err := Writev2(w, tt.a, tt.b)
			if err != nil || n != len(want) {
				t.Fatalf("Writev2 = %d, %v; want %d, nil", n, err, len(want))
			}
			if got := readN(t, r, len(want)); !bytes.Equal(got, want) {
				t.Fatalf("peer read %q; want %q", trunc(got), trunc(want))
			}
			if err := unix.Shutdown(w, unix.SHUT_WR); err != nil {
				t.Fatal(err)
			}
			waitFor(t, r, unix.POLLIN)
			if n, err := Read(r, make([]byte, 16)); n != 0 || err != nil {
				t.Fatalf("after the written bytes Read = %d, %v; want EOF (0, nil)", n, err)
			}
		})
	}
}

// trunc shortens p for messages.
func trunc(p []byte) []byte {
	if len(p) > 40 {
		return p[:40]
	}
	return p
}

// TestWritev2Errors checks that Writev2 reports unix.EAGAIN with n = 0 on
// a full socket and EBADF on a bad descriptor.
func TestWritev2Errors(t *testing.T) {
	a, _ := socketPair(t)
	buf := make([]byte, 32<<10)
	for total := 0; ; {
		n, err := Writev2(a, buf, buf)
		if err == unix.EAGAIN {
			if n != 0 {
				t.Fatalf("Writev2 with EAGAIN returned n = %d", n)
			}
			break
		}
		if err != nil {
			t.Fatalf("Writev2 after %d bytes: %v", total, err)
		}
		if total += n; total > 1<<30 {
			t.Fatal("socket never filled up")
		}
	}
	if n, err := Writev2(-1, buf, buf); n != 0 || err != unix.EBADF {
		t.Fatalf("Writev2(-1) = %d, %v; want 0, EBADF", n, err)
	}
}

// TestShutdown checks Shutdown: SHUT_WR makes the peer read EOF (after
// having read what was written before) and this end's writes fail with
// EPIPE; SHUT_RD makes this end read EOF; on an unconnected socket it is
// ENOTCONN and on a pipe ENOTSOCK.
func TestShutdown(t *testing.T) {
	t.Run("SHUT_WR", func(t *testing.T) {
		a, b := tcpPair(t)
		if _, err := Write(a, []byte("last")); err != nil {
			t.Fatal(err)
		}
		if err := Shutdown(a, unix.SHUT_WR); err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
		if got := readN(t, b, 4); string(got) != "last" {
			t.Fatalf("peer read %q; want %q", got, "last")
		}
		waitFor(t, b, unix.POLLIN)
		if n, err := Read(b, make([]byte, 8)); n != 0 || err != nil {
			t.Fatalf("peer Read = %d, %v; want EOF (0, nil)", n, err)
		}
		if n, err := Write(a, []byte("more")); err != unix.EPIPE {
			t.Fatalf("Write after SHUT_WR = %d, %v; want EPIPE", n, err)
		}
		// The other direction still works.
		if _, err := Write(b, []byte("back")); err != nil {
			t.Fatal(err)
		}
		if got := readN(t, a, 4); string(got) != "back" {
			t.Fatalf("read %q after SHUT_WR; want %q", got, "back")
		}
	})
	t.Run("SHUT_RD", func(t *testing.T) {
		a, _ := socketPair(t)
		if err := Shutdown(a, unix.SHUT_RD); err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
		if n, err := Read(a, make([]byte, 8)); n != 0 || err != nil {
			t.Fatalf("Read after SHUT_RD = %d, %v; want EOF (0, nil)", n, err)
		}
	})
	t.Run("errors", func(t *testing.T) {
		s, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		closeOnCleanup(t, s)
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		closeOnCleanup(t, p[0])
		closeOnCleanup(t, p[1])
		tests := []struct {
			name string
			fd   int
			want error
		}{
			{"unconnected", s, unix.ENOTCONN},
			{"pipe", p[1], unix.ENOTSOCK},
			{"bad fd", -1, unix.EBADF},
		}
		for _, tt := range tests {
			if err := Shutdown(tt.fd, unix.SHUT_WR); err != tt.want {
				t.Errorf("%s: Shutdown = %v; want %v", tt.name, err, tt.want)
			}
		}
	})
}

// TestClose checks that Close closes the descriptor (its peer reads EOF
// once no other descriptor refers to the socket) and that a second Close,
// and Read and Write, on it then return unix.EBADF. It works on a
// duplicate at a high number so that no descriptor opened meanwhile by
// the runtime can take the closed number.
func TestClose(t *testing.T) {
	a, b := socketPair(t)
	h, err := unix.FcntlInt(uintptr(a), unix.F_DUPFD_CLOEXEC, 1000)
	if err != nil {
		t.Skipf("cannot duplicate a descriptor to 1000 or above: %v", err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			unix.Close(h)
		}
	})
	if err := unix.Close(a); err != nil { // h is now the only reference
		t.Fatal(err)
	}
	if err := Close(h); err != nil {
		t.Fatalf("Close = %v; want nil", err)
	}
	closed = true
	waitFor(t, b, unix.POLLIN)
	if n, err := Read(b, make([]byte, 8)); n != 0 || err != nil {
		t.Fatalf("peer Read after Close = %d, %v; want EOF (0, nil)", n, err)
	}
	if err := Close(h); err != unix.EBADF {
		t.Fatalf("second Close = %v; want EBADF", err)
	}
	if n, err := Read(h, make([]byte, 8)); n != 0 || err != unix.EBADF {
		t.Fatalf("Read of closed fd = %d, %v; want 0, EBADF", n, err)
	}
	if n, err := Write(h, []byte("x")); n != 0 || err != unix.EBADF {
		t.Fatalf("Write to closed fd = %d, %v; want 0, EBADF", n, err)
	}
}

// TestSocket checks that Socket makes a socket of the asked domain and
// type, with SOCK_NONBLOCK and SOCK_CLOEXEC honoured, and returns -1 and
// the errno for an unsupported domain.
func TestSocket(t *testing.T) {
	tests := []struct {
		name   string
		domain int
		typ    int
		flags  int
	}{
		{"tcp4 nonblock cloexec", unix.AF_INET, unix.SOCK_STREAM, unix.SOCK_NONBLOCK | unix.SOCK_CLOEXEC},
		{"tcp6 nonblock cloexec", unix.AF_INET6, unix.SOCK_STREAM, unix.SOCK_NONBLOCK | unix.SOCK_CLOEXEC},
		{"udp4 blocking", unix.AF_INET, unix.SOCK_DGRAM, 0},
		{"unix cloexec", unix.AF_UNIX, unix.SOCK_STREAM, unix.SOCK_CLOEXEC},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fd, err := Socket(tt.domain, tt.typ|tt.flags, 0)
			if err == unix.EAFNOSUPPORT && tt.domain == unix.AF_INET6 {
				t.Skip("no IPv6 on this machine")
			}
			if err != nil {
				t.Fatalf("Socket: %v", err)
			}
			closeOnCleanup(t, fd)
			if fd < 0 {
				t.Fatalf("Socket returned fd %d with nil error", fd)
			}
			if v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN); err != nil || v != tt.domain {
				t.Errorf("SO_DOMAIN = %d, %v; want %d", v, err, tt.domain)
			}
			if v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil || v != tt.typ {
				t.Errorf("SO_TYPE = %d, %v; want %d", v, err, tt.typ)
			}
			checkSockFlags(t, fd, tt.flags)
		})
	}
	t.Run("bad domain", func(t *testing.T) {
		fd, err := Socket(-1, unix.SOCK_STREAM, 0)
		if err == nil {
			unix.Close(fd)
			t.Fatal("Socket(-1, ...) succeeded")
		}
		if err != unix.EAFNOSUPPORT || fd != -1 {
			t.Fatalf("Socket(-1, ...) = %d, %v; want -1, EAFNOSUPPORT", fd, err)
		}
	})
}

// TestSockoptIntRoundTrip checks that a value set with SetsockoptInt reads
// back the same with GetsockoptInt and with x/sys/unix's own
// GetsockoptInt, for options of several levels, so that the 4-byte value
// and its length are passed right both ways.
func TestSockoptIntRoundTrip(t *testing.T) {
	tests := []struct {
		name   string
		level  int
		opt    int
		values []int
		root   bool
	}{
		{"TCP_NODELAY", unix.IPPROTO_TCP, unix.TCP_NODELAY, []int{1, 0, 1}, false},
		{"SO_KEEPALIVE", unix.SOL_SOCKET, unix.SO_KEEPALIVE, []int{1, 0}, false},
		{"TCP_KEEPIDLE", unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, []int{7, 12345}, false},
		{"IP_TTL", unix.IPPROTO_IP, unix.IP_TTL, []int{1, 200, 64}, false},
		{"SO_MARK", unix.SOL_SOCKET, unix.SO_MARK, []int{0x1234, 0x7fffffff, 0}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.root && os.Geteuid() != 0 {
				t.Skipf("%s needs root (CAP_NET_ADMIN); running as uid %d", tt.name, os.Geteuid())
			}
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			closeOnCleanup(t, fd)
			for _, v := range tt.values {
				if err := SetsockoptInt(fd, tt.level, tt.opt, v); err != nil {
					if tt.root && err == unix.EPERM {
						t.Skipf("%s: EPERM although root: no CAP_NET_ADMIN here", tt.name)
					}
					t.Fatalf("SetsockoptInt(%d) = %v", v, err)
				}
				got, err := GetsockoptInt(fd, tt.level, tt.opt)
				if err != nil || got != v {
					t.Fatalf("GetsockoptInt after setting %d = %d, %v", v, got, err)
				}
				if ref, err := unix.GetsockoptInt(fd, tt.level, tt.opt); err != nil || ref != v {
					t.Fatalf("unix.GetsockoptInt after setting %d = %d, %v", v, ref, err)
				}
			}
		})
	}
}

// TestSockoptIntErrors checks that SetsockoptInt and GetsockoptInt return
// the errno: EBADF for a bad descriptor, ENOTSOCK for a pipe, EINVAL for
// an out-of-range value.
func TestSockoptIntErrors(t *testing.T) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	closeOnCleanup(t, p[0])
	closeOnCleanup(t, p[1])
	s, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	closeOnCleanup(t, s)
	tests := []struct {
		name string
		fd   int
		opt  int
		v    int
		want error
	}{
		{"bad fd", -1, unix.IP_TTL, 1, unix.EBADF},
		{"pipe", p[0], unix.IP_TTL, 1, unix.ENOTSOCK},
		{"ttl out of range", s, unix.IP_TTL, 256, unix.EINVAL},
	}
	for _, tt := range tests {
		if err := SetsockoptInt(tt.fd, unix.IPPROTO_IP, tt.opt, tt.v); err != tt.want {
			t.Errorf("%s: SetsockoptInt = %v; want %v", tt.name, err, tt.want)
		}
	}
	for _, tt := range tests[:2] {
		if _, err := GetsockoptInt(tt.fd, unix.IPPROTO_IP, tt.opt); err != tt.want {
			t.Errorf("%s: GetsockoptInt = %v; want %v", tt.name, err, tt.want)
		}
	}
}

// connectAndAccept connects a fresh non-blocking socket of domain to the
// loopback listener ln with connect (Connect4 or Connect6), waits for the
// connect to complete, and checks that ln accepts exactly that socket:
// the accepted conn's remote port is the socket's local port, so the
// destination port was put in network byte order.
func connectAndAccept(t *testing.T, domain int, ln *net.TCPListener, connect func(fd int, port uint16) error) {
	t.Helper()
	fd, err := unix.Socket(domain, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	closeOnCleanup(t, fd)
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	if err := connect(fd, port); err != nil && err != unix.EINPROGRESS {
		t.Fatalf("connect to port %d = %v; want nil or EINPROGRESS", port, err)
	}
	waitFor(t, fd, unix.POLLOUT)
	if soerr, err := GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR); err != nil || soerr != 0 {
		t.Fatalf("SO_ERROR after connect to port %d = %v, %v; want 0", port, unix.Errno(soerr), err)
	}
	ln.SetDeadline(time.Now().Add(5 * time.Second))
	c, err := ln.AcceptTCP()
	if err != nil {
		t.Fatalf("accept: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	local, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	var localPort int
	switch sa := local.(type) {
	case *unix.SockaddrInet4:
		localPort = sa.Port
	case *unix.SockaddrInet6:
		localPort = sa.Port
	}
	if got := c.RemoteAddr().(*net.TCPAddr).Port; got != localPort {
		t.Fatalf("listener accepted a conn from port %d; the socket's port is %d", got, localPort)
	}
	peer, err := unix.Getpeername(fd)
	if err != nil {
		t.Fatal(err)
	}
	var peerPort int
	switch sa := peer.(type) {
	case *unix.SockaddrInet4:
		peerPort = sa.Port
	case *unix.SockaddrInet6:
		peerPort = sa.Port
	}
	if peerPort != int(port) {
		t.Fatalf("socket connected to port %d; want %d", peerPort, port)
	}
	// And the connection carries data.
	if _, err := c.Write([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	if got := readN(t, fd, 2); string(got) != "hi" {
		t.Fatalf("read %q over the connection; want %q", got, "hi")
	}
}

// TestConnect checks that Connect4 to 127.0.0.1 and Connect6 to ::1 from
// a non-blocking socket reach a loopback listener on the given port.
// Several listeners are tried so that ports whose two bytes differ are
// covered.
func TestConnect(t *testing.T) {
	tests := []struct {
		name    string
		network string
		addr    string
		domain  int
		connect func(fd int, port uint16) error
	}{
		{"Connect4", "tcp4", "127.0.0.1:0", unix.AF_INET, func(fd int, port uint16) error {
			return Connect4(fd, [4]byte{127, 0, 0, 1}, port)
		}},
		{"Connect6", "tcp6", "[::1]:0", unix.AF_INET6, func(fd int, port uint16) error {
			return Connect6(fd, [16]byte{15: 1}, port)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for range 3 {
				l, err := net.Listen(tt.network, tt.addr)
				if err != nil {
					if tt.domain == unix.AF_INET6 {
						t.Skipf("::1 unavailable: %v", err)
					}
					t.Fatal(err)
				}
				ln := l.(*net.TCPListener)
				t.Cleanup(func() { ln.Close() })
				connectAndAccept(t, tt.domain, ln, tt.connect)
			}
		})
	}
}

// TestConnectErrors checks that Connect4 to a loopback port nobody listens
// on ends in ECONNREFUSED, reported through SO_ERROR once the socket turns
// writable (or at once by Connect4 itself), and that Connect4 and Connect6
// on a socket of the other family fail with EAFNOSUPPORT or EINVAL.
func TestConnectErrors(t *testing.T) {
	t.Run("refused", func(t *testing.T) {
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := uint16(l.Addr().(*net.TCPAddr).Port)
		l.Close()
		fd, err := Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		closeOnCleanup(t, fd)
		err = Connect4(fd, [4]byte{127, 0, 0, 1}, port)
		if err == unix.ECONNREFUSED {
			return
		}
		if err != unix.EINPROGRESS {
			t.Fatalf("Connect4 to closed port %d = %v; want EINPROGRESS or ECONNREFUSED", port, err)
		}
		waitFor(t, fd, unix.POLLOUT)
		soerr, err := GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
		if err != nil || unix.Errno(soerr) != unix.ECONNREFUSED {
			t.Fatalf("SO_ERROR = %v, %v; want ECONNREFUSED", unix.Errno(soerr), err)
		}
	})
	t.Run("wrong family", func(t *testing.T) {
		fd4, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		closeOnCleanup(t, fd4)
		if err := Connect6(fd4, [16]byte{15: 1}, 9); err != unix.EAFNOSUPPORT && err != unix.EINVAL {
			t.Errorf("Connect6 on an AF_INET socket = %v; want EAFNOSUPPORT or EINVAL", err)
		}
		if err := Connect4(-1, [4]byte{127, 0, 0, 1}, 9); err != unix.EBADF {
			t.Errorf("Connect4 on fd -1 = %v; want EBADF", err)
		}
	})
}

// TestSplice checks that Splice moves bytes from a socket into a pipe and
// from the pipe into another socket, returning the counts, and that with
// SPLICE_F_NONBLOCK an empty socket gives unix.EAGAIN and a socket at EOF
// gives 0.
func TestSplice(t *testing.T) {
	const flags = unix.SPLICE_F_MOVE | unix.SPLICE_F_NONBLOCK
	src, in := tcpPair(t)  // src writes, in is spliced from
	out, dst := tcpPair(t) // out is spliced to, dst reads
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	closeOnCleanup(t, p[0])
	closeOnCleanup(t, p[1])

	if n, err := Splice(in, p[1], 1<<16, flags); n != 0 || err != unix.EAGAIN {
		t.Fatalf("Splice from empty socket = %d, %v; want 0, EAGAIN", n, err)
	}
	want := pattern(30000, 3)
	if n, err := Write(src, want); err != nil || n != len(want) {
		t.Fatalf("Write = %d, %v", n, err)
	}
	var got []byte
	for moved := 0; moved < len(want); {
		n, err := Splice(in, p[1], 1<<16, flags)
		if err == unix.EAGAIN {
			waitFor(t, in, unix.POLLIN)
			continue
		}
		if err != nil || n <= 0 {
			t.Fatalf("Splice socket→pipe after %d bytes = %d, %v", moved, n, err)
		}
		moved += n
		for left := n; left > 0; {
			m, err := Splice(p[0], out, left, flags)
			if err == unix.EAGAIN {
				waitFor(t, out, unix.POLLOUT)
				continue
			}
			if err != nil || m <= 0 {
				t.Fatalf("Splice pipe→socket = %d, %v", m, err)
			}
			left -= m
			got = append(got, readN(t, dst, m)...)
		}
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("spliced %d bytes that differ from the %d written", len(got), len(want))
	}
	if err := unix.Shutdown(src, unix.SHUT_WR); err != nil {
		t.Fatal(err)
	}
	waitFor(t, in, unix.POLLIN)
	if n, err := Splice(in, p[1], 1<<16, flags); n != 0 || err != nil {
		t.Fatalf("Splice from socket at EOF = %d, %v; want 0, nil", n, err)
	}
	if n, err := Splice(-1, p[1], 1, flags); n != 0 || err != unix.EBADF {
		t.Fatalf("Splice from fd -1 = %d, %v; want 0, EBADF", n, err)
	}
}

// TestEpollPoll checks that EpollPoll returns at once with 0 when nothing
// is pending, and with 1 event for the registered descriptor (its data and
// EPOLLIN) once it is readable, even when the events slice has room for
// more; and EBADF for a bad epoll descriptor.
func TestEpollPoll(t *testing.T) {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	closeOnCleanup(t, ep)
	a, b := socketPair(t)
	c, _ := socketPair(t) // registered, never readable
	for _, fd := range []int{a, c} {
		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}
		if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
			t.Fatal(err)
		}
	}
	events := make([]unix.EpollEvent, 8)
	start := time.Now()
	if n, err := EpollPoll(ep, events); n != 0 || err != nil {
		t.Fatalf("EpollPoll with nothing pending = %d, %v; want 0, nil", n, err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("EpollPoll waited %v", d)
	}
	if _, err := Write(b, []byte("x")); err != nil {
		t.Fatal(err)
	}
	n, err := EpollPoll(ep, events)
	if n != 1 || err != nil {
		t.Fatalf("EpollPoll with a readable fd = %d, %v; want 1, nil", n, err)
	}
	if events[0].Fd != int32(a) || events[0].Events&unix.EPOLLIN == 0 {
		t.Fatalf("event = {Fd: %d, Events: %#x}; want Fd %d with EPOLLIN", events[0].Fd, events[0].Events, a)
	}
	// Level-triggered: still pending until read; one slot is enough.
	if n, err := EpollPoll(ep, events[:1]); n != 1 || err != nil {
		t.Fatalf("EpollPoll again with one slot = %d, %v; want 1, nil", n, err)
	}
	readN(t, a, 1)
	if n, err := EpollPoll(ep, events); n != 0 || err != nil {
		t.Fatalf("EpollPoll after draining = %d, %v; want 0, nil", n, err)
	}
	if n, err := EpollPoll(-1, events); n != 0 || err != unix.EBADF {
		t.Fatalf("EpollPoll(-1) = %d, %v; want 0, EBADF", n, err)
	}
}

// epollCreate returns a new epoll descriptor, closed on cleanup.
func epollCreate(t *testing.T) int {
	t.Helper()
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	closeOnCleanup(t, ep)
	return ep
}

// TestEpollCtl checks that a descriptor added with EpollCtl is reported by
// EpollPoll with the data (Fd and Pad) the caller put in the event, not
// the descriptor's number; that EPOLL_CTL_MOD replaces events and data;
// that after EPOLL_CTL_DEL (with a nil event) a readable descriptor is no
// longer reported; and that it can then be added again.
func TestEpollCtl(t *testing.T) {
	ep := epollCreate(t)
	a, b := socketPair(t)
	events := make([]unix.EpollEvent, 4)
	poll := func(what string, want int) {
		t.Helper()
		if n, err := EpollPoll(ep, events); n != want || err != nil {
			t.Fatalf("%s: EpollPoll = %d, %v; want %d, nil", what, n, err, want)
		}
	}
	check := func(what string, want unix.EpollEvent) {
		t.Helper()
		got := events[0]
		if got.Fd != want.Fd || got.Pad != want.Pad || got.Events&want.Events != want.Events {
			t.Fatalf("%s: event = {Events: %#x, Fd: %#x, Pad: %#x}; want events %#x with Fd %#x, Pad %#x",
				what, got.Events, got.Fd, got.Pad, want.Events, want.Fd, want.Pad)
		}
	}

	add := unix.EpollEvent{Events: unix.EPOLLIN, Fd: 0x1234567, Pad: -0x7654321}
	if err := EpollCtl(ep, unix.EPOLL_CTL_ADD, a, &add); err != nil {
		t.Fatalf("EPOLL_CTL_ADD = %v", err)
	}
	poll("after ADD, nothing to read", 0)
	if _, err := Write(b, []byte("x")); err != nil {
		t.Fatal(err)
	}
	poll("after ADD, readable", 1)
	check("after ADD", add)

	mod := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT, Fd: 7, Pad: 0x7fffffff}
	if err := EpollCtl(ep, unix.EPOLL_CTL_MOD, a, &mod); err != nil {
		t.Fatalf("EPOLL_CTL_MOD = %v", err)
	}
	poll("after MOD", 1)
	check("after MOD", mod)

	if err := EpollCtl(ep, unix.EPOLL_CTL_DEL, a, nil); err != nil {
		t.Fatalf("EPOLL_CTL_DEL = %v", err)
	}
	poll("after DEL, still readable", 0)

	again := unix.EpollEvent{Events: unix.EPOLLIN, Fd: -1, Pad: 1}
	if err := EpollCtl(ep, unix.EPOLL_CTL_ADD, a, &again); err != nil {
		t.Fatalf("EPOLL_CTL_ADD after DEL = %v", err)
	}
	poll("after ADD again", 1)
	check("after ADD again", again)
}

// TestEpollCtlErrors checks the errno EpollCtl returns: EEXIST adding a
// descriptor twice, ENOENT deleting or modifying one never added, EBADF
// for a bad epoll descriptor or a bad target, EINVAL when the first
// descriptor is not an epoll one or is the target itself, EPERM for a
// regular file.
func TestEpollCtlErrors(t *testing.T) {
	ep := epollCreate(t)
	a, _ := socketPair(t) // registered
	c, _ := socketPair(t) // never registered
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(a)}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, a, &ev); err != nil {
		t.Fatal(err)
	}
	file, err := unix.Open(t.TempDir()+"/f", unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	closeOnCleanup(t, file)
	tests := []struct {
		name string
		epfd int
		op   int
		fd   int
		ev   *unix.EpollEvent
		want error
	}{
		{"add twice", ep, unix.EPOLL_CTL_ADD, a, &ev, unix.EEXIST},
		{"del unregistered", ep, unix.EPOLL_CTL_DEL, c, nil, unix.ENOENT},
		{"mod unregistered", ep, unix.EPOLL_CTL_MOD, c, &ev, unix.ENOENT},
		{"bad epfd", -1, unix.EPOLL_CTL_ADD, c, &ev, unix.EBADF},
		{"bad fd", ep, unix.EPOLL_CTL_ADD, -1, &ev, unix.EBADF},
		{"epfd not epoll", a, unix.EPOLL_CTL_ADD, c, &ev, unix.EINVAL},
		{"epfd itself", ep, unix.EPOLL_CTL_ADD, ep, &ev, unix.EINVAL},
		{"regular file", ep, unix.EPOLL_CTL_ADD, file, &ev, unix.EPERM},
	}
	for _, tt := range tests {
		if err := EpollCtl(tt.epfd, tt.op, tt.fd, tt.ev); err != tt.want {
			t.Errorf("%s: EpollCtl = %v; want %v", tt.name, err, tt.want)
		}
	}
}

// decodeSockaddr decodes a sockaddr_in or sockaddr_in6 by hand — family
// in host byte order, port big-endian — as listen.DecodeSockaddr does (a
// test of rawsys cannot import listen: listen imports rawsys). b must be
// exactly the size of the family's sockaddr.
func decodeSockaddr(t *testing.T, b []byte) netip.AddrPort {
	t.Helper()
	if len(b) < 2 {
		t.Fatalf("sockaddr of %d bytes", len(b))
	}
	port := func() uint16 { return binary.BigEndian.Uint16(b[2:4]) }
	switch f := binary.NativeEndian.Uint16(b); f {
	case unix.AF_INET:
		if len(b) != unix.SizeofSockaddrInet4 {
			t.Fatalf("sockaddr_in of %d bytes; want %d", len(b), unix.SizeofSockaddrInet4)
		}
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), port())
	case unix.AF_INET6:
		if len(b) != unix.SizeofSockaddrInet6 {
			t.Fatalf("sockaddr_in6 of %d bytes; want %d", len(b), unix.SizeofSockaddrInet6)
		}
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[8:24])), port())
	default:
		t.Fatalf("sockaddr of family %d (bytes %x)", f, b)
	}
	return netip.AddrPort{}
}

// toAddrPort converts an address decoded by x/sys/unix.
func toAddrPort(t *testing.T, sa unix.Sockaddr) netip.AddrPort {
	t.Helper()
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port))
	}
	t.Fatalf("unexpected sockaddr %T", sa)
	return netip.AddrPort{}
}

// sockname is fd's local address as x/sys/unix reads it.
func sockname(t *testing.T, fd int) netip.AddrPort {
	t.Helper()
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatalf("getsockname: %v", err)
	}
	return toAddrPort(t, sa)
}

// listenLoopback opens a non-blocking TCP listener on 127.0.0.1 or ::1
// (by domain), on a port the kernel picks, with x/sys/unix only; it is
// closed on cleanup. The test is skipped if ::1 is unavailable.
func listenLoopback(t *testing.T, domain int) (int, unix.Sockaddr) {
	t.Helper()
	var sa unix.Sockaddr = &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}
	if domain == unix.AF_INET6 {
		sa = &unix.SockaddrInet6{Addr: [16]byte{15: 1}}
	}
	fd, err := unix.Socket(domain, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		if domain == unix.AF_INET6 {
			t.Skipf("no IPv6: %v", err)
		}
		t.Fatalf("socket: %v", err)
	}
	closeOnCleanup(t, fd)
	if err := unix.Bind(fd, sa); err != nil {
		if domain == unix.AF_INET6 {
			t.Skipf("::1 unavailable: %v", err)
		}
		t.Fatalf("bind: %v", err)
	}
	if err := unix.Listen(fd, 8); err != nil {
		t.Fatalf("listen: %v", err)
	}
	local, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatalf("getsockname: %v", err)
	}
	return fd, local
}

// dial connects a new blocking socket of domain to sa with x/sys/unix
// (done when it returns) and waits until the listener ln has the
// connection queued. The caller closes the socket.
func dial(t *testing.T, domain int, sa unix.Sockaddr, ln int) int {
	t.Helper()
	c, err := unix.Socket(domain, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socket: %v", err)
	}
	if err := unix.Connect(c, sa); err != nil {
		unix.Close(c)
		t.Fatalf("connect: %v", err)
	}
	waitFor(t, ln, unix.POLLIN)
	return c
}

// fill sets every byte of p to 0xa5, so that bytes a call did not write
// can be told from those it did.
func fill(p []byte) []byte {
	for i := range p {
		p[i] = 0xa5
	}
	return p
}

// checkUntouched fails if p (past what a call said it wrote) was written.
func checkUntouched(t *testing.T, what string, p []byte) {
	t.Helper()
	for i, c := range p {
		if c != 0xa5 {
			t.Errorf("%s: byte %d past the returned length was overwritten (%#x)", what, i, c)
			return
		}
	}
}

// TestAccept4 checks Accept4 on non-blocking loopback listeners (IPv4 and,
// if available, IPv6): with nothing queued it returns -1, 0, EAGAIN; after
// a client connects it returns a new descriptor for that connection with
// O_NONBLOCK and FD_CLOEXEC set exactly as the flags asked, and the
// sockaddr it wrote — the first salen bytes of sa, salen the family's
// sockaddr size — decodes to the client's local address and port, with
// the rest of sa left alone. sa is 28 bytes, as its callers pass.
func TestAccept4(t *testing.T) {
	families := []struct {
		name   string
		domain int
		salen  int
	}{
		{"ipv4", unix.AF_INET, unix.SizeofSockaddrInet4},
		{"ipv6", unix.AF_INET6, unix.SizeofSockaddrInet6},
	}
	flagSets := []struct {
		name  string
		flags int
	}{
		{"nonblock cloexec", unix.SOCK_NONBLOCK | unix.SOCK_CLOEXEC},
		{"nonblock", unix.SOCK_NONBLOCK},
		{"cloexec", unix.SOCK_CLOEXEC},
		{"none", 0},
	}
	for _, f := range families {
		for _, fl := range flagSets {
			t.Run(f.name+"/"+fl.name, func(t *testing.T) {
				ln, lsa := listenLoopback(t, f.domain)
				sa := fill(make([]byte, unix.SizeofSockaddrInet6))
				if nfd, n, err := Accept4(ln, sa, fl.flags); nfd != -1 || n != 0 || err != unix.EAGAIN {
					if err == nil {
						unix.Close(nfd)
					}
					t.Fatalf("Accept4 with nothing queued = %d, %d, %v; want -1, 0, EAGAIN", nfd, n, err)
				}
				checkUntouched(t, "Accept4 with EAGAIN", sa)

				c := dial(t, f.domain, lsa, ln)
				closeOnCleanup(t, c)
				nfd, n, err := Accept4(ln, sa, fl.flags)
				if err != nil {
					t.Fatalf("Accept4 with a connection queued: %v", err)
				}
				closeOnCleanup(t, nfd)
				if nfd < 0 || nfd == ln || nfd == c {
					t.Fatalf("Accept4 returned fd %d (listener %d, client %d)", nfd, ln, c)
				}
				if n != f.salen {
					t.Fatalf("Accept4 returned salen %d; want %d", n, f.salen)
				}
				client := sockname(t, c)
				if got := decodeSockaddr(t, sa[:n]); got != client {
					t.Errorf("Accept4 peer address %v; want the client's %v", got, client)
				}
				checkUntouched(t, "Accept4", sa[n:])

				checkSockFlags(t, nfd, fl.flags)

				// The descriptor is that client's connection.
				if got, want := sockname(t, nfd), toAddrPort(t, lsa); got != want {
					t.Errorf("accepted socket's local address %v; want the listener's %v", got, want)
				}
				if _, err := unix.Write(c, []byte("ping")); err != nil {
					t.Fatal(err)
				}
				if got := readN(t, nfd, 4); string(got) != "ping" {
					t.Errorf("accepted socket read %q; want %q", got, "ping")
				}
				if nfd2, n, err := Accept4(ln, sa, fl.flags); err != unix.EAGAIN {
					if err == nil {
						unix.Close(nfd2)
					}
					t.Errorf("second Accept4 = %d, %d, %v; want -1, 0, EAGAIN", nfd2, n, err)
				}
			})
		}
	}
}

// TestAccept4Errors checks that Accept4 returns -1, 0 and the errno for a
// bad descriptor (EBADF), a socket that is not listening (EINVAL) and a
// pipe (ENOTSOCK).
func TestAccept4Errors(t *testing.T) {
	s, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	closeOnCleanup(t, s)
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	closeOnCleanup(t, p[0])
	closeOnCleanup(t, p[1])
	tests := []struct {
		name string
		fd   int
		want error
	}{
		{"bad fd", -1, unix.EBADF},
		{"not listening", s, unix.EINVAL},
		{"pipe", p[0], unix.ENOTSOCK},
	}
	for _, tt := range tests {
		sa := make([]byte, unix.SizeofSockaddrInet6)
		nfd, n, err := Accept4(tt.fd, sa, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		if err == nil {
			unix.Close(nfd)
		}
		if nfd != -1 || n != 0 || err != tt.want {
			t.Errorf("%s: Accept4 = %d, %d, %v; want -1, 0, %v", tt.name, nfd, n, err, tt.want)
		}
	}
}

// TestGetsockname checks that Getsockname returns the length of the
// socket's address and writes exactly those bytes, which decode to the
// address x/sys/unix reads: for bound loopback listeners (IPv4, IPv6), a
// bound UDP socket, a connected socket, and unbound sockets (the
// unspecified address, port 0); with a buffer of the exact size and a
// bigger one.
func TestGetsockname(t *testing.T) {
	socket := func(t *testing.T, domain, typ int) int {
		fd, err := unix.Socket(domain, typ|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			if domain == unix.AF_INET6 {
				t.Skipf("no IPv6: %v", err)
			}
			t.Fatal(err)
		}
		closeOnCleanup(t, fd)
		return fd
	}
	tests := []struct {
		name  string
		open  func(t *testing.T) int
		salen int
		want  netip.AddrPort // if valid; else the bound address
	}{
		{"tcp4 listener", func(t *testing.T) int {
			fd, _ := listenLoopback(t, unix.AF_INET)
			return fd
		}, unix.SizeofSockaddrInet4, netip.AddrPort{}},
		{"tcp6 listener", func(t *testing.T) int {
			fd, _ := listenLoopback(t, unix.AF_INET6)
			return fd
		}, unix.SizeofSockaddrInet6, netip.AddrPort{}},
		{"udp4 bound", func(t *testing.T) int {
			fd := socket(t, unix.AF_INET, unix.SOCK_DGRAM)
			if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
				t.Fatal(err)
			}
			return fd
		}, unix.SizeofSockaddrInet4, netip.AddrPort{}},
		{"tcp4 connected", func(t *testing.T) int {
			c, _ := tcpPair(t)
			return c
		}, unix.SizeofSockaddrInet4, netip.AddrPort{}},
		{"tcp4 unbound", func(t *testing.T) int {
			return socket(t, unix.AF_INET, unix.SOCK_STREAM)
		}, unix.SizeofSockaddrInet4, netip.MustParseAddrPort("0.0.0.0:0")},
		{"tcp6 unbound", func(t *testing.T) int {
			return socket(t, unix.AF_INET6, unix.SOCK_STREAM)
		}, unix.SizeofSockaddrInet6, netip.MustParseAddrPort("[::]:0")},
	}
	for _, tt := range tests {
		for _, size := range []int{tt.salen, 128} {
			t.Run(tt.name+"/"+strconv.Itoa(size), func(t *testing.T) {
				fd := tt.open(t)
				want := tt.want
				if !want.IsValid() {
					want = sockname(t, fd)
					if !want.Addr().IsLoopback() || want.Port() == 0 {
						t.Fatalf("x/sys/unix reads the bound address as %v", want)
					}
				}
				sa := fill(make([]byte, size))
				n, err := Getsockname(fd, sa)
				if err != nil || n != tt.salen {
					t.Fatalf("Getsockname = %d, %v; want %d, nil", n, err, tt.salen)
				}
				if got := decodeSockaddr(t, sa[:n]); got != want {
					t.Errorf("Getsockname address %v; want %v", got, want)
				}
				checkUntouched(t, "Getsockname", sa[n:])
			})
		}
	}
	t.Run("short buffer", func(t *testing.T) {
		// The kernel truncates the address to the buffer; the length
		// returned is cut to the buffer too (sa[:n] must not panic), and
		// nothing past the slice may be written.
		fd, lsa := listenLoopback(t, unix.AF_INET6)
		buf := fill(make([]byte, unix.SizeofSockaddrInet6))
		n, err := Getsockname(fd, buf[:unix.SizeofSockaddrInet4])
		if err != nil || n != unix.SizeofSockaddrInet4 {
			t.Fatalf("Getsockname into %d bytes = %d, %v; want %d, nil", unix.SizeofSockaddrInet4, n, err, unix.SizeofSockaddrInet4)
		}
		checkUntouched(t, "Getsockname into a short buffer", buf[unix.SizeofSockaddrInet4:])
		if f := binary.NativeEndian.Uint16(buf); f != unix.AF_INET6 {
			t.Errorf("family %d; want %d", f, unix.AF_INET6)
		}
		if got, want := binary.BigEndian.Uint16(buf[2:]), uint16(lsa.(*unix.SockaddrInet6).Port); got != want {
			t.Errorf("port %d; want %d", got, want)
		}
	})
	t.Run("errors", func(t *testing.T) {
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		closeOnCleanup(t, p[0])
		closeOnCleanup(t, p[1])
		for _, tt := range []struct {
			name string
			fd   int
			want error
		}{
			{"bad fd", -1, unix.EBADF},
			{"pipe", p[0], unix.ENOTSOCK},
		} {
			if _, err := Getsockname(tt.fd, make([]byte, unix.SizeofSockaddrInet6)); err != tt.want {
				t.Errorf("%s: Getsockname = %v; want %v", tt.name, err, tt.want)
			}
		}
	})
}

// TestGetsockopt checks that Getsockopt writes an int option's value into
// the buffer and returns its length, 4, also when the buffer is bigger
// (whose rest is left alone); and that it returns the errno: EBADF,
// ENOTSOCK for a pipe, ENOPROTOOPT for an unknown option.
func TestGetsockopt(t *testing.T) {
	tcp, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	closeOnCleanup(t, tcp)
	if err := unix.SetsockoptInt(tcp, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
		t.Fatal(err)
	}
	udp, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	closeOnCleanup(t, udp)
	tests := []struct {
		name  string
		fd    int
		level int
		opt   int
		size  int
		want  int32
	}{
		{"SO_TYPE stream", tcp, unix.SOL_SOCKET, unix.SO_TYPE, 4, unix.SOCK_STREAM},
		{"SO_TYPE dgram", udp, unix.SOL_SOCKET, unix.SO_TYPE, 4, unix.SOCK_DGRAM},
		{"SO_TYPE big buffer", tcp, unix.SOL_SOCKET, unix.SO_TYPE, 16, unix.SOCK_STREAM},
		{"SO_DOMAIN", tcp, unix.SOL_SOCKET, unix.SO_DOMAIN, 4, unix.AF_INET},
		{"TCP_NODELAY", tcp, unix.IPPROTO_TCP, unix.TCP_NODELAY, 4, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := fill(make([]byte, tt.size))
			n, err := Getsockopt(tt.fd, tt.level, tt.opt, b)
			if err != nil || n != 4 {
				t.Fatalf("Getsockopt into %d bytes = %d, %v; want 4, nil", tt.size, n, err)
			}
			if got := int32(binary.NativeEndian.Uint32(b)); got != tt.want {
				t.Errorf("value %d; want %d", got, tt.want)
			}
			checkUntouched(t, "Getsockopt", b[n:])
		})
	}
	t.Run("errors", func(t *testing.T) {
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		closeOnCleanup(t, p[0])
		closeOnCleanup(t, p[1])
		for _, tt := range []struct {
			name string
			fd   int
			opt  int
			want error
		}{
			{"bad fd", -1, unix.SO_TYPE, unix.EBADF},
			{"pipe", p[0], unix.SO_TYPE, unix.ENOTSOCK},
			{"unknown option", tcp, 12345, unix.ENOPROTOOPT},
		} {
			if _, err := Getsockopt(tt.fd, unix.SOL_SOCKET, tt.opt, make([]byte, 4)); err != tt.want {
				t.Errorf("%s: Getsockopt = %v; want %v", tt.name, err, tt.want)
			}
		}
	})
}

// TestSetLinger0 checks that after SetLinger0 SO_LINGER reads back as
// onoff 1, linger 0 (through Getsockopt and x/sys/unix) and closing the
// connected socket resets the connection: the peer's read fails with
// ECONNRESET; without it the peer reads EOF. The client socket is closed
// by the test itself, so the cleanup closes it only if the test did not.
func TestSetLinger0(t *testing.T) {
	tests := []struct {
		name    string
		linger0 bool
		want    error // of the peer's read; nil: EOF
	}{
		{"SetLinger0", true, unix.ECONNRESET},
		{"default", false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ln, lsa := listenLoopback(t, unix.AF_INET)
			c := dial(t, unix.AF_INET, lsa, ln)
			closed := false
			t.Cleanup(func() {
				if !closed {
					unix.Close(c)
				}
			})
			s, _, err := unix.Accept4(ln, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
			if err != nil {
				t.Fatalf("accept: %v", err)
			}
			closeOnCleanup(t, s)
			wantOnoff := int32(0)
			if tt.linger0 {
				if err := SetLinger0(c); err != nil {
					t.Fatalf("SetLinger0 = %v", err)
				}
				wantOnoff = 1
			}
			b := fill(make([]byte, unix.SizeofLinger))
			n, err := Getsockopt(c, unix.SOL_SOCKET, unix.SO_LINGER, b)
			if err != nil || n != unix.SizeofLinger {
				t.Fatalf("Getsockopt SO_LINGER = %d, %v; want %d, nil", n, err, unix.SizeofLinger)
			}
			onoff, linger := int32(binary.NativeEndian.Uint32(b)), int32(binary.NativeEndian.Uint32(b[4:]))
			if onoff != wantOnoff || linger != 0 {
				t.Fatalf("SO_LINGER = {onoff %d, linger %d}; want {%d, 0}", onoff, linger, wantOnoff)
			}
			if l, err := unix.GetsockoptLinger(c, unix.SOL_SOCKET, unix.SO_LINGER); err != nil || l.Onoff != wantOnoff || l.Linger != 0 {
				t.Fatalf("unix.GetsockoptLinger = %+v, %v; want {%d, 0}", l, err, wantOnoff)
			}

			if err := Close(c); err != nil {
				t.Fatalf("Close = %v", err)
			}
			closed = true
			waitFor(t, s, unix.POLLIN)
			if n, err := Read(s, make([]byte, 8)); n != 0 || err != tt.want {
				t.Fatalf("peer Read after close = %d, %v; want 0, %v", n, err, tt.want)
			}
		})
	}
	t.Run("errors", func(t *testing.T) {
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		closeOnCleanup(t, p[0])
		closeOnCleanup(t, p[1])
		if err := SetLinger0(-1); err != unix.EBADF {
			t.Errorf("SetLinger0(-1) = %v; want EBADF", err)
		}
		if err := SetLinger0(p[0]); err != unix.ENOTSOCK {
			t.Errorf("SetLinger0(pipe) = %v; want ENOTSOCK", err)
		}
	})
}

// checkSockFlags checks that fd has O_NONBLOCK and FD_CLOEXEC exactly when
// flags (SOCK_NONBLOCK, SOCK_CLOEXEC) asked for them.
func checkSockFlags(t *testing.T, fd, flags int) {
	t.Helper()
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fl&unix.O_NONBLOCK != 0, flags&unix.SOCK_NONBLOCK != 0; got != want {
		t.Errorf("O_NONBLOCK set = %v; want %v", got, want)
	}
	fdfl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fdfl&unix.FD_CLOEXEC != 0, flags&unix.SOCK_CLOEXEC != 0; got != want {
		t.Errorf("FD_CLOEXEC set = %v; want %v", got, want)
	}
}

// TestPeekAndInQueue: on a connected TCP socket, Peek tells nothing
// waiting (EAGAIN) from bytes (copied, left in place) and from the peer's
// FIN (0); InQueue counts the bytes unread. Neither allocates.
func TestPeekAndInQueue(t *testing.T) {
	tests := []struct {
		name     string
		send     string
		fin      bool
		wantPeek string
		wantErr  error
		wantQ    int
	}{
		{"nothing", "", false, "", unix.EAGAIN, 0},
		{"bytes", "hello", false, "hel", nil, 5},
		{"bytes then FIN", "hi", true, "hi", nil, 2},
		{"FIN", "", true, "", nil, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, peer := tcpPair(t)
			if tt.send != "" {
				if _, err := unix.Write(peer, []byte(tt.send)); err != nil {
					t.Fatal(err)
				}
			}
			if tt.fin {
				unix.Shutdown(peer, unix.SHUT_WR)
			}
			if tt.send != "" || tt.fin {
				waitFor(t, a, unix.POLLIN)
			}
			var b [3]byte
			for range 2 { // a peek leaves the bytes in place
				if n, err := Peek(a, b[:]); string(b[:n]) != tt.wantPeek || err != tt.wantErr {
					t.Fatalf("Peek = %q, %v; want %q, %v", b[:n], err, tt.wantPeek, tt.wantErr)
				}
			}
			if n, err := InQueue(a); n != tt.wantQ || err != nil {
				t.Fatalf("InQueue = %d, %v; want %d, nil", n, err, tt.wantQ)
			}
			if allocs := testing.AllocsPerRun(10, func() { Peek(a, b[:]); InQueue(a) }); allocs != 0 {
				t.Errorf("%v allocations", allocs)
			}
		})
	}
	if _, err := Peek(-1, make([]byte, 1)); err != unix.EBADF {
		t.Errorf("Peek(-1) = %v; want EBADF", err)
	}
	if _, err := InQueue(-1); err != unix.EBADF {
		t.Errorf("InQueue(-1) = %v; want EBADF", err)
	}
}
