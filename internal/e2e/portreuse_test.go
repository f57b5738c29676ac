package e2e

import (
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestClientReusesPortAtOnce: detour closes first, so the accepted socket
// sits in TIME_WAIT on the router; a client that reconnects from the same
// port at once must be proxied again, not reset by that TIME_WAIT.
func TestClientReusesPortAtOnce(t *testing.T) {
	needRoot(t)
	n := tproxyNet(t, "reuse")
	startServers(t, n.Server)
	startDetour(t, n.Router, "--mode", "tproxy", "--intercept-port", interceptPorts, "--protocol", "tcp", "--admin", "off")

	const port = 41999
	d := &net.Dialer{
		LocalAddr: &net.TCPAddr{IP: n.ClientIP4.AsSlice(), Port: port},
		Control: func(_, _ string, rc syscall.RawConn) error {
			return rc.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1) })
		},
	}
	dst := netip.AddrPortFrom(n.ServerIP4, portWhoAmI).String()
	for i := 0; i < 5; i++ {
		c, err := n.Client.Dialer(d)(t.Context(), "tcp", dst)
		if err != nil {
			t.Fatalf("connection %d from port %d: %v", i, port, err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		got, err := io.ReadAll(c) // the server speaks and closes; detour closes first
		c.Close()
		if err != nil || string(got) != "198.18.2.1" {
			t.Fatalf("connection %d from port %d: read %q, %v; want the router's address", i, port, got, err)
		}
		time.Sleep(50 * time.Millisecond) // the client's side is closed, the router's in TIME_WAIT
	}
}
