// Package tcpproxy copies an intercepted TCP connection to its upstream and
// back.
//
// Both sides arrive as *net.TCPConn (New), or as bare descriptors, the
// upstream's connect still in progress (NewConnecting), and are handed to
// an epoll loop of the package's own (one per CPU, or SetLoops of them;
// see loop), which makes its system calls raw (rawsys): small bursts take one read and one write, bulk bursts are
// moved with splice(2), kernel to kernel, without copying them through
// user space. A FIN in one direction is
// passed on with a half-close, so a client that shuts down its sending
// side still receives the whole reply. A reset on one side resets the
// other. The idle timeout watches the kernel's own byte counters
// (TCP_INFO) instead of timing reads, which would cut a splice in the
// middle of a transfer.
//
//	res := tcpproxy.Proxy(ctx, client, upstreamConn, tcpproxy.Options{IdleTimeout: time.Hour})
//	log.Info("closed", "sent", res.Sent, "received", res.Received, "end", res.End)
package tcpproxy

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/detour-proxy/detour/internal/rawsys"
	"github.com/detour-proxy/detour/internal/upstream"
)

// DefaultIdleTimeout closes connections that moved no byte for this long.
const DefaultIdleTimeout = time.Hour

// End says why a proxied connection ended.
type End string

const (
	EndClosed        End = "closed"           // both sides finished with FIN
	EndIdle          End = "idle timeout"     // no byte moved for IdleTimeout
	EndDownstreamErr End = "downstream reset" // the client reset or failed
	EndUpstreamErr   End = "upstream reset"   // the server reset or failed
	EndCanceled      End = "canceled"         // ctx ended: shutdown or drain expired
	EndBrokenUnknown End = "connection error" // an error the kernel no longer attributes
	EndConnectFailed End = "connect failed"   // NewConnecting's connect failed or timed out (Result.Err says which)
)

// Options configures Proxy.
type Options struct {
	// IdleTimeout closes the pair after this long with no byte received or
	// acknowledged on either socket, counted from NewConnecting's connect's
	// completion (ConnectTimeout alone bounds the connect); zero means
	// DefaultIdleTimeout, negative disables it.
	IdleTimeout time.Duration
	// Logger receives debug events (half-closes); nil discards them.
	Logger *slog.Logger
	// Pipes lends the pipes bulk bursts are spliced through; nil makes
	// one per burst.
	Pipes *Pipes
	// OnLongLived, if set, runs once, on the loop, with the upstream
	// socket when the pair has lasted LongLivedAfter (detour turns on
	// upstream TCP keep-alive there, which short connections never need).
	// It may set socket options; it must not block, read or write.
	OnLongLived    func(upstreamFD int)
	LongLivedAfter time.Duration
	// ConnectTimeout bounds NewConnecting's connect; zero means none.
	ConnectTimeout time.Duration
	// OnConnected, if set, runs on the loop when NewConnecting's connect
	// has completed, before a byte is copied, with how long it took. It
	// must not block.
	OnConnected func(upstreamFD int, connectTime time.Duration)
	// UpstreamReset is, for New, the reset that reading how the upstream's
	// connect ended took from its socket (upstream.Dialer.Connect): the
	// server accepted, wrote and reset at once. The client gets what the
	// server sent, then the reset, and the pair ends as an upstream reset,
	// as NewConnecting's pairs do.
	UpstreamReset error
}

// Result reports what a proxied connection did.
type Result struct {
	Sent     int64 // client to upstream
	Received int64 // upstream to client
	End      End
	Err      error // the first non-EOF error, if any
}

// Proxy copies between client and upstream until both directions finish,
// one side fails, the idle timeout passes or ctx ends. It closes both.
func Proxy(ctx context.Context, client, upstream *net.TCPConn, o Options) Result {
	p := New(client, upstream, o)
	if ctx.Done() != nil {
		stop := context.AfterFunc(ctx, p.Cancel)
		defer stop()
	}
	res := make(chan Result, 1)
	p.Start(func(r Result) { res <- r })
	return <-res
}

