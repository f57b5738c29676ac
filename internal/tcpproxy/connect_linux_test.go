package tcpproxy

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/detour-proxy/detour/internal/fdtest"
	"github.com/detour-proxy/detour/internal/upstream"
)

// connecting starts a NewConnecting pair from a fresh loopback client
// connection to dst. before runs on the client before Start, so its bytes
// wait in the proxy's socket while the connect is in progress.
func connecting(t *testing.T, dst netip.AddrPort, o Options, before func(*net.TCPConn)) (client *net.TCPConn, p *Pair, done <-chan Result) {
	t.Helper()
	client, down := tcpPair(t)
	t.Cleanup(func() { client.Close() })
	if before != nil {
		before(client)
	}
	fd, err := upstream.New(upstream.Options{}).Start(netip.AddrPort{}, dst)
	if err != nil {
		t.Fatal(err)
	}
	res := make(chan Result, 1)
	p = NewConnecting(rawFD(t, down), fd, o)
	p.Start(func(r Result) { res <- r })
	return client, p, res
}

// rawFD takes c's socket out of Go: a non-blocking duplicate descriptor
// the caller owns, c closed.
func rawFD(t *testing.T, c *net.TCPConn) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	fd, derr := -1, error(nil)
	rc.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) })
	if derr != nil {
		t.Fatal(derr)
	}
	c.Close()
	if err := unix.SetNonblock(fd, true); err != nil {
		t.Fatal(err)
	}
	return fd
}

// TestConnectingPairClosesDescriptors: a NewConnecting pair connects,
// copies both ways, and closes both descriptors it owns when it ends.
func TestConnectingPairClosesDescriptors(t *testing.T) {
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dst := netip.MustParseAddrPort(ln.Addr().String())
	client, down := tcpPair(t)
	defer client.Close()
	cfd := rawFD(t, down)
	ufd, err := upstream.New(upstream.Options{}).Start(netip.AddrPort{}, dst)
	if err != nil {
		t.Fatal(err)
	}
	res := make(chan Result, 1)
	NewConnecting(cfd, ufd, Options{ConnectTimeout: 5 * time.Second}).Start(func(r Result) { res <- r })
	server := acceptOn(t, ln)
	client.Write([]byte("ping"))
	client.CloseWrite()
	server.SetDeadline(time.Now().Add(10 * time.Second))
	if b, err := io.ReadAll(server); err != nil || string(b) != "ping" {
		t.Fatalf("server read %q, %v", b, err)
	}
	server.Write([]byte("pong"))
	server.CloseWrite()
	client.SetDeadline(time.Now().Add(10 * time.Second))
	if b, err := io.ReadAll(client); err != nil || string(b) != "pong" {
		t.Fatalf("client read %q, %v", b, err)
	}
	if r := waitResult(t, res); r.End != EndClosed || r.Sent != 4 || r.Received != 4 {
		t.Fatalf("result %+v", r)
	}
	for _, fd := range []int{cfd, ufd} {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != unix.EBADF {
			t.Errorf("descriptor %d still open after the pair ended (%v)", fd, err)
		}
	}
}

// fullListener is a loopback listener whose accept queue is full: the
// kernel drops every new SYN, so a connect to it hangs (the SYN is resent
// after 1 s, 3 s, ...) until accept takes the queued connection; accept
// then returns the next one, waiting up to 10 s.
func fullListener(t *testing.T) (dst netip.AddrPort, accept func() *net.TCPConn) {
	t.Helper()
	fd, dst := fdtest.FullListener(t, 10*time.Second)
	accept = func() *net.TCPConn {
		t.Helper()
		// A socket with SO_RCVTIMEO is not restarted after a signal, and
		// Go's preemption sends SIGURG: retry on EINTR.
		nfd, _, err := unix.Accept(fd)
		for err == unix.EINTR {
			nfd, _, err = unix.Accept(fd)
		}
		if err != nil {
			t.Fatalf("accept: %v", err)
		}
		f := os.NewFile(uintptr(nfd), "accepted")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c.(*net.TCPConn)
	}
	return dst, accept
}

