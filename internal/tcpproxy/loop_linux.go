package tcpproxy

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/detour-proxy/detour/internal/rawsys"
)

// A loop is one epoll instance and the goroutine that serves it. Each
// socket of the pairs given to it is registered once, edge-triggered, for
// input, output and the peer's FIN, and the loop copies bytes when the
// kernel reports a change. Unlike Go's netpoller, each event carries
// EPOLLRDHUP and EPOLLERR: a short read that came without them has
// emptied the socket, and the next byte, FIN or reset brings a new event,
// so no second read is needed to be told EAGAIN. One goroutine serves
// every connection of the loop: no goroutine per direction, no scheduler
// switch per burst, and an idle connection costs no stack.
//
// The epoll descriptor itself waits in Go's netpoller (an epoll instance
// is readable while events are pending): the loop goroutine parks like
// any other while nothing happens, and no thread sits in epoll_wait.
type loop struct {
	epfd   int
	wakefd int             // eventfd: other goroutines post tasks
	rc     syscall.RawConn // epfd in Go's netpoller
	file   *os.File        // owns epfd for rc

	mu    sync.Mutex
	slots []*endpoint // by slot number, the events' key
	gens  []uint32    // by slot: bumped on each reuse, so a stale event is ignored
	free  []int32
	tasks []task // posted by other goroutines (Cancel, idle checks)
	woken bool   // a wake-up is pending for tasks

	// Used by the loop goroutine only.
	events  [128]unix.EpollEvent
	ready   []*endpoint // this batch's endpoints, resolved under mu
	flags   []uint32    // their events
	running []task
	again   []*Pair // pairs that used their turn's budget with work left
	next    []*Pair
	buf     [copyBufSize]byte // every read of a small burst lands here
	serveFn func(uintptr) bool
	yield   func() // rawsys.Yield; a test counts the calls
	// linger is how long the loop, woken with events, then waits in the
	// kernel for more before it parks (lingerWait; 0: never, as after the
	// kernel refused epoll_pwait2).
	linger  time.Duration
	lingers atomic.Uint64 // waits that epoll_pwait2 took; tests read it
	refused atomic.Bool   // the kernel refused epoll_pwait2; tests read it

	parks atomic.Uint64 // times serve returned to Go's netpoller; tests read it

	// moved counts the bytes its pairs wrote, client to upstream [0] and
	// upstream to client [1], as they go: a metric of ended connections
	// would not show a long one's traffic until it ends (Moved).
	moved [2]atomic.Uint64
}

// wakeSlot marks the eventfd's events.
const wakeSlot = -1

// endpoint is one socket of a member, as the loop knows it.
type endpoint struct {
	fd   int
	m    member
	slot int32
	gen  uint32

	readable bool // the socket may hold bytes, a FIN or an error
	writable bool // the socket took the last write whole
	hup      bool // an event said FIN, hang-up or error: read until EOF
	errored  bool // an event said EPOLLERR
	// taken is the error of a reset that SO_ERROR took from the socket
	// (a connect that completed, then was reset): a read now finds an end
	// of stream after the bytes queued, and the flow fails there instead.
	taken error
	// urgent: an event said EPOLLPRI (TCP urgent data, as telnet's and
	// FTP's ABOR send). A read or splice stops short at the urgent mark
	// with bytes queued behind it, which bring no new event: read until
	// EAGAIN.
	urgent bool
}

type taskKind uint8

const (
	taskCancel taskKind = iota
	taskTimer           // the pair's idleWatch fired
	taskWake            // Watch.Wake
)

type task struct {
	m    member
	kind taskKind
}

// member is what a loop serves: a Pair, or a Watch of another package.
type member interface {
	// pump handles what the events noted on its endpoints say.
	pump(l *loop)
	// runTask runs a task posted for it.
	runTask(l *loop, k taskKind)
	// gone reports that it left the loop: events still queued for its
	// endpoints are ignored.
	gone() bool
}

// loopSet is a set of loops that start on first use.
type loopSet struct {
	mu      sync.Mutex
	want    int // 0: one per CPU Go runs on
	started atomic.Bool
	loops   []*loop
	turn    atomic.Uint32
}

// loopsRunning counts the loops started, in every set (tests make their
// own): each runs for the life of the process.
var loopsRunning atomic.Int32

// pairLoops carry every pair of the process.
var pairLoops loopSet

// SetLoops sets how many epoll loops carry pairs: n > 0, or 0 for one per
// CPU Go runs on (GOMAXPROCS). The loops start with the first pair and
// their number is fixed from then on: asking for another one then is an
// error.
func SetLoops(n int) error { return pairLoops.set(n) }

