package httpproxy

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/detour-proxy/detour/internal/logbuf"
	"github.com/detour-proxy/detour/internal/upstream"
)

// TestStreamIdleTimeoutClosesStalledClient: a client that stops reading
// its response is closed after StreamIdleTimeout, the upstream connection
// behind it is released, and the request is flagged SI.
func TestStreamIdleTimeoutClosesStalledClient(t *testing.T) {
	upGone := make(chan error, 1)
	up := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		buf := make([]byte, 32<<10)
		for { // an endless body
			if _, err := w.Write(buf); err != nil {
				upGone <- err
				return
			}
		}
	}))
	f := newFront(t, Options{StreamIdleTimeout: 300 * time.Millisecond}, up.addrPort())
	c, _ := f.raw(t)
	fmt.Fprint(c, "GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
	start := time.Now()
	// The client reads nothing.
	select {
	case err := <-upGone:
		t.Logf("upstream write failed after %v: %v", time.Since(start).Round(time.Millisecond), err)
	case <-time.After(10 * time.Second):
		t.Fatal("upstream still writing 10s after the client stopped reading")
	}
	i := f.info(t)
	if i.Flags != StreamIdleTimeout || i.Status != http.StatusOK || i.Flags.String() != "SI" {
		t.Errorf("info: flags %v status %d", i.Flags, i.Status)
	}
	eventually(t, "upstream connection closed", func() bool { return up.closed.Load() == 1 })
}

// TestStreamIdleTimeoutCutsStalledBody: a client that stops sending its
// request body is closed after StreamIdleTimeout on either path, without a
// response, its upstream request aborted (the upstream never gets a
// complete body) and the request flagged DC; one that sends its body
// slowly but steadily, for longer than the timeout in all, is not cut.
func TestStreamIdleTimeoutCutsStalledBody(t *testing.T) {
	bodies := make(chan string, 8) // what each upstream request ended with
	up := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			bodies <- "cut after " + fmt.Sprint(len(b))
			return
		}
		bodies <- "whole " + fmt.Sprint(len(b))
		io.WriteString(w, "ok")
	}))
	f := newFront(t, Options{StreamIdleTimeout: 300 * time.Millisecond}, up.addrPort())
	for _, tt := range []struct{ name, req string }{
		{"fast path, Content-Length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nhello"},
		{"net/http, chunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"},
		{"net/http, HTTP/1.0 Content-Length", "POST / HTTP/1.0\r\nHost: a\r\nContent-Length: 100\r\n\r\nhello"},
		{"net/http, after a fast-path request", "GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, br := f.raw(t)
			c.SetDeadline(time.Now().Add(10 * time.Second))
			io.WriteString(c, tt.req)
			if strings.HasPrefix(tt.req, "GET") {
				if res, _ := readResponse(t, br, "GET"); res.StatusCode != 200 {
					t.Fatalf("first request: %d", res.StatusCode)
				}
				f.info(t)
				<-bodies
			}
			// Envoy's answer: 408 "stream timeout", and the connection
			// closes (the body's rest may still come).
			res, body := readResponse(t, br, "POST")
			if res.StatusCode != http.StatusRequestTimeout || body != "stream timeout" || !res.Close {
				t.Fatalf("stalled body: %d %q (close %v), want 408 %q with Connection: close", res.StatusCode, body, res.Close, "stream timeout")
			}
			expectEOF(t, br)
			if i := f.info(t); i.Flags != StreamIdleTimeout || i.Status != http.StatusRequestTimeout {
				t.Errorf("info: flags %v status %d, want SI 408", i.Flags, i.Status)
			}
			if got := <-bodies; got != "cut after 5" {
				t.Errorf("upstream body: %s", got)
			}
		})
	}
	t.Run("steady sender not cut", func(t *testing.T) {
		slow := newFront(t, Options{StreamIdleTimeout: 2 * time.Second}, up.addrPort())
		c, br := slow.raw(t)
		io.WriteString(c, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
		for range 30 { // 3 s in all, one chunk every 100 ms
			io.WriteString(c, "1\r\nx\r\n")
			time.Sleep(100 * time.Millisecond)
		}
		io.WriteString(c, "0\r\n\r\n")
		if res, body := readResponse(t, br, "POST"); res.StatusCode != 200 || body != "ok" {
			t.Fatalf("response %d %q", res.StatusCode, body)
		}
		if got := <-bodies; got != "whole 30" {
			t.Errorf("upstream body: %s", got)
		}
	})
}

