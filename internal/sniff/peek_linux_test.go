package sniff

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/detour-proxy/detour/internal/fdtest"
)

// pair returns a connected loopback pair: the accepted side (what detour
// holds) and the dialing side (the client).
func pair(t testing.TB) (accepted, client *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	accepted, err = ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { accepted.Close(); client.Close() })
	return accepted, client
}

func TestPeekLeavesBytesInSocket(t *testing.T) {
	a, c := pair(t)
	const msg = "hello, world"
	c.Write([]byte(msg))
	buf := make([]byte, 64)
	n, err := Peek(context.Background(), a, buf)
	if err != nil || string(buf[:n]) != msg {
		t.Fatalf("Peek = %q, %v", buf[:n], err)
	}
	got := make([]byte, len(msg))
	a.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(a, got); err != nil || string(got) != msg {
		t.Fatalf("read after peek = %q, %v", got, err)
	}
}

func TestPeekCancelClearsDeadline(t *testing.T) {
	a, c := pair(t)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	if _, err := Peek(ctx, a, make([]byte, 8)); !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want context.Canceled", err)
	}
	// The conn must be usable afterwards: no deadline left behind.
	c.Write([]byte("x"))
	b := make([]byte, 1)
	if _, err := a.Read(b); err != nil || b[0] != 'x' {
		t.Fatalf("read after canceled peek: %q %v", b, err)
	}
}

func TestSniffSplitRequestBecomesHTTP1(t *testing.T) {
	a, c := pair(t)
	const req = "GET / HTTP/1.1\r\nHost: x\r\n\r\n"
	c.Write([]byte(req[:2]))
	time.AfterFunc(60*time.Millisecond, func() { c.Write([]byte(req[2:])) })
	r, err := Sniff(context.Background(), a, 5*time.Second)
	if err != nil || r.Protocol != HTTP1 {
		t.Fatalf("Sniff = %+v, %v", r, err)
	}
	got := make([]byte, len(req))
	a.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(a, got); err != nil || string(got) != req {
		t.Fatalf("read after sniff = %q, %v", got, err)
	}
}

func TestSniffSilentClientReturnsAtMaxWait(t *testing.T) {
	a, _ := pair(t)
	start := time.Now()
	r, err := Sniff(context.Background(), a, 100*time.Millisecond)
	if err != nil || r.Protocol != Unknown || r.N != 0 {
		t.Fatalf("Sniff = %+v, %v", r, err)
	}
	if d := time.Since(start); d < 100*time.Millisecond {
		t.Fatalf("returned after %v, before maxWait", d)
	}
}

func TestSniffPartialPrefixReturnsGuessAtMaxWait(t *testing.T) {
	a, c := pair(t)
	c.Write([]byte("GET /long/path"))
	r, err := Sniff(context.Background(), a, 80*time.Millisecond)
	if err != nil || r.Protocol != HTTP1 || r.N != 14 {
		t.Fatalf("Sniff = %+v, %v", r, err)
	}
}

func TestSniffCallerCancel(t *testing.T) {
	a, _ := pair(t)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(30*time.Millisecond, cancel)
	if _, err := Sniff(ctx, a, 10*time.Second); !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want context.Canceled", err)
	}
}

func TestSniffEOF(t *testing.T) {
	a, c := pair(t)
	c.Close()
	if _, err := Sniff(context.Background(), a, 5*time.Second); err != io.EOF {
		t.Fatalf("err %v, want io.EOF", err)
	}
}