// Pair is one proxied connection. New prepares it, Start runs it, Cancel
// ends it early.
//
//	p := tcpproxy.New(client, up, o)
//	p.Start(func(r tcpproxy.Result) { ... }) // returns at once
//	p.Cancel()                                // on shutdown: ends it with EndCanceled
type Pair struct {
	client, upstream Conn         // owners of the sockets, closed by the loop; nil for NewConnecting, whose pair owns c.fd and u.fd
	log              *slog.Logger // nil: no debug events
	idle             time.Duration
	pipes            *Pipes
	longLived        func(int)
	longAfter        time.Duration
	done             func(Result)

	// NewConnecting's pairs finish the upstream's connect on the loop.
	connecting     bool // until the upstream socket reported the connect's outcome
	connStart      time.Time
	connectTimeout time.Duration
	onConnected    func(int, time.Duration)

	mu      sync.Mutex // Cancel and Start come from other goroutines
	ended   End        // set once by the first terminal event
	started bool
	loop    *loop // set by Start

	// Owned by the loop goroutine once Start registered the pair.
	c, u     endpoint
	up, down flow // client to upstream, upstream to client
	watch    idleWatch
	closed   bool // both sockets closed, the result delivered
	queued   bool // in loop.again
}

// Conn is a socket New's pair takes over: a *net.TCPConn, or an *os.File
// of a socket (upstream.Dialer.Connect's), in Go's poller either way.
type Conn interface {
	syscall.Conn
	io.Closer
}

// New prepares a pair of connections for Start.
func New(client, upstream Conn, o Options) *Pair {
	if o.IdleTimeout == 0 {
		o.IdleTimeout = DefaultIdleTimeout
	}
	p := &Pair{client: client, upstream: upstream, idle: o.IdleTimeout, pipes: o.Pipes,
		longLived: o.OnLongLived, longAfter: o.LongLivedAfter}
	p.c.m, p.u.m = p, p
	p.up = flow{p: p, src: &p.c, dst: &p.u, from: "client"}
	p.down = flow{p: p, src: &p.u, dst: &p.c, from: "upstream", dir: 1}
	p.u.takeReset(o.UpstreamReset)
	if o.Logger != nil && o.Logger.Enabled(context.Background(), slog.LevelDebug) {
		p.log = o.Logger
	}
	return p
}

// NewConnecting prepares a pair of bare non-blocking sockets, which the
// pair now owns: the client's (listen.Listener.AcceptRaw) and the
// upstream's, with its connect in progress (upstream.Dialer.Start). The
// loop sees the connect complete (the socket turns writable) and only
// then copies, holding the client's bytes meanwhile. A connect that fails
// or outlasts o.ConnectTimeout ends the pair with EndConnectFailed, the
// client reset, as a refused direct connect would be. Neither socket
// enters Go's poller, which saves the system calls Go's accept, dial and
// close add, and no goroutine waits for the connect.
func NewConnecting(clientFD, upstreamFD int, o Options) *Pair {
	p := New(nil, nil, o)
	p.c.fd, p.u.fd = clientFD, upstreamFD
	p.connecting, p.connStart = true, time.Now()
	p.connectTimeout, p.onConnected = o.ConnectTimeout, o.OnConnected
	return p
}

// Start hands both connections to a loop and returns at once; when both
// directions have finished (or the pair was aborted) the loop closes both
// connections and calls done with the result, on the loop's goroutine,
// so done must not block. The loop uses the sockets' descriptors
// directly: the *net.TCPConns given to New must not be used after Start.
func (p *Pair) Start(done func(Result)) {
	p.done = done
	p.mu.Lock()
	defer p.mu.Unlock()
	p.started = true
	if p.ended != "" { // canceled before Start: Cancel closed both
		go done(p.resultLocked())
		return
	}
	l, err := pickLoop()
	if err == nil && p.client != nil { // New's: NewConnecting set the descriptors
		p.c.fd, err = ConnFD(p.client)
		if err == nil {
			p.u.fd, err = ConnFD(p.upstream)
		}
	}
	var connBy time.Time // read before the loop owns p.connecting
	if p.connecting && p.connectTimeout > 0 {
		connBy = p.connStart.Add(p.connectTimeout)
	}
	watch := p.idle > 0 || p.longLived != nil || !connBy.IsZero()
	if err == nil {
		// A connecting socket is writable once the connect is done.
		p.c.writable, p.u.writable = true, !p.connecting
		err = l.register(&p.c, &p.u)
	}
	if err != nil {
		p.ended, p.up.err = EndBrokenUnknown, err
		p.closeSockets(true)
		go done(p.resultLocked())
		return
	}
	p.loop = l
	if watch {
		p.watch.start(p, connBy)
	}
}

