package httpproxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/detour-proxy/detour/internal/rawsys"
	"github.com/detour-proxy/detour/internal/tcpproxy"

	"github.com/detour-proxy/detour/internal/upstream"
)

// The fast path forwards the common HTTP/1.1 request — origin-form, a
// usual method, no body or a Content-Length one, no upgrade — on the
// client connection's own goroutine: it parses the head in place (a
// strict subset, fasthead.go), writes it upstream with detour's fields,
// reads the response head on the same goroutine — in place when it is in
// a strict subset too (fastresp.go), else with http.ReadResponse — and
// streams the response back, splicing large bodies. net/http's server and
// ReverseProxy cost four goroutine hand-offs and ~140 allocations per
// request; this costs none of the hand-offs and a handful of allocations.
// Whatever it does not take (any other request, malformed ones included)
// goes, with the bytes already read, to the net/http path at a request
// boundary, and the connection stays there.

// fastBufSize bounds a request head the fast path takes; bigger heads go
// to net/http (which answers 431 past MaxRequestHeaderBytes).
const fastBufSize = 8 << 10

// maxResponseHead bounds an upstream response head, as the Transport's
// default MaxResponseHeaderBytes does.
const maxResponseHead = 10 << 20

// fastBuf is a read buffer for client bytes or an outgoing head.
type fastBuf [fastBufSize]byte

// fastPools are the fast path's pools, one set per Proxy: buffers are
// held only while they carry bytes.
type fastPools struct {
	bufs    sync.Pool // *fastBuf: client bytes, outgoing heads
	readers sync.Pool // *bufio.Reader: upstream response heads
	writers sync.Pool // *bufio.Writer: chunked response bodies
	// heads keeps parsed response heads off the goroutine's stack, which
	// would otherwise outgrow its first 8 KiB and stay grown on every idle
	// keep-alive connection.
	heads sync.Pool // *respHead
	// requests holds request records, as heads does: only a request in
	// flight needs one.
	requests sync.Pool // *request
}

func (fp *fastPools) init() {
	fp.bufs.New = func() any { return new(fastBuf) }
	fp.readers.New = func() any { return bufio.NewReaderSize(nil, 4<<10) }
	fp.writers.New = func() any { return bufio.NewWriterSize(nil, copyBufferSize) }
	fp.heads.New = func() any { return new(respHead) }
	fp.requests.New = func() any { return new(request) }
}

// fastConn is a client connection served by the fast path.
type fastConn struct {
	p               *Proxy
	c               *net.TCPConn
	rc              syscall.RawConn
	client, origDst netip.AddrPort
	clientIP        string
	id              uint64 // RequestInfo.ConnID
	key             hostKey
	start           time.Time
	first           *firstStart // the first request's start, when it began before ServeConn

	// in[r:w] are client bytes read and not yet used; in is taken from
	// fastBufs only while it holds some, so an idle keep-alive connection
	// holds no buffer.
	in   *fastBuf
	r, w int

	out   streamWriter
	heads int

	readFn  func(uintptr) bool // fc.readSome
	readN   int
	readErr error
	req     http.Request // what ReadResponse is told of the request (its method)

	// idle is set while waiting for a request head, so that Shutdown may
	// close the connection then; closing asks it to end after the current
	// response. cur is the upstream connection of the request in flight.
	idle, closing atomic.Bool
	cur           atomic.Pointer[upLink]
	// heading: a head spans reads (headReceiving), and the drain counts
	// it in flight (headCounted, in p.receiving) until the fast path takes
	// it or hands it to net/http, which waits for it. partial: heading was
	// set (goroutine only), so that a head read whole touches no atomic.
	heading atomic.Int32
	partial bool
	gone    atomic.Bool // watchClient saw the client reset

	x      *request  // the request in flight, from fastPools.requests
	idleAt time.Time // when a loop gave the connection back idle: the start of its idle timeout
	headBy time.Time // when the head handed to net/http unfinished must be complete (HeaderTimeout)
	fd     int       // c's descriptor, for a loop
	pin    *upLink   // the upstream connection kept for the next request, which a loop serves
	pump   *bodyPump // copying the request body while the response is awaited or relayed
	ol     onLoop    // while a loop serves the connection (onloop_linux.go)
}

// abort closes the client connection and the upstream one in use. A
// loop serving the connection is asked to hand it back first: only the
// connection's goroutine closes its sockets then. The upstream connection
// is taken out of cur, so that the goroutine knows it was closed (sendOff)
// and never pools it: a closed link's descriptor number may already be
// another socket's when alive or a loop would use it. ol.mu orders abort
// against entering a loop and against the lingering close's raw call on
// c's descriptor (lingers).
func (fc *fastConn) abort() {
	fc.closing.Store(true)
	ol := &fc.ol
	ol.mu.Lock()
	defer ol.mu.Unlock()
	ol.aborted.Store(true)
	if w := ol.w.Load(); w != nil {
		w.Wake()
		return
	}
	fc.c.Close()
	if l := fc.cur.Swap(nil); l != nil {
		l.conn.Close()
	}
}

// fastConn.heading's states.
const (
	headNone int32 = iota
	headReceiving
	headCounted
)

// receivingHead notes a head whose end has not arrived, before the wait
// for more of it.
func (fc *fastConn) receivingHead() {
	if !fc.partial {
		fc.partial = true
		fc.heading.Store(headReceiving)
	}
}

// passHeading ends heading as the head is handed over, and reports whether
// the drain counted it: the count goes to net/http's connection.
func (fc *fastConn) passHeading() (counted bool) {
	if !fc.partial {
		return false
	}
	fc.partial = false
	return fc.heading.Swap(headNone) == headCounted
}

// endHeading ends heading once the head is taken or the connection ends.
func (fc *fastConn) endHeading() {
	if fc.passHeading() {
		fc.p.receiving.Add(-1)
	}
}

// upLink is an upstream connection of the fast path, pooled per host.
type upLink struct {
	conn   *net.TCPConn
	rc     syscall.RawConn
	fd     int // conn's descriptor, for a loop
	h      *host
	lim    limitedReader
	reused bool
	since  time.Time      // idle since
	await  awaiter        // sendAwait's state
	raw    rawReader      // reads response heads and bodies read through br
	local  netip.AddrPort // conn's local address, for the records of the requests it carries
}

// limitedReader fails reads past n bytes: it bounds a response head. It
// repeats its first error: a head that peekResponse gave up on at a read
// error goes to http.ReadResponse, which must see that error, not what a
// second read of a reset socket says (EOF).
type limitedReader struct {
	r   io.Reader
	n   int64
	err error
	// scan, when set, sees every byte read (the heads http.ReadResponse
	// reads: exchange).
	scan *headScan
}

