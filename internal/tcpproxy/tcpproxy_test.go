package tcpproxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/detour-proxy/detour/internal/fdtest"
)

// harness runs a server on loopback and a proxy in front of it, and returns
// the client side of the proxied connection plus the server side.
func harness(t testing.TB, o Options) (client, server *net.TCPConn, done <-chan Result) {
	t.Helper()
	upLn, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer upLn.Close()
	prLn, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer prLn.Close()

	res := make(chan Result, 1)
	go func() {
		down, err := prLn.AcceptTCP()
		if err != nil {
			return
		}
		up, err := net.DialTCP("tcp4", nil, upLn.Addr().(*net.TCPAddr))
		if err != nil {
			down.Close()
			return
		}
		res <- Proxy(context.Background(), down, up, o)
	}()
	client, err = net.DialTCP("tcp4", nil, prLn.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	server, err = upLn.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server, res
}

func waitResult(t *testing.T, done <-chan Result) Result {
	t.Helper()
	return receive(t, done, "the proxy's result")
}

// receive waits for a value on ch, failing the test after 10 s.
func receive[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("no %s", what)
	}
	var zero T
	return zero
}

func TestLargeTransferBothWaysKeepsChecksum(t *testing.T) {
	client, server, done := harness(t, Options{})
	const size = 64 << 20
	payload := func(seed uint64) io.Reader {
		return io.LimitReader(rand.NewChaCha8([32]byte{byte(seed)}), size)
	}
	sum := func(r io.Reader) [32]byte {
		h := sha256.New()
		io.Copy(h, r)
		return [32]byte(h.Sum(nil))
	}
	wantUp, wantDown := sum(payload(1)), sum(payload(2))

	gotUp := make(chan [32]byte)
	go func() { gotUp <- sum(server) }()
	go func() { io.Copy(server, payload(2)); server.CloseWrite() }()
	go func() { io.Copy(client, payload(1)); client.CloseWrite() }()
	if got := sum(client); got != wantDown {
		t.Fatalf("download sha256 mismatch")
	}
	if got := <-gotUp; got != wantUp {
		t.Fatalf("upload sha256 mismatch")
	}
	r := waitResult(t, done)
	if r.Sent != size || r.Received != size || r.End != EndClosed {
		t.Fatalf("result = %+v, want %d bytes each way, closed", r, size)
	}
}

func TestClientHalfCloseStillGetsReply(t *testing.T) {
	client, server, done := harness(t, Options{})
	client.Write([]byte("request"))
	client.CloseWrite()
	got, err := io.ReadAll(server) // ends only if the FIN was passed on
	if err != nil || string(got) != "request" {
		t.Fatalf("server read %q, %v", got, err)
	}
	reply := bytes.Repeat([]byte("r"), 1<<20)
	server.Write(reply)
	server.CloseWrite()
	back, err := io.ReadAll(client)
	if err != nil || !bytes.Equal(back, reply) {
		t.Fatalf("client got %d bytes, %v; want %d", len(back), err, len(reply))
	}
	if r := waitResult(t, done); r.End != EndClosed {
		t.Fatalf("end = %s", r.End)
	}
}

func TestServerHalfCloseClientKeepsSending(t *testing.T) {
	client, server, done := harness(t, Options{})
	server.Write([]byte("banner"))
	server.CloseWrite()
	got, err := io.ReadAll(client)
	if err != nil || string(got) != "banner" {
		t.Fatalf("client read %q, %v", got, err)
	}
	client.Write([]byte("still talking"))
	client.CloseWrite()
	up, _ := io.ReadAll(server)
	if string(up) != "still talking" {
		t.Fatalf("server read %q after its own half-close", up)
	}
	waitResult(t, done)
}

func TestUpstreamResetResetsClient(t *testing.T) {
	client, server, done := harness(t, Options{})
	client.Write([]byte("x"))
	io.ReadFull(server, make([]byte, 1))
	server.SetLinger(0)
	server.Close() // RST
	r := waitResult(t, done)
	if r.End != EndUpstreamErr {
		t.Fatalf("end = %s, want %s", r.End, EndUpstreamErr)
	}
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := client.Read(make([]byte, 1))
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client read err = %v, want connection reset", err)
	}
}

