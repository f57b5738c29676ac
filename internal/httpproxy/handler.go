package httpproxy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/detour-proxy/detour/internal/upstream"
)

// Flags are Envoy-style response flags for access logs and metrics.
type Flags uint16

const (
	UpstreamConnectFailure  Flags = 1 << iota // UF: connect refused, timed out, unreachable
	UpstreamTimeout                           // UT: no response headers within RouteTimeout
	UpstreamClosed                            // UC: upstream reset or closed before or during the response
	DownstreamClosed                          // DC: the client went away first
	LoopRefused                               // LR: the destination is detour itself, or a refused loopback address
	DownstreamProtocolError                   // DPE: the request was malformed or ambiguous and refused (400, 431, 505)
	StreamIdleTimeout                         // SI: a write to the client, or a read of a body, made no progress for StreamIdleTimeout
	RequestHeaderTimeout                      // HT: the client's request head did not arrive within HeaderTimeout
	UpstreamProtocolError                     // UPE: the upstream's response broke HTTP (its head, its framing, its chunks)
	DrainTimeout                              // DT: still open when the drain period (Shutdown's ctx) ended: cut
)

var flagNames = [...]string{"UF", "UT", "UC", "DC", "LR", "DPE", "SI", "HT", "UPE", "DT"}

// String is "-" without flags, else the codes joined by commas ("UF,DC").
func (f Flags) String() string {
	if f == 0 {
		return "-"
	}
	var s []string
	for i, n := range flagNames {
		if f&(1<<i) != 0 {
			s = append(s, n)
		}
	}
	return strings.Join(s, ",")
}

// RequestInfo is what OnRequest learns about a finished request.
type RequestInfo struct {
	// ConnID is the client connection's number (upstream.PreDial.ConnID,
	// 7 for C7), which joins the request to its connection's records; 0
	// when the caller gave none.
	ConnID    uint64
	Start     time.Time
	Client    netip.AddrPort
	OrigDst   netip.AddrPort // the connection's original destination
	Dst       netip.AddrPort // where the request went (differs when steered by header)
	Proto     string         // as the client spoke it: HTTP/1.0, HTTP/1.1, HTTP/2.0
	Method    string
	Host      string
	Path      string // the request target as sent, query included (Envoy's %REQ(:PATH)%)
	RequestID string
	// Status is the status sent to the client (101 for upgrades); 0 when
	// none was sent because the client had gone.
	Status       int
	Flags        Flags
	Duration     time.Duration // until the response (or tunnel) was done
	UpstreamTime time.Duration // request sent upstream to response headers; 0 without a response
	Reused       bool          // served on a pooled upstream connection
	BodyBytes    int64         // response body bytes written to the client
	// RequestBytes are the request body bytes read from the client, a
	// chunked body's decoded (as Envoy's %BYTES_RECEIVED% counts them).
	RequestBytes int64
	// UpstreamLocal is the local address of the upstream connection the
	// request went out on (the client's with source spoofing); zero when
	// it got none.
	UpstreamLocal netip.AddrPort
	// Details says why detour answered itself or ended the request
	// ("connection refused", "upstream request timeout", "invalid host
	// field", as Envoy's %RESPONSE_CODE_DETAILS%); empty for a response
	// the upstream gave.
	Details string
}

// Header names.
const (
	hdrRequestID   = "X-Request-Id"
	hdrServiceTime = "X-Detour-Upstream-Service-Time"
)

// Envoy's words for local replies.
const (
	msgTimeout = "upstream request timeout"
	msgReset   = "upstream connect error or disconnect/reset before headers. reset reason: "
)

type connKey struct{}
type exchangeKey struct{}

// exchange is one request's state, shared by the ReverseProxy hooks
// through the request context. It is one allocation: the response
// recorder and the client trace live inside it.
type exchange struct {
	info  RequestInfo
	dc    *downConn
	host  *host
	rw    *recorder // &rec
	rec   recorder
	trace httptrace.ClientTrace
	// vals backs the one-value header slices the proxy sets (three on the
	// request, two on the response), so setting them allocates nothing.
	vals [5]string
	sent time.Time // upstream connection obtained: the request goes out
	// wrote is set when the Transport has written the whole request: an
	// error status before that refuses the body's rest.
	wrote   atomic.Bool
	gotConn bool
	conns   int         // GotConn calls: 2 once the Transport replayed the request
	gets    int         // GetConn calls: one per attempt, the replays' too
	gotByte atomic.Bool // a response byte came (traced only for replayAfterSent's requests)
	upc     net.Conn    // the upstream connection (GotConn)
	body    idleBody    // the response body, read under StreamIdleTimeout
	reqBody countedBody // the request body, counted for RequestBytes
	status  int         // upstream's status, for upgrades that bypass WriteHeader
	p       *Proxy
}

