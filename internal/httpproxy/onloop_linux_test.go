package httpproxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// loopUpstream answers by path: /small "ok"; /echo the request body;
// /chunked "ab" in two flushed writes; /big 100 KiB; /slow "late" after
// 300 ms; /hang nothing until the client goes; /close "ok" and closes the
// connection. Each response carries the X-Request-Id it was sent.
func loopUpstream(t *testing.T, configure ...func(*http.Server)) *upstreamServer {
	return newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Got-Id", r.Header.Get("X-Request-Id"))
		switch r.URL.Path {
		case "/echo":
			b, _ := io.ReadAll(r.Body)
			w.Write(b)
		case "/chunked":
			w.Write([]byte("a"))
			w.(http.Flusher).Flush()
			w.Write([]byte("b"))
		case "/big":
			w.Write([]byte(strings.Repeat("x", 100<<10)))
		case "/slow":
			time.Sleep(300 * time.Millisecond)
			w.Write([]byte("late"))
		case "/hang":
			<-r.Context().Done()
		case "/close":
			w.Header().Set("Connection", "close")
			w.Write([]byte("ok"))
		default:
			w.Write([]byte("ok"))
		}
	}), configure...)
}

// roundTrips writes req on c and reads n responses to method.
func roundTrips(t *testing.T, c net.Conn, br *bufio.Reader, req, method string, n int) []string {
	t.Helper()
	if req != "" {
		if _, err := io.WriteString(c, req); err != nil {
			t.Fatal(err)
		}
	}
	var bodies []string
	for range n {
		res, body := readResponse(t, br, method)
		if res.StatusCode != http.StatusOK {
			t.Fatalf("status %d, body %q", res.StatusCode, body)
		}
		bodies = append(bodies, body)
	}
	return bodies
}

const getSmall = "GET /small HTTP/1.1\r\nHost: a\r\n\r\n"

// toLoop makes the loopAfter requests after which a loop serves the
// connection.
func toLoop(t *testing.T, c net.Conn, br *bufio.Reader) {
	t.Helper()
	for range loopAfter {
		roundTrips(t, c, br, getSmall, "GET", 1)
	}
}

// servedOnLoop sums the requests every host says a loop served whole.
func servedOnLoop(p *Proxy) (n uint64) {
	for _, h := range p.Hosts() {
		n += h.OnLoop
	}
	return n
}

// checkServedOnLoop checks that loops served n requests whole. A loop
// counts a request once its response is written, which the client may
// read before that.
func checkServedOnLoop(t *testing.T, p *Proxy, n uint64) {
	t.Helper()
	eventually(t, fmt.Sprintf("%d requests counted as served on a loop", n), func() bool { return servedOnLoop(p) >= n })
	if got := servedOnLoop(p); got != n {
		t.Errorf("requests a loop served = %d, want %d", got, n)
	}
}

// onLoopNow counts the fast-path connections a loop serves now.
func onLoopNow(p *Proxy) (n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for fc := range p.fast {
		if fc.ol.w.Load() != nil {
			n++
		}
	}
	return n
}

// waitOnLoop waits until a loop serves the connection that toLoop sent
// there (its goroutine registers it after the last response went out).
func waitOnLoop(t *testing.T, p *Proxy) {
	t.Helper()
	eventually(t, "the connection on a loop", func() bool { return onLoopNow(p) == 1 })
}

// inFlight counts the fast-path connections that name an upstream
// connection as carrying their request (fastConn.cur), which abort closes.
func inFlight(p *Proxy) (n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for fc := range p.fast {
		if fc.cur.Load() != nil {
			n++
		}
	}
	return n
}

