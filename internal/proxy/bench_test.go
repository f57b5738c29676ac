package proxy

import (
	"context"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/detour-proxy/detour/internal/listen"
	"github.com/detour-proxy/detour/internal/upstream"
)

// BenchmarkL4Connection is one new connection through the server's L4
// path, in process on loopback and without root: the client connects, the
// path dials the destination, which writes one byte and closes, the client
// reads it and closes. user-µs/op and sys-µs/op are the process's CPU time per connection
// (client and destination included, so compare it between builds, not
// with the harness); allocs/op likewise include the test's own.
func BenchmarkL4Connection(b *testing.B) {
	lc := net.ListenConfig{KeepAlive: -1}
	dstLn, err := lc.Listen(context.Background(), "tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer dstLn.Close()
	go func() {
		for {
			c, err := dstLn.Accept()
			if err != nil {
				return
			}
			c.Write([]byte{'!'})
			c.Close()
		}
	}()
	frontLn, err := lc.Listen(context.Background(), "tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer frontLn.Close()
	s := New(Options{Dialer: upstream.New(upstream.Options{}), Protocol: ProtocolTCP})
	dst := dstLn.Addr().(*net.TCPAddr).AddrPort()
	go func() {
		for {
			c, err := frontLn.Accept()
			if err != nil {
				return
			}
			// Protocol tcp serves bare descriptors (listen's AcceptRaw, which
			// needs a tproxy or redirect listener): one taken out of Go here.
			client := c.RemoteAddr().(*net.TCPAddr).AddrPort()
			fd, err := bareFD(c.(*net.TCPConn))
			if err != nil {
				b.Error(err)
				return
			}
			s.open.Add(1)
			s.conns.Add(1)
			go s.handle(s.cur.Load(), &listen.Conn{FD: fd, Client: client, OrigDst: dst})
		}
	}()
	front := frontLn.Addr().(*net.TCPAddr)
	one := make([]byte, 1)
	cpu := func() (user, sys time.Duration) {
		var ru syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano()), time.Duration(ru.Stime.Nano())
	}
	b.ReportAllocs()
	user0, sys0 := cpu()
	for b.Loop() {
		c, err := net.DialTCP("tcp4", nil, front)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, one); err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
	user1, sys1 := cpu()
	b.ReportMetric(float64(user1-user0)/float64(time.Microsecond)/float64(b.N), "user-µs/op")
	b.ReportMetric(float64(sys1-sys0)/float64(time.Microsecond)/float64(b.N), "sys-µs/op")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s.Shutdown(ctx)
}

// bareFD takes c's socket out of Go: a non-blocking duplicate the caller
// owns, c closed.
func bareFD(c *net.TCPConn) (int, error) {
	defer c.Close()
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd, derr := -1, error(nil)
	if err := rc.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, derr
	}
	return fd, unix.SetNonblock(fd, true)
}
