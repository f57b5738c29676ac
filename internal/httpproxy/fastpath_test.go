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
	"net/http/httptrace"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/detour-proxy/detour/internal/fdtest"
)

// seen is one exchange as the upstream and the client saw it.
type seen struct {
	upRaw    string // the request head as it reached the upstream
	upReq    *http.Request
	upBody   string
	infos    []int // 1xx statuses the client got
	res      *http.Response
	body     string
	trailers http.Header
	closed   bool // the proxy closed the client connection after the response
}

// exchangeThrough sends req to a proxy (fast path or net/http) whose
// upstream answers resp, and returns what both ends saw.
func exchangeThrough(t *testing.T, slow bool, req, resp string) seen {
	t.Helper()
	var s seen
	got := make(chan struct{})
	dst := rawUpstream(t, func(c net.Conn) {
		defer c.Close()
		var raw bytes.Buffer
		br := bufio.NewReader(io.TeeReader(c, &raw))
		r, err := http.ReadRequest(br)
		if err != nil {
			t.Errorf("upstream: %v", err)
			close(got)
			return
		}
		head := raw.String()
		if i := strings.Index(head, "\r\n\r\n"); i >= 0 {
			head = head[:i+4]
		}
		b, _ := io.ReadAll(r.Body)
		s.upRaw, s.upReq, s.upBody = head, r, string(b)
		close(got)
		io.WriteString(c, resp)
	})
	f := newFront(t, Options{DisableFastPath: slow}, dst)
	c, br := f.raw(t)
	io.WriteString(c, req)
	method, _, _ := strings.Cut(req, " ")
	for {
		res, err := http.ReadResponse(br, &http.Request{Method: method})
		if err != nil {
			t.Fatalf("client: %v", err)
		}
		if res.StatusCode < 200 {
			s.infos = append(s.infos, res.StatusCode)
			continue
		}
		b, err := io.ReadAll(res.Body)
		if err != nil {
			t.Fatalf("client body: %v", err)
		}
		s.res, s.body, s.trailers = res, string(b), res.Trailer
		break
	}
	<-got
	c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	_, err := br.ReadByte()
	s.closed = err != nil && !errors.Is(err, os.ErrDeadlineExceeded)
	return s
}