// wroteRequest is the client trace's WroteRequest. The Transport calls
// it when the write ended, failed too (Err): then the body did not go out
// whole, and its rest may still be in the client's stream.
func (x *exchange) wroteRequest(i httptrace.WroteRequestInfo) {
	if i.Err == nil {
		x.wrote.Store(true)
	}
}

// getConnection is the client trace's GetConn: an attempt begins. One
// after the first is a replay (the Transport's or roundTrip's): the
// record's upstream fields are the last attempt's, as Envoy's
// %UPSTREAM_LOCAL_ADDRESS% says which connection served (or last tried)
// the request, so the failed attempt's go, even when the replay gets no
// connection (refused: TestRetryRefusedRecordsLastAttempt).
func (x *exchange) getConnection(string) {
	x.gets++
	if x.gets > 1 {
		x.host.retries.Add(1)
		x.info.Reused, x.info.UpstreamLocal = false, netip.AddrPort{}
	}
}

// gotConnection is the client trace's GotConn: the request has an upstream
// connection and goes out now. The Transport calls it again when it retries
// on another connection; the request still holds one.
func (x *exchange) gotConnection(ci httptrace.GotConnInfo) {
	x.conns++
	if !x.gotConn {
		x.host.inUse.Add(1)
	}
	x.sent, x.gotConn, x.info.Reused, x.upc = time.Now(), true, ci.Reused, ci.Conn
	if uc, ok := ci.Conn.(*upConn); ok {
		x.info.UpstreamLocal = uc.local
		if ci.Reused {
			uc.awaitReader()
		}
		uc.expectHead(x.info.Method == http.MethodHead)
	}
	if ci.Reused {
		x.host.reuses.Add(1)
		if x.p.debug() {
			x.p.log.Debug("reusing connection", "host", x.host.key, "local", ci.Conn.LocalAddr())
		}
	}
}