// Cancel ends the pair with EndCanceled (both sides reset) unless it
// already ended. It may be called at any time, also before Start or
// after the result was delivered.
func (p *Pair) Cancel() {
	p.mu.Lock()
	if p.ended != "" {
		p.mu.Unlock()
		return
	}
	if !p.started {
		p.ended = EndCanceled
		p.mu.Unlock()
		p.closeSockets(true)
		return
	}
	l := p.loop
	p.mu.Unlock()
	if l != nil {
		l.post(task{m: p, kind: taskCancel})
	}
}

// runTask runs a task posted to the pair's loop.
func (p *Pair) runTask(l *loop, k taskKind) {
	if p.closed {
		return
	}
	switch k {
	case taskCancel:
		p.abort(l, EndCanceled)
	case taskTimer:
		switch p.watch.check() {
		case EndIdle:
			quiet := p.quiet()
			if p.log != nil {
				p.log.Debug("idle timeout", "timeout", p.idle, "reset", !quiet)
			}
			p.finish(l, EndIdle, !quiet)
		case EndConnectFailed:
			p.up.err = fmt.Errorf("connect: %w after %v", os.ErrDeadlineExceeded, p.connectTimeout)
			p.abort(l, EndConnectFailed)
		}
	}
}

// quiet reports whether the pair is open both ways and nothing waits
// anywhere in it: no bytes held by either flow, and none unread, unsent or
// unacknowledged in either socket. An idle timeout then closes both sides
// with a FIN, as HAProxy and Envoy close an idle connection. A pair whose
// transfer stalled (a peer stopped reading, so bytes wait) is reset
// instead, which frees what waits at once rather than leaving it queued
// behind a FIN; so is a half-closed one, whose peer that may still send
// already had its FIN and would learn of the end only at its next write.
func (p *Pair) quiet() bool {
	for _, f := range [2]*flow{&p.up, &p.down} {
		if f.done || len(f.pend) > 0 || f.inPipe > 0 {
			return false
		}
	}
	return socketEmpty(p.c.fd) && socketEmpty(p.u.fd)
}

// copyBufSize is the largest burst copied through a buffer; a burst that
// fills it continues by splice.
const copyBufSize = 16 << 10

// copyBuffers holds the unwritten rest of a burst while its destination
// is full; the bytes are read into the loop's own buffer.
var copyBuffers = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// bulkNotSentLowat is the TCP_NOTSENT_LOWAT a flow's destination socket
// gets when the flow first fills the copy buffer (a bulk transfer; a
// connection that only ever sends small bursts never pays the system
// call). The socket then takes more only while less than 64 KiB of it
// waits unsent, where autotuning would queue megabytes, so the loop
// splices in smaller steps as the peer's ACKs drain it. In the lab the
// sender's retransmissions, nearly all spurious (the veth path reorders
// segments), fell 4–5 × and the transfers moved more for the same CPU
// per byte: one stream 1.07 ×, four 1.05 ×, in five rounds against the
// build without it (bench/RESULTS.md, 2026-12-05, session 16). It bounds
// what waits in the socket, not what is in flight: a long path is not
// slowed.
const bulkNotSentLowat = 64 << 10

// turnBudget is how many copy steps (a read, a write or a splice) a pair
// takes in one turn before the loop serves other events: a bulk transfer
// whose source never runs dry must not hold up the loop's other
// connections.
const turnBudget = 32

// flow is one direction's copy state.
type flow struct {
	p        *Pair
	src, dst *endpoint
	from     string  // the side src is, for logs
	pend     []byte  // read but not yet written: dst was full
	pb       *[]byte // the pooled buffer pend lives in
	pipe     *pipe   // held while a bulk burst is spliced
	inPipe   int     // bytes in pipe
	bulk     bool    // the last read filled the buffer: splice what follows
	lowat    bool    // dst got bulkNotSentLowat
	done     bool    // EOF passed on
	dir      int     // 0 client to upstream, 1 back: the index in loop.moved
	n        int64   // bytes written to dst
	err      error   // the error that ended the pair, if it was this flow's
}

