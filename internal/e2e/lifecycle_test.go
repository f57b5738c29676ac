package e2e

import (
	"io"
	"net/netip"
	"syscall"
	"testing"
	"time"
)

// TestSIGTERMDrainsThenCleans: on SIGTERM detour stops accepting, lets an
// open connection finish, then removes its rules and exits 0 — as soon as
// the last connection is done, not at the end of the drain period.
func TestSIGTERMDrainsThenCleans(t *testing.T) {
	needRoot(t)
	n := tproxyNet(t, "dr")
	startServers(t, n.Server)
	before := snapshot(t, n.Router)
	d := startDetour(t, n.Router, "--mode", "tproxy", "--intercept-port", interceptPorts,
		"--protocol", "tcp", "--admin", "off", "--drain-timeout", "20s")

	conn := dial(t, n.Client, n.ServerIP4, portBanner)
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	banner := make([]byte, len("220 detour-e2e ready\r\n"))
	if _, err := io.ReadFull(conn, banner); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(d.Pid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)

	// Draining: the open connection still works.
	conn.Write([]byte("still here\r\n"))
	echo := make([]byte, len("still here\r\n"))
	if _, err := io.ReadFull(conn, echo); err != nil || string(echo) != "still here\r\n" {
		t.Fatalf("open connection broken during drain: %q, %v", echo, err)
	}
	select {
	case <-d.Done():
		t.Fatal("detour exited while a connection was still open and the drain period not over")
	default:
	}
	// New connections are no longer accepted: with no listening socket
	// the tproxy rule does not match, so they are routed directly, as
	// they will be once the rules are gone. The server sees the client.
	if c, err := n.Client.Dialer(nil)(t.Context(), "tcp", netip.AddrPortFrom(n.ServerIP4, portWhoAmI).String()); err == nil {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if b, _ := io.ReadAll(c); string(b) != n.ClientIP4.String() {
			t.Fatalf("a new connection during drain reached the server as %q, want directly from %s", b, n.ClientIP4)
		}
		c.Close()
	}

	closed := time.Now()
	conn.Close()
	select {
	case <-d.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("detour did not exit after its last connection closed")
	}
	if took := time.Since(closed); took > 5*time.Second {
		t.Fatalf("exit took %v after the last connection closed", took)
	}
	if err := d.Stop(); err != nil {
		t.Fatalf("exit status: %v", err)
	}
	if after := snapshot(t, n.Router); after != before {
		t.Fatalf("rules left after drain:\n%s", after)
	}
}

// TestDrainTimeoutCutsLongConnections: connections still open when the
// drain period ends are closed, and detour still cleans up and exits 0.
func TestDrainTimeoutCutsLongConnections(t *testing.T) {
	needRoot(t)
	n := tproxyNet(t, "dt")
	startServers(t, n.Server)
	before := snapshot(t, n.Router)
	d := startDetour(t, n.Router, "--mode", "tproxy", "--intercept-port", interceptPorts,
		"--protocol", "tcp", "--admin", "off", "--drain-timeout", "1s")
	conn := dial(t, n.Client, n.ServerIP4, portBanner)
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	io.ReadFull(conn, make([]byte, len("220 detour-e2e ready\r\n")))

	syscall.Kill(d.Pid(), syscall.SIGTERM)
	select {
	case <-d.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("detour still running 10s after SIGTERM with a 1s drain period")
	}
	if err := d.Stop(); err != nil {
		t.Fatalf("exit status: %v", err)
	}
	if _, err := conn.Read(make([]byte, 1)); err == nil {
		t.Fatal("connection still open after the drain period")
	}
	if after := snapshot(t, n.Router); after != before {
		t.Fatalf("rules left after drain:\n%s", after)
	}
}
