package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/detour-proxy/detour/internal/lab"
)

// TestRulesApplyCleanRestoresState: `rules clean` leaves the ruleset, the
// policy rules and every routing table exactly as they were.
func TestRulesApplyCleanRestoresState(t *testing.T) {
	needRoot(t)
	for _, mode := range []string{"tproxy", "redirect"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			n := tproxyNet(t, "rc")
			before := snapshot(t, n.Router)
			args := []string{"--mode", mode, "--intercept-port", "80,443"}
			if mode == "redirect" {
				args = append(args, "--intercept-iface", "veth0", "--exclude-uid", "1000")
			}
			for i := 0; i < 2; i++ { // apply is idempotent
				if out, err := detourCmd(t, n.Router, append([]string{"rules", "apply"}, args...)...); err != nil {
					t.Fatalf("rules apply: %v\n%s", err, out)
				}
			}
			during := snapshot(t, n.Router)
			if during == before || !strings.Contains(during, "table inet detour") {
				t.Fatalf("apply changed nothing visible:\n%s", during)
			}
			show, err := detourCmd(t, n.Router, append([]string{"rules", "show"}, args...)...)
			if err != nil || !strings.Contains(show, "dport") {
				t.Fatalf("rules show: %v\n%s", err, show)
			}
			for i := 0; i < 2; i++ { // clean succeeds when nothing is left
				if out, err := detourCmd(t, n.Router, append([]string{"rules", "clean"}, args...)...); err != nil {
					t.Fatalf("rules clean: %v\n%s", err, out)
				}
			}
			if after := snapshot(t, n.Router); after != before {
				t.Fatalf("state after clean differs from before apply:\n--- before\n%s\n--- after\n%s", before, after)
			}
		})
	}
}

// TestKilledRunLeftoversRemovedByNextRun: SIGKILL leaves the rules; the
// next run replaces them and removes them on a clean exit.
func TestKilledRunLeftoversRemovedByNextRun(t *testing.T) {
	needRoot(t)
	n := tproxyNet(t, "kill")
	before := snapshot(t, n.Router)
	args := []string{"--mode", "tproxy", "--intercept-port", "80", "--admin", "off"}
	d, err := lab.StartDetour(context.Background(), n.Router, detourBin, args, nil)
	if err != nil {
		t.Fatal(err)
	}
	d.Kill()
	if s := snapshot(t, n.Router); !strings.Contains(s, "table inet detour") {
		t.Fatal("expected leftovers after SIGKILL")
	}
	// startDetour: a failure below must not leave the second run going.
	d2 := startDetour(t, n.Router, args...)
	if s := snapshot(t, n.Router); strings.Count(s, "table inet detour") != 1 || strings.Count(s, "from all fwmark 0x1 lookup 100") != 2 {
		t.Fatalf("second run should hold exactly one copy of the rules:\n%s", s)
	}
	if err := d2.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for snapshot(t, n.Router) != before && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if after := snapshot(t, n.Router); after != before {
		t.Fatalf("rules left after a clean exit:\n%s", after)
	}
}

// TestConfigErrorsExit2BeforeInstalling: bad input names the key, exits 2,
// and installs nothing.
func TestConfigErrorsExit2BeforeInstalling(t *testing.T) {
	needRoot(t)
	n := tproxyNet(t, "cfg")
	before := snapshot(t, n.Router)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"run", "--intercept-port", "80", "--intercept-dst", "198.18.0.0/33"}, "intercept.destinations"},
		{[]string{"run", "--intercept-port", "99999"}, "--intercept-port"},
		{[]string{"run", "--mode", "redirect", "--spoof-source", "--intercept-port", "80"}, "spoof_source"},
		{[]string{"run", "--intercept-port", "80", "--upstream-mark", "0x1"}, "upstream.mark"},
		{[]string{"run", "--listen", "nowhere", "--intercept-port", "80"}, "listen"},
		{[]string{"run", "--bogus"}, "bogus"},
		// Caught before a listener opens, not by the packages below after.
		{[]string{"run", "--intercept-port", "80", "--cleanup-interval", "-1s"}, "http.cleanup_interval"},
		{[]string{"run", "--intercept-port", "80", "--drain-timeout", "-5s"}, "drain_timeout"},
		{[]string{"run", "--intercept-port", "80", "--route-table", "4294967297"}, "intercept.route_table"},
		{[]string{"run", "--mode", "redirect", "--intercept-port", "80", "--intercept-iface", "lo", "--listen", "127.0.0.1:4999"}, "is on loopback"},
		{[]string{"run", "--intercept-port", "80", "--intercept-dst", "2001:db8::/32", "--listen", "0.0.0.0:15001"}, "is IPv6"},
	} {
		out, err := detourCmd(t, n.Router, tc.args...)
		code := -1
		if ee, ok := err.(interface{ ExitCode() int }); ok {
			code = ee.ExitCode()
		}
		if code != 2 || !strings.Contains(out, tc.want) {
			t.Errorf("%v: exit %d, output %q; want exit 2 mentioning %q", tc.args, code, out, tc.want)
		}
	}
	if after := snapshot(t, n.Router); after != before {
		t.Fatalf("a rejected config changed the namespace:\n%s", after)
	}
}

