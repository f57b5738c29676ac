package httpproxy

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// rawTCPPair returns both ends of a loopback TCP connection, closed when
// the test ends.
func rawTCPPair(t *testing.T) (client, server *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ln.SetDeadline(time.Now().Add(5 * time.Second))
	client, err = net.DialTCP("tcp4", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	server, err = ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })
	return client, server
}

// newRawReader returns a rawReader on c, set up as the proxy does.
func newRawReader(t *testing.T, c *net.TCPConn) *rawReader {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var r rawReader
	r.init(rc)
	return &r
}

// newRawWriter returns a rawWriter on c, set up as the proxy does.
func newRawWriter(t *testing.T, c *net.TCPConn) *rawWriter {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var w rawWriter
	w.init(rc)
	return &w
}

// rawPattern returns n bytes that differ from position to position.
func rawPattern(n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i ^ i>>8 ^ i>>16)
	}
	return p
}

// TestRawReaderReads checks that rawReader returns what the peer wrote:
// a short message in one Read (waiting for it if needed), then a large
// stream intact through io.ReadFull, then io.EOF with n = 0 once the peer
// has closed, and io.EOF again on the next Read.
func TestRawReaderReads(t *testing.T) {
	c, s := rawTCPPair(t)
	r := newRawReader(t, c)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))

	go func() {
		time.Sleep(20 * time.Millisecond) // let the Read wait in the poller
		s.Write([]byte("hello"))
	}()
	buf := make([]byte, 64)
	n, err := r.Read(buf)
	if err != nil || string(buf[:n]) != "hello" {
		t.Fatalf("Read = %d %q, %v; want 5 %q, nil", n, buf[:n], err, "hello")
	}

	big := rawPattern(3 << 20)
	done := make(chan error, 1)
	go func() {
		_, err := s.Write(big)
		if err == nil {
			err = s.Close()
		}
		done <- err
	}()
	got := make([]byte, len(big))
	if n, err := io.ReadFull(r, got); err != nil {
		t.Fatalf("ReadFull after %d bytes: %v", n, err)
	}
	if !bytes.Equal(got, big) {
		t.Fatal("bytes read differ from those written")
	}
	if err := <-done; err != nil {
		t.Fatalf("peer: %v", err)
	}
	for i := range 2 {
		if n, err := r.Read(buf); n != 0 || err != io.EOF {
			t.Fatalf("Read %d after peer closed = %d, %v; want 0, io.EOF", i, n, err)
		}
	}
}

// TestRawReaderZeroLength checks that a 0-length Read returns 0, nil at
// once, whether or not data is pending, and consumes nothing.
func TestRawReaderZeroLength(t *testing.T) {
	c, s := rawTCPPair(t)
	r := newRawReader(t, c)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for _, p := range [][]byte{nil, {}} {
		if n, err := r.Read(p); n != 0 || err != nil {
			t.Fatalf("Read(%#v) with nothing pending = %d, %v; want 0, nil", p, n, err)
		}
	}
	if _, err := s.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if n, err := r.Read(nil); n != 0 || err != nil {
		t.Fatalf("Read(nil) with data pending = %d, %v; want 0, nil", n, err)
	}
	buf := make([]byte, 4)
	if n, err := r.Read(buf); n != 1 || err != nil || buf[0] != 'x' {
		t.Fatalf("Read = %d %q, %v; want 1 %q, nil", n, buf[:n], err, "x")
	}
}

