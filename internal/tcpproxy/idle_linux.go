package tcpproxy

import (
	"math"
	"time"

	"golang.org/x/sys/unix"

	"github.com/detour-proxy/detour/internal/rawsys"
)

// idleWatch is a pair's one timer. It samples both sockets' kernel byte
// counters every idleSamples-th of the idle timeout and ends the pair
// once none moved for the whole timeout (no per-read work), and it runs the
// pair's OnLongLived once the pair has lasted LongLivedAfter. The timer
// only posts a task: the work runs on the pair's loop, which owns the
// descriptors.
type idleWatch struct {
	p       *Pair
	tick    time.Duration // 0: no idle timeout
	timer   *time.Timer
	last    [2]progress
	sampled time.Time // when last was read (the start, at first)
	quiet   time.Duration
	longAt  time.Time // when OnLongLived is due; zero once run
	connBy  time.Time // when a connect in progress times out; zero once connected
}

type progress struct{ received, acked uint64 }

// idleSamples is how many samples the watch takes per idle timeout. Quiet
// time counts from the sample that saw the last change, so a pair closes
// up to two sample periods late (the first sample compares against zero):
// with 16, at most 1.125 × the timeout after its last byte, where 4 let a
// 1 h timeout run 1.5 h. Each sample is one timer and two getsockopt
// calls: for 10,000 idle pairs at the 1 h default, 44 a second.
const idleSamples = 16

// start arms the watch. It reads no counters (most connections end
// before the first sample): the first sample compares against zero, so
// bytes moved before the watch started count as progress.
// connBy is when a connect in progress times out (zero: no timeout),
// computed by Start before the pair was registered: from then on the
// loop owns p.connecting.
func (w *idleWatch) start(p *Pair, connBy time.Time) {
	w.p, w.sampled = p, time.Now()
	if p.idle > 0 {
		w.tick = p.idle / idleSamples
	}
	if p.longLived != nil {
		w.longAt = w.sampled.Add(p.longAfter)
	}
	w.connBy = connBy
	// Armed only once assigned: the first check (on the loop) resets it.
	w.timer = time.AfterFunc(time.Duration(math.MaxInt64), w.post)
	w.timer.Reset(w.next(w.sampled))
}

func (w *idleWatch) post() { w.p.loop.post(task{m: w.p, kind: taskTimer}) }

// next is how long after now the timer is due again, or -1.
func (w *idleWatch) next(now time.Time) time.Duration {
	d := time.Duration(-1)
	if w.tick > 0 {
		d = w.tick
	}
	for _, at := range [2]time.Time{w.longAt, w.connBy} {
		if !at.IsZero() {
			if until := max(at.Sub(now), 0); d < 0 || until < d {
				d = until
			}
		}
	}
	return d
}

// check runs on the loop when the timer fires; it reports EndIdle when
// the idle timeout passed, EndConnectFailed when the connect timed out,
// and otherwise re-arms the timer if anything is still due.
func (w *idleWatch) check() End {
	now := time.Now()
	if !w.connBy.IsZero() && !now.Before(w.connBy) {
		if w.p.connecting {
			return EndConnectFailed
		}
		w.connBy = time.Time{} // connected in time
	}
	if !w.longAt.IsZero() && !now.Before(w.longAt) {
		if w.p.connecting { // a connect timeout longer than LongLivedAfter
			w.longAt = now.Add(time.Second)
		} else {
			w.longAt = time.Time{}
			w.p.longLived(w.p.u.fd)
		}
	}
	switch {
	case w.tick > 0 && w.p.connecting:
		// The idle timeout counts from the connect's completion: a connect
		// under way is bounded by the connect timeout alone, even when the
		// idle timeout is the shorter (it ended such connects as idle).
		w.quiet, w.sampled = 0, now
	case w.tick > 0:
		cur := [2]progress{counters(w.p.c.fd), counters(w.p.u.fd)}
		if cur == w.last {
			w.quiet += now.Sub(w.sampled)
		} else {
			w.quiet, w.last = 0, cur
		}
		w.sampled = now
		if w.quiet >= w.p.idle {
			return EndIdle
		}
	}
	if d := w.next(now); d >= 0 {
		w.timer.Reset(d)
	}
	return ""
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

// socketEmpty reports whether a connected socket holds no byte: none
// unread, none unsent and none in flight unacknowledged. An error, or a
// socket the kernel closed (a reset or a refused connect whose event is
// still queued), counts as not empty: the pair is then reset, as it would
// be once that event were handled.
func socketEmpty(fd int) bool {
	ti, err := unix.GetsockoptTCPInfo(fd, unix.SOL_TCP, unix.TCP_INFO)
	if err != nil || ti.State == unix.BPF_TCP_CLOSE || ti.Unacked > 0 || ti.Notsent_bytes > 0 {
		return false
	}
	n, err := rawsys.InQueue(fd)
	return err == nil && n == 0
}
