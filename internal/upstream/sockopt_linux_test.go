package upstream

import (
	"context"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// keepAliveOpts reads the socket's keep-alive settings.
func keepAliveOpts(t *testing.T, c syscall.Conn) [4]int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var got [4]int
	rc.Control(func(fd uintptr) {
		for i, o := range [4][2]int{
			{unix.SOL_SOCKET, unix.SO_KEEPALIVE},
			{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE},
			{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL},
			{unix.IPPROTO_TCP, unix.TCP_KEEPCNT},
		} {
			v, err := unix.GetsockoptInt(int(fd), o[0], o[1])
			if err != nil {
				t.Fatal(err)
			}
			got[i] = v
		}
	})
	return got
}

// TestKeepAlive: Dial's sockets carry KeepAlive at once; Connect's carry
// none until EnableKeepAlive gives them the same settings.
func TestKeepAlive(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	dst := netip.MustParseAddrPort(ln.Addr().String())
	want := [4]int{1, int(KeepAlive.Idle / time.Second), int(KeepAlive.Interval / time.Second), KeepAlive.Count}
	d := New(Options{})

	c, err := d.Dial(context.Background(), netip.AddrPort{}, dst)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := keepAliveOpts(t, c); got != want {
		t.Errorf("Dial: keep-alive (on, idle, interval, count) = %v, want %v", got, want)
	}

	f, reset, err := d.Connect(context.Background(), netip.AddrPort{}, dst)
	if err != nil || reset != nil {
		t.Fatal(err, reset)
	}
	defer f.Close()
	if got := keepAliveOpts(t, f); got[0] != 0 {
		t.Errorf("Connect: SO_KEEPALIVE = %d, want 0", got[0])
	}
	nc, err := net.FileConn(f)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if err := EnableKeepAlive(nc.(*net.TCPConn)); err != nil {
		t.Fatal(err)
	}
	if got := keepAliveOpts(t, f); got != want {
		t.Errorf("after EnableKeepAlive: keep-alive = %v, want %v", got, want)
	}
}