func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	dc := r.Context().Value(connKey{}).(*downConn)
	dc.headTaken()
	x := &exchange{dc: dc, p: p, rec: recorder{ResponseWriter: w, http10: !r.ProtoAtLeast(1, 1)}}
	if r.ProtoMajor == 1 {
		x.rec.draining = &p.draining
	}
	x.rw = &x.rec
	x.info = RequestInfo{
		ConnID: dc.id, Start: dc.first.take(), Client: dc.client, OrigDst: dc.origDst, Dst: dc.origDst,
		Proto: r.Proto, Method: r.Method, Host: r.Host, Path: r.RequestURI,
		RequestID: requestID(r.Header.Get(hdrRequestID)),
	}
	var duplex *http.ResponseController // set when the server runs in full duplex
	defer func() {
		v := recover()
		if v == http.ErrAbortHandler && x.info.Flags == 0 { // ReverseProxy: body copy failed mid-response
			switch {
			case dc.sw.timedOut.Load():
				x.info.Flags |= StreamIdleTimeout
				p.log.Info("stream idle timeout: the client stopped reading; closing", "client", dc.client, "dst", x.info.Dst,
					"timeout", p.o.StreamIdleTimeout, "sent", x.rw.bytes)
			case x.rw.writeErr != nil:
				x.info.Flags |= DownstreamClosed
			case dc.g.bodyFailure() != "":
				x.info.Flags |= DownstreamProtocolError
			case x.body.timedOut:
				x.info.Flags |= StreamIdleTimeout
				p.log.Info("stream idle timeout: the upstream stopped sending the response body; closing", "client", dc.client,
					"dst", x.info.Dst, "timeout", p.o.StreamIdleTimeout, "sent", x.rw.bytes)
			case r.Context().Err() != nil:
				// The client reset or closed: net/http noticed it first and
				// canceled the request, so the upstream read failed before
				// any write to the client did.
				x.info.Flags |= DownstreamClosed
			default:
				x.info.Flags |= upstreamCut(x.body.err)
			}
			if x.info.Flags&(UpstreamClosed|UpstreamProtocolError|StreamIdleTimeout) != 0 && x.rw.writeErr == nil && !dc.sw.timedOut.Load() {
				x.rw.flushCut()
			}
		}
		answered := time.Now()
		if v == nil && duplex != nil && x.status != http.StatusSwitchingProtocols {
			// In full duplex, net/http's server reads and drops a body's
			// unread rest (up to 256 KiB) only after the handler, and
			// when that reaches the body's end it starts the background
			// read it runs while a handler works: the next request's read
			// then panics and the connection is cut
			// (golang.org/issue/68560). Drop it here, as the server would,
			// after the answer went out (a client may wait for it before
			// sending the rest), and before the record, which counts it.
			duplex.Flush()
			x.dropBodyRest(r)
		}
		p.finish(x, answered)
		if v != nil {
			panic(v) // net/http aborts the connection: the client sees a truncated response
		}
	}()

	if r.ProtoMajor == 2 && dc.g.h2() {
		// HTTP/2 framing is the HTTP/2 server's; the guard only sees
		// HTTP/1. Apply the head limits here.
		if n, fields := headerSize(r); n > p.o.MaxRequestHeaderBytes || fields > p.o.MaxRequestHeaders {
			x.info.Flags |= DownstreamProtocolError
			p.localReply(x, http.StatusRequestHeaderFieldsTooLarge, "request header fields too large", true)
			return
		}
	} else {
		defer dc.g.answered()
		if v := dc.g.next(fingerprint(r.Method, r.RequestURI, r.Proto)); v.status != 0 {
			// Refused by the guard: r is its placeholder, not the client's request.
			x.info.Proto, x.info.Method, x.info.Host, x.info.Path = v.proto, v.method, "", v.target
			x.info.Flags |= DownstreamProtocolError
			p.log.Info("refused request", "client", dc.client, "dst", dc.origDst, "status", v.status, "reason", v.msg)
			p.localReply(x, v.status, "invalid request: "+v.msg, true)
			return
		}
	}
	if r.Method == http.MethodConnect {
		// A tunnel through an HTTP proxy is an L4 stream, which this side
		// does not relay (ReverseProxy would frame it as a chunked 200);
		// intercept the port with protocol tcp to pass it through.
		x.info.Flags |= DownstreamProtocolError
		p.localReply(x, http.StatusNotImplemented, "CONNECT is not supported at L7; intercept this port with protocol tcp", true)
		return
	}
	steered := false
	if v := r.Header.Values(p.hdr); len(v) > 0 && p.o.UseOriginalDstHeader {
		dst, err := netip.ParseAddrPort(strings.TrimSpace(v[0]))
		if err != nil || len(v) > 1 || dst.Port() == 0 {
			p.localReply(x, http.StatusBadRequest, "invalid "+strings.ToLower(p.hdr)+" header", false)
			return
		}
		x.info.Dst, steered = unmap(dst), true
	}
	if p.o.IsSelf != nil && p.o.IsSelf(x.info.Dst) {
		x.info.Flags |= LoopRefused
		p.localReply(x, http.StatusLoopDetected, "loop detected: "+x.info.Dst.String()+" is this proxy", false)
		return
	}
	// Steering to the router's own loopback (or to 0.0.0.0 / ::, which
	// reach it too) would open its local services, the admin endpoint
	// first, to every client. Intercepted destinations are not checked: in
	// redirect mode a local application's connection to 127.0.0.1:80 is
	// intercepted only if the user chose to intercept it.
	if a := x.info.Dst.Addr(); steered && !p.o.AllowLoopback && (a.IsLoopback() || a.IsUnspecified()) {
		x.info.Flags |= LoopRefused
		p.localReply(x, http.StatusForbidden, "destination not allowed: "+x.info.Dst.String()+" is a loopback address", false)
		return
	}

	if dc.dialErr != nil && dc.dialErrUsed.CompareAndSwap(false, true) && x.info.Dst == dc.origDst {
		p.preDialFailed(x)
		return
	}

	x.host = p.hosts.acquire(p.hostKey(dc.client, x.info.Dst))
	defer func() {
		if x.gotConn {
			x.host.inUse.Add(-1)
		}
		p.hosts.release(x.host)
	}()
	x.trace.GetConn, x.trace.GotConn = x.getConnection, x.gotConnection
	if r.ProtoMajor == 1 && r.ContentLength != 0 {
		// The upstream may answer while the body still comes (an echo, a
		// 413): the Transport sends the body as the response is relayed,
		// and the server must not take the body's unread rest for
		// abandoned when the head goes out.
		duplex = http.NewResponseController(w)
		duplex.EnableFullDuplex()
		x.trace.WroteRequest = x.wroteRequest
	}
	if replayedByUs(r) {
		x.trace.GotFirstResponseByte = x.gotFirstByte
	}
	ctx := httptrace.WithClientTrace(context.WithValue(r.Context(), exchangeKey{}, x), &x.trace)
	out := r.WithContext(ctx)
	if r.Body != nil && r.Body != http.NoBody {
		x.reqBody.ReadCloser = r.Body
		out.Body = &x.reqBody
	}
	p.rp.ServeHTTP(x.rw, out)
}

