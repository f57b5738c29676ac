// Package tcpproxy copies an intercepted TCP connection to its upstream and
// back.
//
// Both sides are *net.TCPConn: small bursts take one read and one write
// through a pooled buffer, bulk bursts are moved with splice(2), kernel to
// kernel, without copying them through user space. A FIN in one direction is passed on with CloseWrite, so a client
// that shuts down its sending side still receives the whole reply. A reset
// on one side resets the other. The idle timeout watches the kernel's own
// byte counters (TCP_INFO) instead of read deadlines, which would cut a
// splice in the middle of a transfer.
//
//	res := tcpproxy.Proxy(ctx, client, upstreamConn, tcpproxy.Options{IdleTimeout: time.Hour})
//	log.Info("closed", "sent", res.Sent, "received", res.Received, "end", res.End)
package tcpproxy

import (
	"context"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
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
)

// Options configures Proxy.
type Options struct {
	// IdleTimeout closes the pair after this long with no byte received or
	// acknowledged on either socket; zero means DefaultIdleTimeout, negative
	// disables it.
	IdleTimeout time.Duration
	// Logger receives debug events (half-closes); nil discards them.
	Logger *slog.Logger
	// Pipes lends the pipes bulk bursts are spliced through; nil makes
	// one per burst.
	Pipes *Pipes
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
	client, upstream *net.TCPConn
	log              *slog.Logger // nil: no debug events
	idle             time.Duration
	watch            idleWatch
	done             func(Result)
	left             atomic.Int32 // directions still copying
	up, down         half         // client to upstream, upstream to client

	sent, received       int64
	sentErr, receivedErr error

	mu     sync.Mutex
	ended  End // set once by the first terminal event
	failed bool
}

// New prepares a pair of connections for Start.
func New(client, upstream *net.TCPConn, o Options) *Pair {
	if o.IdleTimeout == 0 {
		o.IdleTimeout = DefaultIdleTimeout
	}
	p := &Pair{client: client, upstream: upstream, idle: o.IdleTimeout}
	p.up.src, p.up.dst = client, upstream
	p.down.src, p.down.dst = upstream, client
	p.up.pipes, p.down.pipes = o.Pipes, o.Pipes
	if o.Logger != nil && o.Logger.Enabled(context.Background(), slog.LevelDebug) {
		p.log = o.Logger
	}
	return p
}

// Start copies both ways, each direction in its own goroutine, and returns
// at once; when both directions have finished (or the pair was aborted)
// it closes both connections and calls done with the result, from the
// goroutine that finished last. The goroutines start with nothing on their
// stacks but the copy loop, so an idle connection costs two small stacks.
func (p *Pair) Start(done func(Result)) {
	p.done = done
	if p.idle > 0 {
		p.watch.start(p, p.idle)
	}
	p.left.Store(2)
	go p.copyClientToUpstream()
	go p.copyUpstreamToClient()
}

// Cancel ends the pair with EndCanceled (both sides reset) unless it
// already ended. It may be called at any time, also before Start or
// after the result was delivered.
func (p *Pair) Cancel() { p.abort(EndCanceled) }

func (p *Pair) copyClientToUpstream() {
	p.sent, p.sentErr = p.up.copy()
	p.finishHalf(p.upstream, "client", p.sentErr)
	p.halfDone()
}

func (p *Pair) copyUpstreamToClient() {
	p.received, p.receivedErr = p.down.copy()
	p.finishHalf(p.client, "upstream", p.receivedErr)
	p.halfDone()
}

// halfDone finishes the pair once both directions are done.
func (p *Pair) halfDone() {
	if p.left.Add(-1) != 0 {
		return
	}
	p.watch.stop()
	p.mu.Lock()
	if p.ended == "" {
		p.ended = EndClosed // a Cancel from now on changes nothing
	}
	p.mu.Unlock()
	p.client.Close()
	p.upstream.Close()
	p.done(p.result())
}

// copyBufSize is the largest burst copied through a buffer; a burst that
// fills it continues by splice.
const copyBufSize = 16 << 10

