package httpproxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/detour-proxy/detour/internal/upstream"
)

// Flags are Envoy-style response flags for access logs and metrics.
type Flags uint8

const (
	UpstreamConnectFailure Flags = 1 << iota // UF: connect refused, timed out, unreachable
	UpstreamTimeout                          // UT: no response headers within RouteTimeout
	UpstreamClosed                           // UC: upstream reset or closed before or during the response
	DownstreamClosed                         // DC: the client went away first
	LoopRefused                              // LR: the destination is detour itself
)

var flagNames = [...]string{"UF", "UT", "UC", "DC", "LR"}

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
	Start     time.Time
	Client    netip.AddrPort
	OrigDst   netip.AddrPort // the connection's original destination
	Dst       netip.AddrPort // where the request went (differs when steered by header)
	Proto     string         // as the client spoke it: HTTP/1.0, HTTP/1.1, HTTP/2.0
	Method    string
	Host      string
	Path      string
	RequestID string
	// Status is the status sent to the client (101 for upgrades); 0 when
	// none was sent because the client had gone.
	Status       int
	Flags        Flags
	Duration     time.Duration // until the response (or tunnel) was done
	UpstreamTime time.Duration // request sent upstream to response headers; 0 without a response
	Reused       bool          // served on a pooled upstream connection
	BodyBytes    int64         // response body bytes written to the client
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
// through the request context.
type exchange struct {
	info    RequestInfo
	host    *host
	rw      *recorder
	sent    time.Time // upstream connection obtained: the request goes out
	gotConn bool
	status  int // upstream's status, for upgrades that bypass WriteHeader
}

func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	dc := r.Context().Value(connKey{}).(*downConn)
	x := &exchange{rw: &recorder{ResponseWriter: w}}
	x.info = RequestInfo{
		Start: time.Now(), Client: dc.client, OrigDst: dc.origDst, Dst: dc.origDst,
		Proto: r.Proto, Method: r.Method, Host: r.Host, Path: r.URL.Path,
		RequestID: requestID(r.Header.Get(hdrRequestID)),
	}
	defer func() {
		v := recover()
		if v == http.ErrAbortHandler { // ReverseProxy: body copy failed mid-response
			if x.rw.writeErr != nil {
				x.info.Flags |= DownstreamClosed
			} else {
				x.info.Flags |= UpstreamClosed
			}
		}
		p.finish(x)
		if v != nil {
			panic(v) // net/http aborts the connection: the client sees a truncated response
		}
	}()

	if n := headerBytes(r); n > p.o.MaxRequestHeaderBytes {
		p.localReply(x, http.StatusRequestHeaderFieldsTooLarge, "request header fields too large", true)
		return
	}
	if v := r.Header.Values(p.hdr); len(v) > 0 && p.o.UseOriginalDstHeader {
		dst, err := netip.ParseAddrPort(strings.TrimSpace(v[0]))
		if err != nil || len(v) > 1 || dst.Port() == 0 {
			p.localReply(x, http.StatusBadRequest, "invalid "+strings.ToLower(p.hdr)+" header", false)
			return
		}
		x.info.Dst = unmap(dst)
	}
	if p.o.IsSelf != nil && p.o.IsSelf(x.info.Dst) {
		x.info.Flags |= LoopRefused
		p.localReply(x, http.StatusLoopDetected, "loop detected: "+x.info.Dst.String()+" is this proxy", false)
		return
	}

	x.host = p.hosts.acquire(p.hostKey(dc.client, x.info.Dst))
	defer func() {
		if x.gotConn {
			x.host.inUse.Add(-1)
		}
		p.hosts.release(x.host)
	}()
	ctx := context.WithValue(r.Context(), exchangeKey{}, x)
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		GotConn: func(ci httptrace.GotConnInfo) {
			x.sent, x.gotConn, x.info.Reused = time.Now(), true, ci.Reused
			x.host.inUse.Add(1)
			if ci.Reused {
				x.host.reuses.Add(1)
				p.log.Debug("reusing connection", "host", x.host.key, "local", ci.Conn.LocalAddr())
			}
		},
	})
	p.rp.ServeHTTP(x.rw, r.WithContext(ctx))
}

// rewrite aims the outbound request at the chosen destination and sets the
// forwarding headers. The Host header is the client's.
func (p *Proxy) rewrite(pr *httputil.ProxyRequest) {
	x := pr.In.Context().Value(exchangeKey{}).(*exchange)
	pr.Out.URL.Scheme = "http"
	pr.Out.URL.Host = x.info.Dst.String() // only names the pool: host.dial ignores it
	in, out := pr.In.Header, pr.Out.Header
	// ReverseProxy removed these from out; a transparent proxy keeps the
	// client's values.
	for _, k := range []string{"Forwarded", "X-Forwarded-Host"} {
		if v := in[k]; v != nil {
			out[k] = v
		}
	}
	switch prior := in["X-Forwarded-For"]; p.o.XForwardedFor {
	case XFFAppend:
		xff := x.info.Client.Addr().String()
		if len(prior) > 0 {
			xff = strings.Join(prior, ", ") + ", " + xff
		}
		out.Set("X-Forwarded-For", xff)
	case XFFLeave:
		if prior != nil {
			out["X-Forwarded-For"] = prior
		}
	}
	out.Set("X-Forwarded-Proto", "http")
	// Request trailers arrive after the body: share the map net/http fills
	// (ReverseProxy's clone would forward empty values).
	pr.Out.Trailer = pr.In.Trailer
	out.Set(hdrRequestID, x.info.RequestID)
	out.Del(p.hdr)
}

