package intercept

import (
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
)

// tempOwnerDir points OwnerDir at a directory of the test's own.
func tempOwnerDir(t *testing.T) {
	old := OwnerDir
	OwnerDir = t.TempDir()
	t.Cleanup(func() { OwnerDir = old })
}

func tproxyOpts(mark uint32, table int, name string) Options {
	return Options{
		Mode: ModeTProxy, Ports: PortList(80), TProxyMark: mark, RouteTable: table, TableName: name,
		ListenV4: netip.MustParseAddrPort("0.0.0.0:15001"), ListenV6: netip.MustParseAddrPort("[::]:15001"),
	}
}

// TestKernelCleanAndShowFindRecordedPolicy: rules applied with another
// mark and route table are shown and removed by Show and Clean given the
// defaults (`rules show`, `rules clean` without flags): the table records
// them. Before, the `fwmark 0x5 lookup 200` rules and table 200's local
// routes survived a clean that reported success.
func TestKernelCleanAndShowFindRecordedPolicy(t *testing.T) {
	tempOwnerDir(t)
	for _, tc := range []struct {
		name string
		opts Options
	}{
		{"mark_and_table", tproxyOpts(0x5, 200, "")},
		{"table_only", tproxyOpts(0, 200, "")},
		{"mark_only", tproxyOpts(0x5, 0, "")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNS(t)
			before := snapshot(t, n)
			o := inNS(tc.opts, n)
			if err := Apply(o); err != nil {
				t.Fatal(err)
			}
			want, _ := Render(o)
			plain := Options{NetNSFd: n.Fd()}
			if shown, err := Show(plain); err != nil || shown != want {
				t.Errorf("Show with the defaults = %v\n%s\nwant what was applied\n%s", err, shown, want)
			}
			owner, err := Own(plain) // as `rules clean` holds it
			if err != nil {
				t.Fatal(err)
			}
			defer owner.Release()
			if err := Clean(plain); err != nil {
				t.Fatal(err)
			}
			if after := snapshot(t, n); after != before {
				t.Errorf("Clean with the defaults left\n%s\nwant\n%s", after, before)
			}
		})
	}
}

// TestKernelApplyReplacesRecordedPolicy: a killed run's rules with one mark
// and route table, then a run with others: Apply removes the killed run's
// policy routing (and keeps what the new one shares), and Clean leaves the
// namespace as it was.
func TestKernelApplyReplacesRecordedPolicy(t *testing.T) {
	tempOwnerDir(t)
	for _, tc := range []struct {
		name          string
		first, second Options
	}{
		{"default_then_custom", tproxyOpts(0, 0, ""), tproxyOpts(0x5, 200, "")},
		{"custom_then_default", tproxyOpts(0x5, 200, ""), tproxyOpts(0, 0, "")},
		{"same_table_other_mark", tproxyOpts(0x1, 100, ""), tproxyOpts(0x5, 100, "")},
		{"same_mark_other_table", tproxyOpts(0x1, 100, ""), tproxyOpts(0x1, 200, "")},
		{"tproxy_then_redirect", tproxyOpts(0x5, 200, ""), Options{Mode: ModeRedirect, Ports: PortList(80), ListenV4: netip.MustParseAddrPort("127.0.0.1:4999")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNS(t)
			before := snapshot(t, n)
			if err := Apply(inNS(tc.first, n)); err != nil {
				t.Fatal(err)
			}
			second := inNS(tc.second, n)
			owner, err := Own(second) // as `detour run` holds it
			if err != nil {
				t.Fatal(err)
			}
			defer owner.Release()
			if err := Apply(second); err != nil {
				t.Fatal(err)
			}
			want, _ := Render(second)
			if shown, err := Show(second); err != nil || shown != want {
				t.Errorf("after Apply over other leftovers, Show = %v\n%s\nwant\n%s", err, shown, want)
			}
			for _, l := range strings.Split(want[len(nftPart(want)):], "\n") {
				if l != "" {
					checkPolicyLine(t, n, l)
				}
			}
			rules := run(t, n, "ip", "rule") + run(t, n, "ip", "-6", "rule")
			if c := strings.Count(rules, "fwmark"); c != strings.Count(want, "rule add fwmark") {
				t.Errorf("%d fwmark rules, want only the second run's:\n%s", c, rules)
			}
			if err := Clean(second); err != nil {
				t.Fatal(err)
			}
			if after := snapshot(t, n); after != before {
				t.Errorf("Clean after the second Apply left\n%s\nwant\n%s", after, before)
			}
		})
	}
}

