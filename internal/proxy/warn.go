package proxy

import (
	"sync"
	"time"
)

// warnKind names a warning a client can cause once per connection.
type warnKind int

const (
	warnLoop           warnKind = iota // a connection to detour's own listener
	warnNotIntercepted                 // a connection with no original destination
	warnLimit                          // accepting paused at MaxConns
	warnDescriptors                    // accepting paused: descriptors ran out
	warnAccept                         // accept itself failed (EMFILE and the like)
	warnKinds
)

// warnEvery is how often a warning of one kind is written at most.
const warnEvery = 10 * time.Second

// warnLimiter lets a warning of each kind through once per warnEvery and
// counts the rest: any client that reaches a listener can cause the first
// two kinds at will, and a line per connection would flood the log (the
// metrics count every one).
type warnLimiter struct {
	mu   sync.Mutex
	last [warnKinds]time.Time
	more [warnKinds]int
}

// allow reports whether a warning of kind k may be written at now, and
// how many were held back since the last one written.
func (w *warnLimiter) allow(k warnKind, now time.Time) (ok bool, more int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.last[k].IsZero() && now.Sub(w.last[k]) < warnEvery {
		w.more[k]++
		return false, 0
	}
	w.last[k], more, w.more[k] = now, w.more[k], 0
	return true, more
}
