package tcpproxy

import (
	"math"
	"time"

	"golang.org/x/sys/unix"
)

// idleWatch samples both sockets' kernel byte counters every quarter of the
// timeout and aborts the pair once none moved for the whole timeout. One
// timer per connection, no per-read work. The timer only posts a task:
// the sampling runs on the pair's loop, which owns the descriptors.
type idleWatch struct {
	p       *Pair
	timeout time.Duration
	tick    time.Duration
	timer   *time.Timer
	last    [2]progress
	quiet   time.Duration
}

type progress struct{ received, acked uint64 }

// start arms the watch. It reads no counters (most connections end
// before the first sample): the first sample compares against zero, so
// bytes moved before the watch started count as progress in the first
// quarter.
func (w *idleWatch) start(p *Pair, timeout time.Duration) {
	w.p, w.timeout, w.tick = p, timeout, timeout/4
	// Armed only once assigned: the first check (on the loop) resets it.
	w.timer = time.AfterFunc(time.Duration(math.MaxInt64), w.post)
	w.timer.Reset(w.tick)
}

func (w *idleWatch) post() { w.p.loop.post(task{p: w.p, kind: taskIdle}) }

// check samples the counters on the loop; it reports whether the timeout
// passed, and otherwise re-arms the timer.
func (w *idleWatch) check() bool {
	now := [2]progress{counters(w.p.c.fd), counters(w.p.u.fd)}
	if now == w.last {
		w.quiet += w.tick
	} else {
		w.quiet, w.last = 0, now
	}
	if w.quiet >= w.timeout {
		return true
	}
	w.timer.Reset(w.tick)
	return false
}

func (w *idleWatch) stop() {
	if w.timer != nil {
		w.timer.Stop()
	}
}

// counters reads bytes received and bytes acknowledged by the peer.
func counters(fd int) progress {
	ti, err := unix.GetsockoptTCPInfo(fd, unix.SOL_TCP, unix.TCP_INFO)
	if err != nil {
		return progress{}
	}
	return progress{ti.Bytes_received, ti.Bytes_acked}
}

// isReset reports whether the kernel has given up on the socket: a reset
// socket is in the CLOSE state, while one that merely half-closed is not.
func isReset(fd int) bool {
	ti, err := unix.GetsockoptTCPInfo(fd, unix.SOL_TCP, unix.TCP_INFO)
	return err == nil && ti.State == unix.BPF_TCP_CLOSE
}
