package listen

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// Namespace is what the calling thread's network namespace offers detour:
// listeners on loopback and tproxy's local routes need lo up, and every
// IPv6 listener or rule needs IPv6 on lo.
type Namespace struct {
	LoopbackUp bool
	// NoIPv6 says why IPv6 is unavailable ("" when it is available), and
	// EnableIPv6 how to turn it on.
	NoIPv6, EnableIPv6 string
}

// Inspect reads the namespace's loopback and IPv6 state; it changes nothing.
// IPv6 counts as unavailable when the kernel has none or it is disabled on
// lo: then ::1 does not exist and `ip -6 route add local ::/0 dev lo` is
// refused, so neither a redirect nor a tproxy IPv6 listener can work.
func Inspect() Namespace {
	var n Namespace
	if lo, err := net.InterfaceByName("lo"); err == nil {
		n.LoopbackUp = lo.Flags&net.FlagUp != 0
	}
	s, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err == nil {
		unix.Close(s)
	}
	v, rerr := os.ReadFile("/proc/sys/net/ipv6/conf/lo/disable_ipv6")
	switch {
	case errors.Is(err, unix.EAFNOSUPPORT) || errors.Is(rerr, os.ErrNotExist):
		n.NoIPv6 = "the kernel has no IPv6 (booted with ipv6.disable=1, or built without it)"
		n.EnableIPv6 = "boot without ipv6.disable=1"
	case rerr == nil && strings.TrimSpace(string(v)) == "1":
		n.NoIPv6 = "IPv6 is disabled on lo (net.ipv6.conf.lo.disable_ipv6 = 1)"
		n.EnableIPv6 = "sysctl -w net.ipv6.conf.all.disable_ipv6=0 net.ipv6.conf.lo.disable_ipv6=0"
	}
	return n
}

// IPv4Twin is the IPv4 listener that stands in for the IPv6 one a: [::]:P
// becomes 0.0.0.0:P, [::1]:P 127.0.0.1:P; any other address has no twin,
// so a placeholder with a's port is returned.
func IPv4Twin(a netip.AddrPort) string {
	switch {
	case a.Addr().IsUnspecified():
		return fmt.Sprintf("0.0.0.0:%d", a.Port())
	case a.Addr().IsLoopback():
		return fmt.Sprintf("127.0.0.1:%d", a.Port())
	}
	return fmt.Sprintf("IPV4-ADDRESS:%d", a.Port())
}

// Error is a listener that cannot open, with what to do about it.
type Error struct {
	Addr netip.AddrPort
	Err  error
	Fix  string // "" when there is no better advice than Err
}

func (e *Error) Error() string {
	if e.Fix == "" {
		return fmt.Sprintf("listen %s: %v", e.Addr, e.Err)
	}
	return fmt.Sprintf("listen %s: %v (%s)", e.Addr, e.Err, e.Fix)
}

func (e *Error) Unwrap() error { return e.Err }

// unavailable is why a listener on addr cannot work in namespace n, or nil.
// It is checked before the socket is made: an IPv6 wildcard socket still
// binds where IPv6 is disabled, and only the rules would fail later, with
// a less useful error.
func (n Namespace) unavailable(addr netip.AddrPort) error {
	if addr.Addr().Is6() && n.NoIPv6 != "" {
		return &Error{Addr: addr, Err: errors.New("IPv6 is unavailable in this network namespace: " + n.NoIPv6),
			Fix: fmt.Sprintf("listen on IPv4 only: --listen %s; or enable IPv6: %s", IPv4Twin(addr), n.EnableIPv6)}
	}
	return nil
}

// explain adds the likely cause of a failed bind, and its fix.
func (n Namespace) explain(addr netip.AddrPort, err error) error {
	e := &Error{Addr: addr, Err: err}
	switch {
	case errors.Is(err, unix.EADDRNOTAVAIL) && addr.Addr().IsLoopback() && !n.LoopbackUp:
		e.Fix = "the loopback interface lo is down: ip link set lo up"
	case errors.Is(err, unix.EADDRNOTAVAIL):
		e.Fix = fmt.Sprintf("no interface in this network namespace has %s (see ip addr); listen on one that does, or on 0.0.0.0 or [::]", addr.Addr())
	case errors.Is(err, unix.EADDRINUSE):
		e.Fix = fmt.Sprintf("another socket listens there (ss -ltnp 'sport = :%d'); stop it or pick another --listen", addr.Port())
	}
	return e
}

// CanListen opens o's socket and binds it, without listening, and closes
// it: whether Listen(o) would succeed now, with the same explanations,
// while no connection can reach the probe. `detour check` uses it.
func CanListen(o Options) error {
	addr := netip.AddrPortFrom(o.Addr.Addr().Unmap(), o.Addr.Port())
	n := Inspect()
	if err := n.unavailable(addr); err != nil {
		return err
	}
	domain := unix.AF_INET
	if addr.Addr().Is6() {
		domain = unix.AF_INET6
	}
	s, err := unix.Socket(domain, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return &Error{Addr: addr, Err: fmt.Errorf("socket: %w", err)}
	}
	defer unix.Close(s)
	// As Go's listeners: SO_REUSEADDR, and IPv6 sockets IPv6-only.
	if err := unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return fmt.Errorf("listen %s: SO_REUSEADDR: %w", addr, err)
	}
	var sa unix.Sockaddr
	if domain == unix.AF_INET6 {
		if err := unix.SetsockoptInt(s, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
			return &Error{Addr: addr, Err: fmt.Errorf("IPV6_V6ONLY: %w", err)}
		}
		sa = &unix.SockaddrInet6{Port: int(addr.Port()), Addr: addr.Addr().As16()}
	} else {
		sa = &unix.SockaddrInet4{Port: int(addr.Port()), Addr: addr.Addr().As4()}
	}
	if o.Mode == ModeTProxy {
		if err := setTransparent(s, domain == unix.AF_INET6); err != nil {
			return &Error{Addr: addr, Err: err}
		}
	}
	if err := unix.Bind(s, sa); err != nil {
		return n.explain(addr, fmt.Errorf("bind: %w", err))
	}
	return nil
}
