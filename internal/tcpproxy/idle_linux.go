package tcpproxy

import (
	"net"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// idleWatch samples both sockets' kernel byte counters every quarter of the
// timeout and aborts the pair once none moved for the whole timeout. One
// timer per connection, no per-read work.
type idleWatch struct {
	p       *Pair
	timeout time.Duration
	tick    time.Duration

	mu     sync.Mutex
	timer  *time.Timer
	last   [2]progress
	quiet  time.Duration
	closed bool
}

type progress struct{ received, acked uint64 }

// start arms the watch. It reads no counters (most connections end
// before the first sample): the first sample compares against zero, so
// bytes moved before the watch started count as progress in the first
// quarter.
func (w *idleWatch) start(p *Pair, timeout time.Duration) {
	w.mu.Lock() // check must not run before timer is set
	w.p, w.timeout, w.tick = p, timeout, timeout/4
	w.timer = time.AfterFunc(w.tick, w.check)
	w.mu.Unlock()
}

func (w *idleWatch) check() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return
	}
	now := [2]progress{counters(w.p.client), counters(w.p.upstream)}
	if now == w.last {
		w.quiet += w.tick
	} else {
		w.quiet, w.last = 0, now
	}
	if w.quiet >= w.timeout {
		if w.p.log != nil {
			w.p.log.Debug("idle timeout", "timeout", w.timeout)
		}
		go w.p.abort(EndIdle)
		return
	}
	w.timer.Reset(w.tick)
}

func (w *idleWatch) stop() {
	w.mu.Lock()
	w.closed = true
	if w.timer != nil {
		w.timer.Stop()
	}
	w.mu.Unlock()
}

// counters reads bytes received and bytes acknowledged by the peer.
func counters(c *net.TCPConn) progress {
	var pr progress
	rc, err := c.SyscallConn()
	if err != nil {
		return pr
	}
	rc.Control(func(fd uintptr) {
		if ti, err := unix.GetsockoptTCPInfo(int(fd), unix.SOL_TCP, unix.TCP_INFO); err == nil {
			pr = progress{ti.Bytes_received, ti.Bytes_acked}
		}
	})
	return pr
}

// isReset reports whether the kernel has given up on c: a reset socket is
// in the CLOSE state, while one that merely half-closed is not.
func isReset(c *net.TCPConn) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return false
	}
	reset := false
	rc.Control(func(fd uintptr) {
		ti, err := unix.GetsockoptTCPInfo(int(fd), unix.SOL_TCP, unix.TCP_INFO)
		reset = err == nil && ti.State == unix.BPF_TCP_CLOSE
	})
	return reset
}
