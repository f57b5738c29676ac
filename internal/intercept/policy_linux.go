package intercept

import (
	"errors"
	"fmt"
	"net"
	"slices"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// policy manages the policy routing detour owns: `ip rule fwmark M lookup T`
// and `local 0.0.0.0/0 dev lo table T` (and the IPv6 twins). It recognises
// them by exact shape and never touches other rules or routes, even in
// table T. What it adds carries protoDetour, so that it removes only what
// it added: an identical rule or route that was there before (made by
// hand, as the tutorials do) is used and left as it was.
type policy struct {
	h  *netlink.Handle
	lo int // ifindex of lo
}

func openPolicy(o Options) (*policy, error) {
	var h *netlink.Handle
	var err error
	// Only the routing family: a handle opens one socket per family it is
	// given (all three by default), and when a later one fails (EMFILE,
	// with descriptors exhausted) it returns without closing the earlier
	// ones, a socket leaked at every periodic rules check.
	if o.NetNSFd != 0 {
		h, err = netlink.NewHandleAt(netns.NsHandle(o.NetNSFd), unix.NETLINK_ROUTE)
	} else {
		h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
	}
	if err != nil {
		return nil, err
	}
	lo, err := h.LinkByName("lo")
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("find lo: %w", err)
	}
	return &policy{h: h, lo: lo.Attrs().Index}, nil
}

func (p *policy) close() { p.h.Close() }

// protoDetour marks the rules (FRA_PROTOCOL, Linux 4.17 and later) and
// routes detour adds, as routing daemons mark theirs: `ip rule` and `ip
// route` print it as `proto 222`. A number that /etc/iproute2/rt_protos
// gives no daemon. Rules and routes without it are not detour's, also
// those an older detour added, which marked none.
const protoDetour = 222

// matches are the rules and routes of one pair and family, and which of
// them detour added.
type matches struct {
	rules  []netlink.Rule
	routes []netlink.Route
}

func (m matches) mineRules() []netlink.Rule {
	return slices.DeleteFunc(slices.Clone(m.rules), func(r netlink.Rule) bool { return r.Protocol != protoDetour })
}

func (m matches) mineRoutes() []netlink.Route {
	return slices.DeleteFunc(slices.Clone(m.routes), func(r netlink.Route) bool { return r.Protocol != protoDetour })
}

func afamily(v6 bool) int {
	if v6 {
		return netlink.FAMILY_V6
	}
	return netlink.FAMILY_V4
}

// list returns the rules and routes of pp of one family, detour's and
// any others of the same shape.
func (p *policy) list(pp policyPair, v6 bool) (matches, error) {
	all, err := p.h.RuleList(afamily(v6))
	if v6 && errors.Is(err, unix.EAFNOSUPPORT) {
		return matches{}, nil // IPv6 disabled: nothing can be installed
	}
	if err != nil {
		return matches{}, fmt.Errorf("list rules: %w", err)
	}
	var rules []netlink.Rule
	for _, r := range all {
		if r.Mark == pp.mark && r.Table == pp.table && (r.Mask == nil || *r.Mask == 0xffffffff) &&
			r.Src == nil && r.Dst == nil && r.IifName == "" && r.OifName == "" && !r.Invert {
			rules = append(rules, r)
		}
	}
	rts, err := p.h.RouteListFiltered(afamily(v6), &netlink.Route{Table: pp.table}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return matches{}, fmt.Errorf("list routes of table %d: %w", pp.table, err)
	}
	var routes []netlink.Route
	for _, r := range rts {
		if r.Type == unix.RTN_LOCAL && r.LinkIndex == p.lo && isDefault(r.Dst) {
			routes = append(routes, r)
		}
	}
	return matches{rules, routes}, nil
}

func isDefault(n *net.IPNet) bool {
	if n == nil {
		return true
	}
	ones, _ := n.Mask.Size()
	return ones == 0
}

// ensure installs the family's rule and route unless they are there,
// detour's or not.
func (p *policy) ensure(pp policyPair, v6 bool) error {
	m, err := p.list(pp, v6)
	if err != nil {
		return err
	}
	if len(m.rules) == 0 {
		r := netlink.NewRule()
		r.Family, r.Mark, r.Table, r.Protocol = afamily(v6), pp.mark, pp.table, protoDetour
		if err := p.h.RuleAdd(r); err != nil {
			return fmt.Errorf("ip rule add fwmark %#x lookup %d: %w", pp.mark, pp.table, err)
		}
	}
	if len(m.routes) == 0 {
		dst := &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
		if v6 {
			dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
		}
		// RouteAdd, not RouteReplace: a default route the user keeps in
		// this table must make Apply fail, not vanish.
		err := p.h.RouteAdd(&netlink.Route{
			Family: afamily(v6), Table: pp.table, Type: unix.RTN_LOCAL, Scope: unix.RT_SCOPE_HOST,
			Protocol: protoDetour, LinkIndex: p.lo, Dst: dst,
		})
		if errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("ip route add local %s dev lo table %d: %w: the table already has a default route that is not detour's; give detour an unused table (--route-table, intercept.route_table), or see `ip route show table %d`", dst, pp.table, err, pp.table)
		}
		if err != nil {
			return fmt.Errorf("ip route add local %s dev lo table %d: %w", dst, pp.table, err)
		}
	}
	return nil
}

// remove deletes the family's rules and, unless keepRoutes, its routes,
// those detour added; nothing there is fine.
func (p *policy) remove(pp policyPair, v6, keepRoutes bool) error {
	m, err := p.list(pp, v6)
	if err != nil {
		return err
	}
	rules, routes := m.mineRules(), m.mineRoutes()
	if keepRoutes {
		routes = nil
	}
	var errs []error
	for _, r := range rules {
		if err := p.h.RuleDel(&r); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("ip rule del fwmark %#x lookup %d: %w", pp.mark, pp.table, err))
		}
	}
	for _, r := range routes {
		if err := p.h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("ip route del %s table %d: %w", r.Dst, pp.table, err))
		}
	}
	return errors.Join(errs...)
}

// read adds the installed rules and routes of pairs to rs; a route table
// two pairs share is listed once.
func (p *policy) read(rs *ruleset, pairs []policyPair) error {
	for _, v6 := range []bool{false, true} {
		for i, pp := range pairs {
			if err := p.readPair(rs, pp, v6, slices.ContainsFunc(pairs[:i], func(q policyPair) bool { return q.table == pp.table })); err != nil {
				return err
			}
		}
	}
	return nil
}

func (p *policy) readPair(rs *ruleset, pp policyPair, v6, routesListed bool) error {
	m, err := p.list(pp, v6)
	if err != nil {
		return err
	}
	for _, r := range m.rules {
		mask := uint32(0xffffffff)
		if r.Mask != nil {
			mask = *r.Mask
		}
		rs.rules = append(rs.rules, ipRule{v6: v6, mark: r.Mark, mask: mask, table: r.Table, kept: r.Protocol != protoDetour})
	}
	if !routesListed {
		for _, r := range m.routes {
			rs.routes = append(rs.routes, localRoute{v6: v6, table: pp.table, kept: r.Protocol != protoDetour})
		}
	}
	return nil
}
