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

// closingUpstream answers HTTP/1.1 requests with "ok". On its first
// connection it answers the first request, then reads the second one
// whole and closes without answering: a keep-alive connection the server
// dropped just as the proxy reused it. Every other connection answers
// everything. seen lists "conn#:METHOD path" in arrival order.
type closingUpstream struct {
	conns atomic.Int32
	mu    sync.Mutex
	seen  []string
}

func (u *closingUpstream) serve(c net.Conn) {
	n := u.conns.Add(1)
	br := bufio.NewReader(c)
	for i := 0; ; i++ {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		io.Copy(io.Discard, req.Body)
		u.mu.Lock()
		u.seen = append(u.seen, fmt.Sprintf("%d:%s %s", n, req.Method, req.URL.Path))
		u.mu.Unlock()
		if n == 1 && i == 1 {
			return // close instead of answering
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	}
}

func (u *closingUpstream) log() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return strings.Join(u.seen, ", ")
}

// TestIdempotentRequestRetriedOnClosedPooledConn: net/http's Transport
// replays a GET once on a new connection when a reused connection dies
// before any response byte; the client sees a plain 200, and the host's
// counters stay right.
func TestIdempotentRequestRetriedOnClosedPooledConn(t *testing.T) {
	u := &closingUpstream{}
	f := newFront(t, Options{}, rawUpstream(t, u.serve))
	c, br := f.raw(t)
	for _, path := range []string{"/1", "/2", "/3"} {
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: a\r\n\r\n", path)
		if res, body := readResponse(t, br, "GET"); res.StatusCode != 200 || body != "ok" {
			t.Fatalf("%s: %d %q", path, res.StatusCode, body)
		}
		if i := f.info(t); i.Flags != 0 || i.Status != 200 {
			t.Errorf("%s: info %+v", path, i)
		}
	}
	if got, want := u.log(), "1:GET /1, 1:GET /2, 2:GET /2, 2:GET /3"; got != want {
		t.Errorf("upstream saw %s, want %s", got, want)
	}
	eventually(t, "one open idle connection", func() bool {
		h := f.p.Hosts()
		return len(h) == 1 && h[0].Active == 0 && h[0].Open == 1 && h[0].Idle == 1
	})
	if h := f.p.Hosts()[0]; h.Connects != 2 || h.Requests != 3 {
		t.Errorf("host %+v", h)
	}
}

// TestNonIdempotentRequestNotReplayed: the same failure under a POST with
// a body is answered 503 (UC) and the upstream sees the POST only once.
func TestNonIdempotentRequestNotReplayed(t *testing.T) {
	u := &closingUpstream{}
	f := newFront(t, Options{}, rawUpstream(t, u.serve))
	c, br := f.raw(t)
	fmt.Fprint(c, "GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
	if res, _ := readResponse(t, br, "GET"); res.StatusCode != 200 {
		t.Fatalf("first: %d", res.StatusCode)
	}
	f.info(t)
	fmt.Fprint(c, "POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
	res, body := readResponse(t, br, "POST")
	if res.StatusCode != 503 || !strings.HasPrefix(body, msgReset) {
		t.Errorf("POST: %d %q", res.StatusCode, body)
	}
	if i := f.info(t); i.Flags != UpstreamClosed || i.Status != 503 {
		t.Errorf("info %+v", i)
	}
	if got, want := u.log(), "1:GET /1, 1:POST /2"; got != want {
		t.Errorf("upstream saw %s, want %s", got, want)
	}
	// The request's record is reported before the host is released.
	eventually(t, "the host idle again", func() bool {
		h := f.p.Hosts()
		return len(h) == 1 && h[0].Active == 0
	})
	if h := f.p.Hosts(); h[0].Connects != 1 {
		t.Errorf("hosts %+v", h)
	}
}

// TestUpstreamClosingAfterEveryResponse: an upstream that hangs up right
// after each keep-alive response loses no GET: the proxy either notices the
// close before reusing the connection or retries.
func TestUpstreamClosingAfterEveryResponse(t *testing.T) {
	dst := rawUpstream(t, func(c net.Conn) {
		if _, err := http.ReadRequest(bufio.NewReader(c)); err == nil {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") // keep-alive, then close
		}
	})
	f := newFront(t, Options{}, dst)
	c, br := f.raw(t)
	for i := range 50 {
		fmt.Fprintf(c, "GET /%d HTTP/1.1\r\nHost: a\r\n\r\n", i)
		if res, body := readResponse(t, br, "GET"); res.StatusCode != 200 || body != "ok" {
			t.Fatalf("request %d: %d %q", i, res.StatusCode, body)
		}
	}
	eventually(t, "no connection left in use", func() bool {
		h := f.p.Hosts()
		return len(h) == 1 && h[0].Active == 0 && h[0].Idle == 0
	})
}