// TestStreamIdleTimeoutCutsStalledUpstream: an upstream that stops
// sending its response body is cut after StreamIdleTimeout on either path
// (Envoy's stream_idle_timeout counts either side's silence): the client
// connection is aborted (the body never looks complete), the upstream
// connection closed, the request flagged SI. One that sends slowly but
// steadily, for longer than the timeout in all, is not cut.
func TestStreamIdleTimeoutCutsStalledUpstream(t *testing.T) {
	for _, tt := range []struct{ name, resp string }{
		{"Content-Length", "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello"},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"},
	} {
		for _, fast := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/fast=%v", tt.name, fast), func(t *testing.T) {
				upGone := make(chan struct{})
				dst := rawUpstream(t, func(c net.Conn) {
					http.ReadRequest(bufio.NewReader(c))
					io.WriteString(c, tt.resp)
					io.Copy(io.Discard, c) // then nothing, until the proxy closes
					close(upGone)
				})
				f := newFront(t, Options{DisableFastPath: !fast, StreamIdleTimeout: 300 * time.Millisecond}, dst)
				c, br := f.raw(t)
				c.SetDeadline(time.Now().Add(10 * time.Second))
				io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
				// The connection is cut (a buffered head may never be sent):
				// whatever came is not a complete response.
				raw, err := io.ReadAll(br)
				if err != nil {
					t.Fatalf("read %q, %v; want the connection cut", raw, err)
				}
				if res, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(raw)), nil); err == nil {
					if b, err := io.ReadAll(res.Body); err == nil {
						t.Fatalf("a complete response: %d %q", res.StatusCode, b)
					}
				}
				select {
				case <-upGone:
				case <-time.After(10 * time.Second):
					t.Fatal("upstream connection still open")
				}
				if i := f.info(t); i.Flags != StreamIdleTimeout || i.Status != 200 {
					t.Errorf("info: flags %v status %d", i.Flags, i.Status)
				}
			})
		}
	}
	for _, fast := range []bool{true, false} {
		t.Run(fmt.Sprintf("steady upstream not cut/fast=%v", fast), func(t *testing.T) {
			dst := rawUpstream(t, func(c net.Conn) {
				http.ReadRequest(bufio.NewReader(c))
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 30\r\n\r\n")
				for range 30 { // 3 s in all, a byte every 100 ms
					time.Sleep(100 * time.Millisecond)
					io.WriteString(c, "x")
				}
			})
			f := newFront(t, Options{DisableFastPath: !fast, StreamIdleTimeout: 2 * time.Second}, dst)
			c, br := f.raw(t)
			io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
			if res, body := readResponse(t, br, "GET"); res.StatusCode != 200 || len(body) != 30 {
				t.Fatalf("response %d, %d bytes", res.StatusCode, len(body))
			}
			if i := f.info(t); i.Flags != 0 {
				t.Errorf("flags %v", i.Flags)
			}
		})
	}
}

