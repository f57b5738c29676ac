package nice

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Set gives every thread of this process the nice value n. Linux keeps
// one per thread, and a new thread takes its creator's; once every thread
// has n, the threads Go's runtime starts later have it too. The pass over
// /proc/self/task repeats until it finds no thread it has not set, which
// covers one started meanwhile by a thread not yet set.
func Set(n int) error {
	if n < Min || n > Max {
		return fmt.Errorf("nice %d: want %d to %d", n, Min, Max)
	}
	set := map[int]bool{}
	for {
		tids, err := Threads(os.Getpid())
		if err != nil {
			return err
		}
		fresh := false
		for _, tid := range tids {
			if set[tid] {
				continue
			}
			err := unix.Setpriority(unix.PRIO_PROCESS, tid, n)
			switch {
			case errors.Is(err, unix.ESRCH): // the thread has ended
			case errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM):
				return fmt.Errorf("nice %d: a value below the current one needs root (CAP_SYS_NICE): %w", n, err)
			case err != nil:
				return fmt.Errorf("nice %d: %w", n, err)
			}
			set[tid] = true
			fresh = true
		}
		if !fresh {
			return nil
		}
	}
}

// Of returns the nice value of thread tid of process pid, the nineteenth
// field of /proc/PID/task/TID/stat.
func Of(pid, tid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/stat", pid, tid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces and parentheses; field 3
	// starts past its last ')'.
	fields := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(fields) < 17 {
		return 0, fmt.Errorf("/proc/%d/task/%d/stat: %d fields after the name, want 17 or more", pid, tid, len(fields))
	}
	return strconv.Atoi(fields[16])
}

// Threads returns the thread ids of process pid.
func Threads(pid int) ([]int, error) {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return nil, err
	}
	tids := make([]int, 0, len(ents))
	for _, e := range ents {
		if tid, err := strconv.Atoi(e.Name()); err == nil {
			tids = append(tids, tid)
		}
	}
	return tids, nil
}
