package httpproxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/detour-proxy/detour/internal/upstream"
)

// fastConns counts the fast-path connections being served.
func fastConns(p *Proxy) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.fast)
}

// closedPooled counts the pooled fast-path connections whose socket is
// closed, and returns the number pooled.
func closedPooled(p *Proxy) (closed, pooled int) {
	c := p.hosts
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, h := range c.hosts {
		for _, l := range h.links {
			pooled++
			if l.rc.Control(func(uintptr) {}) != nil {
				closed++
			}
		}
	}
	return closed, pooled
}

// TestAbortAtResponseEndNotPooled checks Close's abort coming as a
// response has ended, before done takes the upstream connection back (the
// window opened by a hook): abort closes that connection, and done must
// then close it for good, not pool it, where the next request's peek
// (alive) or a loop would use a descriptor number the kernel may have
// given to another socket.
func TestAbortAtResponseEndNotPooled(t *testing.T) {
	up := loopUpstream(t)
	var once sync.Once
	f := newHookedFront(t, Options{}, up.addrPort(), testHooks{
		beforeDone: func(fc *fastConn) { once.Do(fc.abort) },
	})
	c, br := f.raw(t)
	roundTrips(t, c, br, getSmall, "GET", 1)
	expectEOF(t, br)
	eventually(t, "the client connection done", func() bool { return fastConns(f.p) == 0 })
	if closed, pooled := closedPooled(f.p); closed != 0 || pooled != 0 {
		t.Errorf("pooled connections: %d, %d of them closed; want none", pooled, closed)
	}
	if hs := f.p.Hosts(); len(hs) != 1 || hs[0].Open != 0 {
		t.Errorf("hosts %+v; want one, with no connection open", hs)
	}
	eventually(t, "the upstream connection closed", func() bool { return up.closed.Load() == 1 })
}

// TestAbortBeforeSendEndsAtOnce checks Close's abort coming while a
// request's upstream connection is made, before it is in cur, where abort
// closes it (the window opened by a hook): the request must not go on
// waiting for the upstream's answer (here never, and RouteTimeout is an
// hour), holding Close and its connection.
func TestAbortBeforeSendEndsAtOnce(t *testing.T) {
	up := loopUpstream(t)
	var once sync.Once
	f := newHookedFront(t, Options{RouteTimeout: time.Hour}, up.addrPort(), testHooks{
		beforeSendOn: func(fc *fastConn, _ *upLink) { once.Do(fc.abort) },
	})
	c, br := f.raw(t)
	io.WriteString(c, "GET /hang HTTP/1.1\r\nHost: a\r\n\r\n")
	expectEOF(t, br)
	eventually(t, "the client connection done", func() bool { return fastConns(f.p) == 0 })
	eventually(t, "the upstream connection closed", func() bool { return up.closed.Load() == 1 })
	if hs := f.p.Hosts(); len(hs) != 1 || hs[0].Open != 0 || hs[0].Active != 0 {
		t.Errorf("hosts %+v; want one, with nothing open or in flight", hs)
	}
}

// TestCloseDropsBusyHostsIdleConns checks that Close closes the idle
// connections of a host with a request still in flight (a net/http
// handler whose client Close cut may run on a moment after Close's wait
// ends): nothing would close them later, no janitor runs any more, and a
// pooled connection nobody reads stays open, past the upstream's close,
// for the life of the process.
func TestCloseDropsBusyHostsIdleConns(t *testing.T) {
	up := loopUpstream(t)
	f := newFront(t, Options{}, up.addrPort())
	c, br := f.raw(t)
	roundTrips(t, c, br, getSmall, "GET", 1)
	c.Close()
	eventually(t, "the upstream connection pooled", func() bool {
		hs := f.p.Hosts()
		return len(hs) == 1 && hs[0].Active == 0 && hs[0].Idle == 1 && fastConns(f.p) == 0
	})
	h := f.p.hosts.acquire(f.p.hostKey(netip.AddrPort{}, up.addrPort())) // a request in flight
	f.p.Close()
	f.p.hosts.release(h)
	eventually(t, "the pooled connection closed", func() bool { return up.closed.Load() == 1 })
	if n := h.open.Load(); n != 0 {
		t.Errorf("host's open connections = %d, want 0", n)
	}
}

// idleFast waits until the one fast-path connection waits for a request
// on its goroutine.
func idleFast(t *testing.T, p *Proxy) {
	t.Helper()
	eventually(t, "the connection idle on its goroutine", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		for fc := range p.fast {
			return fc.idle.Load()
		}
		return false
	})
}

