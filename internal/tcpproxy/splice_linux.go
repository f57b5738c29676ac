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

// pipes is a bounded free list of empty pipes. A pipe is held only while
// a bulk burst is being spliced, never while a connection waits, so an
// idle connection costs no pipe. Beyond the bound, pipes are closed.
var pipes struct {
	mu   sync.Mutex
	free []*pipe
}

const maxFreePipes = 64

func getPipe() (*pipe, error) {
	pipes.mu.Lock()
	if n := len(pipes.free); n > 0 {
		p := pipes.free[n-1]
		pipes.free = pipes.free[:n-1]
		pipes.mu.Unlock()
		return p, nil
	}
	pipes.mu.Unlock()
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, os.NewSyscallError("pipe2", err)
	}
	// Best effort: past fs.pipe-max-size the default (64 KiB) stays.
	unix.FcntlInt(uintptr(fds[1]), unix.F_SETPIPE_SZ, spliceChunk)
	return &pipe{r: fds[0], w: fds[1]}, nil
}

// putPipe returns an empty pipe to the free list (or closes it).
func putPipe(p *pipe) {
	pipes.mu.Lock()
	if len(pipes.free) < maxFreePipes {
		pipes.free = append(pipes.free, p)
		p = nil
	}
	pipes.mu.Unlock()
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
	p        *pipe
	n, m     int64 // bytes in the pipe; bytes the last drain moved
	err      error // errno of the last splice
	fillFn   func(uintptr)
	drainFn  func(uintptr) bool
}

func (s *splicer) init(dst, src syscall.RawConn) {
	s.dst, s.src = dst, src
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
	p, err := getPipe()
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
			putPipe(p) // queue empty, or EOF
			return total, nil
		case err == nil && s.err != nil:
			err = os.NewSyscallError("splice", s.err)
		}
		if err != nil {
			putPipe(p) // nothing entered the pipe
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
