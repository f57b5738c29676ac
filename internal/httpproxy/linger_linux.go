package httpproxy

import (
	"io"
	"net"
	"syscall"
	"time"

	"github.com/detour-proxy/detour/internal/rawsys"
)

// Bounds of a lingering close.
const (
	lingerTimeout = 2 * time.Second
	lingerBytes   = 1 << 20
)

// unreadInput reports whether bytes from the peer wait in c's receive queue.
func unreadInput(c syscall.Conn) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return false
	}
	n := 0
	rc.Control(func(fd uintptr) {
		n, _ = rawsys.InQueue(int(fd))
	})
	return n > 0
}

// drain discards c's input until the peer closes, lingerBytes were read or
// lingerTimeout passed.
func drain(c net.Conn) {
	c.SetReadDeadline(time.Now().Add(lingerTimeout))
	io.Copy(io.Discard, io.LimitReader(c, lingerBytes))
}

// closeLingering closes the fast path's client connection, lingering as
// downConn.Close does when the client's bytes are still unread: buffered
// says detour holds some it read and will not use. fd is c's descriptor,
// asked directly: the caller owns c, and a closure for RawConn.Control
// would cost allocations on every connection (-1, unknown, reads as
// nothing unread).
func closeLingering(c *net.TCPConn, fd int, buffered bool) {
	if n, _ := rawsys.InQueue(fd); buffered || n > 0 {
		c.CloseWrite()
		drain(c)
	}
	c.Close()
}
