package check

import (
	"bytes"
	"context"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/detour-proxy/detour/internal/fdtest"
	"github.com/detour-proxy/detour/internal/intercept"
)

// TestLingerCheckRefused (in a process of its own: it installs a seccomp
// filter) checks that a refused epoll_pwait2, as under a container's
// seccomp profile that predates it, is a warning with its fix, not a
// failure, and that the check passes where the call works.
func TestLingerCheckRefused(t *testing.T) {
	if r := lingerCheck(); !r.OK {
		t.Fatalf("lingerCheck() = %+v on a kernel with epoll_pwait2", r)
	}
	if !fdtest.InOwnProcess(t) {
		return
	}
	fdtest.RefuseSyscall(t, unix.SYS_EPOLL_PWAIT2, unix.EPERM)
	r := lingerCheck()
	if r.OK || !r.Warn || !strings.Contains(r.Detail, "operation not permitted") || !strings.Contains(r.Fix, "seccomp") {
		t.Errorf("lingerCheck() = %+v under the filter, want a warning naming EPERM and the seccomp fix", r)
	}
	var b bytes.Buffer
	if !Print(&b, []Result{r}) || !strings.HasPrefix(b.String(), "warn  epoll_pwait2") {
		t.Errorf("printed %q: want a warning that does not fail the check", b.String())
	}
}

func TestRunAsRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: the kernel probes need root (CI runs this as root)")
	}
	hostRules := hostState(t)
	for _, mode := range []intercept.Mode{"", intercept.ModeTProxy, intercept.ModeRedirect} {
		t.Run("mode="+string(mode), func(t *testing.T) {
			rs := Run(t.Context(), Options{Mode: mode})
			var b bytes.Buffer
			if !Print(&b, rs) {
				t.Errorf("checks failed on a kernel that supports them all:\n%s", b.String())
			}
			t.Logf("\n%s", b.String())
			names := map[string]bool{}
			for _, r := range rs {
				names[r.Name] = true
			}
			want := map[intercept.Mode][]string{
				intercept.ModeTProxy:   {"nftables tproxy expression", "nftables socket expression", "IP_TRANSPARENT socket option", "policy routing IPv4 (ip rule fwmark, local route)", "detour tproxy rules install and remove"},
				intercept.ModeRedirect: {"nftables nat redirect", "nftables meta skuid", "SO_ORIGINAL_DST (IPv4, real redirect)", "IP6T_SO_ORIGINAL_DST (IPv6, real redirect)", "detour redirect rules install and remove"},
			}
			for m, ns := range want {
				for _, n := range ns {
					if (mode == "" || mode == m) != names[n] {
						t.Errorf("mode %q: check %q present = %v", mode, n, names[n])
					}
				}
			}
			for _, n := range []string{"privileges (root or CAP_NET_ADMIN)", "lock directory " + intercept.OwnerDir + " (writable)", "nftables", "nftables meta mark", "nftables interval sets", "SO_MARK socket option", "epoll_pwait2 (the L4 loops' wait for answers)"} {
				if !names[n] {
					t.Errorf("mode %q: check %q missing", mode, n)
				}
			}
		})
	}
	if after := hostState(t); after != hostRules {
		t.Errorf("Run changed the host's rules or routes\n--- before\n%s--- after\n%s", hostRules, after)
	}
}

func TestRunRouter(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: the kernel probes need root (CI runs this as root)")
	}
	rs := Run(t.Context(), Options{Mode: intercept.ModeTProxy, Router: true})
	// The host's forwarding settings are whatever they are; the checks
	// must be there, read-only, with a fix when they fail.
	found := 0
	for _, r := range rs {
		if strings.HasPrefix(r.Name, "net.ipv4.ip_forward") || strings.HasPrefix(r.Name, "net.ipv6.conf.all.forwarding") {
			found++
			if !r.OK && !strings.Contains(r.Fix, "sysctl -w "+r.Name+"=1") {
				t.Errorf("%s fails without a sysctl fix: %+v", r.Name, r)
			}
		}
	}
	if found != 2 {
		t.Errorf("found %d forwarding checks, want 2", found)
	}
	// A NAT gateway (redirect) forwards too; without Router no mode checks it.
	for _, o := range []Options{{Mode: intercept.ModeRedirect, Router: true}, {Mode: intercept.ModeTProxy}} {
		found := 0
		for _, r := range Run(t.Context(), o) {
			if strings.Contains(r.Name, "forward") {
				found++
			}
		}
		if want := map[bool]int{true: 2, false: 0}[o.Router]; found != want {
			t.Errorf("%+v: %d forwarding checks, want %d", o, found, want)
		}
	}
}

