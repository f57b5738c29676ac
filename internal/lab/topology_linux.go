package lab

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/detour-proxy/detour/internal/ns"
)

// TProxyNet is the router deployment: a client whose default routes go
// through a router to a server whose default routes go back through the
// same router. No NAT anywhere, so detour on the router sees and must
// answer both directions.
//
//	client (dt-ID-cli)        router (dt-ID-rtr)                 server (dt-ID-srv)
//	to-rtr 198.18.1.2/24 ⇄ to-cli 198.18.1.1/24  to-srv 198.18.2.1/24 ⇄ to-rtr 198.18.2.2/24
//	       2001:db8:1::2/64      2001:db8:1::1/64       2001:db8:2::1/64       2001:db8:2::2/64
type TProxyNet struct {
	Client, Router, Server *ns.NS

	ClientIP4, ClientIP6 netip.Addr // the client's addresses
	ServerIP4, ServerIP6 netip.Addr // the server's addresses: what the client dials
	// RouterIP4 and RouterIP6 are the router's addresses on the server's
	// link: what the server sees when detour does not spoof the source.
	RouterIP4, RouterIP6 netip.Addr

	RouterIfaceIn  string // router interface facing the client ("to-cli")
	RouterIfaceOut string // router interface facing the server ("to-srv")

	close func() error
}

// RedirectNet is the same-host deployment: applications and detour run in
// Host, the web server in Server, one link between them.
//
//	host (dt-ID-host)                server (dt-ID-web)
//	to-web 198.18.3.1/24   ⇄   to-host 198.18.3.2/24
//	       2001:db8:3::1/64            2001:db8:3::2/64
type RedirectNet struct {
	Host, Server *ns.NS

	HostIP4, HostIP6     netip.Addr
	ServerIP4, ServerIP6 netip.Addr

	close func() error
}

// Interface names. They live inside the namespaces, so they never clash
// with the host's or with another lab's.
const (
	ifClientToRouter = "to-rtr"
	ifRouterToClient = "to-cli"
	ifRouterToServer = "to-srv"
	ifServerToRouter = "to-rtr"
	ifHostToServer   = "to-web"
	ifServerToHost   = "to-host"
)

// tproxyTopology and redirectTopology are the single source of truth for
// both building the networks and describing them in the walkthrough.
func tproxyTopology() topology {
	return topology{
		hosts: []hostSpec{
			{role: "client", suffix: "cli"},
			{role: "router", suffix: "rtr", sysctls: [][2]string{
				{"net.ipv4.ip_forward", "1"},
				{"net.ipv6.conf.all.forwarding", "1"},
				{"net.ipv4.conf.all.rp_filter", "0"},
				{"net.ipv4.conf.default.rp_filter", "0"},
			}},
			{role: "server", suffix: "srv"},
		},
		links: []linkSpec{
			{
				a: endSpec{host: 0, iface: ifClientToRouter, addrs: prefixes("198.18.1.2/24", "2001:db8:1::2/64"),
					gateways: addrs("198.18.1.1", "2001:db8:1::1")},
				b: endSpec{host: 1, iface: ifRouterToClient, addrs: prefixes("198.18.1.1/24", "2001:db8:1::1/64")},
			},
			{
				a: endSpec{host: 1, iface: ifRouterToServer, addrs: prefixes("198.18.2.1/24", "2001:db8:2::1/64")},
				b: endSpec{host: 2, iface: ifServerToRouter, addrs: prefixes("198.18.2.2/24", "2001:db8:2::2/64"),
					gateways: addrs("198.18.2.1", "2001:db8:2::1")},
			},
		},
	}
}

func redirectTopology() topology {
	return topology{
		hosts: []hostSpec{
			{role: "host", suffix: "host"},
			{role: "server", suffix: "web"},
		},
		links: []linkSpec{{
			a: endSpec{host: 0, iface: ifHostToServer, addrs: prefixes("198.18.3.1/24", "2001:db8:3::1/64")},
			b: endSpec{host: 1, iface: ifServerToHost, addrs: prefixes("198.18.3.2/24", "2001:db8:3::2/64")},
		}},
	}
}

// NewTProxyNet builds the router network with namespaces dt-ID-cli,
// dt-ID-rtr and dt-ID-srv. id must be unique among labs running at the
// same time (tests include their pid). On error it removes whatever it made
// and leaves alone namespaces it did not make.
func NewTProxyNet(id string) (*TProxyNet, error) {
	return newTProxyNet(id, nil)
}

