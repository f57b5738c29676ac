package sniff

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/detour-proxy/detour/internal/rawsys"
)

// MaxPeek is the most Sniff looks at: one full TLS record, enough for any
// ClientHello that fits a record, and for long HTTP request lines.
const MaxPeek = 5 + 1<<14

// Conn is a socket Peek waits on: a *net.TCPConn, or the *os.File of a
// socket in Go's poller (upstream.Dialer.Connect's).
type Conn interface {
	SyscallConn() (syscall.RawConn, error)
	SetReadDeadline(time.Time) error
}

// Peek waits until c has bytes queued or the peer closed, then copies up to
// len(buf) queued bytes into buf without consuming them (MSG_PEEK): a later
// read or splice still returns them. The wait goes through the netpoller, so
// a pending Peek costs no thread. It returns io.EOF when the peer closed
// without sending anything, and ctx.Err() when ctx ends first. buf must not
// be empty.
//
// Peek interrupts itself by setting a read deadline in the past; it clears
// the deadline again only if it set it, so a caller's own read deadline also
// bounds the wait.
func Peek(ctx context.Context, c Conn, buf []byte) (n int, err error) {
	if len(buf) == 0 {
		return 0, errors.New("sniff: Peek with an empty buffer")
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	release := interruptRead(ctx, c)
	defer release()
	var serr error
	err = rc.Read(func(fd uintptr) bool {
		n, serr = peekQueued(fd, buf)
		// EAGAIN: nothing queued yet; returning false parks on the netpoller.
		return serr != unix.EAGAIN
	})
	switch {
	case err != nil && ctx.Err() != nil:
		return 0, ctx.Err()
	case err != nil:
		return 0, err
	case serr != nil:
		return 0, os.NewSyscallError("recvfrom", serr)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// WaitReadable returns nil once a read on c would not block: bytes are
// queued or the peer closed. Nothing is consumed. The engine uses it on a
// pre-dialed upstream connection to notice a server that speaks first.
func WaitReadable(ctx context.Context, c Conn) error {
	var b [1]byte
	_, err := Peek(ctx, c, b[:])
	if err == io.EOF {
		return nil
	}
	return err
}

// interruptRead makes a pending read on c return when ctx ends.
func interruptRead(ctx context.Context, c Conn) (release func()) {
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		c.SetReadDeadline(time.Unix(1, 0))
		close(fired)
	})
	return func() {
		if !stop() {
			<-fired // the deadline is set: wait for it, then undo it
			c.SetReadDeadline(time.Time{})
		}
	}
}

// Sniff peeks at c until Classify's answer is final, MaxPeek bytes are
// queued, the peer has closed its side, or maxWait passes; then it returns
// the best guess with Result.N set to the bytes seen. A client that sent
// nothing within maxWait yields Protocol Unknown with N == 0 and a nil
// error. Errors: io.EOF when the client closed without sending, ctx.Err()
// when ctx ended, or a socket error.
//
// While the prefix is not final the socket stays readable, so Sniff polls
// with a short back-off (1ms doubling to 20ms) instead of spinning.
//
// A client that has sent nothing yet is waited for without a buffer; the
// first buffer comes from a pool and goes back when Sniff returns, so
// connections waiting for their first bytes hold none.
func Sniff(ctx context.Context, c *net.TCPConn, maxWait time.Duration) (Result, error) {
	wctx, cancel := context.WithTimeout(ctx, maxWait)
	defer cancel()
	res := Result{Protocol: Unknown}
	failed := func(err error) (Result, error) {
		switch {
		case ctx.Err() != nil:
			return res, ctx.Err()
		case wctx.Err() != nil:
			return res, nil // maxWait: the best guess so far
		}
		return res, err
	}
	var first [1]byte
	if _, err := Peek(wctx, c, first[:]); err != nil && err != io.EOF {
		return failed(err)
	}
	pooled := peekBufs.Get().(*[]byte)
	defer peekBufs.Put(pooled)
	buf := *pooled
	const minBackoff, maxBackoff = time.Millisecond, 20 * time.Millisecond
	backoff, seen := minBackoff, 0
	for {
		n, err := Peek(wctx, c, buf)
		if err != nil {
			return failed(err)
		}
		var final bool
		res, final = Classify(buf[:n])
		res.N = n
		switch {
		case final:
			return res, nil
		case n == len(buf) && n < MaxPeek:
			buf = make([]byte, min(2*len(buf), MaxPeek))
			continue
		case n == len(buf), peerClosed(c):
			return res, nil
		case n > seen:
			backoff, seen = minBackoff, n
		}
		if !sleep(wctx, backoff) {
			return res, ctx.Err() // nil unless the caller's ctx ended
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// Now classifies the bytes c has queued already, without waiting; final
// reports whether they decide the protocol (Classify). With nothing queued
// or a prefix that is not final it returns false, and Sniff is the way on.
// A client whose first bytes arrived with its connection is so decided
// without a wait or a timer.
//
// err is the socket's error when the client reset before sending a byte:
// the peek takes it from the socket, so a later read or splice would see
// only an end of stream, and the caller must pass the reset on itself.
func Now(c *net.TCPConn) (res Result, final bool, err error) {
	res = Result{Protocol: Unknown}
	rc, err := c.SyscallConn()
	if err != nil {
		return res, false, nil
	}
	pooled := peekBufs.Get().(*[]byte)
	defer peekBufs.Put(pooled)
	buf := *pooled
	n := 0
	var perr error
	rc.Control(func(fd uintptr) { n, perr = peekQueued(fd, buf) })
	switch {
	case perr == unix.EAGAIN:
		return res, false, nil
	case perr != nil:
		return res, false, os.NewSyscallError("recvfrom", perr)
	case n == 0:
		return res, false, nil
	}
	res, final = Classify(buf[:n])
	res.N = n
	return res, final, nil
}

// peekQueued copies up to len(buf) of the bytes queued on fd into buf
// without consuming or waiting for them: EAGAIN when none are, 0 bytes
// when the peer closed.
func peekQueued(fd uintptr, buf []byte) (int, error) {
	for {
		n, err := rawsys.Peek(int(fd), buf)
		if err != unix.EINTR {
			return n, err
		}
	}
}

// peekBufs are Sniff's first buffers, big enough for a request line and
// most ClientHellos; a longer prefix grows into one of its own.
var peekBufs = sync.Pool{New: func() any {
	b := make([]byte, 4<<10)
	return &b
}}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// peerClosed reports whether the peer's FIN has arrived (CLOSE_WAIT) or it
// reset the connection (CLOSE: a peek returns the queued bytes before the
// error), so no more bytes will follow the queued ones.
func peerClosed(c *net.TCPConn) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return false
	}
	closed := false
	rc.Control(func(fd uintptr) {
		ti, err := unix.GetsockoptTCPInfo(int(fd), unix.SOL_TCP, unix.TCP_INFO)
		closed = err == nil && (ti.State == unix.BPF_TCP_CLOSE_WAIT || ti.State == unix.BPF_TCP_CLOSE)
	})
	return closed
}