// TestSecondRunLeavesTheFirstOnesRules: a second detour in the same
// namespace with the same table refuses to start instead of replacing the
// first one's rules (and removing them when it exits), and `rules apply`
// and `rules clean` refuse too; another table (--table-name) is free; once
// the first is gone, they work.
func TestSecondRunLeavesTheFirstOnesRules(t *testing.T) {
	needRoot(t)
	n := tproxyNet(t, "own")
	before := snapshot(t, n.Router)
	first := startDetour(t, n.Router, "--mode", "tproxy", "--intercept-port", interceptPorts, "--protocol", "tcp", "--admin", "off")
	installed := snapshot(t, n.Router)
	owned := fmt.Sprintf("owned by another detour (pid %d)", first.Pid())
	for _, args := range [][]string{
		{"run", "--mode", "tproxy", "--intercept-port", "80", "--listen", "0.0.0.0:15011", "--admin", "off"},
		{"rules", "apply", "--mode", "tproxy", "--intercept-port", "80"},
		{"rules", "clean"},
	} {
		out, err := detourCmd(t, n.Router, args...)
		code := -1
		if ee, ok := err.(interface{ ExitCode() int }); ok {
			code = ee.ExitCode()
		}
		if code != 1 || !strings.Contains(out, owned) {
			t.Errorf("%v: exit %d, output %q; want exit 1 saying %q", args, code, out, owned)
		}
	}
	// Another table is another owner's.
	other := []string{"--mode", "tproxy", "--table-name", "detour_b", "--route-table", "101", "--tproxy-mark", "0x3", "--upstream-mark", "0x4"}
	if out, err := detourCmd(t, n.Router, append([]string{"rules", "apply", "--intercept-port", "81", "--listen", "0.0.0.0:15011"}, other...)...); err != nil {
		t.Errorf("rules apply of another table: %v\n%s", err, out)
	}
	if out, err := detourCmd(t, n.Router, append([]string{"rules", "clean"}, other...)...); err != nil {
		t.Errorf("rules clean of another table: %v\n%s", err, out)
	}
	if now := snapshot(t, n.Router); now != installed {
		t.Fatalf("the first run's rules changed:\n%s\nwant:\n%s", now, installed)
	}
	if err := first.Stop(); err != nil {
		t.Fatalf("first run's exit: %v", err)
	}
	if after := snapshot(t, n.Router); after != before {
		t.Fatalf("rules left after the first run exited:\n%s", after)
	}
	for _, args := range [][]string{{"rules", "apply", "--mode", "tproxy", "--intercept-port", "80"}, {"rules", "clean"}} {
		if out, err := detourCmd(t, n.Router, args...); err != nil {
			t.Errorf("%v after the first run exited: %v\n%s", args, err, out)
		}
	}
}

// TestRulesApplySaysHowToClean: the command `rules apply` prints for
// removing its rules removes them, also in another table or mode. It
// used to print a bare `detour rules clean`, which, for `--table-name
// custom`, reported success and left every rule in place.
func TestRulesApplySaysHowToClean(t *testing.T) {
	needRoot(t)
	for _, args := range [][]string{
		{"--mode", "tproxy", "--intercept-port", "80", "--table-name", "custom", "--route-table", "200", "--tproxy-mark", "0x5"},
		{"--mode", "redirect", "--intercept-port", "80", "--table-name", "custom_r"},
	} {
		t.Run(args[1], func(t *testing.T) {
			n := redirectNet(t, "ac")
			before := snapshot(t, n.Host)
			out, err := detourCmd(t, n.Host, append([]string{"rules", "apply"}, args...)...)
			if err != nil {
				t.Fatalf("rules apply: %v\n%s", err, out)
			}
			_, advice, ok := strings.Cut(out, "remove them with `detour ")
			advice, _, _ = strings.Cut(advice, "`")
			if !ok || !strings.HasPrefix(advice, "rules clean") {
				t.Fatalf("rules apply printed no `detour rules clean ...` to follow:\n%s", out)
			}
			if out, err := detourCmd(t, n.Host, strings.Fields(advice)...); err != nil {
				t.Fatalf("detour %s: %v\n%s", advice, err, out)
			}
			if after := snapshot(t, n.Host); after != before {
				t.Errorf("after `detour %s`, as rules apply advised:\n%s\nwant as before apply:\n%s", advice, after, before)
			}
		})
	}
}
