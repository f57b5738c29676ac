package httpproxy

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// describe renders what relay would do with each kept field of a parsed
// head: "name=value", with "server ", "conn " or "named " in front of
// those it treats apart.
func (rh *respHead) describe(b []byte) []string {
	var out []string
	for _, f := range rh.fields[:rh.nFields] {
		prefix := [...]string{respForward: "", respServer: "server ", respConnection: "conn ", respNamed: "named "}[f.kind]
		out = append(out, fmt.Sprintf("%s%s=%s", prefix, f.name.of(b), f.value.of(b)))
	}
	return out
}

// TestParseRespHeadAccepts: heads in the strict subset, with what the
// parser found in them.
func TestParseRespHeadAccepts(t *testing.T) {
	tests := []struct {
		name, method, head string
		status             int
		reason             string
		clen               int64
		close              bool
		servers            int
		fields             []string
	}{
		{"typical", "GET", "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n",
			200, "OK", 2, false, 0, []string{"Content-Type=text/plain"}},
		{"no reason, no space", "GET", "HTTP/1.1 404\r\nContent-Length: 0\r\n\r\n", 404, "", 0, false, 0, nil},
		{"empty reason", "GET", "HTTP/1.1 503 \r\nContent-Length: 0\r\n\r\n", 503, "", 0, false, 0, nil},
		{"reason kept as sent", "GET", "HTTP/1.1 200  All\tgood \r\nContent-Length: 0\r\n\r\n", 200, " All\tgood ", 0, false, 0, nil},
		{"case and whitespace", "GET", "HTTP/1.1 200 OK\r\ncontent-length:  7 \r\nx-a:\tv w\t\r\nX-Empty:\r\nX-B:c\r\n\r\n",
			200, "OK", 7, false, 0, []string{"x-a=v w", "X-Empty=", "X-B=c"}},
		{"obs-text value", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-U: caf\xc3\xa9 \xff\r\n\r\n",
			200, "OK", 0, false, 0, []string{"X-U=caf\xc3\xa9 \xff"}},
		{"repeated fields in order", "GET", "HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nVary: x\r\nSet-Cookie: b=2\r\nContent-Length: 0\r\n\r\n",
			200, "OK", 0, false, 0, []string{"Set-Cookie=a=1", "Vary=x", "Set-Cookie=b=2"}},
		{"hop-by-hop dropped", "GET", "HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nproxy-authenticate: x\r\nProxy-Connection: y\r\n" +
			"Proxy-Authorization: z\r\nTE: trailers\r\nTrailer: X-T\r\nUpgrade: h2c\r\nX-Detour-Upstream-Service-Time: 99\r\nX-Kept: 1\r\nContent-Length: 0\r\n\r\n",
			200, "OK", 0, false, 0, []string{"X-Kept=1"}},
		{"Server fields", "GET", "HTTP/1.1 200 OK\r\nServer: nginx\r\nserver: second\r\nContent-Length: 0\r\n\r\n",
			200, "OK", 0, false, 2, []string{"server Server=nginx", "server server=second"}},
		{"Connection options name fields", "GET", "HTTP/1.1 200 OK\r\nX-Secret: s\r\nConnection: keep-alive, x-secret\r\nconnection: X-Other\r\nX-Other: o\r\nX-Kept: k\r\nContent-Length: 1\r\n\r\n",
			200, "OK", 1, false, 0, []string{"named X-Secret=s", "conn Connection=keep-alive, x-secret", "conn connection=X-Other", "named X-Other=o", "X-Kept=k"}},
		{"Connection names Server: no effect", "GET", "HTTP/1.1 200 OK\r\nConnection: Server\r\nServer: s\r\nContent-Length: 0\r\n\r\n",
			200, "OK", 0, false, 1, []string{"conn Connection=Server", "server Server=s"}},
		// net/http deletes an HTTP/1.1 Connection field with close before
		// relay sees it: its other options name nothing (today's behaviour).
		{"HTTP/1.1 close", "GET", "HTTP/1.1 200 OK\r\nConnection: close, X-Secret\r\nX-Secret: s\r\nContent-Length: 0\r\n\r\n",
			200, "OK", 0, true, 0, []string{"conn Connection=close, X-Secret", "X-Secret=s"}},
		{"HTTP/1.0 closes", "GET", "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", 200, "OK", 0, true, 0, nil},
		{"HTTP/1.0 keep-alive", "GET", "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n",
			200, "OK", 0, false, 0, []string{"conn Connection=Keep-Alive"}},
		{"HTTP/1.0 close and keep-alive", "GET", "HTTP/1.0 200 OK\r\nConnection: keep-alive, close, X-S\r\nX-S: 1\r\nContent-Length: 0\r\n\r\n",
			200, "OK", 0, true, 0, []string{"conn Connection=keep-alive, close, X-S", "named X-S=1"}},
		{"HEAD without Content-Length", "HEAD", "HTTP/1.1 200 OK\r\nETag: x\r\n\r\n", 200, "OK", -1, false, 0, []string{"ETag=x"}},
		{"HEAD with Content-Length", "HEAD", "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", 200, "OK", 1000, false, 0, nil},
		{"204", "GET", "HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n", 204, "No Content", -1, false, 0, []string{"X-A=1"}},
		{"204 with a length", "GET", "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", 204, "No Content", 5, false, 0, nil},
		{"304", "GET", "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n", 304, "Not Modified", -1, false, 0, []string{"ETag=\"x\""}},
		{"Pragma with Cache-Control", "GET", "HTTP/1.1 200 OK\r\nPragma: no-cache\r\nCache-Control: no-store\r\nContent-Length: 0\r\n\r\n",
			200, "OK", 0, false, 0, []string{"Pragma=no-cache", "Cache-Control=no-store"}},
		{"other Pragma", "GET", "HTTP/1.1 200 OK\r\nPragma: No-Cache\r\nContent-Length: 0\r\n\r\n", 200, "OK", 0, false, 0, []string{"Pragma=No-Cache"}},
		{"599", "GET", "HTTP/1.1 599 Odd\r\nContent-Length: 0\r\n\r\n", 599, "Odd", 0, false, 0, nil},
		{"body bytes after the head", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 200, "OK", 5, false, 0, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := []byte(tt.head)
			var rh respHead
			if v := parseRespHead(b, tt.method, &rh); v != respOK {
				t.Fatalf("verdict %d, want respOK", v)
			}
			size := strings.Index(tt.head, "\r\n\r\n") + 4
			if rh.status != tt.status || string(rh.reason.of(b)) != tt.reason || rh.clen != tt.clen || rh.close != tt.close ||
				rh.servers != tt.servers || rh.size != size {
				t.Errorf("got status %d reason %q clen %d close %v servers %d size %d, want %d %q %d %v %d %d",
					rh.status, rh.reason.of(b), rh.clen, rh.close, rh.servers, rh.size, tt.status, tt.reason, tt.clen, tt.close, tt.servers, size)
			}
			if got := rh.describe(b); !slices.Equal(got, tt.fields) {
				t.Errorf("fields\n got %q\nwant %q", got, tt.fields)
			}
			if rh.clen >= 0 {
				if v, _ := parseContentLength(rh.clenVal.of(b)); v != rh.clen {
					t.Errorf("Content-Length span %q", rh.clenVal.of(b))
				}
			}
		})
	}
}

