package intercept

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// ruleset is the portable description of everything detour installs. Build
// makes one from Options; on Linux the same shape is encoded into netlink
// messages and decoded back from the kernel, so Render and Show share one
// printer.
type ruleset struct {
	table  string // in family inet
	chains []chain
	rules  []ipRule     // policy routing rules
	routes []localRoute // routes in the policy table
}

type chain struct {
	name     string
	kind     string // "filter" or "nat"
	hook     string // "prerouting" or "output"
	priority int32
	policy   string // "accept" or "drop"
	rules    [][]stmt
}

// ipRule is `ip rule add fwmark mark lookup table`.
type ipRule struct {
	v6    bool
	mark  uint32
	mask  uint32
	table int
	kept  bool // read back: there, but not added by detour (see protoDetour)
}

// localRoute is `ip route add local 0.0.0.0/0 dev lo table table`.
type localRoute struct {
	v6    bool
	table int
	kept  bool // as ipRule's
}

// stmt is one nft statement of a rule, in the order the kernel runs them.
type stmt interface{ isStmt() }

type (
	matchIIFName    struct{ names []string }
	matchL4ProtoTCP struct{}
	matchNFProto    struct{ v6 bool }
	// matchDaddr is always backed by an anonymous interval set.
	matchDaddr struct {
		v6     bool
		ranges []addrRange
	}
	// matchDport is a comparison for one port or range, a set for more.
	matchDport             struct{ ports []PortRange }
	matchMark              struct{ mark uint32 }
	matchSkuid             struct{ uids []uint32 }
	matchSocketTransparent struct{}
	// matchNotSYN: any TCP packet but a connection's first SYN.
	matchNotSYN        struct{}
	matchFibDaddrLocal struct{}
	setMark            struct{ mark uint32 }
	tproxyTo           struct {
		v6   bool
		addr netip.Addr // invalid: the incoming interface's address
		port uint16
	}
	redirectTo struct{ port uint16 }
	verdict    string // "accept", "return", "drop", ...
	// comment is a rule's comment (nft's userdata), not a statement the
	// kernel runs; it is printed, like nft does, after the statements.
	comment string
	// unknown is something Show found that detour never installs.
	unknown string
)

func (matchIIFName) isStmt()           {}
func (matchL4ProtoTCP) isStmt()        {}
func (matchNFProto) isStmt()           {}
func (matchDaddr) isStmt()             {}
func (matchDport) isStmt()             {}
func (matchMark) isStmt()              {}
func (matchSkuid) isStmt()             {}
func (matchSocketTransparent) isStmt() {}
func (matchNotSYN) isStmt()            {}
func (matchFibDaddrLocal) isStmt()     {}
func (setMark) isStmt()                {}
func (tproxyTo) isStmt()               {}
func (redirectTo) isStmt()             {}
func (verdict) isStmt()                {}
func (comment) isStmt()                {}
func (unknown) isStmt()                {}

// policyPair is the mark and route table of tproxy's policy routing:
// `ip rule fwmark mark lookup table` and the local routes in table.
type policyPair struct {
	mark  uint32
	table int
}

// policyCommentPrefix starts the comment that records a table's policyPair.
const policyCommentPrefix = "detour policy routing: fwmark "

func (p policyPair) comment() comment {
	return comment(fmt.Sprintf("%s%#x lookup %d", policyCommentPrefix, p.mark, p.table))
}

// recordedPolicy returns the policy routing rs's table records, if it does.
func recordedPolicy(rs ruleset) (policyPair, bool) {
	for _, ch := range rs.chains {
		for _, r := range ch.rules {
			for _, s := range r {
				c, ok := s.(comment)
				if !ok {
					continue
				}
				rest, ok := strings.CutPrefix(string(c), policyCommentPrefix)
				if !ok {
					continue
				}
				markText, tableText, ok := strings.Cut(rest, " lookup ")
				if !ok {
					continue
				}
				mark, err1 := strconv.ParseUint(markText, 0, 32)
				table, err2 := strconv.ParseUint(tableText, 10, 32)
				if err1 == nil && err2 == nil && mark != 0 && table != 0 && CheckRouteTable(int(table)) == nil {
					return policyPair{uint32(mark), int(table)}, true
				}
			}
		}
	}
	return policyPair{}, false
}

// addrRange is an inclusive range of addresses of one family.
type addrRange struct{ first, last netip.Addr }

// Chain priorities, as nft names them.
const (
	prioMangle int32 = -150
	prioDstNAT int32 = -100
)

