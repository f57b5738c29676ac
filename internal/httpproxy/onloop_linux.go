package httpproxy

import (
	"bytes"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/detour-proxy/detour/internal/rawsys"
	"github.com/detour-proxy/detour/internal/tcpproxy"
)

// Between requests, a keep-alive connection of the fast path is served by
// one of the L4 epoll loops (tcpproxy.Watch) instead of its goroutine,
// together with the upstream connection its last request used, which it
// keeps (as HAProxy keeps a session's server connection). The loop takes
// the common exchange whole: a request head in the fast path's subset
// with any body already read, written upstream at once; a response head
// in the strict subset with its Content-Length body within one buffer,
// written back with the head. A goroutine per connection costs two
// scheduler wake-ups per request and, on a busy machine, waits in the run
// queue at each; one loop goroutine serves all of its connections' events
// in turn.
//
// Anything else is handed back at once to the connection's goroutine,
// which waits meanwhile: a partial or unusual request, a request body
// still to come, a declined or large response, an upstream that closed
// or spoke unasked, an error, a timeout, debug logging, shutdown. The
// goroutine then carries on exactly where the loop stopped, on the
// ordinary fast path, which gives every such case the same handling as
// before. Only the goroutine closes the sockets.

// Which socket of a Watch is which.
const (
	clientSide = 0
	upSide     = 1
)

// backReason says where the loop stopped when it handed a connection back.
type backReason uint8

const (
	backNone    backReason = iota // the loop keeps the connection
	backIdle                      // between requests; in may hold the start of the next one
	backTimeout                   // the idle timeout passed: the connection ends
	backAwait                     // x was sent (or not: x.sent zero); its response is for the goroutine to read
	backFlush                     // x's response was read whole; pending is what the client did not take
	backEnd                       // x ended on the loop and the connection with it
)

// Where a connection served by a loop is.
const (
	stIdle  uint8 = iota // waiting for a request
	stAwait              // waiting for x's response
)

// onLoop is what a fastConn needs of the loops: the part other goroutines
// reach (abort, Shutdown) and the goroutine's own counters; the rest is
// allocated when the connection first goes to a loop, so that a
// connection that never does costs nothing more.
type onLoop struct {
	mu      sync.Mutex // orders abort against entering the loop and against lingers' raw call on fc.fd
	w       atomic.Pointer[tcpproxy.Watch]
	aborted atomic.Bool // by abort; set under mu
	st      *loopState

	// After a request the loop did not take, the goroutine serves skip
	// requests itself before it tries again; misses counts such requests
	// in a row (the goroutine's, and the loop's while it serves).
	skip, misses int
}

// loopState is a connection's state on a loop.
type loopState struct {
	back    chan backReason // the loop hands the connection back here
	serveFn func(*tcpproxy.Watch)
	timer   *time.Timer
	rang    atomic.Bool // the timer fired since the loop last looked

	// Used by the loop goroutine while it serves the connection, and by
	// the goroutine after a hand-back.
	up       *upLink // the kept upstream connection
	state    uint8
	due      time.Time // the state's deadline (zero: none)
	idleBy   time.Time // stIdle: the idle timeout's deadline (zero: none)
	idleAt   time.Time // stIdle: since when
	armed    time.Time // when the timer rings (zero: stopped)
	upDead   bool      // the upstream closed it or sent bytes unasked: not reusable
	declined bool      // backIdle: the loop did not take the request buffered in in
	release  bool      // backIdle: the kept connection goes back to the pool
	resp     *fastBuf  // x's response so far
	rn       int
	rerr     error  // the read that ended the response early
	pending  []byte // backFlush: the end of the response the client did not take
	headLeft int    // backFlush: how much of pending is the response head's end
}

// loopAfter is the number of requests a connection's goroutine serves
// before a loop serves the next ones: a connection proves it is kept alive
// before it holds an upstream connection of its own, so that the many
// that send one request and idle share the pool, as before.
const loopAfter = 2