// pump moves what both directions can move without waiting, and requeues
// the pair if it ran out of budget with work left.
func (p *Pair) pump(l *loop) {
	if p.connecting && !p.connected(l) {
		return
	}
	budget := turnBudget
	p.up.pump(l, &budget)
	p.down.pump(l, &budget)
	if p.closed {
		return
	}
	// A reset while nothing reads the socket (its direction is done, or
	// waits for a peer that stopped reading to take what it holds):
	// nothing else would notice it until the next write, or until that
	// peer reads again.
	switch {
	case p.c.errored && p.up.stalled():
		p.fail(l, &p.up, resetError(p.c.fd))
	case p.u.errored && p.down.stalled():
		p.fail(l, &p.down, resetError(p.u.fd))
	}
}

// stalled reports that the flow does not read its source until an event
// on its destination: it has finished, or what it holds waits for dst to
// take more. The bytes it holds would then be lost anyway, as they would
// be in the sender's own socket without a proxy.
func (f *flow) stalled() bool {
	return f.done || (len(f.pend) > 0 || f.inPipe > 0) && !f.dst.writable
}

// connected checks a connecting pair's upstream socket: it reports true
// once the connect succeeded, and ends the pair when it failed or the
// client reset meanwhile.
func (p *Pair) connected(l *loop) bool {
	switch {
	case p.u.writable: // the connect's outcome is in
		reset, err := upstream.ConnectOutcome(p.u.fd)
		if err != nil {
			p.up.err = err
			p.abort(l, EndConnectFailed)
			return false
		}
		// A reset: the connect completed, and the server reset the
		// connection before the loop got here. It is an upstream reset,
		// and what the server sent first is still queued, for the client.
		p.u.takeReset(reset)
		p.connecting = false
		if p.onConnected != nil {
			p.onConnected(p.u.fd, time.Since(p.connStart))
		}
		return true
	case p.c.errored:
		p.fail(l, &p.up, resetError(p.c.fd))
	}
	return false
}

// takeReset notes a reset that SO_ERROR took from the socket (nil: none):
// a read finds an end of stream after the bytes queued, and the flow
// fails there instead of passing a FIN on.
func (ep *endpoint) takeReset(reset error) {
	if reset != nil {
		ep.errored, ep.taken = true, reset
	}
}

// pump runs one direction until it must wait for an event, it ends, or
// the turn's budget is spent.
func (f *flow) pump(l *loop, budget *int) {
	p := f.p
	for !f.done && !p.closed {
		if *budget <= 0 {
			if !p.queued && (f.readyToWrite() || f.src.readable) {
				p.queued = true
				l.again = append(l.again, p)
			}
			return
		}
		*budget--
		var ok bool
		switch {
		case len(f.pend) > 0:
			ok = f.writePending(l)
		case f.inPipe > 0:
			ok = f.drainPipe(l)
		case f.bulk:
			ok = f.fillPipe(l)
		default:
			ok = f.readBurst(l)
		}
		if !ok {
			return
		}
	}
}

func (f *flow) readyToWrite() bool {
	return (len(f.pend) > 0 || f.inPipe > 0) && f.dst.writable
}

