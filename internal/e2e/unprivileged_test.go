package e2e

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/detour-proxy/detour/internal/lab"
	"github.com/detour-proxy/detour/internal/ns"
)

// unitCaps are the capabilities contrib/systemd/detour.service gives
// detour (AmbientCapabilities=, CapabilityBoundingSet=), in setpriv's
// spelling.
const unitCaps = "net_admin"

// TestRunsUnprivileged: detour runs as the unit runs it, as a user that
// is not root (nobody here; DynamicUser= picks another uid) with only the
// unit's capabilities and no_new_privs, and a runtime directory of its
// own for its locks (RuntimeDirectory=detour): it installs its rules,
// proxies a connection (spoofing the client's address too), and removes
// the rules at SIGTERM, in both modes. In redirect mode the connection it
// makes upstream must escape the rules by its socket mark, whatever its
// uid.
//
// setpriv (util-linux; `apt-get install util-linux` on Debian) drops the
// privileges; a fresh /run in the mount namespace that `ip netns exec`
// makes stands for systemd's, so the host's /run/detour is not touched.
func TestRunsUnprivileged(t *testing.T) {
	needRoot(t)
	wrapper := unitWrapper(t)

	for _, spoof := range []bool{false, true} {
		t.Run(fmt.Sprintf("tproxy spoof=%v", spoof), func(t *testing.T) {
			n := tproxyNet(t, "sdut")
			startServers(t, n.Server)
			before := snapshot(t, n.Router)
			args := []string{"--mode", "tproxy", "--intercept-port", "7004", "--protocol", "tcp", "--admin", "off"}
			// Through detour the server sees the router, or the client
			// when detour spoofs its address (IP_TRANSPARENT upstream).
			want := n.RouterIP4
			if spoof {
				args, want = append(args, "--spoof-source"), n.ClientIP4
			}
			d := startDetourBin(t, n.Router, wrapper, args...)
			checkUnprivileged(t, d.Pid())
			c := dial(t, n.Client, n.ServerIP4, portWhoAmI)
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if got, err := io.ReadAll(c); string(got) != want.String() {
				t.Errorf("the server saw %q (%v), want %s", got, err, want)
			}
			c.Close() // else the drain waits for it
			stopUnprivileged(t, d, n.Router, before)
		})
	}
	t.Run("redirect", func(t *testing.T) {
		n := redirectNet(t, "sdur")
		startServers(t, n.Server)
		before := snapshot(t, n.Host)
		d := startDetourBin(t, n.Host, wrapper, "--mode", "redirect", "--intercept-port", "7004", "--protocol", "tcp", "--admin", "off", "--access-log", "stdout")
		checkUnprivileged(t, d.Pid())
		c := dial(t, n.Host, n.ServerIP4, portWhoAmI)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if got, err := io.ReadAll(c); string(got) != n.HostIP4.String() {
			t.Errorf("the server saw %q (%v), want %s", got, err, n.HostIP4)
		}
		c.Close()
		// The access log has the connection: it went through detour.
		waitLog(t, d.Output, n.ServerIP4.String()+":7004", 1)
		stopUnprivileged(t, d, n.Host, before)
	})
}

// checkUnprivileged fails unless pid runs as nobody with only unitCaps.
func checkUnprivileged(t *testing.T, pid int) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	status := string(b)
	for _, want := range []string{"Uid:\t65534\t65534\t65534\t65534", "CapEff:\t0000000000001000", "CapBnd:\t0000000000001000", "NoNewPrivs:\t1"} {
		if !strings.Contains(status, want) {
			t.Fatalf("detour (pid %d) does not run as the unit runs it: no %q in\n%s", pid, want, status)
		}
	}
}

// stopUnprivileged sends SIGTERM and wants exit 0 with n as before.
func stopUnprivileged(t *testing.T, d *lab.Detour, n *ns.NS, before string) {
	t.Helper()
	if err := d.Stop(); err != nil {
		t.Fatalf("exit: %v", err)
	}
	if !strings.Contains(d.Output(), "rules removed") {
		t.Errorf("no `rules removed` in the output:\n%s", d.Output())
	}
	if after := snapshot(t, n); after != before {
		t.Fatalf("rules left after exit:\n%s", after)
	}
}

// unitWrapper returns a program that runs detour as the unit does: as
// nobody, with only the unit's capabilities and no_new_privs, with a
// fresh /run holding a /run/detour of its own. It skips the test without
// setpriv (util-linux; `apt-get install util-linux` on Debian).
func unitWrapper(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("skipping: needs setpriv (util-linux) to run detour as another user with capabilities")
	}
	// What nobody may read and run: the binary and a wrapper that sets
	// up /run and drops the privileges, as systemd does for the unit.
	dir, err := os.MkdirTemp("", "detour-sdu-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "detour")
	b, err := os.ReadFile(detourBin)
	if err == nil {
		err = os.WriteFile(bin, b, 0o755)
	}
	if err != nil {
		t.Fatal(err)
	}
	wrapper := filepath.Join(dir, "as-unit")
	script := fmt.Sprintf(`#!/bin/sh
set -e
mount -t tmpfs -o mode=0755 detour-test-run /run
mkdir -m 0755 /run/detour
chown 65534:65534 /run/detour
exec setpriv --reuid=65534 --regid=65534 --clear-groups --no-new-privs \
	--inh-caps=-all,+%[1]s --ambient-caps=-all,+%[1]s --bounding-set=-all,+%[1]s %[2]s "$@"
`, unitCaps, bin)
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return wrapper
}
