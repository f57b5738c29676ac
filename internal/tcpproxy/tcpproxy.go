// Package tcpproxy copies an intercepted TCP connection to its upstream and
// back.
//
// Both sides must be *net.TCPConn so that the standard library moves the
// bytes with splice(2), kernel to kernel, without copying them through user
// space. A FIN in one direction is passed on with CloseWrite, so a client
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
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
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
	if o.IdleTimeout == 0 {
		o.IdleTimeout = DefaultIdleTimeout
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &pair{client: client, upstream: upstream, log: log}

	stopCtx := context.AfterFunc(ctx, func() { p.abort(EndCanceled) })
	defer stopCtx()
	if o.IdleTimeout > 0 {
		w := newIdleWatch(p, o.IdleTimeout)
		defer w.stop()
	}

	var wg sync.WaitGroup
	wg.Add(1)
	go p.copyUpstreamToClient(&wg)
	p.sent, p.sentErr = copyHalf(upstream, client)
	p.finishHalf(upstream, "client", p.sentErr)
	wg.Wait()

	p.client.Close()
	p.upstream.Close()
	return p.result()
}

// pair is one proxied connection's shared state.
type pair struct {
	client, upstream *net.TCPConn
	log              *slog.Logger

	sent, received       int64
	sentErr, receivedErr error

	mu     sync.Mutex
	ended  End // set once by the first terminal event
	failed bool
}

func (p *pair) copyUpstreamToClient(wg *sync.WaitGroup) {
	defer wg.Done()
	p.received, p.receivedErr = copyHalf(p.client, p.upstream)
	p.finishHalf(p.client, "upstream", p.receivedErr)
}

// copyBufSize is the largest burst copied through a buffer; a burst that
// fills it continues by splice.
const copyBufSize = 16 << 10

// copyBuffers is a cache of copy buffers shared by all connections: a
// buffer is held only between a read and its write, never while waiting.
var copyBuffers = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// copyHalf moves src to dst until src's EOF. Nothing is held while it
// waits for data: Go's splice keeps a pipe (two descriptors) for as long
// as it waits, which would cost an idle connection 6 descriptors instead
// of 2. A small burst — the common request/response shape — is copied with
// one read into a pooled buffer and one write (two system calls, like
// HAProxy); a burst that fills the buffer is bulk, and what is queued
// after it is spliced kernel to kernel (SIOCINQ bounds each splice so it
// never waits either).
func copyHalf(dst, src *net.TCPConn) (int64, error) {
	rc, err := src.SyscallConn()
	if err != nil {
		return 0, err
	}
	var (
		total int64
		n     int
		rerr  error
		bp    *[]byte
		lr    = &io.LimitedReader{R: src}
	)
	// readBurst is called by rc.Read, and again each time src becomes
	// readable until it returns true; it reads into a pooled buffer
	// (n == 0 at EOF) or sets rerr.
	readBurst := func(fd uintptr) bool {
		bp = copyBuffers.Get().(*[]byte)
		for {
			m, err := unix.Read(int(fd), *bp)
			switch {
			case err == unix.EINTR:
				continue
			case err == unix.EAGAIN:
				copyBuffers.Put(bp)
				return false // wait until readable
			case err != nil:
				rerr = os.NewSyscallError("read", err)
			default:
				n = m
			}
			return true
		}
	}
	queued := func(fd uintptr) bool {
		q, err := unix.IoctlGetInt(int(fd), unix.SIOCINQ)
		if err != nil {
			rerr = os.NewSyscallError("ioctl SIOCINQ", err)
		}
		lr.N = int64(q)
		return true
	}
	for {
		n, rerr = 0, nil
		err := rc.Read(readBurst)
		if err == nil {
			err = rerr
		}
		if err != nil {
			copyBuffers.Put(bp)
			return total, err
		}
		if n == 0 {
			copyBuffers.Put(bp)
			return total, nil // EOF
		}
		w, err := dst.Write((*bp)[:n])
		total += int64(w)
		copyBuffers.Put(bp)
		if err != nil {
			return total, err
		}
		if n < copyBufSize {
			continue
		}
		// Bulk: splice whatever is queued behind the full buffer.
		if err := rc.Control(func(fd uintptr) { queued(fd) }); err == nil && rerr == nil && lr.N > 0 {
			m, err := dst.ReadFrom(lr)
			total += m
			if err != nil && !errors.Is(err, io.EOF) {
				return total, err
			}
		}
	}
}

// finishHalf passes a clean EOF on as a half-close, and turns an error into
// an abort of the whole pair.
func (p *pair) finishHalf(dst *net.TCPConn, from string, err error) {
	if err == nil {
		p.log.Debug("half-close", "from", from)
		dst.CloseWrite()
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
func (p *pair) abort(end End) {
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

func (p *pair) aborted() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.failed
}

func (p *pair) result() Result {
	r := Result{Sent: p.sent, Received: p.received, End: EndClosed}
	p.mu.Lock()
	if p.ended != "" {
		r.End = p.ended
	}
	p.mu.Unlock()
	r.Err = p.sentErr
	if r.Err == nil {
		r.Err = p.receivedErr
	}
	return r
}