// TestLoopServesKeepAlive checks that, after a connection's first request,
// the loops serve its keep-alive requests whole, with the same result as
// its goroutine: the response, the proxy's own fields upstream and back,
// one upstream connection kept throughout, and each request's record.
func TestLoopServesKeepAlive(t *testing.T) {
	for _, tc := range []struct {
		name       string
		disable    bool
		wantOnLoop uint64
	}{
		{"loops", false, 10 - loopAfter},
		{"goroutine only", true, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := loopUpstream(t)
			f := newFront(t, Options{DisableLoops: tc.disable}, up.addrPort())
			c, br := f.raw(t)
			ids := map[string]bool{}
			for i := range 10 {
				fmt.Fprintf(c, "GET /n%d HTTP/1.1\r\nHost: a\r\n\r\n", i)
				res, body := readResponse(t, br, "GET")
				id := res.Header.Get("X-Got-Id")
				if res.StatusCode != 200 || body != "ok" || id == "" || ids[id] ||
					res.Header.Get("Server") != DefaultServerHeader || res.Header.Get(hdrServiceTime) == "" {
					t.Fatalf("request %d: %d %q, X-Got-Id %q, header %v", i, res.StatusCode, body, id, res.Header)
				}
				ids[id] = true
				info := f.info(t)
				if info.Status != 200 || info.BodyBytes != 2 || info.Path != fmt.Sprintf("/n%d", i) || info.Reused != (i > 0) || info.RequestID != id {
					t.Fatalf("request %d: info %+v", i, info)
				}
			}
			checkServedOnLoop(t, f.p, tc.wantOnLoop)
			// Every response is recorded after its request let go of the
			// upstream connection: a forced close must not close a kept
			// (or, later, pooled) connection as if it were in use.
			if n := inFlight(f.p); n != 0 {
				t.Errorf("%d connections still name an upstream connection in use", n)
			}
			if n := up.accepted.Load(); n != 1 {
				t.Errorf("upstream connections = %d, want 1", n)
			}
		})
	}
}

// TestLoopHandsBack checks each case the loop leaves to the connection's
// goroutine, and the ones it takes, on a connection the loop serves: the
// client gets the right answer, and the connection goes on.
func TestLoopHandsBack(t *testing.T) {
	for _, tc := range []struct {
		name       string
		steps      []string // written with a pause between them
		method     string
		want       []string
		wantOnLoop uint64 // with the last GET /small, after the first one
		wantConns  int32
	}{
		{"body with the head", []string{"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"}, "POST", []string{"hello"}, 2, 1},
		{"body after the head", []string{"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n", "hello"}, "POST", []string{"hello"}, 0, 1},
		{"head in two writes", []string{"GET /small HTTP/1.1\r\nHost: a\r\n", "\r\n"}, "GET", []string{"ok"}, 0, 1},
		{"pipelined", []string{getSmall + getSmall}, "GET", []string{"ok", "ok"}, 3, 1},
		{"chunked response", []string{"GET /chunked HTTP/1.1\r\nHost: a\r\n\r\n"}, "GET", []string{"ab"}, 0, 1},
		{"large response", []string{"GET /big HTTP/1.1\r\nHost: a\r\n\r\n"}, "GET", []string{strings.Repeat("x", 100<<10)}, 0, 1},
		{"slow response", []string{"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n"}, "GET", []string{"late"}, 2, 1},
		{"HEAD", []string{"HEAD /small HTTP/1.1\r\nHost: a\r\n\r\n"}, "HEAD", []string{""}, 2, 1},
		{"upstream closes after", []string{"GET /close HTTP/1.1\r\nHost: a\r\n\r\n"}, "GET", []string{"ok"}, 1, 2},
		{"not in the fast subset", []string{"GET /small HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"}, "GET", []string{"ok"}, 0, 3},
	} {
		for _, disable := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/DisableLoops=%v", tc.name, disable), func(t *testing.T) {
				handsBack(t, tc.steps, tc.method, tc.want, tc.wantOnLoop, tc.wantConns, disable)
			})
		}
	}
}

// handsBack runs a TestLoopHandsBack case; with the loops disabled, none
// serves a request.
func handsBack(t *testing.T, steps []string, method string, want []string, wantOnLoop uint64, wantConns int32, disable bool) {
	{
		{
			if disable {
				wantOnLoop = 0
			}
			up := loopUpstream(t)
			f := newFront(t, Options{DisableLoops: disable}, up.addrPort())
			c, br := f.raw(t)
			toLoop(t, c, br)
			if !disable {
				waitOnLoop(t, f.p)
			}
			for i, s := range steps {
				if i > 0 {
					time.Sleep(100 * time.Millisecond)
				}
				if _, err := io.WriteString(c, s); err != nil {
					t.Fatal(err)
				}
			}
			got := roundTrips(t, c, br, "", method, len(want))
			for i := range got {
				if got[i] != want[i] {
					t.Fatalf("response %d: %.40q, want %.40q", i, got[i], want[i])
				}
			}
			if body := roundTrips(t, c, br, getSmall, "GET", 1)[0]; body != "ok" {
				t.Fatalf("the next request: %q", body)
			}
			checkServedOnLoop(t, f.p, wantOnLoop)
			if n := up.accepted.Load(); n != wantConns {
				t.Errorf("upstream connections = %d, want %d", n, wantConns)
			}
		}
	}
}

