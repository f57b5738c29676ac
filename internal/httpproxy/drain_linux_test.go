package httpproxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// servingWays are the three ways a request is served: the fast path on
// the connection's goroutine, the same on the L4 loops (from a
// connection's third request), and net/http.
var servingWays = []struct {
	name string
	o    Options
	loop bool
}{
	{"goroutine", Options{DisableLoops: true}, false},
	{"loops", Options{}, true},
	{"net/http", Options{DisableFastPath: true}, false},
}

// hangSent is what /hang sends of its body, half of it: more than a loop
// takes, so the goroutine relays it at once.
const hangSent = 16 << 10

// drainUpstream answers /small "ok", /hang the head and half of its body
// and the rest never,
// and /stream "ab": it tells got, sends the head and "a" (when early), waits
// for release, then sends the head (when not early) and "b"; with chunked,
// the body is chunked, else it has a Content-Length.
func drainUpstream(t *testing.T, got chan<- string, release <-chan struct{}, early, chunked bool) *upstreamServer {
	return newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case got <- r.URL.Path:
		default:
		}
		switch r.URL.Path {
		case "/hang": // a download that never ends
			w.Header().Set("Content-Length", strconv.Itoa(2*hangSent))
			w.Write(make([]byte, hangSent))
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		case "/stream":
			if !chunked {
				w.Header().Set("Content-Length", "2")
			}
			if early {
				w.Write([]byte("a"))
				w.(http.Flusher).Flush()
			}
			<-release
			if !early {
				w.Write([]byte("a"))
				w.(http.Flusher).Flush()
				time.Sleep(50 * time.Millisecond) // a slow body: "b" comes later
			}
			w.Write([]byte("b"))
		default:
			w.Write([]byte("ok"))
		}
	}))
}

// onLoops waits until n fast-path connections are served by a loop.
func onLoops(t *testing.T, p *Proxy, n int) {
	t.Helper()
	eventually(t, fmt.Sprintf("%d connections on a loop", n), func() bool { return onLoopNow(p) == n })
}

// stillOpen asserts that c is open: a short read times out.
func stillOpen(t *testing.T, what string, c net.Conn, br *bufio.Reader) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	_, err := br.ReadByte()
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("%s: read %v, want it still open", what, err)
	}
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
}

// closedSoon asserts that c closes within 3 s.
func closedSoon(t *testing.T, what string, c net.Conn, br *bufio.Reader) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if b, err := br.ReadByte(); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("%s: read %q %v; want it closed at once", what, b, err)
	}
}