var errResponseHeadTooLarge = errors.New("response head too large")

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.err != nil {
		return 0, l.err
	}
	if l.n <= 0 {
		return 0, errResponseHeadTooLarge
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	l.err = err
	if l.scan != nil && l.scan.feed(p[:n]) >= 0 {
		l.scan = nil
	}
	return n, err
}

// serveFast serves c until it closes or a request needs the net/http
// path; then it returns the client bytes already read (the start of that
// request) and handOver true.
func (p *Proxy) serveFast(fc *fastConn) (rest []byte, handOver bool) {
	defer func() {
		if fc.in != nil && !handOver {
			fc.p.pools.bufs.Put(fc.in)
			fc.in = nil
		}
		if l := fc.unpin(); l != nil {
			fc.p.hosts.putLink(l)
		}
	}()
	if p.o.IsSelf != nil && p.o.IsSelf(fc.origDst) {
		return nil, true // net/http answers 508
	}
	for {
		end, err := fc.readHead()
		if err != nil {
			fc.endHeading()
			fc.readFailed(err)
			return nil, false
		}
		if end < 0 { // too big for the fast path's buffer
			return fc.handOver(), true
		}
		x := fc.takeRequest()
		ok := parseFastHead(&x.h, fc.in[fc.r:fc.w], end, p.o.MaxRequestHeaderBytes, p.o.MaxRequestHeaders, p.hdr, p.o.UseOriginalDstHeader)
		if !ok {
			fc.dropRequest()
			return fc.handOver(), true
		}
		fc.endHeading()
		fc.heads++
		if fc.ol.skip > 0 {
			fc.ol.skip--
		}
		if !fc.forward(x) || fc.closing.Load() {
			return nil, false
		}
		fc.releaseIn()
		if fc.pin != nil && !fc.serveOnLoop() { // keepLink kept the upstream connection for a loop
			return nil, false
		}
	}
}

// releaseIn gives in back to the pool once its bytes are used.
func (fc *fastConn) releaseIn() {
	if fc.in != nil && fc.r == fc.w {
		fc.p.pools.bufs.Put(fc.in)
		fc.in, fc.r, fc.w = nil, 0, 0
	}
}

// handOver gives the buffered client bytes to the net/http path.
func (fc *fastConn) handOver() []byte {
	if fc.in == nil {
		return nil
	}
	b := slices.Clone(fc.in[fc.r:fc.w])
	fc.p.pools.bufs.Put(fc.in)
	fc.in = nil
	return b
}

// readHead reads until a whole request head is buffered and returns its
// length, or -1 when it does not fit the buffer. Between requests it waits
// IdleTimeout; once the first byte of a head is there (or from the start
// of the connection), the head must be complete within HeaderTimeout.
func (fc *fastConn) readHead() (int, error) {
	p := fc.p
	var headStart time.Time
	if fc.heads == 0 {
		headStart = fc.start
	}
	// Of a head not complete in the bytes read so far: where the search
	// for its end goes on, and what was checked of it.
	from := 0
	var part partialHead
	for {
		if fc.in != nil {
			b := fc.in[fc.r:fc.w]
			if i := bytes.Index(b[from:], []byte("\r\n\r\n")); i >= 0 {
				return from + i + 4, nil
			}
			from = max(len(b)-3, 0)
			if len(b) == fastBufSize || !part.plausible(b, p.o.MaxRequestHeaderBytes, p.o.MaxRequestHeaders, p.hdr, p.o.UseOriginalDstHeader) {
				if !headStart.IsZero() {
					fc.headBy = headStart.Add(p.o.HeaderTimeout) // net/http's wait ends there too
				}
				return -1, nil // net/http's guard answers what it is
			}
		}
		buffered := fc.in != nil && fc.w > fc.r
		switch {
		case headStart.IsZero() && buffered:
			headStart = time.Now()
			fc.c.SetReadDeadline(headStart.Add(p.o.HeaderTimeout))
		case !buffered && fc.heads == 0:
			fc.c.SetReadDeadline(headStart.Add(p.o.HeaderTimeout))
		case !buffered:
			from := time.Now()
			if !fc.idleAt.IsZero() {
				from, fc.idleAt = fc.idleAt, time.Time{}
			}
			fc.c.SetReadDeadline(from.Add(p.o.IdleTimeout))
		}
		if !buffered {
			// Set after the deadline, read by Shutdown before it sets its own.
			fc.idle.Store(true)
			if fc.closing.Load() {
				return 0, net.ErrClosed
			}
		} else {
			fc.receivingHead()
		}
		err := fc.fill()
		fc.idle.Store(false)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) && (buffered || fc.heads == 0) && fc.headExpired(headStart) {
				held := 0
				if fc.in != nil {
					held = fc.w - fc.r
				}
				timeout := p.o.HeaderTimeout
				p.reportHeaderTimeout(fc.id, fc.client, fc.origDst, headStart, timeout, held)
			}
			return 0, err
		}
	}
}

// headExpired tells a head cut at HeaderTimeout from Shutdown's deadline
// for a connection it found idle: the drain does not cut a head being
// received, which is recorded HT on every path when its deadline comes.
func (fc *fastConn) headExpired(headStart time.Time) bool {
	return !fc.closing.Load() || !time.Now().Before(headStart.Add(fc.p.o.HeaderTimeout))
}

// fill reads what the socket holds into in[w:], taking a buffer from the
// pool only once bytes are there.
func (fc *fastConn) fill() error {
	fc.compact()
	fc.readN, fc.readErr = 0, nil
	err := fc.rc.Read(fc.readFn)
	if err == nil {
		err = fc.readErr
	}
	fc.w += fc.readN
	return err
}

// compact moves the unused client bytes to the start of in.
func (fc *fastConn) compact() {
	if fc.in != nil && fc.r > 0 {
		fc.w = copy(fc.in[:], fc.in[fc.r:fc.w])
		fc.r = 0
	}
}

// readSome is fill's callback (bound once, as fc.readFn): it reads into
// in[w:], taking the buffer from the pool for the read and giving it back
// if nothing came.
func (fc *fastConn) readSome(fd uintptr) bool {
	took := fc.in == nil
	if took {
		fc.in = fc.p.pools.bufs.Get().(*fastBuf)
	}
	for {
		m, err := rawsys.Read(int(fd), fc.in[fc.w:])
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			if took {
				fc.p.pools.bufs.Put(fc.in)
				fc.in = nil
			}
			return false
		case err != nil:
			fc.readErr = os.NewSyscallError("read", err)
		case m == 0:
			fc.readErr = io.EOF
		default:
			fc.readN = m
		}
		if fc.readErr != nil && took {
			fc.p.pools.bufs.Put(fc.in)
			fc.in = nil
		}
		return true
	}
}

// readFailed ends a connection whose next head did not come.
func (fc *fastConn) readFailed(err error) {
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrDeadlineExceeded) {
		return
	}
	fc.p.log.Debug("client read failed", "client", fc.client, "err", err)
}

