package intercept

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Mode is the kernel mechanism that diverts connections to detour.
type Mode string

const (
	// ModeTProxy diverts forwarded traffic on a router with TPROXY; the
	// accepted socket's local address is the original destination.
	ModeTProxy Mode = "tproxy"
	// ModeRedirect rewrites the destination of local (and, with Interfaces,
	// forwarded) connections with NAT REDIRECT; the original destination is
	// read back with SO_ORIGINAL_DST.
	ModeRedirect Mode = "redirect"
)

// PortRange is an inclusive range of destination TCP ports; a single port
// has First == Last.
type PortRange struct{ First, Last uint16 }

// PortList makes a single-port range of each port.
func PortList(ports ...uint16) []PortRange {
	out := make([]PortRange, len(ports))
	for i, p := range ports {
		out[i] = PortRange{p, p}
	}
	return out
}

// String prints the range as nft does: 80, or 8000-8100.
func (r PortRange) String() string {
	if r.First == r.Last {
		return strconv.Itoa(int(r.First))
	}
	return fmt.Sprintf("%d-%d", r.First, r.Last)
}

// Contains reports whether p is in r.
func (r PortRange) Contains(p uint16) bool { return r.First <= p && p <= r.Last }

// Defaults applied to zero-valued Options fields. The mark and table are the
// ones the TPROXY tutorials use, so hand-written docs and detour agree.
const (
	DefaultTProxyMark   uint32 = 0x1
	DefaultRouteTable          = 100
	DefaultUpstreamMark uint32 = 0x2
	DefaultTableName           = "detour"
)

// Options describes the interception detour installs. The zero values of
// TProxyMark, RouteTable, UpstreamMark and TableName select the defaults.
type Options struct {
	Mode Mode
	// Ports are the destination TCP ports to intercept; required.
	// Overlapping and adjacent ranges are merged, as nft merges them.
	Ports        []PortRange
	Destinations []netip.Prefix // destination CIDRs; empty = any (IPv4 and IPv6)
	// ExcludeDestinations are never diverted, even inside Destinations
	// (iptables' `-d CIDR -j RETURN` before the REDIRECT, Istio's
	// excludeOutboundIPRanges). Those of a family detour does not
	// intercept need no rule and get none.
	ExcludeDestinations []netip.Prefix
	// Interfaces are incoming interfaces. tproxy: empty = any. redirect: if
	// non-empty, forwarded connections arriving on them are redirected too
	// (NAT gateway); local connections (OUTPUT) are always redirected.
	Interfaces []string
	// ListenV4 and ListenV6 are detour's listeners. A zero value leaves that
	// family alone. The port is the tproxy/redirect target; a specified
	// address is also used as the tproxy address.
	ListenV4     netip.AddrPort
	ListenV6     netip.AddrPort
	TProxyMark   uint32   // fwmark set by tproxy rules; default 0x1
	RouteTable   int      // policy routing table for marked packets; default 100
	UpstreamMark uint32   // SO_MARK of detour's upstream sockets, never redirected; default 0x2
	ExcludeUIDs  []uint32 // redirect mode: connections of these uids are not redirected
	TableName    string   // nftables table (family inet); default "detour"
	NetNSFd      int      // network namespace to act in; 0 = the current one
}

// withDefaults fills the zero-valued fields that have defaults.
func (o Options) withDefaults() Options {
	if o.TProxyMark == 0 {
		o.TProxyMark = DefaultTProxyMark
	}
	if o.RouteTable == 0 {
		o.RouteTable = DefaultRouteTable
	}
	if o.UpstreamMark == 0 {
		o.UpstreamMark = DefaultUpstreamMark
	}
	if o.TableName == "" {
		o.TableName = DefaultTableName
	}
	return o
}