// TestFastPathMatchesNetHTTP sends the same requests through the fast
// path and through net/http + ReverseProxy and compares what the upstream
// received and what the client got back, field by field. Known, intended
// differences: the fast path keeps the client's field names and order
// (net/http canonicalizes and sorts), and it adds neither a Date nor a
// sniffed Content-Type the upstream did not send.
func TestFastPathMatchesNetHTTP(t *testing.T) {
	const ok = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
	tests := []struct {
		name, req, resp string
	}{
		{"simple GET", "GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: t/1\r\nAccept: */*\r\nx-lower: v\r\n\r\n", ok},
		{"query and escapes", "GET /a%20b/c?x=1&y=%2F HTTP/1.1\r\nHost: example.com:8080\r\nx-lower: v\r\n\r\n", ok},
		{"POST with a body", "POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Type: text/plain\r\nx-lower: v\r\n\r\nhello", ok},
		{"HEAD", "HEAD / HTTP/1.1\r\nHost: a\r\nx-lower: v\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n"},
		{"hop-by-hop request fields", "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: Basic eA==\r\nProxy-Connection: keep-alive\r\nx-lower: v\r\n\r\n", ok},
		{"forwarding fields", "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2\r\nX-Request-Id: abc-123\r\nX-Forwarded-Proto: https\r\nForwarded: for=1.2.3.4\r\nX-Forwarded-Host: h\r\nx-lower: v\r\n\r\n", ok},
		{"invalid request id replaced", "GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: a b\r\nx-lower: v\r\n\r\n", ok},
		{"steering header removed", "GET / HTTP/1.1\r\nHost: a\r\nX-Detour-Original-Dst-Host: 1.2.3.4:80\r\nx-lower: v\r\n\r\n", ok},
		{"repeated fields", "GET / HTTP/1.1\r\nHost: a\r\nAccept: a\r\nAccept: b\r\nx-lower: v\r\n\r\n", ok},
		{"chunked response with trailers", "GET / HTTP/1.1\r\nHost: a\r\nx-lower: v\r\n\r\n",
			"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\nX-T: v\r\n\r\n"},
		{"204", "GET / HTTP/1.1\r\nHost: a\r\nx-lower: v\r\n\r\n", "HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n"},
		{"304", "GET / HTTP/1.1\r\nHost: a\r\nx-lower: v\r\n\r\n", "HTTP/1.1 304 Not Modified\r\nEtag: \"x\"\r\n\r\n"},
		// RFC 9110, 8.6: no Content-Length in a 204 (net/http's writer drops it).
		{"204 with Content-Length", "GET / HTTP/1.1\r\nHost: a\r\nx-lower: v\r\n\r\n", "HTTP/1.1 204 No Content\r\nX-A: 1\r\nContent-Length: 0\r\n\r\n"},
		{"204 with Content-Length, read by http.ReadResponse", "GET / HTTP/1.1\r\nHost: a\r\nx-lower: v\r\n\r\n", "HTTP/1.1 204 No Content\r\nPragma: no-cache\r\nContent-Length: 0\r\n\r\n"},
		{"close-delimited response", "GET / HTTP/1.1\r\nHost: a\r\nx-lower: v\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-B: 2\r\n\r\nbody until close"},
		{"response hop-by-hop fields", "GET / HTTP/1.1\r\nHost: a\r\nx-lower: v\r\n\r\n",
			"HTTP/1.1 200 OK\r\nConnection: X-Secret\r\nX-Secret: s\r\nKeep-Alive: timeout=5\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n\r\nk"},
		{"early hints", "GET / HTTP/1.1\r\nHost: a\r\nx-lower: v\r\n\r\n",
			"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n" + ok},
		{"upstream Server replaced", "GET / HTTP/1.1\r\nHost: a\r\nx-lower: v\r\n\r\n", "HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n"},
		{"client asks to close", "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nx-lower: v\r\n\r\n", ok},
		{"404 with a body", "GET /missing HTTP/1.1\r\nHost: a\r\nx-lower: v\r\n\r\n", "HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: 9\r\n\r\nnot found"},
		{"response fields in upstream case and order", "GET / HTTP/1.1\r\nHost: a\r\nx-lower: v\r\n\r\n",
			"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-b: 2\r\nX-A: 1\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\ncontent-length: 2\r\n\r\nok"},
		{"HTTP/1.0 response", "GET / HTTP/1.1\r\nHost: a\r\nx-lower: v\r\n\r\n", "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"},
		{"repeated Content-Length response", "GET / HTTP/1.1\r\nHost: a\r\nx-lower: v\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok"},
	}
	uuid := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fast, slow := exchangeThrough(t, false, tt.req, tt.resp), exchangeThrough(t, true, tt.req, tt.resp)
			if !strings.Contains(fast.upRaw, "\r\nx-lower: v\r\n") {
				t.Errorf("fast path not taken: upstream got %q", fast.upRaw)
			}
			// The upstream's view.
			for _, s := range []*seen{&fast, &slow} {
				if id := s.upReq.Header.Get("X-Request-Id"); id != "abc-123" && !uuid.MatchString(id) {
					t.Errorf("request id %q", id)
				}
				if !strings.Contains(tt.req, "X-Request-Id: abc-123") {
					s.upReq.Header.Del("X-Request-Id") // a new UUID each time
				}
			}
			if a, b := fast.upReq, slow.upReq; a.Method != b.Method || a.RequestURI != b.RequestURI || a.Host != b.Host ||
				a.ContentLength != b.ContentLength || !slices.Equal(a.TransferEncoding, b.TransferEncoding) {
				t.Errorf("upstream request line: fast %s %s host %q len %d %v, net/http %s %s host %q len %d %v",
					a.Method, a.RequestURI, a.Host, a.ContentLength, a.TransferEncoding, b.Method, b.RequestURI, b.Host, b.ContentLength, b.TransferEncoding)
			}
			if a, b := fmt.Sprint(fast.upReq.Header), fmt.Sprint(slow.upReq.Header); a != b {
				t.Errorf("upstream fields:\nfast     %s\nnet/http %s", a, b)
			}
			if fast.upBody != slow.upBody {
				t.Errorf("upstream body: fast %q, net/http %q", fast.upBody, slow.upBody)
			}
			sameClientView(t, fast.res, slow.res, tt.resp)
			if fast.body != slow.body || fmt.Sprint(fast.trailers) != fmt.Sprint(slow.trailers) ||
				!slices.Equal(fast.infos, slow.infos) || fast.closed != slow.closed {
				t.Errorf("fast: body %q trailers %v 1xx %v closed %v; net/http: body %q trailers %v 1xx %v closed %v",
					fast.body, fast.trailers, fast.infos, fast.closed, slow.body, slow.trailers, slow.infos, slow.closed)
			}
		})
	}
}

// sameClientView checks that the client got the same response from the
// fast path and the net/http path: status, framing, and fields (less the
// service time, and the Date and Content-Type net/http adds where the
// upstream sent none, upstream's answer being resp).
func sameClientView(t *testing.T, fast, slow *http.Response, resp string) {
	t.Helper()
	if a, b := fast, slow; a.StatusCode != b.StatusCode || a.ContentLength != b.ContentLength ||
		!slices.Equal(a.TransferEncoding, b.TransferEncoding) || a.Close != b.Close {
		t.Errorf("response: fast %d len %d %v close %v, net/http %d len %d %v close %v",
			a.StatusCode, a.ContentLength, a.TransferEncoding, a.Close, b.StatusCode, b.ContentLength, b.TransferEncoding, b.Close)
	}
	lower := strings.ToLower(resp)
	for _, res := range []*http.Response{fast, slow} {
		if res.Header.Get(hdrServiceTime) == "" {
			t.Errorf("no %s", hdrServiceTime)
		}
		res.Header.Del(hdrServiceTime)
		if !strings.Contains(lower, "\r\ndate:") {
			res.Header.Del("Date")
		}
		if !strings.Contains(lower, "\r\ncontent-type:") {
			res.Header.Del("Content-Type")
		}
	}
	if a, b := fmt.Sprint(fast.Header), fmt.Sprint(slow.Header); a != b {
		t.Errorf("response fields:\nfast     %s\nnet/http %s", a, b)
	}
}