// rewrite aims the outbound request at the chosen destination and sets the
// forwarding headers. The Host header is the client's.
func (p *Proxy) rewrite(pr *httputil.ProxyRequest) {
	x := pr.In.Context().Value(exchangeKey{}).(*exchange)
	pr.Out.URL.Scheme = "http"
	pr.Out.URL.Host = x.host.addr // only names the pool: host.dial ignores it
	// ReverseProxy drops query parameters it cannot parse (a=1;b=2, %zz);
	// a proxy forwards the target as the client sent it (RFC 9110, 7.7).
	pr.Out.URL.RawQuery = pr.In.URL.RawQuery
	if !pr.In.ProtoAtLeast(1, 1) {
		// An HTTP/1.0 request's Upgrade is ignored (RFC 9110, 7.8);
		// ReverseProxy would forward it as an HTTP/1.1 upgrade request.
		pr.Out.Header.Del("Upgrade")
		pr.Out.Header.Del("Connection")
	}
	in, out := pr.In.Header, pr.Out.Header
	set := func(k string, i int, v string) {
		x.vals[i] = v
		out[k] = x.vals[i : i+1 : i+1]
	}
	// ReverseProxy removed these from out; a transparent proxy keeps the
	// client's values.
	for _, k := range []string{"Forwarded", "X-Forwarded-Host"} {
		if v := in[k]; v != nil {
			out[k] = v
		}
	}
	switch prior := in["X-Forwarded-For"]; p.o.XForwardedFor {
	case XFFAppend:
		xff := x.dc.clientIP
		if len(prior) > 0 {
			xff = strings.Join(prior, ", ") + ", " + xff
		}
		set("X-Forwarded-For", 0, xff)
	case XFFLeave:
		if prior != nil {
			out["X-Forwarded-For"] = prior
		}
	}
	set("X-Forwarded-Proto", 1, "http")
	// Request trailers arrive after the body: share the map net/http fills
	// (ReverseProxy's clone would forward empty values).
	pr.Out.Trailer = pr.In.Trailer
	set(hdrRequestID, 2, x.info.RequestID)
	delete(out, p.hdr)
}

func (p *Proxy) roundTrip(r *http.Request) (*http.Response, error) {
	x := r.Context().Value(exchangeKey{}).(*exchange)
	res, err := x.host.tr.RoundTrip(r)
	if err != nil && x.replayAfterSent(r, err) {
		p.log.Debug("pooled connection closed by the upstream; retrying the request once", "host", x.host.key, "err", err)
		res, err = x.host.tr.RoundTrip(r)
	}
	return res, err
}

// replayedByUs reports whether a request is one the Transport does not
// replay after it went out on a pooled connection that closed unanswered,
// but the fast path does: a PUT or DELETE without a body or an
// idempotency key (the Transport replays only GET, HEAD, OPTIONS and
// TRACE, and requests with a key, those without a body or with GetBody;
// RFC 9110, 9.2.2 counts PUT and DELETE as idempotent too).
func replayedByUs(r *http.Request) bool {
	return r.ContentLength == 0 && (r.Method == http.MethodPut || r.Method == http.MethodDelete) &&
		r.Header["Idempotency-Key"] == nil && r.Header["X-Idempotency-Key"] == nil
}

// gotFirstByte is the client trace's GotFirstResponseByte, set
// for replayedByUs's requests only.
func (x *exchange) gotFirstByte() { x.gotByte.Store(true) }

// replayAfterSent reports whether r, which failed with err, is sent once
// more, as the fast path would: one of replayedByUs's requests, on the
// only connection it had, a reused one, which failed before a byte of the
// response came, neither by a timeout (RouteTimeout: a slow upstream
// would get it twice) nor because the client went.
func (x *exchange) replayAfterSent(r *http.Request, err error) bool {
	var ne net.Error
	return replayedByUs(r) && r.Body == nil && x.conns == 1 && x.info.Reused && !x.gotByte.Load() &&
		!(errors.As(err, &ne) && ne.Timeout()) && r.Context().Err() == nil
}

