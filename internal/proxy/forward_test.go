package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/detour-proxy/detour/internal/fdtest"
	"github.com/detour-proxy/detour/internal/listen"
	"github.com/detour-proxy/detour/internal/rawsys"
	"github.com/detour-proxy/detour/internal/tcpproxy"
	"github.com/detour-proxy/detour/internal/upstream"
	"golang.org/x/sys/unix"
)

// recordingL7 notes what ServeConn was handed; pooled is its answer to
// Pooled.
type recordingL7 struct {
	got    chan servedConn
	pooled bool
}

func (l *recordingL7) Pooled(_, _ netip.AddrPort) bool { return l.pooled }

type servedConn struct {
	origDst   netip.AddrPort
	preDialed *net.TCPConn
	dialErr   error
	sniffed   time.Time
}

func (l *recordingL7) ServeConn(c net.Conn, _, origDst netip.AddrPort, pre upstream.PreDial) {
	c.Close()
	if pre.Conn != nil {
		pre.Conn.Close()
	}
	l.got <- servedConn{origDst, pre.Conn, pre.Err, pre.Sniffed}
}

// handleAccepted runs c's path as the accept loop does.
func handleAccepted(s *Server, c *listen.Conn) {
	s.open.Add(1) // released when the connection is done
	s.conns.Add(1)
	s.handle(s.cur.Load(), c)
}