// copyBuffers is a cache of copy buffers shared by all connections: a
// buffer is held only between a read and its write, never while waiting.
var copyBuffers = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// half is one direction's copy state. It lives in the Pair, so a
// connection's copy loops allocate little beyond it.
type half struct {
	dst, src *net.TCPConn
	pipes    *Pipes
	sp       splicer
	n        int     // bytes of the last burst read (0: EOF)
	rerr     error   // the last read error
	bp       *[]byte // the pooled buffer of the last burst
}

// copy moves src to dst until src's EOF. Nothing is held while it waits
// for data: Go's splice keeps a pipe (two descriptors) for as long as it
// waits, which would cost an idle connection 6 descriptors instead of 2.
// A small burst — the common request/response shape — is copied with one
// read into a pooled buffer and one write (two system calls, like
// HAProxy); a burst that fills the buffer is bulk, and what is queued
// after it is spliced kernel to kernel (spliceQueued), for as long as the
// queue is not empty: a splice that finds it empty returns instead of
// waiting, and the pipe goes back to the free list.
func (h *half) copy() (int64, error) {
	rc, err := h.src.SyscallConn()
	if err != nil {
		return 0, err
	}
	dstRC, err := h.dst.SyscallConn()
	if err != nil {
		return 0, err
	}
	h.sp.init(dstRC, rc, h.pipes)
	var total int64
	readBurst := h.readBurst
	for {
		h.n, h.rerr = 0, nil
		err := rc.Read(readBurst)
		if err == nil {
			err = h.rerr
		}
		if err != nil || h.n == 0 {
			h.putBuf()
			return total, err // err == nil: EOF
		}
		n := h.n
		w, err := h.dst.Write((*h.bp)[:n])
		total += int64(w)
		h.putBuf()
		if err != nil {
			return total, err
		}
		if n < copyBufSize {
			continue
		}
		// Bulk: splice what is queued behind the full buffer, for as long
		// as more arrives; an empty queue goes back to a read (which waits
		// without a pipe).
		m, err := h.sp.spliceQueued()
		total += m
		if err != nil {
			return total, err
		}
	}
}

// readBurst is called by rc.Read, and again each time src becomes readable
// until it returns true; it reads into a pooled buffer (n == 0 at EOF) or
// sets rerr.
func (h *half) readBurst(fd uintptr) bool {
	h.bp = copyBuffers.Get().(*[]byte)
	for {
		m, err := unix.Read(int(fd), *h.bp)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			h.putBuf()
			return false // wait until readable
		case err != nil:
			h.rerr = os.NewSyscallError("read", err)
		default:
			h.n = m
		}
		return true
	}
}

// putBuf returns the burst buffer to the pool, once: a wait that fails
// after an EAGAIN must not put it back a second time (two connections
// would then share it).
func (h *half) putBuf() {
	if h.bp != nil {
		copyBuffers.Put(h.bp)
		h.bp = nil
	}
}

// finishHalf passes a clean EOF on as a half-close, and turns an error into
// an abort of the whole pair. When the other direction has already
// finished, both sockets are closed next and the close sends dst its FIN
// (the other direction read dst to its end, so nothing unread turns it
// into a reset): the shutdown would be one more system call for the same
// packet.
func (p *Pair) finishHalf(dst *net.TCPConn, from string, err error) {
	if err == nil {
		if p.log != nil {
			p.log.Debug("half-close", "from", from)
		}
		if p.left.Load() > 1 {
			dst.CloseWrite()
		}
		return
	}
	if p.aborted() {
		return
	}
	end := EndBrokenUnknown
	switch {
	case isReset(p.client):
		end = EndDownstreamErr
	case isReset(p.upstream):
		end = EndUpstreamErr
	}
	p.abort(end)
}

// abort ends the pair at once; the peer of a failed side sees a reset, as
// it would without a proxy in between.
func (p *Pair) abort(end End) {
	p.mu.Lock()
	if p.ended != "" {
		p.mu.Unlock()
		return
	}
	p.ended, p.failed = end, true
	p.mu.Unlock()
	p.client.SetLinger(0)
	p.upstream.SetLinger(0)
	p.client.Close()
	p.upstream.Close()
}

func (p *Pair) aborted() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.failed
}

func (p *Pair) result() Result {
	r := Result{Sent: p.sent, Received: p.received}
	p.mu.Lock()
	r.End = p.ended
	p.mu.Unlock()
	r.Err = p.sentErr
	if r.Err == nil {
		r.Err = p.receivedErr
	}
	return r
}
