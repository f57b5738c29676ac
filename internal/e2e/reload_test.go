package e2e

import (
	"bufio"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/detour-proxy/detour/internal/ns"
)

// TestSIGHUPReload: a reload adds an intercepted port and changes a
// setting while a connection stays open; a broken file is rejected and the
// running configuration stays.
func TestSIGHUPReload(t *testing.T) {
	needRoot(t)
	n := tproxyNet(t, "hup")
	startServers(t, n.Server)
	file, write := configFile(t)
	write("mode: tproxy\nprotocol: tcp\nadmin: off\nintercept: {ports: [7002]}\ntcp: {loops: 3}\n")
	d := startDetour(t, n.Router, "-c", file)
	waitLog(t, d.Output, "l4_loops=3", 1)

	conn := dial(t, n.Client, n.ServerIP4, portBanner)
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	io.ReadFull(conn, make([]byte, len("220 detour-e2e ready\r\n")))
	whoami := func() string {
		c := dial(t, n.Client, n.ServerIP4, portWhoAmI)
		c.SetDeadline(time.Now().Add(10 * time.Second))
		b, _ := io.ReadAll(c)
		c.Close()
		return string(b)
	}
	if got := whoami(); got != n.ClientIP4.String() {
		t.Fatalf("port %d before reload: server saw %q, want the client (not intercepted yet)", portWhoAmI, got)
	}

	reloads := strings.Count(d.Output(), "configuration reloaded")
	write("mode: tproxy\nprotocol: tcp\nadmin: off\nintercept: {ports: [7002, 7004]}\ntcp: {idle_timeout: 30m, loops: 3}\nlisten: ['0.0.0.0:15001', '[::]:15001']\n")
	syscall.Kill(d.Pid(), syscall.SIGHUP)
	waitLog(t, d.Output, "configuration reloaded", reloads+1)

	if got := whoami(); got != netip.MustParseAddr("198.18.2.1").String() {
		t.Fatalf("port %d after reload: server saw %q, want the router (intercepted)", portWhoAmI, got)
	}
	conn.Write([]byte("across the reload\r\n"))
	echo := make([]byte, len("across the reload\r\n"))
	if _, err := io.ReadFull(conn, echo); err != nil {
		t.Fatalf("connection opened before the reload broke: %v", err)
	}

	// A broken file and a restart-only change are rejected; nothing changes.
	rejects := strings.Count(d.Output(), "reload rejected")
	write("mode: tproxy\nintercept: {ports: [7002], bogus: 1}\n")
	syscall.Kill(d.Pid(), syscall.SIGHUP)
	waitLog(t, d.Output, "reload rejected", rejects+1)
	write("mode: redirect\nintercept: {ports: [7002]}\nadmin: off\n")
	syscall.Kill(d.Pid(), syscall.SIGHUP)
	waitLog(t, d.Output, "cannot change without a restart", 1)
	write("mode: tproxy\nprotocol: tcp\nadmin: off\nintercept: {ports: [7002, 7004]}\ntcp: {idle_timeout: 30m, loops: 1}\nlisten: ['0.0.0.0:15001', '[::]:15001']\n")
	syscall.Kill(d.Pid(), syscall.SIGHUP)
	waitLog(t, d.Output, "tcp.loops cannot change without a restart", 2) // the mode change above also changed it
	if got := whoami(); got != "198.18.2.1" {
		t.Fatalf("after rejected reloads: server saw %q, want the router", got)
	}
	conn.Write([]byte("still\r\n"))
	if _, err := io.ReadFull(conn, make([]byte, 7)); err != nil {
		t.Fatalf("connection broke after a rejected reload: %v", err)
	}
}

