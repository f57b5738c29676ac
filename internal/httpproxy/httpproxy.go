// Package httpproxy forwards intercepted HTTP connections at L7 to their
// original destinations.
//
// A connection handed to ServeConn is first served on the fast path
// (fastpath.go): common HTTP/1.1 requests are parsed in place and forwarded
// on the connection's own goroutine. At the first request the fast path
// does not take (malformed ones included), the connection, with the bytes
// already read, goes to one internal http.Server (HTTP/1.x and
// prior-knowledge h2c) fed from an in-memory listener behind a framing
// guard, and httputil.ReverseProxy. Either way every request goes to the
// connection's original destination IP and port — never to a DNS lookup of
// the Host header, which passes through unchanged. Upstream connections come from an
// original-destination cluster, after Envoy's ORIGINAL_DST cluster: one host
// per destination ip:port (and per client IP when the dialer spoofs the
// source, since such a connection can't serve another client), each with its
// own pool of keep-alive connections; hosts unused for CleanupInterval are
// removed with their idle connections.
//
//	p, err := httpproxy.New(httpproxy.Options{Dialer: upstream.New(upstream.Options{Mark: 0x2})})
//	...
//	// ServeConn returns when the connection is done, or false at once
//	// after Shutdown/Close, leaving conn to the caller.
//	go func() {
//		if !p.ServeConn(conn, client, origDst, upstream.PreDial{}) {
//			conn.Close()
//		}
//	}()
package httpproxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/detour-proxy/detour/internal/tcpproxy"
	"github.com/detour-proxy/detour/internal/upstream"
)

// Defaults for zero Options fields.
const (
	DefaultCleanupInterval       = 5 * time.Second
	DefaultRouteTimeout          = 15 * time.Second
	DefaultOriginalDstHeader     = "x-detour-original-dst-host"
	DefaultServerHeader          = "detour"
	DefaultMaxRequestHeaderBytes = 60 << 10
	DefaultMaxRequestHeaders     = 100
	DefaultIdleTimeout           = 5 * time.Minute
	DefaultHeaderTimeout         = 10 * time.Second
	DefaultStreamIdleTimeout     = 5 * time.Minute
	// DefaultMaxIdleConnsPerHost keeps an idle upstream connection for
	// every concurrent client of a busy destination: a smaller pool makes
	// each burst close and reopen connections (50 keep-alive clients on a
	// pool of 32 cost the upstream thousands of connections a second).
	DefaultMaxIdleConnsPerHost = 1024
)

// XForwardedFor values.
const (
	XFFAppend = "append" // append the client IP to the client's X-Forwarded-For
	XFFLeave  = "leave"  // pass the client's X-Forwarded-For (if any) unchanged
)

// ServerHeaderMode values, as Envoy's server_header_transformation.
const (
	ServerOverwrite      = "overwrite"        // always Server: ServerHeader
	ServerAppendIfAbsent = "append_if_absent" // ServerHeader only if upstream sent none
	ServerPassThrough    = "pass_through"     // upstream's Server header, or none
)

