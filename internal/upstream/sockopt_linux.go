package upstream

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/detour-proxy/detour/internal/rawsys"
)

// control sets the socket options of Go's dials (setOpts).
func (d *Dialer) control(network, _ string, rc syscall.RawConn) error {
	var serr error
	err := rc.Control(func(fd uintptr) { serr = d.setOpts(int(fd), network == "tcp6") })
	if err != nil {
		return err
	}
	return serr
}

// setOpts sets the socket options before connect: the mark for the loop
// exemption and, for spoofing, transparency so bind accepts a foreign
// address. IP_BIND_ADDRESS_NO_PORT defers the port choice to connect, so
// many upstream connections from one spoofed client IP don't exhaust ports.
func (d *Dialer) setOpts(s int, is6 bool) error {
	if d.opts.Mark != 0 {
		if err := rawsys.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_MARK, int(d.opts.Mark)); err != nil {
			return fmt.Errorf("set SO_MARK: %w (needs CAP_NET_ADMIN)", err)
		}
	}
	if !d.opts.SpoofSource {
		return nil
	}
	level, opt := unix.SOL_IP, unix.IP_TRANSPARENT
	if is6 {
		level, opt = unix.SOL_IPV6, unix.IPV6_TRANSPARENT
	}
	if err := rawsys.SetsockoptInt(s, level, opt, 1); err != nil {
		return fmt.Errorf("set IP_TRANSPARENT on upstream socket: %w (needs CAP_NET_ADMIN)", err)
	}
	_ = rawsys.SetsockoptInt(s, unix.SOL_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
	return nil
}

// Start begins a connect to dst on a new non-blocking socket and returns
// it, for a caller that completes the connect in an event loop of its own
// (tcpproxy's L4 loops wait for the socket to become writable and read
// SO_ERROR). The socket gets Dial's options — mark, source spoofing,
// TCP_NODELAY as Go sets it — but no keep-alive (EnableKeepAliveFD). A
// net.TCPConn from Dial costs four system calls more that such a caller
// does not need: adding the socket to Go's poller and removing it, and
// reading both addresses. An error is one the kernel reported at once
// (an unreachable network, say); the caller owns the descriptor
// otherwise, and closes it.
func (d *Dialer) Start(client, dst netip.AddrPort) (int, error) {
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	is6 := dst.Addr().Is6()
	fail := func(err error) (int, error) {
		return -1, &DialError{Dst: dst, Reason: Classify(err), Err: err}
	}
	family := unix.AF_INET
	if is6 {
		family = unix.AF_INET6
	}
	fd, err := rawsys.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fail(os.NewSyscallError("socket", err))
	}
	if err := d.start(fd, client, dst, is6); err != nil {
		rawsys.Close(fd)
		return fail(err)
	}
	return fd, nil
}

func (d *Dialer) start(fd int, client, dst netip.AddrPort, is6 bool) error {
	if err := d.setOpts(fd, is6); err != nil {
		return err
	}
	if d.opts.SpoofSource && client.IsValid() {
		src := netip.AddrPortFrom(client.Addr().Unmap(), 0)
		if src.Addr().Is6() != is6 {
			return fmt.Errorf("spoof source: client %s and destination %s are of different families", client, dst)
		}
		if err := unix.Bind(fd, sockaddr(src)); err != nil {
			return os.NewSyscallError("bind", err)
		}
	}
	if err := rawsys.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
		return os.NewSyscallError("setsockopt", err)
	}
	var err error
	if is6 {
		err = rawsys.Connect6(fd, dst.Addr().As16(), dst.Port())
	} else {
		err = rawsys.Connect4(fd, dst.Addr().As4(), dst.Port())
	}
	switch err {
	case nil, unix.EINPROGRESS, unix.EINTR: // EINTR: the connect goes on, as EINPROGRESS
		return nil
	default:
		return os.NewSyscallError("connect", err)
	}
}

