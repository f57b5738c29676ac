package intercept

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// goldenCases are the rulesets kept as golden text; the kernel tests
// install the same options and compare with what nft lists.
func goldenCases() []struct {
	name string
	opts Options
} {
	ap := netip.MustParseAddrPort
	pfx := netip.MustParsePrefix
	return []struct {
		name string
		opts Options
	}{
		{"tproxy_default", Options{
			Mode: ModeTProxy, Ports: PortList(80),
			ListenV4: ap("0.0.0.0:15001"), ListenV6: ap("[::]:15001"),
		}},
		{"tproxy_cidrs_ifaces_v4", Options{
			Mode: ModeTProxy, Ports: PortList(443, 80, 8080, 80),
			Destinations: []netip.Prefix{pfx("10.0.0.0/9"), pfx("10.128.0.0/9"), pfx("192.168.1.7/32"), pfx("172.16.0.0/12"), pfx("10.1.2.0/24")},
			Interfaces:   []string{"veth-lan", "eth1"},
			ListenV4:     ap("10.0.0.1:15001"),
		}},
		{"redirect_uids", Options{
			Mode: ModeRedirect, Ports: PortList(80, 443),
			ListenV4: ap("127.0.0.1:15001"), ListenV6: ap("[::1]:15001"),
			ExcludeUIDs: []uint32{1000, 0},
		}},
		{"redirect_gateway", Options{
			Mode: ModeRedirect, Ports: PortList(80),
			Destinations: []netip.Prefix{pfx("203.0.113.0/24"), pfx("2001:db8::/32")},
			Interfaces:   []string{"lan0"},
			ListenV4:     ap("0.0.0.0:15001"), ListenV6: ap("[::]:15002"),
			UpstreamMark: 0x100,
		}},
		{"tproxy_ranges_exclude", Options{
			Mode:                ModeTProxy,
			Ports:               []PortRange{{8101, 8200}, {443, 443}, {8000, 8100}, {80, 80}, {8050, 8050}},
			ExcludeDestinations: []netip.Prefix{pfx("10.0.0.0/8"), pfx("192.168.0.0/16"), pfx("fd00::/8")},
			ListenV4:            ap("0.0.0.0:15001"), ListenV6: ap("[::]:15001"),
		}},
		{"redirect_range_exclude_gateway", Options{
			Mode: ModeRedirect, Ports: []PortRange{{8000, 8100}},
			Destinations:        []netip.Prefix{pfx("198.18.0.0/15")},
			ExcludeDestinations: []netip.Prefix{pfx("198.18.7.0/24"), pfx("198.18.9.1/32"), pfx("2001:db8::/32")},
			Interfaces:          []string{"lan0"},
			ListenV4:            ap("0.0.0.0:15001"), ListenV6: ap("[::]:15001"),
			ExcludeUIDs: []uint32{1000},
		}},
	}
}