func TestSniffPartialThenHalfClose(t *testing.T) {
	a, c := pair(t)
	c.Write([]byte("GE"))
	c.CloseWrite()
	start := time.Now()
	r, err := Sniff(context.Background(), a, 5*time.Second)
	if err != nil || r.Protocol != Unknown || r.N != 2 {
		t.Fatalf("Sniff = %+v, %v", r, err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("waited %v although the client had closed", d)
	}
}

// TestSniffPartialThenReset: a client that resets after a partial prefix
// sends nothing more either; a peek still returns the queued bytes (the
// error comes after them), so Sniff must look at the socket's state, or it
// waits maxWait (sniff_timeout, 15 s) with the pre-dialed upstream
// connection held open.
func TestSniffPartialThenReset(t *testing.T) {
	a, c := pair(t)
	c.Write([]byte("GE"))
	time.Sleep(10 * time.Millisecond) // queued before the reset
	c.SetLinger(0)
	c.Close()
	start := time.Now()
	r, err := Sniff(context.Background(), a, 5*time.Second)
	if err != nil || r.Protocol != Unknown || r.N != 2 {
		t.Fatalf("Sniff = %+v, %v", r, err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("waited %v although the client had reset", d)
	}
	// The bytes, then the reset, are still there for the copy that follows.
	b, err := io.ReadAll(a)
	if string(b) != "GE" || !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read %q, %v after Sniff; want GE, then the reset", b, err)
	}
}

func TestSniffTLS(t *testing.T) {
	a, c := pair(t)
	go tls.Client(c, &tls.Config{ServerName: "tls.example", NextProtos: []string{"h2"}, InsecureSkipVerify: true}).Handshake()
	r, err := Sniff(context.Background(), a, 5*time.Second)
	if err != nil || r.Protocol != TLS || r.SNI != "tls.example" || !slices.Equal(r.ALPN, []string{"h2"}) {
		t.Fatalf("Sniff = %+v, %v", r, err)
	}
}

func TestSniffH2CPreface(t *testing.T) {
	a, c := pair(t)
	c.Write([]byte(H2Preface))
	r, err := Sniff(context.Background(), a, 5*time.Second)
	if err != nil || r.Protocol != HTTP2 || r.N != len(H2Preface) {
		t.Fatalf("Sniff = %+v, %v", r, err)
	}
}

func TestSniffLongRequestLineGrowsBuffer(t *testing.T) {
	a, c := pair(t)
	line := "GET /" + string(slices.Repeat([]byte("a"), 10000)) + " HTTP/1.1\r\n"
	go c.Write([]byte(line))
	r, err := Sniff(context.Background(), a, 5*time.Second)
	if err != nil || r.Protocol != HTTP1 {
		t.Fatalf("Sniff = %+v, %v", r, err)
	}
}

func TestWaitReadable(t *testing.T) {
	a, c := pair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := WaitReadable(ctx, c); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("silent server: err %v, want deadline exceeded", err)
	}
	a.Write([]byte("220 banner\r\n"))
	if err := WaitReadable(context.Background(), c); err != nil {
		t.Fatalf("banner: %v", err)
	}
	b := make([]byte, 3)
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "220" {
		t.Fatalf("banner consumed: %q %v", b, err)
	}
}

// Now decides on queued bytes without waiting and leaves them queued.
func TestNow(t *testing.T) {
	for _, tc := range []struct {
		name, sent string
		want       Protocol
		final      bool
	}{
		{"nothing yet", "", Unknown, false},
		{"a whole request line", "GET / HTTP/1.1\r\nHost: x\r\n\r\n", HTTP1, true},
		{"a prefix", "GE", Unknown, false},
		{"not HTTP", "SSH-2.0-x\r\n", Unknown, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, c := pair(t)
			c.Write([]byte(tc.sent))
			if tc.sent != "" { // wait until all of it is queued
				buf := make([]byte, len(tc.sent))
				for n := 0; n < len(tc.sent); time.Sleep(time.Millisecond) {
					var err error
					if n, err = Peek(context.Background(), a, buf); err != nil {
						t.Fatal(err)
					}
				}
			}
			r, final, err := Now(a)
			if err != nil {
				t.Fatal(err)
			}
			if final != tc.final || (final && r.Protocol != tc.want) || r.N != len(tc.sent) {
				t.Fatalf("Now = %+v, %v; want %v, %v after %d bytes", r, final, tc.want, tc.final, len(tc.sent))
			}
			if tc.sent == "" {
				return
			}
			got := make([]byte, len(tc.sent))
			a.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(a, got); err != nil || string(got) != tc.sent {
				t.Fatalf("read after Now = %q, %v", got, err)
			}
		})
	}
}

// TestNowReportsReset: a client that reset before sending a byte makes
// Now return the socket's error, which its peek took from the socket: a
// later peek or read sees only an end of stream, so a caller that was not
// told would take the reset for a close.
func TestNowReportsReset(t *testing.T) {
	a, c := pair(t)
	c.SetLinger(0)
	c.Close()
	if !fdtest.ResetWithin(a, 5*time.Second) {
		t.Fatal("the reset did not arrive within 5s")
	}
	r, final, err := Now(a)
	if !errors.Is(err, syscall.ECONNRESET) || final || r.N != 0 {
		t.Fatalf("Now = %+v, %v, %v; want not final, a connection reset", r, final, err)
	}
}

// BenchmarkNow is auto mode's decision on a request that came with its
// connection: one non-blocking MSG_PEEK into a pooled buffer and Classify.
// The bytes stay queued, so every iteration sees the same request.
func BenchmarkNow(b *testing.B) {
	a, c := pair(b)
	const req = "GET /some/path?q=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8\r\n\r\n"
	c.Write([]byte(req))
	if _, err := Peek(context.Background(), a, make([]byte, 1)); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if r, final, _ := Now(a); !final || r.Protocol != HTTP1 {
			b.Fatalf("Now = %+v, %v", r, final)
		}
	}
}