// TestDrain checks the drain (Shutdown) on each serving way with real
// sockets: an idle keep-alive connection and one that sent nothing yet
// are closed at once; a request in flight finishes whole (a slow body,
// chunked or with a Content-Length; its head sent before or after the
// drain began), with Connection: close when its head comes after, and the
// connection closes after it without answering the request pipelined
// behind it; its upstream connection is closed, not pooled; a request
// that does not finish is not cut until the drain period ends, and then
// is, recorded with flag DT.
func TestDrain(t *testing.T) {
	for _, way := range servingWays {
		for _, tc := range []struct {
			name           string
			early, chunked bool
		}{
			{"head after, content-length", false, false},
			{"head after, chunked", false, true},
			{"head before, content-length", true, false},
			{"head before, chunked", true, true},
		} {
			t.Run(way.name+"/"+tc.name, func(t *testing.T) {
				got, release := make(chan string, 16), make(chan struct{})
				var once sync.Once
				t.Cleanup(func() { once.Do(func() { close(release) }) })
				up := drainUpstream(t, got, release, tc.early, tc.chunked)
				f := newFront(t, way.o, up.addrPort())

				hang, hangR := f.raw(t)
				if way.loop {
					toLoop(t, hang, hangR)
					onLoops(t, f.p, 1)
				}
				io.WriteString(hang, "GET /hang HTTP/1.1\r\nHost: a\r\n\r\n")
				hangRes, err := http.ReadResponse(hangR, &http.Request{Method: "GET"})
				if err != nil {
					t.Fatal(err)
				}
				if _, err := io.ReadFull(hangRes.Body, make([]byte, hangSent)); err != nil {
					t.Fatal(err)
				}
				idle, idleR := f.raw(t)
				roundTrips(t, idle, idleR, getSmall, "GET", 1)
				fresh, freshR := f.raw(t)
				stream, streamR := f.raw(t)
				if way.loop {
					toLoop(t, stream, streamR)
					onLoops(t, f.p, 1) // hang's large response went back to its goroutine
				}
				io.WriteString(stream, "GET /stream HTTP/1.1\r\nHost: a\r\n\r\n"+getSmall)
				for <-got != "/stream" {
				}
				eventually(t, "the requests counted", func() bool {
					n := 0
					for _, h := range f.p.Hosts() {
						n += int(h.Active)
					}
					return n == 2
				})
				// Every fresh connection is being served before the drain.
				eventually(t, "the fresh connection served", func() bool {
					f.p.mu.Lock()
					defer f.p.mu.Unlock()
					return len(f.p.fast)+len(f.p.live) == 4
				})

				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				shut := make(chan error, 1)
				go func() { shut <- f.p.Shutdown(ctx) }()

				// At once: well before net/http's 5 s for a connection that
				// has not sent its first request.
				closedSoon(t, "the idle connection", idle, idleR)
				closedSoon(t, "the connection that sent nothing", fresh, freshR)
				once.Do(func() { close(release) })
				res, err := http.ReadResponse(streamR, &http.Request{Method: "GET"})
				if err != nil {
					t.Fatal(err)
				}
				if !tc.early && !res.Close {
					t.Errorf("response head %v, want Connection: close", res.Header)
				}
				if b, err := io.ReadAll(res.Body); err != nil || string(b) != "ab" {
					t.Fatalf("body %q, %v; want \"ab\" whole", b, err)
				}
				if res.Close {
					expectEOF(t, streamR)
				} else if _, err := streamR.Peek(1); err != nil {
					if !errors.Is(err, io.EOF) {
						t.Errorf("after the response: %v; want EOF or a whole response", err)
					}
				} else if next, err := http.ReadResponse(streamR, &http.Request{Method: "GET"}); err == nil {
					// The pipelined request may be served, whole, saying close.
					b, err := io.ReadAll(next.Body)
					if err != nil || string(b) != "ok" || !next.Close {
						t.Errorf("pipelined response %q %v, close %v; want \"ok\" saying Connection: close", b, err, next.Close)
					}
					expectEOF(t, streamR)
				} else {
					t.Errorf("after the response: %v; want EOF or a whole response", err)
				}
				eventually(t, "upstream connections but the hanging one's closed", func() bool {
					return up.accepted.Load()-up.closed.Load() == 1
				})
				stillOpen(t, "the request in flight", hang, hangR)
				select {
				case err := <-shut:
					t.Fatalf("Shutdown returned %v with a request in flight", err)
				default:
				}

				cancel() // the drain period ends
				if err := <-shut; err == nil {
					t.Error("Shutdown returned nil; want the drain's end")
				}
				if _, err := io.ReadAll(hangRes.Body); err == nil {
					t.Error("the request in flight was not cut")
				}
				var hangInfo *RequestInfo
				for hangInfo == nil {
					i := f.info(t)
					if i.Path == "/hang" {
						hangInfo = &i
					}
				}
				if hangInfo.Flags != DrainTimeout {
					t.Errorf("record of the cut request: flags %v; want DT", hangInfo.Flags)
				}
			})
		}
	}
}

