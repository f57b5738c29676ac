package httpproxy

import (
	"sync"
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