// readBurst reads what src holds into the loop's buffer and writes it to
// dst. A burst shorter than the buffer, with no FIN or error flagged, has
// emptied src: it is not read again until its next event.
func (f *flow) readBurst(l *loop) bool {
	if !f.src.readable {
		return false
	}
	n, err := rawsys.Read(f.src.fd, l.buf[:])
	switch {
	case err == unix.EINTR:
		return true
	case err == unix.EAGAIN:
		f.src.readable, f.src.urgent = false, false
		return false
	case err != nil:
		f.p.fail(l, f, os.NewSyscallError("read", err))
		return false
	case n == 0 && f.src.taken != nil: // the end of what came before a reset
		f.p.fail(l, f, f.src.taken)
		return false
	case n == 0:
		f.eof(l)
		return false
	}
	if n == len(l.buf) {
		f.bulk = true
		if !f.lowat {
			f.lowat = true
			// Best effort: without it the transfer only goes as before.
			rawsys.SetsockoptInt(f.dst.fd, unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT, bulkNotSentLowat)
		}
	} else if !f.src.hup && !f.src.urgent { // urgent: the read may have stopped at the mark
		f.src.readable = false
	}
	w := 0
	if f.dst.writable {
		w, err = write(f.dst.fd, l.buf[:n])
		if w, _ = f.wrote(l, w, err, "write"); f.p.closed {
			return false
		}
	}
	if w < n { // dst is full: keep the rest until it takes more
		f.pb = copyBuffers.Get().(*[]byte)
		f.pend = (*f.pb)[:copy(*f.pb, l.buf[w:n])]
		f.dst.writable = false
	}
	return true
}

// writePending writes what dst did not take before.
func (f *flow) writePending(l *loop) bool {
	if !f.dst.writable {
		return false
	}
	w, err := write(f.dst.fd, f.pend)
	w, ok := f.wrote(l, w, err, "write")
	if !ok {
		return false
	}
	f.pend = f.pend[w:]
	if len(f.pend) == 0 {
		copyBuffers.Put(f.pb)
		f.pb, f.pend = nil, nil
	}
	return true
}

// fillPipe splices what src holds into a pipe. An empty source ends the
// bulk burst and gives the pipe back: a waiting connection holds none.
func (f *flow) fillPipe(l *loop) bool {
	if !f.src.readable {
		return false
	}
	if f.pipe == nil {
		pp, err := f.p.pipes.get()
		if err != nil {
			// Out of descriptors (EMFILE, ENFILE) or pipe memory: copy
			// through the buffer instead, rather than end a connection
			// that works (HAProxy's splicing falls back the same way).
			f.bulk = false
			return true
		}
		f.pipe = pp
	}
	n, err := rawsys.Splice(f.src.fd, f.pipe.w, spliceChunk, unix.SPLICE_F_NONBLOCK|unix.SPLICE_F_MOVE)
	switch {
	case err == unix.EINTR:
		return true
	case err == unix.EAGAIN, err == nil && n == 0:
		f.p.pipes.put(f.pipe) // empty: the queue was (or EOF is next)
		f.pipe, f.bulk = nil, false
		if err == unix.EAGAIN {
			if f.src.urgent {
				return true // a splice stops at the urgent mark; a read passes it
			}
			f.src.readable = false
			return false
		}
		return true // the next read sees the EOF
	case err != nil:
		f.p.pipes.put(f.pipe)
		f.pipe = nil
		f.p.fail(l, f, os.NewSyscallError("splice", err))
		return false
	}
	f.inPipe = int(n)
	return true
}

// drainPipe splices the pipe's bytes into dst.
func (f *flow) drainPipe(l *loop) bool {
	if !f.dst.writable {
		return false
	}
	n, err := rawsys.Splice(f.pipe.r, f.dst.fd, f.inPipe, unix.SPLICE_F_NONBLOCK|unix.SPLICE_F_MOVE)
	m, ok := f.wrote(l, int(n), err, "splice")
	f.inPipe -= m
	return ok
}

// wrote accounts the outcome of a write or splice of n bytes into dst. It
// returns the bytes that went out, and false when the flow must wait for
// dst (full) or the pair failed.
func (f *flow) wrote(l *loop, n int, err error, op string) (int, bool) {
	switch {
	case err == unix.EINTR:
		return 0, true
	case err == unix.EAGAIN:
		f.dst.writable = false
		return 0, false
	case err != nil:
		// dst failed, reset most often. The write took the socket's
		// error, which would have ended the other flow's reads of dst
		// after the bytes dst's peer sent before its reset: deliver those
		// first, as that flow would have.
		f.other().salvage(l)
		f.p.fail(l, f, os.NewSyscallError(op, err))
		return 0, false
	}
	f.n += int64(n)
	l.moved[f.dir].Add(uint64(n))
	return n, true
}

// other is the flow the other way.
func (f *flow) other() *flow {
	if f == &f.p.up {
		return &f.p.down
	}
	return &f.p.up
}