// acceptOn accepts one connection on ln, waiting up to 10 s.
func acceptOn(t *testing.T, ln *net.TCPListener) *net.TCPConn {
	t.Helper()
	ln.SetDeadline(time.Now().Add(10 * time.Second))
	c, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestConnectingPairCopies: a pair whose upstream connect completes on the
// loop copies both ways like any other, and runs OnConnected once, on the
// upstream socket, before the first byte goes up.
func TestConnectingPairCopies(t *testing.T) {
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dst := netip.MustParseAddrPort(ln.Addr().String())
	type conn struct {
		peer string
		d    time.Duration
	}
	conns := make(chan conn, 2)
	o := Options{ConnectTimeout: 5 * time.Second, OnConnected: func(fd int, d time.Duration) { conns <- conn{peerOf(fd), d} }}
	client, _, done := connecting(t, dst, o, func(c *net.TCPConn) {
		c.Write([]byte("ping")) // there before the connect is started
	})
	server := acceptOn(t, ln)
	buf := make([]byte, 4)
	if _, err := io.ReadFull(server, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("server read %q, %v", buf, err)
	}
	select {
	case c := <-conns:
		if c.peer != dst.String() || c.d <= 0 || c.d > 5*time.Second {
			t.Errorf("OnConnected got peer %s after %v, want %s", c.peer, c.d, dst)
		}
	default:
		t.Fatal("the first byte went up before OnConnected ran")
	}
	server.Write([]byte("pong"))
	server.CloseWrite()
	if b, err := io.ReadAll(client); err != nil || string(b) != "pong" {
		t.Fatalf("client read %q, %v", b, err)
	}
	client.CloseWrite()
	r := waitResult(t, done)
	if r.End != EndClosed || r.Sent != 4 || r.Received != 4 {
		t.Fatalf("result %+v, want closed, 4 bytes each way", r)
	}
	if len(conns) != 0 {
		t.Error("OnConnected ran twice")
	}
}

// TestConnectingPairHoldsClientBytes: while the connect waits (the
// server's queue drops SYNs), the client's bytes and FIN wait too; once
// the connect completes they go up, the FIN as a half-close, and the
// reply comes back.
func TestConnectingPairHoldsClientBytes(t *testing.T) {
	dst, accept := fullListener(t)
	connected := make(chan struct{})
	o := Options{ConnectTimeout: 20 * time.Second, OnConnected: func(int, time.Duration) { close(connected) }}
	client, _, done := connecting(t, dst, o, func(c *net.TCPConn) {
		c.Write([]byte("request"))
		c.CloseWrite()
	})
	select {
	case <-connected:
		t.Fatal("connected to a listener whose queue is full")
	case r := <-done:
		t.Fatalf("pair ended while connecting: %+v", r)
	case <-time.After(300 * time.Millisecond):
	}
	accept()           // the filler: the resent SYN now gets through
	server := accept() // the pair's upstream connection
	server.SetDeadline(time.Now().Add(10 * time.Second))
	if b, err := io.ReadAll(server); err != nil || string(b) != "request" {
		t.Fatalf("server read %q, %v; want the bytes sent before the connect, then EOF", b, err)
	}
	server.Write([]byte("reply"))
	server.CloseWrite()
	client.SetDeadline(time.Now().Add(10 * time.Second))
	if b, err := io.ReadAll(client); err != nil || string(b) != "reply" {
		t.Fatalf("client read %q, %v", b, err)
	}
	if r := waitResult(t, done); r.End != EndClosed || r.Sent != int64(len("request")) {
		t.Fatalf("result %+v", r)
	}
}

// TestConnectingPairFailures: a connect that is refused, times out, or is
// overtaken by the client's reset or a Cancel ends the pair with the
// right End and error, and the client sees a reset, promptly. An idle
// timeout shorter than the connect timeout does not cut the connect: it
// counts from the connect's completion (it ended such connects as idle).
func TestConnectingPairFailures(t *testing.T) {
	hanging := func(t *testing.T) netip.AddrPort { dst, _ := fullListener(t); return dst }
	for _, tc := range []struct {
		name    string
		dst     func(*testing.T) netip.AddrPort
		timeout time.Duration
		idle    time.Duration
		act     func(client *net.TCPConn, p *Pair)
		end     End
		err     error // what Result.Err wraps; nil: not checked
		reset   bool  // the client reads a reset
	}{
		{"refused", func(t *testing.T) netip.AddrPort { return fdtest.RefusedAddr(t) }, 5 * time.Second, 0, nil, EndConnectFailed, syscall.ECONNREFUSED, true},
		{"timeout", hanging, 300 * time.Millisecond, 0, nil, EndConnectFailed, os.ErrDeadlineExceeded, true},
		{"timeout beyond the idle timeout", hanging, 1500 * time.Millisecond, 200 * time.Millisecond, nil, EndConnectFailed, os.ErrDeadlineExceeded, true},
		{"client reset", hanging, 20 * time.Second, 0, func(c *net.TCPConn, _ *Pair) { c.SetLinger(0); c.Close() }, EndDownstreamErr, nil, false},
		{"cancel", hanging, 20 * time.Second, 0, func(_ *net.TCPConn, p *Pair) { p.Cancel() }, EndCanceled, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client, p, done := connecting(t, tc.dst(t), Options{ConnectTimeout: tc.timeout, IdleTimeout: tc.idle}, nil)
			start := time.Now()
			if tc.act != nil {
				time.Sleep(100 * time.Millisecond) // the connect is under way
				tc.act(client, p)
			}
			r := waitResult(t, done)
			if r.End != tc.end || (tc.err != nil && !errors.Is(r.Err, tc.err)) {
				t.Fatalf("result %+v (err %v), want end %q wrapping %v", r, r.Err, tc.end, tc.err)
			}
			if took := time.Since(start); took > 5*time.Second {
				t.Errorf("ended after %v", took)
			}
			if tc.reset {
				client.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := client.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
					t.Errorf("client read: %v, want a reset", err)
				}
			}
		})
	}
}

