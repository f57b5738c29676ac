package httpproxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/detour-proxy/detour/internal/upstream"
)

// front is a proxy behind a loopback listener that plays the interception:
// every accepted connection is served as if it had been going to dst.
type front struct {
	p     *Proxy
	addr  string
	infos chan RequestInfo
}

func newFront(t testing.TB, o Options, dst netip.AddrPort) *front {
	t.Helper()
	return newHookedFront(t, o, dst, testHooks{})
}

// newHookedFront is newFront with test hooks, set before any connection
// is served.
func newHookedFront(t testing.TB, o Options, dst netip.AddrPort, hooks testHooks) *front {
	t.Helper()
	f := &front{infos: make(chan RequestInfo, 1024)}
	if o.Dialer == nil {
		o.Dialer = upstream.New(upstream.Options{ConnectTimeout: 2 * time.Second})
	}
	if o.Logger == nil {
		o.Logger = panicCatcher(t)
	}
	o.OnRequest = func(i *RequestInfo) {
		select {
		case f.infos <- *i:
		default:
		}
	}
	p, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	if h, ok := o.Logger.Handler().(*panicHandler); ok {
		// net/http reports the panics it recovered on its error log,
		// which the proxy writes at debug level: below what the catcher
		// enables (debug logging stays off, as in production). Set
		// before any connection is served.
		el := slog.NewLogLogger(h, slog.LevelInfo)
		p.srv.ErrorLog, p.h2c.ErrorLog, p.rp.ErrorLog = el, el, el
	}
	p.hooks = hooks
	f.p = p
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	f.addr = ln.Addr().String()
	go func() {
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			go func() {
				if !p.ServeConn(c, c.RemoteAddr().(*net.TCPAddr).AddrPort(), dst, upstream.PreDial{}) {
					c.Close() // closed: not taken, still ours
				}
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); p.Close() })
	return f
}

// info waits for the next finished request's RequestInfo.
func (f *front) info(t testing.TB) RequestInfo {
	t.Helper()
	select {
	case i := <-f.infos:
		return i
	case <-time.After(10 * time.Second):
		t.Fatal("no RequestInfo")
	}
	return RequestInfo{}
}

// client is an HTTP/1.1 client that sends everything to the front,
// whatever the URL's host says (as an intercepted client would).
func (f *front) client() *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", f.addr)
		},
		DisableCompression: true,
	}
	return &http.Client{Transport: tr}
}

// raw opens a plain TCP connection to the front.
func (f *front) raw(t testing.TB) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}

// upstreamServer is an httptest server that counts the connections it
// accepted and closed.
type upstreamServer struct {
	*httptest.Server
	accepted, closed atomic.Int32
}

func newUpstream(t testing.TB, h http.Handler, configure ...func(*http.Server)) *upstreamServer {
	t.Helper()
	u := &upstreamServer{Server: httptest.NewUnstartedServer(h)}
	for _, f := range configure {
		f(u.Config)
	}
	u.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			u.accepted.Add(1)
		case http.StateClosed, http.StateHijacked:
			u.closed.Add(1)
		}
	}
	u.Start()
	t.Cleanup(u.Close)
	return u
}

func (u *upstreamServer) addrPort() netip.AddrPort {
	return u.Listener.Addr().(*net.TCPAddr).AddrPort()
}

// rawUpstream accepts connections and hands each to fn.
func rawUpstream(t testing.TB, fn func(net.Conn)) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(20 * time.Second))
				fn(c)
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// upload sends a request (method and target, "PUT /up") with a body of
// size zero bytes (a multiple of 64 KiB) on c, until c fails: a client
// that goes on sending while the answer may already be on its way.
func upload(c net.Conn, request string, size int) {
	fmt.Fprintf(c, "%s HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n", request, size)
	chunk := make([]byte, 64<<10)
	for range size / len(chunk) {
		if _, err := c.Write(chunk); err != nil {
			return
		}
	}
}

// onBothPaths runs f as two subtests: on the fast path, and on the
// net/http path (Options.DisableFastPath).
func onBothPaths(t *testing.T, f func(t *testing.T, fast bool)) {
	t.Helper()
	for _, fast := range []bool{true, false} {
		name := "fast path"
		if !fast {
			name = "net/http"
		}
		t.Run(name, func(t *testing.T) { f(t, fast) })
	}
}

func get(t testing.TB, c *http.Client, url string, hdr ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res, string(b)
}

// readResponse reads one response from a raw connection, body included.
func readResponse(t testing.TB, br *bufio.Reader, method string) (*http.Response, string) {
	t.Helper()
	res, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res, string(b)
}

// expectEOF asserts that the server closed the raw connection.
func expectEOF(t testing.TB, br *bufio.Reader) {
	t.Helper()
	if b, err := br.ReadByte(); err == nil {
		t.Fatalf("connection still open: read %q", b)
	}
}

func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

func newFrontDialer() *upstream.Dialer { return upstream.New(upstream.Options{}) }

// panicCatcher is a logger that fails the test if net/http logged a
// recovered panic ("http: panic serving ...") of a handler or a read.
func panicCatcher(t testing.TB) *slog.Logger {
	h := &panicHandler{}
	t.Cleanup(func() {
		if msg := h.msg.Load(); msg != nil {
			t.Errorf("logged: %s", *msg)
		}
	})
	return slog.New(h)
}

type panicHandler struct{ msg atomic.Pointer[string] }

func (h *panicHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }
func (h *panicHandler) WithAttrs([]slog.Attr) slog.Handler           { return h }
func (h *panicHandler) WithGroup(string) slog.Handler                { return h }

func (h *panicHandler) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, "panic") {
		m := r.Message
		h.msg.CompareAndSwap(nil, &m)
	}
	return nil
}