// waitLog waits until the log holds want at least n times.
func waitLog(t *testing.T, output func() string, want string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(output(), want) < n {
		if time.Now().After(deadline) {
			t.Fatalf("log has %q %d times, want %d:\n%s", want, strings.Count(output(), want), n, output())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestReloadWhileSniffing: a reload that replaces the HTTP side (here its
// server header) lands while a connection waits for its client's first
// bytes; the request that follows is served by the new side, not dropped
// by the old one, which the reload shut down.
func TestReloadWhileSniffing(t *testing.T) {
	needRoot(t)
	n := tproxyNet(t, "hups")
	web := startHTTPBin(t, n.Server)
	file, writeFile := configFile(t)
	write := func(server string) {
		writeFile("mode: tproxy\nprotocol: auto\nadmin: off\nintercept: {ports: [80]}\nhttp: {server_header: " + server + "}\n")
	}
	write("before")
	d := startDetour(t, n.Router, "-c", file)

	conn := dial(t, n.Client, n.ServerIP4, 80) // sniffing: no byte sent yet
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	// Accepted, and its upstream connected while it waits: the server has
	// the connection. (A fixed 100ms sleep let a slow accept come after
	// the reload, and the test pass without testing it.)
	for deadline := time.Now().Add(10 * time.Second); web.Conns() == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("detour did not connect upstream for the sniffing connection within 10s")
		}
	}
	write("after")
	syscall.Kill(d.Pid(), syscall.SIGHUP)
	waitLog(t, d.Output, "configuration reloaded", 1)

	io.WriteString(conn, "GET /get HTTP/1.1\r\nHost: "+n.ServerIP4.String()+"\r\n\r\n")
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("the request on a connection accepted before the reload: %v", err)
	}
	res.Body.Close()
	if res.StatusCode != 200 || res.Header.Get("Server") != "after" {
		t.Fatalf("status %d, server %q; want 200 from the reloaded HTTP side (server: after)", res.StatusCode, res.Header.Get("Server"))
	}
}

// TestReloadToNoPorts: a reload that drops every port stops diverting new
// connections but keeps the open ones alive: in tproxy mode their packets
// need the socket rule and the policy routing, in redirect mode their NAT
// state needs a nat rule that uses conntrack. The rest goes at exit.
func TestReloadToNoPorts(t *testing.T) {
	needRoot(t)
	tests := []struct {
		mode string
		// direct is the address the server sees on a connection that was
		// not diverted ("": the same as a diverted one's).
		net func(t *testing.T) (detour, client *ns.NS, server netip.Addr, direct string)
	}{
		{"tproxy", func(t *testing.T) (*ns.NS, *ns.NS, netip.Addr, string) {
			n := tproxyNet(t, "hupt")
			startServers(t, n.Server)
			return n.Router, n.Client, n.ServerIP4, n.ClientIP4.String()
		}},
		{"redirect", func(t *testing.T) (*ns.NS, *ns.NS, netip.Addr, string) {
			n := redirectNet(t, "hupr")
			startServers(t, n.Server)
			return n.Host, n.Host, n.ServerIP4, ""
		}},
	}
	for _, tt := range tests {
		t.Run(tt.mode, func(t *testing.T) {
			dn, cn, server, direct := tt.net(t)
			before := snapshot(t, dn)
			file, write := configFile(t)
			write("mode: " + tt.mode + "\nprotocol: tcp\nadmin: off\nintercept: {ports: [7002, 7004]}\n")
			d := startDetour(t, dn, "-c", file)

			conn := dial(t, cn, server, portBanner)
			conn.SetDeadline(time.Now().Add(30 * time.Second))
			if _, err := io.ReadFull(conn, make([]byte, len("220 detour-e2e ready\r\n"))); err != nil {
				t.Fatal(err)
			}
			write("mode: " + tt.mode + "\nprotocol: tcp\nadmin: off\n")
			syscall.Kill(d.Pid(), syscall.SIGHUP)
			waitLog(t, d.Output, "configuration reloaded", 1)

			conn.Write([]byte("after the reload\r\n"))
			echo := make([]byte, len("after the reload\r\n"))
			if _, err := io.ReadFull(conn, echo); err != nil {
				t.Fatalf("an open connection broke when the reload dropped every port: %v", err)
			}
			if direct != "" {
				c := dial(t, cn, server, portWhoAmI)
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				if b, _ := io.ReadAll(c); string(b) != direct {
					t.Errorf("a new connection after the reload reached the server as %q, want directly from %s", b, direct)
				}
			}
			conn.Close()
			if err := d.Stop(); err != nil {
				t.Fatalf("exit: %v", err)
			}
			if after := snapshot(t, dn); after != before {
				t.Fatalf("rules left after exit:\n%s", after)
			}
		})
	}
}
