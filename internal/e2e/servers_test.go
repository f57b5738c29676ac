package e2e

import (
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"net"
	"testing"

	"github.com/detour-proxy/detour/internal/lab"
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
	for port, serve := range map[int]func(*net.TCPConn){
		portHash: serveHash, portBanner: serveBanner, portWhoAmI: serveWhoAmI, portByeLate: s.serveByeLate,
	} {
		stop, err := lab.ServeTCP(n, port, serve)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(stop)
	}
	return s
}

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
