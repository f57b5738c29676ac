package listen

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/detour-proxy/detour/internal/rawsys"
)

// rawAccept is AcceptRaw's state, bound once per listener. Go's
// TCPListener does not wait in its RawConn (Read is EINVAL there), so
// AcceptRaw waits on a duplicate of the listening socket held as an
// os.File, which Go's poller takes; Listener.Close closes both.
type rawAccept struct {
	mu     sync.Mutex
	file   *os.File
	closed bool

	rc  syscall.RawConn
	fn  func(uintptr) bool // step
	fd  int
	sa  [unix.SizeofSockaddrInet6]byte
	n   int
	err error
}

// AcceptRaw is Accept for a caller that serves the connection in an event
// loop of its own (tcpproxy's, for protocol tcp): the accepted socket
// stays a bare non-blocking descriptor (Conn.FD; Conn.TCPConn is nil),
// which the caller owns and closes (Conn.Close, Conn.Reset). A net.TCPConn
// would add the socket to Go's poller and take it out again on close, and
// Go makes accept4, getsockname, the TCP_NODELAY setsockopt and close
// through its scheduler's system-call path, which on a slow virtual
// machine hands the processor to another thread whenever one takes a
// little long; here they are raw system calls (rawsys). The wait for the
// next connection is still Go's poller's. Only one goroutine may call
// AcceptRaw at a time.
func (l *Listener) AcceptRaw() (*Conn, error) {
	a := &l.raw
	if a.fn == nil {
		if err := a.open(l.ln); err != nil {
			return nil, err
		}
	}
	a.fd, a.err = -1, nil
	if err := a.rc.Read(a.fn); err != nil {
		// The only way the wait ends without a connection: Close.
		return nil, fmt.Errorf("accept: %w (%v)", net.ErrClosed, err)
	}
	if a.err != nil {
		return nil, a.err
	}
	c := &Conn{FD: a.fd}
	c.Client, _ = DecodeSockaddr(a.sa[:a.n])
	// As Go does for every TCP connection: no Nagle delay on small writes.
	rawsys.SetsockoptInt(c.FD, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	local, err := LocalAddr(c.FD)
	if err != nil {
		c.Reset()
		return nil, err
	}
	return c, l.learn(c, local, func() (netip.AddrPort, string, error) { return originalDst(c.FD, local.Addr().Is6()) })
}

// open makes the duplicate AcceptRaw waits on.
func (a *rawAccept) open(ln *net.TCPListener) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return fmt.Errorf("accept: %w", net.ErrClosed)
	}
	rc, err := ln.SyscallConn()
	if err != nil {
		return err
	}
	dup, derr := -1, error(nil)
	if err := rc.Control(func(fd uintptr) { dup, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return err
	}
	if derr != nil {
		return os.NewSyscallError("fcntl", derr)
	}
	a.file = os.NewFile(uintptr(dup), "listener") // non-blocking, as the original: in Go's poller
	if a.rc, err = a.file.SyscallConn(); err != nil {
		a.file.Close()
		return err
	}
	a.fn = a.step
	return nil
}

// close closes the duplicate, ending a wait in AcceptRaw.
func (a *rawAccept) close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.closed = true
	if a.file != nil {
		a.file.Close()
	}
}

func (a *rawAccept) step(fd uintptr) bool {
	for {
		nfd, n, err := rawsys.Accept4(int(fd), a.sa[:], unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		switch err {
		case unix.EINTR, unix.ECONNABORTED:
			continue // as Go's accept: a connection reset while queued is skipped
		case unix.EAGAIN:
			return false
		case nil:
			a.fd, a.n = nfd, n
		default:
			a.err = os.NewSyscallError("accept4", err)
		}
		return true
	}
}

// LocalAddr is a bare socket's local address (IPv4-mapped addresses
// unmapped, as everywhere in detour).
func LocalAddr(fd int) (netip.AddrPort, error) {
	var b [unix.SizeofSockaddrInet6]byte
	n, err := rawsys.Getsockname(fd, b[:])
	if err != nil {
		return netip.AddrPort{}, os.NewSyscallError("getsockname", err)
	}
	return DecodeSockaddr(b[:n])
}

// originalDst reads a redirected socket's destination from conntrack.
func originalDst(fd int, is6 bool) (netip.AddrPort, string, error) {
	level, how := unix.SOL_IP, HowOriginalDst
	if is6 {
		level, how = unix.SOL_IPV6, HowOriginalDst6
	}
	var b [unix.SizeofSockaddrInet6]byte
	// SO_ORIGINAL_DST and IP6T_SO_ORIGINAL_DST share the number 80.
	n, err := rawsys.Getsockopt(fd, level, unix.SO_ORIGINAL_DST, b[:])
	if err != nil {
		return netip.AddrPort{}, how, fmt.Errorf("getsockopt %s: %w", how, err)
	}
	dst, err := DecodeSockaddr(b[:n])
	return dst, how, err
}

// Close closes the connection.
func (c *Conn) Close() error {
	if c.TCPConn != nil {
		return c.TCPConn.Close()
	}
	return rawsys.Close(c.FD)
}

// Reset closes the connection with a reset (SO_LINGER 0), as a refused
// connect would have.
func (c *Conn) Reset() {
	if c.TCPConn != nil {
		c.TCPConn.SetLinger(0)
		c.TCPConn.Close()
		return
	}
	rawsys.SetLinger0(c.FD)
	rawsys.Close(c.FD)
}
