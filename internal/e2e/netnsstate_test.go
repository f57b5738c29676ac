package e2e

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/detour-proxy/detour/internal/ns"
)

// TestRunAndCheckAgreeOnTheNamespace: in a namespace with lo down or IPv6
// disabled, `detour check` exits 1 exactly where `detour run` fails, and
// run's error says what to do; where IPv6 is off, run's default listeners
// fall back to IPv4 only (logged) and both succeed.
func TestRunAndCheckAgreeOnTheNamespace(t *testing.T) {
	needRoot(t)
	loDown := func(n *ns.NS) error {
		return n.Do(func() error {
			lo, err := netlink.LinkByName("lo")
			if err != nil {
				return err
			}
			return netlink.LinkSetDown(lo)
		})
	}
	noIPv6 := func(n *ns.NS) error { return n.Sysctl("net.ipv6.conf.all.disable_ipv6", "1") }
	tests := []struct {
		name      string
		setup     func(*ns.NS) error
		run       []string // after `run --admin off --intercept-port 80`
		check     []string // after `check`
		wantRunOK bool
		wantOut   string // in run's output
	}{
		{"lo down, redirect", loDown, []string{"--mode", "redirect"}, []string{"--mode", "redirect"}, false, "ip link set lo up"},
		{"lo down, tproxy", loDown, []string{"--mode", "tproxy"}, []string{"--mode", "tproxy"}, false, "ip link set lo up"},
		{"no IPv6, redirect defaults", noIPv6, []string{"--mode", "redirect"}, []string{"--mode", "redirect"}, true, "listening on IPv4 only"},
		{"no IPv6, tproxy defaults", noIPv6, []string{"--mode", "tproxy"}, []string{"--mode", "tproxy"}, true, "listening on IPv4 only"},
		{"no IPv6, redirect [::1]", noIPv6, []string{"--mode", "redirect", "--listen", "[::1]:4999"},
			[]string{"--mode", "redirect", "--listen", "[::1]:4999"}, false, "--listen 127.0.0.1:4999"},
		{"no IPv6, tproxy [::]", noIPv6, []string{"--mode", "tproxy", "--listen", "0.0.0.0:15001", "--listen", "[::]:15001"},
			[]string{"--mode", "tproxy", "--listen", "0.0.0.0:15001", "--listen", "[::]:15001"}, false, "--listen 0.0.0.0:15001"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := ns.New(newID("fxdns"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { n.Close() })
			if err := tt.setup(n); err != nil {
				t.Fatal(err)
			}

			out, code := detourExit(t, n, append([]string{"check"}, tt.check...)...)
			if wantCode := map[bool]int{true: 0, false: 1}[tt.wantRunOK]; code != wantCode {
				t.Errorf("check %v exited %d, want %d:\n%s", tt.check, code, wantCode, out)
			}

			args := append([]string{"--admin", "off", "--intercept-port", "80"}, tt.run...)
			if tt.wantRunOK {
				d := startDetour(t, n, args...)
				if o := d.Output(); !strings.Contains(o, tt.wantOut) || !strings.Contains(o, "listeners=1") {
					t.Errorf("run %v: want %q and one listener in its output:\n%s", args, tt.wantOut, o)
				}
				if err := d.Stop(); err != nil {
					t.Error(err)
				}
				return
			}
			out, code = detourExit(t, n, append([]string{"run"}, args...)...)
			if code != 1 || !strings.Contains(out, tt.wantOut) {
				t.Errorf("run %v exited %d, want 1 with %q in:\n%s", args, code, tt.wantOut, out)
			}
		})
	}
}

// detourExit runs the detour binary in n (at most 30 s) and returns its
// output and exit code.
func detourExit(t *testing.T, n *ns.NS, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := n.Command(ctx, detourBin, args...).CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	}
	t.Fatalf("detour %v: %v\n%s", args, err, out)
	return "", 0
}

// TestCheckReadsTheConfiguration: `detour check -c FILE` (or interception
// flags) checks that configuration's mode, listeners, rules and
// interfaces, and an error in it exits 2 naming the key, as run does.
func TestCheckReadsTheConfiguration(t *testing.T) {
	needRoot(t)
	n, err := ns.New(newID("fxchk"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	dir := t.TempDir()
	file := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	gateway := file("gateway.yaml", "mode: redirect\nintercept:\n  ports: [80]\n  interfaces: [dt-nosuch0]\n")
	typo := file("typo.yaml", "mode: redirect\nintercept:\n  portz: [80]\n")
	noPorts := file("noports.yaml", "mode: tproxy\n")
	// run exits 2 for it: check must not say all is well.
	badLog := file("badlog.yaml", "mode: redirect\naccess_log: "+filepath.Join(dir, "no-such-dir", "access.log")+"\n")
	tests := []struct {
		name      string
		forward   string // net.ipv4.ip_forward in the namespace
		args      []string
		wantCode  int
		want, not []string
	}{
		{"file", "1", []string{"-c", gateway}, 0,
			[]string{"ok    detour redirect rules install and remove (as configured)", "ok    listen 0.0.0.0:4999 (redirect)",
				"warn  interface dt-nosuch0 (this network namespace): not found", "ok    net.ipv4.ip_forward"},
			[]string{"tproxy", "127.0.0.1:4999"}},
		// Interfaces make it a gateway, which must forward.
		{"file, gateway not forwarding", "0", []string{"-c", gateway}, 1,
			[]string{"FAIL  net.ipv4.ip_forward"}, nil},
		{"flags", "0", []string{"--mode", "tproxy", "--intercept-port", "80", "--listen", "127.0.0.1:15001"}, 0,
			[]string{"ok    detour tproxy rules install and remove (as configured)", "ok    listen 127.0.0.1:15001 (tproxy)"},
			[]string{"redirect", "[::]:15001", "forward"}},
		// No ports: run installs no rules, so the generic set is probed.
		{"file without ports", "0", []string{"-c", noPorts}, 0,
			[]string{"ok    detour tproxy rules install and remove\n"}, []string{"as configured", "redirect"}},
		{"typo", "0", []string{"-c", typo}, 2, []string{"intercept.portz is not a key"}, []string{"ok "}},
		{"access log that cannot be opened", "0", []string{"-c", badLog}, 1,
			[]string{"FAIL  access log " + filepath.Join(dir, "no-such-dir", "access.log") + " (can be opened for appending): cannot create it in", "fix: give access_log (--access-log)"}, nil},
		{"no configuration", "0", []string{"--mode", "redirect"}, 0,
			[]string{"ok    detour redirect rules install and remove\n", "ok    listen 127.0.0.1:4999 (redirect)"},
			[]string{"as configured", "tproxy"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := n.Sysctl("net.ipv4.ip_forward", tt.forward); err != nil {
				t.Fatal(err)
			}
			out, code := detourExit(t, n, append([]string{"check"}, tt.args...)...)
			if code != tt.wantCode {
				t.Errorf("exit %d, want %d:\n%s", code, tt.wantCode, out)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("no %q in:\n%s", w, out)
				}
			}
			for _, w := range tt.not {
				if strings.Contains(out, w) {
					t.Errorf("%q in:\n%s", w, out)
				}
			}
		})
	}
}
