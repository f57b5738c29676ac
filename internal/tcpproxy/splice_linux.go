package tcpproxy

import (
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// spliceChunk is the most one splice moves; pipes are sized to hold it.
const spliceChunk = 1 << 20

// pipe is a kernel pipe that splice moves bytes through, socket to pipe
// to socket, without copying them into user space.
type pipe struct{ r, w int }

// Pipes is a bounded free list of empty pipes, shared by the pairs of one
// proxy (Options.Pipes). A pipe is taken only while a bulk burst is being
// spliced, never while a connection waits, so an idle connection costs no
// pipe; beyond the bound, returned pipes are closed. A nil *Pipes makes a
// pipe for each burst and closes it after.
type Pipes struct {
	mu     sync.Mutex
	free   []*pipe
	closed bool
}

const maxFreePipes = 64

// NewPipes returns an empty free list.
func NewPipes() *Pipes { return &Pipes{} }

// Close closes the pipes on the list; pipes returned later are closed.
func (ps *Pipes) Close() {
	ps.mu.Lock()
	free := ps.free
	ps.free, ps.closed = nil, true
	ps.mu.Unlock()
	for _, p := range free {
		p.close()
	}
}

// idle is the number of pipes on the list.
func (ps *Pipes) idle() int {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return len(ps.free)
}

func (ps *Pipes) get() (*pipe, error) {
	if ps != nil {
		ps.mu.Lock()
		if n := len(ps.free); n > 0 {
			p := ps.free[n-1]
			ps.free = ps.free[:n-1]
			ps.mu.Unlock()
			return p, nil
		}
		ps.mu.Unlock()
	}
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, os.NewSyscallError("pipe2", err)
	}
	// Best effort: past fs.pipe-max-size the default (64 KiB) stays.
	unix.FcntlInt(uintptr(fds[1]), unix.F_SETPIPE_SZ, spliceChunk)
	return &pipe{r: fds[0], w: fds[1]}, nil
}

// put returns an empty pipe to the list, or closes it.
func (ps *Pipes) put(p *pipe) {
	if ps != nil {
		ps.mu.Lock()
		if !ps.closed && len(ps.free) < maxFreePipes {
			ps.free = append(ps.free, p)
			p = nil
		}
		ps.mu.Unlock()
	}
	if p != nil {
		p.close()
	}
}

func (p *pipe) close() {
	unix.Close(p.r)
	unix.Close(p.w)
}

// splicer moves bulk bursts of one direction. Its methods are the
// callbacks of the raw connections, bound once per connection, so that
// splicing allocates nothing per chunk.
type splicer struct {
	dst, src syscall.RawConn
	pipes    *Pipes
	p        *pipe
	n, m     int64 // bytes in the pipe; bytes the last drain moved
	err      error // errno of the last splice
	fillFn   func(uintptr)
	drainFn  func(uintptr) bool
}

func (s *splicer) init(dst, src syscall.RawConn, pipes *Pipes) {
	s.dst, s.src, s.pipes = dst, src, pipes
	s.fillFn, s.drainFn = s.fill, s.drain
}

// fill splices what src holds into the pipe, without waiting.
func (s *splicer) fill(fd uintptr) {
	for {
		s.n, s.err = unix.Splice(int(fd), nil, s.p.w, nil, spliceChunk, unix.SPLICE_F_NONBLOCK|unix.SPLICE_F_MOVE)
		if s.err != unix.EINTR {
			return
		}
	}
}

// drain splices the pipe's bytes into dst; false waits until dst is
// writable.
func (s *splicer) drain(fd uintptr) bool {
	s.m, s.err = unix.Splice(s.p.r, nil, int(fd), nil, int(s.n), unix.SPLICE_F_NONBLOCK|unix.SPLICE_F_MOVE)
	return s.err != unix.EAGAIN && s.err != unix.EINTR
}

// spliceQueued moves what src has queued to dst, chunk after chunk, until
// src's queue is empty (or at EOF, which the caller's next read sees). It
// waits only for dst to take the bytes, never for src: two splices per
// chunk and one that finds the queue empty.
func (s *splicer) spliceQueued() (int64, error) {
	p, err := s.pipes.get()
	if err != nil {
		return 0, err
	}
	s.p = p
	defer func() { s.p = nil }()
	var total int64
	for {
		s.n, s.err = 0, nil
		err := s.src.Control(s.fillFn)
		switch {
		case err == nil && s.err == unix.EAGAIN, err == nil && s.err == nil && s.n == 0:
			s.pipes.put(p) // queue empty, or EOF
			return total, nil
		case err == nil && s.err != nil:
			err = os.NewSyscallError("splice", s.err)
		}
		if err != nil {
			s.pipes.put(p) // nothing entered the pipe
			return total, err
		}
		for s.n > 0 {
			s.m, s.err = 0, nil
			err := s.dst.Write(s.drainFn)
			if err == nil && s.err != nil {
				err = os.NewSyscallError("splice", s.err)
			}
			if err != nil {
				p.close() // bytes may be left in it
				return total, err
			}
			s.n -= s.m
			total += s.m
		}
	}
}
