package upstream

import (
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// control sets the socket options before connect: the mark for the loop
// exemption and, for spoofing, transparency so bind accepts a foreign
// address. IP_BIND_ADDRESS_NO_PORT defers the port choice to connect, so
// many upstream connections from one spoofed client IP don't exhaust ports.
func (d *Dialer) control(network, _ string, rc syscall.RawConn) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		s := int(fd)
		if d.opts.Mark != 0 {
			if err := unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_MARK, int(d.opts.Mark)); err != nil {
				serr = fmt.Errorf("set SO_MARK: %w (needs CAP_NET_ADMIN)", err)
				return
			}
		}
		if !d.opts.SpoofSource {
			return
		}
		level, opt := unix.SOL_IP, unix.IP_TRANSPARENT
		if network == "tcp6" {
			level, opt = unix.SOL_IPV6, unix.IPV6_TRANSPARENT
		}
		if err := unix.SetsockoptInt(s, level, opt, 1); err != nil {
			serr = fmt.Errorf("set IP_TRANSPARENT on upstream socket: %w (needs CAP_NET_ADMIN)", err)
			return
		}
		_ = unix.SetsockoptInt(s, unix.SOL_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
	})
	if err != nil {
		return err
	}
	return serr
}
