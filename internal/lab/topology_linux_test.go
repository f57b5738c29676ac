package lab

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/detour-proxy/detour/internal/ns"
)

// TestAwaitIPv6: an IPv6 address added (without DAD) to a link that is
// up is usable once the kernel has put its local route, and on a
// forwarding link its subnet's anycast route, in table local, which it
// does from a work queue: under load, after the address and the link
// were set up. awaitIPv6 waits for those routes: here the address comes
// only after awaitIPv6 began (the late routes forced), and it returns
// once they are there; it fails, naming them, when they do not come in
// time.
func TestAwaitIPv6(t *testing.T) {
	requireRoot(t)
	for _, tc := range []struct {
		name string
		late bool // the address is added while awaitIPv6 waits
		err  string
	}{
		{"routes come late", true, ""},
		{"routes never come", false, "IPv6 routes [local 2001:db8:9::1 anycast 2001:db8:9::] not in table local after 300ms"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, err := ns.New("dt-" + testID("aw6") + "-" + map[bool]string{true: "l", false: "n"}[tc.late])
			if err != nil {
				t.Fatal(err)
			}
			defer n.Close()
			e := endSpec{iface: "v0", addrs: []netip.Prefix{netip.MustParsePrefix("2001:db8:9::1/64")}}
			if err := n.Sysctl("net.ipv6.conf.all.forwarding", "1"); err != nil {
				t.Fatal(err)
			}
			err = withHandle(n, func(h *netlink.Handle) error {
				if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "v0"}, PeerName: "v1"}); err != nil {
					return err
				}
				for _, name := range []string{"v0", "v1"} {
					l, err := h.LinkByName(name)
					if err != nil {
						return err
					}
					if err := h.LinkSetUp(l); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			timeout := 300 * time.Millisecond
			if tc.late {
				timeout = 30 * time.Second
			}
			go func() { done <- awaitIPv6(n, e, timeout) }()
			if tc.late {
				time.Sleep(100 * time.Millisecond) // awaitIPv6 waits meanwhile
				err := withLink(n, "v0", func(h *netlink.Handle, l netlink.Link) error {
					return h.AddrAdd(l, &netlink.Addr{IPNet: ipNet(e.addrs[0]), Flags: unix.IFA_F_NODAD})
				})
				if err != nil {
					t.Fatal(err)
				}
			}
			err = <-done
			if tc.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				if missing, err := missingRoutes(n, "v0", ipv6Routes(n, e)); err != nil || len(missing) != 0 {
					t.Errorf("awaitIPv6 returned with %v still missing (%v)", missing, err)
				}
			} else if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("awaitIPv6: %v, want %q", err, tc.err)
			}
		})
	}
}

// TestTProxyNetIPv6Settled: NewTProxyNet returns once every IPv6 address
// has its routes in table local, so that what a test snapshots at once
// does not change later on its own (TestRulesCleanFindsCustomPolicy
// failed under load when they came after its first snapshot). Without
// the wait, with three busy loops on two cores, 3 builds out of 40 lacked
// them in one run, and this test found 23 link ends without them in 120
// builds in another.
func TestTProxyNetIPv6Settled(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	for i := range 20 {
		tn, err := NewTProxyNet(fmt.Sprintf("%s-%d", testID("s6"), i))
		if err != nil {
			t.Fatal(err)
		}
		topo := tproxyTopology()
		nss := []*ns.NS{tn.Client, tn.Router, tn.Server}
		for _, e := range topo.ends() {
			if missing, err := missingRoutes(nss[e.host], e.iface, ipv6Routes(nss[e.host], e)); err != nil || len(missing) != 0 {
				t.Errorf("%s/%s: missing %v (%v) when NewTProxyNet returned", nss[e.host].Name, e.iface, missing, err)
			}
		}
		tn.Close()
	}
}