func newTProxyNet(id string, fail func(step string) error) (*TProxyNet, error) {
	nss, closeFn, err := tproxyTopology().build(id, fail)
	if err != nil {
		return nil, err
	}
	return &TProxyNet{
		Client: nss[0], Router: nss[1], Server: nss[2],
		ClientIP4: netip.MustParseAddr("198.18.1.2"), ClientIP6: netip.MustParseAddr("2001:db8:1::2"),
		ServerIP4: netip.MustParseAddr("198.18.2.2"), ServerIP6: netip.MustParseAddr("2001:db8:2::2"),
		RouterIP4: netip.MustParseAddr("198.18.2.1"), RouterIP6: netip.MustParseAddr("2001:db8:2::1"),
		RouterIfaceIn:  ifRouterToClient,
		RouterIfaceOut: ifRouterToServer,
		close:          closeFn,
	}, nil
}

// Close removes the three namespaces; the kernel deletes their links,
// routes and rules with them once no process or socket uses them any more
// (stop detour and close HTTPBin first). Calling it again does nothing.
func (t *TProxyNet) Close() error { return t.close() }

// NewRedirectNet builds the same-host network with namespaces dt-ID-host
// and dt-ID-web. Its names differ from NewTProxyNet's, so both can use the
// same id at the same time. On error it removes whatever it made.
func NewRedirectNet(id string) (*RedirectNet, error) {
	return newRedirectNet(id, nil)
}

func newRedirectNet(id string, fail func(step string) error) (*RedirectNet, error) {
	nss, closeFn, err := redirectTopology().build(id, fail)
	if err != nil {
		return nil, err
	}
	return &RedirectNet{
		Host: nss[0], Server: nss[1],
		HostIP4: netip.MustParseAddr("198.18.3.1"), HostIP6: netip.MustParseAddr("2001:db8:3::1"),
		ServerIP4: netip.MustParseAddr("198.18.3.2"), ServerIP6: netip.MustParseAddr("2001:db8:3::2"),
		close: closeFn,
	}, nil
}

// Close removes both namespaces (stop detour and close HTTPBin first).
// Calling it again does nothing.
func (r *RedirectNet) Close() error { return r.close() }

// NamespaceNames returns the namespace names NewTProxyNet (mode "tproxy")
// or NewRedirectNet (mode "redirect") uses for id, for cleanup by hand and
// for tests that check nothing is left.
func NamespaceNames(mode, id string) []string {
	var t topology
	switch mode {
	case "tproxy":
		t = tproxyTopology()
	case "redirect":
		t = redirectTopology()
	default:
		return nil
	}
	names := make([]string, len(t.hosts))
	for i, h := range t.hosts {
		names[i] = nsName(id, h.suffix)
	}
	return names
}

func nsName(id, suffix string) string { return "dt-" + id + "-" + suffix }

// topology is a lab network: namespaces, the veth pairs between them, the
// addresses and default routes on each end, and per-namespace sysctls.
type topology struct {
	hosts []hostSpec
	links []linkSpec
}

type hostSpec struct {
	role    string      // "client", "router", ...
	suffix  string      // namespace name is dt-ID-suffix
	sysctls [][2]string // set inside this namespace only
}

type linkSpec struct{ a, b endSpec }

type endSpec struct {
	host     int            // index into topology.hosts
	iface    string         // interface name inside that namespace
	addrs    []netip.Prefix // added with NODAD; build waits for IPv6's routes (awaitIPv6)
	gateways []netip.Addr   // default routes (one per family) via this interface
}

// build makes the namespaces and wires them. The steps run in order
// "namespaces", "sysctls", "links", "addresses", "up" (its IPv6 routes in
// place: awaitIPv6), "routes"; fail, when
// not nil, is asked after each one and its error aborts the build, so
// tests can check the cleanup of a half-built network.
func (t topology) build(id string, fail func(step string) error) ([]*ns.NS, func() error, error) {
	if !validID.MatchString(id) {
		return nil, nil, fmt.Errorf("lab id %q: use 1-40 letters, digits, '.', '_' or '-'", id)
	}
	var made []*ns.NS
	var once sync.Once
	var closeErr error
	closeFn := func() error {
		once.Do(func() {
			var errs []error
			for i := len(made) - 1; i >= 0; i-- {
				errs = append(errs, made[i].Close())
			}
			closeErr = errors.Join(errs...)
		})
		return closeErr
	}
	if err := t.wire(id, &made, fail); err != nil {
		if cerr := closeFn(); cerr != nil {
			err = fmt.Errorf("%w (and cleaning up: %v)", err, cerr)
		}
		return nil, nil, err
	}
	return made, closeFn, nil
}