// request is one request's state between the fast path's steps, kept in
// the fastConn so that a request the loop started (loop_linux.go) can be
// finished by the connection's goroutine.
type request struct {
	h              fastHead
	info           RequestInfo
	hst            *host
	headBuf        *fastBuf  // holds out
	out            []byte    // the upstream head
	body           []byte    // the body bytes read with the head
	inBody         int64     // len(body)
	replayable     bool      // may be sent again on a fresh connection
	keepAfterError bool      // the client connection may go on after a failed exchange
	early          bool      // the upstream answered before it took the whole body: neither connection goes on
	rh             *respHead // the response head, when parsed in place (res == nil)
	scan           headScan  // the framing of a head http.ReadResponse reads

	// Set when the loop sent the request and handed it back unfinished.
	sent   time.Time
	unsent []byte // the end of out (and body) the socket did not take
}

// begin starts forwarding x.h: the request's record, its host and its
// upstream head; it consumes the head and the body bytes read with it.
func (fc *fastConn) begin(x *request) {
	p := fc.p
	h := &x.h
	x.info = RequestInfo{
		ConnID: fc.id, Start: fc.first.take(), Client: fc.client, OrigDst: fc.origDst, Dst: fc.origDst,
		Proto: "HTTP/1.1", Method: h.method,
	}
	x.info.Host, x.info.Path, x.info.RequestID = requestStrings(h.host, h.target, h.reqID)
	x.hst = p.hosts.acquire(fc.key)
	x.headBuf = p.pools.bufs.Get().(*fastBuf)
	x.out = fc.requestHead(x.headBuf[:0], h, x.info.RequestID)
	fc.r += h.size
	x.inBody = min(int64(fc.w-fc.r), h.clen)
	x.body = fc.in[fc.r : fc.r+int(x.inBody)]
	fc.r += int(x.inBody)
	x.info.RequestBytes = x.inBody // a body pump adds the rest it reads
	x.replayable = h.clen == x.inBody && (idempotent(h.method) || h.idemKey)
	// After a failed exchange, part of the body may still be in the
	// client's stream: the connection cannot carry another request.
	x.keepAfterError = !h.closeConn && h.clen == x.inBody
	x.rh = p.pools.heads.Get().(*respHead)
	x.sent, x.unsent, x.early = time.Time{}, nil, false
}

// idempotent reports whether a request of this method (one of
// fastMethods) may be sent twice with the effect of once (RFC 9110,
// 9.2.2): a request that went out and got no byte back may be replayed
// on another connection. Go's Transport replays only the safe methods
// (and requests with an idempotency key); RFC 9110 counts PUT and DELETE
// as idempotent too.
func idempotent(method string) bool {
	switch method {
	case "GET", "HEAD", "OPTIONS", "PUT", "DELETE":
		return true
	}
	return false
}

// requestStrings returns a request's host, target and x-request-id (the
// client's when sane, a new UUID otherwise) as strings cut from one
// allocation: the record outlives the buffer the head was read into, and
// one string costs a third of three. Out of line, so that its buffers are
// not part of the frames beneath every request (internal/proxy's
// presizeStack).
//
//go:noinline
func requestStrings(host, target, clientID []byte) (string, string, string) {
	var uuid [36]byte
	id := clientID
	if !saneRequestID(id) {
		newUUID(&uuid)
		id = uuid[:]
	}
	var b strings.Builder
	b.Grow(len(host) + len(target) + len(id))
	b.Write(host)
	b.Write(target)
	b.Write(id)
	s := b.String()
	return s[:len(host)], s[len(host) : len(host)+len(target)], s[len(host)+len(target):]
}

// end releases what begin took, and x itself.
func (fc *fastConn) end(x *request) {
	p := fc.p
	p.hosts.release(x.hst)
	p.pools.bufs.Put(x.headBuf)
	p.pools.heads.Put(x.rh)
	*x = request{}
	p.pools.requests.Put(x)
	fc.x = nil
}

// takeRequest takes the record of the connection's next request.
func (fc *fastConn) takeRequest() *request {
	fc.x = fc.p.pools.requests.Get().(*request)
	return fc.x
}

// dropRequest gives back the record of a request that did not begin.
func (fc *fastConn) dropRequest() {
	*fc.x = request{}
	fc.p.pools.requests.Put(fc.x)
	fc.x = nil
}

// forward sends one request upstream and its response back. It reports
// whether the client connection may carry another request.
func (fc *fastConn) forward(x *request) bool {
	fc.begin(x)
	defer fc.end(x)
	return fc.send(x, nil)
}

// send runs the exchanges of a begun request until one answers it (a
// pooled connection the upstream closed is replaced once for a replayable
// request) and relays the response, or answers it from detour. sentOn is
// the upstream connection the loop already sent it on, or nil. It
// reports whether the client connection may carry another request.
func (fc *fastConn) send(x *request, sentOn *upLink) bool {
	p := fc.p
	h, info, hst := &x.h, &x.info, x.hst
	var (
		up  *upLink
		res *http.Response
		br  *bufio.Reader
		err error
	)
	for attempt := 0; ; attempt++ {
		if attempt == 0 && sentOn != nil {
			up = sentOn // in cur since the loop sent x (or taken by abort)
		} else {
			if attempt > 0 {
				x.forgetAttempt()
			}
			up, err = fc.link(hst, attempt > 0)
			if err != nil {
				info.Flags |= UpstreamConnectFailure
				fc.localFailure(info, err, !x.keepAfterError)
				return x.keepAfterError
			}
			if h := p.hooks.beforeSendOn; h != nil {
				h(fc, up)
			}
			fc.sendOn(x, up)
			if fc.ol.aborted.Load() {
				// abort came before up was in cur (while it was dialed,
				// say) and did not close it: closed here, the exchange
				// fails at once instead of waiting up to RouteTimeout for
				// an answer nobody reads, holding Close. abort sets
				// aborted before it takes cur: one sees the other. (Not
				// in sendOn: on a loop, only the goroutine closes.)
				up.conn.Close()
			}
		}
		br, res, err = fc.exchange(up, x, attempt == 0 && sentOn != nil)
		if err == nil {
			break
		}
		fc.sendOff(x)
		up.close()
		if errors.Is(err, errClientStalled) {
			// Envoy's answer to a request stream idle for
			// stream_idle_timeout before its response began.
			info.Flags |= StreamIdleTimeout
			p.log.Info("stream idle timeout: the client stopped sending its request body; closing", "client", fc.client,
				"dst", info.Dst, "timeout", p.o.StreamIdleTimeout)
			fc.localReply(info, http.StatusRequestTimeout, "stream timeout", true)
			p.finishFast(info)
			return false
		}
		if errors.Is(err, errClientBody) || errors.Is(err, errClientGone) {
			info.Flags |= DownstreamClosed
			p.finishFast(info)
			return false
		}
		var ne net.Error
		timedOut := errors.As(err, &ne) && ne.Timeout()
		// A pooled connection the upstream had closed: replay once a
		// request it did not get, or one that is safe to get twice. Not
		// after the route timeout, which a slow upstream would pay twice.
		replay := x.replayable || errors.Is(err, errNothingSent)
		if up.reused && replay && attempt == 0 && errors.Is(err, errNoResponse) && !timedOut && !fc.ol.aborted.Load() {
			p.log.Debug("pooled connection closed by the upstream; retrying the request once", "host", hst.key, "err", err)
			hst.retries.Add(1)
			continue
		}
		switch {
		case timedOut:
			info.Flags |= UpstreamTimeout
			fc.localReply(info, http.StatusGatewayTimeout, msgTimeout, !x.keepAfterError)
		default:
			flag, code, reason := upstreamReset(err)
			info.Flags |= flag
			fc.localReply(info, code, msgReset+reason, !x.keepAfterError)
		}
		p.logUpstreamError(info, err)
		p.finishFast(info)
		return x.keepAfterError
	}
	info.UpstreamTime = time.Since(x.sent)
	if x.early {
		h.closeConn = true // the rest of the body is still in the client's stream: Connection: close
	}
	keep, upOK := fc.relay(up, br, res, x.rh, h, info)
	// An answer that came before the upstream took the whole body: the
	// rest may still be in the client's stream, or not in the upstream's.
	clientClean, upstreamTook := fc.endBody()
	keep, upOK = keep && clientClean, upOK && upstreamTook
	if len(up.raw.ahead) > 0 || up.raw.aheadErr != nil { // bytes a loop read past the response
		upOK = false
	}
	fc.p.pools.readers.Put(br)
	upCloses := x.rh.close
	if res != nil {
		upCloses = res.Close
	}
	return fc.done(x, up, keep, upOK && !upCloses && !x.early)
}

