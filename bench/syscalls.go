package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
)

// Counting a proxy's system calls (-syscalls) shows where detour and
// HAProxy differ per request: the same reads and writes move the bytes,
// but a reader in Go's netpoller reads once more, to be told EAGAIN,
// before it waits. perf counts them from two kernel tracepoints (every
// system call entered, and those that returned EAGAIN) for the proxy's
// process only. While counting, every system call on the machine takes
// the kernel's tracing path, so the other rows of a -syscalls run are a
// little slower for every proxy alike; it is off by default.

// syscallEvents are perf's events: all system calls, and those that
// returned -EAGAIN (-11).
var syscallEvents = []string{"-e", "raw_syscalls:sys_enter", "-e", "raw_syscalls:sys_exit", "--filter", "ret == -11"}

// syscallCount is a perf stat attached to one process for the length of a
// workload.
type syscallCount struct {
	cmd    *exec.Cmd
	stderr bytes.Buffer
}

// countSyscalls starts counting pid's system calls.
func countSyscalls(pid int) (*syscallCount, error) {
	c := &syscallCount{}
	args := append([]string{"stat", "-x,"}, syscallEvents...)
	c.cmd = exec.Command("perf", append(args, "-p", strconv.Itoa(pid))...)
	c.cmd.Stderr = &c.stderr
	if err := c.cmd.Start(); err != nil {
		return nil, fmt.Errorf("perf: %w", err)
	}
	return c, nil
}

// stop ends the count and returns the system calls and the EAGAIN returns.
func (c *syscallCount) stop() (calls, eagain float64, err error) {
	c.cmd.Process.Signal(os.Interrupt)
	c.cmd.Wait() // perf exits non-zero on SIGINT; its counts are on stderr
	return parsePerfStat(c.stderr.String())
}

// parsePerfStat reads perf stat -x, output: one "count,unit,event,..."
// line per event, in the order the events were given.
func parsePerfStat(out string) (calls, eagain float64, err error) {
	var counts []float64
	for _, line := range strings.Split(out, "\n") {
		f := strings.Split(line, ",")
		if len(f) < 3 || !strings.HasPrefix(f[2], "raw_syscalls:") {
			continue
		}
		n, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			return 0, 0, fmt.Errorf("perf stat: %q: %w", line, err)
		}
		counts = append(counts, n)
	}
	if len(counts) != 2 {
		return 0, 0, fmt.Errorf("perf stat printed %d counts, want 2:\n%s", len(counts), indent(out))
	}
	return counts[0], counts[1], nil
}