// TestLoopUpstreamGoes checks the kept upstream connection's end: closed
// by the upstream while the client idles, the next request goes on a new
// one; closed by the upstream on receiving the request, a replayable
// request is sent again on a new one, as for any pooled connection.
func TestLoopUpstreamGoes(t *testing.T) {
	t.Run("closed while idle", func(t *testing.T) {
		up := loopUpstream(t, func(s *http.Server) { s.IdleTimeout = 100 * time.Millisecond })
		f := newFront(t, Options{}, up.addrPort())
		c, br := f.raw(t)
		toLoop(t, c, br)
		time.Sleep(400 * time.Millisecond)
		roundTrips(t, c, br, getSmall, "GET", 1)
		if n := up.accepted.Load(); n != 2 {
			t.Errorf("upstream connections = %d, want 2", n)
		}
	})
	t.Run("closed at the request", func(t *testing.T) {
		var conns atomic.Int32
		dst := rawUpstream(t, func(c net.Conn) {
			first := conns.Add(1) == 1
			br := bufio.NewReader(c)
			for i := 0; ; i++ {
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				if first && i == loopAfter {
					return // the first request a loop sends: no answer
				}
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			}
		})
		f := newFront(t, Options{}, dst)
		c, br := f.raw(t)
		toLoop(t, c, br)
		for range loopAfter {
			f.info(t)
		}
		time.Sleep(50 * time.Millisecond)
		roundTrips(t, c, br, getSmall, "GET", 1)
		if i := f.info(t); i.Flags != 0 || i.Reused {
			t.Errorf("the replayed request: flags %v, reused %v; want none, a new connection", i.Flags, i.Reused)
		}
		if n := conns.Load(); n != 2 {
			t.Errorf("upstream connections = %d, want 2", n)
		}
	})
}

// TestLoopTimeouts checks the timeouts of a connection the loop serves:
// the route timeout answers 504 (flag UT), the idle timeout closes it. Both
// are short here, and the bounds far from them.
func TestLoopTimeouts(t *testing.T) {
	t.Run("route", func(t *testing.T) {
		up := loopUpstream(t)
		f := newFront(t, Options{RouteTimeout: 300 * time.Millisecond}, up.addrPort())
		c, br := f.raw(t)
		toLoop(t, c, br)
		for range loopAfter {
			f.info(t)
		}
		start := time.Now()
		io.WriteString(c, "GET /hang HTTP/1.1\r\nHost: a\r\n\r\n")
		res, _ := readResponse(t, br, "GET")
		if res.StatusCode != http.StatusGatewayTimeout || time.Since(start) > 5*time.Second {
			t.Fatalf("status %d after %v; want 504 after about 300ms", res.StatusCode, time.Since(start))
		}
		if i := f.info(t); i.Flags != UpstreamTimeout {
			t.Errorf("flags %v, want UT", i.Flags)
		}
	})
	t.Run("idle", func(t *testing.T) {
		up := loopUpstream(t)
		f := newFront(t, Options{IdleTimeout: 300 * time.Millisecond}, up.addrPort())
		c, br := f.raw(t)
		toLoop(t, c, br)
		start := time.Now()
		if _, err := br.ReadByte(); err != io.EOF || time.Since(start) > 5*time.Second {
			t.Fatalf("read %v after %v; want EOF after about 300ms", err, time.Since(start))
		}
		checkServedOnLoop(t, f.p, 0)
	})
}