// keepLink keeps the upstream connection of a request that ended well:
// for the next request when a loop will serve it, else in the pool. A
// host's connections kept so are bounded as its pool is
// (MaxIdleConnsPerHost): past that, client connections stay on their
// goroutines and share the pool.
func (fc *fastConn) keepLink(up *upLink, keep bool) {
	p := fc.p
	if keep && fc.heads >= loopAfter && !p.o.DisableLoops && fc.fd >= 0 && up.fd >= 0 && fc.r == fc.w &&
		fc.ol.skip == 0 && !fc.closing.Load() && !p.debug() {
		if up.h.kept.Add(1) <= int64(p.o.MaxIdleConnsPerHost) {
			fc.pin = up
			return
		}
		up.h.kept.Add(-1)
	}
	p.hosts.putLink(up)
}

// unpin takes fc.pin back from the connection: for a request on the
// goroutine, the pool, or closing.
func (fc *fastConn) unpin() *upLink {
	l := fc.pin
	if l != nil {
		l.h.kept.Add(-1)
		fc.pin = nil
	}
	return l
}

// serveOnLoop lets a loop serve the connection, with fc.pin, until it
// hands it back, and finishes what the loop left. It reports whether the
// connection goes on, on the goroutine.
func (fc *fastConn) serveOnLoop() bool {
	for fc.pin != nil {
		switch r := fc.runOnLoop(); r {
		case backIdle:
			if fc.ol.st.declined {
				fc.noteMiss()
			}
			if fc.in == nil || fc.r == fc.w {
				fc.idleAt = fc.ol.st.idleAt // the idle timeout runs on
			}
			return true
		case backTimeout, backEnd:
			return false
		case backAwait, backFlush:
			x := fc.x
			var keep bool
			if r == backAwait {
				keep = fc.resume(x)
			} else {
				keep = fc.flush(x)
			}
			fc.end(x)
			fc.releaseIn()
			if !keep || fc.closing.Load() {
				return false
			}
		}
	}
	return true
}

// runOnLoop registers the connection and fc.pin with a loop and waits
// for the loop to hand them back. For backIdle, backTimeout and backEnd,
// the kept upstream connection is then closed (the upstream ended it), in
// the pool (the client idled for the cleanup interval) or in fc.pin again;
// for the others it is in fc.ol.st.up, with the request in flight.
func (fc *fastConn) runOnLoop() backReason {
	ol := &fc.ol
	if ol.st == nil {
		ls := &loopState{back: make(chan backReason, 1), serveFn: fc.serveLoop}
		ls.timer = time.AfterFunc(time.Hour, func() {
			ls.rang.Store(true)
			ol.wake()
		})
		ls.timer.Stop()
		ol.st = ls
	}
	ls := ol.st
	ls.up, fc.pin = fc.pin, nil
	ls.upDead, ls.declined, ls.release, ls.armed = false, false, false, time.Time{}
	ls.idle(time.Now(), &fc.p.o)

	ol.mu.Lock()
	if ol.aborted.Load() || fc.closing.Load() {
		ol.mu.Unlock()
		fc.pin = ls.up
		return backIdle
	}
	w, err := tcpproxy.NewWatch([2]int{fc.fd, ls.up.fd}, ls.serveFn)
	if err != nil {
		ol.mu.Unlock()
		fc.p.log.Debug("serving a connection on a loop failed; its goroutine goes on", "client", fc.client, "err", err)
		fc.pin = ls.up
		return backIdle
	}
	ol.w.Store(w)
	ol.mu.Unlock()
	if fc.closing.Load() { // Shutdown came between the check and Store
		w.Wake()
	}

	r := <-ls.back
	ol.mu.Lock()
	ol.w.Store(nil)
	aborted := ol.aborted.Load()
	ol.mu.Unlock()
	ls.timer.Stop()
	if aborted {
		fc.c.Close()
		ls.upDead = true // closed below, or by the request in flight, which fails
		if r == backAwait || r == backFlush {
			ls.up.conn.Close()
		}
	}
	switch {
	case r == backAwait || r == backFlush: // the goroutine finishes the request on ls.up
		ls.up.h.kept.Add(-1)
	case ls.upDead:
		ls.up.h.kept.Add(-1)
		ls.up.close()
		ls.up = nil
	case ls.release:
		ls.up.h.kept.Add(-1)
		fc.p.hosts.putLink(ls.up)
		ls.up = nil
	default:
		fc.pin, ls.up = ls.up, nil
	}
	return r
}