// TestParseRespHeadDeclines: each way out of the strict subset, and the
// incomplete heads it waits on.
func TestParseRespHeadDeclines(t *testing.T) {
	const cl = "Content-Length: 0\r\n"
	many := "HTTP/1.1 200 OK\r\n" + cl + strings.Repeat("X-F: v\r\n", maxRespFields+1) + "\r\n"
	tests := []struct {
		name, method, head string
		want               respVerdict
	}{
		{"bare LF ends the status line", "GET", "HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n", respDeclined},
		{"bare LF ends a field", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 0\n\r\n", respDeclined},
		{"bare LF ends the head", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\n", respDeclined},
		{"CR inside a line", "GET", "HTTP/1.1 200 OK\r\nX-A: a\rb\r\n" + cl + "\r\n", respDeclined},
		{"obs-fold", "GET", "HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\n" + cl + "\r\n", respDeclined},
		{"obs-fold with a tab", "GET", "HTTP/1.1 200 OK\r\nX-A: a\r\n\tb\r\n" + cl + "\r\n", respDeclined},
		{"first field line starts with a space", "GET", "HTTP/1.1 200 OK\r\n X-A: a\r\n" + cl + "\r\n", respDeclined},
		{"Transfer-Encoding chunked", "GET", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", respDeclined},
		{"Transfer-Encoding with a length", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\ntransfer-encoding: identity\r\n\r\n", respDeclined},
		{"Transfer-Encoding on a 204", "GET", "HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n", respDeclined},
		{"duplicate Content-Length", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n", respDeclined},
		{"Content-Length list", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\n", respDeclined},
		{"Content-Length signed", "GET", "HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\n", respDeclined},
		{"Content-Length hex", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 0x2\r\n\r\n", respDeclined},
		{"Content-Length empty", "GET", "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n", respDeclined},
		{"Content-Length 19 digits", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 1000000000000000000\r\n\r\n", respDeclined},
		{"invalid Content-Length on a HEAD", "HEAD", "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", respDeclined},
		{"100 Continue", "GET", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n" + cl + "\r\n", respDeclined},
		{"103 Early Hints", "GET", "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", respDeclined},
		{"101", "GET", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", respDeclined},
		{"600", "GET", "HTTP/1.1 600 Odd\r\n" + cl + "\r\n", respDeclined},
		{"HTTP/2.0", "GET", "HTTP/2.0 200 OK\r\n" + cl + "\r\n", respDeclined},
		{"HTTP/1.2", "GET", "HTTP/1.2 200 OK\r\n" + cl + "\r\n", respDeclined},
		{"lower-case version", "GET", "http/1.1 200 OK\r\n" + cl + "\r\n", respDeclined},
		{"two spaces before the status", "GET", "HTTP/1.1  200 OK\r\n" + cl + "\r\n", respDeclined},
		{"status not digits", "GET", "HTTP/1.1 2x0 OK\r\n" + cl + "\r\n", respDeclined},
		{"four-digit status", "GET", "HTTP/1.1 2000 OK\r\n" + cl + "\r\n", respDeclined},
		{"CTL in the reason", "GET", "HTTP/1.1 200 O\x01K\r\n" + cl + "\r\n", respDeclined},
		{"empty status line", "GET", "\r\nHTTP/1.1 200 OK\r\n" + cl + "\r\n", respDeclined},
		{"space in a name", "GET", "HTTP/1.1 200 OK\r\nX A: b\r\n" + cl + "\r\n", respDeclined},
		{"space before the colon", "GET", "HTTP/1.1 200 OK\r\nX-A : b\r\n" + cl + "\r\n", respDeclined},
		{"non-token name", "GET", "HTTP/1.1 200 OK\r\nX@A: b\r\n" + cl + "\r\n", respDeclined},
		{"empty name", "GET", "HTTP/1.1 200 OK\r\n: b\r\n" + cl + "\r\n", respDeclined},
		{"no colon", "GET", "HTTP/1.1 200 OK\r\nX-A\r\n" + cl + "\r\n", respDeclined},
		{"CTL in a value", "GET", "HTTP/1.1 200 OK\r\nX-A: a\x01b\r\n" + cl + "\r\n", respDeclined},
		{"DEL in a value", "GET", "HTTP/1.1 200 OK\r\nX-A: a\x7fb\r\n" + cl + "\r\n", respDeclined},
		{"NUL in a value", "GET", "HTTP/1.1 200 OK\r\nX-A: a\x00b\r\n" + cl + "\r\n", respDeclined},
		{"no framing (close-delimited)", "GET", "HTTP/1.1 200 OK\r\nX-A: a\r\n\r\n", respDeclined},
		{"HTTP/1.0 without framing", "GET", "HTTP/1.0 200 OK\r\n\r\n", respDeclined},
		{"Pragma no-cache alone", "GET", "HTTP/1.1 200 OK\r\nPragma: no-cache\r\n" + cl + "\r\n", respDeclined},
		{"too many fields", "GET", many, respDeclined},
		{"nothing yet", "GET", "", respMore},
		{"part of the status line", "GET", "HTTP/1.1 20", respMore},
		{"status line only", "GET", "HTTP/1.1 200 OK\r\n", respMore},
		{"part of a field", "GET", "HTTP/1.1 200 OK\r\nContent-Le", respMore},
		{"last CR", "GET", "HTTP/1.1 200 OK\r\n" + cl + "\r", respMore},
		{"a bad partial line waits for its end", "GET", "HTTP/1.1 200 OK\r\nX A", respMore},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var rh respHead
			if v := parseRespHead([]byte(tt.head), tt.method, &rh); v != tt.want {
				t.Fatalf("verdict %d, want %d", v, tt.want)
			}
		})
	}
}

// scriptedReader returns its parts one Read at a time, then err; a Read
// after err fails the test unless again is set (a reset socket answers EOF
// the second time).
type scriptedReader struct {
	t     *testing.T
	parts []string
	err   error
	again error
	reads int
}

func (r *scriptedReader) Read(p []byte) (int, error) {
	r.reads++
	if len(r.parts) > 0 {
		n := copy(p, r.parts[0])
		if r.parts[0] = r.parts[0][n:]; r.parts[0] == "" {
			r.parts = r.parts[1:]
		}
		return n, nil
	}
	if r.err != nil {
		err := r.err
		r.err = nil
		return 0, err
	}
	if r.again == nil {
		r.t.Error("read past the script")
		return 0, io.EOF
	}
	return 0, r.again
}

// TestPeekResponse: peekResponse waits across reads for a head it takes,
// gives up at once (and consumes nothing) on one it does not or one larger
// than the buffer, and leaves a read error for http.ReadResponse to see.
func TestPeekResponse(t *testing.T) {
	const ok = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
	errReset := &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}
	const prefix = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX: "
	exact := prefix + strings.Repeat("a", 64-len(prefix)-4) + "\r\n\r\n"
	over := prefix + strings.Repeat("a", 64-len(prefix)-3) + "\r\n\r\n"
	tests := []struct {
		name  string
		parts []string
		err   error // after the parts
		size  int   // bufio buffer
		want  bool
	}{
		{"one read", []string{ok}, nil, 4096, true},
		{"head split across reads", []string{"HTTP/1.1 2", "00 OK\r", "\nContent-Type: text/plain\r\nCont", "ent-Length: 5\r\n", "\r", "\nhello"}, nil, 4096, true},
		{"a byte at a time", strings.Split(ok, ""), nil, 4096, true},
		{"head fills the buffer exactly", []string{exact}, nil, 64, true},
		{"head bigger than the buffer", []string{over[:20], over[20:]}, nil, 64, false},
		{"declined at the status line", []string{"HTTP/1.1 100 Continue\r\n", "\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"}, nil, 4096, false},
		{"declined at a field", []string{"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n", "\r\n0\r\n\r\n"}, nil, 4096, false},
		{"reset between lines", []string{"HTTP/1.1 200 OK\r\n"}, errReset, 4096, false},
		{"reset within a line", []string{"HTTP/1.1 200 OK\r\nContent-"}, errReset, 4096, false},
		{"reset before a byte", nil, errReset, 4096, false},
		{"EOF between lines", []string{"HTTP/1.1 200 OK\r\n"}, io.EOF, 4096, false},
		{"EOF before a byte", nil, io.EOF, 4096, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := &scriptedReader{t: t, parts: slices.Clone(tt.parts), err: tt.err}
			if tt.err != nil {
				src.again = io.EOF
			}
			input := strings.Join(tt.parts, "")
			lim := &limitedReader{r: src, n: maxResponseHead}
			br := bufio.NewReaderSize(lim, tt.size)
			var rh respHead
			got := peekResponse(br, "GET", &rh)
			if got != tt.want {
				t.Fatalf("peekResponse = %v, want %v", got, tt.want)
			}
			// Nothing consumed: what br holds is the start of the input.
			held, _ := br.Peek(br.Buffered())
			if !strings.HasPrefix(input, string(held)) || tt.want && len(held) < rh.size {
				t.Fatalf("reader holds %q of %q", held, input)
			}
			if tt.want {
				if rh.status != 200 || string(held[:rh.size]) != input[:strings.Index(input, "\r\n\r\n")+4] {
					t.Errorf("status %d, head %q", rh.status, held[:rh.size])
				}
				return
			}
			// http.ReadResponse then reads what it would have read from
			// the stream untouched, read errors included.
			src.again = io.EOF
			res, err := http.ReadResponse(br, &http.Request{Method: "GET"})
			ref := &scriptedReader{t: t, parts: slices.Clone(tt.parts), err: tt.err, again: io.EOF}
			want, wantErr := http.ReadResponse(bufio.NewReaderSize(&limitedReader{r: ref, n: maxResponseHead}, tt.size), &http.Request{Method: "GET"})
			if fmt.Sprint(err) != fmt.Sprint(wantErr) || err == nil && res.Status != want.Status {
				t.Fatalf("after peekResponse: %v %v; untouched: %v %v", res, err, want, wantErr)
			}
		})
	}
}

// TestPeekResponseDeclinesWithoutWaiting: a head ruled out by its first
// line is handed to http.ReadResponse with no further read, as that line
// would have made http.ReadResponse answer or fail at once.
func TestPeekResponseDeclinesWithoutWaiting(t *testing.T) {
	for _, first := range []string{"HTTP/1.1 100 Continue\r\n", "garbage\r\n", "HTTP/1.1 200 OK\n"} {
		src := &scriptedReader{t: t, parts: []string{first}}
		br := bufio.NewReader(src)
		var rh respHead
		if peekResponse(br, "GET", &rh) || src.reads != 1 {
			t.Errorf("%q: taken or read on (%d reads)", first, src.reads)
		}
	}
}

// respShape is an upstream response for TestFastResponseMatchesNetHTTP.
// Each carries the field "x-fast: 1" in lower case: the fast route sends
// it so, http.ReadResponse canonicalizes it.
type respShape struct {
	name, method, resp string
	fast               bool // parsed in place
	reuse              bool // the upstream connection is kept
	split              bool // the upstream writes the head in pieces
	closeAfter         bool // the upstream closes after the response
}

func respShapes() []respShape {
	const m = "x-fast: 1\r\n"
	big := strings.Repeat("b", 100<<10)
	return []respShape{
		{name: "typical", method: "GET", resp: "HTTP/1.1 200 OK\r\n" + m + "Content-Type: text/plain\r\nContent-Length: 2\r\n\r\nok", fast: true, reuse: true},
		{name: "case and whitespace", method: "GET", resp: "HTTP/1.1 200 OK\r\n" + m + "content-type:text/plain \r\nx-a: \tv  w\t\r\nX-Empty:\r\nX-U: caf\xc3\xa9\r\ncontent-length: 3\r\n\r\nabc", fast: true, reuse: true},
		{name: "repeated fields", method: "GET", resp: "HTTP/1.1 200 OK\r\n" + m + "Set-Cookie: a=1\r\nVary: x\r\nset-cookie: b=2\r\nContent-Length: 0\r\n\r\n", fast: true, reuse: true},
		{name: "upstream Server", method: "GET", resp: "HTTP/1.1 200 OK\r\n" + m + "Server: nginx\r\nContent-Length: 0\r\n\r\n", fast: true, reuse: true},
		{name: "two Server fields", method: "GET", resp: "HTTP/1.1 200 OK\r\n" + m + "Server: a\r\nserver: b\r\nContent-Length: 0\r\n\r\n", fast: true, reuse: true},
		{name: "hop-by-hop fields", method: "GET", resp: "HTTP/1.1 200 OK\r\n" + m + "Keep-Alive: timeout=5\r\nProxy-Authenticate: x\r\nUpgrade: h2c\r\nTrailer: X-T\r\nX-Detour-Upstream-Service-Time: 999\r\nContent-Length: 1\r\n\r\nk", fast: true, reuse: true},
		{name: "Connection names fields", method: "GET", resp: "HTTP/1.1 200 OK\r\n" + m + "X-Secret: s\r\nConnection: keep-alive, x-secret\r\nContent-Length: 1\r\n\r\nk", fast: true, reuse: true},
		{name: "Connection: close", method: "GET", resp: "HTTP/1.1 200 OK\r\n" + m + "Connection: close, X-Secret\r\nX-Secret: s\r\nContent-Length: 1\r\n\r\nk", fast: true},
		{name: "HTTP/1.0", method: "GET", resp: "HTTP/1.0 200 OK\r\n" + m + "Content-Length: 2\r\n\r\nok", fast: true},
		{name: "HTTP/1.0 keep-alive", method: "GET", resp: "HTTP/1.0 200 OK\r\n" + m + "Connection: keep-alive, X-Secret\r\nX-Secret: s\r\nContent-Length: 2\r\n\r\nok", fast: true, reuse: true},
		{name: "no reason", method: "GET", resp: "HTTP/1.1 404\r\n" + m + "Content-Length: 9\r\n\r\nnot found", fast: true, reuse: true},
		{name: "204", method: "GET", resp: "HTTP/1.1 204 No Content\r\n" + m + "X-A: 1\r\n\r\n", fast: true, reuse: true},
		{name: "304", method: "GET", resp: "HTTP/1.1 304 Not Modified\r\n" + m + "ETag: \"x\"\r\n\r\n", fast: true, reuse: true},
		{name: "HEAD", method: "HEAD", resp: "HTTP/1.1 200 OK\r\n" + m + "Content-Type: text/plain\r\nContent-Length: 100\r\n\r\n", fast: true, reuse: true},
		{name: "HEAD without a length", method: "HEAD", resp: "HTTP/1.1 200 OK\r\n" + m + "Content-Type: text/plain\r\n\r\n", fast: true, reuse: true},
		{name: "Pragma with Cache-Control", method: "GET", resp: "HTTP/1.1 200 OK\r\n" + m + "Pragma: no-cache\r\nCache-Control: no-store\r\nContent-Length: 0\r\n\r\n", fast: true, reuse: true},
		{name: "100 KB body", method: "GET", resp: "HTTP/1.1 200 OK\r\n" + m + "Content-Length: 102400\r\n\r\n" + big, fast: true, reuse: true},
		{name: "head in pieces", method: "GET", resp: "HTTP/1.1 200 OK\r\n" + m + "Content-Type: text/plain\r\nContent-Length: 2\r\n\r\nok", fast: true, reuse: true, split: true},
		{name: "early hints, then a final head", method: "GET", resp: "HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\n" + m + "Content-Length: 2\r\n\r\nok", fast: true, reuse: true},
		// Fallbacks.
		{name: "chunked", method: "GET", resp: "HTTP/1.1 200 OK\r\n" + m + "Transfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n3\r\nabc\r\n0\r\nX-T: v\r\n\r\n", reuse: true},
		{name: "close-delimited", method: "GET", resp: "HTTP/1.1 200 OK\r\n" + m + "X-B: 2\r\n\r\nbody until close", closeAfter: true},
		{name: "repeated Content-Length", method: "GET", resp: "HTTP/1.1 200 OK\r\n" + m + "Content-Length: 2\r\nContent-Length: 2\r\n\r\nok", reuse: true},
		{name: "obs-fold", method: "GET", resp: "HTTP/1.1 200 OK\r\n" + m + "X-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok", reuse: true},
		{name: "bare LF", method: "GET", resp: "HTTP/1.1 200 OK\r\n" + m + "X-A: a\nContent-Length: 2\r\n\r\nok", reuse: true},
		{name: "Pragma alone", method: "GET", resp: "HTTP/1.1 200 OK\r\n" + m + "Pragma: no-cache\r\nContent-Length: 0\r\n\r\n", reuse: true},
		{name: "head over 4 KiB", method: "GET", resp: "HTTP/1.1 200 OK\r\n" + m + "X-Big: " + strings.Repeat("v", 5000) + "\r\nContent-Length: 2\r\n\r\nok", reuse: true},
	}
}

// respExchange is what a client saw of two requests on one connection.
type respExchange struct {
	raw    string // the bytes of the first request's response(s)
	res    *http.Response
	body   string
	reused bool // the second request went out on the first one's upstream connection
}

// responseThrough sends shape's request twice, on one client connection,
// to a proxy whose upstream answers shape.resp to each.
func responseThrough(t *testing.T, o Options, shape respShape) respExchange {
	t.Helper()
	dst := rawUpstream(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			io.Copy(io.Discard, req.Body)
			if shape.split {
				for i := 0; i < len(shape.resp); i += 7 {
					c.Write([]byte(shape.resp[i:min(i+7, len(shape.resp))]))
					time.Sleep(time.Millisecond)
				}
			} else {
				io.WriteString(c, shape.resp)
			}
			if shape.closeAfter {
				return
			}
		}
	})
	f := newFront(t, o, dst)
	c, _ := f.raw(t)
	var got respExchange
	var raw bytes.Buffer
	br := bufio.NewReader(io.TeeReader(c, &raw))
	for i := range 2 {
		fmt.Fprintf(c, "%s /%d HTTP/1.1\r\nHost: a\r\n\r\n", shape.method, i)
		var res *http.Response
		for {
			r, err := http.ReadResponse(br, &http.Request{Method: shape.method})
			if err != nil {
				t.Fatalf("client: %v", err)
			}
			if r.StatusCode >= 200 {
				res = r
				break
			}
		}
		b, err := io.ReadAll(res.Body)
		if err != nil {
			t.Fatalf("client body: %v", err)
		}
		info := f.info(t) // also: the upstream connection is back in the pool
		if i == 0 {
			got.raw, got.res, got.body = raw.String(), res, string(b)
		} else {
			got.reused = info.Reused
		}
	}
	return got
}

// TestFastResponseMatchesNetHTTP sends response shapes, parsed in place
// and not, through the fast path and through net/http + ReverseProxy, in
// each Server mode, and compares what the client got: status, body, and
// fields as multisets (order and case may differ). It also checks which
// way the fast path read the head and whether it kept the upstream
// connection.
func TestFastResponseMatchesNetHTTP(t *testing.T) {
	for _, shape := range respShapes() {
		for _, mode := range []string{ServerOverwrite, ServerAppendIfAbsent, ServerPassThrough} {
			t.Run(shape.name+"/"+mode, func(t *testing.T) {
				t.Parallel()
				fast := responseThrough(t, Options{ServerHeaderMode: mode}, shape)
				slow := responseThrough(t, Options{ServerHeaderMode: mode, DisableFastPath: true}, shape)
				marker := "\r\nX-Fast: 1\r\n"
				if shape.fast {
					marker = "\r\nx-fast: 1\r\n"
				}
				if head, _, _ := strings.Cut(fast.raw, "\r\n\r\nHTTP/1.1 2"); !strings.Contains(fast.raw, marker) {
					t.Errorf("fast path read the head the other way (want %q): %q", marker, head)
				}
				if fast.reused != shape.reuse {
					t.Errorf("upstream connection reused %v, want %v", fast.reused, shape.reuse)
				}
				sameClientView(t, fast.res, slow.res, shape.resp)
				if fast.body != slow.body {
					t.Errorf("body: fast %d bytes, net/http %d", len(fast.body), len(slow.body))
				}
			})
		}
	}
}

// nginxHead is a typical response head, for the benchmark and the
// allocation check.
const nginxHead = "HTTP/1.1 200 OK\r\nServer: nginx/1.27.0\r\nDate: Sun, 22 Nov 2026 04:55:00 GMT\r\n" +
	"Content-Type: text/html; charset=utf-8\r\nContent-Length: 612\r\nLast-Modified: Tue, 17 Nov 2026 10:00:00 GMT\r\n" +
	"Connection: keep-alive\r\nETag: \"6537cac7-264\"\r\nCache-Control: max-age=60\r\nAccept-Ranges: bytes\r\n\r\n"

// TestFastResponseHeadAllocs: parsing a head in place and building the
// client's head allocate nothing.
func TestFastResponseHeadAllocs(t *testing.T) {
	p, err := New(Options{Dialer: newFrontDialer()})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	fc, h, head, out := &fastConn{p: p}, &fastHead{method: "GET"}, []byte(nginxHead), new(fastBuf)
	var rh respHead
	if n := testing.AllocsPerRun(100, func() {
		if parseRespHead(head, h.method, &rh) != respOK {
			t.Fatal("declined")
		}
		fc.fastResponseHead(out[:0], head, &rh, h, time.Millisecond)
	}); n != 0 {
		t.Errorf("%v allocations", n)
	}
}

// BenchmarkFastResponseHead measures reading a typical response head and
// building the client's head from it: in place, and (for scale) with
// http.ReadResponse as before.
func BenchmarkFastResponseHead(b *testing.B) {
	p, err := New(Options{Dialer: newFrontDialer()})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	fc, h, head, out := &fastConn{p: p}, &fastHead{method: "GET"}, []byte(nginxHead), new(fastBuf)
	b.Run("in-place", func(b *testing.B) {
		var rh respHead
		b.SetBytes(int64(len(head)))
		b.ReportAllocs()
		for b.Loop() {
			if parseRespHead(head, h.method, &rh) != respOK {
				b.Fatal("declined")
			}
			fc.fastResponseHead(out[:0], head, &rh, h, time.Millisecond)
		}
	})
	b.Run("net/http", func(b *testing.B) {
		r := bytes.NewReader(head)
		br := bufio.NewReaderSize(r, 4<<10)
		req := &http.Request{Method: h.method}
		b.SetBytes(int64(len(head)))
		b.ReportAllocs()
		for b.Loop() {
			r.Reset(head)
			br.Reset(r)
			res, err := http.ReadResponse(br, req)
			if err != nil {
				b.Fatal(err)
			}
			fc.responseHead(out[:0], res, h, time.Millisecond)
		}
	})
}