// wire does build's work, appending each namespace it creates to made so
// that build can remove exactly those on error.
func (t topology) wire(id string, made *[]*ns.NS, fail func(step string) error) error {
	check := func(step string) error {
		if fail == nil {
			return nil
		}
		return fail(step)
	}

	for _, h := range t.hosts {
		n, err := ns.New(nsName(id, h.suffix))
		if err != nil {
			return fmt.Errorf("lab %s: %w", h.role, err)
		}
		*made = append(*made, n)
	}
	nss := *made
	if err := check("namespaces"); err != nil {
		return err
	}

	// Sysctls first: interfaces created afterwards copy the "default"
	// values (rp_filter, accept_dad). accept_dad=0 also spares the
	// link-local addresses their DAD wait.
	for i, h := range t.hosts {
		sc := append([][2]string{{"net.ipv6.conf.default.accept_dad", "0"}}, h.sysctls...)
		for _, kv := range sc {
			if err := nss[i].Sysctl(kv[0], kv[1]); err != nil {
				return fmt.Errorf("lab %s: sysctl %s=%s: %w", h.role, kv[0], kv[1], err)
			}
		}
	}
	if err := check("sysctls"); err != nil {
		return err
	}

	// Each veth pair is created inside the namespace of its first end,
	// with the peer created straight in the other one: nothing ever
	// appears in the host's namespace.
	for _, l := range t.links {
		err := withHandle(nss[l.a.host], func(h *netlink.Handle) error {
			return h.LinkAdd(&netlink.Veth{
				LinkAttrs:     netlink.LinkAttrs{Name: l.a.iface},
				PeerName:      l.b.iface,
				PeerNamespace: netlink.NsFd(nss[l.b.host].Fd()),
			})
		})
		if err != nil {
			return fmt.Errorf("lab: veth %s/%s ⇄ %s/%s: %w",
				nss[l.a.host].Name, l.a.iface, nss[l.b.host].Name, l.b.iface, err)
		}
	}
	if err := check("links"); err != nil {
		return err
	}

	ends := t.ends()
	for _, e := range ends {
		err := withLink(nss[e.host], e.iface, func(h *netlink.Handle, l netlink.Link) error {
			for _, p := range e.addrs {
				a := &netlink.Addr{IPNet: ipNet(p)}
				if p.Addr().Is6() {
					a.Flags = unix.IFA_F_NODAD
				}
				if err := h.AddrAdd(l, a); err != nil {
					return fmt.Errorf("address %s: %w", p, err)
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("lab %s/%s: %w", nss[e.host].Name, e.iface, err)
		}
	}
	if err := check("addresses"); err != nil {
		return err
	}

	for _, e := range ends {
		err := withLink(nss[e.host], e.iface, func(h *netlink.Handle, l netlink.Link) error {
			return h.LinkSetUp(l)
		})
		if err != nil {
			return fmt.Errorf("lab %s/%s: set up: %w", nss[e.host].Name, e.iface, err)
		}
	}
	for _, e := range ends {
		if err := awaitIPv6(nss[e.host], e, ipv6Timeout); err != nil {
			return fmt.Errorf("lab %s/%s: %w", nss[e.host].Name, e.iface, err)
		}
	}
	if err := check("up"); err != nil {
		return err
	}

	for _, e := range ends {
		err := withLink(nss[e.host], e.iface, func(h *netlink.Handle, l netlink.Link) error {
			for _, gw := range e.gateways {
				dst := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
				if gw.Is6() {
					dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
				}
				r := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipNet(dst), Gw: gw.AsSlice()}
				if err := h.RouteAdd(r); err != nil {
					return fmt.Errorf("default route via %s: %w", gw, err)
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("lab %s/%s: %w", nss[e.host].Name, e.iface, err)
		}
	}
	return check("routes")
}

// ipv6Timeout bounds the wait for the kernel's IPv6 routes of a link just
// set up: milliseconds, even on a loaded machine.
const ipv6Timeout = 10 * time.Second

// awaitIPv6 waits until the kernel has finished bringing up e's IPv6
// addresses. Even without DAD it does so from a work queue after the
// link is up: each address's local route and, on a forwarding link, its
// subnet's anycast route then appear in table local, and until they do
// the address receives nothing. Under load that came after a lab was
// returned: a test's snapshot of the routes taken at once then missed
// routes that a later one had (TestRulesCleanFindsCustomPolicy failed
// so), and a connection to the address could be refused.
func awaitIPv6(n *ns.NS, e endSpec, timeout time.Duration) error {
	want := ipv6Routes(n, e)
	if len(want) == 0 {
		return nil
	}
	deadline := time.Now().Add(timeout)
	for {
		missing, err := missingRoutes(n, e.iface, want)
		if err != nil || len(missing) == 0 {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("IPv6 routes %v not in table local after %v", missing, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// localRoute is a route the kernel adds to table local for an address.
type localRoute struct {
	typ int // unix.RTN_LOCAL or unix.RTN_ANYCAST
	dst netip.Addr
}

func (r localRoute) String() string {
	if r.typ == unix.RTN_ANYCAST {
		return "anycast " + r.dst.String()
	}
	return "local " + r.dst.String()
}

// ipv6Routes lists the routes the kernel adds for e's IPv6 addresses: a
// local one each and, when the link forwards, the anycast one of each
// subnet (RFC 4291, 2.6.1; none for /127 and /128).
func ipv6Routes(n *ns.NS, e endSpec) []localRoute {
	fwd, _ := n.ReadSysctl("net.ipv6.conf." + e.iface + ".forwarding")
	var want []localRoute
	for _, p := range e.addrs {
		if !p.Addr().Is6() {
			continue
		}
		want = append(want, localRoute{unix.RTN_LOCAL, p.Addr()})
		if fwd == "1" && p.Bits() < 127 {
			want = append(want, localRoute{unix.RTN_ANYCAST, p.Masked().Addr()})
		}
	}
	return want
}

// missingRoutes returns those of want that table local lacks on iface.
func missingRoutes(n *ns.NS, iface string, want []localRoute) ([]localRoute, error) {
	var missing []localRoute
	err := withLink(n, iface, func(h *netlink.Handle, l netlink.Link) error {
		have, err := h.RouteListFiltered(netlink.FAMILY_V6,
			&netlink.Route{Table: unix.RT_TABLE_LOCAL, LinkIndex: l.Attrs().Index}, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_OIF)
		if err != nil {
			return fmt.Errorf("list table local: %w", err)
		}
		for _, w := range want {
			if !slices.ContainsFunc(have, func(r netlink.Route) bool {
				if r.Dst == nil {
					return false
				}
				a, ok := netip.AddrFromSlice(r.Dst.IP)
				return ok && r.Type == w.typ && a == w.dst
			}) {
				missing = append(missing, w)
			}
		}
		return nil
	})
	return missing, err
}

// ends lists both ends of every link, in link order.
func (t topology) ends() []endSpec {
	var ends []endSpec
	for _, l := range t.links {
		ends = append(ends, l.a, l.b)
	}
	return ends
}

// describe writes the network in plain words, one line per interface and
// one per namespace with sysctls, in aligned columns.
func (t topology) describe(id string) string {
	var cols strings.Builder
	tw := tabwriter.NewWriter(&cols, 0, 0, 2, ' ', 0)
	for _, e := range t.ends() {
		h := t.hosts[e.host]
		var as, gs []string
		for _, p := range e.addrs {
			as = append(as, p.String())
		}
		for _, g := range e.gateways {
			gs = append(gs, g.String())
		}
		route := ""
		if len(gs) > 0 {
			route = "default via " + strings.Join(gs, ", ")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", h.role, nsName(id, h.suffix), e.iface, strings.Join(as, "  "), route)
	}
	tw.Flush()
	var b strings.Builder
	for _, line := range strings.Split(strings.TrimRight(cols.String(), "\n"), "\n") {
		b.WriteString(strings.TrimRight(line, " ") + "\n")
	}
	for _, h := range t.hosts {
		if len(h.sysctls) == 0 {
			continue
		}
		var kvs []string
		for _, kv := range h.sysctls {
			kvs = append(kvs, kv[0]+"="+kv[1])
		}
		fmt.Fprintf(&b, "%s sysctls: %s\n", h.role, strings.Join(kvs, " "))
	}
	return b.String()
}

func withHandle(n *ns.NS, fn func(h *netlink.Handle) error) error {
	h, err := netlink.NewHandleAt(n.Handle(), unix.NETLINK_ROUTE) // one socket, not one per family
	if err != nil {
		return fmt.Errorf("netlink handle in %s: %w", n.Name, err)
	}
	defer h.Close()
	return fn(h)
}

func withLink(n *ns.NS, iface string, fn func(h *netlink.Handle, l netlink.Link) error) error {
	return withHandle(n, func(h *netlink.Handle) error {
		l, err := h.LinkByName(iface)
		if err != nil {
			return fmt.Errorf("find %s: %w", iface, err)
		}
		return fn(h, l)
	})
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func prefixes(ss ...string) []netip.Prefix {
	ps := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		ps[i] = netip.MustParsePrefix(s)
	}
	return ps
}

func addrs(ss ...string) []netip.Addr {
	as := make([]netip.Addr, len(ss))
	for i, s := range ss {
		as[i] = netip.MustParseAddr(s)
	}
	return as
}