// salvage copies what src still holds to dst just before the pair is
// reset: the last bytes src's peer sent before its reset, when a write
// into src met the reset first. Best effort: only when nothing of the
// flow waits (the bytes keep their order), and only what dst takes at
// once; the rest is lost with the reset, as in the peer's own socket.
func (f *flow) salvage(l *loop) {
	if f.done || len(f.pend) > 0 || f.inPipe > 0 || !f.dst.writable {
		return
	}
	for range turnBudget {
		n, err := rawsys.Read(f.src.fd, l.buf[:])
		if err != nil || n == 0 {
			return
		}
		w, err := write(f.dst.fd, l.buf[:n])
		if err != nil {
			return
		}
		f.n += int64(w)
		l.moved[f.dir].Add(uint64(w))
		if w < n {
			return
		}
	}
}

// eof passes a clean EOF on as a half-close, or ends the pair when the
// other direction has finished too: the close right after sends dst its
// FIN (the other direction read dst to its end, so nothing unread turns
// it into a reset), and a shutdown would be one more system call for the
// same packet.
func (f *flow) eof(l *loop) {
	p := f.p
	f.done = true
	if p.log != nil {
		p.log.Debug("half-close", "from", f.from)
	}
	if !p.up.done || !p.down.done {
		rawsys.Shutdown(f.dst.fd, unix.SHUT_WR)
		return
	}
	p.finish(l, EndClosed, false)
}

// fail ends the pair after an error on flow f: the kernel tells which side
// was reset.
func (p *Pair) fail(l *loop, f *flow, err error) {
	f.err = err
	end := EndBrokenUnknown
	switch {
	case isReset(p.c.fd):
		end = EndDownstreamErr
	case isReset(p.u.fd):
		end = EndUpstreamErr
	}
	p.abort(l, end)
}

// abort ends the pair at once; the peer of a failed side sees a reset, as
// it would without a proxy in between.
func (p *Pair) abort(l *loop, end End) { p.finish(l, end, true) }

// finish closes both sockets (resetting them when reset is set), frees
// what the pair holds and delivers the result.
func (p *Pair) finish(l *loop, end End, reset bool) {
	p.mu.Lock()
	if p.ended == "" {
		p.ended = end
	}
	p.mu.Unlock()
	p.watch.stop()
	p.closeSockets(reset) // also takes them out of the loop's epoll instance
	for _, f := range [2]*flow{&p.up, &p.down} {
		if f.pb != nil {
			copyBuffers.Put(f.pb)
			f.pb, f.pend = nil, nil
		}
		if f.pipe != nil {
			if f.inPipe > 0 {
				f.pipe.close() // bytes may be left in it
			} else {
				p.pipes.put(f.pipe)
			}
			f.pipe = nil
		}
	}
	p.closed = true
	l.release(&p.c, &p.u)
	p.done(p.result())
}

// write is write(2) that retries when interrupted.
func write(fd int, b []byte) (int, error) {
	for {
		n, err := rawsys.Write(fd, b) // 0 with an error
		if err != unix.EINTR {
			return n, err
		}
	}
}

func (p *Pair) result() Result {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.resultLocked()
}

func (p *Pair) resultLocked() Result {
	r := Result{Sent: p.up.n, Received: p.down.n, End: p.ended}
	r.Err = p.up.err
	if r.Err == nil {
		r.Err = p.down.err
	}
	return r
}

// closeSockets closes both sockets, with a reset when reset is set.
// It runs once per pair (finish, or Cancel before Start).
func (p *Pair) closeSockets(reset bool) {
	if p.client == nil { // NewConnecting's: the pair owns the descriptors
		for _, fd := range [2]int{p.c.fd, p.u.fd} {
			if reset {
				rawsys.SetLinger0(fd)
			}
			rawsys.Close(fd)
		}
		return
	}
	for _, c := range [2]Conn{p.client, p.upstream} {
		if reset {
			if fd, err := ConnFD(c); err == nil {
				rawsys.SetLinger0(fd)
			}
		}
		c.Close()
	}
}

// gone reports that the pair closed its sockets (a loop member).
func (p *Pair) gone() bool { return p.closed }