// TestRawReaderInterrupted checks how a Read waiting for data ends: when
// the read deadline passes, with an error that is os.ErrDeadlineExceeded
// and a net.Error whose Timeout is true, and after which, with the
// deadline lifted, the reader still reads; when the conn is closed from
// another goroutine, with net.ErrClosed. Either way within 5 s, n = 0.
func TestRawReaderInterrupted(t *testing.T) {
	tests := []struct {
		name      string
		interrupt func(c *net.TCPConn) // before Read; may start a goroutine
		check     func(t *testing.T, err error)
		after     func(t *testing.T, r *rawReader, c, s *net.TCPConn)
	}{
		{
			name: "deadline",
			interrupt: func(c *net.TCPConn) {
				c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			},
			check: func(t *testing.T, err error) {
				if !errors.Is(err, os.ErrDeadlineExceeded) {
					t.Errorf("err = %v; want os.ErrDeadlineExceeded", err)
				}
				var ne net.Error
				if !errors.As(err, &ne) || !ne.Timeout() {
					t.Errorf("err = %v (%T); want a net.Error with Timeout() true", err, err)
				}
			},
			after: func(t *testing.T, r *rawReader, c, s *net.TCPConn) {
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := s.Write([]byte("late")); err != nil {
					t.Fatal(err)
				}
				buf := make([]byte, 8)
				if n, err := r.Read(buf); err != nil || string(buf[:n]) != "late" {
					t.Fatalf("Read after the deadline was moved = %d %q, %v; want %q", n, buf[:n], err, "late")
				}
			},
		},
		{
			name: "closed",
			interrupt: func(c *net.TCPConn) {
				go func() {
					time.Sleep(50 * time.Millisecond)
					c.Close()
				}()
			},
			check: func(t *testing.T, err error) {
				if !errors.Is(err, net.ErrClosed) {
					t.Errorf("err = %v; want net.ErrClosed", err)
				}
			},
			after: func(t *testing.T, r *rawReader, c, s *net.TCPConn) {
				if n, err := r.Read(make([]byte, 8)); n != 0 || !errors.Is(err, net.ErrClosed) {
					t.Fatalf("Read on the closed conn = %d, %v; want 0, net.ErrClosed", n, err)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, s := rawTCPPair(t)
			r := newRawReader(t, c)
			type result struct {
				n   int
				err error
			}
			res := make(chan result, 1)
			start := time.Now()
			tt.interrupt(c)
			go func() {
				n, err := r.Read(make([]byte, 64))
				res <- result{n, err}
			}()
			var got result
			select {
			case got = <-res:
			case <-time.After(5 * time.Second):
				c.Close() // unblock the goroutine
				t.Fatal("Read still waiting after 5 s")
			}
			if got.err == nil || got.n != 0 {
				t.Fatalf("Read = %d, %v after %v; want 0 and an error", got.n, got.err, time.Since(start))
			}
			tt.check(t, got.err)
			tt.after(t, r, c, s)
		})
	}
}

// TestRawReaderReset checks that a read error other than EAGAIN (here
// ECONNRESET, the peer having closed with SO_LINGER 0) comes back as an
// *os.SyscallError for "read" wrapping the errno, with n = 0.
func TestRawReaderReset(t *testing.T) {
	c, s := rawTCPPair(t)
	r := newRawReader(t, c)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	s.SetLinger(0)
	s.Close()
	n, err := r.Read(make([]byte, 8))
	var se *os.SyscallError
	if n != 0 || !errors.Is(err, syscall.ECONNRESET) || !errors.As(err, &se) || se.Syscall != "read" {
		t.Fatalf("Read after peer reset = %d, %v (%T); want 0, read: ECONNRESET as *os.SyscallError", n, err, err)
	}
}

// TestRawWriterSlowPeer checks that rawWriter.Write writes all of 8 MiB,
// waiting while the socket is full, to a peer that reads slowly in small
// pieces, and that the peer receives exactly those bytes.
func TestRawWriterSlowPeer(t *testing.T) {
	c, s := rawTCPPair(t)
	w := newRawWriter(t, c)
	data := rawPattern(8 << 20)
	want := sha256.Sum256(data)

	type result struct {
		n   int64
		sum [32]byte
		err error
	}
	res := make(chan result, 1)
	go func() {
		s.SetReadDeadline(time.Now().Add(30 * time.Second))
		h := sha256.New()
		buf := make([]byte, 16<<10)
		var total int64
		for i := 0; ; i++ {
			n, err := s.Read(buf)
			h.Write(buf[:n])
			total += int64(n)
			if err == io.EOF {
				break
			}
			if err != nil {
				res <- result{total, [32]byte{}, err}
				return
			}
			if i%4 == 0 {
				time.Sleep(time.Millisecond) // slow reader
			}
		}
		var sum [32]byte
		h.Sum(sum[:0])
		res <- result{total, sum, nil}
	}()

	c.SetWriteDeadline(time.Now().Add(30 * time.Second))
	n, err := w.Write(data)
	if err != nil || n != len(data) {
		t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(data))
	}
	if n, err := w.Write(nil); n != 0 || err != nil {
		t.Fatalf("Write(nil) = %d, %v; want 0, nil", n, err)
	}
	c.CloseWrite()
	got := <-res
	if got.err != nil {
		t.Fatalf("peer read %d bytes, then: %v", got.n, got.err)
	}
	if got.n != int64(len(data)) || got.sum != want {
		t.Fatalf("peer received %d bytes (sha256 match %v); want the %d written", got.n, got.sum == want, len(data))
	}
}