func TestRunCancelled(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: the kernel probes need root (CI runs this as root)")
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	for _, r := range Run(ctx, Options{Mode: intercept.ModeRedirect}) {
		if strings.HasPrefix(r.Name, "nftables") && (r.OK || !strings.Contains(r.Detail, "not probed")) {
			t.Errorf("%s ran after cancellation: %+v", r.Name, r)
		}
	}
}

// hostState is the host's nftables ruleset, ip rules and routes (read
// only), to prove Run leaves them alone.
func hostState(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for _, cmd := range [][]string{
		{"nft", "list", "ruleset"}, {"ip", "rule"}, {"ip", "-6", "rule"},
		{"ip", "route", "show", "table", "all"}, {"ip", "-6", "route", "show", "table", "all"},
	} {
		out, err := exec.Command(cmd[0], cmd[1:]...).CombinedOutput()
		if err != nil {
			t.Skipf("skipping: %s: %v", strings.Join(cmd, " "), err)
		}
		b.Write(out)
	}
	return b.String()
}

func TestProbeFailureIsReported(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: the kernel probes need root (CI runs this as root)")
	}
	fd, err := newProbeNS()
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	// REDIRECT is refused in a filter chain: the kernel's "no" must come
	// back as a failed result with its fix.
	bad := probe{name: "bad", fix: "do something", run: func(_ context.Context, fd int) error {
		out := chainSpec{nftables.ChainTypeFilter, nftables.ChainHookOutput, *nftables.ChainPriorityFilter}
		return nftProbe(fd, "probe_bad", &out, tcp(port(1), &expr.Redir{RegisterProtoMin: 1, RegisterProtoMax: 1}))
	}}
	r := result(bad.name, bad.run(t.Context(), fd), bad.fix)
	if r.OK || r.Detail == "" || r.Fix != "do something" {
		t.Errorf("result = %+v, want a failure with detail and fix", r)
	}
	// A sysctl that does not have the wanted value fails with a sysctl fix.
	if r := sysctlIs("net.ipv4.ip_forward", "7", "why"); r.OK || r.Fix != "sysctl -w net.ipv4.ip_forward=7 (and persist it in /etc/sysctl.d/)" {
		t.Errorf("sysctlIs = %+v", r)
	}
}

