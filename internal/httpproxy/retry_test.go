package httpproxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/detour-proxy/detour/internal/rawsys"
	"golang.org/x/sys/unix"
)

// closingUpstream answers HTTP/1.1 requests with "ok". On its first
// connection it answers the first requests, then reads request number
// at (from 0; 0 means 1, the second) whole and closes without answering
// (with a reset if reset): a keep-alive connection the server dropped
// just as the proxy reused it. Every other connection answers
// everything. seen lists "conn#:METHOD path" (and " =body" when there is
// one) in arrival order. head, when not nil, is closed when that
// request's head has come.
type closingUpstream struct {
	at      int
	reset   bool
	head    chan struct{}
	partial string // written before the close
	conns   atomic.Int32
	mu      sync.Mutex
	seen    []string
	peers   []netip.AddrPort // the proxy's end of each connection, in order
}

func (u *closingUpstream) serve(c net.Conn) {
	u.mu.Lock()
	n := u.conns.Add(1)
	u.peers = append(u.peers, c.RemoteAddr().(*net.TCPAddr).AddrPort())
	u.mu.Unlock()
	br := bufio.NewReader(c)
	for i := 0; ; i++ {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		if n == 1 && i == max(u.at, 1) && u.head != nil {
			close(u.head)
		}
		body, _ := io.ReadAll(req.Body)
		u.mu.Lock()
		if len(body) > 0 {
			u.seen = append(u.seen, fmt.Sprintf("%d:%s %s =%s", n, req.Method, req.URL.Path, body))
		} else {
			u.seen = append(u.seen, fmt.Sprintf("%d:%s %s", n, req.Method, req.URL.Path))
		}
		u.mu.Unlock()
		if n == 1 && i == max(u.at, 1) {
			io.WriteString(c, u.partial)
			if u.reset {
				c.(*net.TCPConn).SetLinger(0)
			}
			return // close instead of answering
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	}
}

// peer is the proxy's address on connection n (from 1), or the zero
// address when there was none.
func (u *closingUpstream) peer(n int) netip.AddrPort {
	u.mu.Lock()
	defer u.mu.Unlock()
	if n < 1 || n > len(u.peers) {
		return netip.AddrPort{}
	}
	return u.peers[n-1]
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

// TestRetryCounted: both paths count a replay on the host (Envoy's
// upstream_rq_retry), and only a replay.
func TestRetryCounted(t *testing.T) {
	onBothPaths(t, func(t *testing.T, fast bool) {
		u := &closingUpstream{head: make(chan struct{})}
		f := newFront(t, Options{DisableFastPath: !fast}, rawUpstream(t, u.serve))
		checkRetry(t, f, u, sentRetryCases[0], 1, u.head)
	})
}

// TestNoRetryAfterResponseByte: once a byte of the response came, the
// upstream acted on the request: an idempotent one is not replayed either,
// on both paths; the client gets 503 UC.
func TestNoRetryAfterResponseByte(t *testing.T) {
	onBothPaths(t, func(t *testing.T, fast bool) {
		for _, method := range []string{"GET", "PUT", "DELETE"} {
			t.Run(method, func(t *testing.T) {
				u := &closingUpstream{partial: "HTTP/1.1 2", head: make(chan struct{})}
				f := newFront(t, Options{DisableFastPath: !fast}, rawUpstream(t, u.serve))
				checkRetry(t, f, u, retryCase{name: method, head: method + " /r HTTP/1.1\r\nHost: a"}, 1, u.head)
			})
		}
	})
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
	if got, want := u.log(), "1:GET /1, 1:POST /2 =hello"; got != want {
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

// retryCase is a request sent on a pooled connection the upstream closes
// after it read the request whole, and whether the proxy may replay it.
type retryCase struct {
	name     string
	head     string // request line and fields, without the final CRLF
	body     string
	streamed bool // the body comes after the proxy read the head
	retried  bool
}

// sentRetryCases: what goes again after it was sent and the upstream
// closed without a byte back — an idempotent method (RFC 9110, 9.2.2) or
// a request with an idempotency key, whose body detour holds whole.
var sentRetryCases = []retryCase{
	{"GET", "GET /r HTTP/1.1\r\nHost: a", "", false, true},
	{"HEAD", "HEAD /r HTTP/1.1\r\nHost: a", "", false, true},
	{"OPTIONS", "OPTIONS /r HTTP/1.1\r\nHost: a", "", false, true},
	{"DELETE", "DELETE /r HTTP/1.1\r\nHost: a", "", false, true},
	{"PUT without a body", "PUT /r HTTP/1.1\r\nHost: a", "", false, true},
	{"PUT with a body", "PUT /r HTTP/1.1\r\nHost: a\r\nContent-Length: 5", "hello", false, true},
	{"POST with Idempotency-Key", "POST /r HTTP/1.1\r\nHost: a\r\nIdempotency-Key: k1\r\nContent-Length: 5", "hello", false, true},
	{"POST with X-Idempotency-Key", "POST /r HTTP/1.1\r\nHost: a\r\nx-idempotency-key: k2", "", false, true},
	{"POST", "POST /r HTTP/1.1\r\nHost: a\r\nContent-Length: 5", "hello", false, false},
	{"PATCH without a body", "PATCH /r HTTP/1.1\r\nHost: a", "", false, false},
	{"PUT with a streamed body", "PUT /r HTTP/1.1\r\nHost: a\r\nContent-Length: 5", "hello", true, false},
}

// TestRetryAfterSentOnClosedPooledConn: a request that went out whole on
// a reused connection which the upstream then closed (FIN or reset)
// without a byte back is replayed once on a new connection when it is
// idempotent and its body is whole in detour, else answered 503 UC — on
// the connection's goroutine (second request) and on a loop (fifth), as
// Go's Transport does for GET/HEAD/OPTIONS/TRACE and idempotency keys.
func TestRetryAfterSentOnClosedPooledConn(t *testing.T) {
	for _, at := range []int{1, 4} {
		for _, reset := range []bool{false, true} {
			for _, tc := range sentRetryCases {
				name := fmt.Sprintf("request %d/reset %v/%s", at+1, reset, tc.name)
				t.Run(name, func(t *testing.T) {
					u := &closingUpstream{at: at, reset: reset, head: make(chan struct{})}
					f := newFront(t, Options{}, rawUpstream(t, u.serve))
					checkRetry(t, f, u, tc, at, u.head)
				})
			}
		}
	}
}

// checkRetry sends at GETs, then tc, whose fate it checks: how it was
// answered, what the upstream saw, the host's retry count. ready, when
// not nil, is waited for before a streamed body's end is sent.
func checkRetry(t *testing.T, f *front, u *closingUpstream, tc retryCase, at int, ready <-chan struct{}) {
	t.Helper()
	checkRetryOf(t, f, u, tc, at, ready, true)
}

// checkRetryOf is checkRetry; firstSaw says whether the upstream's first
// connection got tc before it went.
func checkRetryOf(t *testing.T, f *front, u *closingUpstream, tc retryCase, at int, ready <-chan struct{}, firstSaw bool) {
	t.Helper()
	c, br := f.raw(t)
	var want []string
	for i := range at {
		fmt.Fprintf(c, "GET /%d HTTP/1.1\r\nHost: a\r\n\r\n", i)
		if res, body := readResponse(t, br, "GET"); res.StatusCode != 200 || body != "ok" {
			t.Fatalf("GET /%d: %d %q", i, res.StatusCode, body)
		}
		f.info(t)
		want = append(want, fmt.Sprintf("1:GET /%d", i))
	}
	if at > loopAfter {
		eventually(t, "a loop serving the connection", func() bool { return f.p.Hosts()[0].OnLoop > 0 })
	}
	method, _, _ := strings.Cut(tc.head, " ")
	clen := ""
	if tc.body != "" && !strings.Contains(tc.head, "Content-Length") {
		clen = fmt.Sprintf("\r\nContent-Length: %d", len(tc.body))
	}
	if tc.streamed {
		fmt.Fprintf(c, "%s%s\r\n\r\n%s", tc.head, clen, tc.body[:2])
		if ready != nil {
			<-ready
		}
		io.WriteString(c, tc.body[2:])
	} else {
		fmt.Fprintf(c, "%s%s\r\n\r\n%s", tc.head, clen, tc.body)
	}
	res, body := readResponse(t, br, method)
	i := f.info(t)
	seen := fmt.Sprintf("%s /r", method)
	if tc.body != "" {
		seen += " =" + tc.body
	}
	if firstSaw {
		want = append(want, "1:"+seen)
	}
	if tc.retried {
		want = append(want, "2:"+seen)
		if wantBody := map[bool]string{true: "", false: "ok"}[method == "HEAD"]; res.StatusCode != 200 || body != wantBody {
			t.Errorf("%d %q; want the second connection's 200", res.StatusCode, body)
		}
		if i.Flags != 0 || i.Status != 200 {
			t.Errorf("info %+v", i)
		}
	} else {
		if res.StatusCode != 503 || (method != "HEAD" && !strings.HasPrefix(body, msgReset)) {
			t.Errorf("%d %q; want 503 %s", res.StatusCode, body, msgReset)
		}
		if i.Flags != UpstreamClosed || i.Status != 503 {
			t.Errorf("info %+v", i)
		}
	}
	if got := u.log(); got != strings.Join(want, ", ") {
		t.Errorf("upstream saw %s, want %s", got, strings.Join(want, ", "))
	}
	checkLastAttempt(t, i, u, tc.retried)
	wantRetries := uint64(0)
	if tc.retried {
		wantRetries = 1
	}
	if h := f.p.Hosts(); len(h) != 1 || h[0].Retries != wantRetries {
		t.Errorf("hosts %+v; want %d retries", h, wantRetries)
	}
}

// checkLastAttempt: the record's upstream fields are the last attempt's,
// as Envoy's %UPSTREAM_LOCAL_ADDRESS% and the reuse flag describe the
// connection that served (or last tried) the request: the second
// connection, new, when the request was replayed; else the first, pooled.
func checkLastAttempt(t *testing.T, i RequestInfo, u *closingUpstream, retried bool) {
	t.Helper()
	conn := 1
	if retried {
		conn = 2
	}
	if want := u.peer(conn); !want.IsValid() || i.UpstreamLocal != want || i.Reused == retried {
		t.Errorf("record's upstream %v (reused %v); want connection %d's %v (reused %v)",
			i.UpstreamLocal, i.Reused, conn, want, !retried)
	}
}

// TestRetryWhenNothingSentOnPooledConn: a request whose first write on a
// reused connection fails before any byte went out (the upstream reset
// the connection after the pool's check) is sent on a new connection,
// whatever its method and whether or not its body came with its head, as
// Go's Transport does for its nothingWrittenError: the upstream never
// saw it.
func TestRetryWhenNothingSentOnPooledConn(t *testing.T) {
	cases := []retryCase{
		{"POST", "POST /r HTTP/1.1\r\nHost: a\r\nContent-Length: 5", "hello", false, true},
		{"PATCH without a body", "PATCH /r HTTP/1.1\r\nHost: a", "", false, true},
		{"POST with a streamed body", "POST /r HTTP/1.1\r\nHost: a\r\nContent-Length: 5", "hello", true, true},
		{"GET", "GET /r HTTP/1.1\r\nHost: a", "", false, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			u := &closingUpstream{at: 1 << 30}
			first := make(chan net.Conn, 1)
			dst := rawUpstream(t, func(c net.Conn) {
				select {
				case first <- c:
				default:
				}
				u.serve(c)
			})
			var sends atomic.Int32
			reset := make(chan struct{})
			f := newHookedFront(t, Options{}, dst, testHooks{
				beforeSendOn: func(_ *fastConn, up *upLink) {
					if sends.Add(1) != 2 {
						return
					}
					c := <-first
					c.(*net.TCPConn).SetLinger(0)
					c.Close()
					awaitReset(t, up)
					close(reset)
				},
			})
			checkRetryOf(t, f, u, tc, 1, reset, false)
			select {
			case <-reset:
			default:
				t.Fatal("the second request did not go out on the pooled connection")
			}
		})
	}
}

// awaitReset waits until the proxy's end of up has the upstream's reset.
func awaitReset(t *testing.T, up *upLink) {
	var b [1]byte
	for range 2000 {
		if _, err := rawsys.Peek(up.fd, b[:]); err != unix.EAGAIN {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Error("no reset came to the pooled connection")
}

// TestRetryAfterSentOnClosedPooledConnNetHTTP: the net/http path replays
// what the fast path does, but a request with a body, which it streams
// from the client and cannot send again.
func TestRetryAfterSentOnClosedPooledConnNetHTTP(t *testing.T) {
	for _, reset := range []bool{false, true} {
		for _, tc := range sentRetryCases {
			tc.retried = tc.retried && tc.body == ""
			t.Run(fmt.Sprintf("reset %v/%s", reset, tc.name), func(t *testing.T) {
				u := &closingUpstream{reset: reset, head: make(chan struct{})}
				f := newFront(t, Options{DisableFastPath: true}, rawUpstream(t, u.serve))
				checkRetry(t, f, u, tc, 1, u.head)
			})
		}
	}
}

// TestRetryOnNewConnection: the replay goes out on a new connection, not
// on another pooled one, which the upstream may have closed the same way
// unseen (a restart, a common idle timeout): here it resets both pooled
// connections as each is about to carry the request.
func TestRetryOnNewConnection(t *testing.T) {
	u := &closingUpstream{at: 1 << 30}
	var (
		mu    sync.Mutex
		conns = map[string]net.Conn{} // by the proxy's address
		both  = make(chan struct{})
		n     atomic.Int32
	)
	dst := rawUpstream(t, func(c net.Conn) {
		mu.Lock()
		conns[c.RemoteAddr().String()] = c
		mu.Unlock()
		switch n.Add(1) {
		case 1:
			<-both // answer only once the second request has a connection too
		case 2:
			close(both)
		}
		u.serve(c)
	})
	var sends atomic.Int32
	f := newHookedFront(t, Options{}, dst, testHooks{
		beforeSendOn: func(_ *fastConn, up *upLink) {
			if sends.Add(1) < 3 || !up.reused {
				return
			}
			mu.Lock()
			c := conns[up.conn.LocalAddr().String()]
			mu.Unlock()
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
			awaitReset(t, up)
		},
	})
	// Two requests at once leave two connections in the pool.
	c1, br1 := f.raw(t)
	c2, br2 := f.raw(t)
	io.WriteString(c1, "GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
	io.WriteString(c2, "GET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
	for _, br := range []*bufio.Reader{br1, br2} {
		if res, body := readResponse(t, br, "GET"); res.StatusCode != 200 || body != "ok" {
			t.Fatalf("GET: %d %q", res.StatusCode, body)
		}
		f.info(t)
	}
	eventually(t, "two pooled connections", func() bool {
		h := f.p.Hosts()
		return len(h) == 1 && h[0].Idle == 2
	})
	io.WriteString(c1, "POST /r HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
	res, body := readResponse(t, br1, "POST")
	if res.StatusCode != 200 || body != "ok" {
		t.Errorf("POST: %d %q; want the new connection's 200", res.StatusCode, body)
	}
	if i := f.info(t); i.Reused || i.Status != 200 {
		t.Errorf("info %+v; want a new connection's 200", i)
	}
	if h := f.p.Hosts(); len(h) != 1 || h[0].Connects != 3 || h[0].Retries != 1 {
		t.Errorf("hosts %+v; want 3 connects, 1 retry", h)
	}
}

// TestRetryRefusedRecordsLastAttempt: a GET replayed after its pooled
// connection closed unanswered, whose new connection is then refused
// (the upstream went down), is answered 503 UF; its record describes that
// last attempt, as Envoy's %UPSTREAM_LOCAL_ADDRESS% does: no upstream
// connection (no local address), none reused, no upstream time — not
// the first attempt's pooled connection. On the fast path (on the
// goroutine and on a loop) and on the net/http path.
func TestRetryRefusedRecordsLastAttempt(t *testing.T) {
	cases := []struct {
		name string
		o    Options
		at   int // GETs before the replayed one
	}{
		{"fast path", Options{}, 1},
		{"loop", Options{}, loopAfter + 2},
		{"net/http", Options{DisableFastPath: true}, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go serveThenGo(ln, tc.at)
			f := newFront(t, tc.o, ln.Addr().(*net.TCPAddr).AddrPort())
			c, br := f.raw(t)
			for i := range tc.at {
				fmt.Fprintf(c, "GET /%d HTTP/1.1\r\nHost: a\r\n\r\n", i)
				if res, body := readResponse(t, br, "GET"); res.StatusCode != 200 || body != "ok" {
					t.Fatalf("GET /%d: %d %q", i, res.StatusCode, body)
				}
				if i := f.info(t); !i.UpstreamLocal.IsValid() {
					t.Fatalf("record of a served GET without an upstream address: %+v", i)
				}
			}
			if tc.at > loopAfter {
				eventually(t, "a loop serving the connection", func() bool { return f.p.Hosts()[0].OnLoop > 0 })
			}
			io.WriteString(c, "GET /r HTTP/1.1\r\nHost: a\r\n\r\n")
			if res, _ := readResponse(t, br, "GET"); res.StatusCode != 503 {
				t.Errorf("status %d; want 503", res.StatusCode)
			}
			i := f.info(t)
			if i.Flags != UpstreamConnectFailure || i.Status != 503 {
				t.Errorf("flags %v, status %d; want UF 503", i.Flags, i.Status)
			}
			if i.UpstreamLocal.IsValid() || i.Reused || i.UpstreamTime != 0 {
				t.Errorf("record's upstream %v, reused %v, upstream time %v; want the refused attempt's: none",
					i.UpstreamLocal, i.Reused, i.UpstreamTime)
			}
			if h := f.p.Hosts(); len(h) != 1 || h[0].Retries != 1 {
				t.Errorf("hosts %+v; want 1 retry", h)
			}
		})
	}
}

// serveThenGo accepts one connection on ln, answers its first n requests
// "ok", reads the next, then closes ln and the connection without an
// answer: the upstream went down as the proxy reused its connection, and
// refuses the replay's connect.
func serveThenGo(ln net.Listener, n int) {
	c, err := ln.Accept()
	if err != nil {
		return
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(c)
	for range n {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	}
	http.ReadRequest(br)
	ln.Close()
}