func (s *loopSet) set(n int) error {
	if n < 0 {
		return fmt.Errorf("tcpproxy: %d loops", n)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started.Load() {
		if loopCount(n) != loopCount(s.want) {
			return fmt.Errorf("tcpproxy: %d loops already run; the number changes only with a restart", len(s.loops))
		}
		return nil
	}
	s.want = n
	return nil
}

// Loops is the number of loops that carry pairs: those running, or those
// that the first pair will start.
func Loops() int { return pairLoops.count() }

func (s *loopSet) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started.Load() {
		return len(s.loops)
	}
	return loopCount(s.want)
}

// loopCount is the number of loops that want n means.
func loopCount(n int) int {
	if n > 0 {
		return n
	}
	return runtime.GOMAXPROCS(0)
}

// Moved returns the bytes every pair of the process has written so far,
// client to upstream (sent) and upstream to client (received), open
// connections' included.
func Moved() (sent, received uint64) {
	if !pairLoops.started.Load() { // the loops slice is fixed once started
		return 0, 0
	}
	for _, l := range pairLoops.loops {
		sent += l.moved[0].Load()
		received += l.moved[1].Load()
	}
	return sent, received
}

// pickLoop returns the loop for a new pair.
func pickLoop() (*loop, error) { return pairLoops.pick() }

// pick returns the next loop, round robin, starting the loops on first
// use.
func (s *loopSet) pick() (*loop, error) {
	if !s.started.Load() {
		if err := s.start(); err != nil {
			return nil, err
		}
	}
	return s.loops[s.turn.Add(1)%uint32(len(s.loops))], nil
}

// start makes the set's loops. When not even one can be made (the
// process is out of descriptors, say), the set stays unstarted and the
// next pair tries again: giving up for good would fail every L4
// connection until a restart. When some could, the set runs with those.
func (s *loopSet) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started.Load() {
		return nil
	}
	for range loopCount(s.want) {
		l, err := newLoop(rawsys.Yield, lingerWait)
		if err != nil {
			if len(s.loops) == 0 {
				return err
			}
			break
		}
		s.loops = append(s.loops, l)
	}
	s.started.Store(true)
	return nil
}

// newLoop starts a loop whose thread lingers for more events once per
// wake-up, and calls yield before it parks.
func newLoop(yield func(), linger time.Duration) (*loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, os.NewSyscallError("eventfd", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLET, Fd: wakeSlot}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(wakefd)
		return nil, os.NewSyscallError("epoll_ctl", err)
	}
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		unix.Close(wakefd)
		return nil, os.NewSyscallError("fcntl", err)
	}
	l := &loop{epfd: epfd, wakefd: wakefd, file: os.NewFile(uintptr(epfd), "epoll"), yield: yield, linger: linger}
	l.rc, err = l.file.SyscallConn()
	if err != nil {
		l.file.Close()
		unix.Close(wakefd)
		return nil, err
	}
	l.serveFn = l.serve
	loopsRunning.Add(1)
	go l.run()
	return l, nil
}

// run serves the loop for the life of the process. serve returns false
// whenever no event is pending, which parks the goroutine until epfd is
// readable; a loop whose epfd left Go's netpoller would fail here, so
// that is checked once by a test (TestLoopParksInNetpoller).
func (l *loop) run() {
	for {
		if err := l.rc.Read(l.serveFn); err != nil {
			panic("tcpproxy: epoll loop: " + err.Error())
		}
	}
}