// TestKernelCleanLeavesHeldPolicy: the policy routing a killed run's table
// records is not removed while a live detour (another table) holds its
// route table and mark: it is that detour's too.
func TestKernelCleanLeavesHeldPolicy(t *testing.T) {
	tempOwnerDir(t)
	n := newNS(t)
	if err := Apply(inNS(tproxyOpts(0x5, 200, ""), n)); err != nil { // the killed run's
		t.Fatal(err)
	}
	live := inNS(tproxyOpts(0x5, 200, "detour_b"), n)
	held, err := Own(live)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Release()
	if err := Apply(live); err != nil {
		t.Fatal(err)
	}
	plain := Options{NetNSFd: n.Fd()}
	owner, err := Own(plain)
	if err != nil {
		t.Fatal(err)
	}
	defer owner.Release()
	if err := Clean(plain); err != nil {
		t.Fatal(err)
	}
	if got := run(t, n, "nft", "list", "tables"); strings.Contains(got, "inet detour\n") || !strings.Contains(got, "inet detour_b") {
		t.Errorf("tables after Clean:\n%s", got)
	}
	if got := run(t, n, "ip", "rule"); !strings.Contains(got, "fwmark 0x5 lookup 200") {
		t.Errorf("Clean removed the live detour's policy rule:\n%s", got)
	}
	if got := run(t, n, "ip", "-6", "route", "show", "table", "200"); !strings.Contains(got, "local default dev lo") {
		t.Errorf("Clean removed the live detour's local route:\n%s", got)
	}
}

// TestKernelEnsure: what vanished under a running detour is named and put
// back: the whole table (`nft flush ruleset`, as a firewall reload does),
// a chain's rules, a policy rule, a local route.
func TestKernelEnsure(t *testing.T) {
	tempOwnerDir(t)
	for _, tc := range []struct {
		name    string
		opts    Options
		break_  [][]string
		missing []string
	}{
		{"flush_ruleset", tproxyOpts(0x5, 200, ""), [][]string{{"nft", "flush", "ruleset"}}, []string{"table inet detour"}},
		{"flush_chain", tproxyOpts(0, 0, ""), [][]string{{"nft", "flush", "chain", "inet", "detour", "prerouting"}},
			[]string{"rules of chain prerouting of table inet detour"}},
		{"ip_rule_and_route", tproxyOpts(0x5, 200, ""), [][]string{{"ip", "rule", "del", "fwmark", "0x5", "lookup", "200"}, {"ip", "-6", "route", "flush", "table", "200"}},
			[]string{"ip rule add fwmark 0x5 lookup 200", "ip -6 route add local ::/0 dev lo table 200"}},
		{"redirect_flush", Options{Mode: ModeRedirect, Ports: PortList(80), ListenV4: netip.MustParseAddrPort("127.0.0.1:4999")},
			[][]string{{"nft", "flush", "ruleset"}}, []string{"table inet detour"}},
		// The table is detour's own: a chain someone adds to it (here one
		// that drops every forwarded packet) goes with the reinstall, as a
		// rule added to detour's chain does.
		{"added_chain", tproxyOpts(0, 0, ""), [][]string{{"nft", "add chain inet detour extra { type filter hook forward priority 0; policy drop; }"}},
			[]string{"chain extra of table inet detour (not detour's)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNS(t)
			o := inNS(tc.opts, n)
			if err := Apply(o); err != nil {
				t.Fatal(err)
			}
			installed := snapshot(t, n)
			if missing, err := Ensure(o); err != nil || missing != nil {
				t.Fatalf("Ensure with everything in place = %q, %v; want nothing missing", missing, err)
			}
			for _, cmd := range tc.break_ {
				run(t, n, cmd...)
			}
			if missing, err := Missing(o); err != nil || !slices.Equal(missing, tc.missing) {
				t.Errorf("Missing = %q, %v; want %q", missing, err, tc.missing)
			}
			if missing, err := Ensure(o); err != nil || !slices.Equal(missing, tc.missing) {
				t.Errorf("Ensure = %q, %v; want %q", missing, err, tc.missing)
			}
			if now := snapshot(t, n); now != installed {
				t.Errorf("after Ensure\n%s\nwant as installed\n%s", now, installed)
			}
			if missing, err := Missing(o); err != nil || missing != nil {
				t.Errorf("Missing after Ensure = %q, %v", missing, err)
			}
		})
	}
}