func TestRenderGolden(t *testing.T) {
	for _, tc := range goldenCases() {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Render(tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join("testdata", tc.name+".nft")
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("Render differs from %s (run with -update if intended)\n--- got\n%s--- want\n%s", path, got, want)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	ap := netip.MustParseAddrPort
	ok := Options{Mode: ModeTProxy, Ports: PortList(80), ListenV4: ap("0.0.0.0:15001")}
	tests := []struct {
		name string
		edit func(*Options)
		want string // substring of the error; "" = valid
	}{
		{"valid", func(o *Options) {}, ""},
		{"redirect valid", func(o *Options) { o.Mode = ModeRedirect; o.ExcludeUIDs = []uint32{0} }, ""},
		{"no mode", func(o *Options) { o.Mode = "" }, "Mode is empty"},
		{"bad mode", func(o *Options) { o.Mode = "nat" }, `Mode "nat" is unknown`},
		{"no ports", func(o *Options) { o.Ports = nil }, "Ports is empty"},
		{"port zero", func(o *Options) { o.Ports = PortList(0) }, "Ports contains 0"},
		{"range from zero", func(o *Options) { o.Ports = []PortRange{{0, 5}} }, "Ports contains 0 (in 0-5)"},
		{"range backwards", func(o *Options) { o.Ports = []PortRange{{8100, 8000}} }, "Ports range 8100-8000 runs backwards; write 8000-8100"},
		{"range", func(o *Options) { o.Ports = []PortRange{{1, 65535}} }, ""},
		{"mapped excluded", func(o *Options) { o.ExcludeDestinations = []netip.Prefix{netip.MustParsePrefix("::ffff:10.0.0.0/104")} }, "ExcludeDestinations ::ffff:10.0.0.0/104 is IPv4-mapped"},
		{"excluded v6 without v6 listener", func(o *Options) { o.ExcludeDestinations = []netip.Prefix{netip.MustParsePrefix("fd00::/8")} }, ""},
		{"no listener", func(o *Options) { o.ListenV4 = netip.AddrPort{} }, "ListenV4 and ListenV6 are both unset"},
		{"v6 in ListenV4", func(o *Options) { o.ListenV4 = ap("[::]:1") }, "ListenV4 [::]:1 is not an IPv4"},
		{"v4 in ListenV6", func(o *Options) { o.ListenV6 = ap("[::ffff:1.2.3.4]:1") }, "is not an IPv6"},
		{"port 0 listener", func(o *Options) { o.ListenV4 = ap("0.0.0.0:0") }, "has port 0"},
		{"v6 dst without v6 listener", func(o *Options) { o.Destinations = []netip.Prefix{netip.MustParsePrefix("fd00::/8")} }, "Destinations fd00::/8 is IPv6 but ListenV6 is unset"},
		{"mapped dst", func(o *Options) { o.Destinations = []netip.Prefix{netip.MustParsePrefix("::ffff:10.0.0.0/104")} }, "IPv4-mapped"},
		{"long iface", func(o *Options) { o.Interfaces = []string{"a-very-long-name0"} }, "longer than 15"},
		{"wildcard iface", func(o *Options) { o.Interfaces = []string{"eth*"} }, "wildcards"},
		{"alias iface", func(o *Options) { o.Interfaces = []string{"eth0:1"} }, "address label); give the interface, eth0"},
		{"same marks", func(o *Options) { o.UpstreamMark = 1 }, "UpstreamMark and TProxyMark are both 0x1"},
		{"main table", func(o *Options) { o.RouteTable = 254 }, "RouteTable 254 is reserved"},
		{"bad table name", func(o *Options) { o.TableName = "1x" }, "TableName"},
		{"uids in tproxy", func(o *Options) { o.ExcludeUIDs = []uint32{0} }, "ExcludeUIDs applies to redirect mode only"},
		{"gateway on loopback", func(o *Options) {
			o.Mode = ModeRedirect
			o.Interfaces = []string{"eth0"}
			o.ListenV4 = ap("127.0.0.1:15001")
		}, "is on loopback"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := ok
			tc.edit(&o)
			err := o.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestRenderDetails(t *testing.T) {
	ap := netip.MustParseAddrPort
	pfx := netip.MustParsePrefix
	tests := []struct {
		name string
		opts Options
		want []string // lines that must appear
		not  []string // substrings that must not appear
	}{
		{
			"v6 only tproxy with address",
			Options{Mode: ModeTProxy, Ports: PortList(80), ListenV6: ap("[fd00::1]:15001")},
			[]string{"tcp dport 80 tproxy ip6 to [fd00::1]:15001 meta mark set 0x00000001 accept", "ip -6 rule add fwmark 0x1 lookup 100"},
			[]string{"tproxy ip to", "ip rule add"},
		},
		{
			"0.0.0.0/0 means any",
			Options{Mode: ModeTProxy, Ports: PortList(80), Destinations: []netip.Prefix{pfx("0.0.0.0/0")}, ListenV4: ap("0.0.0.0:1")},
			[]string{"tcp dport 80 tproxy ip to :1 meta mark set 0x00000001 accept"},
			[]string{"ip daddr"},
		},
		{
			"family without destinations is left alone",
			Options{Mode: ModeRedirect, Ports: PortList(80), Destinations: []netip.Prefix{pfx("10.1.0.0/16")}, ListenV4: ap("0.0.0.0:1"), ListenV6: ap("[::]:1")},
			[]string{"ip daddr { 10.1.0.0/16 } tcp dport 80 redirect to :1"},
			[]string{"ipv6", "ip6"},
		},
		{
			"non-CIDR merge prints a range",
			Options{Mode: ModeRedirect, Ports: PortList(80), Destinations: []netip.Prefix{pfx("10.0.0.0/24"), pfx("10.0.1.0/25")}, ListenV4: ap("0.0.0.0:1")},
			[]string{"ip daddr { 10.0.0.0-10.0.1.127 } tcp dport 80 redirect to :1"},
			nil,
		},
		{
			"one range is a comparison, ranges among others a set",
			Options{Mode: ModeRedirect, Ports: []PortRange{{8000, 8100}}, ListenV4: ap("127.0.0.1:1")},
			[]string{"meta nfproto ipv4 tcp dport 8000-8100 redirect to :1"},
			[]string{"dport {"},
		},
		{
			"overlapping and adjacent ranges merge",
			Options{Mode: ModeRedirect, Ports: []PortRange{{90, 99}, {80, 89}, {85, 85}, {443, 443}, {65000, 65535}, {65535, 65535}}, ListenV4: ap("127.0.0.1:1")},
			[]string{"meta nfproto ipv4 tcp dport { 80-99, 443, 65000-65535 } redirect to :1"},
			nil,
		},
		{
			"excluded destinations of a family not intercepted get no rule",
			Options{Mode: ModeTProxy, Ports: PortList(80), ExcludeDestinations: []netip.Prefix{pfx("fd00::/8"), pfx("10.0.0.0/8")}, ListenV4: ap("0.0.0.0:1")},
			[]string{"ip daddr { 10.0.0.0/8 } return"},
			[]string{"ip6", "fd00"},
		},
		{
			"excluded destinations come before interception",
			Options{Mode: ModeRedirect, Ports: PortList(80), ExcludeDestinations: []netip.Prefix{pfx("10.0.0.0/8"), pfx("fd00::/8")}, ListenV4: ap("127.0.0.1:1"), ListenV6: ap("[::1]:1")},
			[]string{"ip daddr { 10.0.0.0/8 } return", "ip6 daddr { fd00::/8 } return"},
			nil,
		},
		{
			"custom mark, table and name",
			Options{Mode: ModeTProxy, Ports: PortList(80), ListenV4: ap("0.0.0.0:1"), TProxyMark: 0x20, RouteTable: 1234, TableName: "dt2"},
			[]string{"table inet dt2 {", "socket transparent 1 tcp flags != syn / fin,syn,rst,ack meta mark set 0x00000020 accept comment \"detour policy routing: fwmark 0x20 lookup 1234\"", "ip rule add fwmark 0x20 lookup 1234", "ip route add local 0.0.0.0/0 dev lo table 1234"},
			nil,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Render(tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			lines := map[string]bool{}
			for _, l := range strings.Split(got, "\n") {
				lines[strings.TrimSpace(l)] = true
			}
			for _, w := range tc.want {
				if !lines[w] {
					t.Errorf("missing line %q in\n%s", w, got)
				}
			}
			for _, n := range tc.not {
				if strings.Contains(got, n) {
					t.Errorf("unexpected %q in\n%s", n, got)
				}
			}
		})
	}
}

func TestCompareIfName(t *testing.T) {
	// The order nft 1.0.6 lists { "veth1", "eth0", "lan", "br-lan", "a" } in.
	names := []string{"veth1", "eth0", "lan", "br-lan", "a"}
	got := stmtString(matchIIFName{names})
	want := `iifname { "a", "lan", "eth0", "veth1", "br-lan" }`
	if got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
}
