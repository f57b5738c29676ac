package tcpproxy

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// socketPairs makes two non-blocking Unix socket pairs, closed when the
// test ends: fds[i] for the loop, peers[i] for the test to act on.
func socketPairs(t *testing.T) (fds, peers [2]int) {
	t.Helper()
	for i := range fds {
		sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		fds[i], peers[i] = sp[0], sp[1]
		t.Cleanup(func() { unix.Close(sp[0]); unix.Close(sp[1]) })
	}
	return fds, peers
}

// watchEvent is what serve saw in one call.
type watchEvent struct {
	readable, hup [2]bool
}

// TestWatch checks what a Watch tells its callback, on the loop, about
// two real socket pairs: bytes and a FIN on either socket, a Wake, and
// nothing more once the callback stopped it (the sockets stay open).
func TestWatch(t *testing.T) {
	for _, tc := range []struct {
		name string
		act  func(w *Watch, peers [2]int)
		want func(e watchEvent) bool
	}{
		{"bytes on 0", func(_ *Watch, p [2]int) { unix.Write(p[0], []byte("x")) },
			func(e watchEvent) bool { return e.readable[0] && !e.readable[1] && !e.hup[0] }},
		{"bytes on 1", func(_ *Watch, p [2]int) { unix.Write(p[1], []byte("x")) },
			func(e watchEvent) bool { return e.readable[1] && !e.readable[0] }},
		{"FIN on 1", func(_ *Watch, p [2]int) { unix.Shutdown(p[1], unix.SHUT_WR) },
			func(e watchEvent) bool { return e.readable[1] && e.hup[1] }},
		{"wake", func(w *Watch, _ [2]int) { w.Wake() },
			func(e watchEvent) bool { return !e.readable[0] && !e.readable[1] }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fds, peers := socketPairs(t)
			events := make(chan watchEvent, 16)
			stop := make(chan struct{})
			stopped := make(chan error, 1)
			w, err := NewWatch(fds, func(w *Watch) {
				select {
				case <-stop:
					stopped <- w.Stop()
					return
				default:
				}
				events <- watchEvent{[2]bool{w.Readable(0), w.Readable(1)}, [2]bool{w.Hup(0), w.Hup(1)}}
			})
			if err != nil {
				t.Fatal(err)
			}
			// Both sockets are writable at once: a call for each.
			for range 2 {
				if e := receive(t, events, "call of serve"); e.readable[0] || e.readable[1] {
					t.Fatalf("first calls: %+v, want nothing readable", e)
				}
			}
			tc.act(w, peers)
			if e := receive(t, events, "call of serve"); !tc.want(e) {
				t.Fatalf("after %s: %+v", tc.name, e)
			}
			close(stop)
			w.Wake()
			if err := <-stopped; err != nil {
				t.Fatalf("Stop: %v", err)
			}
			// Stopped: neither bytes nor a Wake reach serve.
			unix.Write(peers[0], []byte("y"))
			w.Wake()
			select {
			case e := <-events:
				t.Fatalf("serve called after Stop: %+v", e)
			case <-time.After(100 * time.Millisecond):
			}
			// The sockets are the caller's again, open.
			var b [8]byte
			if n, err := unix.Read(fds[0], b[:]); err != nil || n == 0 {
				t.Fatalf("read after Stop: %d, %v", n, err)
			}
		})
	}
}
