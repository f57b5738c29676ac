package nice

import (
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// niceOfEveryThread returns each thread of this process's nice value.
func niceOfEveryThread(t *testing.T) map[int]int {
	t.Helper()
	tids, err := Threads(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	got := map[int]int{}
	for _, tid := range tids {
		n, err := Of(os.Getpid(), tid)
		if err != nil {
			continue // the thread ended
		}
		got[tid] = n
	}
	return got
}

// TestSetReachesEveryThread checks that Set changes every thread the
// process has, and that threads the runtime starts afterwards inherit it.
// Raising a nice value needs no privilege; putting it back does.
func TestSetReachesEveryThread(t *testing.T) {
	before := niceOfEveryThread(t)
	if err := Set(7); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		t.Cleanup(func() { Set(0) })
	}
	for tid, n := range niceOfEveryThread(t) {
		if n != 7 {
			t.Errorf("thread %d: nice %d after Set(7), want 7", tid, n)
		}
	}
	// Threads locked by goroutines that block force the runtime to start
	// new ones.
	var started, release sync.WaitGroup
	release.Add(1)
	for range 4 {
		started.Add(1)
		go func() {
			runtime.LockOSThread()
			started.Done()
			release.Wait()
		}()
	}
	started.Wait()
	after := niceOfEveryThread(t)
	release.Done()
	if len(after) <= len(before) {
		t.Fatalf("%d threads after locking four, %d before: no new thread to check", len(after), len(before))
	}
	for tid, n := range after {
		if n != 7 {
			t.Errorf("thread %d (started after Set): nice %d, want 7", tid, n)
		}
	}
}

func TestSetRejects(t *testing.T) {
	for _, tt := range []struct {
		n    int
		want string
	}{
		{n: -21, want: "nice -21: want -20 to 19"},
		{n: 20, want: "nice 20: want -20 to 19"},
	} {
		if err := Set(tt.n); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Set(%d) = %v, want %q", tt.n, err, tt.want)
		}
	}
	if os.Geteuid() != 0 {
		if err := Set(-1); err == nil || !strings.Contains(err.Error(), "needs root") {
			t.Errorf("Set(-1) as non-root = %v, want an error that names root", err)
		}
	}
}

// TestOfReadsWhatTheKernelSays checks Of against getpriority(2), which
// returns 20 minus the nice value, on a thread given a nice value of its own.
func TestOfReadsWhatTheKernelSays(t *testing.T) {
	runtime.LockOSThread() // the thread ends with the test's goroutine
	tid := unix.Gettid()
	if err := unix.Setpriority(unix.PRIO_PROCESS, tid, 11); err != nil {
		t.Fatal(err)
	}
	prio, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := Of(os.Getpid(), tid); err != nil || got != 20-prio || got != 11 {
		t.Errorf("Of = %d, %v; getpriority says %d, set 11", got, err, 20-prio)
	}
	if _, err := Of(os.Getpid(), 1<<30); err == nil {
		t.Error("Of for a thread that does not exist: no error")
	}
}
