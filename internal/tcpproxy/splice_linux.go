package tcpproxy

import (
	"os"
	"sync"

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
