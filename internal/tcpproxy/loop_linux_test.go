package tcpproxy

import (
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/detour-proxy/detour/internal/fdtest"
	"github.com/detour-proxy/detour/internal/rawsys"
)

// loopGoroutines returns the header line of every goroutine running a
// loop (its stack holds tcpproxy.(*loop).run).
func loopGoroutines() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var heads []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "tcpproxy.(*loop).run") {
			head, _, _ := strings.Cut(g, "\n")
			heads = append(heads, head)
		}
	}
	return heads
}

// inIOWait reports whether a goroutine header line ("goroutine 12 [IO
// wait]:", "goroutine 12 [IO wait, 2 minutes]:") says the goroutine is
// parked in the netpoller.
func inIOWait(head string) bool {
	_, state, ok := strings.Cut(head, "[")
	return ok && strings.HasPrefix(state, "IO wait")
}

// pumpCounter is a member that only reports its events, each with the
// number of times its loop had parked when the event was handled.
type pumpCounter struct{ pumps chan uint64 }

func (p *pumpCounter) pump(l *loop)            { p.pumps <- l.parks.Load() }
func (p *pumpCounter) runTask(*loop, taskKind) {}
func (p *pumpCounter) gone() bool              { return false }

// yieldLoop is a test-made loop whose yields are counted (and may run a
// hook), serving a pumpCounter on two socket pairs. It does not linger,
// as on a kernel without epoll_pwait2: the yield is then what it does
// before it parks.
type yieldLoop struct {
	l       *loop
	peers   [2]int // the test's ends of the loop's sockets
	m       *pumpCounter
	yields  atomic.Int32
	onYield atomic.Pointer[func()] // run once, by the next yield
}

// newYieldLoop starts the loop and waits until the events of its first
// batches (both sockets writable at once) have passed.
func newYieldLoop(t *testing.T) *yieldLoop {
	t.Helper()
	y := &yieldLoop{m: &pumpCounter{pumps: make(chan uint64, 64)}}
	var err error
	y.l, err = newLoop(func() {
		y.yields.Add(1)
		if f := y.onYield.Swap(nil); f != nil {
			(*f)()
		}
	}, 0)
	if err != nil {
		t.Fatal(err)
	}
	var fds [2]int
	fds, y.peers = socketPairs(t)
	if err := y.l.register(&endpoint{fd: fds[0], m: y.m}, &endpoint{fd: fds[1], m: y.m}); err != nil {
		t.Fatal(err)
	}
	receive(t, y.m.pumps, "first event")
	y.settle(t)
	for len(y.m.pumps) > 0 {
		<-y.m.pumps
	}
	return y
}

// settle waits until the yield count has not moved for 100 ms, and
// returns it.
func (y *yieldLoop) settle(t *testing.T) int32 {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for n := y.yields.Load(); time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
		m := y.yields.Load()
		if m == n {
			return n
		}
		n = m
	}
	t.Fatal("the loop did not settle")
	return 0
}

// TestLoopYieldsBeforeParking checks that the loop's thread yields its CPU
// once each time it parks after handling events: a byte arriving on one
// socket is one batch, one park and one yield.
func TestLoopYieldsBeforeParking(t *testing.T) {
	y := newYieldLoop(t)
	before := y.yields.Load()
	if before < 1 {
		t.Fatalf("%d yields after the first events, want at least 1", before)
	}
	unix.Write(y.peers[1], []byte("x"))
	receive(t, y.m.pumps, "event for the byte")
	if got := y.settle(t); got != before+1 {
		t.Fatalf("%d yields after one more event, want %d", got, before+1)
	}
	if n := y.l.lingers.Load(); n != 0 {
		t.Fatalf("a loop made not to linger lingered %d times", n)
	}
}

// TestLoopPollsAgainAfterYield checks that events which arrive while the
// loop's thread yields are handled before the loop parks: a byte written
// during the yield (as a task the loop woke would answer) costs no second
// round through Go's netpoller.
func TestLoopPollsAgainAfterYield(t *testing.T) {
	y := newYieldLoop(t)
	answer := func() { unix.Write(y.peers[0], []byte("y")) }
	y.onYield.Store(&answer)
	unix.Write(y.peers[1], []byte("x"))
	first := receive(t, y.m.pumps, "event for the byte")
	second := receive(t, y.m.pumps, "event for the byte written during the yield")
	// Counted at the events, not after them: Go's netpoller may have seen
	// the answer's edge too and wake the loop once more for nothing.
	if second != first {
		t.Fatalf("the loop parked %d times between a byte and the answer written during its yield, want 0", second-first)
	}
}