// TestConnectingPairUpstreamResetAfterConnect: a server that accepts,
// writes and resets before the loop has seen its connect complete (a busy
// loop, a server that turns clients away at once) was connected: the
// client gets what it wrote, then the reset, and the pair ends as an
// upstream reset. SO_ERROR, read to learn how the connect ended, says
// ECONNRESET then, not ECONNREFUSED; before, the pair took it for a failed
// connect (EndConnectFailed, recorded as UF) and the server's bytes were
// lost.
func TestConnectingPairUpstreamResetAfterConnect(t *testing.T) {
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dst := netip.MustParseAddrPort(ln.Addr().String())
	client, down := tcpPair(t)
	defer client.Close()
	ufd, err := upstream.New(upstream.Options{}).Start(netip.AddrPort{}, dst)
	if err != nil {
		t.Fatal(err)
	}
	server := acceptOn(t, ln)
	const bye = "421 busy\r\n"
	server.Write([]byte(bye))
	server.SetLinger(0)
	server.Close()
	// The pair starts once the upstream socket holds the bytes and the
	// reset: the loop sees the connect, the bytes and the error at once.
	for deadline := time.Now().Add(5 * time.Second); !isReset(ufd); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the server's reset did not arrive within 5s")
		}
	}
	res := make(chan Result, 1)
	connected := false
	o := Options{ConnectTimeout: 5 * time.Second, OnConnected: func(int, time.Duration) { connected = true }}
	NewConnecting(rawFD(t, down), ufd, o).Start(func(r Result) { res <- r })
	r := waitResult(t, res)
	if r.End != EndUpstreamErr || !connected || r.Received != int64(len(bye)) {
		t.Errorf("result %+v (connected %v), want an upstream reset after %d bytes received", r, connected, len(bye))
	}
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(client)
	if string(b) != bye || !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client read %q, %v; want %q, then a reset", b, err, bye)
	}
}