// Connect is Start, then a wait in Go's poller for the connect's outcome,
// read as tcpproxy's loop reads it (ConnectOutcome): for a caller that
// watches the upstream while it decides where the connection goes (auto
// mode's connect while it sniffs). Go's own dial reads SO_ERROR too and
// fails on a reset, closing the socket: a server that accepts, writes and
// resets before the dial looks would lose its bytes and count as a failed
// connect, where the loop delivers them. f is the connected socket, in Go's
// poller, and the caller's to close; reset is not nil when the server
// reset it already (ConnectOutcome): f still holds what it sent.
func (d *Dialer) Connect(ctx context.Context, client, dst netip.AddrPort) (f *os.File, reset, err error) {
	fd, err := d.Start(client, dst)
	if err != nil {
		return nil, nil, err
	}
	f = os.NewFile(uintptr(fd), "tcp") // non-blocking: it goes into Go's poller
	reset, err = d.await(ctx, f)
	if err != nil {
		f.Close()
		return nil, nil, &DialError{Dst: dst, Reason: Classify(err), Err: err}
	}
	return f, reset, nil
}

// await waits until f's connect has an outcome, the connect timeout
// passes or ctx ends.
func (d *Dialer) await(ctx context.Context, f *os.File) (reset, err error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	f.SetWriteDeadline(time.Now().Add(d.opts.ConnectTimeout))
	stop := context.AfterFunc(ctx, func() { f.SetWriteDeadline(time.Unix(1, 0)) })
	defer stop()
	var cerr error
	// Called at once (the connect may be done: the poller's readiness from
	// registering the socket is cleared before the first call), then each
	// time the socket turns writable.
	werr := rc.Write(func(fd uintptr) bool {
		reset, cerr = ConnectOutcome(int(fd))
		if cerr != nil || reset != nil {
			return true
		}
		// No error: the connect is done once the socket has a peer; before
		// that it is still under way (or the poller woke spuriously).
		_, perr := unix.Getpeername(int(fd))
		return perr == nil
	})
	switch {
	case werr != nil && ctx.Err() != nil:
		return nil, ctx.Err()
	case werr != nil:
		return nil, fmt.Errorf("connect: %w", werr)
	}
	return reset, cerr
}

// ConnectOutcome reads how the non-blocking connect of fd (Start) ended,
// once the socket turned writable: nil when it is connected, or the
// connect's error. SO_ERROR ECONNRESET (or EPIPE) means the connect
// completed and the server reset the connection before anyone looked (a
// refused connect says ECONNREFUSED): the socket was connected, what the
// server sent first is still queued, and reset is the error SO_ERROR took
// from it, which a read after those bytes now reports as an end of stream
// instead.
func ConnectOutcome(fd int) (reset, err error) {
	n, err := rawsys.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	switch {
	case err != nil:
		return nil, os.NewSyscallError("getsockopt", err)
	case n == 0:
		return nil, nil
	case syscall.Errno(n) == unix.ECONNRESET, syscall.Errno(n) == unix.EPIPE:
		return os.NewSyscallError("read", unix.ECONNRESET), nil
	}
	return nil, os.NewSyscallError("connect", syscall.Errno(n))
}

func sockaddr(a netip.AddrPort) unix.Sockaddr {
	if a.Addr().Is4() {
		return &unix.SockaddrInet4{Addr: a.Addr().As4(), Port: int(a.Port())}
	}
	return &unix.SockaddrInet6{Addr: a.Addr().As16(), Port: int(a.Port())}
}

// EnableKeepAlive gives a connection without keep-alive (Connect's, or
// Start's, made a net.TCPConn) what Dial sets: most L4 connections end
// within seconds, and the four setsockopts are an eighth of the system
// calls of a new one, so they are set only where a connection lasts or is
// pooled.
func EnableKeepAlive(c *net.TCPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = EnableKeepAliveFD(int(fd)) }); err != nil {
		return err
	}
	return serr
}

// EnableKeepAliveFD gives a socket from Start what Dial sets.
func EnableKeepAliveFD(fd int) error {
	for _, o := range [4]struct{ level, opt, v int }{
		{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
		{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, int(KeepAlive.Idle / time.Second)},
		{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, int(KeepAlive.Interval / time.Second)},
		{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, KeepAlive.Count},
	} {
		if err := rawsys.SetsockoptInt(fd, o.level, o.opt, o.v); err != nil {
			return os.NewSyscallError("setsockopt", err)
		}
	}
	return nil
}