// BenchmarkFastHead measures the fast path's header work for a browser-like
// GET: parsing the head in place and building the upstream head.
func BenchmarkFastHead(b *testing.B) {
	head := []byte("GET /index.html?q=1 HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0\r\n" +
		"Accept: text/html,application/xhtml+xml\r\nAccept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\n" +
		"Connection: keep-alive\r\nCookie: session=0123456789abcdef\r\nX-Request-Id: 2f1c7d3e-5b8a-4c6d-9e0f-1a2b3c4d5e6f\r\n\r\n")
	p, err := New(Options{Dialer: newFrontDialer()})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	fc := &fastConn{p: p, in: new(fastBuf), clientIP: "198.18.1.2"}
	fc.w = copy(fc.in[:], head)
	out := new(fastBuf)
	b.SetBytes(int64(len(head)))
	b.ReportAllocs()
	for b.Loop() {
		var h fastHead
		ok := parseFastHead(&h, fc.in[:fc.w], len(head), p.o.MaxRequestHeaderBytes, p.o.MaxRequestHeaders, p.hdr, false)
		if !ok {
			b.Fatal("declined")
		}
		fc.requestHead(out[:0], &h, "2f1c7d3e-5b8a-4c6d-9e0f-1a2b3c4d5e6f")
	}
}

// hostWithLink makes a proxy, a host of its cluster for a loopback
// listener, and an open upstream connection to it, counted open, not
// pooled; all go when the test ends.
func hostWithLink(tb testing.TB) (*Proxy, *host, *upLink) {
	tb.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	p, err := New(Options{Dialer: newFrontDialer()})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { p.Close() })
	h := p.hosts.acquire(hostKey{dst: ln.Addr().(*net.TCPAddr).AddrPort()})
	tb.Cleanup(func() { p.hosts.release(h) })
	conn, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		tb.Fatal(err)
	}
	h.open.Add(1)
	return p, h, newUpLink(conn, h)
}

// BenchmarkLinkPool measures taking a pooled upstream connection, with
// the liveness check every one gets, and putting it back.
func BenchmarkLinkPool(b *testing.B) {
	p, h, l := hostWithLink(b)
	p.hosts.putLink(l)
	b.ReportAllocs()
	for b.Loop() {
		l := p.hosts.takeLink(h)
		if l == nil {
			b.Fatal("no pooled connection")
		}
		p.hosts.putLink(l)
	}
}

// TestHandOverMidConnection: after fast-path requests, a request the fast
// path declines (a chunked upload, then a smuggling attempt) is served or
// refused by the net/http path on the same connection, with nothing lost
// or reordered, and pipelined requests stay in order.
func TestHandOverMidConnection(t *testing.T) {
	up := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s %q", r.Method, r.URL.Path, b)
	}))
	f := newFront(t, Options{}, up.addrPort())
	c, br := f.raw(t)
	// Two pipelined fast-path GETs, then a chunked POST in the same write.
	io.WriteString(c, "GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"+
		"POST /3 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
	for _, want := range []string{`GET /1 ""`, `GET /2 ""`, `POST /3 "hello"`} {
		if res, body := readResponse(t, br, "GET"); res.StatusCode != 200 || body != want {
			t.Fatalf("got %d %q, want %q", res.StatusCode, body, want)
		}
	}
	io.WriteString(c, "GET /4 HTTP/1.1\r\nHost: a\r\n\r\n")
	if res, body := readResponse(t, br, "GET"); res.StatusCode != 200 || body != `GET /4 ""` {
		t.Fatalf("after the hand-over: %d %q", res.StatusCode, body)
	}
	io.WriteString(c, "POST /5 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
	if res, _ := readResponse(t, br, "POST"); res.StatusCode != http.StatusBadRequest {
		t.Fatalf("smuggling attempt: %d, want 400", res.StatusCode)
	}
	for range 5 {
		if i := f.info(t); i.Path == "/5" && i.Flags != DownstreamProtocolError {
			t.Errorf("refused request flags %v", i.Flags)
		}
	}
}

// TestFailedExchangeWithUnreadBodyCloses: when the upstream fails while
// part of a request body is still in the client's stream, the answer says
// Connection: close and the connection closes, so the rest of the body is
// never read as a request. With the whole body read, it stays open.
func TestFailedExchangeWithUnreadBodyCloses(t *testing.T) {
	f := newFront(t, Options{}, fdtest.RefusedAddr(t))
	for _, tt := range []struct {
		name       string
		send       string
		wantClosed bool
	}{
		{"body still arriving", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhello", true},
		{"whole body read", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, br := f.raw(t)
			io.WriteString(c, tt.send)
			res, _ := readResponse(t, br, "POST")
			if res.StatusCode != 503 || res.Close != tt.wantClosed {
				t.Fatalf("%d close=%v, want 503 close=%v", res.StatusCode, res.Close, tt.wantClosed)
			}
			if i := f.info(t); i.Flags != UpstreamConnectFailure {
				t.Errorf("flags %v", i.Flags)
			}
			c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			_, err := br.ReadByte()
			if closed := err != nil && !errors.Is(err, os.ErrDeadlineExceeded); closed != tt.wantClosed {
				t.Errorf("connection closed %v (%v), want %v", closed, err, tt.wantClosed)
			}
		})
	}
}

// TestLocalReplyToHead: detour's own answer to a HEAD request (503, 504)
// says its length and sends no body (RFC 9110, 9.3.2), on both paths: a
// body would be read by the client as the start of the next response on
// the keep-alive connection.
func TestLocalReplyToHead(t *testing.T) {
	silent := rawUpstream(t, func(c net.Conn) { io.Copy(io.Discard, c) }) // reads, never answers
	reset := rawUpstream(t, func(c net.Conn) {
		http.ReadRequest(bufio.NewReader(c))
		c.(*net.TCPConn).SetLinger(0) // RST
	})
	for _, tt := range []struct {
		name   string
		dst    netip.AddrPort
		status int
	}{
		{"connect refused", fdtest.RefusedAddr(t), 503},
		{"route timeout", silent, 504},
		{"reset before headers", reset, 503},
	} {
		for _, fast := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/fast=%v", tt.name, fast), func(t *testing.T) {
				f := newFront(t, Options{DisableFastPath: !fast, RouteTimeout: 200 * time.Millisecond}, tt.dst)
				c, br := f.raw(t)
				io.WriteString(c, "HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
				res, body := readResponse(t, br, "HEAD")
				if res.StatusCode != tt.status || body != "" || res.ContentLength <= 0 {
					t.Fatalf("HEAD: %d length %d body %q", res.StatusCode, res.ContentLength, body)
				}
				f.info(t)
				// The connection carries the next request, and nothing of the
				// HEAD answer is left to be taken for its response.
				io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
				if res, _ := readResponse(t, br, "GET"); res.StatusCode != tt.status {
					t.Fatalf("next request: %d", res.StatusCode)
				}
			})
		}
	}
}