// TestLingerAsksOpenSocketOnly checks that the lingering close asks the
// client socket's descriptor for unread bytes only while the socket is
// open: after Close's abort closed it (on the goroutine), or after the
// goroutine closed it for abort (a loop's hand-back), the number may be
// another socket's. A client that closes itself is asked, open.
func TestLingerAsksOpenSocketOnly(t *testing.T) {
	for _, tc := range []struct {
		name      string
		requests  int
		close     bool // the proxy's Close ends the connection, not the client
		wantAsked bool
	}{
		{"client closes", 1, false, true},
		{"Close, idle on the goroutine", 1, true, false},
		{"Close, idle on a loop", loopAfter, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var asked, askedClosed atomic.Int32
			up := loopUpstream(t)
			f := newHookedFront(t, Options{}, up.addrPort(), testHooks{inQueue: func(fc *fastConn) {
				asked.Add(1)
				if fc.rc.Control(func(uintptr) {}) != nil {
					askedClosed.Add(1)
				}
			}})
			c, br := f.raw(t)
			for range tc.requests {
				roundTrips(t, c, br, getSmall, "GET", 1)
			}
			if tc.requests >= loopAfter {
				waitOnLoop(t, f.p)
			} else {
				idleFast(t, f.p)
			}
			if tc.close {
				f.p.Close()
				expectEOF(t, br)
			} else {
				c.Close()
			}
			eventually(t, "the client connection done", func() bool { return fastConns(f.p) == 0 })
			if n := askedClosed.Load(); n != 0 {
				t.Errorf("asked a closed socket's descriptor %d times", n)
			}
			if got := asked.Load() > 0; got != tc.wantAsked {
				t.Errorf("asked: %v, want %v", got, tc.wantAsked)
			}
		})
	}
}

// TestLoopPartialWriteNotCounted checks that a response a loop could
// write only in part (the client reads slowly), whose end the goroutine
// wrote, is not counted as served by a loop (OnLoop), while one the loop
// wrote whole is.
func TestLoopPartialWriteNotCounted(t *testing.T) {
	body := strings.Repeat("x", 7600) // the response fits the loop's buffer, not the sockets'
	up := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/mid" {
			w.Header().Set("Content-Length", fmt.Sprint(len(body))) // not chunked
			io.WriteString(w, body)
			return
		}
		io.WriteString(w, "ok")
	}))
	f := newFront(t, Options{}, up.addrPort())
	c := dialSmallReceiveBuffer(t, f.addr)
	br := bufio.NewReader(c)
	toLoop(t, c, br)
	waitOnLoop(t, f.p)
	roundTrips(t, c, br, getSmall, "GET", 1) // on the loop, whole
	f.p.mu.Lock()
	for fc := range f.p.fast {
		syscall.SetsockoptInt(fc.fd, syscall.SOL_SOCKET, syscall.SO_SNDBUF, 1) // the kernel's least
	}
	f.p.mu.Unlock()
	io.WriteString(c, "GET /mid HTTP/1.1\r\nHost: a\r\n\r\n")
	// Not read yet: the loop hands the rest of the response to the goroutine.
	eventually(t, "the response handed back unwritten", func() bool { return onLoopNow(f.p) == 0 })
	if got := roundTrips(t, c, br, "", "GET", 1); got[0] != body {
		t.Fatalf("echo: %d bytes", len(got[0]))
	}
	if n := servedOnLoop(f.p); n != 1 {
		t.Errorf("requests a loop served whole = %d, want 1", n)
	}
}

// stressUpstream answers HTTP/1.1 requests, and at random closes the
// connection instead of answering (a pooled connection the upstream
// dropped as it was reused), after answering, or halfway through a body.
func stressUpstream(t *testing.T, seed uint64) (addr netip.AddrPort, stop func()) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	rng := rand.New(rand.NewPCG(seed, 1))
	roll := func() int { mu.Lock(); defer mu.Unlock(); return rng.IntN(100) }
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(20 * time.Second))
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					io.Copy(io.Discard, req.Body)
					if strings.HasPrefix(req.URL.Path, "/slow") {
						time.Sleep(time.Duration(roll()*10) * time.Millisecond) // up to a second
					}
					size := 2
					if strings.HasPrefix(req.URL.Path, "/big") {
						size = 20 << 10
					}
					head := fmt.Sprintf("HTTP/1.1 200 OK\r\nX-Target: %s\r\nContent-Length: %d\r\n\r\n", req.RequestURI, size)
					body := strings.Repeat("x", size)
					if req.Method == "HEAD" {
						body = ""
					}
					switch r := roll(); {
					case r < 5: // closed as the request came
						return
					case r < 8: // a body cut short
						io.WriteString(c, head+body[:len(body)/2])
						return
					case r < 15: // answered, then closed
						io.WriteString(c, head+body)
						return
					}
					if _, err := io.WriteString(c, head+body); err != nil {
						return
					}
				}
			})
		}
	})
	return ln.Addr().(*net.TCPAddr).AddrPort(), func() { ln.Close(); wg.Wait() }
}

