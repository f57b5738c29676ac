package check

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/detour-proxy/detour/internal/intercept"
	"github.com/detour-proxy/detour/internal/ns"
)

var fxdIDs atomic.Int64

// testNS makes a namespace named fxdck<pid>-<n> with lo up, removed when the
// test ends.
func testNS(t *testing.T) *ns.NS {
	t.Helper()
	n, err := ns.New(fmt.Sprintf("fxdck%d-%d", os.Getpid(), fxdIDs.Add(1)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

func loDown(n *ns.NS) error {
	return n.Do(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetDown(lo)
	})
}

func noIPv6(n *ns.NS) error { return n.Sysctl("net.ipv6.conf.all.disable_ipv6", "1") }

func defaults(m intercept.Mode, addrs ...string) []Listener {
	var ls []Listener
	for _, a := range addrs {
		ls = append(ls, Listener{Mode: m, Addr: netip.MustParseAddrPort(a), Default: true})
	}
	return ls
}

// TestRunInspectsItsNamespace runs check inside namespaces where `detour
// run` fails (lo down; IPv6 disabled with an IPv6 listener asked for) or
// works on IPv4 only, and wants check's verdict to match run's, with the
// fix on the line that fails.
func TestRunInspectsItsNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: creating network namespaces needs root (CI runs this as root)")
	}
	redirectDefaults := defaults(intercept.ModeRedirect, "127.0.0.1:4999", "[::1]:4999")
	tproxyDefaults := defaults(intercept.ModeTProxy, "0.0.0.0:15001", "[::]:15001")
	tests := []struct {
		name   string
		setup  []func(*ns.NS) error
		o      Options
		wantOK bool
		// want maps a line's name to its status and a fragment of its fix;
		// a status "absent" means the line must not be there.
		want map[string][2]string
	}{
		{"lo down, redirect", []func(*ns.NS) error{loDown},
			Options{Mode: intercept.ModeRedirect, Listeners: redirectDefaults}, false,
			map[string][2]string{
				"loopback lo (this network namespace)": {"FAIL", "ip link set lo up"},
				"listen [::1]:4999 (redirect)":         {"FAIL", "ip link set lo up"},
			}},
		{"lo down, tproxy", []func(*ns.NS) error{loDown},
			Options{Mode: intercept.ModeTProxy, Listeners: tproxyDefaults}, false,
			map[string][2]string{"loopback lo (this network namespace)": {"FAIL", "ip link set lo up"}}},
		{"no IPv6, redirect defaults: IPv4 only", []func(*ns.NS) error{noIPv6},
			Options{Mode: intercept.ModeRedirect, Listeners: redirectDefaults}, true,
			map[string][2]string{
				"IPv6 (this network namespace)":    {"warn", "disable_ipv6=0"},
				"listen 127.0.0.1:4999 (redirect)": {"ok", ""},
				"listen [::1]:4999 (redirect)":     {"absent", ""},
			}},
		{"no IPv6, IPv6 listener asked for", []func(*ns.NS) error{noIPv6},
			Options{Mode: intercept.ModeRedirect, Listeners: []Listener{{Mode: intercept.ModeRedirect, Addr: netip.MustParseAddrPort("[::1]:4999")}}}, false,
			map[string][2]string{"listen [::1]:4999 (redirect)": {"FAIL", "--listen 127.0.0.1:4999"}}},
		{"no IPv6, tproxy router forwarding IPv4", []func(*ns.NS) error{noIPv6, func(n *ns.NS) error { return n.Sysctl("net.ipv4.ip_forward", "1") }},
			Options{Mode: intercept.ModeTProxy, Router: true, Listeners: tproxyDefaults}, true,
			map[string][2]string{
				"net.ipv4.ip_forward":                                  {"ok", ""},
				"net.ipv6.conf.all.forwarding":                         {"warn", "forwarding=1"},
				"policy routing IPv6 (ip -6 rule fwmark, local route)": {"ok", ""},
				"listen [::]:15001 (tproxy)":                           {"absent", ""},
			}},
		{"IPv4-only router with IPv6 available", []func(*ns.NS) error{func(n *ns.NS) error { return n.Sysctl("net.ipv4.ip_forward", "1") }},
			Options{Mode: intercept.ModeTProxy, Router: true, Listeners: tproxyDefaults}, true,
			map[string][2]string{
				"IPv6 (this network namespace)": {"ok", ""},
				"net.ipv6.conf.all.forwarding":  {"warn", "forwarding=1"},
				"listen [::]:15001 (tproxy)":    {"ok", ""},
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n := testNS(t)
			for _, f := range tc.setup {
				if err := f(n); err != nil {
					t.Fatal(err)
				}
			}
			var rs []Result
			n.Do(func() error { rs = Run(t.Context(), tc.o); return nil })
			var b strings.Builder
			ok := Print(&b, rs)
			if ok != tc.wantOK {
				t.Errorf("Print = %v, want %v", ok, tc.wantOK)
			}
			got := map[string]Result{}
			for _, r := range rs {
				got[r.Name] = r
			}
			for name, w := range tc.want {
				r, there := got[name]
				status := "absent"
				switch {
				case !there:
				case r.OK:
					status = "ok"
				case r.Warn:
					status = "warn"
				default:
					status = "FAIL"
				}
				if status != w[0] || !strings.Contains(r.Fix, w[1]) {
					t.Errorf("%s: %s with fix %q, want %s with a fix containing %q", name, status, r.Fix, w[0], w[1])
				}
			}
			if t.Failed() {
				t.Logf("check's output:\n%s", b.String())
			}
		})
	}
}