// TestLoopLingersForAnswer checks that a loop woken with events waits in
// the kernel for more before it parks, once per wake-up, and that the wait
// takes the place of the yield: a byte that arrives meanwhile (as the
// server's answer to what the loop just wrote would) is handled in the
// same wake-up, and the loop then parks without yielding.
func TestLoopLingersForAnswer(t *testing.T) {
	m := &pumpCounter{pumps: make(chan uint64, 64)}
	var yields atomic.Int32
	// Far longer than the test takes to answer an event, far shorter than
	// its deadlines.
	const linger = time.Second
	l, err := newLoop(func() { yields.Add(1) }, linger)
	if err != nil {
		t.Fatal(err)
	}
	// The loop's first call finds nothing and parks. Awaited before the
	// sockets come, that park cannot pass for the one after the first
	// events' linger: when the loop goroutine ran first, the test went on
	// while that linger still ran, and the byte written below ended it,
	// in a wake-up that had already lingered, instead of waking the loop.
	waitParks(t, l, 1)
	fds, peers := socketPairs(t)
	if err := l.register(&endpoint{fd: fds[0], m: m}, &endpoint{fd: fds[1], m: m}); err != nil {
		t.Fatal(err)
	}
	// The first events (both sockets writable), their linger, a park.
	receive(t, m.pumps, "first events")
	waitParks(t, l, 2)
	time.Sleep(50 * time.Millisecond)
	for len(m.pumps) > 0 {
		<-m.pumps
	}
	lingers, yielded := l.lingers.Load(), yields.Load()

	if _, err := unix.Write(peers[1], []byte("x")); err != nil {
		t.Fatal(err)
	}
	// Counted at the events: Go's netpoller may wake the loop once more
	// for an edge it already handled, a park with no events.
	parks := receive(t, m.pumps, "event for the first byte")
	if _, err := unix.Write(peers[0], []byte("y")); err != nil {
		t.Fatal(err)
	}
	if got := receive(t, m.pumps, "event for the answer"); got != parks {
		t.Fatalf("the loop parked %d times between a byte and its answer, want 0: it did not linger", got-parks)
	}
	waitParks(t, l, parks+1)
	if n := l.lingers.Load() - lingers; n != 1 {
		t.Errorf("the loop lingered %d times in one wake-up, want 1", n)
	}
	if n := yields.Load() - yielded; n != 0 {
		t.Errorf("the loop yielded %d times after lingering, want 0", n)
	}
}

// TestLoopLingerRefused (in a process of its own: it installs a seccomp
// filter) checks that loops whose epoll_pwait2 is refused, as a
// container's seccomp profile that predates the call refuses it (EPERM;
// ENOSYS on a kernel before 5.11), stop trying and serve on.
func TestLoopLingerRefused(t *testing.T) {
	if !fdtest.InOwnProcess(t) {
		return
	}
	fdtest.RefuseSyscall(t, unix.SYS_EPOLL_PWAIT2, unix.EPERM)
	if err := LingerSupport(); !errors.Is(err, unix.EPERM) {
		t.Errorf("LingerSupport() = %v under the filter, want EPERM", err)
	}
	roundTrips, end := echoThroughLoops(t)
	roundTrips(20)
	end()
	refused := 0
	for _, l := range startedLoops() {
		if l.lingers.Load() != 0 {
			t.Error("a wait succeeded under the filter")
		}
		if l.refused.Load() {
			refused++
		}
	}
	if refused == 0 {
		t.Error("no loop noted the refusal: they try on every wake-up")
	}
}

// startedLoops returns the process's loops; reading started first orders
// the read after start's writes.
func startedLoops() []*loop {
	if !pairLoops.started.Load() {
		return nil
	}
	return pairLoops.loops
}