// TestDrainBusyClient checks a client that keeps sending requests on its
// keep-alive connection when the drain begins: it gets at most the
// response in flight and one more, the last saying Connection: close,
// then the connection closes, and the drain ends without waiting for
// its period.
func TestDrainBusyClient(t *testing.T) {
	for _, way := range servingWays {
		t.Run(way.name, func(t *testing.T) {
			up := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
			f := newFront(t, way.o, up.addrPort())
			c, br := f.raw(t)
			if way.loop {
				toLoop(t, c, br)
				onLoops(t, f.p, 1)
			}
			stop := make(chan struct{})
			sent := make(chan int, 1)
			go func() { // pipelines requests until the connection fails
				n := 0
				defer func() { sent <- n }()
				for {
					select {
					case <-stop:
						return
					default:
					}
					if _, err := io.WriteString(c, strings.Repeat(getSmall, 4)); err != nil {
						return
					}
					n += 4
				}
			}()
			for range 20 {
				roundTrips(t, c, br, "", "GET", 1)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			shut := make(chan error, 1)
			go func() { shut <- f.p.Shutdown(ctx) }()
			closed := false
			for n := 0; ; n++ {
				res, err := http.ReadResponse(br, &http.Request{Method: "GET"})
				if err != nil {
					if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !strings.Contains(err.Error(), "reset") {
						t.Fatalf("response %d: %v", n, err)
					}
					break
				}
				b, err := io.ReadAll(res.Body)
				if err != nil || string(b) != "ok" {
					t.Fatalf("response %d: %q %v; want every response whole", n, b, err)
				}
				if closed {
					t.Fatalf("response %d after one that said Connection: close", n)
				}
				closed = res.Close
			}
			close(stop)
			<-sent
			select {
			case err := <-shut:
				if err != nil {
					t.Errorf("Shutdown: %v; want the drain done before its period", err)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("Shutdown still waits for a client that keeps sending")
			}
		})
	}
}

// TestDrainPartialHead checks a request whose head is only partly
// received when the drain begins, on each serving way: it is in flight.
// Its connection stays open; completed, the request is answered with
// Connection: close and the connection closes after it, the drain ending
// without waiting for its period; never completed, the connection is cut
// at HeaderTimeout (recorded with flag HT) or at the drain's end,
// whichever comes first. On the net/http path the guard holds the head
// back, so net/http took the connection for idle: its Shutdown closed it,
// and would drop any request read after it began. "declined": after the
// drain began the client sends a byte the fast path does not take (obs-text),
// so that the fast path hands the unfinished head to net/http then: it
// closed the connection unanswered, and recorded no HT when it cut a head
// at HeaderTimeout itself.
func TestDrainPartialHead(t *testing.T) {
	const part = "GET /small HTTP/1.1\r\nHost: a\r\n"
	for _, way := range servingWays {
		for _, later := range []bool{false, true} {
			for _, declined := range []bool{false, true} {
				if declined && way.o.DisableFastPath {
					continue // nothing to hand over
				}
				for _, end := range []string{"completed", "header timeout", "drain end"} {
					name := way.name + "/first request"
					if later {
						name = way.name + "/later request"
					}
					if declined {
						name += "/declined"
					}
					t.Run(name+"/"+end, func(t *testing.T) {
						t.Parallel()
						drainPartialHead(t, way.o, way.loop, later, declined, end, part)
					})
				}
			}
		}
	}
}

// drainPartialHead is one case of TestDrainPartialHead.
func drainPartialHead(t *testing.T, o Options, loop, later, declined bool, end, part string) {
	up := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	o.HeaderTimeout = 10 * time.Second
	if end == "header timeout" {
		o.HeaderTimeout = 2 * time.Second
	}
	f := newFront(t, o, up.addrPort())
	c, br := f.raw(t)
	if later {
		if loop {
			toLoop(t, c, br)
			onLoops(t, f.p, 1)
		} else {
			roundTrips(t, c, br, getSmall, "GET", 1)
		}
	}
	if _, err := io.WriteString(c, part); err != nil {
		t.Fatal(err)
	}
	// Let the proxy read it: net/http's guard says so; the fast path is
	// given the time.
	if o.DisableFastPath {
		eventually(t, "the guard holding the head", func() bool { return f.p.receiving.Load() == 1 })
	} else {
		time.Sleep(300 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	shut := make(chan error, 1)
	go func() { shut <- f.p.Shutdown(ctx) }()
	stillOpen(t, "the connection receiving a head", c, br)
	rest := "\r\n"
	if declined {
		if _, err := io.WriteString(c, "X-O: caf\xe9"); err != nil {
			t.Fatal(err)
		}
		stillOpen(t, "the connection whose head went to net/http", c, br)
		rest = "\r\n\r\n"
	}
	switch end {
	case "completed":
		if _, err := io.WriteString(c, rest); err != nil {
			t.Fatal(err)
		}
		res, err := http.ReadResponse(br, &http.Request{Method: "GET"})
		if err != nil {
			t.Fatalf("no response: %v", err)
		}
		b, err := io.ReadAll(res.Body)
		if res.StatusCode != http.StatusOK || string(b) != "ok" || err != nil || !res.Close {
			t.Errorf("response %d %q %v, close %v; want 200 \"ok\" saying Connection: close", res.StatusCode, b, err, res.Close)
		}
		expectEOF(t, br)
	case "header timeout":
		if b, err := io.ReadAll(br); len(b) > 0 || err != nil {
			t.Errorf("read %q %v; want the close without a response", b, err)
		}
		recordedHT(t, f)
	case "drain end":
		stillOpen(t, "the connection receiving a head", c, br)
		cancel()
		closedSoon(t, "the connection at the drain's end", c, br)
		if err := <-shut; err == nil {
			t.Error("Shutdown returned nil; want the drain's end")
		}
		return
	}
	select {
	case err := <-shut:
		if err != nil {
			t.Errorf("Shutdown: %v; want the drain done before its period", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Shutdown still waits after the connection closed")
	}
}

// recordedHT asserts that a request was recorded with flag HT and status
// 0, past the records of the requests served before it.
func recordedHT(t *testing.T, f *front) {
	t.Helper()
	for {
		select {
		case i := <-f.infos:
			if i.Flags&RequestHeaderTimeout == 0 {
				continue
			}
			if i.Flags != RequestHeaderTimeout || i.Status != 0 {
				t.Errorf("record %+v; want flag HT alone, status 0", i)
			}
			return
		case <-time.After(10 * time.Second):
			t.Error("no record with flag HT")
			return
		}
	}
}

// TestDrainH2CGoAway checks that an h2c (prior-knowledge HTTP/2)
// connection gets its GOAWAY when the drain begins, as net/http's
// Shutdown sends it, while another connection still receives an HTTP/1
// head (net/http's Shutdown waits for it), and that its stream in flight
// finishes. The GOAWAY came only once no head was being received: at
// HeaderTimeout, here two minutes.
func TestDrainH2CGoAway(t *testing.T) {
	for _, way := range []struct {
		name string
		o    Options
	}{{"fast path first", Options{}}, {"net/http", Options{DisableFastPath: true}}} {
		t.Run(way.name, func(t *testing.T) {
			t.Parallel()
			got, release := make(chan struct{}, 1), make(chan struct{})
			var releaseOnce sync.Once
			free := func() { releaseOnce.Do(func() { close(release) }) }
			up := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				got <- struct{}{}
				<-release
				io.WriteString(w, "done")
			}))
			t.Cleanup(free) // before the upstream's Close, which waits for the handler
			o := way.o
			o.HeaderTimeout, o.RouteTimeout = 2*time.Minute, 5*time.Minute
			f := newFront(t, o, up.addrPort())
			h1, h1r := f.raw(t)
			if _, err := io.WriteString(h1, "GET /small HTTP/1.1\r\nHost: a\r\n"); err != nil {
				t.Fatal(err)
			}
			h2 := newH2CClient(t, f)
			h2.get(t, 1, "/slow")
			select {
			case <-got:
			case <-time.After(10 * time.Second):
				t.Fatal("the h2c request did not reach the upstream")
			}
			if o.DisableFastPath {
				eventually(t, "the guard holding the head", func() bool { return f.p.receiving.Load() == 1 })
			} else {
				time.Sleep(300 * time.Millisecond) // the fast path reads the head
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			shut := make(chan error, 1)
			go func() { shut <- f.p.Shutdown(ctx) }()
			if last, ok := h2.awaitGoAway(t); !ok || last < 1 {
				cancel() // the drain's end, for the cleanup
				t.Fatalf("GOAWAY %v, last stream %d; want one at once, the stream in flight below its last", ok, last)
			}
			stillOpen(t, "the connection receiving an HTTP/1 head", h1, h1r)
			free()
			if status, body := h2.response(t, 1); status != "200" || body != "done" {
				t.Errorf("h2c response %s %q; want 200 \"done\"", status, body)
			}
			io.WriteString(h1, "\r\n")
			if res, body := readResponse(t, h1r, "GET"); res.StatusCode != http.StatusOK || !res.Close {
				t.Errorf("HTTP/1 response %d %q close %v; want 200 with Connection: close", res.StatusCode, body, res.Close)
			}
			select {
			case err := <-shut:
				if err != nil {
					t.Errorf("Shutdown: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("Shutdown still waits")
			}
		})
	}
}