// TestRefusedBodyLingers: a connection closed while the client is still
// sending a body detour will not read (its upstream refused) ends with a
// FIN after the 503, and the rest of the body is drained, not answered
// with a reset that could destroy the 503 before the client reads it
// (RFC 9112 9.6), on both paths.
func TestRefusedBodyLingers(t *testing.T) {
	onBothPaths(t, func(t *testing.T, fast bool) {
		f := newFront(t, Options{DisableFastPath: !fast}, fdtest.RefusedAddr(t))
		c, br := f.raw(t)
		chunk := strings.Repeat("b", 64<<10)
		fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s", 1<<20, chunk)
		res, _ := readResponse(t, br, "POST")
		if res.StatusCode != 503 || !res.Close {
			t.Fatalf("%d close=%v, want 503 close=true", res.StatusCode, res.Close)
		}
		for range 4 { // the client goes on sending, as one that has not read the answer yet
			if _, err := io.WriteString(c, chunk); err != nil {
				t.Fatalf("write after the answer: %v (want the proxy to drain)", err)
			}
		}
		if _, err := br.ReadByte(); err != io.EOF {
			t.Fatalf("after the answer: %v, want EOF (a FIN, not a reset)", err)
		}
	})
}

// TestRefusedHeadLingers: a connection closed after a refused head (the
// rest of it, or the next request, still to come) ends with a FIN after
// the 400 and what the client sends next is drained, even when none of it
// had arrived when detour closed: a plain close answers it with a reset,
// which can destroy the 400 before the client reads it. FuzzServeConn
// found it, sending a head in two parts. The fast path holds a head until
// its end, so the first two reach it only as the guard's.
func TestRefusedHeadLingers(t *testing.T) {
	for _, tt := range []struct {
		head    string
		onlyNet bool
	}{
		{"GET / HT@P/1.1\r\nX-A: b\r\n", true},            // a bad request line
		{"GET / HTTP/1.1\r\nHost: a\r\nX A: b\r\n", true}, // a bad field line
		{"GET / HT@P/1.1\r\nX-A: b\n-A-\n\n", false},      // ended by bare LFs
	} {
		onBothPaths(t, func(t *testing.T, fast bool) {
			if fast && tt.onlyNet {
				return
			}
			f := newFront(t, Options{DisableFastPath: !fast}, fdtest.RefusedAddr(t))
			c, br := f.raw(t)
			io.WriteString(c, tt.head)
			res, _ := readResponse(t, br, "GET")
			if res.StatusCode != 400 || !res.Close {
				t.Fatalf("%q: %d close=%v, want 400 close=true", tt.head, res.StatusCode, res.Close)
			}
			if _, err := br.ReadByte(); err != io.EOF {
				t.Fatalf("%q: after the answer: %v, want EOF", tt.head, err)
			}
			rest := "X-B: " + strings.Repeat("b", 16<<10) + "\r\n"
			for range 4 { // more of the head, after detour closed
				if _, err := io.WriteString(c, rest); err != nil {
					t.Fatalf("%q: write after the answer: %v (want the proxy to drain)", tt.head, err)
				}
			}
		})
	}
}