// Options configures a Proxy. Zero values mean the defaults above.
type Options struct {
	// Dialer opens upstream connections; required.
	Dialer *upstream.Dialer
	// CleanupInterval: hosts unused this long are removed with their idle
	// connections.
	CleanupInterval time.Duration
	// RouteTimeout bounds the wait for upstream response headers once the
	// request has been sent; expiry answers 504 "upstream request timeout".
	// It does not cut response bodies (streams, downloads). Negative
	// disables it.
	RouteTimeout time.Duration
	// UseOriginalDstHeader steers a request to the ip:port in
	// OriginalDstHeader instead of the connection's original destination
	// (Envoy's use_http_header). The header is always removed before the
	// request goes upstream.
	UseOriginalDstHeader bool
	OriginalDstHeader    string
	// XForwardedFor is XFFAppend (default) or XFFLeave.
	XForwardedFor string
	// ServerHeader is the Server value detour sets; ServerHeaderMode says
	// when (default ServerOverwrite).
	ServerHeader     string
	ServerHeaderMode string
	// MaxRequestHeaderBytes bounds the request line plus headers; larger
	// requests get 431 and the connection is closed.
	MaxRequestHeaderBytes int
	// MaxRequestHeaders bounds the number of header field lines (and of
	// trailer fields); more get 431 and the connection is closed.
	MaxRequestHeaders int
	// AllowLoopback lets the steering header (UseOriginalDstHeader) name a
	// loopback address (127.0.0.0/8, ::1) or 0.0.0.0 / ::. By default such
	// requests are refused with 403 (flag LR): they would reach the
	// router's own local services. Intercepted destinations are never
	// refused for being loopback.
	AllowLoopback bool
	// IdleTimeout closes downstream keep-alive connections idle this long.
	IdleTimeout time.Duration
	// HeaderTimeout bounds reading a request's headers (slowloris): the
	// first from the connection's start, a later one from its first byte
	// (IdleTimeout bounds the wait for that byte). A connection it closes
	// is logged and reported to OnRequest with flag HT (status 0: nothing
	// is sent).
	HeaderTimeout time.Duration
	// StreamIdleTimeout bounds how long a write to the client may block (a
	// client that stopped reading): the connection is closed, the
	// upstream connection released, and the request flagged SI. It also
	// bounds the wait for each read of a request body from the client
	// (408, flag SI) and of a response body from the upstream (flag SI), and
	// each write of a request body to the upstream (504, flag UT). Its
	// deadlines are renewed lazily (idleDeadline): a stall is cut after
	// 7/8 to all of it. Negative disables it.
	StreamIdleTimeout time.Duration
	// MaxIdleConnsPerHost bounds, each on its own, a host's idle
	// upstream connections in the fast path's pool and in the
	// Transport's (net/http path), and the connections kept by client
	// connections that the loops serve (host.kept).
	MaxIdleConnsPerHost int
	// IsSelf reports whether a destination is one of detour's own
	// listeners; such requests are refused with 508 (flag LR) instead of
	// looping. Nil means nothing is refused.
	IsSelf func(netip.AddrPort) bool
	// Logger receives debug events and upstream errors; nil discards.
	Logger *slog.Logger
	// OnRequest, if set, is called once per request when it is done, on
	// the request's goroutine: keep it quick (metrics, access logs). The
	// record is the proxy's own, reused after the call: copy what is kept.
	// (A pointer, not a copy, because an idle connection's goroutine keeps
	// the stack its deepest request needed, this call included.)
	OnRequest func(*RequestInfo)
	// OnConnect, if set, is called with the connect time of every upstream
	// connection the cluster opens: each one it dials, and a pre-dialed
	// one (auto mode's, made while sniffing) when a request or the pool
	// takes it. Keep it quick (a histogram).
	OnConnect func(time.Duration)
	// DisableLoops keeps every fast-path connection on its own goroutine
	// between requests, instead of letting the epoll loops serve its
	// keep-alive requests (onloop_linux.go).
	DisableLoops bool

	// DisableFastPath serves every request through net/http and
	// ReverseProxy instead of taking the common HTTP/1.1 requests on the
	// fast path (fastpath.go). For comparison and as an escape hatch.
	DisableFastPath bool
}

// Proxy is an L7 forwarder. It is safe for concurrent use.
type Proxy struct {
	o   Options
	log *slog.Logger
	hdr string // canonical OriginalDstHeader
	srv *http.Server
	ln  *chanListener
	// h2c serves the h2c connections srv recognises (serveH2C), so that
	// the drain sends their GOAWAY at once, while srv's Shutdown waits
	// for HTTP/1 heads (awaitHeads).
	h2c       *http.Server
	h2ln      *chanListener
	h2cServed chan struct{} // closed when h2c.Serve returns
	rp        *httputil.ReverseProxy
	hosts     *cluster
	served    chan struct{} // closed when srv.Serve returns

	guardBufs sync.Pool // *[guardReadSize]byte: guards' buffers for heads split across reads
	pools     fastPools
	copyBufs  *bufferPool // body copies, both paths

	mu     sync.Mutex
	closed bool
	live   map[*downConn]struct{}
	fast   map[*fastConn]struct{}
	wg     sync.WaitGroup // ServeConn calls in progress
	// cut: the drain period ended (closeLive), cutting what was open;
	// the records of the requests it cut say DT, not what the cut looked
	// like from inside (DC, UC).
	cut atomic.Bool
	// draining: Shutdown began. receiving counts the net/http path's
	// connections whose guard waits for the rest of a head, or that
	// net/http has not read yet (a request in flight, as on the fast
	// path), and, once the drain began, the fast path's receiving a head
	// (which they may hand over): net/http's own Shutdown, which would
	// close them as idle and drop any request read after it began, waits
	// until there are none.
	draining  atomic.Bool
	receiving atomic.Int32
	// httpShut (p.mu): awaitHeads is done; net/http's Shutdown may have
	// begun, and takes no connection the fast path would hand over.
	httpShut bool

	hooks testHooks
}

