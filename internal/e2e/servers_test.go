package e2e

import (
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"testing"

	"github.com/detour-proxy/detour/internal/ns"
)

// Test server ports, each with one behaviour. All are intercepted.
const (
	portHash    = 7001 // reads the upload to EOF, replies sha256(upload) + the download, closes
	portBanner  = 7002 // speaks first, then echoes
	portClosed  = 7003 // nothing listens: connect is refused
	portWhoAmI  = 7004 // writes the peer address it sees and closes
	portByeLate = 7005 // says "bye", half-closes, then reads the client to EOF
)

const interceptPorts = "7001,7002,7003,7004,7005"

const transferSize = 64 << 20

// payload is a deterministic pseudo-random stream of transferSize bytes.
func payload(seed byte) io.Reader {
	return io.LimitReader(rand.NewChaCha8([32]byte{seed}), transferSize)
}

func sha(r io.Reader) ([32]byte, int64) {
	h := sha256.New()
	n, _ := io.Copy(h, r)
	return [32]byte(h.Sum(nil)), n
}

// testServers runs the behaviours above on every address of the server
// namespace (one listener per family). byeGot receives what portByeLate read.
type testServers struct {
	byeGot chan string
}

func startServers(t *testing.T, n *ns.NS) *testServers {
	t.Helper()
	s := &testServers{byeGot: make(chan string, 16)}
	for _, addr := range []string{"0.0.0.0", "[::]"} {
		for port, serve := range map[int]func(*net.TCPConn){
			portHash: serveHash, portBanner: serveBanner, portWhoAmI: serveWhoAmI, portByeLate: s.serveByeLate,
		} {
			network := "tcp4"
			if addr == "[::]" {
				network = "tcp6"
			}
			ln, err := n.Listen(network, netip.MustParseAddrPort(fmtHostPort(addr, port)).String())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					go func() { defer c.Close(); serve(c.(*net.TCPConn)) }()
				}
			}()
		}
	}
	return s
}

func fmtHostPort(host string, port int) string {
	return host + ":" + itoa(port)
}

func itoa(i int) string { return netip.AddrPortFrom(netip.IPv4Unspecified(), uint16(i)).String()[8:] }

func serveHash(c *net.TCPConn) {
	sum, _ := sha(c)
	c.Write(sum[:])
	io.Copy(c, payload(2))
}

func serveBanner(c *net.TCPConn) {
	c.Write([]byte("220 detour-e2e ready\r\n"))
	io.Copy(c, c)
}

func serveWhoAmI(c *net.TCPConn) {
	c.Write([]byte(c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap().String()))
}

func (s *testServers) serveByeLate(c *net.TCPConn) {
	c.Write([]byte("bye"))
	c.CloseWrite()
	b, _ := io.ReadAll(c)
	s.byeGot <- string(b)
}