// sendOn notes that x goes out on up now.
func (fc *fastConn) sendOn(x *request, up *upLink) {
	x.hst.inUse.Add(1)
	fc.cur.Store(up)
	x.sent = time.Now()
	x.info.Reused, x.info.UpstreamLocal = up.reused, up.local
}

// forgetAttempt clears what x's record says of a failed attempt's
// upstream connection before the next: the record describes the last
// attempt, as Envoy's %UPSTREAM_LOCAL_ADDRESS% does, even one whose
// connect failed (TestRetryRefusedRecordsLastAttempt).
func (x *request) forgetAttempt() {
	x.info.Reused, x.info.UpstreamLocal = false, netip.AddrPort{}
}

// sendOff notes that x no longer occupies its upstream connection: the
// inverse of sendOn. It reports false when abort took the connection
// (and closed it) first: then it must not be reused.
func (fc *fastConn) sendOff(x *request) (ours bool) {
	x.hst.inUse.Add(-1)
	return fc.cur.Swap(nil) != nil
}

// done ends x, whose response went to the client (or failed to): up is
// kept or pooled when reusable, else closed, and x is recorded. It reports
// whether the client connection may carry another request.
func (fc *fastConn) done(x *request, up *upLink, keep, reusable bool) bool {
	if h := fc.p.hooks.beforeDone; h != nil {
		h(fc)
	}
	if !fc.sendOff(x) || fc.gone.Load() {
		// abort took up and closed it as the response ended, or
		// watchClient saw the client reset and closed up, maybe after the
		// body had all been copied (between the last write and stop):
		// its descriptor is closed, and alive and the loops would use a
		// number the kernel may have given to another socket.
		keep, reusable = false, false
	}
	keep = keep && !x.h.closeConn
	if reusable {
		fc.keepLink(up, keep)
	} else {
		up.close()
	}
	fc.p.finishFast(&x.info)
	return keep
}

var (
	errClientBody = errors.New("client went away while sending the request body")
	errClientGone = errors.New("client went away")
)

// errNoResponse marks an exchange whose upstream connection was closed or
// reset before a byte of the response came back, as a server that closed
// an idle keep-alive connection does: the request was not processed.
var errNoResponse = errors.New("no response")

// errNothingSent marks an exchange whose first write failed before any
// byte of the request went out: the upstream cannot have seen it, so it
// may be sent again whatever its method, as Go's Transport does (its
// nothingWrittenError).
var errNothingSent = errors.New("nothing of the request was sent")