// serve takes the pending events without waiting and handles them, and
// goes on while there are more or a pair has work left. It returns false
// when the instance's ready list is empty: every later event then makes
// epfd readable again, which Go's netpoller reports.
//
// Once per wake-up, after the first events, the loop lingers: it waits in
// the kernel up to lingerWait for more. The bytes it just wrote woke
// their readers (the load generator, the server), whose answers often
// come within microseconds; taken in the same wake-up, they are handled
// in batches, and the loop's own writes reach those readers in batches
// too, so they sleep and wake less often (bench/RESULTS.md, session 24:
// wrk's sleeps per request 0.48–0.91 ×, keep-alive 1.02–1.09 × in three
// A/B runs). The wait is a Go system call, so the loop's processor is
// handed to other goroutines if it lasts: made raw, it kept the
// processor, and goroutines queued on it stalled for up to the 10 ms
// preemption (session 23: p99 12–66 ×). A kernel that refuses the call
// leaves the loop to the yield alone.
//
// After that, the loop's thread yields its CPU before it parks. The
// kernel tends to queue a task that a socket write wakes on the writer's
// CPU; the thread would otherwise keep that CPU while Go's scheduler looks
// for other work, and the woken tasks wait behind it while the other CPU
// idles (bench/RESULTS.md, 2026-12-05: machine idle time 0.1–0.4 × with
// the yield, L4 keep-alive and new connections 1.09–1.11 ×). The tasks
// that ran meanwhile often answered already, so the loop polls once more
// before it parks: their events are handled at once instead of after a
// round through Go's netpoller (keep-alive 1.01–1.05 × in three A/B runs;
// at most one extra empty poll per wake-up when nothing came).
func (l *loop) serve(uintptr) bool {
	repolled, lingered := false, false
	for {
		n, err := rawsys.EpollPoll(l.epfd, l.events[:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			panic("tcpproxy: epoll_wait: " + err.Error())
		}
		l.dispatch(l.events[:n])
		l.turn()
		if n == len(l.events) || len(l.again) > 0 {
			continue // more is pending
		}
		if n > 0 && !lingered && l.linger > 0 {
			lingered = true
			m, err := l.lingerForEvents()
			switch {
			case err == nil && m == 0:
				l.parks.Add(1)
				return false // the wait was the yield: nothing came
			case err == nil:
				l.dispatch(l.events[:m])
				l.turn()
				continue
			case err != unix.EINTR:
				// ENOSYS before Linux 5.11, EPERM under a seccomp
				// filter that does not know the call: never again.
				l.linger = 0
				l.refused.Store(true)
			}
			// On as without the wait (after EINTR, this once).
		}
		if n > 0 {
			l.yield()
		}
		if n == 0 || repolled {
			l.parks.Add(1)
			return false
		}
		repolled = true
	}
}

// lingerWait is how long a loop lingers for more events: about one
// request's round trip through the server or client on the lab's
// machine, well under the 10 ms of a scheduler tick.
const lingerWait = 30 * time.Microsecond

// LingerFix is what makes LingerSupport's error go away.
const LingerFix = "Linux 5.11 or later; in a container, a seccomp profile that allows epoll_pwait2"

// lingerForEvents waits up to l.linger for events.
func (l *loop) lingerForEvents() (int, error) {
	n, err := epollPwait2(l.epfd, l.events[:], l.linger)
	if err == nil {
		l.lingers.Add(1)
	}
	return n, err
}

// epollPwait2 waits up to timeout for events on epfd: epoll_pwait2, whose
// timeout, unlike epoll_wait's, is finer than a millisecond. It is a Go
// system call, not a rawsys one: it blocks. The error is the bare errno.
func epollPwait2(epfd int, events []unix.EpollEvent, timeout time.Duration) (int, error) {
	ts := unix.NsecToTimespec(timeout.Nanoseconds())
	n, _, e := unix.Syscall6(unix.SYS_EPOLL_PWAIT2, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), uintptr(unsafe.Pointer(&ts)), 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// LingerSupport reports why the loops cannot linger for answers, or nil
// when they can: epoll_pwait2 needs Linux 5.11, and a seccomp filter that
// predates the call (an older container runtime's default profile)
// refuses it. Without it the loops still serve, with the yield alone, at
// the keep-alive rate of a build without the linger (about 0.93 ×). run
// warns and check reports it, since the loops themselves stop trying
// without a word. LingerFix says what lets them.
func LingerSupport() error {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return os.NewSyscallError("epoll_create1", err)
	}
	defer unix.Close(epfd)
	var events [1]unix.EpollEvent
	for {
		_, err = epollPwait2(epfd, events[:], 0)
		if err != unix.EINTR {
			return os.NewSyscallError("epoll_pwait2", err)
		}
	}
}

// dispatch hands each event to its pair. Slots are resolved under mu in
// one go (Start registers from other goroutines); the copying runs
// without it.
func (l *loop) dispatch(evs []unix.EpollEvent) {
	wake := false
	for i := range evs {
		if evs[i].Fd == wakeSlot {
			wake = true
		}
	}
	if wake {
		// Before taking the tasks: a post after this read writes the
		// eventfd again and brings a new event.
		var b [8]byte
		rawsys.Read(l.wakefd, b[:])
	}
	l.mu.Lock()
	for i := range evs {
		ev := &evs[i]
		if ev.Fd == wakeSlot || int(ev.Fd) >= len(l.slots) {
			continue
		}
		ep := l.slots[ev.Fd]
		if ep == nil || ep.gen != uint32(ev.Pad) {
			continue // the socket of a pair that ended in this batch
		}
		l.ready = append(l.ready, ep)
		l.flags = append(l.flags, ev.Events)
	}
	if wake {
		l.running, l.tasks = l.tasks, l.running[:0]
		l.woken = false
	}
	l.mu.Unlock()

	for i, ep := range l.ready {
		if ep.m.gone() {
			continue
		}
		ep.note(l.flags[i])
		ep.m.pump(l)
	}
	clear(l.ready)
	l.ready, l.flags = l.ready[:0], l.flags[:0]
	if wake {
		for _, t := range l.running {
			t.m.runTask(l, t.kind)
		}
		clear(l.running)
		l.running = l.running[:0]
	}
}

// turn gives the pairs that ran out of budget their next turn.
func (l *loop) turn() {
	if len(l.again) == 0 {
		return
	}
	l.again, l.next = l.next[:0], l.again
	for _, p := range l.next {
		p.queued = false
		if !p.closed {
			p.pump(l)
		}
	}
	clear(l.next)
}

// note records what an event says about the socket.
func (ep *endpoint) note(ev uint32) {
	if ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		ep.readable = true
	}
	if ev&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		ep.hup = true
	}
	if ev&unix.EPOLLERR != 0 {
		ep.errored = true
	}
	if ev&unix.EPOLLPRI != 0 {
		ep.readable, ep.urgent = true, true
	}
	if ev&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		ep.writable = true
	}
}

