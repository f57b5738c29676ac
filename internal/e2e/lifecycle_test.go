package e2e

import (
	"bufio"
	"context"
	"io"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/detour-proxy/detour/internal/ns"
)

// TestSIGTERMDrainsThenCleans: on SIGTERM detour stops accepting, lets an
// open connection finish, then removes its rules and exits 0 — as soon as
// the last connection is done, not at the end of the drain period. While
// it drains, new connections pass directly to their destination.
func TestSIGTERMDrainsThenCleans(t *testing.T) {
	needRoot(t)
	tests := []struct {
		mode string
		// net builds the mode's network: where detour runs, where the
		// client dials from, the server and the client's address there.
		net func(t *testing.T) (detour, client *ns.NS, server, client4 netip.Addr)
	}{
		{"tproxy", func(t *testing.T) (*ns.NS, *ns.NS, netip.Addr, netip.Addr) {
			n := tproxyNet(t, "dr")
			startServers(t, n.Server)
			return n.Router, n.Client, n.ServerIP4, n.ClientIP4
		}},
		// NAT redirects a new connection into the closed port unless the
		// rules go first; the open one keeps its translation in conntrack.
		{"redirect", func(t *testing.T) (*ns.NS, *ns.NS, netip.Addr, netip.Addr) {
			n := redirectNet(t, "drr")
			startServers(t, n.Server)
			return n.Host, n.Host, n.ServerIP4, n.HostIP4
		}},
	}
	for _, tt := range tests {
		t.Run(tt.mode, func(t *testing.T) {
			dn, cn, server, client4 := tt.net(t)
			before := snapshot(t, dn)
			d := startDetour(t, dn, "--mode", tt.mode, "--intercept-port", interceptPorts,
				"--protocol", "tcp", "--admin", "off", "--drain-timeout", "20s")

			conn := dial(t, cn, server, portBanner)
			conn.SetDeadline(time.Now().Add(30 * time.Second))
			banner := make([]byte, len("220 detour-e2e ready\r\n"))
			if _, err := io.ReadFull(conn, banner); err != nil {
				t.Fatal(err)
			}
			if err := syscall.Kill(d.Pid(), syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			waitLog(t, d.Output, "shutting down: draining connections", 1) // logged once the rules stopped diverting

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
			// A new connection is not accepted by detour, which has closed
			// its listeners, but reaches the server directly, as it will
			// once the rules are gone: the server sees the client.
			c := dial(t, cn, server, portWhoAmI)
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if b, err := io.ReadAll(c); string(b) != client4.String() {
				t.Fatalf("a new connection during drain reached the server as %q (%v), want directly from %s", b, err, client4)
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
			if after := snapshot(t, dn); after != before {
				t.Fatalf("rules left after drain:\n%s", after)
			}
		})
	}
}

// TestDrainCutShort: connections still open when the drain period ends,
// or when a second SIGTERM ends a long drain at once (so stopping early
// never needs SIGKILL, which leaves the rules), are closed, and detour
// still removes its rules and exits 0.
func TestDrainCutShort(t *testing.T) {
	needRoot(t)
	for _, tc := range []struct {
		name, tag, drain string
		second           bool // a second SIGTERM once the drain began
	}{
		{"drain timeout", "dt", "1s", false},
		{"second signal", "d2", "1h", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := tproxyNet(t, tc.tag)
			startServers(t, n.Server)
			before := snapshot(t, n.Router)
			d := startDetour(t, n.Router, "--mode", "tproxy", "--intercept-port", interceptPorts,
				"--protocol", "tcp", "--admin", "off", "--drain-timeout", tc.drain)
			conn := dial(t, n.Client, n.ServerIP4, portBanner)
			conn.SetDeadline(time.Now().Add(30 * time.Second))
			io.ReadFull(conn, make([]byte, len("220 detour-e2e ready\r\n")))

			syscall.Kill(d.Pid(), syscall.SIGTERM)
			if tc.second {
				waitLog(t, d.Output, "shutting down: draining connections", 1)
				select {
				case <-d.Done():
					t.Fatal("detour exited with a connection open and 1h of drain left")
				case <-time.After(300 * time.Millisecond):
				}
				syscall.Kill(d.Pid(), syscall.SIGTERM)
			}
			select {
			case <-d.Done():
			case <-time.After(10 * time.Second):
				t.Fatalf("detour still running 10s after SIGTERM (drain %s, second signal %v)", tc.drain, tc.second)
			}
			if err := d.Stop(); err != nil {
				t.Fatalf("exit status: %v", err)
			}
			if _, err := conn.Read(make([]byte, 1)); err == nil {
				t.Fatal("connection still open after the drain was cut short")
			}
			if after := snapshot(t, n.Router); after != before {
				t.Fatalf("rules left after the drain was cut short:\n%s", after)
			}
		})
	}
}

// TestClosedLogPipeKeepsRunning: when whatever reads detour's log goes away
// (`detour run 2>&1 | head`), detour keeps serving with its rules and
// still removes them on SIGTERM, instead of dying of SIGPIPE at its next
// log line and leaving rules that divert into closed listeners.
func TestClosedLogPipeKeepsRunning(t *testing.T) {
	needRoot(t)
	n := redirectNet(t, "pipe")
	startServers(t, n.Server)
	before := snapshot(t, n.Host)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := n.Host.Command(context.Background(), detourBin, "run", "--mode", "redirect",
		"--intercept-port", interceptPorts, "--protocol", "tcp", "--admin", "off")
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	waited, err := ns.StartPinned(cmd)
	w.Close()
	if err != nil {
		r.Close()
		t.Fatal(err)
	}
	exited := false
	t.Cleanup(func() {
		if !exited {
			cmd.Process.Kill()
			<-waited
		}
	})
	sc := bufio.NewScanner(r)
	for sc.Scan() && !strings.Contains(sc.Text(), "msg=ready") {
	}
	r.Close() // the log's reader goes away
	// Each of these writes log lines into the broken pipe.
	for i := 0; i < 3; i++ {
		cmd.Process.Signal(syscall.SIGHUP)
		time.Sleep(100 * time.Millisecond)
	}
	select {
	case err := <-waited:
		exited = true
		t.Fatalf("detour died once its log pipe was closed (%v); namespace now:\n%s", err, snapshot(t, n.Host))
	case <-time.After(300 * time.Millisecond):
	}
	conn := dial(t, n.Host, n.ServerIP4, portBanner)
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	banner := make([]byte, len("220 detour-e2e ready\r\n"))
	if _, err := io.ReadFull(conn, banner); err != nil {
		t.Fatalf("no banner through detour after its log pipe closed: %v", err)
	}
	conn.Close()
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-waited:
		exited = true
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no exit within 20s of SIGTERM")
	}
	if after := snapshot(t, n.Host); after != before {
		t.Fatalf("rules left after SIGTERM:\n%s", after)
	}
}
