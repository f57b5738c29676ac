package httpproxy

import (
	"sync"
	"sync/atomic"
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
