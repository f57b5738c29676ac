// Package listen accepts intercepted TCP connections and learns where each
// one was going.
//
// In tproxy mode the listening socket is transparent (IP_TRANSPARENT), the
// kernel hands it connections addressed to anyone, and an accepted socket's
// local address is the original destination. In redirect mode NAT rewrote
// the destination to the listener, and the original one is read back from
// conntrack with SO_ORIGINAL_DST (IP6T_SO_ORIGINAL_DST for IPv6).
//
//	ln, err := listen.Listen(listen.Options{Mode: listen.ModeTProxy, Addr: netip.MustParseAddrPort("0.0.0.0:15001")})
//	for {
//		c, err := ln.Accept()
//		if errors.Is(err, listen.ErrNotIntercepted) { continue } // c was closed already
//		go handle(c.TCPConn, c.Client, c.OrigDst)
//	}
//
// AcceptRaw is Accept for an event loop of the caller's own: the socket
// stays a bare descriptor (Conn.FD) and never enters Go's poller.
package listen

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// Mode is how connections reach the listener.
type Mode string

const (
	ModeTProxy   Mode = "tproxy"
	ModeRedirect Mode = "redirect"
)

// How the original destination was learned, for logs and `detour origdst`.
const (
	HowLocalAddr      = "tproxy: accepted socket's local address"
	HowOriginalDst    = "SO_ORIGINAL_DST"
	HowOriginalDst6   = "IP6T_SO_ORIGINAL_DST"
	HowNotIntercepted = "none"
)

// ErrNotIntercepted means an accepted connection reached the listener
// without going through an interception rule, so it has no original
// destination to forward to.
var ErrNotIntercepted = errors.New("connection was not redirected: no original destination")

// Options configures a Listener.
type Options struct {
	Mode Mode
	Addr netip.AddrPort
	// Backlog is the accept queue length; zero uses the kernel's somaxconn.
	Backlog int
}

// Conn is an accepted connection with its original destination: a
// *net.TCPConn from Accept, or a bare descriptor (FD) from AcceptRaw.
type Conn struct {
	*net.TCPConn // nil for AcceptRaw's
	FD           int
	Client       netip.AddrPort
	OrigDst      netip.AddrPort
	How          string
}

// Listener accepts intercepted connections.
type Listener struct {
	ln   *net.TCPListener
	mode Mode
	addr netip.AddrPort
	raw  rawAccept // AcceptRaw's state
}

// Addr is the listener's bound address (with the real port if 0 was asked).
func (l *Listener) Addr() netip.AddrPort { return l.addr }

// Mode is the listener's interception mode.
func (l *Listener) Mode() Mode { return l.mode }

// TCPListener exposes the socket, for deadlines and fd counting.
func (l *Listener) TCPListener() *net.TCPListener { return l.ln }

// Close stops accepting.
func (l *Listener) Close() error {
	l.raw.close()
	return l.ln.Close()
}

// Accept waits for the next connection. When the connection has no original
// destination, it is closed and returned together with ErrNotIntercepted so
// the caller can log it: its Client, and as OrigDst the address it was
// dialed at (the listener's); any other error comes from accept itself.
func (l *Listener) Accept() (*Conn, error) {
	c, err := l.ln.AcceptTCP()
	if err != nil {
		return nil, err
	}
	conn := &Conn{TCPConn: c, Client: addrPort(c.RemoteAddr())}
	return conn, l.learn(conn, addrPort(c.LocalAddr()), func() (netip.AddrPort, string, error) { return OriginalDst(c) })
}

// learn sets c's original destination: in tproxy mode its local address;
// in redirect mode what origDst reads from conntrack. A redirect-mode
// connection without one is closed and ErrNotIntercepted returned.
func (l *Listener) learn(c *Conn, local netip.AddrPort, origDst func() (netip.AddrPort, string, error)) error {
	switch l.mode {
	case ModeTProxy:
		c.OrigDst, c.How = local, HowLocalAddr
	case ModeRedirect:
		dst, how, err := origDst()
		if err != nil || dst == local {
			// No NAT entry, or conntrack saw no rewrite: the client dialed
			// the listener itself.
			c.OrigDst, c.How = local, HowNotIntercepted // where it was dialed, for the logs
			c.Close()
			if err == nil {
				return ErrNotIntercepted
			}
			return fmt.Errorf("%w (%v)", ErrNotIntercepted, err)
		}
		c.OrigDst, c.How = dst, how
	}
	return nil
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}
