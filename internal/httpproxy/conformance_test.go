package httpproxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// TestRequestAndResponseKeptIntact: what hostile-traffic review found the
// net/http path changing or answering itself, each sent raw: the target
// as the client wrote it, OPTIONS *, no guessed Content-Type, no 1xx to an
// HTTP/1.0 client, and CONNECT refused instead of framed as a chunked 200.
func TestRequestAndResponseKeptIntact(t *testing.T) {
	var mu sync.Mutex
	var seen []string // request targets the upstream got
	up := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		entry := r.Method + " " + r.RequestURI
		if u := r.Header.Get("Upgrade"); u != "" {
			entry += " upgrade=" + u
		}
		seen = append(seen, entry)
		mu.Unlock()
		switch r.URL.Path {
		case "/html":
			w.Header()["Content-Type"] = nil // the upstream sends none
			io.WriteString(w, "<html><script>alert(1)</script></html>")
		case "/early":
			w.Header().Set("Link", "</a.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			io.WriteString(w, "ok")
		default:
			io.WriteString(w, "ok")
		}
	}), func(s *http.Server) { s.DisableGeneralOptionsHandler = true }) // it sees OPTIONS * too
	f := newFront(t, Options{}, up.addrPort())
	tests := []struct {
		name, req, method string
		status            int
		upstream          string // the target the upstream got; "" for none
		check             func(t *testing.T, res *http.Response)
	}{
		{name: "unparsable query, HTTP/1.0 (net/http path)", req: "GET /s?a=1;b=2&c=%zz HTTP/1.0\r\nHost: a\r\n\r\n", method: "GET",
			status: 200, upstream: "GET /s?a=1;b=2&c=%zz"},
		{name: "OPTIONS * goes upstream", req: "OPTIONS * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", method: "OPTIONS",
			status: 200, upstream: "OPTIONS *"},
		{name: "no guessed Content-Type", req: "GET /html HTTP/1.0\r\nHost: a\r\n\r\n", method: "GET", status: 200, upstream: "GET /html",
			check: func(t *testing.T, res *http.Response) {
				if ct, ok := res.Header["Content-Type"]; ok {
					t.Errorf("Content-Type %q added to an untyped response", ct)
				}
			}},
		{name: "no 1xx to HTTP/1.0", req: "GET /early HTTP/1.0\r\nHost: a\r\n\r\n", method: "GET", status: 200, upstream: "GET /early"},
		{name: "no Upgrade from HTTP/1.0", req: "GET /x HTTP/1.0\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", method: "GET",
			status: 200, upstream: "GET /x"},
		{name: "a fragment in the target", req: "GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n", method: "GET", status: 400},
		{name: "CONNECT refused", req: "CONNECT 127.0.0.1:10 HTTP/1.1\r\nHost: 127.0.0.1:10\r\n\r\n", method: "CONNECT", status: 501},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mu.Lock()
			seen = nil
			mu.Unlock()
			c, br := f.raw(t)
			io.WriteString(c, tt.req)
			res, _ := readResponse(t, br, tt.method) // the first response read: a 1xx would be it
			if res.StatusCode != tt.status {
				t.Fatalf("status %d, want %d", res.StatusCode, tt.status)
			}
			if tt.check != nil {
				tt.check(t, res)
			}
			f.info(t)
			mu.Lock()
			defer mu.Unlock()
			if want := []string{tt.upstream}; tt.upstream == "" && len(seen) != 0 || tt.upstream != "" && (len(seen) != 1 || seen[0] != want[0]) {
				t.Errorf("upstream got %q, want %q", seen, tt.upstream)
			}
		})
	}
}

// TestSpacedFieldNameDropped: a response field name with whitespace before
// its colon does not reach the client from the fast path (net/http's own
// writer drops it too); a lenient parser there could take it for framing.
func TestSpacedFieldNameDropped(t *testing.T) {
	up := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, bw, _ := w.(http.Hijacker).Hijack()
		bw.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding : chunked\r\nX-Fine: 1\r\n\r\nok")
		bw.Flush()
		conn.Close()
	}))
	f := newFront(t, Options{}, up.addrPort())
	c, br := f.raw(t)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
	raw, _ := io.ReadAll(br)
	if !strings.HasPrefix(string(raw), "HTTP/1.1 200") || !strings.Contains(string(raw), "X-Fine: 1\r\n") {
		t.Fatalf("response:\n%s", raw)
	}
	if strings.Contains(strings.ToLower(string(raw)), "transfer-encoding :") {
		t.Errorf("the spaced field reached the client:\n%s", raw)
	}
}

// TestLoggedPathIsTheTargetAsSent: the request's record carries the target
// as the client sent it, query and percent-escapes included (Envoy's
// %REQ(:PATH)%), on the fast path and on net/http's; a decoded path would
// hide the query and turn %0d%0a into a line break.
func TestLoggedPathIsTheTargetAsSent(t *testing.T) {
	up := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	f := newFront(t, Options{}, up.addrPort())
	const target = "/a%2Fb%0d%0a?b=c&d=%41"
	for _, tt := range []struct{ name, req string }{
		{"fast path", "GET " + target + " HTTP/1.1\r\nHost: a\r\n\r\n"},
		{"net/http path (HTTP/1.0)", "GET " + target + " HTTP/1.0\r\nHost: a\r\n\r\n"},
		{"net/http path (chunked body)", "POST " + target + " HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, br := f.raw(t)
			io.WriteString(c, tt.req)
			if res, _ := readResponse(t, br, "GET"); res.StatusCode != 200 {
				t.Fatalf("status %d", res.StatusCode)
			}
			if i := f.info(t); i.Path != target {
				t.Errorf("logged path %q, want %q", i.Path, target)
			}
		})
	}
}

// TestRefusedSwitchKeepsGuard: a 101 the proxy does not take — another
// protocol than the one asked for, or a switch nobody asked for — is an
// upstream error (503, as the fast path answers it), its upstream
// connection is closed, and the client connection goes on behind the
// guard: its next request is answered by the upstream, not refused as a
// framing mismatch.
func TestRefusedSwitchKeepsGuard(t *testing.T) {
	var switched atomic.Int32 // upstream connections that sent a 101 and then saw EOF
	dst := rawUpstream(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			io.Copy(io.Discard, req.Body)
			if up := req.Header.Get("X-Switch-To"); up != "" {
				fmt.Fprintf(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: %s\r\nConnection: Upgrade\r\n\r\n", up)
				if _, err := br.ReadByte(); err == io.EOF {
					switched.Add(1)
				}
				return
			}
			fmt.Fprint(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	f := newFront(t, Options{}, dst)
	for i, tt := range []struct{ name, req string }{
		{"another protocol", "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nX-Switch-To: foo\r\n\r\n"},
		{"no upgrade asked (chunked body: net/http path)", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nX-Switch-To: foo\r\n\r\n0\r\n\r\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, br := f.raw(t)
			io.WriteString(c, tt.req)
			if res, body := readResponse(t, br, "GET"); res.StatusCode != 502 || !strings.HasSuffix(body, "protocol error") {
				t.Fatalf("refused switch: %d %q", res.StatusCode, body)
			}
			if info := f.info(t); info.Flags != UpstreamProtocolError {
				t.Errorf("refused switch: flags %v", info.Flags)
			}
			io.WriteString(c, "POST /next HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
			if res, body := readResponse(t, br, "POST"); res.StatusCode != 200 || body != "ok" {
				t.Fatalf("next request: %d %q", res.StatusCode, body)
			}
			f.info(t)
			eventually(t, "the switched upstream connection closed", func() bool { return switched.Load() == int32(i+1) })
		})
	}
}

// TestUnsafeReasonPhraseReplaced: a reason phrase with a control byte
// (a bare CR that a lenient client would take for a line end, a NUL),
// which http.ReadResponse keeps, does not reach the client: the status's
// standard text goes instead, on both paths, for final and 1xx heads.
func TestUnsafeReasonPhraseReplaced(t *testing.T) {
	for _, tt := range []struct{ name, resp, status string }{
		{"bare CR", "HTTP/1.1 200 OK\rX-Injected: 1\r\nContent-Length: 2\r\n\r\nok", "HTTP/1.1 200 OK\r\n"},
		{"NUL", "HTTP/1.1 404 Not\x00Found\r\nContent-Length: 2\r\n\r\nok", "HTTP/1.1 404 Not Found\r\n"},
		{"DEL", "HTTP/1.1 200 O\x7fK\r\nContent-Length: 2\r\n\r\nok", "HTTP/1.1 200 OK\r\n"},
		{"1xx with a bare CR", "HTTP/1.1 103 Early\rX-Injected: 1\r\nLink: <a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
			"HTTP/1.1 103 Early Hints\r\n"},
		{"obs-text and tabs kept", "HTTP/1.1 200 Fine\tand \xe9\r\nContent-Length: 2\r\n\r\nok", "HTTP/1.1 200 "},
	} {
		dst := rawUpstream(t, func(c net.Conn) {
			http.ReadRequest(bufio.NewReader(c))
			io.WriteString(c, tt.resp)
		})
		for _, fast := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/fast=%v", tt.name, fast), func(t *testing.T) {
				f := newFront(t, Options{DisableFastPath: !fast}, dst)
				c, br := f.raw(t)
				io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
				raw, _ := io.ReadAll(br)
				if !strings.HasPrefix(string(raw), tt.status) || !strings.HasSuffix(string(raw), "\r\n\r\nok") {
					t.Fatalf("response:\n%q", raw)
				}
				if head := string(raw[:len(raw)-2]); strings.Contains(strings.ReplaceAll(head, "\r\n", ""), "\r") ||
					strings.ContainsRune(head, 0) || strings.Contains(head, "X-Injected") {
					t.Errorf("unsafe bytes reached the client:\n%q", raw)
				}
			})
		}
	}
}

// TestH2CPrefaceOnlyFirst: the HTTP/2 prior-knowledge preface starts h2c
// only as a connection's first bytes (RFC 9113, 3.3); after a request,
// "PRI * HTTP/2.0" is an HTTP/1 request line with an unsupported version,
// answered 505 on both paths (the fast path hands the connection to
// net/http at that head, which must not take it for a new connection's
// preface).
func TestH2CPrefaceOnlyFirst(t *testing.T) {
	up := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	f := newFront(t, Options{}, up.addrPort())
	for _, tt := range []struct{ name, first string }{
		{"after a fast-path request", "GET / HTTP/1.1\r\nHost: a\r\n\r\n"},
		{"after a net/http request", "GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, br := f.raw(t)
			io.WriteString(c, tt.first)
			if res, _ := readResponse(t, br, "GET"); res.StatusCode != 200 {
				t.Fatalf("first request: %d", res.StatusCode)
			}
			f.info(t)
			io.WriteString(c, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
			res, err := http.ReadResponse(br, nil)
			if err != nil || res.StatusCode != http.StatusHTTPVersionNotSupported {
				t.Fatalf("preface after a request: %v %v, want 505", res, err)
			}
			f.info(t)
		})
	}
}

// TestInformationalHopByHopRemoved: a relayed 1xx (103 Early Hints) loses
// its hop-by-hop fields and those its Connection field names, as a final
// response does, on both paths (RFC 9110, 7.6.1).
func TestInformationalHopByHopRemoved(t *testing.T) {
	dst := rawUpstream(t, func(c net.Conn) {
		http.ReadRequest(bufio.NewReader(c))
		io.WriteString(c, "HTTP/1.1 103 Early Hints\r\nConnection: X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=1\r\n"+
			"Proxy-Connection: keep-alive\r\nLink: </a.css>; rel=preload\r\n\r\n"+
			"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	})
	onBothPaths(t, func(t *testing.T, fast bool) {
		f := newFront(t, Options{DisableFastPath: !fast}, dst)
		c, br := f.raw(t)
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
		raw, _ := io.ReadAll(br)
		info, _, ok := strings.Cut(string(raw), "\r\n\r\n")
		if !ok || !strings.HasPrefix(info, "HTTP/1.1 103 ") || !strings.Contains(info, "\r\nLink: </a.css>; rel=preload") {
			t.Fatalf("response:\n%q", raw)
		}
		for _, k := range []string{"connection:", "x-hop:", "keep-alive:", "proxy-connection:"} {
			if strings.Contains(strings.ToLower(info), "\r\n"+k) {
				t.Errorf("103 carries %s\n%q", k, info)
			}
		}
	})
}