// waitReleased waits until the connections s counted were released: the
// count goes back to 0 (a second release would take it below, or panic in
// the WaitGroup).
func waitReleased(t *testing.T, s *Server) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for n := s.open.Load(); n != 0; n = s.open.Load() {
		if n < 0 || time.Now().After(deadline) {
			t.Fatalf("%d connections open once served; want 0", n)
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(10 * time.Millisecond) // a second release would come at once
	if n := s.open.Load(); n != 0 {
		t.Fatalf("%d connections open after they were released; want 0 (released twice?)", n)
	}
}

// listenLoopback returns a listener on a free loopback port, closed when
// the test ends.
func listenLoopback(t *testing.T) *net.TCPListener {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// connect returns both ends of a new connection to ln.
// autoServer is a protocol-auto Server for the sniffing tests: a silent
// client is sniffed up to 10 s, and the HTTP side records what it is given
// (pooled: it holds a pooled connection to every destination, so none is
// dialed while sniffing).
func autoServer(obs Observer, pooled bool) *Server {
	return New(Options{Dialer: upstream.New(upstream.Options{ConnectTimeout: 2 * time.Second}), Protocol: ProtocolAuto,
		HTTP: &recordingL7{got: make(chan servedConn, 1), pooled: pooled}, SniffTimeout: 10 * time.Second, Observer: obs})
}

// accepted is srv as a listener hands it over: cli's connection, meant for dst.
func accepted(cli, srv *net.TCPConn, dst netip.AddrPort) *listen.Conn {
	return &listen.Conn{TCPConn: srv, FD: -1, Client: cli.LocalAddr().(*net.TCPAddr).AddrPort(), OrigDst: dst}
}

func connect(t *testing.T, ln *net.TCPListener) (client, server *net.TCPConn) {
	t.Helper()
	client, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	server, err = ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	return client, server
}

// waitQueued waits until c has n bytes queued to read, so that what a test
// sent is there when the code under test first looks.
func waitQueued(t *testing.T, c *net.TCPConn, n int) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		queued := 0
		rc.Control(func(fd uintptr) { queued, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
		if queued >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d bytes queued after 5s", queued, n)
		}
	}
}

// TestAutoPassesFailedPreDialToL7: in auto mode, when the connect made
// while sniffing failed and the client speaks HTTP, L7 gets that error (to
// answer 503 at once) instead of dialing a second time. The clients' first
// bytes do not decide at once, so the connect is made while sniffing.
func TestAutoPassesFailedPreDialToL7(t *testing.T) {
	ln := listenLoopback(t)
	closed := listenLoopback(t)
	dst := closed.Addr().(*net.TCPAddr).AddrPort()
	closed.Close() // nobody listens: the connect is refused

	l7 := &recordingL7{got: make(chan servedConn, 1)}
	s := New(Options{Dialer: upstream.New(upstream.Options{ConnectTimeout: 2 * time.Second}), Protocol: ProtocolAuto, HTTP: l7})
	for _, req := range []string{"GET ", "PRI * HTTP/2.0\r\n"} {
		cli, srv := connect(t, ln)
		io.WriteString(cli, req)
		waitQueued(t, srv, len(req))
		c := accepted(cli, srv, dst)
		go handleAccepted(s, c)
		select {
		case got := <-l7.got:
			var de *upstream.DialError
			if got.preDialed != nil || !errors.As(got.dialErr, &de) || de.Reason != upstream.ReasonRefused || got.origDst != dst {
				t.Errorf("%q: L7 got %+v, want the refused pre-dial's error", req[:3], got)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%q: not handed to L7", req[:3])
		}
		waitReleased(t, s)
		cli.Close()
	}
}

// TestAutoDialsWhileSniffingOnlyWithoutPool: auto mode decides at once on
// first bytes that arrived with the connection. Otherwise it connects to
// the destination while it sniffs, unless L7 has an idle connection there;
// then HTTP goes to L7 with no connection of its own, and anything else is
// dialed once sniffed and still forwarded whole.
func TestAutoDialsWhileSniffingOnlyWithoutPool(t *testing.T) {
	ln, up := listenLoopback(t), listenLoopback(t)
	dst := up.Addr().(*net.TCPAddr).AddrPort()
	const req = "GET / HTTP/1.1\r\nHost: a\r\n\r\n"
	const ssh = "SSH-2.0-test\r\n"

	for _, tc := range []struct {
		name          string
		pooled        bool
		first, rest   string // sent before the connection is handed over; after
		wantL7        bool
		wantPreDialed bool
	}{
		{"HTTP at once", false, req, "", true, false},
		{"HTTP in two parts, nothing pooled", false, req[:4], req[4:], true, true},
		{"HTTP in two parts, pooled", true, req[:4], req[4:], true, false},
		{"not HTTP at once", false, ssh, "", false, false},
		{"not HTTP later, pooled", true, "", ssh, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l7 := &recordingL7{got: make(chan servedConn, 1), pooled: tc.pooled}
			s := New(Options{Dialer: upstream.New(upstream.Options{ConnectTimeout: 2 * time.Second}), Protocol: ProtocolAuto, HTTP: l7})
			cli, srv := connect(t, ln)
			io.WriteString(cli, tc.first)
			waitQueued(t, srv, len(tc.first))
			c := accepted(cli, srv, dst)
			go handleAccepted(s, c)
			accept := func() net.Conn {
				t.Helper()
				up.SetDeadline(time.Now().Add(5 * time.Second))
				uc, err := up.Accept()
				if err != nil {
					t.Fatalf("no upstream connection: %v", err)
				}
				t.Cleanup(func() { uc.Close() })
				return uc
			}
			if tc.wantPreDialed {
				accept() // the connect made while sniffing, before the rest
			}
			io.WriteString(cli, tc.rest)

			if !tc.wantL7 {
				// Forwarded at L4: the upstream gets a connection and the
				// client's bytes.
				uc := accept()
				uc.SetDeadline(time.Now().Add(5 * time.Second))
				want := tc.first + tc.rest
				b := make([]byte, len(want))
				if _, err := io.ReadFull(uc, b); err != nil || string(b) != want {
					t.Fatalf("upstream read %q, %v; want %q", b, err, want)
				}
				cli.Close() // the copy ends, and releases the connection
				uc.Close()
				waitReleased(t, s)
				return
			}
			select {
			case got := <-l7.got:
				if (got.preDialed != nil) != tc.wantPreDialed || got.dialErr != nil {
					t.Errorf("L7 got pre-dialed %v (err %v), want pre-dialed %v", got.preDialed != nil, got.dialErr, tc.wantPreDialed)
				}
				// The first request began when its bytes were sniffed.
				if tc.wantPreDialed && (got.sniffed.IsZero() || got.sniffed.After(time.Now())) {
					t.Errorf("L7 got sniffed time %v with the pre-dialed connection", got.sniffed)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("not handed to L7")
			}
			waitReleased(t, s)
			if !tc.wantPreDialed {
				// A connect made while sniffing would be in the backlog by
				// now (L7 is handed the connection only after it finished).
				up.SetDeadline(time.Now().Add(50 * time.Millisecond))
				if uc, err := up.Accept(); err == nil {
					uc.Close()
					t.Error("upstream accepted a connection; want none before L7 asks")
				}
			}
		})
	}
}

// doneObserver passes on every L4Done.
type doneObserver struct {
	nopObserver
	done chan L4Record
}

func (o *doneObserver) L4Done(rec L4Record) { o.done <- rec }

// next is the next L4Done's record; the test fails if none comes within d.
func (o *doneObserver) next(t *testing.T, d time.Duration) L4Record {
	t.Helper()
	select {
	case rec := <-o.done:
		return rec
	case <-time.After(d):
		t.Fatal("no L4Done")
		return L4Record{}
	}
}

// startObserver also records the L4Started calls: an upstream connection
// made, by the contract.
type startObserver struct {
	doneObserver
	started atomic.Int64
}

func (o *startObserver) L4Started(L4Record) { o.started.Add(1) }

// TestL4EndedWithoutUpstream: a connection that ends before any upstream
// connection was made (its client reset before a byte; the drain cut it
// while sniffed for a destination with a pooled HTTP connection) is
// recorded (DC, DT) without L4Started and marked NoUpstream, so metrics
// count no upstream connection opened to its destination. Before, it was
// reported as started: every scanner that connected and reset counted as
// an upstream connection of detour_upstream_connections_total{layer="l4"}.
func TestL4EndedWithoutUpstream(t *testing.T) {
	ln, up := listenLoopback(t), listenLoopback(t)
	dst := up.Addr().(*net.TCPAddr).AddrPort()
	check := func(t *testing.T, obs *startObserver, flags string) {
		t.Helper()
		rec := obs.next(t, 5*time.Second)
		if rec.Flags != flags || !rec.NoUpstream || obs.started.Load() != 0 {
			t.Errorf("recorded %+v after %d L4Started; want flags %s, NoUpstream, none started", rec, obs.started.Load(), flags)
		}
	}
	t.Run("client reset", func(t *testing.T) {
		obs := &startObserver{doneObserver: doneObserver{done: make(chan L4Record, 1)}}
		s := autoServer(obs, false)
		cli, srv := connect(t, ln)
		cli.SetLinger(0)
		cli.Close()
		if !fdtest.ResetWithin(srv, 5*time.Second) {
			t.Fatal("the client's reset did not arrive within 5s")
		}
		go handleAccepted(s, accepted(cli, srv, dst))
		check(t, obs, "DC")
		waitReleased(t, s)
	})
	t.Run("drain cut while sniffing", func(t *testing.T) {
		obs := &startObserver{doneObserver: doneObserver{done: make(chan L4Record, 1)}}
		s := autoServer(obs, true)
		cli, srv := connect(t, ln)
		c := accepted(cli, srv, dst)
		s.open.Add(1)
		s.conns.Add(1)
		go s.handle(s.cur.Load(), c)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		s.Shutdown(ctx)
		check(t, obs, "DT")
		waitReleased(t, s)
	})
}

// TestAutoUpstreamResetWhileSniffing: a destination that resets the
// connection made while a silent client is sniffed (a server whose accept
// queue overflowed, a port-knocking filter) resets the client at once, as
// protocol tcp would, and is recorded as an upstream failure. The peek
// that watches for a banner takes the socket's error; before, the client
// waited the whole sniffing timeout and then got a FIN (the L4 copy read
// EOF from the dead socket), and the connection stayed half open.
func TestAutoUpstreamResetWhileSniffing(t *testing.T) {
	ln, up := listenLoopback(t), listenLoopback(t)
	dst := up.Addr().(*net.TCPAddr).AddrPort()
	obs := &doneObserver{done: make(chan L4Record, 1)}
	s := autoServer(obs, false)
	cli, srv := connect(t, ln)
	c := accepted(cli, srv, dst)
	go handleAccepted(s, c)
	up.SetDeadline(time.Now().Add(5 * time.Second))
	uc, err := up.AcceptTCP()
	if err != nil {
		t.Fatalf("no upstream connection: %v", err)
	}
	uc.SetLinger(0)
	uc.Close() // a reset
	start := time.Now()
	cli.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := cli.Read(make([]byte, 1)); !errors.Is(err, unix.ECONNRESET) {
		t.Fatalf("client read: %v after %v; want a reset", err, time.Since(start))
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("client reset after %v; want it within the grace for a request (%v), not the sniffing timeout", d, dialFailGrace)
	}
	rec := obs.next(t, 5*time.Second)
	if rec.Flags != "UF" || rec.End != string(upstream.ReasonReset) {
		t.Errorf("recorded %+v; want flags UF, end %q", rec, upstream.ReasonReset)
	}
	waitReleased(t, s)
}

// TestAutoClientResetWhileSniffing: a client that resets while it is
// sniffed (nothing sent, or a prefix that decides nothing) gets its reset
// passed on to the connection made meanwhile, at once, and is recorded
// as a downstream reset. Before, a reset before the first byte reached the
// upstream as a FIN (the sniff's peek took the socket's error, and the L4
// copy read a plain EOF) and the pair stayed half open; a reset after a
// partial prefix was noticed only at the sniffing timeout.
func TestAutoClientResetWhileSniffing(t *testing.T) {
	ln, up := listenLoopback(t), listenLoopback(t)
	dst := up.Addr().(*net.TCPAddr).AddrPort()
	for _, first := range []string{"", "GE"} {
		t.Run("sent "+strconv.Quote(first), func(t *testing.T) {
			obs := &doneObserver{done: make(chan L4Record, 1)}
			s := autoServer(obs, false)
			cli, srv := connect(t, ln)
			io.WriteString(cli, first)
			waitQueued(t, srv, len(first))
			c := accepted(cli, srv, dst)
			go handleAccepted(s, c)
			up.SetDeadline(time.Now().Add(5 * time.Second))
			uc, err := up.AcceptTCP() // the connect made while sniffing
			if err != nil {
				t.Fatalf("no upstream connection: %v", err)
			}
			defer uc.Close()
			cli.SetLinger(0)
			cli.Close()
			readThenReset(t, "upstream", uc, first, 3*time.Second)
			rec := obs.next(t, 5*time.Second)
			if rec.Flags != "DC" || rec.Sent != int64(len(first)) {
				t.Errorf("recorded %+v; want flags DC, %d bytes sent", rec, len(first))
			}
			waitReleased(t, s)
		})
	}
}

// TestAutoClientResetBeforeSniff: a client whose reset is already there
// when auto mode first looks (it connected and aborted before sending a
// byte: a scanner, a client's own connect timeout) is recorded as a
// downstream reset, and nothing is dialed for it. Before, the first peek
// (sniff.Now) took the socket's error and dropped it: the connection
// looked like a client that half-closed, was dialed, and the upstream got
// a FIN and a record that said "closed".
func TestAutoClientResetBeforeSniff(t *testing.T) {
	ln, up := listenLoopback(t), listenLoopback(t)
	dst := up.Addr().(*net.TCPAddr).AddrPort()
	obs := &doneObserver{done: make(chan L4Record, 1)}
	s := autoServer(obs, false)
	cli, srv := connect(t, ln)
	cli.SetLinger(0)
	cli.Close()
	if !fdtest.ResetWithin(srv, 5*time.Second) {
		t.Fatal("the client's reset did not arrive within 5s")
	}
	c := accepted(cli, srv, dst)
	go handleAccepted(s, c)
	rec := obs.next(t, 5*time.Second)
	if rec.Flags != "DC" || rec.End != string(tcpproxy.EndDownstreamErr) {
		t.Errorf("recorded %+v; want flags DC, end %q", rec, tcpproxy.EndDownstreamErr)
	}
	// A dial would have come before the record: its connection would be
	// queued on up by now.
	up.SetDeadline(time.Now().Add(50 * time.Millisecond))
	if uc, err := up.AcceptTCP(); err == nil {
		uc.Close()
		t.Error("the upstream was dialed for a client that had reset")
	}
	waitReleased(t, s)
}

// TestAutoDrainCutsSniffing: a connection still being sniffed when the
// drain period ends is cut as an L4 copy is then: the client reset,
// recorded with flag DT. Its connect did not fail: before, a destination
// with a pooled HTTP connection (nothing dialed while sniffing) was dialed
// with the drain's canceled context and recorded as a connect failure
// (UF, "canceled"), counted against that destination.
func TestAutoDrainCutsSniffing(t *testing.T) {
	for _, pooled := range []bool{true, false} {
		t.Run("pooled="+strconv.FormatBool(pooled), func(t *testing.T) {
			ln, up := listenLoopback(t), listenLoopback(t)
			dst := up.Addr().(*net.TCPAddr).AddrPort()
			obs := &doneObserver{done: make(chan L4Record, 1)}
			s := autoServer(obs, pooled)
			cli, srv := connect(t, ln)
			c := accepted(cli, srv, dst)
			s.open.Add(1) // counted before Shutdown waits for it, as the accept loop does
			s.conns.Add(1)
			go s.handle(s.cur.Load(), c)
			if !pooled { // the connect made while sniffing is under way
				up.SetDeadline(time.Now().Add(5 * time.Second))
				uc, err := up.AcceptTCP()
				if err != nil {
					t.Fatalf("no upstream connection: %v", err)
				}
				defer uc.Close()
			}
			ctx, cancel := context.WithCancel(context.Background())
			cancel() // the drain period is over
			s.Shutdown(ctx)
			rec := obs.next(t, 5*time.Second)
			if rec.Flags != "DT" || rec.End != string(tcpproxy.EndCanceled) {
				t.Errorf("recorded %+v; want flags DT, end %q", rec, tcpproxy.EndCanceled)
			}
			cli.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := cli.Read(make([]byte, 1)); !errors.Is(err, unix.ECONNRESET) {
				t.Errorf("client read: %v; want a reset", err)
			}
			waitReleased(t, s)
		})
	}
}

// TestAutoUpstreamWritesAndResetsAsItConnects: a server that accepts,
// writes and resets before auto mode's connect has looked at its outcome
// (a busy proxy, a server that turns clients away at once) was connected:
// the client gets what the server wrote, then the reset, and the
// connection is recorded as an upstream reset (UC), as protocol tcp's
// loop records it. Before, the connect was Go's dial, which read SO_ERROR
// (ECONNRESET by then), failed and closed the socket: the client was
// reset without the bytes and the record said UF.
//
// The order is made certain: the server's accept queue is full, so the
// connect's SYN is dropped and resent after 1 s; with one processor, the
// test's goroutine holds it in raw system calls (which never hand it
// over) from before the resent SYN until the server's reset is sent, so
// the connect's goroutine can look only after.
func TestAutoUpstreamWritesAndResetsAsItConnects(t *testing.T) {
	ln := listenLoopback(t)
	lfd, dst := fdtest.FullListener(t, 5*time.Second)
	obs := &doneObserver{done: make(chan L4Record, 1)}
	s := autoServer(obs, false)
	cli, srv := connect(t, ln)
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	go handleAccepted(s, accepted(cli, srv, dst))
	waitSynSent(t, dst) // the connect's first SYN is sent, and dropped
	const bye = "421 busy\r\n"
	if err := acceptWriteReset(lfd, bye); err != nil {
		t.Fatal(err)
	}
	readThenReset(t, "client", cli, bye, 10*time.Second)
	rec := obs.next(t, 10*time.Second)
	if rec.Flags != "UC" || rec.Received != int64(len(bye)) {
		t.Errorf("recorded %+v; want flags UC after %d bytes received", rec, len(bye))
	}
	waitReleased(t, s)
}

// readThenReset reads c (the side named who) to its end, which must be
// want and then a reset, within d.
func readThenReset(t *testing.T, who string, c net.Conn, want string, d time.Duration) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	b, err := io.ReadAll(c)
	if string(b) != want || !errors.Is(err, unix.ECONNRESET) {
		t.Fatalf("%s read %q, %v; want %q, then a reset", who, b, err, want)
	}
}

// waitSynSent waits until a socket of this network namespace is
// connecting to dst (SYN_SENT in /proc/net/tcp).
func waitSynSent(t *testing.T, dst netip.AddrPort) {
	t.Helper()
	want := fmt.Sprintf(":%04X 02 ", dst.Port()) // the remote address's port, then the state
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		b, err := os.ReadFile("/proc/net/tcp")
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) > 3 && strings.Contains(" "+f[2]+" "+f[3]+" ", want) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no connect to %v under way after 10s", dst)
		}
	}
}