// register adds both sockets of a member. Both are added under mu, so no
// event of either is handled (and no descriptor closed by the loop) before
// both are in.
func (l *loop) register(a, b *endpoint) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	eps := [2]*endpoint{a, b}
	for i, ep := range eps {
		l.alloc(ep)
		ev := unix.EpollEvent{
			Events: unix.EPOLLIN | unix.EPOLLPRI | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET,
			Fd:     ep.slot,
			Pad:    int32(ep.gen),
		}
		if err := rawsys.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, ep.fd, &ev); err != nil {
			if i == 1 {
				rawsys.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, eps[0].fd, nil)
				l.releaseLocked(eps[0])
			}
			l.releaseLocked(ep)
			return os.NewSyscallError("epoll_ctl", err)
		}
	}
	return nil
}

func (l *loop) alloc(ep *endpoint) {
	if n := len(l.free); n > 0 {
		ep.slot = l.free[n-1]
		l.free = l.free[:n-1]
	} else {
		ep.slot = int32(len(l.slots))
		l.slots = append(l.slots, nil)
		l.gens = append(l.gens, 0)
	}
	l.gens[ep.slot]++
	ep.gen = l.gens[ep.slot]
	l.slots[ep.slot] = ep
}

// release frees the slots of a member's sockets, which were closed or
// taken out of the epoll instance.
func (l *loop) release(a, b *endpoint) {
	l.mu.Lock()
	l.releaseLocked(a)
	l.releaseLocked(b)
	l.mu.Unlock()
}

func (l *loop) releaseLocked(ep *endpoint) {
	l.slots[ep.slot] = nil
	l.free = append(l.free, ep.slot)
}

// post queues a task for the loop goroutine and wakes it.
func (l *loop) post(t task) {
	l.mu.Lock()
	l.tasks = append(l.tasks, t)
	wake := !l.woken
	l.woken = true
	l.mu.Unlock()
	if wake {
		one := [8]byte{1}
		for {
			_, err := rawsys.Write(l.wakefd, one[:])
			if err != unix.EINTR {
				return
			}
		}
	}
}

// ConnFD returns c's descriptor for a loop (-1 with an error). c stays
// open, and in Go's netpoller, where its events find no goroutine waiting: taking it out
// (a duplicate descriptor, and c closed) would cost three system calls
// more per socket than the events cost Go's poller.
func ConnFD(c syscall.Conn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	if err := rc.Control(func(s uintptr) { fd = int(s) }); err != nil {
		return -1, err
	}
	return fd, nil
}

// sockError returns the socket's pending error (SO_ERROR) as the error of
// op, nil when none is pending.
func sockError(fd int, op string) error {
	n, err := rawsys.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	switch {
	case err != nil:
		return os.NewSyscallError("getsockopt", err)
	case n != 0:
		return os.NewSyscallError(op, syscall.Errno(n))
	}
	return nil
}

// resetError is the error of a socket an event said failed: its pending
// error, or one saying none was pending.
func resetError(fd int) error {
	if err := sockError(fd, "read"); err != nil {
		return err
	}
	return errSocketError
}

var errSocketError = errors.New("socket error reported without an error code")