// wake makes a loop serving the connection look at it (closing).
func (ol *onLoop) wake() {
	if w := ol.w.Load(); w != nil {
		w.Wake()
	}
}

// idle enters stIdle at now. The deadline is the idle timeout's or, when
// sooner, the cleanup interval's: a client connection idle that long
// gives its upstream connection back to the pool, so that a host unused
// for the cleanup interval goes with all of its connections, as before.
func (ls *loopState) idle(now time.Time, o *Options) {
	ls.state, ls.idleAt = stIdle, now
	ls.idleBy = deadline(now, o.IdleTimeout)
	ls.due = deadline(now, o.CleanupInterval)
	if ls.due.IsZero() || !ls.idleBy.IsZero() && ls.idleBy.Before(ls.due) {
		ls.due = ls.idleBy
	}
}

// deadline is now+d, or zero (none) when d is not positive.
func deadline(now time.Time, d time.Duration) time.Time {
	if d <= 0 {
		return time.Time{}
	}
	return now.Add(d)
}

// serveLoop runs on the loop goroutine whenever the connection's sockets
// report events, the timer rings, or wake was called.
func (fc *fastConn) serveLoop(w *tcpproxy.Watch) {
	ls := fc.ol.st
	r := backNone
	if ls.rang.Swap(false) {
		ls.armed = time.Time{}
		switch now := time.Now(); {
		case ls.due.IsZero() || now.Before(ls.due):
		case ls.state == stAwait:
			r = backAwait // the goroutine's read finds the route timeout passed: 504
		case !ls.idleBy.IsZero() && !now.Before(ls.idleBy):
			r = backTimeout
		default:
			r, ls.release = backIdle, true
		}
	}
	for r == backNone {
		var more bool
		if ls.state == stIdle {
			r, more = fc.idleStep(w)
		} else {
			r, more = fc.awaitStep(w)
		}
		if !more {
			break
		}
	}
	if r != backNone {
		w.Stop()
		ls.back <- r // the goroutine owns fc again
		return
	}
	if !ls.due.IsZero() && (ls.armed.IsZero() || ls.armed.After(ls.due)) {
		ls.armed = ls.due
		ls.timer.Reset(time.Until(ls.due))
	}
}

// idleStep reads the next request and sends it when the loop takes it. It
// reports whether to go on at once (more).
func (fc *fastConn) idleStep(w *tcpproxy.Watch) (r backReason, more bool) {
	ls := fc.ol.st
	switch {
	case fc.closing.Load():
		return backIdle, false
	case w.Readable(upSide): // a close, or bytes nothing asked for
		ls.upDead = true
		return backIdle, false
	}
	if w.Readable(clientSide) {
		switch r := fc.readOnLoop(w); {
		case r != backNone:
			return r, false
		case fc.in == nil:
			return backNone, false
		}
	}
	if fc.in == nil || fc.r == fc.w {
		return backNone, false
	}
	switch started, whole := fc.startOnLoop(); {
	case !started:
		ls.declined = true
		return backIdle, false
	case !whole:
		return backAwait, false
	}
	return backNone, true
}

// readOnLoop reads what the client sent into in.
func (fc *fastConn) readOnLoop(w *tcpproxy.Watch) backReason {
	p := fc.p
	fc.compact()
	took := fc.in == nil
	if took {
		fc.in = p.pools.bufs.Get().(*fastBuf)
	}
	n, err := readNow(fc.fd, fc.in[fc.w:])
	if err != nil || n == 0 {
		if took {
			p.pools.bufs.Put(fc.in)
			fc.in = nil
		}
		if err == unix.EAGAIN {
			w.Drained(clientSide)
			return backNone
		}
		return backIdle // the goroutine's read sees the EOF or error again
	}
	if fc.w += n; fc.w < len(fc.in) && !w.Hup(clientSide) {
		w.Drained(clientSide)
	}
	return backNone
}