// testHooks let tests open race windows deterministically; all nil in
// production.
type testHooks struct {
	beforeDone   func(*fastConn)          // done, before it takes the request's upstream connection back from cur
	inQueue      func(*fastConn)          // the lingering close, right before it asks c's descriptor for unread bytes
	beforeSendOn func(*fastConn, *upLink) // send, before a new exchange's upstream connection goes into cur
}

// New validates o, fills in defaults and starts the internal server.
func New(o Options) (*Proxy, error) {
	if o.Dialer == nil {
		return nil, errors.New("httpproxy: Options.Dialer is required")
	}
	o.CleanupInterval = orDefault(o.CleanupInterval, DefaultCleanupInterval)
	o.RouteTimeout = orDefault(o.RouteTimeout, DefaultRouteTimeout)
	o.OriginalDstHeader = orDefault(o.OriginalDstHeader, DefaultOriginalDstHeader)
	o.XForwardedFor = orDefault(o.XForwardedFor, XFFAppend)
	o.ServerHeader = orDefault(o.ServerHeader, DefaultServerHeader)
	o.ServerHeaderMode = orDefault(o.ServerHeaderMode, ServerOverwrite)
	o.MaxRequestHeaderBytes = orDefault(o.MaxRequestHeaderBytes, DefaultMaxRequestHeaderBytes)
	o.MaxRequestHeaders = orDefault(o.MaxRequestHeaders, DefaultMaxRequestHeaders)
	o.IdleTimeout = orDefault(o.IdleTimeout, DefaultIdleTimeout)
	o.HeaderTimeout = orDefault(o.HeaderTimeout, DefaultHeaderTimeout)
	o.StreamIdleTimeout = orDefault(o.StreamIdleTimeout, DefaultStreamIdleTimeout)
	if o.StreamIdleTimeout < 0 {
		o.StreamIdleTimeout = 0 // disabled
	}
	o.MaxIdleConnsPerHost = orDefault(o.MaxIdleConnsPerHost, DefaultMaxIdleConnsPerHost)
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case o.XForwardedFor != XFFAppend && o.XForwardedFor != XFFLeave:
		return nil, fmt.Errorf("httpproxy: XForwardedFor %q: want %q or %q", o.XForwardedFor, XFFAppend, XFFLeave)
	case o.ServerHeaderMode != ServerOverwrite && o.ServerHeaderMode != ServerAppendIfAbsent && o.ServerHeaderMode != ServerPassThrough:
		return nil, fmt.Errorf("httpproxy: ServerHeaderMode %q: want %q, %q or %q", o.ServerHeaderMode, ServerOverwrite, ServerAppendIfAbsent, ServerPassThrough)
	case !ValidHeaderValue(o.ServerHeader):
		return nil, fmt.Errorf("httpproxy: ServerHeader %q holds a control character, which could split the response's head", o.ServerHeader)
	case !ValidHeaderName(o.OriginalDstHeader):
		return nil, fmt.Errorf("httpproxy: OriginalDstHeader %q is not a valid header name", o.OriginalDstHeader)
	case o.CleanupInterval < 0 || o.MaxRequestHeaderBytes < 0 || o.MaxRequestHeaders < 0 || o.IdleTimeout < 0 || o.HeaderTimeout < 0 || o.MaxIdleConnsPerHost < 0:
		return nil, errors.New("httpproxy: negative CleanupInterval, MaxRequestHeaderBytes, MaxRequestHeaders, IdleTimeout, HeaderTimeout or MaxIdleConnsPerHost")
	}

	p := &Proxy{
		o:         o,
		log:       o.Logger,
		hdr:       http.CanonicalHeaderKey(o.OriginalDstHeader),
		ln:        newChanListener(),
		served:    make(chan struct{}),
		h2ln:      newChanListener(),
		h2cServed: make(chan struct{}),
		live:      make(map[*downConn]struct{}),
		fast:      make(map[*fastConn]struct{}),
	}
	p.hosts = newCluster(p)
	p.pools.init()
	p.copyBufs = &bufferPool{}
	errLog := slog.NewLogLogger(o.Logger.Handler(), slog.LevelDebug)
	p.rp = &httputil.ReverseProxy{
		Rewrite:        p.rewrite,
		Transport:      roundTripper(p.roundTrip),
		ModifyResponse: p.modifyResponse,
		ErrorHandler:   p.proxyError,
		ErrorLog:       errLog,
		BufferPool:     p.copyBufs,
	}
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true) // h2c with prior knowledge; no Upgrade: h2c
	p.srv = &http.Server{
		Handler:           p,
		ReadHeaderTimeout: o.HeaderTimeout,
		// OPTIONS * goes to the upstream, like any request, instead of
		// net/http's own answer.
		DisableGeneralOptionsHandler: true,
		IdleTimeout:                  o.IdleTimeout,
		// net/http allows 4 KiB of slack above this before its own 431;
		// the guard (HTTP/1) and ServeHTTP (HTTP/2) enforce the exact limit.
		MaxHeaderBytes: o.MaxRequestHeaderBytes,
		Protocols:      &protos,
		ErrorLog:       errLog,
		ConnState:      p.connState,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, c.(*downConn))
		},
		// An "h2" entry keeps net/http from configuring its HTTP/2
		// server on srv, which would replace serveH2C; srv takes no TLS.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){
			"h2":                p.serveH2C,
			"unencrypted_http2": p.serveH2C,
		},
	}
	var h2cOnly http.Protocols
	h2cOnly.SetUnencryptedHTTP2(true)
	p.h2c = &http.Server{
		Handler:                      p,
		DisableGeneralOptionsHandler: true, // as srv's
		ReadHeaderTimeout:            o.HeaderTimeout,
		IdleTimeout:                  o.IdleTimeout,
		MaxHeaderBytes:               o.MaxRequestHeaderBytes,
		Protocols:                    &h2cOnly,
		ErrorLog:                     errLog,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, c.(*h2cConn).downConn)
		},
	}
	go func() {
		defer close(p.served)
		p.srv.Serve(p.ln)
	}()
	go func() {
		defer close(p.h2cServed)
		p.h2c.Serve(p.h2ln)
	}()
	return p, nil
}