func (p *Proxy) modifyResponse(res *http.Response) error {
	x := res.Request.Context().Value(exchangeKey{}).(*exchange)
	x.status = res.StatusCode
	if (res.StatusCode >= 400 || res.Close) && x.trace.WroteRequest != nil && !x.wrote.Load() {
		// An error status before the upstream took the whole body: the
		// client should stop sending it (RFC 9112, 9.3), and the
		// connection cannot carry another request. So with an upstream
		// that closes the connection: it will not take the rest.
		res.Header["Connection"] = []string{"close"}
	}
	if !validStatus(res.StatusCode) {
		x.status = 0
		return errStatusOutOfRange // the error closes the response's connection
	}
	if res.StatusCode == http.StatusSwitchingProtocols {
		// ReverseProxy refuses a switch to another protocol than the one
		// asked for only after this hook, without closing the upstream
		// connection; and it tunnels a 101 to a request that asked for
		// none when neither names a protocol. Refuse both here, before
		// the guard steps aside: the client connection goes on as HTTP,
		// and an error return closes the response's connection.
		want, got := upgradeType(res.Request.Header), upgradeType(res.Header)
		if want == "" || !strings.EqualFold(want, got) {
			x.status = 0
			return fmt.Errorf("upstream switched protocols to %q, the request asked for %q", got, want)
		}
		x.dc.g.passthrough() // the connection becomes a tunnel
	}
	if !x.sent.IsZero() {
		x.info.UpstreamTime = time.Since(x.sent)
	}
	x.vals[3] = strconv.FormatInt(x.info.UpstreamTime.Milliseconds(), 10)
	res.Header[hdrServiceTime] = x.vals[3:4:4]
	p.setServer(res.Header, x.vals[4:5:5])
	if res.StatusCode != http.StatusSwitchingProtocols && x.upc != nil && res.Body != http.NoBody {
		x.body.ReadCloser, x.body.conn = res.Body, x.upc
		x.body.idle.timeout = p.o.StreamIdleTimeout // none when 0
		res.Body = &x.body
	}
	if res.StatusCode != http.StatusSwitchingProtocols {
		// ReverseProxy next copies res.Header into the client's response
		// value by value, an allocation per field. Hand the (already
		// hop-by-hop-cleaned) slices over instead. Content-Type stays for
		// ReverseProxy to copy: it looks there for server-sent events,
		// which it flushes at once. (The 101 path writes res.Header itself.)
		h := x.rw.Header()
		for k, vv := range res.Header {
			if k != "Content-Type" {
				h[k] = vv
				delete(res.Header, k)
			}
		}
	}
	return nil
}

// upgradeType is the protocol a request or response header asks to switch
// to, as ReverseProxy reads it: Upgrade, when Connection names it.
func upgradeType(h http.Header) string {
	if !httpguts.HeaderValuesContainsToken(h["Connection"], "Upgrade") {
		return ""
	}
	return h.Get("Upgrade")
}

// countedBody counts the request body bytes read from the client: a
// chunked body's decoded ones, as net/http's server hands them over.
// Atomic: the Transport's write may still read when the handler ends.
type countedBody struct {
	io.ReadCloser
	n atomic.Int64
}

func (b *countedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// dropBodyRest reads and drops the unread rest of r's body as net/http's
// server does when it closes it after the handler — at most
// postHandlerDiscard bytes; a Content-Length rest longer than that is not
// read, and the connection closes — but through x.reqBody, so that the
// record counts those bytes: they were received from the client for this
// request (Envoy's %BYTES_RECEIVED%; TestRecordCountsDroppedBody). A body
// the Transport read whole leaves nothing to read. (A chunked rest longer
// than postHandlerDiscard: the server's close then reads up to as much
// again, uncounted, before it closes the connection.)
func (x *exchange) dropBodyRest(r *http.Request) {
	if x.reqBody.ReadCloser != nil && (r.ContentLength < 0 || r.ContentLength-x.reqBody.n.Load() <= postHandlerDiscard) {
		io.CopyN(io.Discard, &x.reqBody, postHandlerDiscard)
	}
	r.Body.Close()
}

// idleBody is an upstream response body whose every read waits at most
// the stream idle timeout (idle) for the upstream: one that stops sending
// in the middle of a body is cut, as a client that stops reading is
// (Envoy's stream_idle_timeout). The Transport reads a body on the
// caller's goroutine, from the connection it is alone to read meanwhile,
// so the deadline may stay set from one read to the next; once the body
// ends, it is cleared for the connection's next response (a body closed
// before its end closes the connection). A response
// without a body (http.NoBody) is not wrapped: its connection may already
// carry another request. Its read error, kept, tells a body cut by a
// close (UC) from one cut by broken chunking (UPE).
type idleBody struct {
	io.ReadCloser
	conn     net.Conn
	idle     idleDeadline // conn's read deadline
	timedOut bool
	err      error // the read error other than io.EOF
}

func (b *idleBody) Read(p []byte) (int, error) {
	b.idle.read(b.conn)
	n, err := b.ReadCloser.Read(p)
	if err != nil {
		b.conn.SetReadDeadline(time.Time{})
		b.idle.forget()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			b.timedOut = true
		}
		if err != io.EOF {
			b.err = err
		}
	}
	return n, err
}

// keepsServer reports whether the upstream's Server values (upstreamSent:
// it sent any; false for a local reply) stay as they are under
// ServerHeaderMode, instead of detour's ServerHeader.
func (p *Proxy) keepsServer(upstreamSent bool) bool {
	return p.o.ServerHeaderMode == ServerPassThrough || p.o.ServerHeaderMode == ServerAppendIfAbsent && upstreamSent
}

// setServer sets the Server header as ServerHeaderMode says, in val (a
// one-element slice) if given.
func (p *Proxy) setServer(h http.Header, val []string) {
	if p.keepsServer(len(h["Server"]) > 0) {
		return
	}
	if val == nil {
		val = make([]string, 1)
	}
	val[0] = p.o.ServerHeader
	h["Server"] = val
}