// startOnLoop begins and sends the request buffered in in, when the loop
// takes it: a whole head in the fast path's subset with its whole body.
// whole reports that the socket took all of it (false, with nothing sent,
// when the kept connection's host was removed).
func (fc *fastConn) startOnLoop() (started, whole bool) {
	ls, p := fc.ol.st, fc.p
	end := bytes.Index(fc.in[fc.r:fc.w], []byte("\r\n\r\n"))
	if end < 0 || p.debug() {
		return false, false
	}
	x := fc.takeRequest()
	ok := parseFastHead(&x.h, fc.in[fc.r:fc.w], end+4, p.o.MaxRequestHeaderBytes, p.o.MaxRequestHeaders, p.hdr, p.o.UseOriginalDstHeader)
	if !ok || x.h.clen > int64(fc.w-fc.r-x.h.size) {
		fc.dropRequest()
		return false, false
	}
	fc.heads++
	fc.begin(x)
	up := ls.up
	if up.h != x.hst {
		// The janitor removed the kept connection's host (its sweep came
		// before the loop's timer): the request goes to the host begin
		// made anew, on a connection of its own (resume).
		return true, false
	}
	up.reuse()
	fc.sendOn(x, up)
	// What the socket did not take, the goroutine writes (or meets the
	// error again, and replaces the connection as for any pooled one).
	var err error
	x.unsent, err = writeRest(up.fd, x.out, x.body)
	ls.state = stAwait
	ls.due = deadline(x.sent, p.o.RouteTimeout)
	return true, err == nil
}

// awaitStep reads x's response and, once the loop has it whole, sends it
// to the client and ends x.
func (fc *fastConn) awaitStep(w *tcpproxy.Watch) (r backReason, more bool) {
	ls, p, x := fc.ol.st, fc.p, fc.x
	switch {
	case fc.ol.aborted.Load():
		return backAwait, false
	case !w.Readable(upSide):
		return backNone, false
	}
	if ls.resp == nil {
		ls.resp, ls.rn = p.pools.bufs.Get().(*fastBuf), 0
	}
	n, err := readNow(ls.up.fd, ls.resp[ls.rn:])
	switch {
	case err == unix.EAGAIN:
		w.Drained(upSide)
		return backNone, false
	case err != nil:
		ls.rerr = os.NewSyscallError("read", err)
		return backAwait, false
	case n == 0:
		ls.rerr = io.EOF
		return backAwait, false
	}
	if ls.rn += n; ls.rn < len(ls.resp) && !w.Hup(upSide) {
		w.Drained(upSide)
	}
	rh := x.rh
	switch parseRespHead(ls.resp[:ls.rn], x.h.method, rh) {
	case respMore:
		if ls.rn == len(ls.resp) {
			return backAwait, false
		}
		return backNone, true
	case respDeclined:
		return backAwait, false
	}
	blen := rh.clen
	if bodiless(x.h.method, rh.status) {
		blen = 0
	}
	total := rh.size + int(blen)
	switch {
	case int64(rh.size)+blen > int64(len(ls.resp)) || ls.rn > total:
		return backAwait, false // a larger body, or bytes past the response
	case ls.rn < total:
		// The head is in, the body not yet whole: the loop relays only
		// whole responses, so it waits a moment for the rest (a head and
		// its body often come in two segments), then leaves the response
		// to the goroutine, which relays the head and streams the body;
		// a body that trickles would otherwise hold the head back until
		// it was whole or route_timeout ended it.
		if by := time.Now().Add(loopBodyWait); ls.due.IsZero() || by.Before(ls.due) {
			ls.due = by
		}
		return backNone, true
	}
	return fc.respondOnLoop(total, blen)
}

// loopBodyWait is how long a loop waits for the rest of a small
// response's body once its head is in.
const loopBodyWait = 10 * time.Millisecond

