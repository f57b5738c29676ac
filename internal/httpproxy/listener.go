package httpproxy

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// downConn is a client connection with the addresses the interception
// learned; ServeHTTP finds it through the request context (ConnContext).
// Reads go through the framing guard (guard.go).
type downConn struct {
	net.Conn
	client, origDst netip.AddrPort
	clientIP        string // client.Addr() as text, for X-Forwarded-For
	id              uint64 // RequestInfo.ConnID
	g               *guard
	p               *Proxy
	start           time.Time
	first           *firstStart // the first request's start, when it began before ServeConn

	// dialErr is the failed pre-dial to origDst (ServeConn); the first
	// request takes it (dialErrUsed).
	dialErr     error
	dialErrUsed atomic.Bool

	sw       streamWriter // writes to the client, under the stream idle timeout
	bodyIdle idleDeadline // the read deadline of a request body (readBody)

	headTimedOut bool // a header timeout was reported (read goroutine only)

	// dlMu orders net/http's read deadlines against the one readBody sets
	// and clears around a body read.
	dlMu sync.Mutex
	// bodyStalled: readBody's deadline cut the body (the handler answers
	// 408, flag SI).
	bodyStalled atomic.Bool

	// begun: a byte of a request was read (or handed over by the fast
	// path); until then Shutdown closes the connection at once, as
	// net/http would only after 5 s.
	begun atomic.Bool

	// headBy (Unix ns; 0: none) is when the head being read must be
	// complete: one the fast path handed over unfinished, or a later head
	// begun on this path (laterHead); cleared once the guard has it.
	headBy atomic.Int64

	// idle: net/http waits for the next request (StateIdle). heading: the
	// guard waits for the rest of a head (receiving), or the fast path
	// handed one over during the drain, until net/http has read it
	// (headTaken); closeIdle reads it from the drain's goroutine.
	idle    atomic.Bool
	heading atomic.Bool

	once sync.Once
	done chan struct{} // closed on the first Close
}

func (c *downConn) Read(p []byte) (int, error) {
	var n int
	var err error
	if c.bodyIdle.timeout > 0 && c.g.inBody() {
		n, err = c.readBody(p)
	} else {
		if c.bodyIdle.armed() { // the body ended, or the stream became a tunnel
			c.endBodyIdle()
		}
		n, err = c.g.read(c.Conn, p)
	}
	if n > 0 && !c.begun.Load() {
		c.begun.Store(true)
	}
	if c.headBy.Load() != 0 && (c.g.heads > c.g.timed || c.g.st == gDone || c.g.st == gPass) {
		c.headBy.Store(0) // the head is complete (or refused)
	}
	if err != nil && !c.headTimedOut && c.p != nil {
		if held, ok := c.g.headTimeout(err); ok {
			c.headTimedOut = true
			c.p.headerTimeout(c, held)
		}
	}
	return n, err
}

// receiving notes that the guard waits for the rest of a head it holds
// part of, with every request before it answered: to net/http the
// connection is idle (or, the first head, not begun), but the drain
// counts the request in flight, as the fast path does (Proxy.Shutdown).
// Called by the guard on the reading goroutine.
func (c *downConn) receiving() {
	if c.heading.CompareAndSwap(false, true) {
		c.p.receiving.Add(1)
	}
}

// headTaken ends the count receiving began: the request reached the
// handler (net/http's Shutdown, were it to begin now, no longer drops it)
// or the connection closed. Not when the guard's read returns: net/http,
// still parsing the head, would drop it if its Shutdown began then.
func (c *downConn) headTaken() {
	if c.heading.Load() && c.heading.CompareAndSwap(true, false) {
		c.p.receiving.Add(-1)
	}
}

// laterHead starts HeaderTimeout for a head after the connection's first,
// from its first byte (or, pipelined, from the end of the request before
// it), as the fast path does. net/http's own header timeout would start
// only once it sees the head's first byte, which the guard holds until
// the head is complete: until then net/http waits for the next request
// under IdleTimeout, which a slowloris client would get instead. The
// deadline replaces net/http's idle one, and clampHead keeps any it sets
// later from reaching past it; a deadline in the past (net/http aborting
// a read) stays. Called by the guard on the reading goroutine.
func (c *downConn) laterHead() {
	by := time.Now().Add(c.p.o.HeaderTimeout)
	c.headBy.Store(by.UnixNano())
	c.dlMu.Lock()
	defer c.dlMu.Unlock()
	if d := c.g.deadline.Load(); d == 0 || d > time.Now().UnixNano() {
		c.Conn.SetReadDeadline(by)
		c.g.setDeadline(by)
	}
}

// readBody reads while the guard is inside the body of the request being
// served, which net/http reads with no deadline of its own: a client that
// sends no byte of it for StreamIdleTimeout (bodyIdle) fails the read, as
// the fast path's body copy does, so that a stalled upload does not hold
// the request and its upstream connection forever (Envoy's
// stream_idle_timeout). net/http cancels the request at the read error:
// the upstream request is aborted, and the handler answers 408 (flag SI,
// bodyStalled). The deadline stays set from one read of the body to the
// next (it is renewed lazily) and is cleared once the body has ended or a
// read failed. A deadline net/http set (an aborted background read) is
// left alone.
func (c *downConn) readBody(p []byte) (int, error) {
	c.dlMu.Lock()
	own := c.g.deadline.Load() == 0
	if own {
		c.bodyIdle.read(c.Conn)
	}
	c.dlMu.Unlock()
	n, err := c.g.read(c.Conn, p)
	if !own || err == nil && c.g.inBody() {
		return n, err
	}
	ns := c.endBodyIdle()
	if ns == 0 && err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		c.bodyStalled.Store(true)
		c.p.log.Info("stream idle timeout: the client stopped sending its request body; closing", "client", c.client,
			"dst", c.origDst, "timeout", c.bodyIdle.timeout)
	}
	return n, err
}