// TestIdleTimeoutClose: an idle pair with nothing queued is closed with a
// FIN both ways (a clean EOF), as HAProxy and Envoy close one; a pair whose
// transfer stalled behind a client that stopped reading is reset, so the
// server's blocked write fails at once.
func TestIdleTimeoutClose(t *testing.T) {
	t.Run("quiet", func(t *testing.T) {
		client, server, done := harness(t, Options{IdleTimeout: 200 * time.Millisecond})
		if r := waitResult(t, done); r.End != EndIdle {
			t.Fatalf("end = %s, want idle timeout", r.End)
		}
		for name, c := range map[string]*net.TCPConn{"client": client, "server": server} {
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Read(make([]byte, 1)); err != io.EOF {
				t.Errorf("%s read: %v, want a clean EOF (FIN)", name, err)
			}
		}
	})
	// The half-close and the stall must be in place before the timeout
	// fires: 2 s leaves a loaded machine time to run the test's goroutines.
	t.Run("half-closed", func(t *testing.T) {
		client, server, done := harness(t, Options{IdleTimeout: 2 * time.Second})
		client.CloseWrite()
		server.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := server.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("server read: %v, want the client's FIN", err)
		}
		if r := waitResult(t, done); r.End != EndIdle {
			t.Fatalf("end = %s, want idle timeout", r.End)
		}
		// The server had its FIN already: only a reset tells it the
		// pair ended (a close would leave it in CLOSE_WAIT).
		if !fdtest.ResetWithin(server, 3*time.Second) {
			t.Error("server socket not in TCP state CLOSE (reset) within 3s")
		}
	})
	t.Run("stalled", func(t *testing.T) {
		client, server, done := harness(t, Options{IdleTimeout: 2 * time.Second})
		if _, err := server.Write(make([]byte, 64<<10)); err != nil { // moving before the timeout fires
			t.Fatal(err)
		}
		wrote := make(chan error, 1)
		go func() {
			_, err := server.Write(make([]byte, 64<<20)) // the client never reads
			wrote <- err
		}()
		if r := waitResult(t, done); r.End != EndIdle {
			t.Fatalf("end = %s, want idle timeout", r.End)
		}
		err := receive(t, wrote, "the server's blocked write")
		if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
			t.Errorf("server write: %v, want a reset", err)
		}
		// The client gets what reached its socket, then the reset (a FIN
		// would deliver what detour still held and end cleanly).
		client.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.Copy(io.Discard, client); !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("client read: %v, want a reset", err)
		}
	})
}

// TestIdleTimeoutOnTime: a pair whose last byte moved at T closes at T +
// the idle timeout, not before and not much after: the sampling's grain
// is a sixteenth of it, at most 1.125 × late. With a quarter, a byte just
// after the fourth sample (as here) closed it 1.24 × late; the bound,
// 1.2 ×, catches that and leaves a loaded machine's late timer 450 ms.
func TestIdleTimeoutOnTime(t *testing.T) {
	const idle = 6 * time.Second
	client, server, done := harness(t, Options{IdleTimeout: idle})
	time.Sleep(idle/4 + 50*time.Millisecond) // just after a sample, either way
	client.Write([]byte{'x'})
	b := make([]byte, 1)
	if _, err := io.ReadFull(server, b); err != nil {
		t.Fatal(err)
	}
	last := time.Now() // before the last byte moves through the pair
	server.Write(b)
	if _, err := io.ReadFull(client, b); err != nil {
		t.Fatal(err)
	}
	r := waitResult(t, done)
	if took := time.Since(last); r.End != EndIdle || took < idle || took > idle*6/5 {
		t.Fatalf("end %q %v after the last byte; want idle timeout after %v to %v", r.End, took, idle, idle*6/5)
	}
}

func TestIdleTimeoutSparesSlowButActiveTransfer(t *testing.T) {
	client, server, done := harness(t, Options{IdleTimeout: 300 * time.Millisecond})
	// One byte every 100ms for a full second: never idle for 300ms.
	for i := 0; i < 10; i++ {
		server.Write([]byte{'a'})
		time.Sleep(100 * time.Millisecond)
	}
	server.CloseWrite()
	got, _ := io.ReadAll(client)
	if len(got) != 10 {
		t.Fatalf("client got %d bytes, want 10 (cut by idle timeout?)", len(got))
	}
	client.CloseWrite()
	if r := waitResult(t, done); r.End != EndClosed {
		t.Fatalf("end = %s, want closed", r.End)
	}
}

