package listen

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestAcceptRaw: AcceptRaw hands over a bare non-blocking descriptor with
// TCP_NODELAY set, the client's address and the original destination
// (tproxy: the local address); in redirect mode a connection that was not
// redirected is closed and reported as ErrNotIntercepted; a closed
// listener ends AcceptRaw with net.ErrClosed.
func TestAcceptRaw(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("tproxy listeners need root (IP_TRANSPARENT); run as root")
	}
	for _, tc := range []struct {
		mode    Mode
		wantErr error
	}{
		{ModeTProxy, nil},
		{ModeRedirect, ErrNotIntercepted},
	} {
		t.Run(string(tc.mode), func(t *testing.T) {
			ln, err := Listen(Options{Mode: tc.mode, Addr: netip.MustParseAddrPort("127.0.0.1:0")})
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			cli, err := net.DialTimeout("tcp4", ln.Addr().String(), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer cli.Close()
			c, err := ln.AcceptRaw()
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
				t.Fatalf("AcceptRaw: %#v, want %v", err, tc.wantErr)
			}
			if want := cli.LocalAddr().(*net.TCPAddr).AddrPort(); c.Client != want {
				t.Errorf("client %v, want %v", c.Client, want)
			}
			if err != nil { // closed by AcceptRaw: the client sees EOF
				cli.SetReadDeadline(time.Now().Add(5 * time.Second))
				if n, err := cli.Read(make([]byte, 1)); n != 0 || err == nil {
					t.Errorf("client read %d, %v after a refused accept, want EOF", n, err)
				}
				return
			}
			defer c.Close()
			if c.TCPConn != nil || c.OrigDst != ln.Addr() || c.How != HowLocalAddr {
				t.Errorf("conn %+v, want a bare descriptor to %v learned by %q", c, ln.Addr(), HowLocalAddr)
			}
			if fl, err := unix.FcntlInt(uintptr(c.FD), unix.F_GETFL, 0); err != nil || fl&unix.O_NONBLOCK == 0 {
				t.Errorf("descriptor flags %#x, %v: want O_NONBLOCK", fl, err)
			}
			if v, err := unix.GetsockoptInt(c.FD, unix.IPPROTO_TCP, unix.TCP_NODELAY); err != nil || v != 1 {
				t.Errorf("TCP_NODELAY %d, %v", v, err)
			}
			if n, err := unix.Write(c.FD, []byte("hi")); n != 2 || err != nil {
				t.Fatalf("write %d, %v", n, err)
			}
			buf := make([]byte, 2)
			cli.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := cli.Read(buf); err != nil || string(buf) != "hi" {
				t.Errorf("client read %q, %v", buf, err)
			}
			c.Reset()
			if _, err := cli.Read(buf); !errors.Is(err, unix.ECONNRESET) {
				t.Errorf("client read after Reset: %v, want a reset", err)
			}
			c.FD = -1 // Reset closed it

			done := make(chan error, 1)
			go func() { _, err := ln.AcceptRaw(); done <- err }()
			time.Sleep(50 * time.Millisecond)
			ln.Close()
			select {
			case err := <-done:
				if !errors.Is(err, net.ErrClosed) {
					t.Errorf("AcceptRaw on a closed listener: %v, want net.ErrClosed", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("AcceptRaw still waiting after Close")
			}
		})
	}
}

// TestSetDeferAccept: with TCP_DEFER_ACCEPT on, a client that connected
// but sent nothing is not accepted yet, and is once its first bytes come,
// which the first read then finds; off, a connection is accepted at once.
// The option reads back as set.
func TestSetDeferAccept(t *testing.T) {
	for _, on := range []bool{true, false} {
		t.Run(fmt.Sprintf("on=%v", on), func(t *testing.T) {
			ln, err := Listen(Options{Mode: ModeRedirect, Addr: netip.MustParseAddrPort("127.0.0.1:0")})
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			if err := ln.SetDeferAccept(on); err != nil {
				t.Fatal(err)
			}
			rc, err := ln.ln.SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			var v int
			rc.Control(func(fd uintptr) { v, err = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT) })
			if err != nil || (v > 0) != on {
				t.Fatalf("TCP_DEFER_ACCEPT reads %d (%v), want set=%v", v, err, on)
			}

			cli, err := net.DialTimeout("tcp4", ln.Addr().String(), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer cli.Close()
			// Well inside the kernel's one-second deferral.
			ln.ln.SetDeadline(time.Now().Add(200 * time.Millisecond))
			c, err := ln.ln.AcceptTCP()
			if accepted := err == nil; accepted == on {
				t.Fatalf("silent client accepted: %v (err %v), want %v", accepted, err, !on)
			}
			if !on {
				c.Close()
				return
			}
			cli.Write([]byte("GET"))
			ln.ln.SetDeadline(time.Now().Add(5 * time.Second))
			if c, err = ln.ln.AcceptTCP(); err != nil {
				t.Fatalf("client that sent its first bytes: %v", err)
			}
			defer c.Close()
			// The bytes are queued already: a read that must not wait finds them.
			crc, err := c.SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			var b [8]byte
			n := 0
			crc.Control(func(fd uintptr) { n, _, err = unix.Recvfrom(int(fd), b[:], unix.MSG_DONTWAIT) })
			if n < 0 || string(b[:max(n, 0)]) != "GET" {
				t.Errorf("first read %q, %v; want the queued bytes", b[:max(n, 0)], err)
			}
		})
	}
}
