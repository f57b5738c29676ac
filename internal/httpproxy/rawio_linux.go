package httpproxy

import (
	"io"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/detour-proxy/detour/internal/rawsys"
)

// rawReader reads a socket with rawsys.Read inside its RawConn: the wait
// is Go's poller's, so deadlines and Close work as for the net.Conn, but
// the read itself is not announced to Go's scheduler, whose system
// monitor would otherwise hand the processor to another thread whenever
// a read takes a little long (see rawsys). Not safe for concurrent use.
type rawReader struct {
	rc  syscall.RawConn
	fn  func(uintptr) bool // step, bound once
	p   []byte
	n   int
	err error

	// Read returns these first: what a loop read of a response before it
	// handed the connection back, then the error that stopped it, if any.
	ahead    []byte
	aheadErr error
}

func (r *rawReader) init(rc syscall.RawConn) { r.rc, r.fn = rc, r.step }

func (r *rawReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if len(r.ahead) > 0 {
		n := copy(p, r.ahead)
		r.ahead = r.ahead[n:]
		return n, nil
	}
	if err := r.aheadErr; err != nil {
		r.aheadErr = nil
		return 0, err
	}
	r.p, r.n, r.err = p, 0, nil
	err := r.rc.Read(r.fn)
	r.p = nil
	if err == nil {
		err = r.err
	}
	return r.n, err
}

func (r *rawReader) step(fd uintptr) bool {
	for {
		n, err := rawsys.Read(int(fd), r.p)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return false
		case err != nil:
			r.err = os.NewSyscallError("read", err)
		case n == 0:
			r.err = io.EOF
		}
		r.n = n
		return true
	}
}

// rawWriter is rawReader's counterpart: Write writes all of p, waiting in
// Go's poller (write deadline included) while the socket is full.
type rawWriter struct {
	rc  syscall.RawConn
	fn  func(uintptr) bool
	p   []byte
	n   int
	err error
}

func (w *rawWriter) init(rc syscall.RawConn) { w.rc, w.fn = rc, w.step }

func (w *rawWriter) Write(p []byte) (int, error) {
	w.p, w.n, w.err = p, 0, nil
	err := w.rc.Write(w.fn)
	n := w.n
	w.p = nil
	if err == nil {
		err = w.err
	}
	return n, err
}

func (w *rawWriter) step(fd uintptr) bool {
	for w.n < len(w.p) {
		n, err := rawsys.Write(int(fd), w.p[w.n:])
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return false
		case err != nil:
			w.err = os.NewSyscallError("write", err)
			return true
		}
		w.n += n
	}
	return true
}
