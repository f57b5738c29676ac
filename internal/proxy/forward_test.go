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

// recordingL7 notes what ServeConn was handed.
type recordingL7 struct {
	got chan servedConn
}

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

// TestAutoPassesFailedPreDialToL7: in auto mode, when the connect made
// while sniffing failed and the client speaks HTTP, L7 gets that error (to
// answer 503 at once) instead of dialing a second time.
func TestAutoPassesFailedPreDialToL7(t *testing.T) {
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	closed, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	dst := closed.Addr().(*net.TCPAddr).AddrPort()
	closed.Close() // nobody listens: the connect is refused

	l7 := &recordingL7{got: make(chan servedConn, 1)}
	s := New(Options{Dialer: upstream.New(upstream.Options{ConnectTimeout: 2 * time.Second}), Protocol: ProtocolAuto, HTTP: l7})
	for _, req := range []string{"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"} {
		cli, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
		if err != nil {
			t.Fatal(err)
		}
		srv, err := ln.AcceptTCP()
		if err != nil {
			t.Fatal(err)
		}
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
