package admin

import (
	"net"
	"net/http"
	"sync"
	"time"
)

// connLimit is the admin listener with a bound on open connections.
// When all are taken, a new connection closes the one idle longest
// between requests (HTTP allows closing a keep-alive connection then,
// and clients open another), as nginx reuses its idle keep-alive
// connections when it runs out: otherwise any local process could hold
// the bound with idle keep-alive connections, a request each under the
// idle timeout, and /ready probes, scrapes and `detour status` would
// wait in the backlog for as long as it liked. Only when none is idle
// (each has a request in flight, or has not sent one yet, which
// ReadHeaderTimeout bounds) does the new one wait until one closes.
type connLimit struct {
	net.Listener
	max int

	mu     sync.Mutex
	freed  *sync.Cond // a connection closed or turned idle, or the listener closed
	open   int
	idle   map[*limitedConn]time.Time // since when each idle connection is idle
	closed bool
}

func newConnLimit(ln net.Listener, max int) *connLimit {
	l := &connLimit{Listener: ln, max: max, idle: make(map[*limitedConn]time.Time)}
	l.freed = sync.NewCond(&l.mu)
	return l
}

// Accept returns the next connection once it may be served: there is
// room, or the connection idle longest was closed to make it.
func (l *connLimit) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	for l.open >= l.max && !l.closed {
		if victim := l.oldestIdleLocked(); victim != nil {
			delete(l.idle, victim)
			l.mu.Unlock()
			victim.Close() // its release frees the room
			l.mu.Lock()
			continue
		}
		l.freed.Wait()
	}
	if l.closed {
		l.mu.Unlock()
		c.Close()
		return nil, net.ErrClosed
	}
	l.open++
	l.mu.Unlock()
	return &limitedConn{Conn: c, l: l}, nil
}

// Close closes the listener and ends an Accept waiting for room.
func (l *connLimit) Close() error {
	l.mu.Lock()
	l.closed = true
	l.freed.Broadcast()
	l.mu.Unlock()
	return l.Listener.Close()
}

func (l *connLimit) oldestIdleLocked() *limitedConn {
	var oldest *limitedConn
	var since time.Time
	for c, t := range l.idle {
		if oldest == nil || t.Before(since) {
			oldest, since = c, t
		}
	}
	return oldest
}

// connState is the http.Server's ConnState hook: it keeps track of which
// connections are idle between requests.
func (l *connLimit) connState(nc net.Conn, st http.ConnState) {
	c, ok := nc.(*limitedConn)
	if !ok {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if st == http.StateIdle && !c.released {
		l.idle[c] = time.Now()
		l.freed.Broadcast() // a waiting Accept may close it
		return
	}
	delete(l.idle, c)
}

// count is the number of open connections.
func (l *connLimit) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open
}

// limitedConn gives its room back when it is closed (once, however often
// Close is called).
type limitedConn struct {
	net.Conn
	l        *connLimit
	released bool // under l.mu
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.l.mu.Lock()
	if !c.released {
		c.released = true
		c.l.open--
		delete(c.l.idle, c)
		c.l.freed.Broadcast()
	}
	c.l.mu.Unlock()
	return err
}
