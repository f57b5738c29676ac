package httpproxy

import (
	"net"
	"sync/atomic"
	"time"
)

// idleDeadline enforces a stream idle timeout (StreamIdleTimeout) on a
// sequence of reads or writes: each one that starts fails if it makes no
// progress for the timeout. Setting a deadline before every operation
// would reset the runtime's timer each time; idleDeadline sets one only
// when less than 7/8 of the timeout is left of the deadline it set last.
// So an operation it is asked about starts with at least 7/8 of it ahead of
// it, and one that blocks fails after 7/8 to all of the timeout — the
// bound on every stream idle timeout of the proxy, whichever side stalls
// — but for an operation that shares the deadline of the one before it
// without a renewal in between (bodyPump.copy's write upstream of what
// its read returned): it has what that one left.
//
// It only knows the deadlines it set: whoever sets or clears the same
// deadline another way calls forget, and the next renewal sets it anew.
// A zero timeout disables it. (A single write bounded once — the fast
// path's write of a request head with the body bytes that came with it,
// or of the rest of a request the socket did not take at once — sets its
// deadline the whole timeout ahead: within the same bound.)
type idleDeadline struct {
	timeout time.Duration
	at      atomic.Int64 // the deadline set last, as a monoTime; 0: none known
}

// monoEpoch is what idleDeadline measures time from: the monotonic clock,
// as the runtime measures the deadlines it sets (a wall clock that steps
// does not move them). Set once, never changed.
var monoEpoch = time.Now()

// monoTime is t on the monotonic clock, in ns since monoEpoch.
func monoTime(t time.Time) int64 { return int64(t.Sub(monoEpoch)) }

// due returns the deadline to set before an operation starting now, or
// false when the one in force still leaves 7/8 of the timeout (or there
// is no timeout).
func (d *idleDeadline) due() (time.Time, bool) {
	if d.timeout <= 0 {
		return time.Time{}, false
	}
	now := time.Now()
	if at := d.at.Load(); at != 0 && at-monoTime(now) >= int64(d.timeout-d.timeout/8) {
		return time.Time{}, false
	}
	t := now.Add(d.timeout)
	d.at.Store(monoTime(t))
	return t, true
}

// read renews c's read deadline before a read, if due. (c is a net.Conn,
// which every caller's conn converts to without a run-time lookup.)
func (d *idleDeadline) read(c net.Conn) {
	if t, ok := d.due(); ok {
		c.SetReadDeadline(t)
	}
}

// write renews c's write deadline before a write, if due.
func (d *idleDeadline) write(c net.Conn) {
	if t, ok := d.due(); ok {
		c.SetWriteDeadline(t)
	}
}

// forget notes that the deadline was set or cleared by someone else.
func (d *idleDeadline) forget() { d.at.Store(0) }

// armed reports whether a deadline d set may still be in force.
func (d *idleDeadline) armed() bool { return d.at.Load() != 0 }