// Validate reports every problem with o, each naming the field at fault.
func (o Options) Validate() error {
	o = o.withDefaults()
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	switch o.Mode {
	case ModeTProxy, ModeRedirect:
	case "":
		bad("intercept: Mode is empty; use %q or %q", ModeTProxy, ModeRedirect)
	default:
		bad("intercept: Mode %q is unknown; use %q or %q", o.Mode, ModeTProxy, ModeRedirect)
	}
	if len(o.Ports) == 0 {
		bad("intercept: Ports is empty; name at least one destination TCP port to intercept")
	}
	for _, r := range o.Ports {
		switch {
		case r.First == 0:
			bad("intercept: Ports contains 0 (in %s); ports are 1-65535", r)
		case r.First > r.Last:
			bad("intercept: Ports range %d-%d runs backwards; write %d-%d", r.First, r.Last, r.Last, r.First)
		}
	}

	v4, v6 := o.ListenV4.IsValid(), o.ListenV6.IsValid()
	if !v4 && !v6 {
		bad("intercept: ListenV4 and ListenV6 are both unset; give detour's listener address for at least one family")
	}
	if v4 {
		if a := o.ListenV4.Addr(); !a.Is4() {
			bad("intercept: ListenV4 %s is not an IPv4 address", o.ListenV4)
		}
		if o.ListenV4.Port() == 0 {
			bad("intercept: ListenV4 %s has port 0; give the listener's port", o.ListenV4)
		}
	}
	if v6 {
		if a := o.ListenV6.Addr(); !a.Is6() || a.Is4In6() {
			bad("intercept: ListenV6 %s is not an IPv6 address", o.ListenV6)
		}
		if o.ListenV6.Port() == 0 {
			bad("intercept: ListenV6 %s has port 0; give the listener's port", o.ListenV6)
		}
		if o.ListenV6.Addr().Zone() != "" {
			bad("intercept: ListenV6 %s has a zone, which rules cannot express", o.ListenV6)
		}
	}

	for _, p := range o.Destinations {
		switch {
		case !p.IsValid():
			bad("intercept: Destinations contains an invalid prefix")
		case p.Addr().Is4In6():
			bad("intercept: Destinations %s is IPv4-mapped IPv6; write it as an IPv4 prefix", p)
		case p.Addr().Is4() && !v4:
			bad("intercept: Destinations %s is IPv4 but ListenV4 is unset", p)
		case p.Addr().Is6() && !v6:
			bad("intercept: Destinations %s is IPv6 but ListenV6 is unset", p)
		}
	}

	for _, p := range o.ExcludeDestinations {
		switch {
		case !p.IsValid():
			bad("intercept: ExcludeDestinations contains an invalid prefix")
		case p.Addr().Is4In6():
			bad("intercept: ExcludeDestinations %s is IPv4-mapped IPv6; write it as an IPv4 prefix", p)
		}
	}

	for _, name := range o.Interfaces {
		if err := CheckIfName(name); err != nil {
			bad("intercept: Interfaces: %v", err)
		}
	}

	if o.UpstreamMark == o.TProxyMark {
		bad("intercept: UpstreamMark and TProxyMark are both %#x; they must differ", o.TProxyMark)
	}
	if err := o.validateTarget(); err != nil {
		errs = append(errs, err)
	}

	if o.Mode == ModeTProxy && len(o.ExcludeUIDs) > 0 {
		bad("intercept: ExcludeUIDs applies to redirect mode only (tproxy intercepts forwarded traffic, which has no local uid)")
	}
	// REDIRECT on an incoming interface rewrites the destination to that
	// interface's primary address, never to loopback, so a loopback-only
	// listener would refuse every gateway connection.
	if o.Mode == ModeRedirect && len(o.Interfaces) > 0 {
		for _, ap := range []netip.AddrPort{o.ListenV4, o.ListenV6} {
			if ap.IsValid() && ap.Addr().IsLoopback() {
				bad("intercept: listener %s is on loopback, but redirect on Interfaces sends connections to the interface's address; listen on the unspecified address instead", ap)
			}
		}
	}
	return errors.Join(errs...)
}

// CheckIfName accepts what the kernel accepts as an interface name, and
// no wildcard.
func CheckIfName(name string) error {
	switch {
	case name == "":
		return errors.New("empty interface name")
	case len(name) > 15:
		return fmt.Errorf("interface name %q is longer than 15 bytes", name)
	case strings.Contains(name, ":"):
		// iptables takes eth0:1, and matches nothing with it: the
		// kernel names no interface so (it is an address label).
		return fmt.Errorf("interface name %q: the kernel names no interface with a colon (%s is an address label); give the interface, %s", name, name, name[:strings.Index(name, ":")])
	case strings.ContainsAny(name, "/ \t\n\x00"), name == ".", name == "..":
		return fmt.Errorf("interface name %q is not a valid name", name)
	case strings.Contains(name, "*"):
		return fmt.Errorf("interface name %q: wildcards are not supported; list the interfaces", name)
	}
	return nil
}

// CheckTableName accepts nft identifiers, so the table can also be named
// on the nft command line.
func CheckTableName(name string) error {
	if len(name) > 255 {
		return fmt.Errorf("table name %q is longer than 255 bytes", name)
	}
	for i, r := range name {
		letter := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z'
		if i == 0 && !letter || !letter && !(r >= '0' && r <= '9') && r != '_' && r != '-' {
			return fmt.Errorf("table name %q is not an nft identifier (a letter, then letters, digits, _ or -)", name)
		}
	}
	return nil
}

// validateTarget checks only what Clean, Show and Installed use, so they
// work with the same flags as Apply but without ports or listeners.
func (o Options) validateTarget() error {
	o = o.withDefaults()
	var errs []error
	if err := CheckTableName(o.TableName); err != nil {
		errs = append(errs, fmt.Errorf("intercept: TableName: %w", err))
	}
	// 253-255 are the kernel's default, main and local tables.
	if err := CheckRouteTable(o.RouteTable); err != nil {
		errs = append(errs, fmt.Errorf("intercept: RouteTable %w", err))
	}
	if o.NetNSFd < 0 {
		errs = append(errs, fmt.Errorf("intercept: NetNSFd %d is not a file descriptor", o.NetNSFd))
	}
	return errors.Join(errs...)
}

// CheckRouteTable accepts a policy routing table for the tproxy route:
// 1 to 2^32-1, but not the kernel's default, main and local (253-255).
func CheckRouteTable(t int) error {
	if t < 0 || t == 253 || t == 254 || t == 255 || int64(t) > 0xffffffff {
		return fmt.Errorf("%d is reserved (default, main, local) or out of range (1 to 4294967295); pick an unused table such as %d", t, DefaultRouteTable)
	}
	return nil
}
