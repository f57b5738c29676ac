package e2e

import (
	"context"
	"fmt"
	"io"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/detour-proxy/detour/internal/lab"
)

// TestRulesCleanFindsCustomPolicy: `rules show` and `rules clean` without
// flags find the policy routing of `rules apply --route-table 200
// --tproxy-mark 0x5`, and clean leaves the namespace as it was (before,
// `fwmark 0x5 lookup 200` and table 200's local routes stayed).
func TestRulesCleanFindsCustomPolicy(t *testing.T) {
	needRoot(t)
	n := tproxyNet(t, "fxcrc")
	before := snapshot(t, n.Router)
	if out, err := detourCmd(t, n.Router, "rules", "apply", "--intercept-port", "80", "--route-table", "200", "--tproxy-mark", "0x5"); err != nil {
		t.Fatalf("rules apply: %v\n%s", err, out)
	}
	show, err := detourCmd(t, n.Router, "rules", "show")
	for _, want := range []string{"ip rule add fwmark 0x5 lookup 200", "ip -6 route add local ::/0 dev lo table 200"} {
		if err != nil || !strings.Contains(show, want) {
			t.Errorf("rules show without flags lacks %q (%v):\n%s", want, err, show)
		}
	}
	if out, err := detourCmd(t, n.Router, "rules", "clean"); err != nil {
		t.Fatalf("rules clean: %v\n%s", err, out)
	}
	if after := snapshot(t, n.Router); after != before {
		t.Fatalf("rules clean without flags left:\n%s\nwant:\n%s", after, before)
	}
}

