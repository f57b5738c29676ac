package intercept

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// OwnerDir holds the lock files of Own. /run is per boot and shared by every
// network namespace, so the files name the namespace they stand for.
var OwnerDir = "/run/detour"

// Owner is a run's hold on one table's rules in one network namespace.
// Without it a second `detour run` with the same table silently replaces
// the first one's rules, and removes them when it exits while the first
// goes on reporting them installed. The hold is an flock, so the kernel
// drops it when the process dies, however it dies: a killed run's leftover
// rules never block the next one.
type Owner struct {
	f    *os.File
	path string
}

// ErrOwned is returned by Own when a live process holds the table.
var ErrOwned = errors.New("owned by another detour")

// Own takes the hold on o's table in o's network namespace. It fails with
// ErrOwned, naming the holder's pid, when another process has it.
func Own(o Options) (*Owner, error) {
	if err := o.validateTarget(); err != nil {
		return nil, err
	}
	o = o.withDefaults()
	ns, err := netnsInode(o.NetNSFd)
	if err != nil {
		return nil, fmt.Errorf("intercept: which network namespace: %w", err)
	}
	if err := os.MkdirAll(OwnerDir, 0o755); err != nil {
		return nil, fmt.Errorf("intercept: %w", err)
	}
	path := filepath.Join(OwnerDir, fmt.Sprintf("netns-%d-table-%s.lock", ns, o.TableName))
	for {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			return nil, fmt.Errorf("intercept: %w", err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			b, _ := os.ReadFile(path)
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, fmt.Errorf("intercept: table inet %s in this network namespace is %w (pid %s)", o.TableName, ErrOwned, strings.TrimSpace(string(b)))
			}
			return nil, fmt.Errorf("intercept: lock %s: %w", path, err)
		}
		// The holder before us may have removed the file after we opened
		// it: then our lock is on a name nobody else will open. Retry.
		var held, named unix.Stat_t
		if unix.Fstat(int(f.Fd()), &held) != nil || unix.Stat(path, &named) != nil || held.Ino != named.Ino {
			f.Close()
			continue
		}
		f.Truncate(0)
		f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
		return &Owner{f: f, path: path}, nil
	}
}

// Release gives the hold up. Safe on nil and twice.
func (w *Owner) Release() {
	if w == nil || w.f == nil {
		return
	}
	os.Remove(w.path) // before the unlock: see the retry in Own
	w.f.Close()
	w.f = nil
}

// netnsInode identifies a network namespace: fd's, or the calling thread's.
func netnsInode(fd int) (uint64, error) {
	var st unix.Stat_t
	if fd != 0 {
		err := unix.Fstat(fd, &st)
		return st.Ino, err
	}
	err := unix.Stat("/proc/thread-self/ns/net", &st)
	return st.Ino, err
}
