package tcpproxy

import (
	"os"

	"golang.org/x/sys/unix"

	"github.com/detour-proxy/detour/internal/rawsys"
)

// Watch lends a loop to another package's pair of sockets: the HTTP fast
// path's client and upstream connections, between requests. They are
// registered as a Pair's are, but their events run a callback on the
// loop's goroutine instead of a copy; the callback reads and writes the
// sockets itself, never waiting, and ends the watch with Stop. The sockets
// stay open and in Go's netpoller throughout: the caller owns them, and
// must neither use nor close them from another goroutine until Stop.
//
//	w, err := tcpproxy.NewWatch([2]int{clientFD, upstreamFD}, serve)
//	// serve(w) runs on the loop: on events, and after w.Wake()
//	// serve calls w.Stop() and hands the sockets back
type Watch struct {
	l       *loop
	eps     [2]endpoint
	serve   func(*Watch)
	stopped bool
}

// NewWatch registers fds[0] and fds[1] with a loop, which calls serve on
// its goroutine whenever either reports an event (at once, too: both are
// writable) or Wake was called, until serve calls Stop.
func NewWatch(fds [2]int, serve func(*Watch)) (*Watch, error) {
	l, err := pickLoop()
	if err != nil {
		return nil, err
	}
	w := &Watch{l: l, serve: serve}
	for i := range w.eps {
		w.eps[i] = endpoint{fd: fds[i], m: w, writable: true}
	}
	if err := l.register(&w.eps[0], &w.eps[1]); err != nil {
		return nil, err
	}
	return w, nil
}

// Readable reports that socket i (0 or 1) may hold bytes, a FIN or an
// error since it was last Drained.
func (w *Watch) Readable(i int) bool { return w.eps[i].readable }

// Hup reports that socket i had a FIN, hang-up or error event.
func (w *Watch) Hup(i int) bool { return w.eps[i].hup }

// Drained notes that a read of socket i found it empty (EAGAIN, or a
// short read without Hup): its next byte brings a new event.
func (w *Watch) Drained(i int) { w.eps[i].readable = false }

// Wake makes the loop call serve soon. Any goroutine may call it; after
// Stop it does nothing.
func (w *Watch) Wake() { w.l.post(task{m: w, kind: taskWake}) }

// Stop takes both sockets out of the loop; called by serve, on the loop's
// goroutine. Events already queued for them are dropped, and serve is not
// called again: from its return the caller may use the sockets again.
func (w *Watch) Stop() error {
	if w.stopped {
		return nil
	}
	w.stopped = true
	var err error
	for i := range w.eps {
		if e := rawsys.EpollCtl(w.l.epfd, unix.EPOLL_CTL_DEL, w.eps[i].fd, nil); e != nil && err == nil {
			err = os.NewSyscallError("epoll_ctl", e)
		}
	}
	w.l.release(&w.eps[0], &w.eps[1])
	return err
}

func (w *Watch) pump(*loop) { w.serve(w) }

func (w *Watch) runTask(*loop, taskKind) {
	if !w.stopped {
		w.serve(w)
	}
}

func (w *Watch) gone() bool { return w.stopped }
