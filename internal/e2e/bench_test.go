package e2e

import (
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/detour-proxy/detour/internal/lab"
)

// BenchmarkAcceptToDial measures a whole new connection through detour at
// L4 — client connect, TPROXY, accept, upstream dial, the server's first
// byte back, close — against the same exchange routed directly.
func BenchmarkAcceptToDial(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("skipping: needs root for the lab's namespaces")
	}
	n, err := lab.NewTProxyNet(newID("bad"))
	if err != nil {
		b.Fatal(err)
	}
	defer n.Close()
	ln, err := n.Server.Listen("tcp4", "0.0.0.0:7020")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	// peers counts the addresses the server saw: the client's when routed
	// directly, the router's through detour.
	var mu sync.Mutex
	peers := map[netip.Addr]int{}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			peers[c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()]++
			mu.Unlock()
			c.Write([]byte{'!'})
			c.Close()
		}
	}()
	// onlyFrom fails the benchmark unless every connection since the
	// last call came from want: a detour-l4 run that was not intercepted
	// would time the direct path again.
	onlyFrom := func(b *testing.B, want netip.Addr) {
		mu.Lock()
		defer mu.Unlock()
		for a, n := range peers {
			if a != want {
				b.Fatalf("the server saw %d connection(s) from %s, want all from %s", n, a, want)
			}
		}
		clear(peers)
	}
	dial := n.Client.Dialer(nil)
	exchange := func(b *testing.B, port uint16) {
		for b.Loop() {
			c, err := dial(b.Context(), "tcp", netip.AddrPortFrom(n.ServerIP4, port).String())
			if err != nil {
				b.Fatal(err)
			}
			c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
				b.Fatal(err)
			}
			c.Close()
		}
	}
	b.Run("direct", func(b *testing.B) { exchange(b, 7020); onlyFrom(b, n.ClientIP4) })
	d, err := lab.StartDetour(b.Context(), n.Router, detourBin, []string{"--mode", "tproxy",
		"--intercept-port", "7020", "--protocol", "tcp", "--admin", "off", "--log-level", "warn"}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer d.Stop()
	b.Run("detour-l4", func(b *testing.B) { exchange(b, 7020); onlyFrom(b, n.RouterIP4) })
}