// TestRouteTimeoutNotReplayed: a GET that times out on a reused upstream
// connection is answered 504 after one route timeout; it is not sent
// again on a new connection, as one the upstream had closed would be.
func TestRouteTimeoutNotReplayed(t *testing.T) {
	for _, tc := range []struct {
		name   string
		onLoop bool
		opts   Options
	}{
		{"fast path", false, Options{}},
		{"fast path on a loop", true, Options{}},
		{"net/http", false, Options{DisableFastPath: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var hangs atomic.Int32
			up := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/hang" {
					hangs.Add(1)
					<-r.Context().Done()
					return
				}
				w.Write([]byte("ok"))
			}))
			tc.opts.RouteTimeout = 300 * time.Millisecond
			f := newFront(t, tc.opts, up.addrPort())
			c, br := f.raw(t)
			n := 1 // a first request, so that /hang's upstream connection is a reused one
			if tc.onLoop {
				n = loopAfter
			}
			for range n {
				roundTrips(t, c, br, getSmall, "GET", 1)
				f.info(t)
			}
			io.WriteString(c, "GET /hang HTTP/1.1\r\nHost: a\r\n\r\n")
			if res, _ := readResponse(t, br, "GET"); res.StatusCode != http.StatusGatewayTimeout {
				t.Fatalf("status %d, want 504", res.StatusCode)
			}
			if i := f.info(t); i.Flags != UpstreamTimeout {
				t.Errorf("flags %v, want UT", i.Flags)
			}
			if got := hangs.Load(); got != 1 {
				t.Errorf("the upstream got the timed-out request %d times, want once", got)
			}
		})
	}
}

