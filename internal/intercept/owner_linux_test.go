package intercept

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestOwn: one hold per table and network namespace, however many try;
// another table, or another namespace, is free; a released hold can be
// taken again.
func TestOwn(t *testing.T) {
	OwnerDir = t.TempDir()
	a := newNS(t)
	first, err := Own(inNS(Options{}, a))
	if err != nil {
		t.Fatal(err)
	}
	defer first.Release()
	_, err = Own(inNS(Options{}, a))
	if !errors.Is(err, ErrOwned) || !strings.Contains(err.Error(), fmt.Sprintf("pid %d", os.Getpid())) {
		t.Fatalf("second hold on the same table: %v, want ErrOwned naming pid %d", err, os.Getpid())
	}
	// In tproxy mode the policy routing is shared: another table needs its
	// own route table and mark.
	if _, err := Own(inNS(Options{TableName: "detour_b"}, a)); !errors.Is(err, ErrOwned) || !strings.Contains(err.Error(), "route table 100") {
		t.Errorf("another table with the same route table: %v, want ErrOwned naming route table 100", err)
	}
	if _, err := Own(inNS(Options{TableName: "detour_b", RouteTable: 101}, a)); !errors.Is(err, ErrOwned) || !strings.Contains(err.Error(), "tproxy mark 0x1") {
		t.Errorf("another table with the same mark: %v, want ErrOwned naming tproxy mark 0x1", err)
	}
	for _, o := range []Options{
		{TableName: "detour_b", RouteTable: 101, TProxyMark: 0x3, UpstreamMark: 0x4},
		{Mode: ModeRedirect, TableName: "detour_c"},
		{Mode: ModeRedirect, TableName: "t" + strings.Repeat("x", 250), RouteTable: 102, TProxyMark: 0x5}, // a long name: a hashed file name
	} {
		other, err := Own(inNS(o, a))
		if err != nil {
			t.Fatalf("%+v beside the first: %v", o, err)
		}
		other.Release()
	}
	t.Run("another namespace", func(t *testing.T) {
		elsewhere, err := Own(inNS(Options{}, newNS(t)))
		if err != nil {
			t.Fatalf("the same table in another namespace: %v", err)
		}
		elsewhere.Release()
	})

	first.Release()
	first.Release() // twice is harmless
	again, err := Own(inNS(Options{}, a))
	if err != nil {
		t.Fatalf("after the release: %v", err)
	}
	again.Release()
	if ents, _ := os.ReadDir(OwnerDir); len(ents) != 0 {
		t.Errorf("lock files left after every release: %v", ents)
	}
}

// asNobody runs fn on a thread of its own whose file system uid and gid are
// nobody's, as a detour that runs with CAP_NET_ADMIN but not as root
// (setcap, systemd's AmbientCapabilities) meets the file system.
func asNobody(fn func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread goes with the goroutine
		unix.Setfsgid(65534)
		unix.Setfsuid(65534)
		fn()
	}()
	<-done
}

// TestOwnWithoutWriteAccess: where the lock directory is root's and detour
// is not root, Own's error and CheckOwnerDir (which `detour check` shows)
// say what to do, instead of a bare "permission denied" that `detour
// check`, all ok with CAP_NET_ADMIN, did not foresee.
func TestOwnWithoutWriteAccess(t *testing.T) {
	tempOwnerDir(t)
	OwnerDir += "/detour"
	a := newNS(t)
	if err := CheckOwnerDir(); err != nil {
		t.Fatalf("CheckOwnerDir as root: %v", err)
	}
	var ownErr, checkErr error
	asNobody(func() {
		var w *Owner
		w, ownErr = Own(inNS(Options{}, a))
		w.Release()
		checkErr = CheckOwnerDir()
	})
	if ownErr == nil || !strings.Contains(ownErr.Error(), "install -d -o USER "+OwnerDir) {
		t.Errorf("Own without write access to the lock directory: %v; want it to say how to give detour's user %s", ownErr, OwnerDir)
	}
	if checkErr == nil {
		t.Errorf("CheckOwnerDir without write access to the lock directory: no error")
	}
}

// TestOwnReplacesAnotherUsersStaleLock: a lock file that a killed root run
// left in a lock directory given to detour's user since (install -d -o
// USER) is removed and taken, as that run's exit would have removed it;
// held by a live run, it is that run's (ErrOwned, with its pid); where the
// user may not remove it (a sticky directory of root's), the error says to
// remove it. Before, each said only "permission denied".
func TestOwnReplacesAnotherUsersStaleLock(t *testing.T) {
	a := newNS(t)
	ino, err := netnsInode(a.Fd())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		dirMode  os.FileMode
		dirUID   int
		liveRoot bool // a root run holds the lock
		want     string
	}{
		{"stale_in_users_dir", 0o755, 65534, false, ""},
		{"held_by_live_root_run", 0o755, 65534, true, fmt.Sprintf("owned by another detour (pid %d)", os.Getpid())},
		{"stale_in_sticky_root_dir", 0o777 | os.ModeSticky, 0, false, "sudo rm "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tempOwnerDir(t)
			// The test's temp directories are root's 0700: let nobody in.
			for d := OwnerDir; d != os.TempDir(); d = filepath.Dir(d) {
				if err := os.Chmod(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.Chmod(OwnerDir, tc.dirMode); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(OwnerDir, tc.dirUID, tc.dirUID); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(OwnerDir, fmt.Sprintf("netns-%d-table-detour.lock", ino))
			if tc.liveRoot {
				w, err := Own(inNS(Options{Mode: ModeRedirect}, a))
				if err != nil {
					t.Fatal(err)
				}
				defer w.Release()
			} else if err := os.WriteFile(path, []byte("1\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			var w *Owner
			asNobody(func() { w, err = Own(inNS(Options{Mode: ModeRedirect}, a)) })
			defer w.Release()
			if tc.want == "" {
				var st unix.Stat_t
				if err != nil {
					t.Fatalf("Own as nobody over a stale root lock: %v", err)
				}
				if serr := unix.Stat(path, &st); serr != nil || st.Uid != 65534 {
					t.Errorf("lock file after Own: uid %d, %v; want nobody's new file", st.Uid, serr)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Own as nobody: %v; want an error saying %q", err, tc.want)
			}
		})
	}
}