// TestRequestStrings checks the request record's strings: the parts they
// were cut from, the client's id kept only when sane, and one allocation
// for the three.
func TestRequestStrings(t *testing.T) {
	uuidV4 := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	for _, tt := range []struct {
		host, target, id string
		keep             bool
	}{
		{"a.example", "/x?y=1", "0f8fad5b-d9cb-469f-a165-70867728950e", true},
		{"b.example:8080", "*", "abc123_trace.1", true},
		{"", "/", "", false},
		{"", "*", strings.Repeat("y", 128), true},
		{"c", "/c", "bad id", false},
		{"d", "/d", strings.Repeat("x", 129), false},
	} {
		host, target, id := requestStrings([]byte(tt.host), []byte(tt.target), []byte(tt.id))
		if host != tt.host || target != tt.target {
			t.Errorf("%q %q: got %q %q", tt.host, tt.target, host, target)
		}
		switch {
		case tt.keep && id != tt.id:
			t.Errorf("id %q: got %q, want it kept", tt.id, id)
		case !tt.keep && !uuidV4.MatchString(id):
			t.Errorf("id %q: got %q, want a new UUID v4", tt.id, id)
		}
	}
	if raceEnabled {
		return // the race detector moves crypto/rand's buffer to the heap
	}
	h, p := []byte("a.example"), []byte("/index.html")
	if n := testing.AllocsPerRun(100, func() { requestStrings(h, p, nil) }); n != 1 {
		t.Errorf("%v allocations, want 1", n)
	}
}

// TestUnsolicitedBytesNotReadAsResponse: bytes an upstream sends on a
// connection after its response (a body on a HEAD, 204 or 304 response,
// more body than its Content-Length said) are not read as the response to
// the next request on that pooled connection, however soon it comes and
// whichever client sends it: the connection is closed, as net/http's
// Transport, Envoy and HAProxy close one that speaks unasked.
func TestUnsolicitedBytesNotReadAsResponse(t *testing.T) {
	const forged = "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged"
	for _, tt := range []struct {
		name, method, resp string
	}{
		{"HEAD with a body", "HEAD", "HTTP/1.1 200 OK\r\nContent-Length: 45\r\n\r\n"},
		{"204 with a body", "GET", "HTTP/1.1 204 No Content\r\n\r\n"},
		{"304 with a body", "GET", "HTTP/1.1 304 Not Modified\r\nContent-Length: 45\r\n\r\n"},
		{"body past Content-Length", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			forgedSent := make(chan struct{}, 1)
			up := rawUpstream(t, func(c net.Conn) {
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					if req.URL.Path == "/first" {
						io.WriteString(c, tt.resp)
						time.Sleep(20 * time.Millisecond) // after the proxy has relayed the response
						io.WriteString(c, forged)
						forgedSent <- struct{}{}
						continue
					}
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood")
				}
			})
			f := newFront(t, Options{}, up)
			c, br := f.raw(t)
			fmt.Fprintf(c, "%s /first HTTP/1.1\r\nHost: a\r\n\r\n", tt.method)
			readResponse(t, br, tt.method)
			// The forged bytes are in the pooled connection before the next
			// request goes out on it (bytes that came after it would be its
			// response, for any proxy); a loaded machine can delay the
			// upstream's write well past a fixed sleep.
			<-forgedSent
			time.Sleep(50 * time.Millisecond)
			c2, br2 := f.raw(t) // another client
			io.WriteString(c2, "GET /second HTTP/1.1\r\nHost: a\r\n\r\n")
			if res, body := readResponse(t, br2, "GET"); res.StatusCode != 200 || body != "good" {
				t.Fatalf("second client got %d %q, want 200 \"good\"", res.StatusCode, body)
			}
		})
	}
}

// TestEarlyResponseRelayed: an upstream that answers before it has read
// the request body (413, 401) and then closes or resets the connection,
// which fails the rest of the body's upload, has its answer relayed with
// Connection: close (RFC 9112, 9.3; Envoy and HAProxy relay it), not
// replaced by a 503. An upstream that closes without an answer still gets
// 503 UC. (The net/http path relays the early answer only when the
// Transport's reader sees it before its writer's error: not always.)
func TestEarlyResponseRelayed(t *testing.T) {
	const answer = "HTTP/1.1 413 Content Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big!"
	for _, tt := range []struct {
		name       string
		answer     string
		reset      bool
		wantStatus int
		wantBody   string // a regular expression
		wantFlags  Flags
	}{
		{"answer, close", answer, false, 413, "too big!", 0},
		{"answer, reset", answer, true, 413, "too big!", 0},
		// The body's copy runs beside the wait for the answer: the reason
		// is the one of the upstream's close that either met first, the
		// write's reset or the read's FIN.
		{"no answer", "", false, 503, "upstream connect error or disconnect/reset before headers. reset reason: connection (reset|termination)", UpstreamClosed},
	} {
		t.Run(tt.name, func(t *testing.T) {
			up := rawUpstream(t, func(c net.Conn) {
				br := bufio.NewReader(c)
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				io.WriteString(c, tt.answer)
				if tt.reset {
					c.(*net.TCPConn).SetLinger(0)
				}
			}) // closed with the body unread: the kernel resets the connection
			f := newFront(t, Options{}, up)
			c, br := f.raw(t)
			go upload(c, "POST /upload", 64<<20)
			res, body := readResponse(t, br, "POST")
			if res.StatusCode != tt.wantStatus || !regexp.MustCompile("^"+tt.wantBody+"$").MatchString(body) || !res.Close {
				t.Fatalf("got %d %q (close %v), want %d %q with Connection: close", res.StatusCode, body, res.Close, tt.wantStatus, tt.wantBody)
			}
			if i := f.info(t); i.Status != tt.wantStatus || i.Flags != tt.wantFlags {
				t.Errorf("recorded %d %v, want %d %v", i.Status, i.Flags, tt.wantStatus, tt.wantFlags)
			}
			expectEOF(t, br)
		})
	}
}