// stress runs clients against a proxy for d, with two upstreams that
// close connections at random (and answer some requests late), clients
// that reset at random, a short cleanup interval (the janitor removes
// hosts the loops and requests use) and a small pool, then shuts the
// proxy down while they still send, cutting what is still in flight
// after 200ms, and tears everything down.
func stress(t *testing.T, d time.Duration, clients int) {
	var dsts [2]netip.AddrPort
	var stops [2]func()
	for i := range dsts {
		dsts[i], stops[i] = stressUpstream(t, uint64(i))
	}
	p, err := New(Options{
		Dialer:              upstream.New(upstream.Options{ConnectTimeout: 2 * time.Second}),
		Logger:              panicCatcher(t),
		CleanupInterval:     30 * time.Millisecond,
		MaxIdleConnsPerHost: 4,
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	var serving sync.WaitGroup
	serving.Go(func() {
		for i := 0; ; i++ {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			serving.Go(func() {
				if !p.ServeConn(c, c.RemoteAddr().(*net.TCPAddr).AddrPort(), dsts[i%2], upstream.PreDial{}) {
					c.Close() // shut down: not taken, still ours
				}
			})
		}
	})
	var quit atomic.Bool
	var crossed atomic.Int32
	var cl sync.WaitGroup
	for i := range clients {
		cl.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(i), 2))
			for !quit.Load() {
				if stressConn(ln.Addr().String(), i, rng) {
					crossed.Add(1)
				}
				if rng.IntN(4) == 0 {
					time.Sleep(time.Duration(rng.IntN(150)) * time.Millisecond) // hosts go stale
				}
			}
		})
	}
	time.Sleep(d)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	p.Shutdown(ctx) // under load: what is in flight after 200ms is cut (abort)
	cancel()
	quit.Store(true)
	cl.Wait()
	ln.Close()
	serving.Wait()
	p.Close()
	for _, stop := range stops {
		stop()
	}
	if n := crossed.Load(); n > 0 {
		t.Errorf("%d responses answered another request than the one sent", n)
	}
}

// stressReqs are the requests stressConn sends: %s is a target unique
// to the request.
var stressReqs = []struct{ method, head string }{
	{"GET", "GET %s HTTP/1.1\r\nHost: a\r\n\r\n"},
	{"GET", "GET /big%s HTTP/1.1\r\nHost: a\r\n\r\n"}, // past the loops' buffer
	{"HEAD", "HEAD %s HTTP/1.1\r\nHost: a\r\n\r\n"},
	{"POST", "POST %s HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"},
	{"GET", "GET /slow%s HTTP/1.1\r\nHost: a\r\n\r\n"},                                   // in flight when Shutdown gives up
	{"GET", "GET %s HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"}, // the net/http path
}

// stressConn is one client connection: a few requests, each sent and
// read, or reset at random before or while its response comes. It
// reports whether a response answered another request than the one
// sent.
func stressConn(addr string, client int, rng *rand.Rand) (crossed bool) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	for range 1 + rng.IntN(8) {
		r := stressReqs[rng.IntN(len(stressReqs))]
		target := fmt.Sprintf("/c%d-%d", client, rng.Uint64())
		if _, err := fmt.Fprintf(c, r.head, target); err != nil {
			return false
		}
		if rng.IntN(10) == 0 {
			if rng.IntN(2) == 0 {
				br.Peek(1) // the response began
			}
			c.(*net.TCPConn).SetLinger(0)
			return false // a reset
		}
		res, err := http.ReadResponse(br, &http.Request{Method: r.method})
		if err != nil {
			return false
		}
		_, err = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if got := res.Header.Get("X-Target"); res.StatusCode == 200 && !strings.HasSuffix(got, target) {
			return true
		}
		if err != nil || res.Close {
			return false
		}
	}
	return false
}

// openFDs counts the process's open descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	return len(ents)
}

// TestStressNoLeak runs many clients that reset at random against
// upstreams that close at random, with hosts removed and recreated under
// them, and a Shutdown under load at the end: afterwards the process has
// no more descriptors or goroutines than before, and nothing hung.
func TestStressNoLeak(t *testing.T) {
	if testing.Short() {
		t.Skip("a few seconds of load")
	}
	stress(t, 300*time.Millisecond, 4) // starts the loops and fills the buffer pools, which stay
	fds, gs := openFDs(t), runtime.NumGoroutine()
	stress(t, 3*time.Second, 48)
	deadline := time.Now().Add(10 * time.Second)
	for {
		nf, ng := openFDs(t), runtime.NumGoroutine()
		if nf <= fds && ng <= gs {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("descriptors %d (before %d), goroutines %d (before %d):\n%s", nf, fds, ng, gs, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(50 * time.Millisecond)
	}
}