// waitParks waits until l has parked at least n times.
func waitParks(t *testing.T, l *loop, n uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for l.parks.Load() < n {
		if time.Now().After(deadline) {
			t.Fatalf("the loop parked %d times, want %d", l.parks.Load(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestLoopsLinger checks that the process's loops linger on this kernel:
// epoll_pwait2 exists and takes their timeout.
func TestLoopsLinger(t *testing.T) {
	if err := LingerSupport(); err != nil {
		t.Errorf("LingerSupport() = %v on a kernel with epoll_pwait2", err)
	}
	roundTrips, end := echoThroughLoops(t)
	roundTrips(1) // the loops have started
	lingers := func() (n uint64) {
		for _, l := range startedLoops() {
			n += l.lingers.Load()
		}
		return n
	}
	before := lingers()
	roundTrips(20)
	end()
	if lingers() == before {
		t.Error("no loop lingered for events during 20 round trips: epoll_pwait2 failed")
	}
}

// echoThroughLoops proxies a connection through the process's loops to
// an echo server. roundTrips sends n pings and reads each back; end
// closes the client and checks that the pair ended cleanly.
func echoThroughLoops(t *testing.T) (roundTrips func(n int), end func()) {
	t.Helper()
	client, server, done := harness(t, Options{})
	go func() { // echo until EOF, then pass the half-close back
		io.Copy(server, server)
		server.CloseWrite()
	}()
	msg, reply := []byte("ping"), make([]byte, 4)
	client.SetDeadline(time.Now().Add(10 * time.Second))
	roundTrips = func(n int) {
		t.Helper()
		for i := range n {
			if _, err := client.Write(msg); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(client, reply); err != nil {
				t.Fatalf("round trip %d: %v", i, err)
			}
		}
	}
	end = func() {
		t.Helper()
		client.Close()
		if r := waitResult(t, done); r.End != EndClosed {
			t.Fatalf("end = %s, want closed", r.End)
		}
	}
	return roundTrips, end
}

// TestLoopParksInNetpoller guards that an idle loop parks: once the proxied
// traffic has ended, every loop goroutine waits in Go's netpoller for its
// epoll descriptor ("IO wait") instead of spinning on epoll_wait.
func TestLoopParksInNetpoller(t *testing.T) {
	client, server, done := harness(t, Options{})
	go func() { // echo until EOF, then pass the half-close back
		buf := make([]byte, 4<<10)
		for {
			n, err := server.Read(buf)
			if n > 0 {
				server.Write(buf[:n])
			}
			if err != nil {
				break
			}
		}
		server.CloseWrite()
	}()
	msg, reply := make([]byte, 512), make([]byte, 512)
	client.SetDeadline(time.Now().Add(10 * time.Second))
	for i := range 50 {
		msg[0] = byte(i)
		if _, err := client.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(client, reply); err != nil || reply[0] != byte(i) {
			t.Fatalf("round trip %d: %v", i, err)
		}
	}
	client.CloseWrite()
	if b, err := io.ReadAll(client); err != nil || len(b) != 0 {
		t.Fatalf("client read %d bytes, %v, want a clean EOF", len(b), err)
	}
	if r := waitResult(t, done); r.End != EndClosed {
		t.Fatalf("end = %s, want closed", r.End)
	}

	if _, err := pickLoop(); err != nil {
		t.Fatal(err)
	}
	var heads []string
	deadline := time.Now().Add(5 * time.Second)
	for {
		heads = loopGoroutines()
		parked := len(heads) > 0
		for _, h := range heads {
			parked = parked && inIOWait(h)
		}
		if parked || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if len(heads) == 0 {
		t.Fatal("no goroutine runs tcpproxy.(*loop).run")
	}
	if n := int(loopsRunning.Load()); len(heads) != n {
		t.Errorf("%d loop goroutines, want one per loop started (%d)", len(heads), n)
	}
	for _, h := range heads {
		if !inIOWait(h) {
			t.Errorf("loop goroutine not parked in the netpoller after 5s: %q", h)
		}
	}
}

// resetSides are the two sides a reset test resets in turn: reset picks
// the resetting connection and the other one of a harness pair, want is
// the pair's end.
var resetSides = []struct {
	name  string
	reset func(client, server *net.TCPConn) (resetter, other *net.TCPConn)
	want  End
}{
	{"client", func(c, s *net.TCPConn) (*net.TCPConn, *net.TCPConn) { return c, s }, EndDownstreamErr},
	{"upstream", func(c, s *net.TCPConn) (*net.TCPConn, *net.TCPConn) { return s, c }, EndUpstreamErr},
}

// TestResetAfterHalfCloseResetsUpstream guards the EPOLLERR check for a
// socket whose read direction is done: a side that half-closed and then
// resets sends nothing more to read, and with no bytes flowing the other
// way no write fails either, so only the error flag tells the loop. The
// pair must end at once, attributed to the side that reset, and reset the
// other side.
func TestResetAfterHalfCloseResetsUpstream(t *testing.T) {
	for _, tc := range resetSides {
		t.Run(tc.name, func(t *testing.T) {
			client, server, done := harness(t, Options{})
			resetter, other := tc.reset(client, server)
			if err := resetter.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			// The EOF proves the loop read the FIN: that direction is done
			// and the socket is no longer read.
			other.SetReadDeadline(time.Now().Add(5 * time.Second))
			if n, err := other.Read(make([]byte, 1)); err != io.EOF {
				t.Fatalf("read after half-close = %d, %v, want EOF", n, err)
			}
			// From FIN_WAIT2 a close with linger 0 sends a RST; the proxy's
			// socket (CLOSE_WAIT) takes it as EPIPE and moves to CLOSE.
			resetter.SetLinger(0)
			resetter.Close()

			var r Result
			select {
			case r = <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("reset after a half-close went unnoticed for 5s")
			}
			if r.End != tc.want {
				t.Errorf("end = %s, want %s", r.End, tc.want)
			}
			if r.Err == nil {
				t.Error("result carries no error")
			}
			t.Logf("result: %+v", r)

			// The other side must see a reset, not just the FIN it already
			// has: a RST moves its socket (CLOSE_WAIT) to CLOSE, a plain
			// close by the proxy would leave it in CLOSE_WAIT.
			waitReset(t, other)
		})
	}
}

// waitReset fails the test unless c is reset within 5 s: its socket in
// the CLOSE state, which a FIN alone never brings. Polled without
// writing, which would draw a RST from any closed socket; then a write
// must fail.
func waitReset(t *testing.T, c *net.TCPConn) {
	t.Helper()
	fd, err := ConnFD(c)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !isReset(fd) {
		if time.Now().After(deadline) {
			t.Fatal("the other side was not reset within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err = c.Write([]byte("late"))
	if !errors.Is(err, syscall.EPIPE) && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("write after the reset = %v, want EPIPE or ECONNRESET", err)
	}
}

// TestResetWhileOtherSideStalled: a side that resets while the proxy
// holds bytes it sent, because the other side stopped reading, ends the
// pair at once and resets the other side. The flow from the reset socket
// waits for its destination then, so no read meets the error, and no
// write fails since the other direction carries nothing: only the error
// flag tells the loop. Before, the reset waited for the stalled side to
// read again (until the idle timeout, if it never did), and the server
// of an upload the client abandoned kept its connection.
func TestResetWhileOtherSideStalled(t *testing.T) {
	for _, tc := range resetSides {
		t.Run(tc.name, func(t *testing.T) {
			client, server, done := harness(t, Options{})
			resetter, stalled := tc.reset(client, server)
			// Write until the writes block: the proxy holds bytes for the
			// stalled side, and every buffer on the way is full.
			resetter.SetWriteDeadline(time.Now().Add(500 * time.Millisecond))
			buf := make([]byte, 64<<10)
			for {
				if _, err := resetter.Write(buf); err != nil {
					if !errors.Is(err, os.ErrDeadlineExceeded) {
						t.Fatal(err)
					}
					break
				}
			}
			resetter.SetLinger(0)
			resetter.Close()

			var r Result
			select {
			case r = <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("a reset while the other side stalled went unnoticed for 5s")
			}
			if r.End != tc.want {
				t.Errorf("end = %s, want %s", r.End, tc.want)
			}
			waitReset(t, stalled)
		})
	}
}

// TestSlowReaderBackpressure guards flow control: a destination that takes
// nothing for a while and then reads slowly makes the loop hold what it
// read (in the pending buffer or a pipe) and wait for EPOLLOUT, losing,
// duplicating and reordering nothing. The client writes either all at
// once, which keeps the proxy splicing, or in small paced writes, whose
// bursts the proxy reads into its buffer, so that the one read when the
// destination fills is left partly unwritten, pending.
func TestSlowReaderBackpressure(t *testing.T) {
	const size = 16 << 20
	data := make([]byte, size)
	rand.NewChaCha8([32]byte{'s', 'l', 'o', 'w'}).Read(data)
	want := sha256.Sum256(data)

	for _, tc := range []struct {
		name  string
		write func(c *net.TCPConn) error
	}{
		{"one write", func(c *net.TCPConn) error {
			_, err := c.Write(data)
			return err
		}},
		{"paced writes", func(c *net.TCPConn) error {
			const chunk = 8 << 10 // less than the proxy's buffer
			for off := 0; off < len(data); off += chunk {
				if _, err := c.Write(data[off : off+chunk]); err != nil {
					return err
				}
				time.Sleep(20 * time.Microsecond)
			}
			return nil
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client, server, done := harness(t, Options{})
			client.SetDeadline(time.Now().Add(30 * time.Second))
			server.SetDeadline(time.Now().Add(30 * time.Second))
			wrote := make(chan error, 1)
			go func() {
				err := tc.write(client)
				if err == nil {
					err = client.CloseWrite()
				}
				wrote <- err
			}()

			time.Sleep(300 * time.Millisecond) // the server takes nothing yet
			h := sha256.New()
			buf := make([]byte, 4<<10)
			var got int64
			for range 200 { // then small reads with pauses
				n, err := server.Read(buf)
				h.Write(buf[:n])
				got += int64(n)
				if err != nil {
					t.Fatalf("slow read after %d bytes: %v", got, err)
				}
				time.Sleep(time.Millisecond)
			}
			n, err := io.Copy(h, server) // then the rest, to the EOF
			got += n
			if err != nil {
				t.Fatalf("read after %d bytes: %v", got, err)
			}
			if got != size {
				t.Fatalf("server received %d bytes, want %d", got, size)
			}
			if [32]byte(h.Sum(nil)) != want {
				t.Fatal("sha256 of the received bytes differs from what was sent")
			}
			if err := <-wrote; err != nil {
				t.Fatalf("client write: %v", err)
			}

			if err := server.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			if b, err := io.ReadAll(client); err != nil || len(b) != 0 {
				t.Fatalf("client read %d bytes, %v, want a clean EOF", len(b), err)
			}
			r := waitResult(t, done)
			if r.End != EndClosed || r.Sent != size || r.Received != 0 || r.Err != nil {
				t.Fatalf("result = %+v, want closed, %d bytes sent, none received", r, size)
			}
		})
	}
}

// countWriter counts the bytes written to it.
type countWriter struct{ n *atomic.Int64 }

func (w countWriter) Write(b []byte) (int, error) {
	w.n.Add(int64(len(b)))
	return len(b), nil
}

// TestBulkDoesNotStarveOtherPairs guards fairness on a shared loop: bulk
// pairs whose source never runs dry share the loops with a ping-pong pair,
// which must still get its turns. On loopback a bulk turn mostly ends on
// the destination's EAGAIN before the turn budget runs out, so this
// catches a loop that stops serving new events, not a budget too large.
func TestBulkDoesNotStarveOtherPairs(t *testing.T) {
	if _, err := pickLoop(); err != nil {
		t.Fatal(err)
	}
	// Pairs go to the loops round robin: with at least as many bulk pairs
	// as loops, the ping-pong pair shares its loop with a bulk pair.
	bulkPairs := max(4, len(pairLoops.loops))

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var conns []*net.TCPConn
	defer func() {
		close(stop)
		for _, c := range conns {
			c.Close() // unblocks the writers and readers
		}
		wg.Wait()
	}()
	received := make([]atomic.Int64, bulkPairs)
	for i := range bulkPairs {
		c, s, _ := harness(t, Options{})
		conns = append(conns, c, s)
		wg.Add(2)
		go func() {
			defer wg.Done()
			chunk := make([]byte, 1<<20)
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := c.Write(chunk); err != nil {
					return
				}
			}
		}()
		go func() {
			defer wg.Done()
			// Hide WriteTo, so the 256 KiB buffer is used.
			io.CopyBuffer(countWriter{&received[i]}, struct{ io.Reader }{s}, make([]byte, 256<<10))
		}()
	}
	// Every bulk stream flows before the ping-pong starts.
	deadline := time.Now().Add(20 * time.Second)
	for i := range received {
		for received[i].Load() < 8<<20 {
			if time.Now().After(deadline) {
				t.Fatalf("bulk pair %d moved only %d bytes in 20s", i, received[i].Load())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}

	client, server, _ := harness(t, Options{})
	conns = append(conns, client, server)
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 1<<10)
		for {
			if _, err := io.ReadFull(server, buf); err != nil {
				return
			}
			if _, err := server.Write(buf); err != nil {
				return
			}
		}
	}()
	before := make([]int64, bulkPairs)
	for i := range received {
		before[i] = received[i].Load()
	}
	start := time.Now()
	client.SetDeadline(start.Add(20 * time.Second))
	msg, reply := make([]byte, 1<<10), make([]byte, 1<<10)
	var slowest time.Duration
	for i := range 200 {
		t0 := time.Now()
		msg[0], msg[len(msg)-1] = byte(i), byte(i>>8)
		if _, err := client.Write(msg); err != nil {
			t.Fatalf("round trip %d after %v: %v", i, time.Since(start), err)
		}
		if _, err := io.ReadFull(client, reply); err != nil {
			t.Fatalf("round trip %d after %v: %v", i, time.Since(start), err)
		}
		if reply[0] != msg[0] || reply[len(reply)-1] != msg[len(msg)-1] {
			t.Fatalf("round trip %d: reply does not echo the request", i)
		}
		slowest = max(slowest, time.Since(t0))
	}
	var moved int64
	for i := range received {
		moved += received[i].Load() - before[i]
	}
	t.Logf("200 round trips in %v (slowest %v) beside %d bulk pairs moving %d MiB",
		time.Since(start), slowest, bulkPairs, moved>>20)
}

// fdCount is the number of descriptors the process has open.
func fdCount(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip(err)
	}
	return len(ents)
}

// TestManyPairsConcurrentCancel guards Cancel under contention: many pairs
// on shared loops, idle, moving bytes, stalled on a full destination or
// already finished, canceled from several goroutines at once (some twice):
// each result is delivered exactly once, with the right end, and every
// socket and pipe is closed.
func TestManyPairsConcurrentCancel(t *testing.T) {
	const pairs = 200
	type kind int
	const (
		idle     kind = iota // no traffic
		flowing              // client writes, server discards
		stalled              // client writes, server stopped reading
		finished             // both sides half-closed before the cancel
		kinds
	)

	// Start the loops and Go's own poller first: their descriptors stay.
	if _, err := pickLoop(); err != nil {
		t.Fatal(err)
	}
	a, b := tcpPair(t)
	a.Close()
	b.Close()
	before := fdCount(t)
	t0 := time.Now()

	type pair struct {
		kind   kind
		p      *Pair
		cl, sv *net.TCPConn // the test's ends: client and server
		calls  atomic.Int32
		res    Result
		got    chan struct{} // closed by the first done call
		moving chan struct{} // closed once traffic reached the server
	}
	var wg sync.WaitGroup
	ps := make([]*pair, pairs)
	traffic := make(chan struct{}) // let go once every pair is up
	defer func() {
		select {
		case <-traffic:
		default:
			close(traffic)
		}
		for _, x := range ps {
			if x != nil {
				x.cl.Close()
				x.sv.Close()
			}
		}
		wg.Wait()
	}()
	stalledData := make([]byte, 4<<20) // only read, by every stalled writer
	for i := range ps {
		cl, down := tcpPair(t)
		up, sv := tcpPair(t)
		x := &pair{kind: kind(i) % kinds, cl: cl, sv: sv, got: make(chan struct{}), moving: make(chan struct{})}
		ps[i] = x
		x.p = New(down, up, Options{})
		x.p.Start(func(r Result) {
			if x.calls.Add(1) == 1 {
				x.res = r
				close(x.got)
			}
		})
		switch x.kind {
		case flowing:
			wg.Add(2)
			go func() {
				defer wg.Done()
				<-traffic
				chunk := make([]byte, 64<<10)
				for {
					if _, err := cl.Write(chunk); err != nil {
						return
					}
				}
			}()
			go func() {
				defer wg.Done()
				if _, err := io.ReadFull(sv, make([]byte, 1)); err != nil {
					return
				}
				close(x.moving)
				io.Copy(io.Discard, sv)
			}()
		case stalled:
			wg.Add(2)
			go func() {
				defer wg.Done()
				<-traffic
				cl.Write(stalledData) // blocks until the reset, or all is buffered
			}()
			go func() {
				defer wg.Done()
				if _, err := io.ReadFull(sv, make([]byte, 64<<10)); err != nil {
					return
				}
				close(x.moving) // and reads no more
			}()
		case finished:
			cl.CloseWrite()
			sv.CloseWrite()
			close(x.moving)
		default:
			close(x.moving)
		}
	}
	// Four sockets a pair, less the two the loop closes of finished ones.
	if n := fdCount(t); n < before+3*pairs {
		t.Fatalf("%d descriptors open with %d pairs up, %d before: not counting what the test opens?", n, pairs, before)
	}
	t.Logf("%d pairs up after %v", pairs, time.Since(t0))
	close(traffic)

	// 100 streams on a few CPUs: under the race detector the last of them
	// takes seconds to get going.
	deadline := time.After(20 * time.Second)
	for i, x := range ps {
		select {
		case <-x.moving:
		case <-deadline:
			t.Fatalf("pair %d (kind %d): no traffic reached the server in 20s", i, x.kind)
		}
		if x.kind == finished {
			select {
			case <-x.got:
			case <-deadline:
				t.Fatalf("pair %d: half-closed both ways, no result in 20s", i)
			}
		}
	}

	t.Logf("traffic moving after %v", time.Since(t0))

	// The cancel storm: in a shuffled order, each pair from one goroutine
	// and every third one again from the next, all let go at once.
	const cancelers = 8
	order := rand.Perm(len(ps))
	gate := make(chan struct{})
	var cwg sync.WaitGroup
	for g := range cancelers {
		cwg.Add(1)
		go func() {
			defer cwg.Done()
			<-gate
			for j := g; j < len(order); j += cancelers {
				ps[order[j]].p.Cancel()
			}
			for j := (g + cancelers - 1) % cancelers; j < len(order); j += cancelers {
				if order[j]%3 == 0 {
					ps[order[j]].p.Cancel()
				}
			}
		}()
	}
	close(gate)
	cwg.Wait()

	deadline = time.After(10 * time.Second)
	for i, x := range ps {
		select {
		case <-x.got:
		case <-deadline:
			t.Fatalf("pair %d (kind %d): no result 10s after Cancel", i, x.kind)
		}
	}
	t.Logf("every result in after %v", time.Since(t0))
	time.Sleep(100 * time.Millisecond) // room for a second call
	for i, x := range ps {
		if n := x.calls.Load(); n != 1 {
			t.Errorf("pair %d (kind %d): done called %d times", i, x.kind, n)
		}
		want := EndCanceled
		if x.kind == finished {
			want = EndClosed
		}
		if x.res.End != want {
			t.Errorf("pair %d (kind %d): end = %s, want %s", i, x.kind, x.res.End, want)
		}
	}

	// Close the test's own ends; the loop closed the proxy's.
	for _, x := range ps {
		x.cl.Close()
		x.sv.Close()
	}
	wg.Wait()
	const margin = 4
	n := fdCount(t)
	for end := time.Now().Add(5 * time.Second); n > before+margin && time.Now().Before(end); n = fdCount(t) {
		time.Sleep(10 * time.Millisecond)
	}
	if n > before+margin {
		t.Errorf("%d descriptors open after every pair ended, %d before", n, before)
	}
}

// TestOnLongLivedRunsOnceOnUpstream: a pair that lasts LongLivedAfter has
// OnLongLived run once, with the upstream socket; a pair that ends before
// never has it run. The idle timeout still works beside it.
func TestOnLongLivedRunsOnceOnUpstream(t *testing.T) {
	type call struct{ peer string }
	calls := make(chan call, 4)
	o := Options{
		LongLivedAfter: 100 * time.Millisecond,
		OnLongLived:    func(fd int) { calls <- call{peerOf(fd)} },
	}

	client, server, done := harness(t, o)
	select {
	case c := <-calls:
		if c.peer != server.LocalAddr().String() {
			t.Fatalf("OnLongLived got a socket whose peer is %+v, want the upstream server %v", c.peer, server.LocalAddr())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("OnLongLived not run on a pair that lasted")
	}
	client.CloseWrite()
	server.CloseWrite()
	if r := waitResult(t, done); r.End != EndClosed {
		t.Fatalf("end = %s", r.End)
	}
	select {
	case <-calls:
		t.Fatal("OnLongLived run twice")
	case <-time.After(200 * time.Millisecond):
	}

	o.LongLivedAfter = time.Hour
	client, server, done = harness(t, o)
	client.CloseWrite()
	server.CloseWrite()
	waitResult(t, done)
	select {
	case <-calls:
		t.Fatal("OnLongLived run on a pair that ended before LongLivedAfter")
	default:
	}

	o.LongLivedAfter, o.IdleTimeout = time.Hour, 200*time.Millisecond
	_, _, done = harness(t, o)
	if r := waitResult(t, done); r.End != EndIdle {
		t.Fatalf("with OnLongLived pending: end = %s, want the idle timeout", r.End)
	}
}

// peerOf is the peer address of a socket, as net.Addr.String says it.
func peerOf(fd int) string {
	sa, err := unix.Getpeername(fd)
	if err != nil {
		return err.Error()
	}
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)).String()
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port)).String()
	}
	return "?"
}

// TestLoopSetSize checks that a set starts the number of loops it was
// set to on first use, hands them out round robin, and refuses another
// number once they run.
func TestLoopSetSize(t *testing.T) {
	tests := []struct {
		name      string
		want      int
		wantLoops int
	}{
		{name: "one loop", want: 1, wantLoops: 1},
		{name: "three loops", want: 3, wantLoops: 3},
		{name: "one per CPU", want: 0, wantLoops: runtime.GOMAXPROCS(0)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s loopSet
			if err := s.set(tt.want); err != nil {
				t.Fatalf("set(%d) before start: %v", tt.want, err)
			}
			if n := s.count(); n != tt.wantLoops {
				t.Fatalf("count() before start = %d, want %d", n, tt.wantLoops)
			}
			seen := map[*loop]int{}
			for range 2 * tt.wantLoops {
				l, err := s.pick()
				if err != nil {
					t.Fatal(err)
				}
				seen[l]++
			}
			if len(seen) != tt.wantLoops || s.count() != tt.wantLoops {
				t.Fatalf("%d distinct loops (count %d), want %d", len(seen), s.count(), tt.wantLoops)
			}
			for l, n := range seen {
				if n != 2 {
					t.Errorf("loop %p picked %d times of %d, want 2 (round robin)", l, n, 2*tt.wantLoops)
				}
			}
			if err := s.set(tt.want); err != nil {
				t.Errorf("set(%d) again after start: %v, want nil", tt.want, err)
			}
			if err := s.set(tt.wantLoops + 1); err == nil || !strings.Contains(err.Error(), "restart") {
				t.Errorf("set(%d) after start: %v, want an error saying it needs a restart", tt.wantLoops+1, err)
			}
		})
	}
	var s loopSet
	if err := s.set(-1); err == nil {
		t.Error("set(-1): no error")
	}
}

// TestMovedCountsOpenConnections checks that Moved counts bytes as the
// pairs write them, while the connection is still open, in the right
// direction.
func TestMovedCountsOpenConnections(t *testing.T) {
	client, server, _ := harness(t, Options{})
	sent0, recv0 := Moved()
	up, down := make([]byte, 300<<10), make([]byte, 700<<10)
	go client.Write(up)
	if _, err := io.ReadFull(server, make([]byte, len(up))); err != nil {
		t.Fatal(err)
	}
	go server.Write(down)
	if _, err := io.ReadFull(client, make([]byte, len(down))); err != nil {
		t.Fatal(err)
	}
	// At least: a pair another test left may still be finishing. And
	// after a moment: the reader can have every byte while the splice
	// that delivers the last ones has not yet returned to the loop.
	var sent, recv uint64
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if sent, recv = Moved(); sent-sent0 >= uint64(len(up)) && recv-recv0 >= uint64(len(down)) {
			return
		}
	}
	t.Errorf("Moved grew by %d sent, %d received with the connection open; want %d, %d", sent-sent0, recv-recv0, len(up), len(down))
}