// endBodyIdle puts back the read deadline net/http set (none, or one it
// set meanwhile), which readBody's replaced, and returns it (Unix ns).
func (c *downConn) endBodyIdle() (ns int64) {
	c.dlMu.Lock()
	defer c.dlMu.Unlock()
	ns = c.g.deadline.Load()
	if c.bodyIdle.armed() {
		c.bodyIdle.forget()
		if ns == 0 {
			c.Conn.SetReadDeadline(time.Time{})
		} else {
			c.Conn.SetReadDeadline(time.Unix(0, ns)) // net/http's, set meanwhile
		}
	}
	return ns
}

func (c *downConn) Write(b []byte) (int, error) { return c.sw.Write(b) }

// SetReadDeadline and SetDeadline also tell the guard, which may be holding
// a client's FIN back (guard.waitEOF). SetDeadline and SetWriteDeadline
// replace the stream idle deadline until the next Write.
func (c *downConn) SetReadDeadline(t time.Time) error {
	t = c.clampHead(t)
	c.dlMu.Lock()
	defer c.dlMu.Unlock()
	err := c.Conn.SetReadDeadline(t)
	c.g.setDeadline(t)
	c.bodyIdle.forget()
	return err
}

func (c *downConn) SetDeadline(t time.Time) error {
	c.sw.idle.forget()
	c.dlMu.Lock()
	defer c.dlMu.Unlock()
	err := c.Conn.SetWriteDeadline(t)
	rt := c.clampHead(t)
	if rerr := c.Conn.SetReadDeadline(rt); err == nil {
		err = rerr
	}
	c.g.setDeadline(rt)
	c.bodyIdle.forget()
	return err
}

// clampHead brings a read deadline net/http sets forward to headBy while
// the head it bounds is still being read: its HeaderTimeout ran from its
// first byte (on the fast path, for a head handed over unfinished) and
// does not start anew.
func (c *downConn) clampHead(t time.Time) time.Time {
	if by := c.headBy.Load(); by != 0 && (t.IsZero() || t.UnixNano() > by) {
		return time.Unix(0, by)
	}
	return t
}

func (c *downConn) SetWriteDeadline(t time.Time) error {
	c.sw.idle.forget()
	return c.Conn.SetWriteDeadline(t)
}

// Close closes the connection and releases ServeConn. net/http closes it
// when it is done, and so does ReverseProxy after a hijacked upgrade.
//
// If the client's bytes are still unread (a refused request it is still
// sending), a plain close would answer them with a reset that can destroy
// our final response in the client's receive queue before it is read.
// Close then lingers instead (RFC 9112 9.6): FIN, drain the input for a
// while, and close in the background. It does so too after the guard
// refused a request or cut a body, even with nothing unread yet: the rest
// of a head or body sent in several segments may arrive just after the
// queue was found empty, and be answered with that reset.
func (c *downConn) Close() error {
	var err error
	cut := c.g.stoppedShort()
	c.g.close()
	c.once.Do(func() {
		if sc, ok := c.Conn.(syscall.Conn); ok && (cut || unreadInput(sc)) {
			c.CloseWrite()
			go func() {
				drain(c.Conn)
				c.Conn.Close()
				close(c.done)
			}()
			return
		}
		err = c.Conn.Close()
		close(c.done)
	})
	return err
}

// abort closes at once, cutting a lingering close short.
func (c *downConn) abort() {
	c.Conn.Close()
	c.Close()
}

// CloseWrite lets net/http send its FIN before hanging up after an error.
func (c *downConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// chanListener is the net.Listener the internal http.Server accepts from:
// ServeConn hands connections in through a channel.
type chanListener struct {
	ch   chan net.Conn
	once sync.Once
	done chan struct{}
}

func newChanListener() *chanListener {
	return &chanListener{ch: make(chan net.Conn), done: make(chan struct{})}
}

// hand passes c to Accept; false if the listener is closed.
func (l *chanListener) hand(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return memAddr{} }

type memAddr struct{}

func (memAddr) Network() string { return "memory" }
func (memAddr) String() string  { return "detour-l7" }

// streamWriter writes to a client and fails when one write takes longer
// than the stream idle timeout (idle; the client stopped reading): such a
// client must not hold its response, and the upstream connection behind
// it, forever. A timed-out write is not retried even if
// it wrote some bytes: those went out at its start, into the socket
// buffer, before it blocked.
type streamWriter struct {
	conn     net.Conn
	raw      rawWriter    // writes to conn without Go's syscall bookkeeping, once initialised (the fast path)
	idle     idleDeadline // conn's write deadline
	timedOut atomic.Bool
}

func (w *streamWriter) Write(b []byte) (int, error) {
	w.idle.write(w.conn)
	var n int
	var err error
	if w.raw.rc != nil {
		n, err = w.raw.Write(b)
	} else {
		n, err = w.conn.Write(b)
	}
	if w.idle.timeout > 0 {
		w.note(err)
	}
	return n, err
}

// note records a write error that was the deadline expiring.
func (w *streamWriter) note(err error) {
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		w.timedOut.Store(true)
	}
}

// firstStart is when a connection's first request began, if that was
// before ServeConn got the connection: auto mode saw its first bytes,
// then waited for the connect it made meanwhile. The connection's first
// record takes it, on whichever path serves that request; every other
// record starts when its head is read.
type firstStart struct {
	at   time.Time
	used atomic.Bool
}

// take returns the first request's start once, and the time now after.
func (f *firstStart) take() time.Time {
	if f == nil || f.used.Swap(true) { // nil: ServeConn had no sniffed time
		return time.Now()
	}
	return f.at
}
