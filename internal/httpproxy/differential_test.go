package httpproxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// diffCase is one exchange TestPathsAgree sends through both paths: the
// client's bytes, and what the scripted upstream answers to each of them.
type diffCase struct {
	name string
	req  string // the client's bytes: one request or more (n)
	n    int    // responses the client waits for; 0 means 1
	resp string // the upstream's bytes for each request but the follow-up
	// closeAfter: the upstream closes its connection after resp (a
	// close-delimited or cut body).
	closeAfter bool
	// handOver: the fast path serves the first request and hands the
	// connection to net/http at the next. Its upstream connection stays
	// in the fast path's pool, which the Transport does not share: the
	// upstream sees one connection more than with net/http alone.
	handOver bool
	// want, when set, is the start of the records each path must make
	// (status, flags, details), beyond agreeing.
	want []string
	// wantClient, when set, is the first response the client must read
	// on each path.
	wantClient string
}

// pathView is what the client, the upstream and the access log saw of one
// diffCase on one path.
type pathView struct {
	client   []string // each response the client read (1xx included), or how reading failed
	followUp string   // the follow-up request's answer on the same connection, or why none
	upstream []string // each request the upstream read
	conns    int32    // upstream connections accepted
	log      []string // each record: status, flags and details
}

// diffFollowUp is the request sent after a case's responses, on the same
// client connection when it is still open: it tells whether the proxy
// kept the connection usable, and its upstream connection whether the
// upstream one was reused.
const diffFollowUp = "GET /next HTTP/1.1\r\nHost: a\r\n\r\n"

// diffOK is the upstream's answer to most requests and to the follow-up.
const diffOK = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"

// diffUpstream is the scripted upstream: it reads each request (answering
// Expect: 100-continue first, as a server does), records it, and writes
// tc.resp, or diffOK to the follow-up.
func diffUpstream(t *testing.T, tc diffCase, v *pathView, mu *sync.Mutex) func(net.Conn) {
	var conns atomic.Int32
	return func(c net.Conn) {
		mu.Lock()
		v.conns = conns.Add(1)
		mu.Unlock()
		br := bufio.NewReader(c)
		for {
			r, err := http.ReadRequest(br)
			if err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
					mu.Lock()
					v.upstream = append(v.upstream, "unreadable: "+errClass(err))
					mu.Unlock()
				}
				return
			}
			if r.Header.Get("Expect") == "100-continue" {
				io.WriteString(c, "HTTP/1.1 100 Continue\r\n\r\n")
			}
			body, err := io.ReadAll(r.Body)
			if r.Host == c.LocalAddr().String() {
				r.Host = "the destination" // each path has its upstream
			}
			desc := describeRequest(r, body, err)
			mu.Lock()
			v.upstream = append(v.upstream, desc)
			mu.Unlock()
			if err != nil {
				return
			}
			if r.RequestURI == "/next" {
				io.WriteString(c, diffOK)
				continue
			}
			io.WriteString(c, tc.resp)
			if tc.closeAfter {
				return
			}
		}
	}
}

// describeRequest is a request as the upstream read it, less what differs
// by design: field order and case (a map), a new request id, and the
// Content-Length field's bytes (its value is compared: len). The fast
// path forwards the client's field as it came ("002"), and none where
// none came, where the Transport writes "2", and "0" on a POST without a
// body; each says the same length (RFC 9112, 6.3).
func describeRequest(r *http.Request, body []byte, err error) string {
	h := r.Header.Clone()
	if id := h.Get(hdrRequestID); id != "abc-123" {
		h.Del(hdrRequestID) // a new UUID each time
	}
	h.Del("Content-Length")
	s := fmt.Sprintf("%s %s %s host=%q len=%d te=%v close=%v %v body=%q trailer=%v",
		r.Method, r.RequestURI, r.Proto, r.Host, r.ContentLength, r.TransferEncoding, r.Close, h, body, r.Trailer)
	if err != nil {
		s += " body error: " + errClass(err)
	}
	return s
}

// describeResponse is a response as the client read it, less what differs
// by design: field order and case, the service time, a Date or
// Content-Type that net/http adds when the upstream sent none, and the
// reason phrase (the fast path forwards the upstream's, as HAProxy does;
// net/http's server writes the standard one, as Envoy does; RFC 9112, 4:
// a client ignores it).
func describeResponse(res *http.Response, upstream string) string {
	h := res.Header.Clone()
	h.Del(hdrServiceTime)
	lower := strings.ToLower(upstream)
	if !strings.Contains(lower, "\r\ndate:") {
		h.Del("Date")
	}
	if !strings.Contains(lower, "\r\ncontent-type:") && h.Get("Content-Type") == "text/plain; charset=utf-8" && res.StatusCode >= 400 {
		// detour's own replies say text/plain on both paths: keep it.
	} else if !strings.Contains(lower, "\r\ncontent-type:") {
		h.Del("Content-Type")
	}
	return fmt.Sprintf("%d len=%d te=%v close=%v %v", res.StatusCode, res.ContentLength, res.TransferEncoding, res.Close, h)
}

// errClass names a read error the same way on both paths.
func errClass(err error) string {
	switch {
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "unexpected EOF"
	case errors.Is(err, io.EOF):
		return "EOF"
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "timeout"
	case errors.Is(err, net.ErrClosed), strings.Contains(err.Error(), "connection reset"):
		return "reset"
	}
	return "malformed: " + err.Error()
}

// viewThrough sends tc through a proxy, the fast path on or off, and
// returns what every end saw.
func viewThrough(t *testing.T, tc diffCase, fast bool) pathView {
	t.Helper()
	var v pathView
	var mu sync.Mutex
	dst := rawUpstream(t, diffUpstream(t, tc, &v, &mu))
	f := newFront(t, Options{DisableFastPath: !fast}, dst)
	c, br := f.raw(t)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	go io.WriteString(c, tc.req) // the proxy may not read it all
	var methods []string
	for _, line := range strings.Split(tc.req, "\r\n") {
		if m, _, ok := strings.Cut(line, " "); ok && (strings.HasSuffix(line, " HTTP/1.1") || strings.HasSuffix(line, " HTTP/1.0")) {
			methods = append(methods, m)
		}
	}
	n := max(tc.n, 1)
	alive := true
	for i := 0; i < n && alive; i++ {
		method := "GET"
		if i < len(methods) {
			method = methods[i]
		}
		alive = readOne(br, method, tc.resp, &v.client)
	}
	if alive {
		if _, err := io.WriteString(c, diffFollowUp); err != nil {
			v.followUp = "write: " + errClass(err)
		} else {
			var got []string
			readOne(br, "GET", diffOK, &got)
			v.followUp = strings.Join(got, "; ")
		}
	} else {
		v.followUp = "not sent"
	}
	c.Close()
	// The records: at most one per request sent, each soon after its end.
	for wait := 3 * time.Second; ; wait = 300 * time.Millisecond {
		select {
		case i := <-f.infos:
			v.log = append(v.log, strings.TrimSpace(fmt.Sprintf("%d %v %s", i.Status, i.Flags, i.Details)))
			continue
		case <-time.After(wait):
		}
		break
	}
	mu.Lock()
	defer mu.Unlock()
	return pathView{client: v.client, followUp: v.followUp, upstream: slices.Clone(v.upstream), conns: v.conns, log: v.log}
}

// readOne reads a final response (and the 1xx before it) to a request of
// method, appending what it read to out. It reports whether the
// connection may carry another request.
func readOne(br *bufio.Reader, method, upstream string, out *[]string) bool {
	for {
		res, err := http.ReadResponse(br, &http.Request{Method: method})
		if err != nil {
			*out = append(*out, "no response: "+errClass(err))
			return false
		}
		desc := describeResponse(res, upstream)
		if res.StatusCode < 200 {
			*out = append(*out, desc)
			continue
		}
		b, err := io.ReadAll(res.Body)
		desc += fmt.Sprintf(" body=%q", b)
		if err != nil {
			*out = append(*out, desc+" body error: "+errClass(err))
			return false
		}
		*out = append(*out, desc)
		return !res.Close
	}
}

// diffCases are valid, odd-but-valid and invalid exchanges, from the
// client's side and from the upstream's. Each must look the same through
// both paths. Requests the fast path declines reach net/http on both, so
// those cases hold the hand-over (at the connection's start, and after a
// request the fast path served) to the same answer.
func diffCases() []diffCase {
	const get = "GET / HTTP/1.1\r\nHost: a\r\n\r\n"
	long := strings.Repeat("v", 10<<10)
	// The fields a 304, a 204 or a response to HEAD carries about the
	// representation (RFC 9110, 15.4.5 and 9.3.2).
	const validators = "Date: Sat, 05 Dec 2026 10:00:00 GMT\r\nETag: \"v1\"\r\nCache-Control: max-age=60\r\n" +
		"Expires: Sat, 05 Dec 2026 10:01:00 GMT\r\nVary: Accept-Encoding\r\nContent-Location: /r.html\r\n" +
		"Last-Modified: Fri, 04 Dec 2026 10:00:00 GMT\r\nContent-Type: text/html\r\nX-Custom: 1\r\n"
	// Records of an upstream that broke HTTP (UPE: 502 before the head, a
	// cut body after it) or closed (UC), as Envoy's.
	var (
		upe     = []string{"502 UPE protocol error"}
		upeBody = []string{"200 UPE"}
		uc      = []string{"503 UC connection termination"}
		ucBody  = []string{"200 UC"}
	)
	return []diffCase{
		// The client's side; the upstream answers diffOK.
		{name: "GET", req: get, resp: diffOK},
		{name: "GET with lower-case and repeated fields", req: "GET /a%20b?x=1 HTTP/1.1\r\nhost: a\r\naccept: a\r\nAccept: b\r\nX-Request-Id: abc-123\r\n\r\n", resp: diffOK},
		{name: "POST with Content-Length", req: "POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello", resp: diffOK},
		{name: "GET with a body", req: "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc", resp: diffOK},
		{name: "chunked with extensions and trailers", req: "POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n3;ext=1\r\nabc\r\n2;a=\"q\"\r\nde\r\n0\r\nX-T: v\r\n\r\n", resp: diffOK},
		{name: "Content-Length and Transfer-Encoding", req: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", resp: diffOK},
		{name: "duplicate Content-Length", req: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", resp: diffOK},
		{name: "obs-fold", req: "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\r\n b\r\n\r\n", resp: diffOK},
		{name: "HTTP/1.0", req: "GET / HTTP/1.0\r\nHost: a\r\n\r\n", resp: diffOK},
		{name: "HTTP/1.0 keep-alive", req: "GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n", resp: diffOK},
		{name: "Expect: 100-continue", req: "PUT /e HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello", resp: diffOK},
		{name: "HEAD", req: "HEAD / HTTP/1.1\r\nHost: a\r\n\r\n", resp: "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n"},
		{name: "OPTIONS *", req: "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", resp: diffOK},
		{name: "absolute-form target", req: "GET http://a/x?y=1 HTTP/1.1\r\nHost: a\r\n\r\n", resp: diffOK},
		{name: "Upgrade declined by the upstream", req: "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", resp: diffOK},
		{name: "very long field", req: "GET / HTTP/1.1\r\nHost: a\r\nX-Long: " + long + "\r\n\r\n", resp: diffOK},
		{name: "pipelined", req: get + "POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx" + get, n: 3, resp: diffOK},
		{name: "pipelined, then chunked", req: get + "POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n", n: 2, resp: diffOK, handOver: true},
		{name: "Connection: close", req: "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", resp: diffOK},
		{name: "no Host", req: "GET / HTTP/1.1\r\n\r\n", resp: diffOK},
		{name: "bare LF", req: "GET / HTTP/1.1\nHost: a\n\n", resp: diffOK},
		{name: "POST with Content-Length 0", req: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", resp: diffOK},
		{name: "POST without a length", req: "POST / HTTP/1.1\r\nHost: a\r\n\r\n", resp: diffOK},
		{name: "DELETE with a body", req: "DELETE /d HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nab", resp: diffOK},
		{name: "TRACE", req: "TRACE / HTTP/1.1\r\nHost: a\r\n\r\n", resp: diffOK},
		{name: "unknown method", req: "PURGE /x HTTP/1.1\r\nHost: a\r\n\r\n", resp: diffOK},
		{name: "Content-Length with leading zeros", req: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 002\r\n\r\nab", resp: diffOK},
		{name: "TE: trailers", req: "GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n", resp: diffOK},
		{name: "Upgrade: h2c", req: "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n", resp: diffOK},
		{name: "Host with a port, then an empty Host", req: "GET / HTTP/1.1\r\nHost: a:8080\r\n\r\nGET / HTTP/1.1\r\nHost:\r\n\r\n", n: 2, resp: diffOK, handOver: true},
		{name: "Connection names a field", req: "GET / HTTP/1.1\r\nHost: a\r\nConnection: X-Hop\r\nX-Hop: 1\r\n\r\n", resp: diffOK},
		{name: "Expect with an empty body", req: "POST /e HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nExpect: 100-continue\r\n\r\n", resp: diffOK},
		{name: "unknown Expect", req: "POST /e HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nExpect: x\r\n\r\n", resp: diffOK},
		{name: "HTTP/1.0 with a chunked body", req: "POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", resp: diffOK},
		// Unfinished heads, already invalid: the client sends no more
		// and waits for the answer (HeaderTimeout is 10 s, as the
		// client's deadline: a path that waits for the head's end fails).
		{name: "unfinished head with a line without a colon", req: "GET / HTTP/1.1\r\nHost: a\r\nBad Line Without Colon\r\n", resp: diffOK,
			want: []string{"400 DPE invalid header field name"}},
		{name: "unfinished request line with a control byte", req: "GET /a\x01", resp: diffOK, want: []string{"400 DPE invalid request target"}},
		{name: "a request, then an unfinished head with a second Host", req: get + "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n", n: 2, resp: diffOK, handOver: true,
			want: []string{"200 -", "400 DPE multiple host fields"}},

		// The upstream's side; the client sends a GET.
		{name: "1xx before the final status", req: get, resp: "HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n" + diffOK},
		{name: "unsolicited 100 Continue", req: get, resp: "HTTP/1.1 100 Continue\r\n\r\n" + diffOK},
		{name: "204 with a body", req: get, resp: "HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\nstray"},
		{name: "204 with Content-Length", req: get, resp: "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nstray"},
		{name: "304 with Content-Length", req: get, resp: "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 5\r\n\r\n"},
		{name: "304 with Content-Type", req: get, resp: "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Type: text/html\r\n\r\n"},
		{name: "HEAD with Content-Length", req: "HEAD / HTTP/1.1\r\nHost: a\r\n\r\n", resp: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"},
		{name: "Content-Length and chunked", req: get, resp: "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", want: upe},
		{name: "close-delimited", req: get, resp: "HTTP/1.1 200 OK\r\nX-B: 2\r\n\r\nbody until close", closeAfter: true},
		{name: "chunked with trailers", req: get, resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n3;e=1\r\nabc\r\n0\r\nX-T: v\r\n\r\n"},
		{name: "Content-Length cut mid-body", req: get, resp: "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this", closeAfter: true, want: ucBody},
		{name: "chunked cut mid-body", req: get, resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nonly this\r\n", closeAfter: true, want: ucBody},
		{name: "head cut", req: get, resp: "HTTP/1.1 200 OK\r\nContent-Len", closeAfter: true, want: uc},
		{name: "duplicate Content-Length", req: get, resp: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok"},
		{name: "conflicting Content-Length", req: get, resp: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", want: upe},
		{name: "invalid status line", req: get, resp: "HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok", want: upe},
		{name: "not HTTP", req: get, resp: "SSH-2.0-OpenSSH_9.6\r\n", closeAfter: true, want: upe},
		{name: "HTTP/1.0 response with keep-alive", req: get, resp: "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"},
		{name: "HTTP/1.0 close-delimited", req: get, resp: "HTTP/1.0 200 OK\r\n\r\nuntil close", closeAfter: true},
		{name: "bytes after the body", req: get, resp: diffOK + "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil"},
		{name: "HEAD answered with a body", req: "HEAD / HTTP/1.1\r\nHost: a\r\n\r\n", resp: "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil"},
		{name: "bad chunk size", req: get, resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", want: upeBody},
		{name: "Transfer-Encoding gzip, chunked", req: get, resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"},
		{name: "Transfer-Encoding identity", req: get, resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\nabc", closeAfter: true},
		{name: "obs-fold in the response", req: get, resp: "HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok"},
		{name: "bare LF response", req: get, resp: "HTTP/1.1 200 OK\nX-A: a\nContent-Length: 2\n\nok"},
		{name: "head over 4 KiB", req: get, resp: "HTTP/1.1 200 OK\r\nX-Big: " + long[:5000] + "\r\nContent-Length: 2\r\n\r\nok"},
		{name: "no reason phrase", req: get, resp: "HTTP/1.1 418\r\nContent-Length: 2\r\n\r\nok"},
		{name: "101 without an upgrade request", req: get, resp: "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", closeAfter: true, want: upe},
		{name: "ten 1xx", req: get, resp: strings.Repeat("HTTP/1.1 103 Early Hints\r\n\r\n", 10) + diffOK},
		{name: "Content-Length with a sign", req: get, resp: "HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok"},
		{name: "Content-Length 0 with bytes after", req: get, resp: "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nstray"},
		{name: "malformed field line", req: get, resp: "HTTP/1.1 200 OK\r\nNo colon here\r\nContent-Length: 2\r\n\r\nok", want: upe},
		{name: "Content-Length not a number", req: get, resp: "HTTP/1.1 200 OK\r\nContent-Length: 2x\r\n\r\nok", want: upe},
		{name: "HEAD answered with a malformed head", req: "HEAD / HTTP/1.1\r\nHost: a\r\n\r\n", resp: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n", want: upe},
		{name: "1xx, then a malformed head", req: get, resp: "HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nNo colon\r\n\r\n", want: upe},
		{name: "head over 10 MiB", req: get, resp: "HTTP/1.1 200 OK\r\nX-Big: " + strings.Repeat("v", 10<<20) + "\r\nContent-Length: 2\r\n\r\nok", want: upe},
		{name: "unknown Transfer-Encoding", req: get, resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc", closeAfter: true, want: upe},
		{name: "bad chunk size after a chunk", req: get, resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nabc\r\n0\r\n\r\n", want: upeBody},
		{name: "chunk longer than its size", req: get, resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n", want: upeBody},
		{name: "malformed trailer", req: get, resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nNo colon\r\n\r\n", want: upeBody},
		{name: "chunked cut in a chunk size", req: get, resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n1", closeAfter: true, want: ucBody},
		{name: "304 with the representation's fields", req: get, resp: "HTTP/1.1 304 Not Modified\r\n" + validators + "Content-Length: 1234\r\n\r\n",
			wantClient: "304 len=0 te=[] close=false map[" + validatorsRead("Content-Length:[1234] ") + "] body=\"\""},
		{name: "304 without Content-Length", req: get, resp: "HTTP/1.1 304 Not Modified\r\n" + validators + "\r\n",
			wantClient: "304 len=0 te=[] close=false map[" + validatorsRead("") + "] body=\"\""},
		{name: "204 with fields", req: get, resp: "HTTP/1.1 204 No Content\r\n" + validators + "\r\n",
			wantClient: "204 len=0 te=[] close=false map[" + validatorsRead("") + "] body=\"\""},
		{name: "HEAD with the representation's fields", req: "HEAD / HTTP/1.1\r\nHost: a\r\n\r\n", resp: "HTTP/1.1 200 OK\r\n" + validators + "Content-Length: 1234\r\n\r\n",
			wantClient: "200 len=1234 te=[] close=false map[" + validatorsRead("Content-Length:[1234] ") + "] body=\"\""},
		{name: "HEAD to a chunked representation", req: "HEAD / HTTP/1.1\r\nHost: a\r\n\r\n", resp: "HTTP/1.1 200 OK\r\n" + validators + "Transfer-Encoding: chunked\r\n\r\n"},
		{name: "304 to HEAD", req: "HEAD / HTTP/1.1\r\nHost: a\r\n\r\n", resp: "HTTP/1.1 304 Not Modified\r\n" + validators + "Content-Length: 1234\r\n\r\n",
			wantClient: "304 len=1234 te=[] close=false map[" + validatorsRead("Content-Length:[1234] ") + "] body=\"\""},
		{name: "NUL in a field value", req: get, resp: "HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nok", want: upe},
		{name: "HTTP/2.0 status line", req: get, resp: "HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok"},
		{name: "lower-case protocol", req: get, resp: "http/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", want: upe},
		{name: "negative Content-Length", req: get, resp: "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nok", want: upe},
		{name: "Content-Length over int64", req: get, resp: "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\nok", want: upe},
		{name: "Content-Length list", req: get, resp: "HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok"},
		{name: "chunked twice", req: get, resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", want: upe},
		{name: "Transfer-Encoding twice", req: get, resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", want: upe},
		{name: "empty field name", req: get, resp: "HTTP/1.1 200 OK\r\n: v\r\nContent-Length: 2\r\n\r\nok", want: upe},
		{name: "1xx with a length", req: get, resp: "HTTP/1.1 103 Early Hints\r\nContent-Length: 3\r\n\r\n" + diffOK},
		{name: "chunk size with spaces", req: get, resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2 \r\nok\r\n0\r\n\r\n"},
		{name: "chunk size over 64 bits", req: get, resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\nok\r\n0\r\n\r\n", want: upeBody},
		{name: "chunk without its CRLF", req: get, resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok0\r\n\r\n", want: upeBody},
		{name: "status 099", req: get, resp: "HTTP/1.1 099 Odd\r\nContent-Length: 2\r\n\r\nok", want: upe},
		{name: "status 000", req: get, resp: "HTTP/1.1 000 Odd\r\n\r\n", want: upe},
		{name: "status 600", req: get, resp: "HTTP/1.1 600 Odd\r\nContent-Length: 2\r\n\r\nok", want: upe},
		{name: "status 999", req: get, resp: "HTTP/1.1 999 X\r\nContent-Length: 2\r\n\r\nok", want: upe},
		{name: "status 600 without a length", req: get, resp: "HTTP/1.1 600 X\r\n\r\nuntil close", closeAfter: true, want: upe},
		{name: "upstream closes after its answer", req: get, resp: "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", closeAfter: true},
	}
}

// validatorsRead is the client's view (describeResponse) of the fields of
// diffCases' validators, with cl (a Content-Length, or "") among them.
func validatorsRead(cl string) string {
	return "Cache-Control:[max-age=60] " + cl + "Content-Location:[/r.html] Content-Type:[text/html] " +
		"Date:[Sat, 05 Dec 2026 10:00:00 GMT] Etag:[\"v1\"] Expires:[Sat, 05 Dec 2026 10:01:00 GMT] " +
		"Last-Modified:[Fri, 04 Dec 2026 10:00:00 GMT] Server:[detour] Vary:[Accept-Encoding] X-Custom:[1]"
}

// TestPathsAgree sends each diffCase through the fast path and through
// net/http + ReverseProxy (DisableFastPath), to a scripted raw upstream,
// and compares what the client read (1xx, status, fields, framing, body,
// errors), whether the client connection then carried another request,
// what the upstream read, how many upstream connections it took (a
// response that leaves its connection unusable must not be followed by
// another request on it), and the records (status, flags). What differs
// by design is left out: field order and case, the service time, request
// ids, and the Date and Content-Type net/http adds.
func TestPathsAgree(t *testing.T) {
	for _, tc := range diffCases() {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			fast, slow := viewThrough(t, tc, true), viewThrough(t, tc, false)
			if a, b := strings.Join(fast.client, "\n\t"), strings.Join(slow.client, "\n\t"); a != b {
				t.Errorf("client read:\nfast     %s\nnet/http %s", a, b)
			}
			if fast.followUp != slow.followUp {
				t.Errorf("follow-up:\nfast     %s\nnet/http %s", fast.followUp, slow.followUp)
			}
			if a, b := strings.Join(fast.upstream, "\n\t"), strings.Join(slow.upstream, "\n\t"); a != b {
				t.Errorf("upstream read:\nfast     %s\nnet/http %s", a, b)
			}
			if fast.conns != slow.conns && !tc.handOver {
				t.Errorf("upstream connections: fast %d, net/http %d", fast.conns, slow.conns)
			}
			if !slices.Equal(fast.log, slow.log) {
				t.Errorf("records: fast %v, net/http %v", fast.log, slow.log)
			}
			if tc.wantClient != "" && (len(fast.client) == 0 || fast.client[0] != tc.wantClient) {
				t.Errorf("client read %q, want %q first", fast.client, tc.wantClient)
			}
			if tc.want != nil && (len(fast.log) < len(tc.want) || !slices.Equal(fast.log[:len(tc.want)], tc.want)) {
				t.Errorf("records %q, want %q first", fast.log, tc.want)
			}
			if testing.Verbose() {
				t.Logf("client %q\nfollow-up %s\nupstream %q (%d conns)\nrecords %v", fast.client, fast.followUp, fast.upstream, fast.conns, fast.log)
			}
		})
	}
}
