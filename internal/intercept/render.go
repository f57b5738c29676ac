package intercept

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Render returns the exact text of what Apply installs: the nftables table
// as `nft list table inet detour` prints it, then the policy routing as
// `ip rule` / `ip route` commands.
func Render(o Options) (string, error) {
	if err := o.Validate(); err != nil {
		return "", err
	}
	return build(o.withDefaults()).String(), nil
}

// String prints the ruleset: the table in nft syntax (if there is one),
// then one ip command per policy rule and route.
func (rs ruleset) String() string {
	var b strings.Builder
	if rs.table != "" {
		fmt.Fprintf(&b, "table inet %s {\n", rs.table)
		for i, c := range rs.chains {
			if i > 0 {
				b.WriteString("\n")
			}
			fmt.Fprintf(&b, "\tchain %s {\n", c.name)
			if c.hook != "" {
				fmt.Fprintf(&b, "\t\ttype %s hook %s priority %s; policy %s;\n", c.kind, c.hook, priorityName(c.priority, c.hook), c.policy)
			}
			for _, r := range c.rules {
				fmt.Fprintf(&b, "\t\t%s\n", ruleString(r))
			}
			b.WriteString("\t}\n")
		}
		b.WriteString("}\n")
	}
	b.WriteString(rs.policy())
	return b.String()
}

// policyText is the policy part of String, one line without its newline:
// what missingParts names.
func (rs ruleset) policyText() string { return strings.TrimSuffix(rs.policy(), "\n") }

// policy prints the policy rules and routes as ip commands, a line each.
func (rs ruleset) policy() string {
	var b strings.Builder
	for _, v6 := range []bool{false, true} {
		ip := "ip"
		if v6 {
			ip = "ip -6"
		}
		for _, r := range rs.rules {
			if r.v6 == v6 {
				mark := fmt.Sprintf("%#x", r.mark)
				if r.mask != 0xffffffff {
					mark += fmt.Sprintf("/%#x", r.mask)
				}
				fmt.Fprintf(&b, "%s rule add fwmark %s lookup %d%s\n", ip, mark, r.table, keptNote(r.kept))
			}
		}
		for _, r := range rs.routes {
			if r.v6 == v6 {
				dst := "0.0.0.0/0"
				if v6 {
					dst = "::/0"
				}
				fmt.Fprintf(&b, "%s route add local %s dev lo table %d%s\n", ip, dst, r.table, keptNote(r.kept))
			}
		}
	}
	return b.String()
}

// keptNote marks, in Show's text, a rule or route detour uses but did not
// add: it was there before, and stays when detour's rules go.
func keptNote(kept bool) string {
	if !kept {
		return ""
	}
	return "\t# not detour's: there before it, used and never removed"
}

// priorityName prints a chain priority the way nft does: by its standard
// name, with a small offset if any, else as a number.
func priorityName(p int32, hook string) string {
	std := []struct {
		name string
		val  int32
		hook string // "" = any hook
	}{
		{"raw", -300, ""}, {"mangle", -150, ""}, {"dstnat", -100, "prerouting"},
		{"filter", 0, ""}, {"security", 50, ""}, {"srcnat", 100, "postrouting"},
	}
	for _, s := range std {
		if s.hook != "" && s.hook != hook {
			continue
		}
		switch off := p - s.val; {
		case off == 0:
			return s.name
		case off > 0 && off <= 10:
			return fmt.Sprintf("%s + %d", s.name, off)
		case off < 0 && off >= -10:
			return fmt.Sprintf("%s - %d", s.name, -off)
		}
	}
	return strconv.Itoa(int(p))
}

