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
	"syscall"
	"testing"
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
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 2048) })
		return nil
	}}
	c, err := d.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
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
