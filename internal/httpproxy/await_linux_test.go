package httpproxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// awaitPair returns an upLink dialed to a loopback listener and the
// accepted server side.
func awaitPair(t *testing.T) (*upLink, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	up := newUpLink(c.(*net.TCPConn), nil)
	return up, s.(*net.TCPConn)
}

func TestSendAwait(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB: more than the socket takes at once
	tests := []struct {
		name       string
		head, body []byte
		smallBuf   bool // shrink the send buffer so the raw write is partial:
		// the rest is written after the raw read, and the read after
		// sendAwait waits as usual
		delay time.Duration // before the server answers
	}{
		{"head only", []byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), nil, false, 100 * time.Millisecond},
		// The answer may come before the wait starts: its edge must not be lost.
		{"answer at once", []byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), nil, false, 0},
		{"head and body", []byte("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n"), []byte("hello"), false, 100 * time.Millisecond},
		{"partial write", []byte("POST / HTTP/1.1\r\n\r\n"), big, true, 100 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up, srv := awaitPair(t)
			if tt.smallBuf {
				up.rc.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, 4096) })
			}
			want := append(append([]byte{}, tt.head...), tt.body...)
			var answered atomic.Bool
			got := make(chan []byte, 1)
			go func() {
				b := make([]byte, len(want))
				if _, err := io.ReadFull(srv, b); err != nil {
					got <- nil
					return
				}
				got <- b
				time.Sleep(tt.delay) // sendAwait must wait for this
				answered.Store(true)
				srv.Write([]byte("HTTP/1.1 204 No Content\r\n\r\n"))
			}()
			up.conn.SetReadDeadline(time.Now().Add(10 * time.Second)) // a lost edge fails, not hangs
			if err := up.sendAwait(tt.head, tt.body, 0); err != nil {
				t.Fatalf("sendAwait: %v", err)
			}
			if !tt.smallBuf && !answered.Load() {
				t.Fatal("sendAwait returned before the response was sent")
			}
			if b := <-got; !bytes.Equal(b, want) {
				t.Fatalf("server got %d bytes, want %d (equal: false)", len(b), len(want))
			}
			resp := make([]byte, 64)
			n, err := up.conn.Read(resp)
			if err != nil || !bytes.HasPrefix(resp[:n], []byte("HTTP/1.1 204")) {
				t.Fatalf("read after sendAwait: %q, %v", resp[:n], err)
			}
		})
	}
}

// A wait that ends by the read deadline leaves the timeout to the read
// after it, as a plain read would report it.
func TestSendAwaitDeadline(t *testing.T) {
	up, srv := awaitPair(t)
	up.conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if err := up.sendAwait([]byte("GET / HTTP/1.1\r\n\r\n"), nil, 0); err != nil {
		t.Fatalf("sendAwait: %v", err)
	}
	_, err := up.conn.Read(make([]byte, 1))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read after the deadline: %v, want a deadline error", err)
	}
	_ = srv
}

// A server that closed the pooled connection while it idled resets the
// request; the wait wakes and the read reports it instead of hanging.
func TestSendAwaitClosedPeer(t *testing.T) {
	up, srv := awaitPair(t)
	srv.Close()
	time.Sleep(50 * time.Millisecond) // the FIN arrives before the request is written
	up.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	start := time.Now()
	err := up.sendAwait([]byte("GET / HTTP/1.1\r\n\r\n"), nil, 0)
	if err == nil {
		_, err = up.conn.Read(make([]byte, 1))
	}
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("got %v after %v, want EOF or a reset well before the deadline", err, time.Since(start))
	}
}

// TestSendAwaitPartialWriteBounded: the rest of a partial write (a small
// send buffer) is bounded by the stream idle timeout, and only by it: a
// write deadline an earlier request left on the pooled connection, long
// passed, does not fail it at once, and a server that stopped reading
// fails it after the timeout instead of holding it forever.
func TestSendAwaitPartialWriteBounded(t *testing.T) {
	big := bytes.Repeat([]byte("x"), 256<<10) // more than the socket takes at once
	for _, tt := range []struct {
		name    string
		stale   bool          // an earlier request's write deadline, passed, is on the connection
		reads   bool          // the server reads the request (else: stopped reading)
		sit     time.Duration // far longer than the reading takes on a loaded machine, or short
		wantErr bool
	}{
		{"stale deadline, server reads", true, true, time.Minute, false},
		{"server stopped reading", false, false, 300 * time.Millisecond, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			up, srv := awaitPair(t)
			up.rc.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, 4096) })
			if tt.stale {
				up.conn.SetWriteDeadline(time.Now().Add(-time.Minute))
			}
			up.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			if tt.reads {
				go func() {
					if _, err := io.CopyN(io.Discard, srv, int64(len(big))+2); err == nil {
						srv.Write([]byte("HTTP/1.1 204 No Content\r\n\r\n"))
					}
				}()
			}
			done := make(chan error, 1)
			go func() { done <- up.sendAwait([]byte("\r\n"), big, tt.sit) }()
			var err error
			select {
			case err = <-done:
			case <-time.After(10 * time.Second):
				up.conn.Close() // ends the write
				<-done
				t.Fatal("the rest of the write still blocked 10s after the server stopped reading")
			}
			if (err != nil) != tt.wantErr {
				t.Fatalf("sendAwait: %v, want an error: %v", err, tt.wantErr)
			}
			if tt.wantErr && !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("sendAwait: %v, want the stream idle deadline", err)
			}
		})
	}
}
