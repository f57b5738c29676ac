package e2e

import (
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/detour-proxy/detour/internal/lab"
	"github.com/detour-proxy/detour/internal/ns"
)

// Ports of TestInterceptSelection: a single port and a range, with a
// port just outside each end of the range.
const (
	selPort     = 7310
	selFirst    = 7320
	selLast     = 7330
	selSelected = "7310,7320-7330"
)

// TestInterceptSelection: in both deployments, connections to a port
// inside an intercepted range (either end included) go through detour,
// connections to a port just outside it go direct, and so do connections
// to an excluded destination, even one inside --intercept-dst. The server
// tells them apart by the peer it sees: the client's own socket, or
// detour's; detour's access log holds only the intercepted ones.
func TestInterceptSelection(t *testing.T) {
	needRoot(t)
	type setup struct {
		client         *ns.NS
		excluded, kept netip.Addr // the server's excluded address, and its other one
	}
	for _, dep := range []struct {
		name  string
		setup func(t *testing.T, logPath string) setup
	}{
		{"tproxy", func(t *testing.T, logPath string) setup {
			n := tproxyNet(t, "isel")
			startSelServers(t, n.Server)
			// The excluded IPv4 address is inside --intercept-dst: excluded wins.
			startDetour(t, n.Router, "--mode", "tproxy", "--listen", "0.0.0.0:15001", "--listen", "[::]:15001",
				"--intercept-port", selSelected, "--intercept-dst", netip.PrefixFrom(n.ServerIP4, 24).Masked().String()+","+netip.PrefixFrom(n.ServerIP6, 64).Masked().String(),
				"--exclude-dst", netip.PrefixFrom(n.ServerIP4, 32).String(),
				"--protocol", "tcp", "--admin", "off", "--access-log", logPath, "--access-log-format", "json")
			return setup{n.Client, n.ServerIP4, n.ServerIP6}
		}},
		{"redirect", func(t *testing.T, logPath string) setup {
			n := redirectNet(t, "iselr")
			startSelServers(t, n.Server)
			startDetour(t, n.Host, "--mode", "redirect", "--intercept-port", selSelected,
				"--exclude-dst", netip.PrefixFrom(n.ServerIP6, 128).String(),
				"--protocol", "tcp", "--admin", "off", "--access-log", logPath, "--access-log-format", "json")
			return setup{n.Host, n.ServerIP6, n.ServerIP4}
		}},
	} {
		t.Run(dep.name, func(t *testing.T) {
			t.Parallel()
			logPath := filepath.Join(t.TempDir(), "access.log")
			s := dep.setup(t, logPath)
			// Direct ones first, so that once the intercepted ones are all
			// logged, a record of a direct one would be there too.
			var direct, intercepted []netip.AddrPort
			for _, p := range []uint16{selPort, selFirst, selLast} {
				direct = append(direct, netip.AddrPortFrom(s.excluded, p))
				intercepted = append(intercepted, netip.AddrPortFrom(s.kept, p))
			}
			for _, p := range []uint16{selPort - 1, selPort + 1, selFirst - 1, selLast + 1} {
				direct = append(direct, netip.AddrPortFrom(s.kept, p))
			}
			intercepted = append(intercepted, netip.AddrPortFrom(s.kept, (selFirst+selLast)/2))
			for _, dst := range direct {
				if via := peerSeen(t, s.client, dst); via != "" {
					t.Errorf("%s: intercepted (the server saw %s); want it direct", dst, via)
				}
			}
			for _, dst := range intercepted {
				if via := peerSeen(t, s.client, dst); via == "" {
					t.Errorf("%s: went direct (the server saw the client's own socket); want it intercepted", dst)
				}
			}
			logged := map[string]bool{}
			deadline := time.Now().Add(10 * time.Second)
			for len(logged) < len(intercepted) && time.Now().Before(deadline) {
				time.Sleep(50 * time.Millisecond)
				clear(logged)
				for _, r := range obsReadLog(t, logPath) {
					logged[r.OrigDst] = true
				}
			}
			for _, dst := range intercepted {
				if !logged[dst.String()] {
					t.Errorf("%s: intercepted, but not in the access log %v", dst, logged)
				}
			}
			for _, dst := range direct {
				if logged[dst.String()] {
					t.Errorf("%s: in the access log, but it went direct", dst)
				}
			}
		})
	}
}

// startSelServers serves, on every port around the selection, the peer
// address the server sees.
func startSelServers(t *testing.T, n *ns.NS) {
	t.Helper()
	for _, p := range []int{selPort - 1, selPort, selPort + 1, selFirst - 1, selFirst, (selFirst + selLast) / 2, selLast, selLast + 1} {
		stop, err := lab.ServeTCP(n, p, func(c *net.TCPConn) {
			c.Write([]byte(c.RemoteAddr().(*net.TCPAddr).AddrPort().String()))
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(stop)
	}
}

// peerSeen connects to dst and returns the peer the server saw, or "" when
// that is the client's own socket (the connection went direct).
func peerSeen(t *testing.T, from *ns.NS, dst netip.AddrPort) string {
	t.Helper()
	c := dial(t, from, dst.Addr(), int(dst.Port()))
	c.SetDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	c.Close() // the connection ends, and detour logs it
	if err != nil {
		t.Fatalf("%s: %v", dst, err)
	}
	seen, err := netip.ParseAddrPort(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("%s: the server said %q", dst, b)
	}
	self := c.LocalAddr().(*net.TCPAddr).AddrPort()
	if netip.AddrPortFrom(seen.Addr().Unmap(), seen.Port()) == netip.AddrPortFrom(self.Addr().Unmap(), self.Port()) {
		return ""
	}
	return seen.String()
}