// TestClientResetLinkNotKept: when watchClient saw the client reset, it
// closed the upstream connection; if the body had already been copied
// whole (the reset came between the last write and stop), the exchange
// looks successful, yet the link must not be pooled or kept: its
// descriptor is closed, and alive and the loops use the raw number, which
// the kernel may have given to another socket by then.
func TestClientResetLinkNotKept(t *testing.T) {
	p, h, up := hostWithLink(t)
	fc := &fastConn{p: p, heads: loopAfter, fd: -1}
	x := &request{hst: h}
	fc.sendOn(x, up)
	// What watchClient does on a client reset.
	fc.gone.Store(true)
	up.conn.Close()
	if keep := fc.done(x, up, true, true); keep {
		t.Error("client connection kept after its reset")
	}
	p.hosts.mu.Lock()
	pooled := len(h.links)
	p.hosts.mu.Unlock()
	if pooled != 0 || fc.pin != nil {
		t.Errorf("closed upstream connection kept: %d pooled, pinned %v", pooled, fc.pin != nil)
	}
	if n := h.open.Load(); n != 0 {
		t.Errorf("host counts %d open connections, want 0", n)
	}
}

// TestResponseWhileBodyStreams: an upstream may answer before it has read
// the whole request body, and the answer must reach the client then, as
// Envoy and Go's Transport relay it: a 413 from a server that stops
// reading but keeps the connection open (the body's write would block
// until the stream idle timeout), or a response streamed while the body
// still comes (an echo: neither side finishes unless both directions
// flow at once).
func TestResponseWhileBodyStreams(t *testing.T) {
	const bodySize = 32 << 20
	// early answers 413 to the head and neither reads nor closes (until
	// the test ends).
	early := func(c net.Conn, release <-chan struct{}) {
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 413 Content Too Large\r\nContent-Length: 8\r\n\r\ntoo big!")
		<-release
	}
	// echo streams the body back as it reads it.
	echo := func(c net.Conn, _ <-chan struct{}) {
		req, err := http.ReadRequest(bufio.NewReader(c))
		if err != nil {
			return
		}
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", req.ContentLength)
		io.Copy(c, req.Body)
	}
	for _, tt := range []struct {
		name       string
		upstream   func(net.Conn, <-chan struct{})
		fast       bool
		wantStatus int
		wantBody   int // bytes
		wantClose  bool
	}{
		{"fast path, early answer", early, true, 413, 8, true},
		{"net/http, early answer", early, false, 413, 8, true},
		{"fast path, echo", echo, true, 200, bodySize, false},
		{"net/http, echo", echo, false, 200, bodySize, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			release := make(chan struct{})
			up := rawUpstream(t, func(c net.Conn) { tt.upstream(c, release) })
			t.Cleanup(func() { close(release) }) // before rawUpstream's, which waits for it
			f := newFront(t, Options{DisableFastPath: !tt.fast}, up)
			c, br := f.raw(t)
			// Far from the stream idle timeout (5 min) that a blocked
			// body write would wait for.
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			go upload(c, "PUT /up", bodySize)
			res, err := http.ReadResponse(br, &http.Request{Method: "PUT"})
			if err != nil {
				t.Fatal(err)
			}
			n, err := io.Copy(io.Discard, res.Body)
			if err != nil || res.StatusCode != tt.wantStatus || n != int64(tt.wantBody) || res.Close != tt.wantClose {
				t.Fatalf("got %d, %d body bytes (%v), close %v; want %d, %d bytes, close %v",
					res.StatusCode, n, err, res.Close, tt.wantStatus, tt.wantBody, tt.wantClose)
			}
			if i := f.info(t); i.Status != tt.wantStatus {
				t.Errorf("recorded %d, want %d", i.Status, tt.wantStatus)
			}
			if tt.wantClose {
				expectEOF(t, br)
			}
		})
	}
}

