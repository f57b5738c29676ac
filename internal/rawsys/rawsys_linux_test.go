package rawsys

import (
	"bytes"
	"net"
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
			fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := fl&unix.O_NONBLOCK != 0, tt.flags&unix.SOCK_NONBLOCK != 0; got != want {
				t.Errorf("O_NONBLOCK set = %v; want %v", got, want)
			}
			fdfl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := fdfl&unix.FD_CLOEXEC != 0, tt.flags&unix.SOCK_CLOEXEC != 0; got != want {
				t.Errorf("FD_CLOEXEC set = %v; want %v", got, want)
			}
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