func (p *Proxy) roundTrip(r *http.Request) (*http.Response, error) {
	x := r.Context().Value(exchangeKey{}).(*exchange)
	return x.host.tr.RoundTrip(r)
}

func (p *Proxy) modifyResponse(res *http.Response) error {
	x := res.Request.Context().Value(exchangeKey{}).(*exchange)
	x.status = res.StatusCode
	if !x.sent.IsZero() {
		x.info.UpstreamTime = time.Since(x.sent)
	}
	p.setServer(res.Header)
	res.Header.Set(hdrServiceTime, strconv.FormatInt(x.info.UpstreamTime.Milliseconds(), 10))
	return nil
}

func (p *Proxy) setServer(h http.Header) {
	switch p.o.ServerHeaderMode {
	case ServerOverwrite:
		h.Set("Server", p.o.ServerHeader)
	case ServerAppendIfAbsent:
		if len(h.Values("Server")) == 0 {
			h.Set("Server", p.o.ServerHeader)
		}
	}
}

// proxyError answers a request that got no upstream response.
func (p *Proxy) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	x := r.Context().Value(exchangeKey{}).(*exchange)
	var de *upstream.DialError
	var ne net.Error
	switch {
	case r.Context().Err() != nil:
		x.info.Flags |= DownstreamClosed
		p.log.Debug("client went away", "dst", x.info.Dst, "err", err)
		return // nobody to answer
	case errors.As(err, &de):
		x.info.Flags |= UpstreamConnectFailure
		p.localReply(x, http.StatusServiceUnavailable, msgReset+string(de.Reason), false)
	case errors.As(err, &ne) && ne.Timeout():
		x.info.Flags |= UpstreamTimeout
		p.localReply(x, http.StatusGatewayTimeout, msgTimeout, false)
	default:
		x.info.Flags |= UpstreamClosed
		p.localReply(x, http.StatusServiceUnavailable, msgReset+resetReason(err), false)
	}
	p.log.Info("upstream error", "client", x.info.Client, "dst", x.info.Dst, "host", x.info.Host,
		"flags", x.info.Flags, "err", err)
}

// resetReason names a failure after the connection was made.
func resetReason(err error) string {
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection termination"
	case upstream.Classify(err) == upstream.ReasonReset:
		return string(upstream.ReasonReset)
	}
	return "protocol error"
}

// localReply answers from detour itself with a short text body.
func (p *Proxy) localReply(x *exchange, code int, msg string, closeConn bool) {
	h := x.rw.Header()
	clear(h)
	p.setServer(h)
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(msg)))
	if closeConn {
		h.Set("Connection", "close")
	}
	x.rw.WriteHeader(code)
	io.WriteString(x.rw, msg)
}

func (p *Proxy) finish(x *exchange) {
	i := &x.info
	i.Duration = time.Since(i.Start)
	i.Status, i.BodyBytes = x.rw.status, x.rw.bytes
	if i.Status == 0 && x.status == http.StatusSwitchingProtocols {
		i.Status = x.status // written to the hijacked conn, not through WriteHeader
	}
	p.log.Debug("request", "client", i.Client, "dst", i.Dst, "method", i.Method, "host", i.Host,
		"path", i.Path, "status", i.Status, "flags", i.Flags, "duration", i.Duration, "request_id", i.RequestID)
	if p.o.OnRequest != nil {
		p.o.OnRequest(*i)
	}
}

// requestID keeps a client's x-request-id when it is a sane token (a UUID,
// a hex or base64 id) and makes a UUID v4 otherwise.
func requestID(v string) string {
	ok := len(v) > 0 && len(v) <= 128
	for i := 0; ok && i < len(v); i++ {
		c := v[i]
		ok = 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-_.:+/=", c) >= 0
	}
	if ok {
		return v
	}
	return uuid.NewString()
}

// headerBytes is the size of the request line and header section as the
// client sent them (HTTP/1.x wire format, also applied to HTTP/2).
func headerBytes(r *http.Request) int {
	n := len(r.Method) + 1 + len(r.RequestURI) + 1 + len(r.Proto) + 2 + 2
	if r.Host != "" {
		n += len("Host: \r\n") + len(r.Host)
	}
	for k, vs := range r.Header {
		for _, v := range vs {
			n += len(k) + 2 + len(v) + 2
		}
	}
	return n
}

// recorder notes the status and body size written to the client. Unwrap
// lets http.ResponseController reach Flush and Hijack underneath.
type recorder struct {
	http.ResponseWriter
	status   int
	bytes    int64
	writeErr error
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(b)
	r.bytes += int64(n)
	if err != nil && r.writeErr == nil {
		r.writeErr = err
	}
	return n, err
}

func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }
