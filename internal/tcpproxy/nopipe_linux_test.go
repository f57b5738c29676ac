package tcpproxy

import (
	"bytes"
	"io"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/detour-proxy/detour/internal/fdtest"
)

// TestBulkWithoutPipesStillCopies (in a process of its own: it fills the
// descriptor table for a moment): when no pipe can be made for a bulk
// burst (the process is out of descriptors, as near its limit under load),
// the burst is copied through the buffer instead; before, the pair was
// reset after its first 16 KiB.
func TestBulkWithoutPipesStillCopies(t *testing.T) {
	if !fdtest.InOwnProcess(t) {
		return
	}
	client, server, done := harness(t, Options{}) // nil Pipes: every burst makes a pipe
	// A byte through the pair first: harness returns before its goroutine
	// has started the pair, and the pair's loop may still have to be
	// made (the loops start with the first pair of the process). Both
	// need descriptors: under load they came after the limit was filled,
	// and the pair, and every pair of the process after it, was reset.
	if _, err := client.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	server.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(server, make([]byte, 1)); err != nil {
		t.Fatalf("first byte: %v", err)
	}
	release := fdtest.Exhaust(t)
	defer release()
	if canPipe() {
		t.Fatal("a pipe could still be made")
	}

	payload := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	go func() { client.Write(payload); client.CloseWrite() }()
	server.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(server)
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("server got %d of %d bytes, then %v", len(got), len(payload), err)
	}
	release()
	server.Close()
	if r := waitResult(t, done); r.End != EndClosed || r.Sent != int64(len(payload))+1 {
		t.Fatalf("result %+v, want closed with %d bytes sent", r, len(payload)+1)
	}
}

// TestLoopStartRetried (in a process of its own: it fills the
// descriptor table):
// loops that cannot be made for want of descriptors are tried again by
// the next pair, not given up on for the life of the process.
func TestLoopStartRetried(t *testing.T) {
	if !fdtest.InOwnProcess(t) {
		return
	}
	s := loopSet{want: 1}
	release := fdtest.Exhaust(t)
	if _, err := s.pick(); err == nil {
		release()
		t.Fatal("a loop was made with no descriptor left")
	}
	release()
	if l, err := s.pick(); err != nil || l == nil {
		t.Fatalf("pick after descriptors were freed: %v, %v", l, err)
	}
	if n := s.count(); n != 1 {
		t.Errorf("%d loops, want 1", n)
	}
}

// canPipe reports whether a pipe can be made now.
func canPipe() bool {
	var fds [2]int
	if unix.Pipe2(fds[:], unix.O_CLOEXEC) != nil {
		return false
	}
	unix.Close(fds[0])
	unix.Close(fds[1])
	return true
}