// respondOnLoop sends x's response, whole in resp, to the client and ends
// x.
func (fc *fastConn) respondOnLoop(total int, blen int64) (backReason, bool) {
	ls, p, x := fc.ol.st, fc.p, fc.x
	rh, info := x.rh, &x.info
	now := time.Now()
	info.UpstreamTime = now.Sub(x.sent)
	info.Status = rh.status
	ob := p.pools.bufs.Get().(*fastBuf)
	out := fc.fastResponseHead(ob[:0], ls.resp[:rh.size], rh, &x.h, info.UpstreamTime)
	body := ls.resp[rh.size:total]
	rest, err := writeRest(fc.fd, out, body)
	r := backNone
	switch {
	case err == unix.EAGAIN: // the client reads slowly: the goroutine waits for it
		ls.pending, ls.headLeft = rest, max(len(rest)-len(body), 0)
		r = backFlush
	case err != nil: // the client is gone; a failed write wrote nothing, so no status reached it
		info.Status = 0
		info.Flags |= DownstreamClosed
		r = backEnd
	}
	if r != backEnd {
		info.BodyBytes = blen // what flush did not write, it takes back
	}
	if r != backFlush {
		// Served whole: counted once written (the count is a Prometheus
		// counter, which must never go down), not the response that the
		// goroutine finishes.
		x.hst.onLoop.Add(1)
	}
	p.pools.bufs.Put(ob)
	p.pools.bufs.Put(ls.resp)
	ls.resp, ls.rn = nil, 0
	if r == backFlush {
		return r, false
	}
	fc.sendOff(x)
	p.finishFast(info)
	// Shutdown asks the connection to end after its current response
	// (its head said so if it came in time), as send's caller does: a
	// request pipelined behind it is not served.
	ends, upCloses := r == backEnd || x.h.closeConn || fc.closing.Load(), rh.close
	fc.end(x)
	fc.ol.misses = 0
	fc.releaseIn()
	ls.upDead = upCloses
	switch {
	case ends:
		return backEnd, false
	case upCloses:
		return backIdle, false
	}
	ls.idle(now, &p.o)
	return backNone, true
}

// resume finishes a request the loop sent and handed back, with the
// bytes of the response it read, on the fast path's usual steps.
func (fc *fastConn) resume(x *request) bool {
	ls := fc.ol.st
	up := ls.up
	ls.up = nil
	if x.sent.IsZero() { // not sent: up's host was removed (startOnLoop)
		up.close()
		return fc.send(x, nil)
	}
	if ls.rerr != nil || ls.rn > 0 {
		up.raw.ahead = append([]byte(nil), ls.resp[:ls.rn]...)
		up.raw.aheadErr = ls.rerr
	}
	if ls.resp != nil {
		fc.p.pools.bufs.Put(ls.resp)
		ls.resp, ls.rn = nil, 0
	}
	ls.rerr = nil
	fc.noteMiss()
	return fc.send(x, up)
}

// flush writes the end of a response the client did not take at once on
// the loop, and ends the request.
func (fc *fastConn) flush(x *request) bool {
	ls := fc.ol.st
	up := ls.up
	ls.up = nil
	keep := true
	if n, err := fc.out.Write(ls.pending); err != nil {
		x.info.BodyBytes = 0
		if n < ls.headLeft { // no status reached the client, as sendHead records
			x.info.Status = 0
		}
		keep = fc.clientFailed(&x.info, err)
	}
	ls.pending, ls.headLeft = nil, 0
	return fc.done(x, up, keep, !x.rh.close && !ls.upDead)
}

// noteMiss notes a request the loop handed back unfinished: the goroutine
// serves the next ones itself, twice as many after each miss in a row (up
// to 64), so that a connection whose requests the loop does not take does
// not go back and forth.
func (fc *fastConn) noteMiss() {
	ol := &fc.ol
	ol.misses = min(ol.misses+1, 6)
	ol.skip = 1 << ol.misses
}

// readNow reads what fd holds without waiting.
func readNow(fd int, p []byte) (int, error) {
	for {
		n, err := rawsys.Read(fd, p)
		if err != unix.EINTR {
			return n, err
		}
	}
}

// writeNow writes a and b with one system call (write when b is empty,
// else writev), without waiting.
func writeNow(fd int, a, b []byte) (int, error) {
	for {
		var n int
		var err error
		if len(b) == 0 {
			n, err = rawsys.Write(fd, a)
		} else {
			n, err = rawsys.Writev2(fd, a, b)
		}
		if err != unix.EINTR {
			return n, err
		}
	}
}

// writeRest writes a, then b, with one system call, without waiting. rest
// is a copy of what the socket did not take (nil when it took all), and
// err says why: EAGAIN for a short write.
func writeRest(fd int, a, b []byte) (rest []byte, err error) {
	n, err := writeNow(fd, a, b)
	if err == nil && n < len(a)+len(b) {
		err = unix.EAGAIN
	}
	if err != nil {
		rest = append(append([]byte(nil), a[min(n, len(a)):]...), b[max(n-len(a), 0):]...)
	}
	return rest, err
}