// postHandlerDiscard is how much of a request body's unread rest closing
// it reads and drops, to keep the connection (net/http's
// maxPostHandlerReadBytes); a connection with more left is closed.
const postHandlerDiscard = 256 << 10

// proxyError answers a request that got no upstream response.
func (p *Proxy) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	x := r.Context().Value(exchangeKey{}).(*exchange)
	var de *upstream.DialError
	var ne net.Error
	switch msg := x.dc.g.bodyFailure(); {
	case msg != "":
		// The client's body framing broke (the read error also canceled
		// the request): the upstream request was aborted before a
		// complete body went out.
		x.info.Flags |= DownstreamProtocolError
		p.localReply(x, http.StatusBadRequest, "invalid request: "+msg, true)
		p.log.Info("refused request body", "client", x.info.Client, "dst", x.info.Dst, "reason", msg)
		return
	case x.dc.bodyStalled.Load():
		// Envoy's answer to a request stream idle for
		// stream_idle_timeout before its response began.
		x.info.Flags |= StreamIdleTimeout
		p.localReply(x, http.StatusRequestTimeout, "stream timeout", true)
		return
	case r.Context().Err() != nil:
		x.info.Flags |= DownstreamClosed
		p.log.Debug("client went away", "dst", x.info.Dst, "err", err)
		// Nobody to answer; and a client that only half-closed must not
		// read the empty 200 net/http would send for a silent handler.
		panic(http.ErrAbortHandler)
	}
	// A body the upstream did not take whole is still (in part) in the
	// client's stream: the connection cannot carry another request,
	// unless the rest is one that closing the body reads and drops after
	// the answer (a Content-Length of at most postHandlerDiscard).
	unread := x.trace.WroteRequest != nil && !x.wrote.Load() &&
		(r.ContentLength < 0 || r.ContentLength > postHandlerDiscard)
	switch {
	case errors.As(err, &de):
		x.info.Flags |= UpstreamConnectFailure
		p.localReply(x, http.StatusServiceUnavailable, msgReset+string(de.Reason), unread)
	case errors.As(err, &ne) && ne.Timeout():
		x.info.Flags |= UpstreamTimeout
		p.localReply(x, http.StatusGatewayTimeout, msgTimeout, unread)
	default:
		if uc, ok := x.upc.(*upConn); ok {
			if e := uc.headErr.Load(); e != nil {
				err = headCut(*e, err)
			}
		}
		flag, code, reason := upstreamReset(err)
		x.info.Flags |= flag
		p.localReply(x, code, msgReset+reason, unread)
	}
	p.logUpstreamError(&x.info, err)
}

// preDialFailed answers the connection's first request when the connect to
// its original destination, made while the connection was sniffed, failed:
// 503 with the connect error's reason, without a second connect timeout.
func (p *Proxy) preDialFailed(x *exchange) {
	err := x.dc.dialErr
	h := p.hosts.acquire(p.hostKey(x.dc.client, x.info.Dst))
	h.failures.Add(1)
	p.hosts.release(h)
	reason := upstream.Classify(err)
	var de *upstream.DialError
	if errors.As(err, &de) {
		reason = de.Reason
	}
	x.info.Flags |= UpstreamConnectFailure
	p.localReply(x, http.StatusServiceUnavailable, msgReset+string(reason), false)
	p.log.Info("upstream error", "client", x.info.Client, "dst", x.info.Dst, "host", x.info.Host,
		"flags", x.info.Flags, "err", err, "pre_dialed", true)
}

// headerTimeout reports a connection closed because a request head did
// not arrive within HeaderTimeout (net/http closes it without a response).
func (p *Proxy) headerTimeout(dc *downConn, held int) {
	// The deadline that expired: HeaderTimeout from the start of the
	// connection's first head, or from a later head's first byte (headBy);
	// else, on a keep-alive connection, net/http's IdleTimeout (it sees
	// nothing of a head until the guard hands it on).
	timeout := p.o.HeaderTimeout
	if dc.g.heads > 0 && dc.headBy.Load() == 0 {
		timeout = p.o.IdleTimeout
	}
	start := dc.start
	if d := dc.g.deadline.Load(); d != 0 {
		if s := time.Unix(0, d).Add(-timeout); s.After(start) {
			start = s
		}
	}
	p.reportHeaderTimeout(dc.id, dc.client, dc.origDst, start, timeout, held)
}