// build turns validated options (with defaults applied) into the ruleset.
func build(o Options) ruleset {
	rs := ruleset{table: o.TableName}
	ports := mergePorts(o.Ports)
	ifaces := sortedUnique(o.Interfaces)
	fams := families(o)

	switch o.Mode {
	case ModeTProxy:
		pre := chain{name: "prerouting", kind: "filter", hook: "prerouting", priority: prioMangle, policy: "accept"}
		// Packets of sockets that are already transparent (accepted
		// connections, and replies to upstream sockets that spoof the
		// client's address) only need the mark that routes them locally.
		// A new SYN is left to the tproxy rule even when it matches: the
		// socket found may be an accepted connection's TIME_WAIT (the
		// client reused its port at once), which is no home for a new
		// connection; tproxy's own lookup retires such a TIME_WAIT and
		// picks the listener.
		// Its comment records the policy routing that goes with the
		// table, so that Clean, Show and the next Apply find a killed
		// run's `ip rule` and route even when they are given another mark
		// or route table (or none). It is on this rule because Drain
		// keeps it.
		pre.rules = append(pre.rules, []stmt{matchL4ProtoTCP{}, matchSocketTransparent{}, matchNotSYN{}, setMark{o.TProxyMark}, verdict("accept"),
			policyPair{o.TProxyMark, o.RouteTable}.comment()})
		// Connections to the router's own addresses are its own business:
		// diverting them would only add a hop (and loop if detour listens
		// on an intercepted port).
		pre.rules = append(pre.rules, []stmt{matchL4ProtoTCP{}, matchFibDaddrLocal{}, verdict("return")})
		pre.rules = append(pre.rules, excludeRules(o, fams)...)
		for _, f := range fams {
			addr := f.listen.Addr()
			if addr.IsUnspecified() {
				addr = netip.Addr{}
			}
			for _, r := range matchPrefix(ifaces, f, false) {
				pre.rules = append(pre.rules, append(r, matchDport{ports}, tproxyTo{v6: f.v6, addr: addr, port: f.listen.Port()}, setMark{o.TProxyMark}, verdict("accept")))
			}
		}
		rs.chains = append(rs.chains, pre)
		for _, f := range fams {
			rs.rules = append(rs.rules, ipRule{v6: f.v6, mark: o.TProxyMark, mask: 0xffffffff, table: o.RouteTable})
			rs.routes = append(rs.routes, localRoute{v6: f.v6, table: o.RouteTable})
		}

	case ModeRedirect:
		out := chain{name: "output", kind: "nat", hook: "output", priority: prioDstNAT, policy: "accept"}
		// detour's own upstream connections must reach the real server.
		out.rules = append(out.rules, []stmt{matchMark{o.UpstreamMark}, verdict("return")})
		for _, uid := range sortedUnique(o.ExcludeUIDs) {
			out.rules = append(out.rules, []stmt{matchSkuid{[]uint32{uid}}, verdict("return")})
		}
		out.rules = append(out.rules, excludeRules(o, fams)...)
		for _, f := range fams {
			for _, r := range matchPrefix(nil, f, true) {
				out.rules = append(out.rules, append(r, matchDport{ports}, redirectTo{f.listen.Port()}))
			}
		}
		rs.chains = append(rs.chains, out)
		if len(ifaces) > 0 {
			pre := chain{name: "prerouting", kind: "nat", hook: "prerouting", priority: prioDstNAT, policy: "accept"}
			pre.rules = append(pre.rules, excludeRules(o, fams)...)
			for _, f := range fams {
				for _, r := range matchPrefix(ifaces, f, true) {
					pre.rules = append(pre.rules, append(r, matchDport{ports}, redirectTo{f.listen.Port()}))
				}
			}
			rs.chains = append(rs.chains, pre)
		}
	}
	return rs
}

// excludeRules return early, before any interception rule of the chain,
// for the excluded destinations of each intercepted family: an excluded
// destination wins over an included one.
func excludeRules(o Options, fams []family) [][]stmt {
	var rules [][]stmt
	for _, f := range fams {
		var prefixes []netip.Prefix
		for _, p := range o.ExcludeDestinations {
			if p.Addr().Is6() == f.v6 {
				prefixes = append(prefixes, p.Masked())
			}
		}
		if len(prefixes) > 0 {
			rules = append(rules, []stmt{matchNFProto{f.v6}, matchDaddr{v6: f.v6, ranges: mergeRanges(prefixes)}, verdict("return")})
		}
	}
	return rules
}

// mergePorts sorts port ranges and merges those that overlap or touch, the
// form the kernel's interval sets require (and nft's auto-merge produces).
func mergePorts(ports []PortRange) []PortRange {
	rs := slices.Clone(ports)
	slices.SortFunc(rs, func(a, b PortRange) int { return int(a.First) - int(b.First) })
	var out []PortRange
	for _, r := range rs {
		if n := len(out); n > 0 && int(r.First) <= int(out[n-1].Last)+1 {
			out[n-1].Last = max(out[n-1].Last, r.Last)
			continue
		}
		out = append(out, r)
	}
	return out
}

