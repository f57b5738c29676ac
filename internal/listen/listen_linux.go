package listen

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// Listen opens a listener for o. IPv6 listeners are IPv6-only, so
// 0.0.0.0:P and [::]:P can be opened side by side.
func Listen(o Options) (*Listener, error) {
	if o.Mode != ModeTProxy && o.Mode != ModeRedirect {
		return nil, fmt.Errorf("listen: unknown mode %q (want tproxy or redirect)", o.Mode)
	}
	if !o.Addr.IsValid() {
		return nil, fmt.Errorf("listen: no address")
	}
	addr := netip.AddrPortFrom(o.Addr.Addr().Unmap(), o.Addr.Port())
	n := Inspect()
	if err := n.unavailable(addr); err != nil {
		return nil, err
	}
	network := "tcp4"
	if addr.Addr().Is6() {
		network = "tcp6" // Go sets IPV6_V6ONLY for tcp6 wildcard listeners
	}
	// KeepAlive -1: accepted sockets get no TCP keep-alive (Go's default
	// would enable it, 15 s, costing four setsockopts per connection). The
	// idle timeout closes connections to clients that went away, as
	// HAProxy and Envoy, which leave client keep-alive off by default, do.
	lc := net.ListenConfig{KeepAlive: -1, Control: func(network, _ string, rc syscall.RawConn) error {
		if o.Mode != ModeTProxy {
			return nil
		}
		var serr error
		err := rc.Control(func(fd uintptr) { serr = setTransparent(int(fd), network == "tcp6") })
		if err != nil {
			return err
		}
		return serr
	}}
	ln, err := lc.Listen(context.Background(), network, addr.String())
	if err != nil {
		return nil, n.explain(addr, err)
	}
	tl := ln.(*net.TCPListener)
	return &Listener{ln: tl, mode: o.Mode, addr: addrPort(tl.Addr())}, nil
}

// deferAcceptSeconds is TCP_DEFER_ACCEPT's value when on: the kernel
// hands over a connection when its first bytes arrive, and one whose
// client stays silent after about a second (a retransmitted SYN-ACK and
// the client's next ACK), so a silent client still meets the header
// timeout instead of waiting in the kernel.
const deferAcceptSeconds = 1

// SetDeferAccept turns TCP_DEFER_ACCEPT on or off for connections the
// listener accepts from now on: on, an accepted connection of a protocol
// whose client speaks first (HTTP) comes with its request already
// queued, so the first read finds it instead of waiting for it (HAProxy's
// "defer-accept", nginx's "deferred"). It must stay off where the server
// may speak first (SSH, SMTP banners): their clients send nothing until
// then.
func (l *Listener) SetDeferAccept(on bool) error {
	rc, err := l.ln.SyscallConn()
	if err != nil {
		return err
	}
	v := 0
	if on {
		v = deferAcceptSeconds
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT, v)
	}); err != nil {
		return err
	}
	if serr != nil {
		return os.NewSyscallError("setsockopt TCP_DEFER_ACCEPT", serr)
	}
	return nil
}

// setTransparent makes a tproxy listener's socket transparent.
func setTransparent(fd int, v6 bool) error {
	level, opt, name := unix.SOL_IP, unix.IP_TRANSPARENT, "IP_TRANSPARENT"
	if v6 {
		level, opt, name = unix.SOL_IPV6, unix.IPV6_TRANSPARENT, "IPV6_TRANSPARENT"
	}
	if err := unix.SetsockoptInt(fd, level, opt, 1); err != nil {
		return fmt.Errorf("set %s: %w (tproxy mode needs root or CAP_NET_ADMIN)", name, err)
	}
	return nil
}

// OriginalDst reads a redirected connection's destination from conntrack.
func OriginalDst(c *net.TCPConn) (netip.AddrPort, string, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, "", err
	}
	var (
		dst  netip.AddrPort
		how  string
		derr error
	)
	is6 := addrPort(c.LocalAddr()).Addr().Is6()
	if err := rc.Control(func(fd uintptr) { dst, how, derr = originalDst(int(fd), is6) }); err != nil {
		return netip.AddrPort{}, how, err
	}
	return dst, how, derr
}

// DecodeSockaddr decodes the sockaddr_in or sockaddr_in6 that
// SO_ORIGINAL_DST returns: the family is in host byte order, the port in
// network byte order.
func DecodeSockaddr(b []byte) (netip.AddrPort, error) {
	if len(b) < 2 {
		return netip.AddrPort{}, fmt.Errorf("sockaddr too short: %d bytes", len(b))
	}
	family := binary.NativeEndian.Uint16(b[0:2])
	switch family {
	case unix.AF_INET:
		if len(b) < 8 {
			return netip.AddrPort{}, fmt.Errorf("sockaddr_in too short: %d bytes", len(b))
		}
		ip := netip.AddrFrom4([4]byte(b[4:8]))
		return netip.AddrPortFrom(ip, binary.BigEndian.Uint16(b[2:4])), nil
	case unix.AF_INET6:
		if len(b) < 24 {
			return netip.AddrPort{}, fmt.Errorf("sockaddr_in6 too short: %d bytes", len(b))
		}
		ip := netip.AddrFrom16([16]byte(b[8:24])).Unmap()
		return netip.AddrPortFrom(ip, binary.BigEndian.Uint16(b[2:4])), nil
	}
	return netip.AddrPort{}, fmt.Errorf("sockaddr: unknown address family %d", family)
}
