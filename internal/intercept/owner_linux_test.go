package intercept

import (
	"errors"
	"fmt"
	"os"
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
