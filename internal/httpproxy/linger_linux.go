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
// downConn.Close does when the client's bytes are still unread.
func (fc *fastConn) closeLingering() {
	if fc.lingers() {
		fc.c.CloseWrite()
		drain(fc.c)
	}
	fc.c.Close()
}

// lingers reports whether client bytes are still unread: some detour read
// and will not use, or some in the socket. The socket is asked through its
// descriptor directly (a closure for RawConn.Control would cost
// allocations on every connection), under ol.mu, as abort closes c under
// it: a socket abort closed (or the goroutine, for abort, after a loop's
// hand-back) is not asked, since its number may be another socket's by
// now, and is not lingered on.
func (fc *fastConn) lingers() bool {
	ol := &fc.ol
	ol.mu.Lock()
	defer ol.mu.Unlock()
	switch {
	case ol.aborted.Load():
		return false
	case fc.w > fc.r:
		return true
	case fc.fd < 0: // unknown: nothing unread
		return false
	}
	if h := fc.p.hooks.inQueue; h != nil {
		h(fc)
	}
	n, _ := rawsys.InQueue(fc.fd)
	return n > 0
}
