package intercept

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/detour-proxy/detour/internal/ns"
)

// Kernel tests: every one works in a fresh network namespace of its own and
// compares with what the nft and ip binaries list there.

func newNS(t *testing.T) *ns.NS {
	t.Helper()
	needKernel(t)
	name := fmt.Sprintf("dt-icpt-%s-%d", regexp.MustCompile(`[^a-zA-Z0-9]+`).ReplaceAllString(t.Name(), "-"), os.Getpid())
	if len(name) > 200 {
		name = name[:200]
	}
	n, err := ns.New(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("remove namespace: %v", err)
		}
	})
	return n
}

// needKernel skips the test unless it can create namespaces and list them.
func needKernel(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: kernel test needs root to create a network namespace (CI runs it as root)")
	}
	for _, bin := range []string{"nft", "ip"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("skipping: %s not installed (apt-get install nftables iproute2)", bin)
		}
	}
}

// run runs a command inside the namespace and returns its output.
func run(t *testing.T, n *ns.NS, args ...string) string {
	t.Helper()
	out, err := n.Command(t.Context(), args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// snapshot is everything Apply and Clean may touch, as the tools list it.
func snapshot(t *testing.T, n *ns.NS) string {
	t.Helper()
	var b strings.Builder
	for _, cmd := range [][]string{
		{"nft", "list", "ruleset"},
		{"ip", "rule"}, {"ip", "-6", "rule"},
		{"ip", "route", "show", "table", "all"}, {"ip", "-6", "route", "show", "table", "all"},
	} {
		fmt.Fprintf(&b, "## %s\n%s", strings.Join(cmd, " "), run(t, n, cmd...))
	}
	return b.String()
}

// normalize collapses whitespace and drops blank lines. Newer nft releases
// print the nat output priority -100 by its name, so that is unified too.
func normalize(s string) string {
	var lines []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.Join(strings.Fields(l), " "); l != "" {
			lines = append(lines, l)
		}
	}
	return strings.ReplaceAll(strings.Join(lines, "\n"), "hook output priority dstnat;", "hook output priority -100;")
}

// nftPart is the table text at the start of Render's or Show's output.
func nftPart(s string) string {
	if i := strings.Index(s, "\n}\n"); i >= 0 {
		return s[:i+3]
	}
	return ""
}

func inNS(o Options, n *ns.NS) Options {
	o.NetNSFd = n.Fd()
	return o
}

// edgeCases are installed by the kernel tests besides the golden cases:
// interval sets touching either end of the address space, a range that is
// no CIDR, IPv6 only, non-default mark, table and name.
func edgeCases() []struct {
	name string
	opts Options
} {
	ap := netip.MustParseAddrPort
	pfx := netip.MustParsePrefix
	return []struct {
		name string
		opts Options
	}{
		{"interval_edges", Options{
			Mode: ModeRedirect, Ports: PortList(80, 8080),
			Destinations: []netip.Prefix{pfx("0.0.0.0/8"), pfx("128.0.0.0/1"), pfx("10.0.0.0/24"), pfx("10.0.1.0/25"), pfx("::/8"), pfx("8000::/1"), pfx("fd00::1/128")},
			ListenV4:     ap("0.0.0.0:15001"), ListenV6: ap("[::]:15002"),
		}},
		{"port_range_edges", Options{
			Mode: ModeRedirect, Ports: []PortRange{{1, 10}, {65000, 65535}, {80, 80}},
			ExcludeDestinations: []netip.Prefix{pfx("0.0.0.0/0"), pfx("::/0")},
			ListenV4:            ap("127.0.0.1:15001"), ListenV6: ap("[::1]:15001"),
		}},
		{"port_range_all", Options{
			Mode: ModeTProxy, Ports: []PortRange{{1, 65535}},
			ExcludeDestinations: []netip.Prefix{pfx("128.0.0.0/1"), pfx("10.0.0.0/24"), pfx("10.0.1.0/25")},
			ListenV4:            ap("0.0.0.0:15001"),
		}},
		{"v6_only_custom", Options{
			Mode: ModeTProxy, Ports: PortList(8443),
			Interfaces: []string{"eth0", "br-lan", "a"},
			ListenV6:   ap("[fd00::1]:15001"), TProxyMark: 0x40, RouteTable: 4242, TableName: "dt_custom",
		}},
	}
}

func TestKernelApplyMatchesNft(t *testing.T) {
	for _, tc := range append(goldenCases(), edgeCases()...) {
		t.Run(tc.name, func(t *testing.T) {
			n := newNS(t)
			o := inNS(tc.opts, n)
			if err := Apply(o); err != nil {
				t.Fatal(err)
			}
			want, err := Render(o)
			if err != nil {
				t.Fatal(err)
			}
			listed := run(t, n, "nft", "list", "table", "inet", o.withDefaults().TableName)
			if normalize(listed) != normalize(nftPart(want)) {
				t.Errorf("nft lists\n%s\nRender says\n%s", listed, nftPart(want))
			}
			shown, err := Show(o)
			if err != nil {
				t.Fatal(err)
			}
			if shown != want {
				t.Errorf("Show reads back\n%s\nRender says\n%s", shown, want)
			}
			// The policy lines are ip commands; the kernel must hold them.
			for _, l := range strings.Split(strings.TrimSpace(want[len(nftPart(want)):]), "\n") {
				if l == "" {
					continue
				}
				checkPolicyLine(t, n, l)
			}
			if ok, err := Installed(o); !ok || err != nil {
				t.Errorf("Installed = %v, %v; want true", ok, err)
			}
		})
	}
}

// checkPolicyLine verifies that `ip [-6] rule|route add ARGS` is in place by
// listing it with the matching `ip ... show`.
func checkPolicyLine(t *testing.T, n *ns.NS, line string) {
	t.Helper()
	f := strings.Fields(line)
	fam := []string{}
	if f[1] == "-6" {
		fam, f = []string{"-6"}, append(f[:1], f[2:]...)
	}
	var listed, want string
	switch f[1] {
	case "rule": // ip rule add fwmark M lookup T
		listed = run(t, n, append([]string{"ip"}, append(fam, "rule", "show")...)...)
		want = fmt.Sprintf("fwmark %s lookup %s", f[4], f[6])
	case "route": // ip route add local DST dev lo table T
		listed = run(t, n, append([]string{"ip"}, append(fam, "route", "show", "table", f[8])...)...)
		want = fmt.Sprintf("local %s dev lo", strings.TrimSuffix(strings.TrimSuffix(f[4], "0.0.0.0/0"), "::/0"))
		want = strings.Replace(want, "local  dev", "local default dev", 1)
	}
	if !strings.Contains(listed, want) {
		t.Errorf("%q not installed; listed:\n%s", line, listed)
	}
}

func TestKernelApplyIdempotent(t *testing.T) {
	n := newNS(t)
	o := inNS(goldenCases()[0].opts, n)
	if err := Apply(o); err != nil {
		t.Fatal(err)
	}
	first := snapshot(t, n)
	if err := Apply(o); err != nil {
		t.Fatal(err)
	}
	if second := snapshot(t, n); second != first {
		t.Errorf("second Apply changed the state\n--- after first\n%s--- after second\n%s", first, second)
	}
	if c := strings.Count(run(t, n, "ip", "rule"), "fwmark 0x1 lookup 100"); c != 1 {
		t.Errorf("%d fwmark rules after two Applies, want 1", c)
	}
}

func TestKernelCleanRestores(t *testing.T) {
	for _, tc := range goldenCases() {
		t.Run(tc.name, func(t *testing.T) {
			n := newNS(t)
			o := inNS(tc.opts, n)
			before := snapshot(t, n)
			if err := Apply(o); err != nil {
				t.Fatal(err)
			}
			if err := Clean(o); err != nil {
				t.Fatal(err)
			}
			if after := snapshot(t, n); after != before {
				t.Errorf("Clean left a different state\n--- before Apply\n%s--- after Clean\n%s", before, after)
			}
			if s, err := Show(o); err != nil || s != "nothing installed\n" {
				t.Errorf("Show after Clean = %q, %v", s, err)
			}
			if ok, err := Installed(o); ok || err != nil {
				t.Errorf("Installed after Clean = %v, %v", ok, err)
			}
		})
	}
}

func TestKernelCleanEmpty(t *testing.T) {
	n := newNS(t)
	before := snapshot(t, n)
	// Clean needs no ports or listeners.
	o := Options{NetNSFd: n.Fd()}
	for range 2 {
		if err := Clean(o); err != nil {
			t.Fatalf("Clean with nothing installed: %v", err)
		}
	}
	if after := snapshot(t, n); after != before {
		t.Errorf("Clean on an empty namespace changed it\n--- before\n%s--- after\n%s", before, after)
	}
	if ok, err := Installed(o); ok || err != nil {
		t.Errorf("Installed = %v, %v", ok, err)
	}
}

func TestKernelCleanKeepsUnrelated(t *testing.T) {
	n := newNS(t)
	run(t, n, "ip", "link", "add", "dt-a", "type", "veth", "peer", "name", "dt-b")
	run(t, n, "ip", "link", "set", "dt-a", "up")
	run(t, n, "nft", "add table inet other; add chain inet other c { type filter hook prerouting priority mangle; }; add rule inet other c tcp dport 80 accept")
	run(t, n, "nft", "add table ip detour") // same name, other family
	run(t, n, "ip", "rule", "add", "fwmark", "0x1", "lookup", "200")
	run(t, n, "ip", "rule", "add", "fwmark", "0x5", "lookup", "100")
	run(t, n, "ip", "rule", "add", "from", "10.9.0.0/16", "fwmark", "0x1", "lookup", "100")
	run(t, n, "ip", "route", "add", "unreachable", "10.9.0.0/16", "table", "100")
	run(t, n, "ip", "route", "add", "local", "10.8.0.0/16", "dev", "lo", "table", "100")
	run(t, n, "ip", "route", "add", "local", "0.0.0.0/0", "dev", "dt-a", "table", "101")
	run(t, n, "ip", "-6", "route", "add", "unreachable", "fd00::/8", "table", "100")
	before := snapshot(t, n)
	o := inNS(goldenCases()[0].opts, n)
	if err := Apply(o); err != nil {
		t.Fatal(err)
	}
	if err := Clean(o); err != nil {
		t.Fatal(err)
	}
	if after := snapshot(t, n); after != before {
		t.Errorf("Clean touched unrelated state\n--- before\n%s--- after\n%s", before, after)
	}
}

func TestKernelApplyAfterCrash(t *testing.T) {
	n := newNS(t)
	// Leftovers of a killed run: its policy routing for both families,
	// under a stale table with a different rule set (made by hand).
	if err := Apply(inNS(goldenCases()[0].opts, n)); err != nil {
		t.Fatal(err)
	}
	run(t, n, "nft", "delete table inet detour; add table inet detour; add chain inet detour prerouting { type filter hook prerouting priority mangle; }; add rule inet detour prerouting tcp dport 9999 drop; add chain inet detour output { type nat hook output priority -100; }")

	o := inNS(goldenCases()[1].opts, n) // IPv4 only
	if err := Apply(o); err != nil {
		t.Fatal(err)
	}
	want, _ := Render(o)
	if shown, err := Show(o); err != nil || shown != want {
		t.Fatalf("after Apply over leftovers, Show = %v\n%s\nwant\n%s", err, shown, want)
	}
	if got := run(t, n, "ip", "-6", "rule"); strings.Contains(got, "fwmark") {
		t.Errorf("IPv6 leftover rule survived an IPv4-only Apply:\n%s", got)
	}
	if got := run(t, n, "ip", "rule"); strings.Count(got, "fwmark 0x1 lookup 100") != 1 {
		t.Errorf("want exactly one fwmark rule:\n%s", got)
	}

	// A crashed tproxy run followed by a redirect run: the policy routing
	// goes, the table is replaced.
	r := inNS(goldenCases()[2].opts, n)
	if err := Apply(r); err != nil {
		t.Fatal(err)
	}
	want, _ = Render(r)
	if shown, err := Show(r); err != nil || shown != want {
		t.Fatalf("after switching modes, Show = %v\n%s\nwant\n%s", err, shown, want)
	}
}

// TestKernelKeepsHandMadePolicy: the tutorials' own `ip rule add fwmark
// 0x1 lookup 100` and local route, made before detour ran, are used as
// they are, shown as not detour's, and still there, unchanged, after
// Clean (also after Drain, a second Apply and an Ensure that put back
// the IPv6 rule someone removed: that one is detour's and goes). They
// used to be taken for detour's and removed at exit.
func TestKernelKeepsHandMadePolicy(t *testing.T) {
	n := newNS(t)
	run(t, n, "ip", "rule", "add", "fwmark", "0x1", "lookup", "100")
	run(t, n, "ip", "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100")
	run(t, n, "ip", "-6", "rule", "add", "fwmark", "0x1", "lookup", "100")
	before := snapshot(t, n)
	o := inNS(goldenCases()[0].opts, n) // dual stack, mark 0x1, table 100
	if err := Apply(o); err != nil {
		t.Fatal(err)
	}
	kept, err := Kept(o)
	want := []string{"ip rule add fwmark 0x1 lookup 100", "ip route add local 0.0.0.0/0 dev lo table 100", "ip -6 rule add fwmark 0x1 lookup 100"}
	if err != nil || !slices.Equal(kept, want) {
		t.Errorf("Kept = %q, %v; want %q", kept, err, want)
	}
	if shown, _ := Show(o); !strings.Contains(shown, "ip rule add fwmark 0x1 lookup 100\t# not detour's") ||
		!strings.Contains(shown, "ip -6 route add local ::/0 dev lo table 100\n") {
		t.Errorf("Show does not say which policy routing is not detour's:\n%s", shown)
	}
	if c := strings.Count(run(t, n, "ip", "rule"), "fwmark 0x1 lookup 100"); c != 1 {
		t.Errorf("%d fwmark rules, want the hand-made one only", c)
	}
	if missing, err := Missing(o); err != nil || len(missing) > 0 {
		t.Errorf("Missing = %q, %v; the hand-made parts serve as well", missing, err)
	}
	run(t, n, "ip", "-6", "rule", "del", "fwmark", "0x1", "lookup", "100")
	if missing, err := Ensure(o); err != nil || !slices.Equal(missing, []string{"ip -6 rule add fwmark 0x1 lookup 100"}) {
		t.Errorf("Ensure after the IPv6 rule went = %q, %v", missing, err)
	}
	if err := Drain(o); err != nil {
		t.Fatal(err)
	}
	if err := Apply(o); err != nil {
		t.Fatal(err)
	}
	if err := Clean(o); err != nil {
		t.Fatal(err)
	}
	// Ensure's IPv6 rule went with Clean; the hand-made one the test
	// removed comes back as it was, and all is as before Apply.
	if got := run(t, n, "ip", "-6", "rule"); strings.Contains(got, "fwmark") {
		t.Errorf("the IPv6 rule Ensure added survived Clean:\n%s", got)
	}
	run(t, n, "ip", "-6", "rule", "add", "fwmark", "0x1", "lookup", "100")
	if after := snapshot(t, n); after != before {
		t.Errorf("Clean changed what detour did not add\n--- before Apply\n%s--- after Clean\n%s", before, after)
	}
	if ok, err := Installed(o); ok || err != nil {
		t.Errorf("Installed with only hand-made policy routing = %v, %v; want false", ok, err)
	}
}

func TestKernelApplyRefusesForeignDefaultRoute(t *testing.T) {
	n := newNS(t)
	run(t, n, "ip", "route", "add", "unreachable", "default", "table", "100")
	before := snapshot(t, n)
	o := inNS(goldenCases()[0].opts, n)
	err := Apply(o)
	if err == nil {
		t.Fatal("Apply succeeded although table 100 has a default route of someone else")
	}
	// The way out is another table; `detour check`, which probes in a
	// namespace of its own, would find nothing wrong.
	if !strings.Contains(err.Error(), "--route-table") {
		t.Errorf("the error does not say to pick another route table: %v", err)
	}
	if after := snapshot(t, n); after != before {
		t.Errorf("failed Apply did not roll back\n--- before\n%s--- after\n%s", before, after)
	}
}

func TestKernelShowUnknown(t *testing.T) {
	n := newNS(t)
	run(t, n, "nft", "add table inet detour; add chain inet detour c { type filter hook input priority filter; }; add rule inet detour c ct state established counter accept")
	s, err := Show(Options{NetNSFd: n.Fd()})
	if err != nil {
		t.Fatal(err)
	}
	// Nothing is silently dropped: foreign expressions show up as such.
	for _, want := range []string{"chain c {", "type filter hook input priority filter; policy accept;", "<ct>", "<counter>", "accept"} {
		if !strings.Contains(s, want) {
			t.Errorf("Show output lacks %q:\n%s", want, s)
		}
	}
}

func TestKernelApplyInvalid(t *testing.T) {
	n := newNS(t)
	before := snapshot(t, n)
	err := Apply(Options{Mode: ModeTProxy, NetNSFd: n.Fd(), ListenV4: netip.MustParseAddrPort("0.0.0.0:1")})
	if err == nil || !strings.Contains(err.Error(), "Ports") {
		t.Fatalf("Apply without ports: %v", err)
	}
	if after := snapshot(t, n); after != before {
		t.Errorf("invalid Apply changed the namespace")
	}
}