// reportHeaderTimeout logs and reports (flag HT, status 0) a connection
// closed because a head begun at start did not arrive within timeout.
func (p *Proxy) reportHeaderTimeout(id uint64, client, origDst netip.AddrPort, start time.Time, timeout time.Duration, held int) {
	p.log.Info("request header timeout; closing the client connection", "client", client, "dst", origDst,
		"timeout", timeout, "head_bytes", held, "flags", RequestHeaderTimeout)
	if p.o.OnRequest != nil {
		p.o.OnRequest(&RequestInfo{ConnID: id, Start: start, Client: client, OrigDst: origDst, Dst: origDst,
			Flags: RequestHeaderTimeout, Duration: time.Since(start), Details: "request header timeout"})
	}
}

// Envoy's reset reasons for a failure after the connection was made.
const (
	reasonTermination   = "connection termination"
	reasonProtocolError = "protocol error"
)

// resetReason names a failure after the connection was made (not a
// timeout): the upstream closed (EOF, also before a request went out on
// a pooled connection: the Transport's "server closed idle connection"),
// reset, or sent what is not HTTP/1 — a malformed status line or field,
// a bad or conflicting Content-Length, Content-Length with
// Transfer-Encoding, broken chunking, a head over the limit, an
// unasked-for 101 — the errors of http.ReadResponse, of its body readers
// and of detour's own checks, which name no common type.
func resetReason(err error) string {
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed),
		strings.Contains(err.Error(), "server closed idle connection"):
		return reasonTermination
	case upstream.Classify(err) == upstream.ReasonReset:
		return string(upstream.ReasonReset)
	}
	return reasonProtocolError
}

// headCut is the error of a response head the upstream's read error
// (readErr: a close or a reset) cut before its end: that error, not the
// one http.ReadResponse made of the partial head (a cut field line reads
// as a malformed one), as Envoy's codec takes a close before the head's
// end for a connection termination.
func headCut(readErr, err error) error {
	return fmt.Errorf("response head cut: %w (%v)", readErr, err)
}

// upstreamReset is the flag, the status and the reason of a request
// whose upstream failed after the connection was made, before the
// response head: as Envoy's router, 502 and UPE for a protocol error
// (a response that is not HTTP: the gateway got an invalid response, RFC
// 9110, 15.6.3), 503 and UC for a close or reset.
func upstreamReset(err error) (Flags, int, string) {
	if r := resetReason(err); r != reasonProtocolError {
		return UpstreamClosed, http.StatusServiceUnavailable, r
	}
	return UpstreamProtocolError, http.StatusBadGateway, reasonProtocolError
}

// upstreamCut is the flag of a response body the upstream cut: UPE when
// err, the body's read error, is a protocol error (bad chunking), else UC.
func upstreamCut(err error) Flags {
	if err != nil && resetReason(err) == reasonProtocolError {
		return UpstreamProtocolError
	}
	return UpstreamClosed
}

// localReply answers from detour itself with a short text body.
func (p *Proxy) localReply(x *exchange, code int, msg string, closeConn bool) {
	x.info.Details = replyDetails(msg)
	h := x.rw.Header()
	clear(h)
	p.setServer(h, nil)
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(msg)))
	if closeConn {
		h.Set("Connection", "close")
	}
	x.rw.WriteHeader(code)
	io.WriteString(x.rw, msg)
}

// replyDetails is a local reply's reason for the record: its body without
// Envoy's fixed prefix.
func replyDetails(msg string) string {
	msg = strings.TrimPrefix(msg, msgReset)
	return strings.TrimPrefix(msg, "invalid request: ")
}

// finish records x, whose response (or tunnel) was done at end.
func (p *Proxy) finish(x *exchange, end time.Time) {
	i := &x.info
	i.Duration = end.Sub(i.Start)
	i.Status, i.BodyBytes = x.rw.status, x.rw.bytes
	i.RequestBytes = x.reqBody.n.Load()
	if i.Status == 0 && x.status == http.StatusSwitchingProtocols {
		i.Status = x.status // written to the hijacked conn, not through WriteHeader
	}
	p.report(i)
}

// requestID keeps a client's x-request-id (its first value, v) when it is
// a sane token (a UUID, a hex or base64 id) and makes a UUID v4 otherwise.
func requestID(v string) string {
	if saneRequestID(v) {
		return v
	}
	var id [36]byte
	newUUID(&id)
	return string(id[:])
}

// saneRequestID reports whether a client's x-request-id may be kept: 1 to
// 128 characters of a UUID, a hex or a base64 id.
func saneRequestID[T string | []byte](v T) bool {
	ok := len(v) > 0 && len(v) <= 128
	for i := 0; ok && i < len(v); i++ {
		c := v[i]
		ok = 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-_.:+/=", c) >= 0
	}
	return ok
}