// TestLoopShutdown checks that Shutdown ends a connection the loop holds
// idle at once, and that Close ends one whose request waits on the loop.
func TestLoopShutdown(t *testing.T) {
	for _, tc := range []struct {
		name string
		path string // the request the loop holds; "" for none
		stop func(p *Proxy) error
	}{
		{"shutdown, idle", "", func(p *Proxy) error {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			return p.Shutdown(ctx)
		}},
		{"close, in flight", "/hang", func(p *Proxy) error { return p.Close() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := loopUpstream(t)
			f := newFront(t, Options{}, up.addrPort())
			c, br := f.raw(t)
			toLoop(t, c, br)
			roundTrips(t, c, br, getSmall, "GET", 1)
			checkServedOnLoop(t, f.p, 1)
			if tc.path != "" {
				fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: a\r\n\r\n", tc.path)
				time.Sleep(100 * time.Millisecond)
			}
			start := time.Now()
			if err := tc.stop(f.p); err != nil {
				t.Fatal(err)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("stopping took %v", d)
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadAll(br); err != nil {
				t.Errorf("the client's connection did not end: %v", err)
			}
		})
	}
}

// TestLoopClientCloses checks a request with Connection: close that a
// loop serves: the response says so and the connection ends; the kept
// upstream connection goes back to the pool for the next client, unless
// the upstream closes it too.
func TestLoopClientCloses(t *testing.T) {
	for _, tc := range []struct {
		path      string
		wantConns int32 // after a second client's request
	}{
		{"/small", 1},
		{"/close", 2},
	} {
		t.Run(tc.path, func(t *testing.T) {
			up := loopUpstream(t)
			f := newFront(t, Options{}, up.addrPort())
			c, br := f.raw(t)
			toLoop(t, c, br)
			waitOnLoop(t, f.p)
			fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", tc.path)
			res, body := readResponse(t, br, "GET")
			if res.StatusCode != 200 || body != "ok" || !res.Close {
				t.Fatalf("%d %q, close %v", res.StatusCode, body, res.Close)
			}
			if _, err := br.ReadByte(); err != io.EOF {
				t.Fatalf("after the response: %v, want EOF", err)
			}
			checkServedOnLoop(t, f.p, 1)
			c2, br2 := f.raw(t)
			roundTrips(t, c2, br2, getSmall, "GET", 1)
			if n := up.accepted.Load(); n != tc.wantConns {
				t.Errorf("upstream connections = %d, want %d", n, tc.wantConns)
			}
		})
	}
}

// TestLoopKeptBounded checks that a host's upstream connections kept by
// client connections for the loops are bounded by MaxIdleConnsPerHost:
// past it, client connections share the pool on their goroutines.
func TestLoopKeptBounded(t *testing.T) {
	up := loopUpstream(t)
	f := newFront(t, Options{MaxIdleConnsPerHost: 2}, up.addrPort())
	type conn struct {
		c  net.Conn
		br *bufio.Reader
	}
	var conns []conn
	for range 4 {
		c, br := f.raw(t)
		toLoop(t, c, br)
		conns = append(conns, conn{c, br})
		// The response may reach the client before its upstream
		// connection is kept or pooled.
		eventually(t, "the request counted done", func() bool { return f.p.Hosts()[0].Active == 0 })
	}
	// Two kept a connection each; the third dialed one for the pool,
	// which the fourth reused.
	if n := up.accepted.Load(); n != 3 {
		t.Errorf("upstream connections = %d, want 3", n)
	}
	for _, c := range conns {
		roundTrips(t, c.c, c.br, getSmall, "GET", 1)
	}
	checkServedOnLoop(t, f.p, 2)
}

// TestLoopClientResets checks a client that resets while its request
// waits for the upstream: the request is recorded with flag DC and status
// 0, since no status reached the client (as Envoy's %RESPONSE_CODE% and
// net/http's path say), on the loops as on the goroutine.
func TestLoopClientResets(t *testing.T) {
	withAndWithoutLoops(t, func(t *testing.T, disable bool) {
		up := loopUpstream(t)
		f := newFront(t, Options{DisableLoops: disable}, up.addrPort())
		c, br := f.raw(t)
		toLoop(t, c, br)
		for range loopAfter {
			f.info(t)
		}
		io.WriteString(c, "GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
		time.Sleep(50 * time.Millisecond)
		c.(*net.TCPConn).SetLinger(0)
		c.Close() // a reset
		if i := f.info(t); i.Flags != DownstreamClosed || i.Status != 0 || i.Path != "/slow" {
			t.Errorf("info %+v, want flag DC, status 0", i)
		}
	})
}

// TestLoopShutdownPipelined checks Shutdown while a request waits for its
// response with the next one pipelined behind it: the response says
// Connection: close and the connection ends there, on the loops as on the
// goroutine; the pipelined request is not answered after a response that
// said the connection closes (the client sends it again elsewhere).
func TestLoopShutdownPipelined(t *testing.T) {
	withAndWithoutLoops(t, func(t *testing.T, disable bool) {
		up := loopUpstream(t)
		f := newFront(t, Options{DisableLoops: disable}, up.addrPort())
		c, br := f.raw(t)
		toLoop(t, c, br)
		if !disable {
			waitOnLoop(t, f.p)
		}
		io.WriteString(c, "GET /slow HTTP/1.1\r\nHost: a\r\n\r\n"+getSmall)
		eventually(t, "the request in flight", func() bool {
			h := f.p.Hosts()[0]
			return h.Requests == loopAfter+1 && h.Active == 1
		})
		stopped := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			stopped <- f.p.Shutdown(ctx)
		}()
		res, body := readResponse(t, br, "GET")
		if res.StatusCode != 200 || body != "late" || !res.Close {
			t.Fatalf("%d %q, close %v; want 200 \"late\" saying Connection: close", res.StatusCode, body, res.Close)
		}
		expectEOF(t, br)
		if err := <-stopped; err != nil {
			t.Fatal(err)
		}
	})
}

// TestLoopHostRemoved checks a connection idle on a loop whose host the
// janitor removed (its sweep came before the loop's timer, both due a
// cleanup interval after the last request): the next request goes to the
// new host on a connection of its own, counted there, and the kept one,
// which belonged to the removed host, is closed.
func TestLoopHostRemoved(t *testing.T) {
	up := loopUpstream(t)
	f := newFront(t, Options{CleanupInterval: time.Hour}, up.addrPort())
	c, br := f.raw(t)
	toLoop(t, c, br)
	waitOnLoop(t, f.p)
	f.p.hosts.sweep(time.Now().Add(time.Hour)) // the janitor's, a moment after the interval
	if hs := f.p.Hosts(); len(hs) != 0 {
		t.Fatalf("hosts after the sweep: %+v", hs)
	}
	for range 3 {
		roundTrips(t, c, br, getSmall, "GET", 1)
	}
	eventually(t, "the requests done", func() bool { hs := f.p.Hosts(); return len(hs) == 1 && hs[0].Active == 0 })
	h := f.p.Hosts()[0]
	if h.Requests != 3 || h.Connects != 1 || h.Open != 1 || h.Reuses != 2 {
		t.Errorf("host %+v; want 3 requests on one connection of its own, open, reused twice", h)
	}
	eventually(t, "the removed host's connection closed", func() bool { return up.closed.Load() == 1 })
	if n := up.accepted.Load(); n != 2 {
		t.Errorf("upstream connections = %d, want 2", n)
	}
}

// TestLoopUnsentRequestBounded checks a request the loop could not write
// whole (the upstream stopped reading): the goroutine writes the rest
// under StreamIdleTimeout, as it writes a body, and answers 504 (flag UT)
// when the upstream takes none of it, instead of waiting for ever.
func TestLoopUnsentRequestBounded(t *testing.T) {
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 2048) })
		return nil
	}}
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	quit := make(chan struct{})
	served := make(chan struct{})
	go func() {
		defer close(served)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		for range loopAfter {
			if _, err := http.ReadRequest(br); err != nil {
				return
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
		<-quit // reads nothing more
	}()
	t.Cleanup(func() { close(quit); <-served })
	f := newFront(t, Options{StreamIdleTimeout: 300 * time.Millisecond}, ln.Addr().(*net.TCPAddr).AddrPort())
	c, br := f.raw(t)
	roundTrips(t, c, br, getSmall, "GET", 1)
	// The upstream connection, pooled after the first request, sends
	// through the kernel's least buffer from now on.
	eventually(t, "the connection pooled", func() bool {
		f.p.hosts.mu.Lock()
		defer f.p.hosts.mu.Unlock()
		for _, h := range f.p.hosts.hosts {
			if len(h.links) == 1 {
				syscall.SetsockoptInt(h.links[0].fd, syscall.SOL_SOCKET, syscall.SO_SNDBUF, 1)
				return true
			}
		}
		return false
	})
	for range loopAfter - 1 {
		roundTrips(t, c, br, getSmall, "GET", 1)
	}
	waitOnLoop(t, f.p)
	body := strings.Repeat("x", 7000)
	start := time.Now()
	fmt.Fprintf(c, "POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	res, _ := readResponse(t, br, "POST")
	if res.StatusCode != http.StatusGatewayTimeout || time.Since(start) > 10*time.Second {
		t.Fatalf("status %d after %v; want 504 after about 300ms", res.StatusCode, time.Since(start))
	}
	for range loopAfter {
		f.info(t)
	}
	if i := f.info(t); i.Flags != UpstreamTimeout {
		t.Errorf("flags %v, want UT", i.Flags)
	}
}

// TestLoopFlushHeadCut checks a response a loop could not write whole to
// a client that stopped reading, whose head then never went out whole
// (a HEAD response is all head): after StreamIdleTimeout the request is
// recorded with flag SI and status 0, since no status reached the client,
// as on the goroutine (sendHead).
func TestLoopFlushHeadCut(t *testing.T) {
	up := loopUpstream(t)
	f := newFront(t, Options{StreamIdleTimeout: 300 * time.Millisecond}, up.addrPort())
	c := dialSmallReceiveBuffer(t, f.addr)
	br := bufio.NewReader(c)
	toLoop(t, c, br)
	waitOnLoop(t, f.p)
	for range loopAfter {
		f.info(t)
	}
	f.p.mu.Lock()
	for fc := range f.p.fast {
		syscall.SetsockoptInt(fc.fd, syscall.SOL_SOCKET, syscall.SO_SNDBUF, 1) // the kernel's least
	}
	f.p.mu.Unlock()
	go func() { // never read: the responses fill the client's socket
		for range 2000 {
			if _, err := io.WriteString(c, "HEAD /small HTTP/1.1\r\nHost: a\r\n\r\n"); err != nil {
				return
			}
		}
	}()
	for {
		i := f.info(t)
		if i.Flags == 0 {
			if i.Status != 200 {
				t.Fatalf("info %+v", i)
			}
			continue
		}
		if i.Flags != StreamIdleTimeout || i.Status != 0 {
			t.Errorf("the cut response: flags %v, status %d; want SI, 0", i.Flags, i.Status)
		}
		break
	}
}

// dialSmallReceiveBuffer connects to addr with the kernel's least receive
// buffer, so that a response a client does not read soon fills it and the
// proxy's writes stop short. The connection closes at the test's end.
func dialSmallReceiveBuffer(t *testing.T, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 2048) })
		return nil
	}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// withAndWithoutLoops runs f with the loops (disable false) and with