// TestStreamIdleTimeoutUpstreamNotReading: an upstream that takes a
// request head but never reads its body (nor answers) fails the upload
// after StreamIdleTimeout on either path: 504, flag UT, instead of a
// client and an upstream connection held until the upstream closes.
func TestStreamIdleTimeoutUpstreamNotReading(t *testing.T) {
	release := make(chan struct{})
	dst := rawUpstream(t, func(c net.Conn) {
		http.ReadRequest(bufio.NewReader(c))
		<-release // never reads the body, never answers
	})
	defer close(release)
	for _, tt := range []struct{ name, head string }{
		{"fast path", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n"},
		{"net/http (HTTP/1.0)", "POST / HTTP/1.0\r\nHost: a\r\nContent-Length: %d\r\n\r\n"},
		{"net/http (chunked)", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFront(t, Options{StreamIdleTimeout: 300 * time.Millisecond}, dst)
			c, br := f.raw(t)
			c.SetDeadline(time.Now().Add(10 * time.Second))
			const size = 32 << 20 // more than the sockets' buffers hold
			go func() {
				fmt.Fprintf(c, tt.head, size)
				chunk := strings.Repeat("b", 64<<10)
				for range size / len(chunk) {
					if _, err := io.WriteString(c, chunk); err != nil {
						return
					}
				}
			}()
			res, err := http.ReadResponse(br, nil)
			if err != nil || res.StatusCode != http.StatusGatewayTimeout {
				t.Fatalf("response: %v %v, want 504", res, err)
			}
			if i := f.info(t); i.Flags != UpstreamTimeout {
				t.Errorf("flags %v", i.Flags)
			}
		})
	}
}

// TestStreamIdleTimeoutSparesSlowReader: a client reading slowly but
// steadily, for much longer than the timeout in all, is not cut: the
// proxy's writes block, but none for the whole timeout, and the deadline
// is renewed.
func TestStreamIdleTimeoutSparesSlowReader(t *testing.T) {
	const size = 32 << 20 // more than the socket buffers hold: the proxy's writes block
	up := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(size))
		io.Copy(w, io.LimitReader(zeros{}, size))
	}))
	// Three seconds: far from the reader's pauses (75 ms), so that a
	// loaded machine that delays the reader does not look like a stalled
	// one (at a load of 15 on two CPUs, a 50 ms sleep was seen to take
	// 490 ms, and a one-second timeout cut this reader now and then), and
	// a third of the reading's whole time (128 pauses), so that a deadline
	// set once and not renewed would cut it.
	const pause = 75 * time.Millisecond
	f := newFront(t, Options{StreamIdleTimeout: 3 * time.Second}, up.addrPort())
	c, br := f.raw(t)
	fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	buf := make([]byte, 256<<10)
	var n int64
	for n < size {
		k, err := io.ReadFull(res.Body, buf)
		n += int64(k)
		if err != nil {
			t.Fatalf("after %d bytes: %v", n, err)
		}
		time.Sleep(pause) // the proxy's writes block meanwhile
	}
	t.Logf("read %d bytes in %v", n, time.Since(start).Round(time.Millisecond))
	if n != size {
		t.Fatalf("read %d bytes", n)
	}
	if i := f.info(t); i.Flags != 0 {
		t.Errorf("flags %v", i.Flags)
	}
}