// ruleString prints a rule's statements, leaving out the protocol matches
// that nft hides because a later match implies them (`tcp dport` implies
// `meta l4proto tcp`, `ip daddr` implies `meta nfproto ipv4`).
func ruleString(r []stmt) string {
	implied := func(i int, ok func(stmt) bool) bool {
		return slices.ContainsFunc(r[i+1:], ok)
	}
	var words []string
	for i, s := range r {
		switch s := s.(type) {
		case matchL4ProtoTCP:
			if implied(i, func(t stmt) bool {
				switch t.(type) {
				case matchDport, matchNotSYN:
					return true
				}
				return false
			}) {
				continue
			}
		case matchNFProto:
			if implied(i, func(t stmt) bool { d, ok := t.(matchDaddr); return ok && d.v6 == s.v6 }) {
				continue
			}
		}
		words = append(words, stmtString(s))
	}
	return strings.Join(words, " ")
}

func stmtString(s stmt) string {
	switch s := s.(type) {
	case matchIIFName:
		names := slices.Clone(s.names)
		slices.SortFunc(names, compareIfName)
		quoted := make([]string, len(names))
		for i, n := range names {
			quoted[i] = strconv.Quote(n)
		}
		return "iifname " + list(quoted, len(quoted) > 1)
	case matchL4ProtoTCP:
		return "meta l4proto tcp"
	case matchNFProto:
		return "meta nfproto " + ipName(s.v6, "ipv4", "ipv6")
	case matchDaddr:
		elems := make([]string, len(s.ranges))
		for i, r := range s.ranges {
			elems[i] = r.String()
		}
		return ipName(s.v6, "ip", "ip6") + " daddr " + list(elems, true)
	case matchDport:
		ports := slices.Clone(s.ports)
		slices.SortFunc(ports, func(a, b PortRange) int { return int(a.First) - int(b.First) })
		elems := make([]string, len(ports))
		for i, r := range ports {
			elems[i] = r.String()
		}
		return "tcp dport " + list(elems, len(s.ports) > 1)
	case matchMark:
		return fmt.Sprintf("meta mark 0x%08x", s.mark)
	case matchSkuid:
		return "meta skuid " + list(numbers(s.uids), len(s.uids) > 1)
	case matchSocketTransparent:
		return "socket transparent 1"
	case matchNotSYN:
		return "tcp flags != syn / fin,syn,rst,ack"
	case matchFibDaddrLocal:
		return "fib daddr type local"
	case setMark:
		return fmt.Sprintf("meta mark set 0x%08x", s.mark)
	case tproxyTo:
		to := ""
		if s.addr.IsValid() {
			to = s.addr.String()
			if s.v6 {
				to = "[" + to + "]"
			}
		}
		return fmt.Sprintf("tproxy %s to %s:%d", ipName(s.v6, "ip", "ip6"), to, s.port)
	case redirectTo:
		return fmt.Sprintf("redirect to :%d", s.port)
	case verdict:
		return string(s)
	case unknown:
		return string(s)
	case comment:
		return "comment " + strconv.Quote(string(s))
	}
	return fmt.Sprintf("<%T>", s)
}

// String prints a range as nft does: a CIDR, a single address or first-last.
func (r addrRange) String() string {
	if p, ok := r.prefix(); ok {
		if p.IsSingleIP() {
			return p.Addr().String()
		}
		return p.String()
	}
	return r.first.String() + "-" + r.last.String()
}

// list prints one value, or a set of values in braces.
func list(elems []string, braces bool) string {
	if !braces {
		return strings.Join(elems, ", ")
	}
	return "{ " + strings.Join(elems, ", ") + " }"
}

func numbers(xs []uint32) []string {
	xs = slices.Clone(xs)
	slices.Sort(xs)
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = strconv.FormatUint(uint64(x), 10)
	}
	return out
}

func ipName(v6 bool, four, six string) string {
	if v6 {
		return six
	}
	return four
}

// compareIfName orders interface names as nft lists them: as the 16-byte
// kernel name read as a little-endian number, so shorter names come first
// and equal lengths compare from the last byte.
func compareIfName(a, b string) int {
	if len(a) != len(b) {
		return len(a) - len(b)
	}
	for i := len(a) - 1; i >= 0; i-- {
		if a[i] != b[i] {
			return int(a[i]) - int(b[i])
		}
	}
	return 0
}