// every request on its connection's goroutine (DisableLoops).
func withAndWithoutLoops(t *testing.T, f func(t *testing.T, disable bool)) {
	t.Helper()
	for _, disable := range []bool{false, true} {
		t.Run(fmt.Sprintf("DisableLoops=%v", disable), func(t *testing.T) { f(t, disable) })
	}
}

// TestLoopRelaysHeadOfTricklingBody: a small response whose head comes
// at once and whose body trickles is relayed head first, also on a loop,
// as on the goroutine and by Envoy. The loop relays only whole responses,
// and it held the head until the body was whole or route_timeout passed.
func TestLoopRelaysHeadOfTricklingBody(t *testing.T) {
	withAndWithoutLoops(t, func(t *testing.T, disable bool) {
		release := make(chan struct{})
		up := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/trickle" {
				w.Write([]byte("ok"))
				return
			}
			w.Header().Set("Content-Length", "4")
			w.Write([]byte("ab"))
			w.(http.Flusher).Flush()
			select { // the rest once the client has the head
			case <-release:
			case <-time.After(10 * time.Second):
			}
			w.Write([]byte("cd"))
		}))
		f := newFront(t, Options{DisableLoops: disable, RouteTimeout: time.Minute}, up.addrPort())
		c, br := f.raw(t)
		toLoop(t, c, br)
		if !disable {
			waitOnLoop(t, f.p)
		}
		io.WriteString(c, "GET /trickle HTTP/1.1\r\nHost: a\r\n\r\n")
		c.SetReadDeadline(time.Now().Add(5 * time.Second)) // half the upstream's own wait
		res, err := http.ReadResponse(br, &http.Request{Method: "GET"})
		if err != nil {
			t.Fatalf("the head while the body trickles: %v", err)
		}
		close(release)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if b, err := io.ReadAll(res.Body); string(b) != "abcd" || err != nil {
			t.Fatalf("body %q, %v", b, err)
		}
		if body := roundTrips(t, c, br, getSmall, "GET", 1)[0]; body != "ok" {
			t.Fatalf("the next request: %q", body)
		}
	})
}