// TestStreamIdleTimeoutLeavesNoDeadline: the stream idle deadlines stay
// set between the reads and writes of a body (they are renewed lazily),
// so each must be gone once its body is: a keep-alive connection, on
// either side, that idles longer than StreamIdleTimeout after uploads and
// downloads still serves the next request, on the same upstream
// connections.
func TestStreamIdleTimeoutLeavesNoDeadline(t *testing.T) {
	const size = 256 << 10 // more than one read and write of each body
	onBothPaths(t, func(t *testing.T, fast bool) {
		up := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			n, _ := io.Copy(io.Discard, r.Body)
			if r.URL.Path == "/cl" {
				w.Header().Set("Content-Length", fmt.Sprint(size))
			}
			w.Header().Set("X-Got", fmt.Sprint(n))
			io.Copy(w, io.LimitReader(zeros{}, size)) // chunked for /chunked
		}))
		const sit = 200 * time.Millisecond
		f := newFront(t, Options{StreamIdleTimeout: sit, DisableFastPath: !fast}, up.addrPort())
		c, br := f.raw(t)
		body := strings.Repeat("x", size)
		var opened int32 // upstream connections after the first round
		for i := range 2 {
			for _, req := range []string{
				fmt.Sprintf("POST /cl HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s", size, body),
				fmt.Sprintf("POST /chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n", size, body),
			} {
				time.Sleep(3 * sit) // every deadline set so far has passed
				io.WriteString(c, req)
				res, got := readResponse(t, br, "POST")
				if res.StatusCode != 200 || len(got) != size || res.Header.Get("X-Got") != fmt.Sprint(size) {
					t.Fatalf("round %d, %s: %d, %d bytes, upstream got %s", i, req[:14], res.StatusCode, len(got), res.Header.Get("X-Got"))
				}
				if info := f.info(t); info.Flags != 0 {
					t.Fatalf("round %d, %s: flags %v", i, req[:14], info.Flags)
				}
			}
			if i == 0 {
				opened = up.accepted.Load() // the fast path's and the Transport's (chunked)
			}
		}
		if n := up.accepted.Load(); n != opened {
			t.Errorf("%d upstream connections after the second round, %d after the first: not reused after an idle pause", n, opened)
		}
	})
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// TestRequestHeaderTimeoutReported: a head cut by HeaderTimeout is logged
// and reported with flag HT; a keep-alive connection closed while idle
// between requests is not.
func TestRequestHeaderTimeoutReported(t *testing.T) {
	up := newRecordingUpstream(t)
	var logs logbuf.Buffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	f := newFront(t, Options{HeaderTimeout: 300 * time.Millisecond, IdleTimeout: 300 * time.Millisecond, Logger: log}, up.addrPort())

	// Idle keep-alive connection: one request, then nothing.
	k, kbr := f.raw(t)
	fmt.Fprint(k, "GET /ok HTTP/1.1\r\nHost: a\r\n\r\n")
	if res, _ := readResponse(t, kbr, "GET"); res.StatusCode != 200 {
		t.Fatalf("status %d", res.StatusCode)
	}
	if i := f.info(t); i.Flags != 0 {
		t.Fatalf("flags %v", i.Flags)
	}
	expectEOF(t, kbr) // closed by the idle timeout

	// A head that never completes.
	c, br := f.raw(t)
	io.WriteString(c, "GET /slow HTTP/1.1\r\nHost: a\r\nX-Slow: xx")
	start := time.Now()
	expectEOF(t, br)
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("closed after %v", d)
	}
	i := f.info(t)
	if i.Flags != RequestHeaderTimeout || i.Flags.String() != "HT" || i.Status != 0 || i.Client != c.LocalAddr().(*net.TCPAddr).AddrPort() {
		t.Errorf("info %+v", i)
	}
	if i.Duration < 200*time.Millisecond || i.Duration > 3*time.Second {
		t.Errorf("duration %v", i.Duration)
	}
	if !strings.Contains(logs.String(), `msg="request header timeout`) || !strings.Contains(logs.String(), "client="+c.LocalAddr().String()) {
		t.Errorf("log:\n%s", logs.String())
	}
	select {
	case i := <-f.infos:
		t.Errorf("another RequestInfo: %+v", i)
	case <-time.After(100 * time.Millisecond):
	}
	if up.accepted.Load() != 1 {
		t.Errorf("upstream accepted %d connections", up.accepted.Load())
	}
}

