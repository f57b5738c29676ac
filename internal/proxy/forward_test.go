package proxy

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/detour-proxy/detour/internal/listen"
	"github.com/detour-proxy/detour/internal/upstream"
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
}

func (l *recordingL7) ServeConn(c net.Conn, _, origDst netip.AddrPort, preDialed *net.TCPConn, dialErr error) {
	c.Close()
	if preDialed != nil {
		preDialed.Close()
	}
	l.got <- servedConn{origDst, preDialed, dialErr}
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

// TestAutoPassesFailedPreDialToL7: in auto mode, when the connect made
// while sniffing failed and the client speaks HTTP, L7 gets that error (to
// answer 503 at once) instead of dialing a second time.
func TestAutoPassesFailedPreDialToL7(t *testing.T) {
	ln := listenLoopback(t)
	closed := listenLoopback(t)
	dst := closed.Addr().(*net.TCPAddr).AddrPort()
	closed.Close() // nobody listens: the connect is refused

	l7 := &recordingL7{got: make(chan servedConn, 1)}
	s := New(Options{Dialer: upstream.New(upstream.Options{ConnectTimeout: 2 * time.Second}), Protocol: ProtocolAuto, HTTP: l7})
	for _, req := range []string{"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"} {
		cli, srv := connect(t, ln)
		io.WriteString(cli, req)
		c := &listen.Conn{TCPConn: srv, Client: cli.LocalAddr().(*net.TCPAddr).AddrPort(), OrigDst: dst}
		go s.forward(s.cur.Load(), newConnLog(s.log, 1), c)
		select {
		case got := <-l7.got:
			var de *upstream.DialError
			if got.preDialed != nil || !errors.As(got.dialErr, &de) || de.Reason != upstream.ReasonRefused || got.origDst != dst {
				t.Errorf("%q: L7 got %+v, want the refused pre-dial's error", req[:3], got)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%q: not handed to L7", req[:3])
		}
		cli.Close()
	}
}

// TestAutoDialsWhileSniffingOnlyWithoutPool: auto mode connects to the
// destination while it sniffs unless L7 has an idle connection there. Then
// HTTP goes to L7 with no connection of its own, and anything else is
// dialed once sniffed and still forwarded whole.
func TestAutoDialsWhileSniffingOnlyWithoutPool(t *testing.T) {
	ln, up := listenLoopback(t), listenLoopback(t)
	dst := up.Addr().(*net.TCPAddr).AddrPort()

	for _, tc := range []struct {
		name          string
		pooled        bool
		first         string
		wantL7        bool
		wantPreDialed bool
	}{
		{"HTTP, nothing pooled", false, "GET / HTTP/1.1\r\nHost: a\r\n\r\n", true, true},
		{"HTTP, pooled", true, "GET / HTTP/1.1\r\nHost: a\r\n\r\n", true, false},
		{"not HTTP, pooled", true, "SSH-2.0-test\r\n", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l7 := &recordingL7{got: make(chan servedConn, 1), pooled: tc.pooled}
			s := New(Options{Dialer: upstream.New(upstream.Options{ConnectTimeout: 2 * time.Second}), Protocol: ProtocolAuto, HTTP: l7})
			cli, srv := connect(t, ln)
			io.WriteString(cli, tc.first)
			c := &listen.Conn{TCPConn: srv, FD: -1, Client: cli.LocalAddr().(*net.TCPAddr).AddrPort(), OrigDst: dst}
			s.open.Add(1) // as accept does: an L4 copy releases it
			s.conns.Add(1)
			go func() {
				if !s.forward(s.cur.Load(), newConnLog(s.log, 1), c) {
					s.release()
				}
			}()

			if !tc.wantL7 {
				// Forwarded at L4: the upstream gets a connection and the
				// client's bytes.
				up.SetDeadline(time.Now().Add(5 * time.Second))
				uc, err := up.Accept()
				if err != nil {
					t.Fatalf("no upstream connection: %v", err)
				}
				defer uc.Close()
				uc.SetDeadline(time.Now().Add(5 * time.Second))
				b := make([]byte, len(tc.first))
				if _, err := io.ReadFull(uc, b); err != nil || string(b) != tc.first {
					t.Fatalf("upstream read %q, %v; want %q", b, err, tc.first)
				}
				return
			}
			select {
			case got := <-l7.got:
				if (got.preDialed != nil) != tc.wantPreDialed || got.dialErr != nil {
					t.Errorf("L7 got pre-dialed %v (err %v), want pre-dialed %v", got.preDialed != nil, got.dialErr, tc.wantPreDialed)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("not handed to L7")
			}
			// A connect made while sniffing is in the backlog by now (L7 is
			// handed the connection only after it finished).
			up.SetDeadline(time.Now().Add(50 * time.Millisecond))
			uc, err := up.Accept()
			if dialed := err == nil; dialed != tc.wantPreDialed {
				t.Errorf("upstream accepted a connection: %v, want %v", dialed, tc.wantPreDialed)
			}
			if uc != nil {
				uc.Close()
			}
		})
	}
}
