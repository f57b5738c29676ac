package httpproxy

import (
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"
)

// downConn is a client connection with the addresses the interception
// learned; ServeHTTP finds it through the request context (ConnContext).
// Reads go through the framing guard (guard.go).
type downConn struct {
	net.Conn
	client, origDst netip.AddrPort
	clientIP        string // client.Addr() as text, for X-Forwarded-For
	g               *guard

	once sync.Once
	done chan struct{} // closed on the first Close
}

func (c *downConn) Read(p []byte) (int, error) { return c.g.read(c.Conn, p) }

// SetReadDeadline and SetDeadline also tell the guard, which may be holding
// a client's FIN back (guard.waitEOF).
func (c *downConn) SetReadDeadline(t time.Time) error {
	err := c.Conn.SetReadDeadline(t)
	c.g.setDeadline(t)
	return err
}

func (c *downConn) SetDeadline(t time.Time) error {
	err := c.Conn.SetDeadline(t)
	c.g.setDeadline(t)
	return err
}

// Close closes the connection and releases ServeConn. net/http closes it
// when it is done, and so does ReverseProxy after a hijacked upgrade.
//
// If the client's bytes are still unread (a refused request it is still
// sending), a plain close would answer them with a reset that can destroy
// our final response in the client's receive queue before it is read.
// Close then lingers instead (RFC 9112 9.6): FIN, drain the input for a
// while, and close in the background.
func (c *downConn) Close() error {
	var err error
	c.g.close()
	c.once.Do(func() {
		if sc, ok := c.Conn.(syscall.Conn); ok && unreadInput(sc) {
			c.CloseWrite()
			go func() {
				drain(c.Conn)
				c.Conn.Close()
				close(c.done)
			}()
			return
		}
		err = c.Conn.Close()
		close(c.done)
	})
	return err
}

// abort closes at once, cutting a lingering close short.
func (c *downConn) abort() {
	c.Conn.Close()
	c.Close()
}

// CloseWrite lets net/http send its FIN before hanging up after an error.
func (c *downConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
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