// TestPreDialErrorAnswersFirstRequest: a connect that failed while the
// connection was sniffed answers its first request 503 UF at once, without
// dialing again; the next request on the connection dials.
func TestPreDialErrorAnswersFirstRequest(t *testing.T) {
	up := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	f := newFront(t, Options{}, up.addrPort())
	a, b := net.Pipe()
	defer b.Close()
	dialErr := &upstream.DialError{Dst: up.addrPort(), Reason: upstream.ReasonTimeout, Err: os.ErrDeadlineExceeded}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.p.ServeConn(a, netip.MustParseAddrPort("127.0.0.1:40000"), up.addrPort(), upstream.PreDial{Err: dialErr})
	}()
	br := bufio.NewReader(b)
	fmt.Fprint(b, "GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
	res, body := readResponse(t, br, "GET")
	if res.StatusCode != 503 || body != msgReset+"connect timeout" {
		t.Errorf("first request: %d %q", res.StatusCode, body)
	}
	if i := f.info(t); i.Flags != UpstreamConnectFailure || i.Status != 503 {
		t.Errorf("info %+v", i)
	}
	if n := up.accepted.Load(); n != 0 {
		t.Errorf("upstream accepted %d connections: dialed again", n)
	}
	if h := f.p.Hosts(); len(h) != 1 || h[0].ConnectFailures != 1 {
		t.Errorf("hosts %+v", h)
	}
	fmt.Fprint(b, "GET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
	if res, body := readResponse(t, br, "GET"); res.StatusCode != 200 || body != "ok" {
		t.Errorf("second request: %d %q", res.StatusCode, body)
	}
	if i := f.info(t); i.Flags != 0 {
		t.Errorf("second request flags %v", i.Flags)
	}
	b.Close()
	<-done
}

// TestClientResetMidResponseIsDC: a client that resets while the upstream
// is between two writes (net/http notices the reset and cancels the
// request, so the upstream read fails first) is flagged DC, not UC.
func TestClientResetMidResponseIsDC(t *testing.T) {
	upDone := make(chan struct{})
	up := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer close(upDone)
		io.WriteString(w, "first")
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done(): // the proxy closed the upstream connection
		case <-time.After(10 * time.Second):
		}
	}))
	f := newFront(t, Options{}, up.addrPort())
	c, br := f.raw(t)
	fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if b := make([]byte, 5); func() error { _, err := io.ReadFull(res.Body, b); return err }() != nil || string(b) != "first" {
		t.Fatalf("first chunk %q", b)
	}
	c.(*net.TCPConn).SetLinger(0)
	c.Close() // RST
	i := f.info(t)
	if i.Flags != DownstreamClosed || i.Status != 200 {
		t.Errorf("flags %v status %d", i.Flags, i.Status)
	}
	select {
	case <-upDone:
	case <-time.After(5 * time.Second):
		t.Error("upstream request not canceled")
	}
}

// TestFreeOSMemoryAfterManyHostsRemoved: memory goes back to the OS once
// many hosts were removed, at the next sweep, and not again without more.
func TestFreeOSMemoryAfterManyHostsRemoved(t *testing.T) {
	var calls atomic.Int32
	old := freeOSMemory
	freeOSMemory = func() { calls.Add(1) }
	t.Cleanup(func() { freeOSMemory = old })
	p, err := New(Options{Dialer: newFrontDialer(), CleanupInterval: time.Hour}) // the janitor stays out of the way
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	addHosts := func(n int) {
		for i := range n {
			h := p.hosts.acquire(hostKey{dst: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), 80)})
			p.hosts.release(h)
		}
	}
	future := func() time.Time { return time.Now().Add(time.Hour) }

	addHosts(100)
	p.hosts.sweep(future())
	p.hosts.sweep(future())
	if n := calls.Load(); n != 0 {
		t.Fatalf("%d calls after 100 hosts removed", n)
	}
	addHosts(300)
	p.hosts.sweep(future()) // removes them
	if n := calls.Load(); n != 0 {
		t.Fatalf("%d calls in the sweep that removed the hosts", n)
	}
	p.hosts.sweep(future()) // the cluster is empty: free now
	if n := calls.Load(); n != 1 {
		t.Fatalf("%d calls after 400 hosts removed, want 1", n)
	}
	p.hosts.sweep(future())
	if n := calls.Load(); n != 1 {
		t.Fatalf("%d calls, want still 1", n)
	}
	// More removals within freeMemoryMinGap wait for it.
	addHosts(300)
	p.hosts.sweep(future())
	p.hosts.sweep(future())
	if n := calls.Load(); n != 1 {
		t.Fatalf("%d calls within the minimum gap, want 1", n)
	}
	p.hosts.lastFree = p.hosts.lastFree.Add(-freeMemoryMinGap)
	p.hosts.sweep(future())
	if n := calls.Load(); n != 2 {
		t.Fatalf("%d calls after the gap, want 2", n)
	}
}