// TestLoopRefusesStatusOutOfRange: a response status outside 100–599
// that comes to a request a loop sent is refused as on the goroutine:
// 502, flag UPE, the upstream connection closed, the client's kept.
func TestLoopRefusesStatusOutOfRange(t *testing.T) {
	for _, status := range []string{"600", "999", "099"} {
		t.Run(status, func(t *testing.T) {
			withAndWithoutLoops(t, func(t *testing.T, disable bool) {
				var conns atomic.Int32
				dst := rawUpstream(t, func(c net.Conn) {
					conns.Add(1)
					br := bufio.NewReader(c)
					for i := 0; ; i++ {
						req, err := http.ReadRequest(br)
						if err != nil {
							return
						}
						if req.URL.Path == "/odd" {
							io.WriteString(c, "HTTP/1.1 "+status+" X\r\nContent-Length: 2\r\n\r\nok")
							continue
						}
						io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
					}
				})
				f := newFront(t, Options{DisableLoops: disable}, dst)
				c, br := f.raw(t)
				toLoop(t, c, br)
				for range loopAfter {
					f.info(t)
				}
				if !disable {
					waitOnLoop(t, f.p)
				}
				io.WriteString(c, "GET /odd HTTP/1.1\r\nHost: a\r\n\r\n")
				res, body := readResponse(t, br, "GET")
				if res.StatusCode != http.StatusBadGateway || !strings.Contains(body, "protocol error") {
					t.Fatalf("status %d, body %q; want 502 protocol error", res.StatusCode, body)
				}
				if i := f.info(t); i.Flags != UpstreamProtocolError {
					t.Errorf("flags %v, want UPE", i.Flags)
				}
				roundTrips(t, c, br, getSmall, "GET", 1)
				if n := conns.Load(); n != 2 {
					t.Errorf("upstream connections = %d, want 2 (the refused response's closed)", n)
				}
			})
		})
	}
}
