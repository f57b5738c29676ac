package e2e

import (
	"io"
	"testing"
	"time"

	"github.com/detour-proxy/detour/internal/nice"
)

// TestNiceReachesEveryThread runs detour with --nice -5 and checks, after
// it has carried connections (so its loops' and the runtime's later
// threads exist), that every one of its threads runs at -5.
func TestNiceReachesEveryThread(t *testing.T) {
	needRoot(t)
	n := redirectNet(t, "nice")
	d := startDetour(t, n.Host, "--mode", "redirect", "--intercept-port", interceptPorts,
		"--protocol", "tcp", "--admin", "off", "--nice", "-5")
	startServers(t, n.Server)
	for range 20 {
		conn := dial(t, n.Host, n.ServerIP4, portWhoAmI)
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		if b, err := io.ReadAll(conn); err != nil || len(b) == 0 {
			t.Fatalf("through detour: %q, %v", b, err)
		}
		conn.Close()
	}
	tids, err := nice.Threads(d.Pid())
	if err != nil {
		t.Fatal(err)
	}
	if len(tids) < 2 {
		t.Fatalf("detour has %d threads; want the runtime's and the loops'", len(tids))
	}
	for _, tid := range tids {
		if got, err := nice.Of(d.Pid(), tid); err == nil && got != -5 {
			t.Errorf("thread %d of %d: nice %d, want -5", tid, len(tids), got)
		}
	}
}
