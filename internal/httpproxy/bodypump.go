package httpproxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// bodyPump copies the rest of a request body from the client to the
// upstream on its own goroutine, so that the response is read, and
// relayed, while the body still comes, as Envoy and Go's Transport do: an
// upstream may answer before it has read the body (a 413 from a server
// that then stops reading, a response streamed while the upload goes on)
// and would otherwise wait for a body write that cannot finish.
//
// The route timeout starts when the body has gone out (Envoy's starts at
// the end of the downstream request): the pump sets the response head's
// read deadline then, unless the head is already in.
type bodyPump struct {
	fc   *fastConn
	up   *upLink
	rest int64
	info *RequestInfo // the request's record, which ended adds the body bytes read to

	handed   atomic.Int64 // body bytes read from the client and handed to the upstream's write
	stopping atomic.Bool  // stop interrupts the copy: its error is neither side's
	done     chan struct{}
	err      error // the copy's error (errClientBody: the client's side), read after done

	mu       sync.Mutex
	headSeen bool // the response head is in: the upstream's read deadline is the relay's
}

// errPumpStopped is the error of a copy that stop ended.
var errPumpStopped = errors.New("body copy stopped")

// startBody starts copying the body's last rest bytes to up.
func (fc *fastConn) startBody(up *upLink, rest int64, info *RequestInfo) *bodyPump {
	b := &bodyPump{fc: fc, up: up, rest: rest, info: info, done: make(chan struct{})}
	up.conn.SetReadDeadline(time.Time{}) // until the body has gone out
	go b.run()
	return b
}

func (b *bodyPump) run() {
	defer close(b.done)
	err := b.copy()
	if b.stopping.Load() {
		b.err = errPumpStopped
		return
	}
	b.err = err
	b.mu.Lock()
	defer b.mu.Unlock()
	ne, timedOut := errors.AsType[net.Error](err)
	timedOut = timedOut && ne.Timeout()
	switch {
	case errors.Is(err, errClientStalled):
		// The client sent nothing for the stream idle timeout: the
		// upstream must not take the cut body for a whole one; the
		// client is answered 408 (send).
		b.up.conn.Close()
	case errors.Is(err, errClientBody):
		// The client went away mid-body: the upstream must not take the
		// cut body for a whole one, nor the client wait for an answer.
		b.fc.gone.Store(true)
		b.up.conn.Close()
	case timedOut:
		// The upstream stopped reading for the stream idle timeout: no
		// answer to wait for, unless one is already in.
		if !b.headSeen {
			b.up.conn.SetReadDeadline(time.Unix(1, 0))
		}
	default:
		// Sent, or the upstream stopped taking the body (it closed, as a
		// server that answers early does): its answer is awaited.
		if rt := b.fc.p.o.RouteTimeout; rt > 0 && !b.headSeen {
			b.up.conn.SetReadDeadline(time.Now().Add(rt))
		}
	}
}

// copy sends the body's rest to the upstream. The stream idle timeout
// bounds each read and write (one idleDeadline for both: they renew
// together); stop's deadlines, and its flag checked before each read, end
// it.
func (b *bodyPump) copy() error {
	fc, up := b.fc, b.up.conn
	idle := idleDeadline{timeout: fc.p.o.StreamIdleTimeout}
	if idle.timeout <= 0 {
		fc.c.SetReadDeadline(time.Time{}) // the head's deadline does not bound the body
	}
	_, rerr, werr := copyN(handingWriter{up, &b.handed}, fc.c, b.rest, fc.p.copyBufs, func() bool {
		if dl, ok := idle.due(); ok {
			up.SetWriteDeadline(dl)
			fc.c.SetReadDeadline(dl)
		}
		return !b.stopping.Load()
	})
	fc.c.SetReadDeadline(time.Time{})
	if rerr == nil && werr == nil {
		up.SetWriteDeadline(time.Time{}) // the step's: the link may serve another request
	}
	switch {
	case werr != nil:
		return werr
	case errors.Is(rerr, os.ErrDeadlineExceeded):
		return errClientStalled // not stop's: run looks at stopping first
	case rerr != nil:
		return errClientBody
	}
	return nil
}