// TestBulkSetsNotSentLowat: a flow that fills the copy buffer gives its
// destination socket bulkNotSentLowat; a flow of small bursts, and the
// other direction, leave the kernel's default.
func TestBulkSetsNotSentLowat(t *testing.T) {
	const big = 1 << 20
	tests := []struct {
		name                 string
		up, down             int // bytes the client sends, then the server
		wantUpLow, wantDnLow bool
	}{
		{"small bursts", 100, 100, false, false},
		{"upload", big, 100, true, false},
		{"download", 100, big, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client, server, _ := harness(t, Options{})
			move := func(from, to *net.TCPConn, n int) {
				go from.Write(make([]byte, n))
				if _, err := io.CopyN(io.Discard, to, int64(n)); err != nil {
					t.Fatalf("moving %d bytes: %v", n, err)
				}
			}
			move(client, server, tt.up)
			move(server, client, tt.down)
			// The proxy's sockets: the one whose peer is the server's
			// listener, and the one whose peer is the client.
			upFD, downFD := socketWithPeer(t, server.LocalAddr().String()), socketWithPeer(t, client.LocalAddr().String())
			for _, s := range []struct {
				name string
				fd   int
				want bool
			}{{"upstream", upFD, tt.wantUpLow}, {"client", downFD, tt.wantDnLow}} {
				v, err := unix.GetsockoptInt(s.fd, unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT)
				if err != nil {
					t.Fatal(err)
				}
				if (v == bulkNotSentLowat) != s.want {
					t.Errorf("%s socket: TCP_NOTSENT_LOWAT %d, want %d: %v", s.name, v, bulkNotSentLowat, s.want)
				}
			}
		})
	}
}