// TestClientResetDuringEarlyResponse: a client that resets while an
// answer that came before its body went out is being relayed is recorded
// as gone (DC), and its body's copy ends.
func TestClientResetDuringEarlyResponse(t *testing.T) {
	release := make(chan struct{})
	up := rawUpstream(t, func(c net.Conn) {
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\nstart")
		<-release
	})
	t.Cleanup(func() { close(release) })
	f := newFront(t, Options{}, up)
	c, br := f.raw(t)
	fmt.Fprintf(c, "PUT /up HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\nfirst", 1<<20)
	res, err := http.ReadResponse(br, &http.Request{Method: "PUT"})
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("got %v, %v; want the upstream's 200 while the body still comes", res, err)
	}
	c.(*net.TCPConn).SetLinger(0)
	c.Close()
	if i := f.info(t); i.Flags != DownstreamClosed {
		t.Errorf("flags %v, want DC", i.Flags)
	}
}

// TestUploadsKeepAlive: uploads whose bodies go up on the pump, answered
// as soon as the upstream has read them (the answer often comes back
// before the pump's last write has returned), keep both connections: one
// client connection and one upstream connection carry them all.
func TestUploadsKeepAlive(t *testing.T) {
	up := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		fmt.Fprint(w, n)
	}))
	f := newFront(t, Options{}, up.addrPort())
	c := f.client()
	body := make([]byte, 256<<10)
	for i := range 20 {
		var reused bool
		ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
			GotConn: func(ci httptrace.GotConnInfo) { reused = ci.Reused },
		})
		req, _ := http.NewRequestWithContext(ctx, "POST", "http://a/", bytes.NewReader(body))
		res, err := c.Do(req)
		if err != nil {
			t.Fatalf("upload %d: %v", i, err)
		}
		got, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if string(got) != fmt.Sprint(len(body)) || (i > 0 && !reused) || res.Close {
			t.Fatalf("upload %d: %q, client connection reused %v, close %v", i, got, reused, res.Close)
		}
	}
	if n := up.accepted.Load(); n != 1 {
		t.Errorf("upstream accepted %d connections, want 1", n)
	}
}

// TestUpstreamResetMidBody: an upstream that resets the connection while
// the request body still uploads, without an answer, gets the client a
// 503 (UC) saying Connection: close, on both paths: the body's rest is
// still in the client's stream. (The Transport reports its failed write
// of the body to the client trace's WroteRequest too, with the error: the
// body did not go out.)
func TestUpstreamResetMidBody(t *testing.T) {
	onBothPaths(t, func(t *testing.T, fast bool) {
		up := rawUpstream(t, func(c net.Conn) {
			if r, err := http.ReadRequest(bufio.NewReader(c)); err == nil {
				io.CopyN(io.Discard, r.Body, 64<<10)
				c.(*net.TCPConn).SetLinger(0)
			}
		})
		f := newFront(t, Options{DisableFastPath: !fast}, up)
		c, br := f.raw(t)
		go upload(c, "PUT /up", 64<<20)
		res, _ := readResponse(t, br, "PUT")
		if res.StatusCode != http.StatusServiceUnavailable || !res.Close {
			t.Errorf("got %d (close %v), want 503 with Connection: close", res.StatusCode, res.Close)
		}
		if i := f.info(t); i.Status != http.StatusServiceUnavailable || i.Flags != UpstreamClosed {
			t.Errorf("recorded %d %v, want 503 UC", i.Status, i.Flags)
		}
		expectEOF(t, br)
	})
}

// TestClientResetAfterBodyPumped: a client that resets after its whole
// body went up, while the response it began to get before that waits for
// the upstream, is seen (DC) at once, as when the body came with the head
// (watchClient): the pump, which read the client until then, has ended.
func TestClientResetAfterBodyPumped(t *testing.T) {
	const bodySize = 1 << 20
	onBothPaths(t, func(t *testing.T, fast bool) {
		taken, release := make(chan struct{}), make(chan struct{})
		up := rawUpstream(t, func(c net.Conn) {
			r, err := http.ReadRequest(bufio.NewReader(c))
			if err != nil {
				return
			}
			// A start net/http's server flushes too (it buffers 4 KiB).
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
			c.Write(make([]byte, 64<<10))
			if n, _ := io.Copy(io.Discard, r.Body); n == bodySize {
				close(taken)
			}
			<-release // the rest of the response never comes
		})
		t.Cleanup(func() { close(release) })
		f := newFront(t, Options{DisableFastPath: !fast}, up)
		c, br := f.raw(t)
		fmt.Fprintf(c, "PUT /up HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\nfirst", bodySize)
		res, err := http.ReadResponse(br, &http.Request{Method: "PUT"})
		if err != nil || res.StatusCode != 200 {
			t.Fatalf("got %v, %v; want the upstream's 200 while the body still comes", res, err)
		}
		if _, err := io.ReadFull(res.Body, make([]byte, 64<<10)); err != nil {
			t.Fatal(err)
		}
		c.Write(make([]byte, bodySize-len("first")))
		select {
		case <-taken:
		case <-time.After(10 * time.Second):
			t.Fatal("the upstream did not get the whole body")
		}
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
		if i := f.info(t); i.Flags != DownstreamClosed {
			t.Errorf("flags %v, want DC", i.Flags)
		}
	})
}