// exchange writes the request (head, buffered body, rest of the body from
// the client) to up and reads the response head, relaying informational
// responses. The final head is parsed in place into rh (its bytes stay in
// br for relay; res is nil) when peekResponse takes it, else read by
// http.ReadResponse (res). Errors from the client's side are errClientBody.
func (fc *fastConn) exchange(up *upLink, x *request, sent bool) (br *bufio.Reader, res *http.Response, err error) {
	p := fc.p
	h, head, body, inBody, rh := &x.h, x.out, x.body, x.inBody, x.rh
	var werr error // writing the request failed
	switch rest := h.clen - inBody; {
	case sent:
		// By the loop, which may have read the start of the response
		// (up.raw returns it first).
		if rt := p.o.RouteTimeout; rt > 0 {
			up.conn.SetReadDeadline(x.sent.Add(rt))
		}
		if len(x.unsent) > 0 {
			// The upstream did not take the whole request at once: as
			// for a body, StreamIdleTimeout bounds the wait for it (a
			// pooled connection may also hold an older deadline).
			if sit := p.o.StreamIdleTimeout; sit > 0 {
				up.conn.SetWriteDeadline(time.Now().Add(sit))
			}
			if n, err := up.conn.Write(x.unsent); err != nil {
				err = unsentErr(err, n == 0 && len(x.unsent) == len(head)+len(body))
				return nil, nil, fmt.Errorf("%w: %w", errNoResponse, err)
			}
		}
	case rest > 0:
		if sit := p.o.StreamIdleTimeout; sit > 0 { // the upstream may not take the body
			up.conn.SetWriteDeadline(time.Now().Add(sit))
		}
		if n, err := (&net.Buffers{head, body}).WriteTo(up.conn); err != nil {
			werr = fmt.Errorf("%w: %w", errNoResponse, err)
			if ne, ok := errors.AsType[net.Error](werr); ok && ne.Timeout() {
				return nil, nil, werr // the upstream stopped reading: no answer to wait for
			}
			if n == 0 && up.reused {
				// A pooled connection the upstream closed: nothing went
				// out, so no answer to wait for, and the body's rest is
				// still unread in the client's stream.
				return nil, nil, fmt.Errorf("%w: %w: %w", errNoResponse, errNothingSent, err)
			}
			// The upstream stopped taking the request, as a server that
			// answers early (413, 401) and closes does (RFC 9112, 9.3):
			// relay its answer if it sent one, then close the client
			// connection, whose body is still unread.
			x.early = true
			if rt := p.o.RouteTimeout; rt > 0 {
				up.conn.SetReadDeadline(time.Now().Add(rt))
			}
		} else {
			// The rest of the body goes on its own goroutine while the
			// answer is awaited here (see bodyPump).
			fc.pump = fc.startBody(up, rest, &x.info)
		}
	default:
		// The whole request is here: write it and wait for the answer in
		// one raw read (sendAwait), the route timeout bounding the wait.
		if rt := p.o.RouteTimeout; rt > 0 {
			up.conn.SetReadDeadline(time.Now().Add(rt))
		}
		if err := up.sendAwait(head, body, p.o.StreamIdleTimeout); err != nil {
			return nil, nil, fmt.Errorf("%w: %w", errNoResponse, err)
		}
	}
	br = fc.p.pools.readers.Get().(*bufio.Reader)
	up.lim = limitedReader{r: &up.raw, n: maxResponseHead}
	br.Reset(&up.lim)
	req := &fc.req
	req.Method = h.method
	for n1xx := 0; ; n1xx++ {
		if peekResponse(br, h.method, rh) {
			// The route timeout's read deadline stays until relay reads
			// more than br holds (or the next request sets its own).
			up.lim.n = 1<<63 - 1
			if err := fc.headIn(x, rh.status, rh.close); err != nil {
				fc.p.pools.readers.Put(br)
				return nil, nil, err
			}
			return br, nil, nil
		}
		res, err := fc.readResponse(br, up, x)
		if err != nil {
			fc.p.pools.readers.Put(br)
			if werr != nil {
				return nil, nil, werr // no early answer: the write's error, as before
			}
			if up.lim.err != nil && !x.scan.done {
				err = headCut(up.lim.err, err)
			}
			if up.lim.n == maxResponseHead && n1xx == 0 {
				err = fmt.Errorf("%w: %w", errNoResponse, err)
			}
			return nil, nil, fc.bodyFailed(x, err)
		}
		if !validStatus(res.StatusCode) {
			fc.p.pools.readers.Put(br)
			fc.endBody()
			return nil, nil, errStatusOutOfRange
		}
		if res.StatusCode >= 200 || res.StatusCode == http.StatusSwitchingProtocols {
			up.lim.n = 1<<63 - 1 // as above
			if res.StatusCode == http.StatusSwitchingProtocols {
				fc.p.pools.readers.Put(br)
				fc.endBody()
				return nil, nil, errors.New("upstream switched protocols without an upgrade request")
			}
			if x.scan.conflict {
				fc.p.pools.readers.Put(br)
				fc.endBody()
				return nil, nil, errFramingConflict
			}
			if err := fc.headIn(x, res.StatusCode, res.Close); err != nil {
				fc.p.pools.readers.Put(br)
				return nil, nil, err
			}
			return br, res, nil
		}
		if res.StatusCode == http.StatusContinue {
			// The fast path takes no Expect request, so this 100 answers
			// nothing the client asked: dropped, as on the net/http path
			// (recorder.WriteHeader) and as Envoy drops an upstream's 100
			// unless proxy_100_continue is set.
			continue
		}
		// 102, 103 Early Hints: relay and read on, as many as come (RFC
		// 9110, 15.2: a proxy forwards them; net/http's Transport, under
		// ReverseProxy's trace, counts none either): up.lim bounds the
		// heads' bytes together, RouteTimeout their time.
		b := fc.p.pools.bufs.Get().(*fastBuf)
		out := appendStatusLine(b[:0], res.StatusCode, statusReason(res.Status))
		out = appendHeader(out, res.Header, nil)
		out = append(out, "\r\n"...)
		_, werr := fc.out.Write(out)
		fc.p.pools.bufs.Put(b)
		if werr != nil {
			fc.p.pools.readers.Put(br)
			fc.endBody()
			return nil, nil, errClientGone
		}
	}
}

// readResponse reads the response head at br's start, one that
// peekResponse declined, with http.ReadResponse; x.scan follows the same
// bytes (those br holds, then those read through up.lim), to tell a head
// with both Content-Length and Transfer-Encoding (errFramingConflict),
// which http.ReadResponse takes without a trace.
func (fc *fastConn) readResponse(br *bufio.Reader, up *upLink, x *request) (*http.Response, error) {
	x.scan = headScan{}
	buffered, _ := br.Peek(br.Buffered())
	if x.scan.feed(buffered) < 0 {
		up.lim.scan = &x.scan
		defer func() { up.lim.scan = nil }()
	}
	return http.ReadResponse(br, &fc.req)
}

// copyN copies n bytes from src to dst through a pooled buffer, calling
// step before each read; a false step ends the copy (rerr
// errPumpStopped). rerr is src's error (io.ErrUnexpectedEOF when it ended
// early), werr dst's.
func copyN(dst io.Writer, src io.Reader, n int64, bufs *bufferPool, step func() bool) (copied int64, rerr, werr error) {
	buf := bufs.Get()
	defer bufs.Put(buf)
	for n > 0 {
		if !step() {
			return copied, errPumpStopped, nil
		}
		m, err := src.Read(buf[:min(n, int64(len(buf)))])
		if m > 0 {
			w, err := dst.Write(buf[:m])
			copied += int64(w)
			if err != nil {
				return copied, nil, err
			}
			n -= int64(m)
		}
		if err == io.EOF && n > 0 {
			err = io.ErrUnexpectedEOF
		}
		if err != nil && n > 0 {
			return copied, err, nil
		}
	}
	return copied, nil, nil
}

// requestHead builds the upstream request head: the client's request line
// and fields, less hop-by-hop fields and the steering header, plus
// X-Forwarded-For (appended), X-Forwarded-Proto and X-Request-Id.
func (fc *fastConn) requestHead(out []byte, h *fastHead, reqID string) []byte {
	p := fc.p
	b := fc.in[fc.r : fc.r+h.size-2] // without the final CRLF
	leave := p.o.XForwardedFor == XFFLeave
	at := 0
	for _, d := range h.drops[:h.nDrops] {
		if leave && d.xff {
			continue
		}
		out = append(out, b[at:d.start]...)
		at = int(d.end)
	}
	out = append(out, b[at:]...)
	if !leave {
		out = append(out, "X-Forwarded-For: "...)
		for _, v := range h.xff {
			out = append(append(out, v...), ", "...)
		}
		out = append(append(out, fc.clientIP...), "\r\n"...)
	}
	out = append(out, "X-Forwarded-Proto: http\r\nX-Request-Id: "...)
	out = append(append(out, reqID...), "\r\n\r\n"...)
	return out
}

// link returns an upstream connection to the host: a pooled one, the
// pre-dialed one, or a new one — always a new one when fresh (a replay:
// the upstream that closed one pooled connection unseen by the pool's
// check may have closed the others the same way, as a restarting server
// or a common idle timeout does).
func (fc *fastConn) link(h *host, fresh bool) (*upLink, error) {
	p := fc.p
	if fresh {
		return fc.dial(h)
	}
	if l := fc.unpin(); l != nil {
		switch {
		case l.h != h:
			p.hosts.putLink(l)
		case l.alive(): // as takeLink checks a pooled one
			l.reuse()
			return l, nil
		default:
			l.close()
		}
	}
	if l := p.hosts.takeLink(h); l != nil {
		l.reuse()
		if p.debug() {
			p.log.Debug("reusing connection", "host", h.key, "local", l.conn.LocalAddr())
		}
		return l, nil
	}
	return fc.dial(h)
}

// dial opens a new upstream connection to h.
func (fc *fastConn) dial(h *host) (*upLink, error) {
	conn, err := h.connect(context.Background())
	if err != nil {
		return nil, err
	}
	return newUpLink(conn, h), nil
}

// reuse notes that l carries another request.
func (l *upLink) reuse() {
	l.reused = true
	l.h.reuses.Add(1)
}

// alive reports whether a pooled connection is still open and quiet: the
// upstream neither closed it nor sent anything unasked. The caller owns
// the link (out of the pool), so nothing closes its descriptor meanwhile:
// the peek uses it directly, without a closure for RawConn.Control, which
// would cost two allocations per request taken from the pool. A link
// whose descriptor is unknown (-1) fails the peek (EBADF): not reused.
func (l *upLink) alive() bool {
	var b [1]byte
	_, err := rawsys.Peek(l.fd, b[:])
	return err == unix.EAGAIN
}

func newUpLink(conn *net.TCPConn, h *host) *upLink {
	rc, _ := conn.SyscallConn() // never fails for a *net.TCPConn
	fd, _ := tcpproxy.ConnFD(conn)
	l := &upLink{conn: conn, rc: rc, h: h, fd: fd, local: localAddr(conn)}
	l.raw.init(rc)
	return l
}

func (l *upLink) close() {
	l.h.open.Add(-1)
	l.conn.Close()
}

// relay writes the response head and body to the client: the head read
// by http.ReadResponse (res), or else the one parsed in place (rh, still
// in br). keep reports whether the client connection may go on, upOK
// whether the upstream one may be reused.
func (fc *fastConn) relay(up *upLink, br *bufio.Reader, res *http.Response, rh *respHead, h *fastHead, info *RequestInfo) (keep, upOK bool) {
	b := fc.p.pools.bufs.Get().(*fastBuf)
	defer func() { fc.p.pools.bufs.Put(b) }()
	var out []byte
	var n int64 // the body's length; -1: chunked or close-delimited
	if res == nil {
		head, _ := br.Peek(rh.size)
		info.Status, n = rh.status, rh.clen
		out = fc.fastResponseHead(b[:0], head, rh, h, info.UpstreamTime)
		br.Discard(rh.size)
	} else {
		info.Status, n = res.StatusCode, res.ContentLength
		out = fc.responseHead(b[:0], res, h, info.UpstreamTime)
	}
	noBody := bodiless(h.method, info.Status)

	var err error
	switch {
	case noBody:
		if err = fc.sendHead(info, out, len(out)); err != nil {
			return fc.clientFailed(info, err), true
		}
		return true, br.Buffered() == 0
	case n < 0: // only from http.ReadResponse
		var idle idleDeadline
		fc.upstreamIdle(up, &idle) // the route timeout does not cut bodies
		defer up.conn.SetReadDeadline(time.Time{})
		defer fc.watchClient(up)()
		return fc.relayChunked(br, res, out, info, up, &idle)
	}
	// Content-Length: what br holds goes out with the head (one write for
	// a small response), the rest is spliced.
	inBuf := min(int64(br.Buffered()), n)
	bodyBuf, _ := br.Peek(int(inBuf))
	if headLen := len(out); headLen+len(bodyBuf) <= fastBufSize {
		err = fc.sendHead(info, append(out, bodyBuf...), headLen)
	} else {
		err = fc.sendHead(info, out, headLen)
		if err == nil {
			_, err = fc.out.Write(bodyBuf)
		}
	}
	br.Discard(int(inBuf))
	if err != nil {
		return fc.clientFailed(info, err), false
	}
	info.BodyBytes = inBuf
	rest := n - inBuf
	if rest == 0 {
		return true, br.Buffered() == 0
	}
	var idle idleDeadline
	fc.upstreamIdle(up, &idle) // the route timeout does not cut bodies
	stop := fc.watchClient(up)
	var src io.Reader = up.conn // spliced
	if len(up.raw.ahead) > 0 {
		src = &up.raw // bytes a loop read come first
	}
	m, rerr, werr := copyN(&fc.out, src, rest, fc.p.copyBufs, func() bool { idle.read(up.conn); return true })
	stop()
	if idle.timeout > 0 {
		up.conn.SetReadDeadline(time.Time{}) // a pooled connection keeps no deadline
	}
	info.BodyBytes += m
	switch {
	case werr != nil:
		return fc.clientFailed(info, werr), false
	case rerr != nil:
		fc.upstreamFailed(info, rerr)
		return false, false
	}
	return true, br.Buffered() == 0
}

// sendHead writes out, whose first headLen bytes are the response head.
// A client gone before the whole head went out got no status, and the
// record says 0 (as net/http's path does), not the upstream's.
func (fc *fastConn) sendHead(info *RequestInfo, out []byte, headLen int) error {
	n, err := fc.out.Write(out)
	if err != nil && n < headLen {
		info.Status = 0
	}
	return err
}

// responseHead is the client's head for a response http.ReadResponse
// read: its fields sorted by name, less hop-by-hop ones and those
// Connection names; Server as ServerHeaderMode says; the service time; the
// framing (a body of unknown length is re-chunked, with its trailers
// announced).
func (fc *fastConn) responseHead(out []byte, res *http.Response, h *fastHead, upTime time.Duration) []byte {
	out = appendStatusLine(out, res.StatusCode, statusReason(res.Status))
	out = appendHeader(out, res.Header, res.Header["Connection"])
	out = fc.p.appendServer(out, res.Header)
	out = appendServiceTime(out, upTime)
	switch {
	case bodiless(h.method, res.StatusCode):
		// A HEAD or 304 response may say its representation's length; a
		// 204 says none (RFC 9110, 8.6).
		if v := res.Header["Content-Length"]; len(v) > 0 && res.StatusCode != http.StatusNoContent {
			out = append(append(append(out, "Content-Length: "...), v[0]...), "\r\n"...)
		}
	case res.ContentLength < 0:
		out = append(out, "Transfer-Encoding: chunked\r\n"...)
		if len(res.Trailer) > 0 {
			out = append(out, "Trailer: "...)
			first := true
			for k := range res.Trailer {
				if !first {
					out = append(out, ", "...)
				}
				out, first = append(out, k...), false
			}
			out = append(out, "\r\n"...)
		}
	default:
		out = append(out, "Content-Length: "...)
		out = strconv.AppendInt(out, res.ContentLength, 10)
		out = append(out, "\r\n"...)
	}
	return fc.endHead(out, h)
}

// appendServiceTime writes detour's upstream service time field.
func appendServiceTime(out []byte, upTime time.Duration) []byte {
	out = append(out, hdrServiceTime+": "...)
	out = strconv.AppendInt(out, upTime.Milliseconds(), 10)
	return append(out, "\r\n"...)
}

// endHead ends a response head, saying Connection: close when the client
// connection ends after this response.
func (fc *fastConn) endHead(out []byte, h *fastHead) []byte {
	if h.closeConn || fc.closing.Load() {
		out = append(out, "Connection: close\r\n"...)
	}
	return append(out, "\r\n"...)
}

// upstreamIdle makes idle what bounds each read of a response body from
// up by StreamIdleTimeout: an upstream that sends nothing for that long
// is cut, as a client that stops reading is (Envoy's
// stream_idle_timeout). It replaces up's read deadline (the route
// timeout's) at once: with idle's first one, or none when the timeout is
// off.
func (fc *fastConn) upstreamIdle(up *upLink, idle *idleDeadline) {
	idle.timeout = fc.p.o.StreamIdleTimeout
	if dl, ok := idle.due(); ok {
		up.conn.SetReadDeadline(dl)
	} else {
		up.conn.SetReadDeadline(time.Time{})
	}
}

// relayChunked streams a chunked (or close-delimited) body as chunks,
// flushing whenever the upstream has nothing more buffered, then the
// trailers.
func (fc *fastConn) relayChunked(br *bufio.Reader, res *http.Response, head []byte, info *RequestInfo, up *upLink, idle *idleDeadline) (keep, upOK bool) {
	bw := fc.p.pools.writers.Get().(*bufio.Writer)
	bw.Reset(&fc.out)
	buf := fc.p.copyBufs.Get()
	defer func() {
		bw.Reset(nil)
		fc.p.pools.writers.Put(bw)
		fc.p.copyBufs.Put(buf)
	}()
	bw.Write(head)
	var werr error
	for {
		idle.read(up.conn)
		n, err := res.Body.Read(buf)
		if n > 0 {
			bw.WriteString(strconv.FormatInt(int64(n), 16))
			bw.WriteString("\r\n")
			bw.Write(buf[:n])
			bw.WriteString("\r\n")
			info.BodyBytes += int64(n)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			bw.Flush()
			fc.upstreamFailed(info, err)
			return false, false
		}
		if br.Buffered() == 0 {
			if werr = bw.Flush(); werr != nil {
				return fc.clientFailed(info, werr), false
			}
		}
	}
	bw.WriteString("0\r\n")
	bw.Write(appendHeader(nil, res.Trailer, nil))
	bw.WriteString("\r\n")
	if werr = bw.Flush(); werr != nil {
		return fc.clientFailed(info, werr), false
	}
	return true, len(res.TransferEncoding) > 0 && br.Buffered() == 0
}

// watchClient watches the client connection while a response body waits
// for the upstream: a client that resets (or fails) then closes the
// upstream connection, so the body read ends and the request is flagged
// DC. A FIN is no reason: a client may half-close and still read. stop
// ends the watch.
func (fc *fastConn) watchClient(up *upLink) (stop func()) {
	if b := fc.pump; b != nil {
		return fc.watchAfterPump(b, up)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fc.peekClient(up)
	}()
	return func() {
		fc.c.SetReadDeadline(time.Unix(1, 0))
		<-done
		fc.c.SetReadDeadline(time.Time{})
	}
}

// peekClient waits until the client sends bytes, closes or fails (or the
// read deadline passes); a failure closes up (watchClient).
func (fc *fastConn) peekClient(up *upLink) {
	fc.rc.Read(func(fd uintptr) bool {
		var b [1]byte
		_, err := rawsys.Peek(int(fd), b[:])
		switch err {
		case unix.EAGAIN:
			return false
		case nil, unix.EINTR:
		default:
			fc.gone.Store(true)
			up.conn.Close()
		}
		return true
	})
}

// watchAfterPump is watchClient while the pump b copies the request body:
// b reads the client, and does the same on its failure; once b has ended
// (the whole body went up while the response waits for the upstream),
// the client is watched as watchClient does. The client's read deadline
// is stop's to cut only then: until then it is b's.
func (fc *fastConn) watchAfterPump(b *bodyPump, up *upLink) (stop func()) {
	var (
		mu       sync.Mutex
		stopped  bool
		watching bool // in peekClient: stop cuts its read
	)
	done, quit := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		select {
		case <-b.done:
		case <-quit:
			return
		}
		mu.Lock()
		watching = !stopped
		mu.Unlock()
		if watching {
			fc.peekClient(up)
		}
	}()
	return func() {
		mu.Lock()
		stopped = true
		cut := watching
		mu.Unlock()
		close(quit)
		if cut {
			fc.c.SetReadDeadline(time.Unix(1, 0))
		}
		<-done
		if cut {
			fc.c.SetReadDeadline(time.Time{})
		}
	}
}

// clientFailed notes a failed write to the client and returns false.
func (fc *fastConn) clientFailed(info *RequestInfo, err error) bool {
	if fc.out.timedOut.Load() {
		info.Flags |= StreamIdleTimeout
		fc.p.log.Info("stream idle timeout: the client stopped reading; closing", "client", fc.client, "dst", info.Dst,
			"timeout", fc.p.o.StreamIdleTimeout, "sent", info.BodyBytes)
	} else {
		info.Flags |= DownstreamClosed
	}
	return false
}

// upstreamFailed notes a response cut by the upstream (or by watchClient,
// for a client that reset): the client sees the truncation (the
// connection closes), never a complete-looking reply.
func (fc *fastConn) upstreamFailed(info *RequestInfo, err error) {
	if fc.gone.Load() {
		info.Flags |= DownstreamClosed
		return
	}
	if errors.Is(err, os.ErrDeadlineExceeded) { // upstreamIdle's deadline
		info.Flags |= StreamIdleTimeout
		fc.p.log.Info("stream idle timeout: the upstream stopped sending the response body; closing", "client", info.Client,
			"dst", info.Dst, "timeout", fc.p.o.StreamIdleTimeout, "sent", info.BodyBytes)
		return
	}
	info.Flags |= upstreamCut(err)
	fc.p.logUpstreamError(info, err)
}

