package httpproxy

import (
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// sendAwait writes a whole request (head, then body, which may be empty)
// to l and waits until l has something to read (or its read deadline
// passes, or it is closed: the read that follows reports those).
//
// Written the usual way — write, then read — the first read nearly always
// finds the response not there yet and returns EAGAIN before the goroutine
// parks. Here the write runs inside a raw read of l, after Go's poller
// has been told to keep the next readiness edge for this reader: a
// response that arrives even before the wait begins still wakes it, so
// the wait needs no read, and the next read finds the response. One
// system call less per request. Nothing else is pending on a pooled
// connection at this point: its last response was read to the end, and a
// FIN or reset that came while it idled makes the server's kernel answer
// the request with a reset, which wakes the wait like any other edge.
//
// When the socket takes only part of the bytes, the rest is written with
// an ordinary (waiting) write after the raw read has returned, which idle
// (StreamIdleTimeout; 0: none) bounds as it bounds a body's writes: the
// connection's write deadline is set for it, not left as an earlier
// request on the pooled connection set it (long passed, it would fail the
// write at once). A whole write, the usual case, sets no deadline.
func (l *upLink) sendAwait(head, body []byte, idle time.Duration) error {
	a := &l.await
	if a.fn == nil {
		a.fn = a.step // bound once per connection: no allocation per request
	}
	a.bufs, a.err, a.wrote = [2][]byte{head, body}, nil, false
	total := len(head) + len(body)
	// An error of the wait itself (a deadline, a close) is left to the
	// read that follows, which reports it as it would have without this.
	l.rc.Read(a.fn)
	bufs, err := a.bufs, a.err
	a.bufs = [2][]byte{} // keep no reference to the caller's buffers
	left := len(bufs[0]) + len(bufs[1])
	if err != nil {
		return unsentErr(err, left == total)
	}
	if left > 0 { // the socket did not take it all at once
		l.conn.SetWriteDeadline(deadline(time.Now(), idle))
	}
	for _, b := range bufs {
		if len(b) > 0 {
			n, err := l.conn.Write(b)
			if err != nil {
				return unsentErr(err, left == total && n == 0)
			}
			left -= n
		}
	}
	return nil
}

// unsentErr marks err with errNothingSent when none of the request was
// written.
func unsentErr(err error, none bool) error {
	if none {
		return fmt.Errorf("%w: %w", errNothingSent, err)
	}
	return err
}

// awaiter is sendAwait's state, kept in the upLink.
type awaiter struct {
	bufs  [2][]byte // what is still to be written
	err   error
	wrote bool
	fn    func(uintptr) bool // step
}

// step is the raw read's callback: the first call writes, later ones
// (after a readiness edge) end the wait.
func (a *awaiter) step(fd uintptr) bool {
	if a.wrote {
		return true // readable
	}
	a.wrote = true
	a.write(int(fd))
	return a.err != nil || a.left() > 0 // failed or blocked: stop; else wait
}

func (a *awaiter) left() int { return len(a.bufs[0]) + len(a.bufs[1]) }

// write writes as much as fd takes without waiting, dropping what was
// written from bufs.
func (a *awaiter) write(fd int) {
	for a.left() > 0 {
		n, err := writeNow(fd, a.bufs[0], a.bufs[1])
		switch {
		case err == unix.EAGAIN:
			return
		case err != nil:
			a.err = os.NewSyscallError("write", err)
			return
		}
		for i := range a.bufs {
			m := min(n, len(a.bufs[i]))
			a.bufs[i], n = a.bufs[i][m:], n-m
		}
	}
}