// TestRunConfiguredRules: with Options.Rules, the rules probe installs
// those rules (so a set the kernel or the rules package refuses fails the
// check where the generic set passes), and the configured interfaces are
// looked up where Run runs.
func TestRunConfiguredRules(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: the kernel probes need root (CI runs this as root)")
	}
	hostRules := hostState(t)
	redirect := intercept.Options{Mode: intercept.ModeRedirect, Ports: intercept.PortList(80, 8080),
		Interfaces: []string{"lo", "dt-nosuch0"}, ExcludeUIDs: []uint32{0},
		ListenV4: netip.MustParseAddrPort("0.0.0.0:4999"), TableName: "detour_cfg_probe"}
	refused := intercept.Options{Mode: intercept.ModeTProxy, Ports: intercept.PortList(0),
		ListenV4: netip.MustParseAddrPort("0.0.0.0:15001")}
	tests := []struct {
		name     string
		rules    intercept.Options
		wantOK   bool
		wantText string // in the rules result's detail
		ifaces   map[string]bool
	}{
		{"redirect with interfaces", redirect, true, "", map[string]bool{"lo": true, "dt-nosuch0": false}},
		{"refused", refused, false, "Ports contains 0", nil},
	}
	var shown []string
	installed = func(o intercept.Options) {
		text, err := intercept.Show(o)
		if err != nil {
			text = err.Error()
		}
		shown = append(shown, text)
	}
	t.Cleanup(func() { installed = nil })
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			shown = nil
			rs := Run(t.Context(), Options{Mode: tt.rules.Mode, Rules: &tt.rules})
			var b bytes.Buffer
			Print(&b, rs)
			byName := map[string]Result{}
			for _, r := range rs {
				byName[r.Name] = r
			}
			name := "detour " + string(tt.rules.Mode) + " rules install and remove"
			r, ok := byName[name+" (as configured)"]
			switch {
			case !ok:
				t.Fatalf("no %q line:\n%s", name+" (as configured)", b.String())
			case byName[name].Name != "":
				t.Errorf("the generic rules were probed too:\n%s", b.String())
			case r.OK != tt.wantOK || !strings.Contains(r.Detail, tt.wantText):
				t.Errorf("rules result %+v, want OK %v with %q", r, tt.wantOK, tt.wantText)
			}
			// What was installed is the configuration's, not the generic set.
			if tt.wantOK {
				text := strings.Join(shown, "")
				for _, w := range []string{"table inet " + tt.rules.TableName, `"dt-nosuch0"`, "8080", "skuid 0"} {
					if !strings.Contains(text, w) {
						t.Errorf("installed rules lack %q:\n%s", w, text)
					}
				}
			}
			for iface, present := range tt.ifaces {
				r := byName["interface "+iface+" (this network namespace)"]
				if r.Name == "" || r.OK != present || r.Warn == present {
					t.Errorf("interface %s: %+v, want OK %v (else a warning)", iface, r, present)
				}
			}
		})
	}
	if after := hostState(t); after != hostRules {
		t.Errorf("Run changed the host's rules or routes\n--- before\n%s--- after\n%s", hostRules, after)
	}
}

// TestOwnerDirCheck: a detour with CAP_NET_ADMIN but not root passes every
// other check, yet run could not take its lock in root's /run/detour:
// check says so, with the fix.
func TestOwnerDirCheck(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root to act as another user")
	}
	old := intercept.OwnerDir
	intercept.OwnerDir = t.TempDir() + "/detour"
	t.Cleanup(func() { intercept.OwnerDir = old })
	if r := ownerDirCheck(); !r.OK {
		t.Fatalf("as root: %+v", r)
	}
	var r Result
	done := make(chan struct{})
	go func() { // a thread of its own, with nobody's file system ids
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread goes with the goroutine
		unix.Setfsgid(65534)
		unix.Setfsuid(65534)
		r = ownerDirCheck()
	}()
	<-done
	if r.OK || !strings.Contains(r.Fix, "install -d -o USER "+intercept.OwnerDir) {
		t.Errorf("as nobody: %+v; want a failure with the fix", r)
	}
}

// TestAccessLogCheck: a configuration's access log that run could not
// open (run exits 2) fails the check, with the fix; one it could open
// passes, and the check creates nothing.
func TestAccessLogCheck(t *testing.T) {
	dir := t.TempDir()
	existing := filepath.Join(dir, "existing.log")
	if err := os.WriteFile(existing, nil, 0o640); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path, fail string // fail: "" passes
	}{
		{existing, ""},
		{filepath.Join(dir, "new.log"), ""},
		{filepath.Join(dir, "no-such-dir", "a.log"), "cannot create it in"},
		{dir, "is a directory"},
	} {
		r := accessLogCheck(tc.path)
		switch {
		case tc.fail == "" && !r.OK:
			t.Errorf("%s: %+v; want ok", tc.path, r)
		case tc.fail != "" && (r.OK || r.Warn || !strings.Contains(r.Detail, tc.fail) || !strings.Contains(r.Fix, "--access-log")):
			t.Errorf("%s: %+v; want a failure saying %q, with the fix", tc.path, r, tc.fail)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "new.log")); err == nil {
		t.Errorf("the check created the access log")
	}
}