// h2cPreface is what a prior-knowledge HTTP/2 client sends first (RFC
// 9113, 3.4); net/http's HTTP/1 server reads it to tell h2c.
const h2cPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// serveH2C takes an h2c connection from srv, which read its preface, to
// p.h2c, and returns (srv then closes it) when it is done. p.h2c is a
// server of its own so that the drain can send the GOAWAY of every h2c
// connection when it begins, as net/http's Shutdown would, while srv's
// Shutdown waits for the HTTP/1 heads being received.
func (p *Proxy) serveH2C(_ *http.Server, tc *tls.Conn, _ http.Handler) {
	nc, ok := tc.NetConn().(interface{ UnencryptedNetConn() net.Conn })
	if !ok {
		return // TLS: none comes here
	}
	dc, ok := nc.UnencryptedNetConn().(*downConn)
	if !ok || !p.h2ln.hand(&h2cConn{downConn: dc, preface: replayed(h2cPreface)}) {
		return // the drain began: GOAWAYs were sent; this one is closed
	}
	<-dc.done
}

// h2cConn is an h2c connection for p.h2c, which reads the preface srv
// read again.
type h2cConn struct {
	*downConn
	preface replayed
}

func (c *h2cConn) Read(b []byte) (int, error) {
	if n, ok := c.preface.read(b); ok {
		return n, nil
	}
	return c.downConn.Read(b)
}

// replayed is bytes already read from a connection that its next reader
// gets first.
type replayed []byte

// read copies the next of them into b; false once none is left.
func (r *replayed) read(b []byte) (int, bool) {
	if len(*r) == 0 {
		return 0, false
	}
	n := copy(b, *r)
	*r = (*r)[n:]
	return n, true
}

