package intercept

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// OwnerDir holds the lock files of Own. /run is per boot and shared by every
// network namespace, so the files name the namespace they stand for.
var OwnerDir = "/run/detour"

// Owner is a run's hold on what its rules use in one network namespace:
// the nft table, and in tproxy mode the policy routing table and the mark
// its ip rule matches, which another table's rules would share. Without it
// a second `detour run` silently replaces the first one's rules, or
// removes the shared policy routing when it exits, while the first goes on
// reporting them installed. Each hold is an flock, which the kernel drops
// when the process dies, however it dies: a killed run's leftover rules
// never block the next one.
type Owner struct {
	files []*os.File // each opened by its path, which Name gives back
}

// ErrOwned is returned by Own when a live process holds the table.
var ErrOwned = errors.New("owned by another detour")

// Own takes the holds for o in o's network namespace. It fails with
// ErrOwned, naming what is held and the holder's pid, when another process
// has any of them.
func Own(o Options) (*Owner, error) {
	if err := o.validateTarget(); err != nil {
		return nil, err
	}
	o = o.withDefaults()
	holds := []hold{tableHold(o)}
	if o.Mode != ModeRedirect { // tproxy, and Clean's default
		holds = append(holds, routeHold(o.RouteTable), markHold(o.TProxyMark))
	}
	return own(o.NetNSFd, holds)
}

// tableHold is the hold on o's nft table.
func tableHold(o Options) hold { return hold{"table inet " + o.TableName, "table-" + o.TableName} }

// hold is one lock: what it stands for, and its file's name.
type hold struct{ what, file string }

func routeHold(table int) hold {
	return hold{fmt.Sprintf("route table %d", table), fmt.Sprintf("route-%d", table)}
}

func markHold(mark uint32) hold {
	return hold{fmt.Sprintf("tproxy mark %#x", mark), fmt.Sprintf("mark-%#x", mark)}
}

// ownPolicy takes the holds on p's route table and mark that Own(o) does
// not already take, before Apply or Clean removes policy routing that o's
// table recorded (a killed run's, with another mark or route table) or
// that redirect mode does not hold. A flock conflicts with another open
// of the same file even in this process, so a value Own(o) covers is not
// taken twice. It fails with ErrOwned when a live detour holds one: that
// policy routing is not a leftover, it is in use.
//
// held says whether the caller holds Own(o); CleanUnowned holds only the
// table, and takes every pair's holds here.
func ownPolicy(o Options, p policyPair, held bool) (*Owner, error) {
	var holds []hold
	covered := held && o.Mode != ModeRedirect
	if !covered || p.table != o.RouteTable {
		holds = append(holds, routeHold(p.table))
	}
	if !covered || p.mark != o.TProxyMark {
		holds = append(holds, markHold(p.mark))
	}
	return own(o.NetNSFd, holds)
}

// own takes holds in the network namespace fd (0: the caller's).
func own(fd int, holds []hold) (*Owner, error) {
	w := &Owner{}
	if len(holds) == 0 {
		return w, nil
	}
	ns, err := netnsInode(fd)
	if err != nil {
		return nil, fmt.Errorf("intercept: which network namespace: %w", err)
	}
	if err := os.MkdirAll(OwnerDir, 0o755); err != nil {
		return nil, fmt.Errorf("intercept: %w%s", err, ownerDirHint(err))
	}
	for _, h := range holds {
		name := fmt.Sprintf("netns-%d-%s", ns, h.file)
		if len(name) > 200 { // long table names: keep under the file name limit
			name = fmt.Sprintf("netns-%d-%x", ns, sha256.Sum256([]byte(h.file)))
		}
		path := filepath.Join(OwnerDir, name+".lock")
		f, err := lockFile(path)
		if err != nil {
			w.Release()
			if errors.Is(err, ErrOwned) {
				return nil, fmt.Errorf("intercept: %s in this network namespace is %w", h.what, err)
			}
			return nil, fmt.Errorf("intercept: lock %s: %w%s", path, err, ownerDirHint(err))
		}
		w.files = append(w.files, f)
	}
	return w, nil
}

// ownerDirHint says what to do when OwnerDir cannot be written: a run
// with CAP_NET_ADMIN but not root (setcap, or systemd's
// AmbientCapabilities) may install rules, yet /run is root's.
func ownerDirHint(err error) string {
	if !errors.Is(err, fs.ErrPermission) && !errors.Is(err, unix.EROFS) {
		return ""
	}
	return fmt.Sprintf(" (detour keeps a lock per table in %s: %s)", OwnerDir, OwnerDirFix())
}

// OwnerDirFix says how to let a detour that is not root take its locks.
func OwnerDirFix() string {
	return fmt.Sprintf("run detour as root, or give its user the directory: install -d -o USER %s, or RuntimeDirectory=detour in its systemd unit", OwnerDir)
}

// CheckOwnerDir reports whether Own could take its locks: OwnerDir, or
// where it would be made, is writable by this process. It changes nothing.
func CheckOwnerDir() error {
	dir := OwnerDir
	for {
		err := unix.Faccessat(unix.AT_FDCWD, dir, unix.W_OK|unix.X_OK, unix.AT_EACCESS)
		if errors.Is(err, unix.ENOENT) && filepath.Dir(dir) != dir {
			dir = filepath.Dir(dir) // made by the first Own: its parent must be writable
			continue
		}
		if err != nil {
			return fmt.Errorf("%s is not writable: %w", dir, err)
		}
		return nil
	}
}

// lockFile takes an exclusive flock on path and writes this process's pid
// in it; held, it returns ErrOwned with the holder's pid.
func lockFile(path string) (*os.File, error) {
	for {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
		if errors.Is(err, fs.ErrPermission) {
			if err := removeStale(path, err); err != nil {
				return nil, err
			}
			continue
		}
		if err != nil {
			return nil, err
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			b, _ := os.ReadFile(path)
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, fmt.Errorf("%w (pid %s)", ErrOwned, strings.TrimSpace(string(b)))
			}
			return nil, err
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
		return f, nil
	}
}

// removeStale removes the lock file at path that this process may not
// write (openErr): one a killed run of another user left, such as root's
// in a directory given to detour's user since (install -d -o USER).
// Removing it is what that run's Release would have done. A live holder
// is ErrOwned, as in lockFile: an flock needs only read access. When path
// cannot be read or removed either, the error says to remove it by hand.
func removeStale(path string, openErr error) error {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return openErr // the directory is what may not be written
	}
	if err != nil {
		return fmt.Errorf("%w (a run as another user left it: remove it, sudo rm %s)", openErr, path)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		if errors.Is(err, unix.EWOULDBLOCK) {
			b, _ := io.ReadAll(f)
			return fmt.Errorf("%w (pid %s)", ErrOwned, strings.TrimSpace(string(b)))
		}
		return err
	}
	// Held while it goes: whoever opened it before us finds, once its
	// lock comes, that the name is no longer that file (lockFile retries).
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		var st unix.Stat_t
		unix.Fstat(int(f.Fd()), &st)
		return fmt.Errorf("a killed run as uid %d left it, and this user may not remove it (%v): remove it, sudo rm %s", st.Uid, errors.Unwrap(err), path)
	}
	return nil
}

// Release gives the holds up. Safe on nil and twice.
func (w *Owner) Release() {
	if w == nil {
		return
	}
	for _, f := range w.files {
		os.Remove(f.Name()) // before the unlock: see the retry in lockFile
		f.Close()
	}
	w.files = nil
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