// TestFirstRequestStartsWhenSniffed: a connection's first request began
// when auto mode saw its first bytes (PreDial.Sniffed), before the wait
// for the connect made meanwhile; its record's duration includes that
// wait, on the fast path and on net/http's, whether the connect succeeded
// or failed. The next request starts when its own head is read.
func TestFirstRequestStartsWhenSniffed(t *testing.T) {
	up := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	const waited = 2 * time.Second
	for _, tt := range []struct {
		name        string
		noFast      bool
		failed      bool
		firstStatus int
	}{
		{name: "fast path, connect made", firstStatus: 200},
		{name: "net/http path, connect made", noFast: true, firstStatus: 200},
		{name: "connect failed", failed: true, firstStatus: 503},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFront(t, Options{DisableFastPath: tt.noFast}, up.addrPort())
			pre := upstream.PreDial{Sniffed: time.Now().Add(-waited)}
			if tt.failed {
				pre.Err = &upstream.DialError{Dst: up.addrPort(), Reason: upstream.ReasonTimeout, Err: os.ErrDeadlineExceeded}
			} else {
				c, err := net.DialTCP("tcp", nil, net.TCPAddrFromAddrPort(up.addrPort()))
				if err != nil {
					t.Fatal(err)
				}
				pre.Conn = c
			}
			client, server := rawTCPPair(t)
			go f.p.ServeConn(server, netip.MustParseAddrPort("127.0.0.1:40000"), up.addrPort(), pre)
			br := bufio.NewReader(client)
			for i, want := range []int{tt.firstStatus, 200} {
				fmt.Fprintf(client, "GET /%d HTTP/1.1\r\nHost: a\r\n\r\n", i)
				if res, _ := readResponse(t, br, "GET"); res.StatusCode != want {
					t.Fatalf("request %d: status %d, want %d", i, res.StatusCode, want)
				}
				info := f.info(t)
				if i == 0 && info.Duration < waited {
					t.Errorf("first request: duration %v, want at least the %v since its bytes were sniffed", info.Duration, waited)
				}
				if i == 1 && info.Duration >= waited {
					t.Errorf("second request: duration %v, counted from the sniff too", info.Duration)
				}
			}
		})
	}
}