func orDefault[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// Pooled reports whether origDst's host has an idle upstream connection
// (proxy.L7).
func (p *Proxy) Pooled(client, origDst netip.AddrPort) bool {
	return p.hosts.hasIdle(p.hostKey(unmap(client), unmap(origDst)))
}

// ServeConn serves HTTP on c, an intercepted client connection from client
// to origDst, and returns when the connection is finished (closed by either
// side, idle, or the proxy shut down). The first bytes may still be queued
// in the socket (sniffed with MSG_PEEK). pre is the connect to origDst the
// caller made while sniffing, if any. Its Conn, a fresh connection, is the
// destination's host's first upstream connection instead of a dial; if
// still unused when c is done, it joins the pool (or is closed when the
// pool is full). Its Err, why that connect failed, answers the
// connection's first request, if it goes to origDst, with a 503 with that
// reason (flag UF) without dialing again; later requests dial as usual.
// Its Sniffed time is the first request's start; its Took goes to
// OnConnect; its ConnID is every request's RequestInfo.ConnID.
//
// It returns false at once, having done nothing with c or pre, when
// Shutdown or Close began before the call: the caller still owns both,
// and gives them to the Proxy that replaced p (a reload), or closes them.
func (p *Proxy) ServeConn(c net.Conn, client, origDst netip.AddrPort, pre upstream.PreDial) (taken bool) {
	if p.isClosed() {
		return false
	}
	client, origDst = unmap(client), unmap(origDst)
	preDialed, dialErr := pre.Conn, pre.Err
	var first *firstStart // nil: every request starts when its head is read
	if !pre.Sniffed.IsZero() {
		first = &firstStart{at: pre.Sniffed}
	}
	if preDialed != nil {
		key := p.hostKey(client, origDst)
		if p.hosts.addPreDialed(key, preDialed, pre.Took) {
			defer p.hosts.dropPreDialed(key, preDialed)
		} else { // closed: the client is turned away below
			preDialed.Close()
		}
	}
	if tc, ok := c.(*net.TCPConn); ok && dialErr == nil && !p.o.DisableFastPath {
		h, handOver := p.serveConnFast(tc, pre.ConnID, client, origDst, first)
		if !handOver {
			return true
		}
		if len(h.rest) > 0 {
			c = &replayConn{TCPConn: tc, pending: h.rest}
		}
		p.serveConnNetHTTP(c, pre.ConnID, client, origDst, first, dialErr, &h)
		return true
	}
	p.serveConnNetHTTP(c, pre.ConnID, client, origDst, first, dialErr, nil)
	return true
}

// handedOver is what the fast path hands to net/http with a connection.
type handedOver struct {
	rest   []byte    // the client bytes it read: the start of the next request
	served bool      // it served requests before: the next bytes are not the connection's first
	headBy time.Time // when the head it began to read must be complete (zero: none)
	// counted: the drain counts the head being received in p.receiving;
	// the count goes to the net/http connection.
	counted bool
}

// isClosed reports whether Shutdown or Close began.
func (p *Proxy) isClosed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed
}

// serveConnNetHTTP serves c on the net/http path until it is done. A
// function of its own so that ServeConn's frame, beneath every fast-path
// request of the connection, stays small. client and origDst are unmapped.
// h, when the fast path handed c over, says whether it served requests on
// c before (its next bytes are not the connection's first, which alone
// may be the h2c preface) and when the head it began to read must be
// complete (net/http's header timeout would start anew).
func (p *Proxy) serveConnNetHTTP(c net.Conn, id uint64, client, origDst netip.AddrPort, first *firstStart, dialErr error, h *handedOver) {
	dc := &downConn{Conn: c, id: id, client: client, origDst: origDst, done: make(chan struct{}),
		clientIP: client.Addr().String(),
		g:        newGuard(&p.guardBufs, p.o.MaxRequestHeaderBytes, p.o.MaxRequestHeaders, p.hdr),
		p:        p,
		start:    time.Now(),
		first:    first,
		dialErr:  dialErr}
	dc.g.holdEOF = true
	dc.g.laterHead = dc.laterHead
	dc.g.onHead = dc.receiving
	_, replay := c.(*replayConn)
	midStream := h != nil && h.served
	dc.begun.Store(replay || midStream)
	dc.g.midStream = midStream
	if h != nil && !h.headBy.IsZero() {
		dc.headBy.Store(h.headBy.UnixNano())
	}
	dc.sw.conn, dc.sw.idle.timeout = c, p.o.StreamIdleTimeout
	dc.bodyIdle.timeout = p.o.StreamIdleTimeout
	tracked := false
	if h != nil {
		tracked = p.adopt(dc, h.counted)
	} else {
		tracked = p.track(dc)
	}
	if !tracked {
		c.Close()
		return
	}
	defer p.untrack(dc)
	if !p.ln.hand(dc) {
		dc.headTaken()
		dc.Close()
		return
	}
	<-dc.done
	dc.headTaken() // closed before a request reached the handler
}