// acceptWriteReset takes the filler off lfd's queue, then accepts the
// next connection, writes msg and resets it, all in raw system calls: the
// goroutine keeps its processor throughout.
func acceptWriteReset(lfd int, msg string) error {
	var sa [128]byte
	accept := func() (int, error) {
		for {
			fd, _, err := rawsys.Accept4(lfd, sa[:], unix.SOCK_CLOEXEC)
			if err != unix.EINTR { // SO_RCVTIMEO: a signal is not restarted
				return fd, err
			}
		}
	}
	filler, err := accept()
	if err != nil {
		return fmt.Errorf("accept the filler: %w", err)
	}
	rawsys.Close(filler)
	fd, err := accept()
	if err != nil {
		return fmt.Errorf("accept the upstream connection: %w", err)
	}
	defer rawsys.Close(fd)
	if _, err := rawsys.Write(fd, []byte(msg)); err != nil {
		return err
	}
	return rawsys.SetLinger0(fd)
}

// TestL4UpstreamLocal: with Options.UpstreamLocal, an L4 connection's
// record has its upstream connection's local address, the one the server
// saw it come from, whether the loop connected it (protocol tcp) or the
// sniff's connect did (auto, a server that speaks first); without it the
// record has none, since nobody asked for it (no getsockname).
func TestL4UpstreamLocal(t *testing.T) {
	for _, tc := range []struct {
		protocol Protocol
		on       bool
	}{
		{ProtocolTCP, true},
		{ProtocolTCP, false},
		{ProtocolAuto, true},
		{ProtocolAuto, false},
	} {
		t.Run(fmt.Sprintf("%s/%v", tc.protocol, tc.on), func(t *testing.T) {
			front, up := listenLoopback(t), listenLoopback(t)
			seen := make(chan netip.AddrPort, 1)
			go func() {
				c, err := up.AcceptTCP()
				if err != nil {
					return
				}
				seen <- c.RemoteAddr().(*net.TCPAddr).AddrPort()
				c.Write([]byte{'!'})
				c.Close()
			}()
			obs := &doneObserver{done: make(chan L4Record, 1)}
			s := New(Options{Dialer: upstream.New(upstream.Options{ConnectTimeout: 2 * time.Second}), Protocol: tc.protocol,
				HTTP: &recordingL7{got: make(chan servedConn, 1)}, SniffTimeout: 10 * time.Second, Observer: obs, UpstreamLocal: tc.on})
			cli, srv := connect(t, front)
			c := accepted(cli, srv, up.Addr().(*net.TCPAddr).AddrPort())
			if tc.protocol == ProtocolTCP { // a bare descriptor, as AcceptRaw's
				fd, err := bareFD(srv)
				if err != nil {
					t.Fatal(err)
				}
				c.TCPConn, c.FD = nil, fd
			}
			go handleAccepted(s, c)
			cli.SetDeadline(time.Now().Add(10 * time.Second))
			if b, err := io.ReadAll(cli); string(b) != "!" || err != nil {
				t.Fatalf("client read %q, %v; want the server's byte", b, err)
			}
			cli.Close() // the copy ends: L4Done
			rec := obs.next(t, 5*time.Second)
			var want netip.AddrPort
			if tc.on {
				want = <-seen
			}
			if rec.UpstreamLocal != want {
				t.Errorf("recorded upstream local address %v, want %v", rec.UpstreamLocal, want)
			}
			waitReleased(t, s)
		})
	}
}
