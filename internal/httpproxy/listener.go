package httpproxy

import (
	"net"
	"net/netip"
	"sync"
)

// downConn is a client connection with the addresses the interception
// learned; ServeHTTP finds it through the request context (ConnContext).
type downConn struct {
	net.Conn
	client, origDst netip.AddrPort

	once sync.Once
	done chan struct{} // closed on the first Close
}

// Close closes the connection and releases ServeConn. net/http closes it
// when it is done, and so does ReverseProxy after a hijacked upgrade.
func (c *downConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { close(c.done) })
	return err
}

// chanListener is the net.Listener the internal http.Server accepts from:
// ServeConn hands connections in through a channel.
type chanListener struct {
	ch   chan net.Conn
	once sync.Once
	done chan struct{}
}

func newChanListener() *chanListener {
	return &chanListener{ch: make(chan net.Conn), done: make(chan struct{})}
}

// hand passes c to Accept; false if the listener is closed.
func (l *chanListener) hand(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return memAddr{} }

type memAddr struct{}

func (memAddr) Network() string { return "memory" }
func (memAddr) String() string  { return "detour-l7" }