// TestBodyLeftAfterAnswer: on the net/http path, where the server runs in
// full duplex for a request with a body, an answer that came before the
// client sent all of a small body leaves the rest for net/http's server
// to read and drop after the handler; the connection then carries the
// next request. (net/http, golang.org/issue/68560, starts its background
// read when that drop reaches the body's end, after the handler: the
// next request's read panicked, and the connection was cut.) The fast
// path closes the connection there instead, as its README says.
func TestBodyLeftAfterAnswer(t *testing.T) {
	up := rawUpstream(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			r, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			io.Copy(io.Discard, r.Body)
		}
	})
	f := newFront(t, Options{DisableFastPath: true}, up)
	c, br := f.raw(t)
	io.WriteString(c, "PUT /up HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nfirst")
	if res, body := readResponse(t, br, "PUT"); res.StatusCode != 200 || body != "ok" || res.Close {
		t.Fatalf("got %d %q (close %v), want 200 \"ok\" while the body still comes", res.StatusCode, body, res.Close)
	}
	io.WriteString(c, "-rest")
	io.WriteString(c, "GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
	if res, body := readResponse(t, br, "GET"); res.StatusCode != 200 || body != "ok" {
		t.Fatalf("next request: got %d %q, want 200 \"ok\"", res.StatusCode, body)
	}
}

// TestErrorKeepsSmallBody: a request whose small body came whole gets
// the 503 of a failed connect on a connection that goes on, on both
// paths: nothing of the request is left in the client's stream (net/http
// reads and drops up to 256 KiB of a body after the handler).
func TestErrorKeepsSmallBody(t *testing.T) {
	onBothPaths(t, func(t *testing.T, fast bool) {
		f := newFront(t, Options{DisableFastPath: !fast}, fdtest.RefusedAddr(t))
		c, br := f.raw(t)
		for i := range 2 {
			io.WriteString(c, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
			res, _ := readResponse(t, br, "POST")
			if res.StatusCode != http.StatusServiceUnavailable || res.Close {
				t.Fatalf("request %d: got %d (close %v), want 503 without Connection: close", i, res.StatusCode, res.Close)
			}
			if i := f.info(t); i.Flags != UpstreamConnectFailure {
				t.Errorf("flags %v, want UF", i.Flags)
			}
		}
	})
}

// TestRouteTimeoutAfterBodyKeepsConnection: an upstream that took the
// whole body, copied after the head, and never answers gets the client
// a 504 (UT) on a connection that goes on, on both paths: nothing of the
// request is left in the client's stream (as when the body came with the
// head).
func TestRouteTimeoutAfterBodyKeepsConnection(t *testing.T) {
	const bodySize = 256 << 10
	onBothPaths(t, func(t *testing.T, fast bool) {
		var conns atomic.Int32
		up := rawUpstream(t, func(c net.Conn) {
			br := bufio.NewReader(c)
			for {
				r, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				io.Copy(io.Discard, r.Body)
				if conns.Add(1) == 1 {
					io.Copy(io.Discard, c) // the first never answers
					return
				}
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			}
		})
		f := newFront(t, Options{DisableFastPath: !fast, RouteTimeout: 300 * time.Millisecond}, up)
		c, br := f.raw(t)
		go func() {
			fmt.Fprintf(c, "PUT /up HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n", bodySize)
			c.Write(make([]byte, bodySize))
		}()
		res, _ := readResponse(t, br, "PUT")
		if res.StatusCode != http.StatusGatewayTimeout || res.Close {
			t.Fatalf("got %d (close %v), want 504 without Connection: close", res.StatusCode, res.Close)
		}
		if i := f.info(t); i.Flags != UpstreamTimeout {
			t.Errorf("flags %v, want UT", i.Flags)
		}
		io.WriteString(c, "GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
		if res, body := readResponse(t, br, "GET"); res.StatusCode != 200 || body != "ok" {
			t.Fatalf("next request: got %d %q, want 200 \"ok\"", res.StatusCode, body)
		}
	})
}

// TestEarlyAnswerFromClosingUpstream: an upstream that answers before it
// has taken the body, with a status that is no error, and says it closes
// the connection (as Go's server does for a body its handler left
// unread) will not take the body's rest: the answer says Connection:
// close, on both paths, as the connection closes after it. (The upstream
// stops reading but closes only when the test ends: the net/http path
// may answer 503 when the Transport sees its write fail first.)
func TestEarlyAnswerFromClosingUpstream(t *testing.T) {
	onBothPaths(t, func(t *testing.T, fast bool) {
		release := make(chan struct{})
		up := rawUpstream(t, func(c net.Conn) {
			if _, err := http.ReadRequest(bufio.NewReader(c)); err == nil {
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
				<-release
			}
		})
		t.Cleanup(func() { close(release) }) // before rawUpstream's, which waits for it
		f := newFront(t, Options{DisableFastPath: !fast}, up)
		c, br := f.raw(t)
		go upload(c, "PUT /up", 64<<20)
		res, body := readResponse(t, br, "PUT")
		if res.StatusCode != 200 || body != "ok" || !res.Close {
			t.Errorf("got %d %q (close %v), want 200 \"ok\" with Connection: close", res.StatusCode, body, res.Close)
		}
		if i := f.info(t); i.Status != 200 || i.Flags != 0 {
			t.Errorf("recorded %d %v, want 200 -", i.Status, i.Flags)
		}
		expectEOF(t, br)
	})
}