// adopt tracks dc, a connection the fast path hands over, as track does;
// during the drain too, as long as net/http's Shutdown has not begun
// (p.httpShut): its request began before, and the drain counts it in
// receiving (the fast path's count goes with it, or one is taken now)
// until net/http has read its head, which it would drop once its
// Shutdown began.
func (p *Proxy) adopt(dc *downConn, counted bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed && (p.cut.Load() || p.httpShut) {
		if counted {
			p.receiving.Add(-1)
		}
		return false
	}
	p.live[dc] = struct{}{}
	p.wg.Add(1)
	if p.closed && !counted {
		p.receiving.Add(1)
		counted = true
	}
	dc.heading.Store(counted)
	return true
}

// serveConnFast serves c on the fast path until it closes (then it closes
// c) or hands it over to net/http with the bytes it read of the next
// request (h).
func (p *Proxy) serveConnFast(c *net.TCPConn, id uint64, client, origDst netip.AddrPort, first *firstStart) (h handedOver, handOver bool) {
	rc, err := c.SyscallConn()
	if err != nil {
		return h, true
	}
	fc := &fastConn{p: p, c: c, rc: rc, id: id, client: client, origDst: origDst, clientIP: client.Addr().String(),
		key: p.hostKey(client, origDst), start: time.Now(), first: first}
	fc.fd, _ = tcpproxy.ConnFD(c) // -1 on failure: no loop for it
	fc.out.conn, fc.out.idle.timeout = c, p.o.StreamIdleTimeout
	fc.out.raw.init(rc)
	fc.readFn = fc.readSome
	if !p.trackFast(fc) {
		c.Close()
		return h, false
	}
	defer p.untrackFast(fc)
	h.rest, handOver = p.serveFast(fc)
	if !handOver {
		fc.closeLingering()
		return h, false
	}
	h.served, h.headBy, h.counted = fc.heads > 0, fc.headBy, fc.passHeading()
	return h, true
}

// replayConn reads pending before the connection: the bytes of a request
// the fast path read and handed over.
type replayConn struct {
	*net.TCPConn
	pending replayed
}

func (c *replayConn) Read(b []byte) (int, error) {
	if n, ok := c.pending.read(b); ok {
		return n, nil
	}
	return c.TCPConn.Read(b)
}

func (p *Proxy) trackFast(fc *fastConn) bool { return track(p, p.fast, fc) }
func (p *Proxy) untrackFast(fc *fastConn)    { untrack(p, p.fast, fc) }

// closeIdle asks every fast-path connection to end after its current
// response, and ends those waiting for a request now, and the net/http
// path's that have not begun one.
func (p *Proxy) closeIdle() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for fc := range p.fast {
		fc.closing.Store(true)
		if fc.idle.Load() {
			fc.c.SetReadDeadline(time.Unix(1, 0))
		}
		if fc.heading.CompareAndSwap(headReceiving, headCounted) {
			p.receiving.Add(1) // a request in flight, which it may hand to net/http
		}
		fc.ol.wake() // a loop serving it hands it back when idle
	}
	// net/http closes a connection that has not sent its first request
	// only once it is 5 s old; the fast path closes one at once.
	for dc := range p.live {
		if (!dc.begun.Load() || dc.idle.Load()) && !dc.heading.Load() {
			dc.Close()
		}
	}
}

// awaitHeads waits until no connection is receiving a head that
// net/http is to read (on its path, or one the fast path may hand over:
// they complete, or fail at HeaderTimeout) or ctx ends; then it sets
// httpShut, after which the fast path hands no connection over. Meanwhile
// the answers say Connection: close (recorder) and a connection that
// turns idle is closed (connState).
func (p *Proxy) awaitHeads(ctx context.Context) {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for !p.noHeads(ctx) {
		select {
		case <-t.C:
		case <-ctx.Done():
		}
	}
}

// noHeads reports, and notes in httpShut, that no head is being received
// or that ctx ended.
func (p *Proxy) noHeads(ctx context.Context) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.httpShut = p.receiving.Load() == 0 || ctx.Err() != nil
	return p.httpShut
}