// newUUID writes a random (version 4) UUID in its text form into s.
func newUUID(s *[36]byte) {
	var u [16]byte
	rand.Read(u[:])
	u[6] = u[6]&0x0f | 0x40 // version 4
	u[8] = u[8]&0x3f | 0x80 // RFC 9562 variant
	hex.Encode(s[0:8], u[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], u[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], u[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], u[8:10])
	s[23] = '-'
	hex.Encode(s[24:], u[10:])
}

// headerSize is the size of an HTTP/2 request's head in HTTP/1.1 wire
// format (request line and field lines), and its number of fields.
func headerSize(r *http.Request) (n, fields int) {
	n = len(r.Method) + 1 + len(r.RequestURI) + 1 + len("HTTP/1.1") + 2 + 2
	if r.Host != "" {
		n += len("Host: \r\n") + len(r.Host)
		fields++
	}
	for k, vs := range r.Header {
		for _, v := range vs {
			n += len(k) + 2 + len(v) + 2
		}
		fields += len(vs)
	}
	return n, fields
}

// recorder notes the status and body size written to the client, and is
// the writer ReverseProxy relays the upstream's 1xx responses through, so
// it is where an upstream's 100 Continue is held back (WriteHeader). Unwrap
// lets http.ResponseController reach Flush and Hijack underneath.
type recorder struct {
	http.ResponseWriter
	http10   bool         // the client spoke HTTP/1.0, which takes no 1xx
	draining *atomic.Bool // HTTP/1: set, a final response says Connection: close
	status   int
	bytes    int64
	writeErr error
}

// WriteHeader drops an upstream's 100 Continue, which ReverseProxy relays:
// the server already sends the client its own when the Transport starts
// reading the body (after the upstream's 100 or ExpectContinueTimeout),
// and relaying the upstream's too would give the client two. Envoy, by
// default, answers 100-continue itself in the same way.
//
// It also holds back every 1xx from an HTTP/1.0 client, which must not get
// one (RFC 9110, 15.2) and may take it for the final response, and keeps
// net/http from guessing a Content-Type the upstream did not send (the
// fast path adds none either; a guess of text/html can make a browser run
// what the upstream served as untyped bytes).
func (r *recorder) WriteHeader(code int) {
	if code == http.StatusContinue || code < 200 && code != http.StatusSwitchingProtocols && r.http10 {
		return
	}
	if code < 200 && code != http.StatusSwitchingProtocols {
		// ReverseProxy relays a 1xx's fields as they came: drop the
		// hop-by-hop ones and those its Connection names, as for a final
		// response (and as the fast path does).
		h := r.Header()
		conn := h["Connection"]
		for k := range h {
			if slices.Contains(hopByHop, k) || named(conn, k) {
				delete(h, k)
			}
		}
	}
	if r.status == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) {
		r.status = code
	}
	if code >= 200 {
		r.noSniff()
		if r.draining != nil && r.draining.Load() {
			// net/http's Shutdown, which would say so, begins only once
			// no head is being received (Proxy.Shutdown).
			r.Header().Set("Connection", "close")
		}
	}
	if code == http.StatusNotModified {
		keepNotModifiedFields(r.Header())
	}
	r.ResponseWriter.WriteHeader(code)
}

// keepNotModifiedFields keeps a 304's Content-Type and Content-Length,
// which net/http's server deletes before the head goes out (RFC 7232's
// "SHOULD NOT generate" for an origin), under a spelling it does not
// look for: field names are case-insensitive (RFC 9110, 5.1). A proxy
// relays them as the fast path and Envoy do: RFC 9110, 15.4.5 lets a
// 304 carry them, and its Content-Length describes the representation,
// never a body that follows (RFC 9112, 6.3).
func keepNotModifiedFields(h http.Header) {
	for _, k := range [...]string{"Content-Type", "Content-Length"} {
		if v := h[k]; len(v) > 0 {
			delete(h, k)
			h[strings.ToLower(k)] = v
		}
	}
}

// noSniff stops net/http from adding a Content-Type of its own.
func (r *recorder) noSniff() {
	if h := r.Header(); h.Get("Content-Type") == "" {
		h["Content-Type"] = nil
	}
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
		r.noSniff()
	}
	n, err := r.ResponseWriter.Write(b)
	r.bytes += int64(n)
	if err != nil && r.writeErr == nil {
		r.writeErr = err
	}
	return n, err
}

// flushCut sends the client what the handler wrote of a response whose
// upstream failed in the middle of its body, before net/http aborts the
// connection: net/http's server holds up to a few KiB (head included) in
// its buffers, and an abort drops them, so a short response cut by the
// upstream reached the client as nothing at all while the record said
// 200. Flushed, the client reads the head and the cut body, then the
// close, as on the fast path and from Envoy, which sends the head on as
// soon as it has it; the record's 200 UC is then what the client saw.
func (r *recorder) flushCut() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok && r.status != 0 {
		f.Flush()
	}
}

func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }
