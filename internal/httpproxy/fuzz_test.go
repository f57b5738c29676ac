package httpproxy

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"math"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// Seeds for both targets are in testdata/fuzz/<target>/: the requests of
// the hostile-input tables and some well-formed pipelines. Run a target
// with, for example:
//
//	go test -run '^$' -fuzz '^FuzzServeConn$' -fuzztime 3m -fuzzminimizetime 1x ./internal/httpproxy/

// FuzzServeConn sends arbitrary bytes as a client's byte stream through the
// proxy to a loopback upstream, then half-closes. The proxy must not panic
// and must answer with zero or more well-formed, complete HTTP/1.1
// responses and close the connection.
//
// The input's parts between "\x00\x00" are sent one at a time, each once
// the proxy has answered the one before (or closed, or 50ms passed), so
// that a keep-alive connection's third request and those after it are
// read by an L4 loop (onloop_linux.go): bytes sent at once are read whole
// by the connection's goroutine, which then never hands it to a loop.
func FuzzServeConn(f *testing.F) {
	f.Add([]byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n"))
	get := "GET / HTTP/1.1\r\nHost: a\r\n\r\n"
	for _, parts := range [][]string{
		{get, get, get, get},
		{get, get, "POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello", get},
		{get, get, "POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhe", "llo" + get},
		{get, get, "PUT /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", "HEAD / HTTP/1.1\r\nHost: a\r\n\r\n", get},
		{get, get, get + get, "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"},
		{get, get, "GET / HTTP/1.1\r\nHost: a\r\n", "\r\n", "GET /x HTTP/1.0\r\n\r\n"},
	} {
		f.Add([]byte(strings.Join(parts, "\x00\x00")))
	}
	up := newUpstream(f, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if r.Method == "HEAD" {
			// A bodiless answer the reader below needs no method to parse.
			w.Header().Set("Content-Length", "0")
			return
		}
		io.WriteString(w, "ok")
	}))
	panics := &panicHandler{}
	fr := newFront(f, Options{
		Logger:        slog.New(panics),
		HeaderTimeout: 2 * time.Second,
		RouteTimeout:  2 * time.Second,
	}, up.addrPort())

	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := net.Dial("tcp", fr.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		got := make(chan struct{}, 1) // the proxy sent something
		done := make(chan struct{})   // or closed
		parts := bytes.Split(data, []byte("\x00\x00"))
		go func() {
			defer c.(*net.TCPConn).CloseWrite()
			for i, part := range parts {
				if i > 0 {
					select {
					case <-got:
					case <-done:
						return
					case <-time.After(50 * time.Millisecond): // a request not yet whole
					}
				}
				select {
				case <-got:
				default:
				}
				if _, err := c.Write(part); err != nil {
					return
				}
			}
		}()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		var out []byte
		for buf := make([]byte, 4096); ; {
			var n int
			n, err = c.Read(buf)
			out = append(out, buf[:n]...)
			if err != nil {
				break
			}
			select {
			case got <- struct{}{}:
			default:
			}
		}
		close(done)
		if err != io.EOF {
			t.Fatalf("not closed within 10s: %v; got %q", err, out)
		}
		if msg := panics.msg.Load(); msg != nil {
			t.Fatalf("logged: %s", *msg)
		}
		if bytes.HasPrefix(bytes.Join(parts, nil), []byte(h2Preface)) { // what the proxy got
			return // HTTP/2 frames, not HTTP/1 responses
		}
		br := bufio.NewReader(bytes.NewReader(out))
		for n := 0; ; n++ {
			if _, err := br.Peek(1); err == io.EOF {
				return
			}
			res, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("response %d: %v; got %q", n, err, out)
			}
			if _, err := io.Copy(io.Discard, res.Body); err != nil {
				t.Fatalf("response %d body: %v; got %q", n, err, out)
			}
		}
	})
}

// FuzzGuard checks the guard against net/http's own request parser: for
// any input, cut into reads of any size, the guard hands on the client's
// bytes unchanged (or a prefix of them and the placeholder), and net/http,
// parsing what was handed on, finds exactly the requests the guard
// accepted, at the offsets where the guard saw them, and nothing else.
// Small limits exercise the 431 paths.
func FuzzGuard(f *testing.F) {
	f.Add([]byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), uint8(0))
	pool := &sync.Pool{} // shared: buffers come back dirty
	f.Fuzz(func(t *testing.T, data []byte, split uint8) {
		g := newGuard(pool, 1024, 16, "X-Detour-Original-Dst-Host")
		src := &trickle{data: data, step: int(split&0x3f) + 1}
		p := make([]byte, [...]int{1, 7, 512, 4096}[split>>6])
		var out bytes.Buffer
		for range 1 << 20 {
			n, err := g.read(src, p)
			out.Write(p[:n])
			if err != nil {
				break
			}
		}
		handed := out.Bytes()
		switch g.st {
		case gDone:
			k := len(handed) - len(placeholder)
			if k < 0 || string(handed[k:]) != placeholder || !bytes.Equal(handed[:k], data[:k]) {
				t.Fatalf("refused: handed on %q", handed)
			}
		default:
			if !bytes.Equal(handed, data[:min(len(handed), len(data))]) || len(handed) > len(data) {
				t.Fatalf("handed on %q, not a prefix of the input", handed)
			}
		}
		if g.st == gPass {
			return // h2c preface: the HTTP/2 server's business
		}

		cr := &countingReader{r: bytes.NewReader(handed)}
		br := bufio.NewReader(cr)
		offset := func() int64 { return cr.n - int64(br.Buffered()) }
		verdicts := append([]verdict(nil), g.verdicts...)
		for i, v := range verdicts {
			if v.status == 0 && offset() != v.at {
				t.Fatalf("request %d: net/http is at offset %d, the guard's head is at %d; input %q", i, offset(), v.at, data)
			}
			req, err := http.ReadRequest(br)
			if err != nil {
				if v.status == 0 && err != io.EOF && err != io.ErrUnexpectedEOF {
					return // net/http is stricter here; the server answers 400 and closes
				}
				t.Fatalf("request %d: net/http: %v; guard verdict %+v; input %q", i, err, v, data)
			}
			if fp := fingerprint(req.Method, req.RequestURI, req.Proto); fp != v.line {
				t.Fatalf("request %d: net/http parsed %q %q %q, not the guard's; input %q", i, req.Method, req.RequestURI, req.Proto, data)
			}
			if v.status != 0 {
				if i != len(verdicts)-1 {
					t.Fatalf("verdicts after a refusal: %+v", verdicts)
				}
				return
			}
			if _, err := io.Copy(io.Discard, req.Body); err != nil {
				return // the input (or the guard, at a bad chunk) ended the body
			}
		}
		// Every accepted request was read whole: nothing may follow. (An
		// incomplete head is held back; a request net/http could parse
		// here would be one the guard never checked.)
		if rest, _ := io.ReadAll(br); len(rest) > 0 {
			t.Fatalf("bytes handed on after the last checked request: %q; state %d; input %q", rest, g.st, data)
		}
	})
}

// trickle returns at most step bytes per Read.
type trickle struct {
	data []byte
	step int
}

func (r *trickle) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), r.step)], r.data)
	r.data = r.data[n:]
	return n, nil
}

type countingReader struct {
	r io.Reader
	n int64
}

// FuzzGuardVerdictSameInAnySplit checks that the guard's verdict on any
// input does not depend on how it is split across reads: the refusal
// (status and reason) and, for a refused head, its record are the same as
// when it all comes at once (TestGuardVerdictSameInAnySplit's property).
// Small limits exercise the 431 paths and the first bad byte before them.
func FuzzGuardVerdictSameInAnySplit(f *testing.F) {
	for _, c := range hostileCases() {
		if len(c.req) < 4096 {
			f.Add([]byte(c.req), uint64(0x0102030405060708))
		}
	}
	// A bad byte just within the limit of 256 bytes, the line's end past it.
	f.Add([]byte("GET /"+strings.Repeat("a", 245)+"\x01 HTTP/1.1\r\n\r\n"), uint64(250))
	f.Fuzz(func(t *testing.T, data []byte, cuts uint64) {
		const maxHead, maxFields = 256, 8
		in := string(data)
		// Each byte of cuts, from the lowest, is the length of the next
		// read (0: the rest); at most eight cuts.
		var parts []string
		for s := in; s != ""; cuts >>= 8 {
			n := int(cuts & 0xff)
			if n == 0 || n > len(s) {
				n = len(s)
			}
			parts, s = append(parts, s[:n]), s[n:]
		}
		whole, wholeRecord := limitedGuardOutcome(maxHead, maxFields, []string{in})
		got, record := limitedGuardOutcome(maxHead, maxFields, parts)
		if got != whole || record != "" && wholeRecord != "" && record != wholeRecord {
			t.Fatalf("in reads of %d: %s (%s); at once: %s (%s); input %q", lens(parts), got, record, whole, wholeRecord, in)
		}
		step, stepRecord := limitedGuardOutcome(maxHead, maxFields, slices.Collect(chunks(in, 1)))
		if step != whole || stepRecord != "" && wholeRecord != "" && stepRecord != wholeRecord {
			t.Fatalf("a byte a read: %s (%s); at once: %s (%s); input %q", step, stepRecord, whole, wholeRecord, in)
		}
	})
}

func lens(parts []string) (n []int) {
	for _, p := range parts {
		n = append(n, len(p))
	}
	return n
}

// chunks yields s in pieces of n bytes (the last may be shorter).
func chunks(s string, n int) iter.Seq[string] {
	return func(yield func(string) bool) {
		for ; s != ""; s = s[min(n, len(s)):] {
			if !yield(s[:min(n, len(s))]) {
				return
			}
		}
	}
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// FuzzFastHead checks that the fast path only takes heads both other
// parsers accept as the same request, and waits for every part of one:
// whatever parseFastHead accepts, no prefix of it is declined as
// implausible (partialHead), the framing guard accepts it too, net/http's ReadRequest reads with the same
// method, target, Host and Content-Length, and the head built for the
// upstream is a valid request carrying the forwarding fields and no
// hop-by-hop ones.
func FuzzFastHead(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST /p?q=%20 HTTP/1.1\r\nHost: example.com:80\r\nContent-Length: 3\r\nConnection: close\r\n\r\n",
		"GET /a HTTP/1.1\r\nHost: [::1]:8080\r\nX-Forwarded-For: 1.2.3.4\r\nX-Request-Id: abc\r\nKeep-Alive: 5\r\n\r\n",
		"HEAD / HTTP/1.1\r\nhost: a\r\nProxy-Authorization: x\r\nX-Detour-Original-Dst-Host: 1.1.1.1:1\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	p, err := New(Options{Dialer: newFrontDialer()})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { p.Close() })
	pool := &sync.Pool{}
	f.Fuzz(func(t *testing.T, data []byte) {
		end := bytes.Index(data, []byte("\r\n\r\n"))
		if end < 0 || end+4 > fastBufSize {
			return
		}
		end += 4
		var h fastHead
		ok := parseFastHead(&h, data, end, p.o.MaxRequestHeaderBytes, p.o.MaxRequestHeaders, p.hdr, false)
		if !ok {
			return
		}
		head := data[:end]
		// The fast path waits for the rest of every prefix of a head it
		// takes (readHead), whether the prefix came a byte at a time or
		// at once.
		var part partialHead
		for k := 1; k < end; k++ {
			if !part.plausible(head[:k], p.o.MaxRequestHeaderBytes, p.o.MaxRequestHeaders, p.hdr, false) {
				t.Fatalf("prefix of %d bytes, a byte a read, declined: %q", k, head)
			}
		}
		for _, k := range []int{end / 2, end - 1} {
			if !(&partialHead{}).plausible(head[:k], p.o.MaxRequestHeaderBytes, p.o.MaxRequestHeaders, p.hdr, false) {
				t.Fatalf("prefix of %d bytes, at once, declined: %q", k, head)
			}
		}
		g := newGuard(pool, p.o.MaxRequestHeaderBytes, p.o.MaxRequestHeaders, p.hdr)
		buf := make([]byte, 4096)
		for range 64 {
			if _, err := g.read(bytes.NewReader(head), buf); err != nil || len(g.verdicts) > 0 {
				break
			}
		}
		if len(g.verdicts) == 0 || g.verdicts[0].status != 0 {
			t.Fatalf("fast path took a head the guard refuses (%+v): %q", g.verdicts, head)
		}
		r, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(head)))
		if err != nil {
			t.Fatalf("fast path took a head net/http refuses (%v): %q", err, head)
		}
		if r.Method != h.method || r.RequestURI != string(h.target) || r.Host != string(h.host) || max(r.ContentLength, 0) != h.clen {
			t.Fatalf("net/http reads %s %s host %q len %d, the fast path %s %s host %q len %d: %q",
				r.Method, r.RequestURI, r.Host, r.ContentLength, h.method, h.target, h.host, h.clen, head)
		}
		fc := &fastConn{p: p, in: new(fastBuf), clientIP: "198.18.1.2"}
		fc.w = copy(fc.in[:], head)
		out := fc.requestHead(nil, &h, "id-1")
		u, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(out)))
		if err != nil {
			t.Fatalf("upstream head invalid (%v): %q", err, out)
		}
		if u.Header.Get("X-Forwarded-Proto") != "http" || u.Header.Get("X-Request-Id") != "id-1" || u.Header.Get(p.hdr) != "" ||
			u.Header.Get("Proxy-Authorization") != "" || u.Header.Get("Keep-Alive") != "" || u.Host != r.Host || u.RequestURI != r.RequestURI {
			t.Fatalf("upstream head %q from %q", out, head)
		}
		if xff := u.Header.Get("X-Forwarded-For"); !strings.HasSuffix(xff, "198.18.1.2") {
			t.Fatalf("X-Forwarded-For %q", xff)
		}
		// Every other field goes upstream as the client sent it, in order.
		replaced := map[string]bool{"Connection": true, "Keep-Alive": true, "Proxy-Connection": true,
			"Proxy-Authorization": true, "Proxy-Authenticate": true, "X-Forwarded-For": true,
			"X-Forwarded-Proto": true, "X-Request-Id": true, p.hdr: true}
		for k, vs := range r.Header {
			if !replaced[k] && !slices.Equal(u.Header[k], vs) {
				t.Fatalf("field %s: upstream got %q, client sent %q: %q", k, u.Header[k], vs, head)
			}
		}
		for k := range u.Header {
			if !replaced[k] && r.Header[k] == nil {
				t.Fatalf("field %s appeared upstream: %q", k, out)
			}
		}
	})
}

// FuzzFastResponseHead checks the in-place response head parser against
// http.ReadResponse: whatever parseRespHead takes, http.ReadResponse reads
// too, ending at the same byte, with the same status, Content-Length and
// Close; every shorter prefix of it keeps parseRespHead waiting; and the
// client's head built from it carries the same status line and, as
// multisets, the same fields as the one built from http.ReadResponse's
// reading, in each Server mode.
func FuzzFastResponseHead(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok",
		nginxHead,
		"HTTP/1.0 200 OK\r\nConnection: keep-alive, X-A\r\nX-A: 1\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nConnection: close, X-A\r\nX-A: 1\r\nServer: a\r\nserver: b\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 007\r\n\r\n",
		"HTTP/1.1 204\r\nx-a:\t v \t\r\nKeep-Alive: 1\r\nPragma: no-cache\r\nCache-Control: x\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"HTTP/1.1 100 Continue\r\n\r\n",
		"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nPragma: no-cache\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n",
	} {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	var proxies []*Proxy
	for _, mode := range []string{ServerOverwrite, ServerAppendIfAbsent, ServerPassThrough} {
		p, err := New(Options{Dialer: newFrontDialer(), ServerHeaderMode: mode})
		if err != nil {
			f.Fatal(err)
		}
		f.Cleanup(func() { p.Close() })
		proxies = append(proxies, p)
	}
	f.Fuzz(func(t *testing.T, data []byte, head bool) {
		method := "GET"
		if head {
			method = "HEAD"
		}
		var rh respHead
		switch parseRespHead(data, method, &rh) {
		case respDeclined:
			return
		case respMore:
			if len(data) <= math.MaxUint16 && bytes.Contains(data, []byte("\r\n\r\n")) {
				t.Fatalf("waits on a complete head: %q", data)
			}
			return
		}
		req := &http.Request{Method: method}
		cr := &countingReader{r: bytes.NewReader(data)}
		br := bufio.NewReader(cr)
		res, err := http.ReadResponse(br, req)
		if err != nil {
			t.Fatalf("parsed in place, refused by net/http (%v): %q", err, data)
		}
		wantLen := rh.clen
		if !head && bodiless(method, rh.status) {
			wantLen = 0
		}
		if read := int(cr.n) - br.Buffered(); read != rh.size || res.StatusCode != rh.status || res.ContentLength != wantLen || res.Close != rh.close {
			t.Fatalf("net/http: %d bytes, status %d, length %d, close %v; in place: %d, %d, %d, %v: %q",
				read, res.StatusCode, res.ContentLength, res.Close, rh.size, rh.status, wantLen, rh.close, data)
		}
		for k := range min(rh.size, 512) {
			var p respHead
			if v := parseRespHead(data[:k], method, &p); v != respMore {
				t.Fatalf("prefix of %d bytes: verdict %d: %q", k, v, data[:k])
			}
		}
		h := &fastHead{method: method}
		for _, p := range proxies {
			fc := &fastConn{p: p}
			fast := fc.fastResponseHead(nil, data, &rh, h, 7*time.Millisecond)
			slow := fc.responseHead(nil, res, h, 7*time.Millisecond)
			a, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(fast)), req)
			if err != nil {
				t.Fatalf("client head from the in-place parse invalid (%v): %q", err, fast)
			}
			b, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(slow)), req)
			if err != nil {
				t.Fatalf("client head from net/http's parse invalid (%v): %q", err, slow)
			}
			lineA, _, _ := bytes.Cut(fast, []byte("\r\n"))
			lineB, _, _ := bytes.Cut(slow, []byte("\r\n"))
			if !bytes.Equal(lineA, lineB) || a.ContentLength != b.ContentLength || fmt.Sprint(a.Header) != fmt.Sprint(b.Header) {
				t.Fatalf("%s: client heads differ:\nin place %q\nnet/http %q\nfrom %q", p.o.ServerHeaderMode, fast, slow, data)
			}
		}
	})
}

// FuzzHeadScan checks headScan against http.ReadResponse read as the
// Transport reads it (1xx heads skipped, 101 final): where Go's final head
// ends, headScan's does, whatever the split of the bytes into two reads;
// and when headScan says how long the body is (bodyLen, what upConn
// counts to drop the bytes past it), Go's response takes no byte more.
func FuzzHeadScan(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 200 OK\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nstray",
		"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"HTTP/1.1  103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nab",
		"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\nabc",
		"HTTP/1.1 304 Not Modified\r\nContent-Length: 007\r\n\r\n",
		"HTTP/1.0 200 OK\nContent-Length: 2\n\nokmore",
		"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\ntunnel",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\nX-A: a\r\n b\r\n\r\nokok",
		"HTTP/1.1 200 OK\r\nContent-Length :5\r\n\r\nhello",
	} {
		f.Add([]byte(s), uint16(len(s)/2), false)
		f.Add([]byte(s), uint16(0), true)
	}
	f.Fuzz(func(t *testing.T, data []byte, split uint16, head bool) {
		req := &http.Request{Method: "GET"}
		if head {
			req.Method = "HEAD"
		}
		sr := bytes.NewReader(data)
		br := bufio.NewReader(sr)
		consumed := func() int { return len(data) - sr.Len() - br.Buffered() }
		var res *http.Response
		for {
			var err error
			if res, err = http.ReadResponse(br, req); err != nil {
				return // Go refuses it: the connection closes whatever headScan says
			}
			if res.StatusCode < 100 || res.StatusCode > 199 || res.StatusCode == 101 {
				break
			}
		}
		headEnd := consumed()
		var s headScan
		at := int(split) % (len(data) + 1)
		end := s.feed(data[:at])
		if end < 0 {
			if e := s.feed(data[at:]); e >= 0 {
				end = at + e
			}
		}
		if end != headEnd-1 {
			t.Fatalf("headScan ends the final head at %d, http.ReadResponse at %d (status %d)", end, headEnd-1, res.StatusCode)
		}
		n := s.bodyLen(head)
		if n < 0 || s.conflict {
			return // not counted, or refused
		}
		_, err := io.Copy(io.Discard, res.Body)
		if got := consumed() - headEnd; got > int(n) || err == nil && got != int(n) {
			t.Fatalf("the body took %d bytes (err %v); headScan counts %d", got, err, n)
		}
	})
}