// connState notes which net/http-path connections wait for a request,
// for closeIdle, and closes one that turns idle during the drain before
// net/http's Shutdown began (it would close it then). Idle, it is called
// on the connection's reading goroutine.
func (p *Proxy) connState(c net.Conn, st http.ConnState) {
	dc, ok := c.(*downConn)
	if !ok {
		return
	}
	dc.idle.Store(st == http.StateIdle)
	if st == http.StateIdle && p.draining.Load() && dc.g.w == dc.g.r {
		dc.Close()
	}
}

func (p *Proxy) track(dc *downConn) bool { return track(p, p.live, dc) }
func (p *Proxy) untrack(dc *downConn)    { untrack(p, p.live, dc) }

// track adds a connection to one of p's sets of live connections (guarded
// by p.mu) and to the ServeConn calls Shutdown waits for, unless p is
// closed.
func track[C comparable](p *Proxy, set map[C]struct{}, c C) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	set[c] = struct{}{}
	p.wg.Add(1)
	return true
}

func untrack[C comparable](p *Proxy, set map[C]struct{}, c C) {
	p.mu.Lock()
	delete(set, c)
	p.mu.Unlock()
	p.wg.Done()
}

// closeLive closes every downstream connection, hijacked tunnels included.
func (p *Proxy) closeLive() {
	p.cut.Store(true)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for dc := range p.live {
		dc.abort()
	}
	for fc := range p.fast {
		fc.abort()
	}
}

// Shutdown stops accepting connections, closes idle keep-alive ones, and
// waits for requests in flight and upgraded tunnels to finish or ctx to
// end; whatever is left then is closed. Upstream connections are closed
// once idle (at once, or when their request ends: none is pooled again)
// and the janitor stops.
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.hosts.retiring()
	p.draining.Store(true)
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.hosts.drain()
	p.closeIdle()
	h2cDone := make(chan error, 1)
	go func() { h2cDone <- p.h2c.Shutdown(ctx) }() // GOAWAY now
	p.awaitHeads(ctx)
	err := p.srv.Shutdown(ctx)
	<-p.served
	if h2cErr := <-h2cDone; err == nil {
		err = h2cErr
	}
	<-p.h2cServed
	// Shutdown does not wait for hijacked (upgraded) connections.
	done := make(chan struct{})
	go func() { p.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		p.closeLive()
		<-done
		if err == nil {
			err = ctx.Err()
		}
	}
	p.hosts.close()
	return err
}

// Close closes every connection at once, downstream and upstream.
func (p *Proxy) Close() error {
	p.hosts.retiring()
	p.closeLive()
	err := p.srv.Close()
	<-p.served
	if h2cErr := p.h2c.Close(); err == nil {
		err = h2cErr
	}
	<-p.h2cServed
	p.closeLive()
	p.wg.Wait()
	p.hosts.close()
	return err
}

// hostKey names the cluster host for a destination. Spoofed upstream
// connections carry the client's address, so they are pooled per client.
func (p *Proxy) hostKey(client, dst netip.AddrPort) hostKey {
	k := hostKey{dst: dst}
	if p.o.Dialer.Options().SpoofSource {
		k.client = client.Addr()
	}
	return k
}

func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// debug reports whether debug events are logged, so that hot paths build
// their attributes only then.
func (p *Proxy) debug() bool { return p.log.Enabled(context.Background(), slog.LevelDebug) }

// ValidHeaderName reports whether s can name a header field: an RFC 9110
// token. Config checks its keys with it.
func ValidHeaderName(s string) bool { return validToken(s) }

// ValidHeaderValue reports whether s can be a field value as it is, as
// net/http accepts one (no control byte but HTAB).
func ValidHeaderValue(s string) bool { return fieldValueBytes([]byte(s)) }

// validToken reports whether s is an RFC 9110 token (a header name).
func validToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// bufferPool lends ReverseProxy its 32 KiB copy buffers. It pools array
// pointers, which convert to and from the slices without allocating (a
// pool of *[]byte would allocate the slice header on every Put).
type bufferPool struct{ p sync.Pool }

const copyBufferSize = 32 << 10

func (b *bufferPool) Get() []byte {
	if a, ok := b.p.Get().(*[copyBufferSize]byte); ok {
		return a[:]
	}
	return make([]byte, copyBufferSize)
}

func (b *bufferPool) Put(buf []byte) {
	if len(buf) == copyBufferSize {
		b.p.Put((*[copyBufferSize]byte)(buf))
	}
}