func TestCancelAbortsBothSides(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	upLn, _ := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	defer upLn.Close()
	a, b := tcpPair(t)
	up, err := net.DialTCP("tcp4", nil, upLn.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	res := make(chan Result, 1)
	go func() { res <- Proxy(ctx, b, up, Options{}) }()
	cancel()
	if r := waitResult(t, res); r.End != EndCanceled {
		t.Fatalf("end = %s", r.End)
	}
	a.Close()
}

func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err := net.DialTCP("tcp4", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	b, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	return a, b
}

// BenchmarkSplice measures bulk L4 throughput, 16 MiB per op over a new
// connection; allocations per op stay constant whatever the size, i.e.
// zero per byte.
func BenchmarkSplice(b *testing.B) {
	ps := NewPipes() // as the proxy shares one among its connections
	defer ps.Close()
	buf := make([]byte, 1<<20)
	b.SetBytes(int64(len(buf)) * 16)
	b.ReportAllocs()
	for b.Loop() {
		c, s, _ := harness(b, Options{Pipes: ps})
		go func() {
			for range 16 {
				c.Write(buf)
			}
			c.CloseWrite()
		}()
		io.Copy(io.Discard, s)
		s.Close()
		c.Close()
	}
}

// BenchmarkPingPong is the keep-alive shape: 1 KiB request, 1 KiB reply,
// one round trip per op through the proxy on loopback.
func BenchmarkPingPong(b *testing.B) {
	c, s, _ := harness(b, Options{})
	go func() {
		buf := make([]byte, 1024)
		for {
			if _, err := io.ReadFull(s, buf); err != nil {
				return
			}
			s.Write(buf)
		}
	}()
	msg, reply := make([]byte, 1024), make([]byte, 1024)
	b.ReportAllocs()
	for b.Loop() {
		c.Write(msg)
		if _, err := io.ReadFull(c, reply); err != nil {
			b.Fatal(err)
		}
	}
}

// TestCancelBeforeStartAndAfterDone: Cancel before Start ends the pair as
// canceled at once; Cancel after the result was delivered changes nothing.
func TestCancelBeforeStartAndAfterDone(t *testing.T) {
	a, b := tcpPair(t)
	defer a.Close()
	c, d := tcpPair(t)
	defer c.Close()
	p := New(b, d, Options{})
	p.Cancel()
	res := make(chan Result, 1)
	p.Start(func(r Result) { res <- r })
	if r := waitResult(t, res); r.End != EndCanceled {
		t.Fatalf("canceled before start: end = %s", r.End)
	}

	e, f := tcpPair(t)
	defer e.Close()
	g, h := tcpPair(t)
	defer g.Close()
	p = New(f, h, Options{})
	calls := make(chan Result, 2)
	p.Start(func(r Result) { calls <- r })
	e.CloseWrite()
	g.CloseWrite()
	if r := waitResult(t, calls); r.End != EndClosed {
		t.Fatalf("end = %s, want closed", r.End)
	}
	p.Cancel()
	select {
	case r := <-calls:
		t.Fatalf("done called twice (%+v)", r)
	case <-time.After(50 * time.Millisecond):
	}
}

// TestBulkHoldsNoPipeWhileIdle: after a bulk transfer, a connection that
// stays open holds no pipe: every pipe splicing used is back on the free
// list (or closed), so an idle connection costs its two sockets only.
func TestBulkHoldsNoPipeWhileIdle(t *testing.T) {
	ps := NewPipes()
	defer ps.Close()
	held := func() int {
		ents, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Skip(err)
		}
		n := 0
		for _, e := range ents {
			if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.HasPrefix(l, "pipe:") {
				n++
			}
		}
		return n - 2*ps.idle()
	}
	before := held()
	client, server, _ := harness(t, Options{Pipes: ps})
	const size = 8 << 20
	go func() {
		client.Write(make([]byte, size))
	}()
	if n, err := io.CopyN(io.Discard, server, size); err != nil || n != size {
		t.Fatalf("received %d bytes: %v", n, err)
	}
	// Both connections stay open and idle now.
	deadline := time.Now().Add(5 * time.Second)
	for held() != before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := held(); got != before {
		t.Errorf("%d pipe descriptors held by an idle connection after a bulk transfer", got-before)
	}
}