// TestRulesCleanNamesWhatItLeaves: `rules clean` over policy routing
// detour did not mark as its own (made by hand, or left by a killed
// detour older than the proto 222 marking, which looks the same) leaves
// it, and says so, naming each rule and route; it used to say only
// "removed detour's rules (if any)", as if nothing were left.
func TestRulesCleanNamesWhatItLeaves(t *testing.T) {
	needRoot(t)
	n := tproxyNet(t, "fxckl")
	for _, args := range [][]string{
		{"rule", "add", "fwmark", "0x1", "lookup", "100"},
		{"route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100"},
	} {
		if out, err := n.Router.Command(context.Background(), "ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}
	before := snapshot(t, n.Router)
	out, err := detourCmd(t, n.Router, "rules", "clean")
	if err != nil {
		t.Fatalf("rules clean: %v\n%s", err, out)
	}
	for _, want := range []string{"left policy routing detour did not add", "ip rule add fwmark 0x1 lookup 100", "ip route add local 0.0.0.0/0 dev lo table 100"} {
		if !strings.Contains(out, want) {
			t.Errorf("rules clean does not say %q:\n%s", want, out)
		}
	}
	if after := snapshot(t, n.Router); after != before {
		t.Errorf("rules clean removed what detour did not add:\n%s\nwant:\n%s", after, before)
	}
}

// TestKilledRunOtherPolicyReplaced: a run with another mark and route
// table, over a SIGKILLed default run's rules, removes the killed run's
// `fwmark 0x1 lookup 100` and its routes; its own clean exit leaves
// nothing.
func TestKilledRunOtherPolicyReplaced(t *testing.T) {
	needRoot(t)
	n := tproxyNet(t, "fxckp")
	before := snapshot(t, n.Router)
	d, err := lab.StartDetour(context.Background(), n.Router, detourBin, []string{"--mode", "tproxy", "--intercept-port", "80", "--admin", "off"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	d.Kill()
	d2 := startDetour(t, n.Router, "--mode", "tproxy", "--intercept-port", "80", "--admin", "off", "--route-table", "200", "--tproxy-mark", "0x5")
	waitLog(t, d2.Output, "replacing rules already installed", 1)
	s := snapshot(t, n.Router)
	if strings.Contains(s, "lookup 100") || strings.Contains(s, "table 100") || strings.Count(s, "from all fwmark 0x5 lookup 200") != 2 {
		t.Fatalf("want only the second run's policy routing (fwmark 0x5 lookup 200, v4 and v6):\n%s", s)
	}
	if err := d2.Stop(); err != nil {
		t.Fatal(err)
	}
	if after := snapshot(t, n.Router); after != before {
		t.Fatalf("left after the second run's clean exit:\n%s\nwant:\n%s", after, before)
	}
}

// TestRulesReinstalledAfterFlush: `nft flush ruleset` (a firewall reload)
// under a running detour. A SIGHUP notices and reinstalls; so does the
// periodic check. While they cannot be put back, the rules are reported
// missing (rules_installed 0, status "not installed") and the failure is
// logged once; each reinstall counts in detour_rules_reinstalled_total.
func TestRulesReinstalledAfterFlush(t *testing.T) {
	needRoot(t)
	n := tproxyNet(t, "fxcfl")
	startServers(t, n.Server)
	file, write := configFile(t)
	conf := "mode: tproxy\nprotocol: tcp\nadmin: " + obsAdmin + "\nintercept: {ports: [7004], check_interval: %s}\n"
	write(strings.Replace(conf, "%s", "1h", 1))
	d := startDetour(t, n.Router, "-c", file)
	c := obsClient(n.Router)
	whoami := func() string {
		conn := dial(t, n.Client, n.ServerIP4, portWhoAmI)
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		b, _ := io.ReadAll(conn)
		conn.Close()
		return string(b)
	}
	router := "198.18.2.1"
	if got := whoami(); got != router {
		t.Fatalf("server saw %q, want the router (intercepted)", got)
	}
	flush := func() {
		if out, err := n.Router.Command(context.Background(), "nft", "flush", "ruleset").CombinedOutput(); err != nil {
			t.Fatalf("nft flush ruleset: %v\n%s", err, out)
		}
	}

	// SIGHUP: the configuration is unchanged, the rules are not.
	flush()
	if got := whoami(); got != n.ClientIP4.String() {
		t.Fatalf("after the flush the server saw %q, want the client (bypassed)", got)
	}
	syscall.Kill(d.Pid(), syscall.SIGHUP)
	waitLog(t, d.Output, "rules reinstalled", 1)
	if out := d.Output(); !strings.Contains(out, `missing="table inet detour"`) || !strings.Contains(out, "checked_on=SIGHUP") {
		t.Errorf("the warning does not name what vanished and when it was seen:\n%s", out)
	}
	if got := whoami(); got != router {
		t.Fatalf("after SIGHUP the server saw %q, want the router", got)
	}
	obsWaitMetrics(t, c, map[string]float64{"detour_rules_installed": 1, "detour_rules_reinstalled_total": 1})

	// The periodic check, which a reload shortens. While the rules cannot
	// be put back (a foreign default route in table 100 makes the install
	// fail), they are reported missing. They are broken before the reload,
	// whose own check (a SIGHUP checks too) would otherwise race the flush.
	flush()
	for _, args := range [][]string{{"route", "flush", "table", "100"}, {"route", "add", "unreachable", "default", "table", "100"}} {
		if out, err := n.Router.Command(context.Background(), "ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}
	write(strings.Replace(conf, "%s", "200ms", 1))
	syscall.Kill(d.Pid(), syscall.SIGHUP)
	waitLog(t, d.Output, "configuration reloaded", 2)
	obsWaitMetrics(t, c, map[string]float64{"detour_rules_installed": 0, "detour_rules_reinstalled_total": 1})
	waitLog(t, d.Output, "rules check failed", 1)
	if out, err := detourCmd(t, n.Router, "status"); err != nil || !strings.Contains(out, "rules:       not installed") {
		t.Errorf("detour status while the rules are missing: %v\n%s", err, out)
	}
	// Failing every 200 ms the same way, it says so once a minute.
	time.Sleep(time.Second)
	if got := strings.Count(d.Output(), "rules check failed"); got != 1 {
		t.Errorf("%d 'rules check failed' lines in a second of checks every 200 ms, want 1", got)
	}
	// No signal from here on: what puts the rules back is the periodic
	// check.
	if out, err := n.Router.Command(context.Background(), "ip", "route", "del", "unreachable", "default", "table", "100").CombinedOutput(); err != nil {
		t.Fatalf("ip route del: %v\n%s", err, out)
	}
	obsWaitMetrics(t, c, map[string]float64{"detour_rules_installed": 1, "detour_rules_reinstalled_total": 2})
	if got := whoami(); got != router {
		t.Fatalf("after the periodic check the server saw %q, want the router", got)
	}
	if out, err := detourCmd(t, n.Router, "status"); err != nil || !strings.Contains(out, "rules:       installed, table inet detour, ports 7004 (reinstalled 2 times") {
		t.Errorf("detour status after the reinstalls: %v\n%s", err, out)
	}
}

// TestDrainShowsRulesDrained: after SIGTERM, while a connection drains,
// `detour status` says the rules are drained and detour_rules_installed is
// 0; they no longer divert new connections. The drain itself does not get
// them reinstalled by the periodic check.
func TestDrainShowsRulesDrained(t *testing.T) {
	needRoot(t)
	n := tproxyNet(t, "fxcdr")
	startServers(t, n.Server)
	file, write := configFile(t)
	write("mode: tproxy\nprotocol: tcp\nadmin: " + obsAdmin + "\ndrain_timeout: 20s\nintercept: {ports: [7002], check_interval: 100ms}\n")
	d := startDetour(t, n.Router, "-c", file)
	c := obsClient(n.Router)
	obsWaitMetrics(t, c, map[string]float64{"detour_rules_installed": 1})
	conn := obsBanner(t, n) // keeps the drain going
	syscall.Kill(d.Pid(), syscall.SIGTERM)
	waitLog(t, d.Output, "shutting down: draining connections", 1)
	obsWaitMetrics(t, c, map[string]float64{"detour_rules_installed": 0, "detour_ready": 0})
	out, err := detourCmd(t, n.Router, "status")
	if err != nil || !strings.Contains(out, "rules:       drained, table inet detour") {
		t.Errorf("detour status while draining: %v\n%s", err, out)
	}
	time.Sleep(300 * time.Millisecond) // three check intervals
	if strings.Contains(d.Output(), "reinstall") {
		t.Errorf("rules reinstalled during the drain:\n%s", d.Output())
	}
	obsFinishBanner(t, conn)
	select {
	case <-d.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("detour still running 10s after its last connection ended")
	}
}

// TestRulesCleanBesideALiveRun: `rules clean` removes a killed run's
// table (here `rules apply`'s) while a live detour of another table holds
// the mark and route table both use, and leaves the live one's rules and
// that shared policy routing as they are, saying so. It used to take the
// mark and route table's locks up front and refuse the whole clean
// ("route table 100 ... owned by another detour"), leaving only
// `--mode redirect` as a way out.
func TestRulesCleanBesideALiveRun(t *testing.T) {
	needRoot(t)
	n := tproxyNet(t, "fxcbl")
	before := snapshot(t, n.Router)
	if out, err := detourCmd(t, n.Router, "rules", "apply", "--intercept-port", "81"); err != nil {
		t.Fatalf("rules apply: %v\n%s", err, out)
	}
	live := startDetour(t, n.Router, "--mode", "tproxy", "--intercept-port", "80", "--admin", "off", "--protocol", "tcp",
		"--table-name", "live", "--listen", "0.0.0.0:15011", "--listen", "[::]:15011")
	waitLog(t, live.Output, "rules installed", 1)
	out, err := detourCmd(t, n.Router, "rules", "clean")
	if err != nil || !strings.Contains(out, "left the policy routing fwmark 0x1 lookup 100") {
		t.Fatalf("rules clean beside a live run of another table: %v\n%s", err, out)
	}
	if s := snapshot(t, n.Router); strings.Contains(s, "table inet detour") {
		t.Errorf("the killed run's table is still there:\n%s", s)
	}
	// Render prints what the live run installed; show must read it all back.
	want, _ := detourCmd(t, n.Router, "rules", "apply", "--dry-run", "--intercept-port", "80", "--table-name", "live", "--listen", "0.0.0.0:15011", "--listen", "[::]:15011")
	if shown, err := detourCmd(t, n.Router, "rules", "show", "--table-name", "live"); err != nil || shown != want || !strings.Contains(shown, "ip -6 route add local ::/0 dev lo table 100") {
		t.Errorf("the live run's rules changed (%v):\n%s\nwant:\n%s", err, shown, want)
	}
	if err := live.Stop(); err != nil {
		t.Fatal(err)
	}
	if after := snapshot(t, n.Router); after != before {
		t.Fatalf("left after the live run's exit:\n%s\nwant:\n%s", after, before)
	}
}

// TestInterfaceThatAppearsLater: `--intercept-iface` naming an interface
// that does not exist yet is logged as such at start (it used to pass in
// silence, intercepting nothing), and the rules match it by name
// (iifname, not the index iif would hold), so once an interface of that
// name appears, here the router's client side renamed to it, its
// connections are intercepted, with no reinstall; renamed away, they are
// not.
func TestInterfaceThatAppearsLater(t *testing.T) {
	needRoot(t)
	n := tproxyNet(t, "fxcif")
	startServers(t, n.Server)
	d := startDetour(t, n.Router, "--mode", "tproxy", "--protocol", "tcp", "--admin", "off",
		"--intercept-port", fmt.Sprint(portWhoAmI), "--intercept-iface", "dt-late")
	waitLog(t, d.Output, "ready", 1)
	if out := d.Output(); !strings.Contains(out, `msg="interface not found in this network namespace`) || !strings.Contains(out, "interface=dt-late") {
		t.Errorf("no warning that dt-late does not exist:\n%s", out)
	}
	whoami := func() string {
		conn := dial(t, n.Client, n.ServerIP4, portWhoAmI)
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		b, _ := io.ReadAll(conn)
		conn.Close()
		return string(b)
	}
	rename := func(from, to string) {
		t.Helper()
		for _, args := range [][]string{{"link", "set", from, "down"}, {"link", "set", from, "name", to}, {"link", "set", to, "up"}} {
			if out, err := n.Router.Command(context.Background(), "ip", args...).CombinedOutput(); err != nil {
				t.Fatalf("ip %v: %v\n%s", args, err, out)
			}
		}
	}
	if got := whoami(); got != n.ClientIP4.String() {
		t.Fatalf("before dt-late exists the server saw %q, want the client (not intercepted)", got)
	}
	rename(n.RouterIfaceIn, "dt-late")
	if got := whoami(); got != "198.18.2.1" {
		t.Errorf("through dt-late the server saw %q, want the router (intercepted)", got)
	}
	rename("dt-late", n.RouterIfaceIn)
	if got := whoami(); got != n.ClientIP4.String() {
		t.Errorf("after dt-late went the server saw %q, want the client", got)
	}
}
