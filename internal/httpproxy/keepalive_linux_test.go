package httpproxy

import (
	"io"
	"net/http"
	"testing"
	"time"
)

// TestKeepAliveIdleTimeout checks IdleTimeout on each way a keep-alive
// connection is served between requests: its goroutine, an L4 loop (from
// the request after loopAfter), the loop and then the goroutine when the
// cleanup interval hands the connection back first, and net/http. A client
// idle past it sees the connection closed, with no record (there was no
// request); one that keeps sending requests more often stays open past it.
func TestKeepAliveIdleTimeout(t *testing.T) {
	// Far longer than the pause between the busy client's requests: on a
	// loaded machine a 50 ms sleep has taken 490 ms.
	const idle = time.Second
	for _, tc := range []struct {
		name     string
		o        Options
		requests int  // before the client idles
		onLoop   bool // a loop serves the connection then
	}{
		{name: "goroutine", o: Options{}, requests: 1},
		{name: "goroutine, loops off", o: Options{DisableLoops: true}, requests: loopAfter + 1},
		{name: "loop", o: Options{}, requests: loopAfter + 1, onLoop: true},
		{name: "loop, then goroutine", o: Options{CleanupInterval: idle / 3}, requests: loopAfter + 1, onLoop: true},
		{name: "net/http", o: Options{DisableFastPath: true}, requests: loopAfter + 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			up := loopUpstream(t)
			tc.o.IdleTimeout = idle
			f := newFront(t, tc.o, up.addrPort())

			t.Run("idle", func(t *testing.T) {
				c, br := f.raw(t)
				for range tc.requests {
					roundTrips(t, c, br, getSmall, "GET", 1)
					f.info(t)
				}
				if tc.onLoop {
					waitOnLoop(t, f.p)
				}
				start := time.Now()
				if b, err := br.ReadByte(); err != io.EOF {
					t.Fatalf("read %q, %v after %v idle; want EOF", b, err, time.Since(start))
				}
				// Generous bounds: not before the timeout (less the time
				// the response took to be read), not long after it.
				if d := time.Since(start); d < idle/2 || d > 5*time.Second {
					t.Errorf("closed after %v idle; want about %v", d, idle)
				}
				select {
				case i := <-f.infos:
					t.Errorf("a record for the idle close: %+v", i)
				case <-time.After(100 * time.Millisecond):
				}
			})

			t.Run("busy", func(t *testing.T) {
				c, br := f.raw(t)
				start, last := time.Now(), time.Now()
				for i := 0; time.Since(start) < 5*idle/2 || i < tc.requests+2; i++ {
					io.WriteString(c, getSmall)
					res, err := http.ReadResponse(br, &http.Request{Method: "GET"})
					if err == nil {
						_, err = io.Copy(io.Discard, res.Body)
					}
					if err != nil {
						t.Fatalf("request %d, %v after the previous response: %v", i, time.Since(last), err)
					}
					last = time.Now()
					f.info(t)
					time.Sleep(idle / 10)
				}
			})
		})
	}
}