// TestKernelEnsureKeepsWhatWorks: when IPv6 is disabled on lo under an
// install, Ensure cannot put the IPv6 local route back; it reports the
// failure and leaves the table and the IPv4 policy routing in place, so
// IPv4 is still diverted (a failed reinstall used to remove everything).
func TestKernelEnsureKeepsWhatWorks(t *testing.T) {
	tempOwnerDir(t)
	n := newNS(t)
	o := inNS(tproxyOpts(0, 0, ""), n)
	if err := Apply(o); err != nil {
		t.Fatal(err)
	}
	run(t, n, "sysctl", "-qw", "net.ipv6.conf.lo.disable_ipv6=1")
	missing, err := Ensure(o)
	if err == nil || !slices.Contains(missing, "ip -6 route add local ::/0 dev lo table 100") {
		t.Fatalf("Ensure with IPv6 disabled = %q, %v; want the IPv6 route missing and an error", missing, err)
	}
	after := snapshot(t, n)
	for _, want := range []string{"table inet detour", "fwmark 0x1 lookup 100", "local default dev lo"} {
		if !strings.Contains(after, want) {
			t.Errorf("after the failed reinstall, %q is gone:\n%s", want, after)
		}
	}
}

// TestOpenPolicyOneSocket: the policy routing's netlink handle opens one
// socket (the routing family), not one per family: the library leaks the
// earlier ones when a later one fails, which with descriptors exhausted
// leaked a socket at every periodic rules check.
func TestOpenPolicyOneSocket(t *testing.T) {
	n := newNS(t)
	sockets := func() int {
		ents, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		k := 0
		for _, e := range ents {
			if dst, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.HasPrefix(dst, "socket:") {
				k++
			}
		}
		return k
	}
	before := sockets()
	p, err := openPolicy(inNS(tproxyOpts(0, 0, ""), n).withDefaults())
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	if got := sockets() - before; got != 1 {
		t.Errorf("openPolicy holds %d sockets, want 1", got)
	}
}

// TestKernelFailedApplyRemovesRecordedPolicy: a killed run's rules with one
// mark and route table, then an Apply with others that fails in its policy
// routing (a foreign default route in its table): the rollback removes the
// killed run's policy routing too. It used to leave it behind, with the
// table that recorded it gone, so no later clean could find it.
func TestKernelFailedApplyRemovesRecordedPolicy(t *testing.T) {
	tempOwnerDir(t)
	n := newNS(t)
	run(t, n, "ip", "route", "add", "unreachable", "default", "table", "100")
	before := snapshot(t, n)
	if err := Apply(inNS(tproxyOpts(0x5, 200, ""), n)); err != nil { // the killed run's
		t.Fatal(err)
	}
	second := inNS(tproxyOpts(0, 0, ""), n)
	owner, err := Own(second)
	if err != nil {
		t.Fatal(err)
	}
	defer owner.Release()
	if err := Apply(second); err == nil {
		t.Fatal("Apply succeeded although table 100 has a default route of someone else")
	}
	if after := snapshot(t, n); after != before {
		t.Errorf("failed Apply over a killed run's rules left\n%s\nwant\n%s", after, before)
	}
}

// TestKernelRedirectLeavesOthersPolicy: a redirect install has no policy
// routing of its own, so its Apply and Clean leave alone the `fwmark 0x1
// lookup 100` rules and routes of a tproxy table of another name (`rules
// apply --table-name tp`, which no process holds). They used to remove
// them, as if the default mark and route table were the redirect
// install's, and the tproxy table went on marking packets that no route
// delivered any more.
func TestKernelRedirectLeavesOthersPolicy(t *testing.T) {
	tempOwnerDir(t)
	n := newNS(t)
	if err := Apply(inNS(tproxyOpts(0, 0, "tp"), n)); err != nil {
		t.Fatal(err)
	}
	policy := func() string {
		return run(t, n, "ip", "rule") + run(t, n, "ip", "-6", "rule") +
			run(t, n, "ip", "route", "show", "table", "100") + run(t, n, "ip", "-6", "route", "show", "table", "100")
	}
	want := policy()
	r := inNS(Options{Mode: ModeRedirect, Ports: PortList(80), ListenV4: netip.MustParseAddrPort("127.0.0.1:4999")}, n)
	owner, err := Own(r)
	if err != nil {
		t.Fatal(err)
	}
	defer owner.Release()
	if err := Apply(r); err != nil {
		t.Fatal(err)
	}
	if got := policy(); got != want {
		t.Errorf("redirect Apply changed the tproxy table's policy routing to\n%s\nwant\n%s", got, want)
	}
	if shown, err := Show(r); err != nil || strings.Contains(shown, "fwmark") {
		t.Errorf("redirect Show = %v\n%s\nwant no policy routing: it is not the redirect install's", err, shown)
	}
	if err := Clean(r); err != nil {
		t.Fatal(err)
	}
	if got := policy(); got != want {
		t.Errorf("redirect Clean changed the tproxy table's policy routing to\n%s\nwant\n%s", got, want)
	}
}