// localFailure answers a request whose upstream connect failed.
func (fc *fastConn) localFailure(info *RequestInfo, err error, closeConn bool) {
	reason := upstream.Classify(err)
	var de *upstream.DialError
	if errors.As(err, &de) {
		reason = de.Reason
	}
	fc.localReply(info, http.StatusServiceUnavailable, msgReset+string(reason), closeConn)
	fc.p.logUpstreamError(info, err)
	fc.p.finishFast(info)
}

// localReply answers from detour itself, with the fields of
// Proxy.localReply and the Date net/http adds to those.
func (fc *fastConn) localReply(info *RequestInfo, code int, msg string, closeConn bool) {
	info.Details = replyDetails(msg)
	b := fc.p.pools.bufs.Get().(*fastBuf)
	defer fc.p.pools.bufs.Put(b)
	out := append(b[:0], "HTTP/1.1 "...)
	out = strconv.AppendInt(out, int64(code), 10)
	out = append(append(append(out, ' '), http.StatusText(code)...), "\r\n"...)
	out = fc.p.appendServer(out, nil)
	out = time.Now().UTC().AppendFormat(append(out, "Date: "...), http.TimeFormat) // as net/http's replies have
	out = append(out, "\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: "...)
	out = strconv.AppendInt(out, int64(len(msg)), 10)
	out = append(out, "\r\n"...)
	if closeConn || fc.closing.Load() { // closing: the connection ends after this answer (Shutdown), as endHead says
		out = append(out, "Connection: close\r\n"...)
	}
	out = append(out, "\r\n"...)
	body := msg
	if info.Method == http.MethodHead {
		body = "" // the length is said, the body not sent (RFC 9110, 9.3.2), as net/http does
	}
	out = append(out, body...)
	if _, err := fc.out.Write(out); err != nil {
		fc.clientFailed(info, err)
		return
	}
	info.Status, info.BodyBytes = code, int64(len(body))
}

// appendStatusLine writes an HTTP/1.1 status line; an empty reason
// becomes the status's standard text.
func appendStatusLine[S string | []byte](out []byte, code int, reason S) []byte {
	out = append(out, "HTTP/1.1 "...)
	out = strconv.AppendInt(out, int64(code), 10)
	out = append(out, ' ')
	if len(reason) == 0 {
		out = append(out, http.StatusText(code)...)
	} else {
		out = append(out, reason...)
	}
	return append(out, "\r\n"...)
}

// statusReason is the reason phrase of a Response.Status ("200 OK"), or
// "" (the standard text goes instead) when it holds a control byte:
// http.ReadResponse keeps one, and a bare CR forwarded in a status line
// could end it for a lenient client, which would read the rest as a field.
func statusReason(status string) string {
	if len(status) > 4 && ValidHeaderValue(status[4:]) {
		return status[4:]
	}
	return ""
}

// hopByHop are response fields a proxy does not forward (RFC 9110 7.6.1),
// by canonical name; Content-Length and Transfer-Encoding are written by
// relay, Server and the service time by detour. One list for both ways
// of reading a response head.
var hopByHop = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
	"Content-Length", hdrServiceTime,
}

// isHopByHop reports whether a field name, in any case, is in hopByHop.
func isHopByHop(name []byte) bool {
	for _, k := range hopByHop {
		if equalFold(name, k) {
			return true
		}
	}
	return false
}

// appendHeader writes h's fields, sorted by name, less hop-by-hop fields,
// the fields named by connOpts (the Connection header's options; nil: h's
// own Connection field's, as for a 1xx head), and Server (appendServer
// writes it).
func appendHeader(out []byte, h http.Header, connOpts []string) []byte {
	if connOpts == nil {
		connOpts = h["Connection"]
	}
	var keysArr [32]string
	keys := keysArr[:0]
	for k := range h {
		// net/textproto keeps a name with whitespace before its colon
		// ("Transfer-Encoding :"); forwarded as it is, a lenient parser
		// downstream could frame the response by it (RFC 9112, 5.1). Drop
		// it, as net/http's own writer does.
		if slices.Contains(hopByHop, k) || k == "Server" || named(connOpts, k) || !validToken(k) {
			continue
		}
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		for _, v := range h[k] {
			out = append(append(append(append(out, k...), ": "...), v...), "\r\n"...)
		}
	}
	return out
}

// appendServer writes Server as ServerHeaderMode says, given upstream's
// fields (nil for a local reply).
func (p *Proxy) appendServer(out []byte, h http.Header) []byte {
	if up := h["Server"]; p.keepsServer(len(up) > 0) {
		for _, v := range up {
			out = append(append(append(out, "Server: "...), v...), "\r\n"...)
		}
		return out
	}
	return p.appendOwnServer(out)
}

// appendOwnServer writes detour's Server field, ServerHeader.
func (p *Proxy) appendOwnServer(out []byte) []byte {
	return append(append(append(out, "Server: "...), p.o.ServerHeader...), "\r\n"...)
}

// named reports whether a Connection header's options name field k.
func named(opts []string, k string) bool {
	for _, v := range opts {
		for len(v) > 0 {
			var opt string
			opt, v, _ = cutComma(v)
			if http.CanonicalHeaderKey(opt) == k {
				return true
			}
		}
	}
	return false
}

func cutComma(s string) (before, after string, found bool) {
	before, after, found = strings.Cut(s, ",")
	return strings.Trim(before, " \t"), after, found
}

// recordFlags are the flags i's record carries: a request that failed or
// got no status after the drain's end cut what was open was cut by it,
// flag DT, as the L4 connections cut then.
func (p *Proxy) recordFlags(i *RequestInfo) Flags {
	if (i.Flags != 0 || i.Status == 0) && p.cut.Load() {
		return DrainTimeout
	}
	return i.Flags
}

// logUpstreamError logs a request's upstream failure with the flags its
// record will carry.
func (p *Proxy) logUpstreamError(i *RequestInfo, err error) {
	p.log.Info("upstream error", "client", i.Client, "dst", i.Dst, "host", i.Host, "flags", p.recordFlags(i), "err", err)
}

// finishFast reports a finished request of the fast path.
func (p *Proxy) finishFast(i *RequestInfo) {
	i.Duration = time.Since(i.Start)
	p.report(i)
}

// report logs a finished request and hands it to OnRequest.
func (p *Proxy) report(i *RequestInfo) {
	i.Flags = p.recordFlags(i)
	if p.debug() {
		p.logRequest(i)
	}
	if p.o.OnRequest != nil {
		p.o.OnRequest(i)
	}
}

// logRequest writes a request's debug line. A function of its own so
// that report's frame, on every request's stack, does not hold the
// line's arguments.
//
//go:noinline
func (p *Proxy) logRequest(i *RequestInfo) {
	p.log.Debug("request", "client", i.Client, "dst", i.Dst, "method", i.Method, "host", i.Host,
		"path", i.Path, "status", i.Status, "flags", i.Flags, "duration", i.Duration, "request_id", i.RequestID)
}