// socketWithPeer finds this process's socket connected to peer.
func socketWithPeer(t *testing.T, peer string) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip(err)
	}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err == nil && peerOf(fd) == peer {
			return fd
		}
	}
	t.Fatalf("no socket connected to %s", peer)
	return -1
}

// TestLastBytesBeforeResetWhileOtherSends: a server that answers and
// resets while the client is still sending (an upload refused early, a
// TLS alert) has its answer reach the client before the reset. The loop
// finds the client's bytes and the server's answer and reset at once
// (both queued before the pair starts): the client's bytes go first, and
// the write that meets the reset takes its error from the socket, so the
// answer behind it was dropped with the pair.
func TestLastBytesBeforeResetWhileOtherSends(t *testing.T) {
	client, down := tcpPair(t)
	up, server := tcpPair(t)
	t.Cleanup(func() { client.Close(); down.Close(); up.Close(); server.Close() })
	client.Write([]byte("upload"))
	const answer = "413 too large\r\n"
	server.Write([]byte(answer))
	server.SetLinger(0)
	server.Close()
	downFD, err := ConnFD(down)
	if err != nil {
		t.Fatal(err)
	}
	upFD, err := ConnFD(up)
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		if n, _ := rawsys.InQueue(downFD); n == len("upload") && isReset(upFD) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the client's bytes and the server's reset did not arrive within 5s")
		}
	}
	res := make(chan Result, 1)
	New(down, up, Options{}).Start(func(r Result) { res <- r })
	r := waitResult(t, res)
	if r.End != EndUpstreamErr || r.Received != int64(len(answer)) {
		t.Errorf("result %+v, want an upstream reset after %d bytes received", r, len(answer))
	}
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(client)
	if string(b) != answer || !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client read %q, %v; want %q, then a reset", b, err, answer)
	}
}