// TestRawWriterDeadline checks that when the peer never reads, the write
// deadline ends Write with an error that is os.ErrDeadlineExceeded and a
// net.Error with Timeout() true, within 5 s, and with n the number of
// bytes actually written: more than 0, fewer than asked, and exactly the
// bytes the peer then receives.
func TestRawWriterDeadline(t *testing.T) {
	c, s := rawTCPPair(t)
	// Small buffers, so that 8 MiB cannot all fit whatever the kernel's
	// autotuning limits.
	if err := c.SetWriteBuffer(64 << 10); err != nil {
		t.Fatal(err)
	}
	if err := s.SetReadBuffer(64 << 10); err != nil {
		t.Fatal(err)
	}
	w := newRawWriter(t, c)
	data := rawPattern(8 << 20)

	c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	type result struct {
		n   int
		err error
	}
	res := make(chan result, 1)
	start := time.Now()
	go func() {
		n, err := w.Write(data)
		res <- result{n, err}
	}()
	var got result
	select {
	case got = <-res:
	case <-time.After(5 * time.Second):
		c.Close()
		t.Fatal("Write still waiting 5 s after its deadline was set")
	}
	t.Logf("Write = %d, %v after %v", got.n, got.err, time.Since(start))
	if !errors.Is(got.err, os.ErrDeadlineExceeded) {
		t.Fatalf("err = %v; want os.ErrDeadlineExceeded", got.err)
	}
	var ne net.Error
	if !errors.As(got.err, &ne) || !ne.Timeout() {
		t.Fatalf("err = %v (%T); want a net.Error with Timeout() true", got.err, got.err)
	}
	if got.n <= 0 || got.n >= len(data) {
		t.Fatalf("n = %d; want 0 < n < %d", got.n, len(data))
	}

	// The peer receives exactly the first n bytes.
	c.Close()
	s.SetReadDeadline(time.Now().Add(10 * time.Second))
	recv, err := io.ReadAll(s)
	if err != nil {
		t.Fatalf("peer read %d bytes, then: %v", len(recv), err)
	}
	if len(recv) != got.n || !bytes.Equal(recv, data[:got.n]) {
		t.Fatalf("peer received %d bytes (prefix match %v); Write reported %d", len(recv), bytes.HasPrefix(data, recv), got.n)
	}
}

// TestRawWriterErrors checks Write's errors: on a conn closed locally,
// net.ErrClosed with n = 0; to a peer that has reset the connection, an
// *os.SyscallError for "write" wrapping EPIPE or ECONNRESET.
func TestRawWriterErrors(t *testing.T) {
	t.Run("closed", func(t *testing.T) {
		c, _ := rawTCPPair(t)
		w := newRawWriter(t, c)
		c.Close()
		if n, err := w.Write([]byte("x")); n != 0 || !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Write on closed conn = %d, %v; want 0, net.ErrClosed", n, err)
		}
	})
	t.Run("reset", func(t *testing.T) {
		c, s := rawTCPPair(t)
		w := newRawWriter(t, c)
		c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		s.SetLinger(0)
		s.Close()
		var err error
		for i := 0; i < 100 && err == nil; i++ {
			_, err = w.Write([]byte("x"))
			if err == nil {
				time.Sleep(10 * time.Millisecond)
			}
		}
		var se *os.SyscallError
		if !errors.Is(err, syscall.EPIPE) && !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("Write to reset peer: %v; want EPIPE or ECONNRESET", err)
		}
		if !errors.As(err, &se) || se.Syscall != "write" {
			t.Fatalf("err = %v (%T); want an *os.SyscallError for write", err, err)
		}
	})
}