// errClientStalled: the client sent no byte of its body for the stream
// idle timeout. Like Envoy, detour answers 408 (flag SI) when no response
// has begun.
var errClientStalled = fmt.Errorf("%w: none of it for the stream idle timeout", errClientBody)

// headIn notes that x's final response head (status; closes: the
// upstream closes the connection after it) is in; a pump still copying
// goes on while the response is relayed (endBody ends it). An error
// status while the client still sends the body refuses it: the response
// says Connection: close (x.early), as RFC 9112 (9.3) has a client stop
// sending then; so does one from an upstream that closes, or that
// stopped taking the body, which will not take its rest. A client that
// went away mid-body ends the exchange (errClientBody).
func (fc *fastConn) headIn(x *request, status int, closes bool) error {
	b := fc.pump
	if b == nil {
		return nil
	}
	b.mu.Lock()
	b.headSeen = true
	b.mu.Unlock()
	failed := false
	select {
	case <-b.done:
		switch {
		case b.err == nil:
			fc.pumpEnded(b) // the whole body went out
			return nil
		case errors.Is(b.err, errClientBody):
			fc.pumpEnded(b)
			return b.err
		}
		failed = true // the upstream stopped taking the body
	default:
	}
	x.early = (status >= 400 || closes || failed) && b.handed.Load() < b.rest
	return nil
}

// bodyFailed is called when no response head for x could be read (err):
// it ends the pump and returns the error that explains the exchange's
// failure: the client's going away, the upstream's refusing the body, or
// err. A pump that read the whole body from the client leaves its stream
// at the next request: the connection may go on after the error reply,
// as when the body came with the head.
func (fc *fastConn) bodyFailed(x *request, err error) error {
	b := fc.pump
	if b == nil {
		return err
	}
	if clientClean, _ := fc.endBody(); clientClean && !x.h.closeConn {
		x.keepAfterError = true
	}
	if b.err != nil && b.err != errPumpStopped {
		return b.err
	}
	return err
}

// endBody ends the pump once the response has been relayed. A pump that
// has read the whole body from the client and is writing its end (the
// upstream answered as it took it, and the goroutine has not run since)
// is waited for, a second at most; one that still reads the client is
// stopped. clientClean reports that the client's stream is at a request
// boundary, upstreamTook that the upstream took the whole body: the
// connections that may go on.
func (fc *fastConn) endBody() (clientClean, upstreamTook bool) {
	b := fc.pump
	if b == nil {
		return true, true
	}
	select {
	case <-b.done:
	default:
		if b.handed.Load() == b.rest {
			b.up.conn.SetWriteDeadline(time.Now().Add(time.Second))
			<-b.done
			if b.err == nil {
				b.up.conn.SetWriteDeadline(time.Time{}) // for the link's next request
			}
			break
		}
		b.stopping.Store(true)
		past := time.Unix(1, 0)
		fc.c.SetReadDeadline(past)
		b.up.conn.SetWriteDeadline(past)
		<-b.done
		fc.c.SetReadDeadline(time.Time{})
	}
	fc.pumpEnded(b)
	return b.handed.Load() == b.rest && !errors.Is(b.err, errClientBody), b.err == nil
}

// pumpEnded retires the pump b, which has ended: the body bytes it read
// from the client join the request's record.
func (fc *fastConn) pumpEnded(b *bodyPump) {
	fc.pump = nil
	b.info.RequestBytes += b.handed.Load()
}

// handingWriter counts the bytes handed to w before the write: once the
// whole body is counted, the client's stream is at the next request,
// whatever the write then does.
type handingWriter struct {
	w      io.Writer
	handed *atomic.Int64
}

func (c handingWriter) Write(p []byte) (int, error) {
	c.handed.Add(int64(len(p)))
	return c.w.Write(p)
}