// TestLaterHeadTimeoutNetHTTP: on a keep-alive connection served by
// net/http (after a chunked request, which the fast path hands over, or
// with the fast path off), a later request head is bounded by
// HeaderTimeout from its first byte, as the first is: a slowloris client
// sending one byte every 200 ms after a good request is closed without a
// response and reported HT, not kept until IdleTimeout (before the fix: a
// minute). A pipelined partial head is timed from the end of the response
// before it, not from its arrival; the idle wait before a head's first
// byte stays IdleTimeout's.
func TestLaterHeadTimeoutNetHTTP(t *testing.T) {
	const ht = time.Second
	up := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if r.URL.Path == "/slow" {
			time.Sleep(2 * ht)
		}
		io.WriteString(w, "ok")
	}))
	const (
		chunked = "POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
		get     = "GET /a HTTP/1.1\r\nHost: a\r\n\r\n"
	)
	for _, tc := range []struct {
		name  string
		o     Options
		first string // the connection's first request; net/http serves it
	}{
		{name: "after a chunked request", first: chunked},
		{name: "fast path off", o: Options{DisableFastPath: true}, first: get},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var logs logbuf.Buffer
			tc.o.Logger = slog.New(slog.NewTextHandler(&logs, nil))
			tc.o.HeaderTimeout, tc.o.IdleTimeout = ht, time.Minute
			f := newFront(t, tc.o, up.addrPort())
			first := func(t *testing.T, c net.Conn, br *bufio.Reader, extra string) {
				t.Helper()
				io.WriteString(c, tc.first+extra)
				if res, body := readResponse(t, br, "POST"); res.StatusCode != 200 || body != "ok" {
					t.Fatalf("first request: %d %q", res.StatusCode, body)
				}
				if i := f.info(t); i.Flags != 0 {
					t.Fatalf("first request: flags %v", i.Flags)
				}
			}
			logged := 0 // request header timeouts logged
			// slowloris sends the rest of a head a byte every 200 ms
			// and wants the connection closed at about HeaderTimeout.
			slowloris := func(t *testing.T, c net.Conn, br *bufio.Reader) {
				t.Helper()
				start := time.Now()
				closed := make(chan error, 1)
				go func() {
					_, err := br.ReadByte()
					closed <- err
				}()
				var err error
			send:
				for {
					select {
					case err = <-closed:
						break send
					case <-time.After(200 * time.Millisecond):
						c.Write([]byte{'x'})
					}
				}
				d := time.Since(start)
				if err == nil {
					t.Fatal("a response to the slow head")
				}
				// Generous bounds: well under IdleTimeout.
				if d < ht/2 || d > 15*time.Second {
					t.Errorf("closed after %v; want about %v", d, ht)
				}
				i := f.info(t)
				if i.Flags != RequestHeaderTimeout || i.Status != 0 || i.Duration < ht/2 || i.Duration > 15*time.Second {
					t.Errorf("info %+v", i)
				}
				var hts []string
				for _, l := range strings.Split(logs.String(), "\n") {
					if strings.Contains(l, `msg="request header timeout`) {
						hts = append(hts, l)
					}
				}
				if len(hts) != logged+1 || !strings.Contains(hts[logged], " timeout="+ht.String()) {
					t.Errorf("log:\n%s", logs.String())
				}
				logged = len(hts)
			}

			t.Run("slowloris", func(t *testing.T) {
				c, br := f.raw(t)
				first(t, c, br, "")
				io.WriteString(c, "GET /b HTTP/1.1\r\nHost: a\r\nX-Slow: ")
				slowloris(t, c, br)
			})
			t.Run("pipelined slowloris", func(t *testing.T) {
				c, br := f.raw(t)
				first(t, c, br, "GET /b HTTP/1.1\r\nHost: a\r\nX-Slow: ")
				slowloris(t, c, br)
			})
			t.Run("pipelined behind a slow response", func(t *testing.T) {
				c, br := f.raw(t)
				first(t, c, br, "")
				// The next head arrives while /slow takes 2 × HeaderTimeout.
				io.WriteString(c, "GET /slow HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\n")
				if res, body := readResponse(t, br, "GET"); res.StatusCode != 200 || body != "ok" {
					t.Fatalf("slow request: %d %q", res.StatusCode, body)
				}
				io.WriteString(c, "Host: a\r\n\r\n")
				if res, body := readResponse(t, br, "GET"); res.StatusCode != 200 || body != "ok" {
					t.Fatalf("pipelined request: %d %q", res.StatusCode, body)
				}
				for range 2 {
					if i := f.info(t); i.Flags != 0 {
						t.Errorf("flags %v", i.Flags)
					}
				}
			})
			t.Run("idle, then a request", func(t *testing.T) {
				c, br := f.raw(t)
				first(t, c, br, "")
				time.Sleep(2 * ht)
				io.WriteString(c, get)
				if res, body := readResponse(t, br, "GET"); res.StatusCode != 200 || body != "ok" {
					t.Fatalf("after idling: %d %q", res.StatusCode, body)
				}
				if i := f.info(t); i.Flags != 0 {
					t.Errorf("flags %v", i.Flags)
				}
			})
		})
	}
}
