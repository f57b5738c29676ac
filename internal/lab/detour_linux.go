package lab

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/detour-proxy/detour/internal/ns"
)

// Detour is a `detour run` process inside a namespace.
type Detour struct {
	cmd  *exec.Cmd
	out  *lineLog
	done chan struct{}

	// Set before done is closed.
	waitErr error

	mu     sync.Mutex
	killed bool // by Kill: its exit status is not an error
}

const (
	// readyTimeout bounds how long StartDetour waits for msg=ready.
	readyTimeout = 30 * time.Second
	// stopTimeout is how long Stop waits after SIGTERM before SIGKILL.
	stopTimeout = 10 * time.Second
	// keptLines is how many lines of output Output keeps.
	keptLines = 500
)

// StartDetour runs `ip netns exec NS binary run ARGS...`, copies its output
// (stdout and stderr, line by line) to log, and returns once it has logged
// a line containing "msg=ready". If it exits first, or is not ready within
// 30s, the error carries its output.
//
// The process lives until Stop or Kill, until ctx is done (then it gets
// SIGTERM, and SIGKILL 10s later), or until this process dies (it gets
// SIGTERM, so it can still remove its rules). It runs in its own process
// group, so a Ctrl-C in the terminal reaches the caller, which stops it in
// order.
func StartDetour(ctx context.Context, n *ns.NS, binary string, args []string, log io.Writer) (*Detour, error) {
	if log == nil {
		log = io.Discard
	}
	cmd := n.Command(ctx, binary, append([]string{"run"}, args...)...)
	d := &Detour{cmd: cmd, out: newLineLog(log, "msg=ready"), done: make(chan struct{})}
	cmd.Stdout = d.out
	cmd.Stderr = d.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = stopTimeout

	waited, err := ns.StartPinned(cmd) // Pdeathsig only when this process dies
	if err != nil {
		return nil, fmt.Errorf("start detour in %s: %w", n.Name, err)
	}
	go func() {
		d.waitErr = <-waited
		d.out.flush()
		close(d.done)
	}()

	timer := time.NewTimer(readyTimeout)
	defer timer.Stop()
	select {
	case <-d.out.ready:
		return d, nil
	case <-d.done:
		return nil, fmt.Errorf("detour exited before it was ready (%v); its output:\n%s", d.waitErr, indent(d.Output(), "  "))
	case <-ctx.Done():
		d.Kill()
		return nil, ctx.Err()
	case <-timer.C:
		d.Kill()
		return nil, fmt.Errorf("detour logged no msg=ready within %s; its output:\n%s", readyTimeout, indent(d.Output(), "  "))
	}
}

// Pid is the detour process's id (`ip netns exec` execs it in place).
func (d *Detour) Pid() int { return d.cmd.Process.Pid }

// Done is closed once the process has exited.
func (d *Detour) Done() <-chan struct{} { return d.done }

// Output returns the process's last output lines.
func (d *Detour) Output() string { return d.out.String() }

// Stop sends SIGTERM, on which detour removes its rules and exits, and
// waits for it; after 10s it sends SIGKILL and reports that. It returns an
// error, with the output, when detour exits unsuccessfully. Calling it
// again, or after the process exited, returns the same result.
func (d *Detour) Stop() error {
	select {
	case <-d.done:
		return d.exitErr()
	default:
	}
	d.cmd.Process.Signal(syscall.SIGTERM) // fails only if it just exited
	timer := time.NewTimer(stopTimeout)
	defer timer.Stop()
	select {
	case <-d.done:
		return d.exitErr()
	case <-timer.C:
		d.Kill()
		return fmt.Errorf("detour (pid %d) did not exit within %s of SIGTERM and was killed; its output:\n%s",
			d.Pid(), stopTimeout, indent(d.Output(), "  "))
	}
}

// Kill sends SIGKILL and waits for the process to go, leaving its rules
// behind as a crash would.
func (d *Detour) Kill() {
	d.mu.Lock()
	d.killed = true
	d.mu.Unlock()
	d.cmd.Process.Kill()
	<-d.done
}

func (d *Detour) exitErr() error {
	d.mu.Lock()
	killed := d.killed
	d.mu.Unlock()
	// After ctx is done, Wait reports ctx's error even when detour
	// exited cleanly on the SIGTERM that cancellation sent.
	if d.waitErr == nil || killed || d.cmd.ProcessState.Success() {
		return nil
	}
	return fmt.Errorf("detour (pid %d) exited: %w; its output:\n%s", d.Pid(), d.waitErr, indent(d.Output(), "  "))
}

// lineLog splits output into lines, copies each to w, keeps the last
// keptLines, and closes ready at the first line containing marker.
type lineLog struct {
	mu      sync.Mutex
	w       io.Writer
	marker  string
	partial []byte
	lines   []string
	ready   chan struct{}
	isReady bool
}

func newLineLog(w io.Writer, marker string) *lineLog {
	return &lineLog{w: w, marker: marker, ready: make(chan struct{})}
}

func (l *lineLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		l.line(string(l.partial[:i]))
		l.partial = l.partial[i+1:]
	}
	if len(l.partial) > 64<<10 { // no newline in sight: don't grow forever
		l.line(string(l.partial))
		l.partial = nil
	}
	return len(p), nil
}

func (l *lineLog) flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.partial) > 0 {
		l.line(string(l.partial))
		l.partial = nil
	}
}

func (l *lineLog) line(s string) {
	io.WriteString(l.w, s+"\n")
	l.lines = append(l.lines, s)
	if len(l.lines) > keptLines {
		l.lines = append([]string(nil), l.lines[len(l.lines)-keptLines:]...)
	}
	if !l.isReady && strings.Contains(s, l.marker) {
		l.isReady = true
		close(l.ready)
	}
}

func (l *lineLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// indent prefixes every line of s.
func indent(s, prefix string) string {
	if s == "" {
		return prefix + "(no output)"
	}
	return prefix + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n"+prefix)
}