// family is one address family detour intercepts.
type family struct {
	v6     bool
	listen netip.AddrPort
	ranges []addrRange // nil = any destination
}

// families lists the enabled families with their destination ranges. A
// family with a listener but none of the given Destinations is left alone.
func families(o Options) []family {
	var fams []family
	for _, f := range []family{{v6: false, listen: o.ListenV4}, {v6: true, listen: o.ListenV6}} {
		if !f.listen.IsValid() {
			continue
		}
		var prefixes []netip.Prefix
		for _, p := range o.Destinations {
			if p.Addr().Is6() == f.v6 {
				prefixes = append(prefixes, p.Masked())
			}
		}
		if len(o.Destinations) > 0 && len(prefixes) == 0 {
			continue
		}
		f.ranges = mergeRanges(prefixes)
		if len(f.ranges) == 1 && f.ranges[0] == fullRange(f.v6) {
			f.ranges = nil // 0.0.0.0/0 is "any"
		}
		fams = append(fams, f)
	}
	return fams
}

// matchPrefix returns the starts of a family's interception rules, one per
// incoming interface (or one for any): interface, TCP, family, destinations.
// In the inet table an address match needs the nfproto match first (nft
// hides it again when printing), and redirect needs it to keep a family's
// rule from taking the other family's packets; tproxy does not, as
// `tproxy ip` ignores IPv6 packets.
//
// Interfaces (like uids) get a rule each rather than an anonymous set:
// google/nftables v0.3.0 marks every anonymous set's key as big-endian in
// the metadata nft prints from, so a set of names or uids, which the kernel
// keeps in host order, would list garbled (`iifname { "", "" }`).
func matchPrefix(ifaces []string, f family, needFamily bool) [][]stmt {
	var tail []stmt
	tail = append(tail, matchL4ProtoTCP{})
	if needFamily || f.ranges != nil {
		tail = append(tail, matchNFProto{f.v6})
	}
	if f.ranges != nil {
		tail = append(tail, matchDaddr{v6: f.v6, ranges: f.ranges})
	}
	if len(ifaces) == 0 {
		return [][]stmt{tail}
	}
	var rules [][]stmt
	for _, name := range ifaces {
		rules = append(rules, append([]stmt{matchIIFName{[]string{name}}}, tail...))
	}
	return rules
}

// mergeRanges turns prefixes into sorted, disjoint, non-adjacent ranges, the
// form the kernel's interval sets require (and nft's auto-merge produces).
func mergeRanges(prefixes []netip.Prefix) []addrRange {
	var rs []addrRange
	for _, p := range prefixes {
		rs = append(rs, prefixRange(p))
	}
	slices.SortFunc(rs, func(a, b addrRange) int { return a.first.Compare(b.first) })
	var out []addrRange
	for _, r := range rs {
		if n := len(out); n > 0 {
			last := &out[n-1]
			if next := last.last.Next(); !next.IsValid() || r.first.Compare(next) <= 0 {
				if r.last.Compare(last.last) > 0 {
					last.last = r.last
				}
				continue
			}
		}
		out = append(out, r)
	}
	return out
}

func prefixRange(p netip.Prefix) addrRange {
	p = p.Masked()
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	last, _ := netip.AddrFromSlice(b)
	return addrRange{p.Addr(), last}
}

func fullRange(v6 bool) addrRange {
	if v6 {
		return prefixRange(netip.MustParsePrefix("::/0"))
	}
	return prefixRange(netip.MustParsePrefix("0.0.0.0/0"))
}

// prefix reports whether r is exactly one CIDR, and which.
func (r addrRange) prefix() (netip.Prefix, bool) {
	for bits := 0; bits <= r.first.BitLen(); bits++ {
		p := netip.PrefixFrom(r.first, bits)
		if p.Masked() == p && prefixRange(p) == r {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

func sortedUnique[T interface{ ~string | ~uint32 }](xs []T) []T {
	out := slices.Clone(xs)
	slices.Sort(out)
	return slices.Compact(out)
}

// empty reports whether rs holds nothing detour installed: policy routing
// it did not add does not count.
func (rs ruleset) empty() bool {
	return rs.table == "" && !slices.ContainsFunc(rs.rules, func(r ipRule) bool { return !r.kept }) &&
		!slices.ContainsFunc(rs.routes, func(r localRoute) bool { return !r.kept })
}

// keptText is the policy routing of rs that detour did not add, a line
// per rule or route as policyText prints it.
func (rs ruleset) keptText() []string {
	var kept ruleset
	for _, r := range rs.rules {
		if r.kept {
			r.kept = false // the command, without Show's note
			kept.rules = append(kept.rules, r)
		}
	}
	for _, r := range rs.routes {
		if r.kept {
			r.kept = false
			kept.routes = append(kept.routes, r)
		}
	}
	if kept.empty() {
		return nil
	}
	return strings.Split(kept.policyText(), "\n")
}
