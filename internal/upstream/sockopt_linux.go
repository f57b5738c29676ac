package upstream

import (
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

func sockaddr(a netip.AddrPort) unix.Sockaddr {
	if a.Addr().Is4() {
		return &unix.SockaddrInet4{Addr: a.Addr().As4(), Port: int(a.Port())}
	}
	return &unix.SockaddrInet6{Addr: a.Addr().As16(), Port: int(a.Port())}
}

// EnableKeepAlive gives a connection from DialNoKeepAlive what Dial sets.
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
