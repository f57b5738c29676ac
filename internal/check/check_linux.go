package check

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/detour-proxy/detour/internal/intercept"
	"github.com/detour-proxy/detour/internal/listen"
	"github.com/detour-proxy/detour/internal/tcpproxy"
)

const fixRoot = "run detour as root, or grant the binary the capability: setcap cap_net_admin,cap_net_raw+ep $(command -v detour)"

// probe is one check that needs the kernel to accept something; it runs in
// the throwaway namespace fd.
type probe struct {
	name string
	mode intercept.Mode // "" = both modes need it
	v6   bool           // only IPv6 needs it: a warning where the namespace has no IPv6
	fix  string
	run  func(ctx context.Context, fd int) error
}

// probes are the kernel probes; with noV6 (the namespace check runs in has
// no IPv6, so run listens on IPv4 only) detour's rules are probed as run
// would install them there, IPv4 only.
func probes(noV6 bool, rules *intercept.Options) []probe {
	filterPre := chainSpec{nftables.ChainTypeFilter, nftables.ChainHookPrerouting, *nftables.ChainPriorityMangle}
	filterOut := chainSpec{nftables.ChainTypeFilter, nftables.ChainHookOutput, *nftables.ChainPriorityFilter}
	natOut := chainSpec{nftables.ChainTypeNAT, nftables.ChainHookOutput, *nftables.ChainPriorityNATDest}
	return []probe{
		{"nftables", "", false, "modprobe nf_tables (the kernel needs CONFIG_NF_TABLES and CONFIG_NF_TABLES_INET)",
			func(_ context.Context, fd int) error { return nftProbe(fd, "probe_table", nil) }},
		{"nftables tproxy expression", intercept.ModeTProxy, false, "modprobe nft_tproxy (CONFIG_NFT_TPROXY)",
			func(_ context.Context, fd int) error {
				return nftProbe(fd, "probe_tproxy", &filterPre,
					tcp(port(1), &expr.TProxy{Family: unix.NFPROTO_IPV4, TableFamily: unix.NFPROTO_INET, RegPort: 1}),
					tcp(port(1), &expr.TProxy{Family: unix.NFPROTO_IPV6, TableFamily: unix.NFPROTO_INET, RegPort: 1}))
			}},
		{"nftables socket expression", intercept.ModeTProxy, false, "modprobe nft_socket (CONFIG_NFT_SOCKET)",
			func(_ context.Context, fd int) error {
				return nftProbe(fd, "probe_socket", &filterPre, []expr.Any{
					&expr.Socket{Key: expr.SocketKeyTransparent, Register: 1},
					&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{1}},
					&expr.Verdict{Kind: expr.VerdictAccept},
				})
			}},
		{"nftables fib expression", intercept.ModeTProxy, false, "modprobe nft_fib_inet (CONFIG_NFT_FIB_INET)",
			func(_ context.Context, fd int) error {
				return nftProbe(fd, "probe_fib", &filterPre, []expr.Any{
					&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
					&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.NativeEndian.AppendUint32(nil, unix.RTN_LOCAL)},
					&expr.Verdict{Kind: expr.VerdictReturn},
				})
			}},
		{"nftables nat redirect", intercept.ModeRedirect, false, "modprobe nft_chain_nat nft_redir (CONFIG_NFT_NAT, CONFIG_NFT_REDIR)",
			func(_ context.Context, fd int) error {
				return nftProbe(fd, "probe_redirect", &natOut,
					tcp(port(1), &expr.Redir{RegisterProtoMin: 1, RegisterProtoMax: 1, Flags: unix.NF_NAT_RANGE_PROTO_SPECIFIED}))
			}},
		{"nftables meta mark", "", false, "modprobe nf_tables (meta is part of it; CONFIG_NF_TABLES)",
			func(_ context.Context, fd int) error {
				return nftProbe(fd, "probe_mark", &filterOut,
					[]expr.Any{&expr.Meta{Key: expr.MetaKeyMARK, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: native32(2)}, &expr.Verdict{Kind: expr.VerdictReturn}},
					[]expr.Any{&expr.Immediate{Register: 1, Data: native32(1)}, &expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1}})
			}},
		{"nftables meta skuid", intercept.ModeRedirect, false, "modprobe nf_tables (meta is part of it; CONFIG_NF_TABLES)",
			func(_ context.Context, fd int) error {
				return nftProbe(fd, "probe_skuid", &filterOut, []expr.Any{
					&expr.Meta{Key: expr.MetaKeySKUID, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: native32(0)}, &expr.Verdict{Kind: expr.VerdictReturn},
				})
			}},
		{"nftables interval sets", "", false, "modprobe nft_set_rbtree (built into nf_tables on recent kernels; CONFIG_NFT_SET_RBTREE)",
			func(_ context.Context, fd int) error { return intervalProbe(fd, filterOut) }},
		{"policy routing IPv4 (ip rule fwmark, local route)", intercept.ModeTProxy, false, "the kernel needs CONFIG_IP_MULTIPLE_TABLES",
			func(_ context.Context, fd int) error { return policyProbe(fd, false) }},
		{"policy routing IPv6 (ip -6 rule fwmark, local route)", intercept.ModeTProxy, true, "the kernel needs CONFIG_IPV6_MULTIPLE_TABLES, and IPv6 enabled",
			func(_ context.Context, fd int) error { return policyProbe(fd, true) }},
		rulesCheck(intercept.ModeTProxy, noV6, rules),
		rulesCheck(intercept.ModeRedirect, noV6, rules),
		{"SO_ORIGINAL_DST (IPv4, real redirect)", intercept.ModeRedirect, false, "modprobe nf_conntrack nf_nat (CONFIG_NF_CONNTRACK, CONFIG_NF_NAT)",
			func(ctx context.Context, fd int) error { return origDstProbe(ctx, fd, false) }},
		{"IP6T_SO_ORIGINAL_DST (IPv6, real redirect)", intercept.ModeRedirect, true, "modprobe nf_conntrack nf_nat (CONFIG_NF_CONNTRACK, CONFIG_NF_NAT, IPv6 enabled)",
			func(ctx context.Context, fd int) error { return origDstProbe(ctx, fd, true) }},
	}
}

// Run performs the checks o asks for. It changes nothing on the host: kernel
// probes run in a network namespace made for them and gone afterwards, and
// the namespace check runs in (the one run would use) is only read, its
// listener addresses bound for a moment and never listened on.
func Run(ctx context.Context, o Options) []Result {
	here := listen.Inspect()
	noV6 := here.NoIPv6 != ""
	rs := []Result{privileges()}
	if o.wants(intercept.ModeTProxy) {
		rs = append(rs,
			result("IP_TRANSPARENT socket option", setsockopt(unix.AF_INET, unix.SOL_IP, unix.IP_TRANSPARENT, 1), fixRoot),
			v6Only(here, result("IPV6_TRANSPARENT socket option", setsockopt(unix.AF_INET6, unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1), fixRoot+"; if IPv6 is disabled, listen on IPv4 only")))
	}
	rs = append(rs, result("SO_MARK socket option", setsockopt(unix.AF_INET, unix.SOL_SOCKET, unix.SO_MARK, 2), fixRoot))
	rs = append(rs, ownerDirCheck(), lingerCheck())
	if o.AccessLog != "" {
		rs = append(rs, accessLogCheck(o.AccessLog))
	}
	rs = append(rs, namespaceChecks(here, o.Listeners)...)
	if o.Rules != nil {
		rs = append(rs, interfaceChecks(o.Rules.Interfaces)...)
	}

	fd, err := newProbeNS()
	rs = append(rs, result("throwaway network namespace for the probes", err, "run detour check as root (creating a network namespace needs CAP_SYS_ADMIN)"))
	if err == nil {
		defer unix.Close(fd)
	}
	for _, p := range probes(noV6, o.Rules) {
		if p.mode != "" && !o.wants(p.mode) {
			continue
		}
		switch {
		case err != nil:
			rs = append(rs, Result{Name: p.name, Detail: "not probed: no probe namespace", Fix: "run detour check as root"})
		case ctx.Err() != nil:
			rs = append(rs, Result{Name: p.name, Detail: "not probed: " + ctx.Err().Error(), Fix: "run detour check again"})
		case p.v6:
			rs = append(rs, v6Only(here, result(p.name, p.run(ctx, fd), p.fix)))
		default:
			rs = append(rs, result(p.name, p.run(ctx, fd), p.fix))
		}
	}

	if o.Router {
		// IPv6 forwarding is a warning: an IPv4-only router works without it.
		why := "IPv6 clients are not routed (fine on an IPv4-only router)"
		if noV6 {
			why = "IPv6 is unavailable here, so only IPv4 clients are routed"
		}
		v6fwd := sysctlIs("net.ipv6.conf.all.forwarding", "1", why)
		v6fwd.Warn = !v6fwd.OK
		if noV6 && !v6fwd.OK {
			v6fwd.Fix = "to route IPv6 too: " + here.EnableIPv6 + ", then " + v6fwd.Fix
		}
		rs = append(rs, sysctlIs("net.ipv4.ip_forward", "1", "a router must forward IPv4"), v6fwd)
	}
	return rs
}

// v6Only turns a failure that only IPv6 meets into a warning where the
// namespace has no IPv6: run listens on IPv4 only there and never needs it.
func v6Only(here listen.Namespace, r Result) Result {
	if !r.OK && here.NoIPv6 != "" {
		r.Warn = true
		r.Detail += " (run listens on IPv4 only here: IPv6 is unavailable)"
	}
	return r
}

// namespaceChecks inspect the namespace check runs in, which the throwaway
// probe namespace cannot show: loopback, IPv6, and whether each listener
// run would open can bind.
func namespaceChecks(here listen.Namespace, ls []Listener) []Result {
	lo := Result{Name: "loopback lo (this network namespace)", OK: here.LoopbackUp, Detail: "up"}
	if !here.LoopbackUp {
		lo.Detail = "down; 127.0.0.1, ::1 and tproxy's local routes need it up"
		lo.Fix = "ip link set lo up"
	}
	v6 := Result{Name: "IPv6 (this network namespace)", OK: true, Detail: "available"}
	if here.NoIPv6 != "" {
		v6 = Result{Name: v6.Name, Warn: true,
			Detail: here.NoIPv6 + "; run listens on IPv4 only and intercepts no IPv6",
			Fix:    "to intercept IPv6 too: " + here.EnableIPv6}
	}
	rs := []Result{lo, v6}
	for _, l := range ls {
		if l.Default && l.Addr.Addr().Is6() && here.NoIPv6 != "" {
			continue // run leaves this default out, as the IPv6 line says
		}
		rs = append(rs, listenerCheck(l))
	}
	return rs
}

// listenerCheck binds l's address as run would listen on it. An address
// in use is a warning: most often it is a detour that is running already.
func listenerCheck(l Listener) Result {
	r := Result{Name: fmt.Sprintf("listen %s (%s)", l.Addr, l.Mode), OK: true}
	err := listen.CanListen(listen.Options{Mode: listen.Mode(l.Mode), Addr: l.Addr})
	if err == nil {
		return r
	}
	r.OK, r.Detail, r.Fix = false, err.Error(), "see `detour run --help` for --listen"
	var le *listen.Error
	if errors.As(err, &le) {
		r.Detail = le.Err.Error()
		if le.Fix != "" {
			r.Fix = le.Fix
		}
	}
	if errors.Is(err, unix.EADDRINUSE) {
		r.Warn = true
		r.Detail += " (a detour already running? then all is well)"
	}
	return r
}

// privileges checks for CAP_NET_ADMIN, which rules, marks and transparent
// sockets all need.
func privileges() Result {
	const name = "privileges (root or CAP_NET_ADMIN)"
	caps, err := effectiveCaps()
	if err != nil {
		return Result{Name: name, Detail: err.Error(), Fix: fixRoot}
	}
	if caps&(1<<unix.CAP_NET_ADMIN) == 0 {
		return Result{Name: name, Detail: fmt.Sprintf("uid %d without CAP_NET_ADMIN", os.Geteuid()), Fix: fixRoot}
	}
	detail := "CAP_NET_ADMIN"
	if os.Geteuid() == 0 {
		detail = "root"
	}
	return Result{Name: name, OK: true, Detail: detail}
}

func effectiveCaps() (uint64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapEff:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	return 0, errors.New("no CapEff in /proc/self/status")
}

// ownerDirCheck: run takes a lock per table in intercept.OwnerDir (root's
// /run/detour), which CAP_NET_ADMIN alone does not let it write.
func ownerDirCheck() Result {
	return result("lock directory "+intercept.OwnerDir+" (writable)", intercept.CheckOwnerDir(), intercept.OwnerDirFix())
}

// lingerCheck says whether the L4 loops can wait for answers in the
// kernel (tcpproxy.LingerSupport). They serve without it, more slowly,
// and say nothing themselves: a warning.
func lingerCheck() Result {
	r := result("epoll_pwait2 (the L4 loops' wait for answers)", tcpproxy.LingerSupport(),
		tcpproxy.LingerFix+" (detour runs without it, at about 0.93 × the keep-alive rate)")
	r.Warn = !r.OK
	return r
}

// accessLogCheck says whether run could open the access log file at path
// for appending, creating it if need be (run exits 2 when it cannot). It
// creates nothing: an existing file must be a writable file, a missing
// one needs a directory it may create it in.
func accessLogCheck(path string) Result {
	return result("access log "+path+" (can be opened for appending)", canAppend(path),
		"give access_log (--access-log) a file detour's user may create or append to, in a directory that exists; or stdout, or off")
}

func canAppend(path string) error {
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		dir := filepath.Dir(path)
		if err := unix.Faccessat(unix.AT_FDCWD, dir, unix.W_OK|unix.X_OK, unix.AT_EACCESS); err != nil {
			return fmt.Errorf("cannot create it in %s: %w", dir, err)
		}
		return nil
	case err != nil:
		return err
	case fi.IsDir():
		return errors.New("is a directory")
	}
	if err := unix.Faccessat(unix.AT_FDCWD, path, unix.W_OK, unix.AT_EACCESS); err != nil {
		return fmt.Errorf("not writable: %w", err)
	}
	return nil
}

// setsockopt tries an option on a plain socket that is never bound.
func setsockopt(domain, level, opt, value int) error {
	s, err := unix.Socket(domain, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(s)
	return unix.SetsockoptInt(s, level, opt, value)
}

// sysctlIs reads (never writes) a sysctl of the host's namespace.
func sysctlIs(key, want, why string) Result {
	r := Result{Name: key, Fix: fmt.Sprintf("sysctl -w %s=%s (and persist it in /etc/sysctl.d/)", key, want)}
	v, err := os.ReadFile("/proc/sys/" + strings.ReplaceAll(key, ".", "/"))
	switch got := strings.TrimSpace(string(v)); {
	case err != nil:
		r.Detail = err.Error()
	case got != want:
		r.Detail = fmt.Sprintf("is %s; %s", got, why)
	default:
		r.OK, r.Detail = true, "is "+got
	}
	return r
}

// newProbeNS makes an anonymous network namespace with lo up and returns a
// descriptor for it. Nothing names it, so it disappears with the last
// descriptor or socket, even if detour is killed.
func newProbeNS() (int, error) {
	fd := -1
	err := onLockedThread(func() error {
		h, err := netns.New() // unshare(CLONE_NEWNET): this thread moves in
		if err != nil {
			return fmt.Errorf("unshare network namespace: %w", err)
		}
		fd = int(h)
		lo, err := netlink.LinkByName("lo")
		if err == nil {
			err = netlink.LinkSetUp(lo)
		}
		if err != nil {
			return fmt.Errorf("bring up lo: %w", err)
		}
		return nil
	})
	if err != nil && fd >= 0 {
		unix.Close(fd)
	}
	return fd, err
}

// inNS runs fn on a thread inside the namespace fd; sockets fn makes stay
// there.
func inNS(fd int, fn func() error) error {
	return onLockedThread(func() error {
		if err := netns.Set(netns.NsHandle(fd)); err != nil {
			return fmt.Errorf("enter probe namespace: %w", err)
		}
		return fn()
	})
}

// onLockedThread runs fn on its own OS thread and moves the thread back to
// the original namespace; if that fails the thread is thrown away, so no
// goroutine ever runs in a namespace it did not ask for.
func onLockedThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return // still locked: the thread ends with the goroutine
		}
		defer orig.Close()
		err = fn()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

type chainSpec struct {
	kind nftables.ChainType
	hook *nftables.ChainHook
	prio nftables.ChainPriority
}

// nftProbe adds a table, and with c a base chain holding the rules, in one
// batch; the kernel refuses the batch if it lacks any expression used.
func nftProbe(fd int, table string, c *chainSpec, rules ...[]expr.Any) error {
	conn, err := nftables.New(nftables.WithNetNSFd(fd))
	if err != nil {
		return err
	}
	t := conn.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: table})
	if c != nil {
		ch := conn.AddChain(&nftables.Chain{Name: "c", Table: t, Type: c.kind, Hooknum: c.hook, Priority: &c.prio})
		for _, r := range rules {
			conn.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: r})
		}
	}
	return conn.Flush()
}

// intervalProbe matches ip daddr against an anonymous interval set.
func intervalProbe(fd int, c chainSpec) error {
	conn, err := nftables.New(nftables.WithNetNSFd(fd))
	if err != nil {
		return err
	}
	t := conn.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: "probe_interval"})
	ch := conn.AddChain(&nftables.Chain{Name: "c", Table: t, Type: c.kind, Hooknum: c.hook, Priority: &c.prio})
	// An explicit ID keeps google/nftables' global set counter out of it.
	set := &nftables.Set{Table: t, ID: 1, Name: "__set%d", Anonymous: true, Constant: true, Interval: true, KeyType: nftables.TypeIPAddr}
	elems := []nftables.SetElement{
		{Key: []byte{0, 0, 0, 0}, IntervalEnd: true},
		{Key: []byte{10, 0, 0, 0}},
		{Key: []byte{11, 0, 0, 0}, IntervalEnd: true},
	}
	if err := conn.AddSet(set, elems); err != nil {
		return err
	}
	conn.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID},
		&expr.Verdict{Kind: expr.VerdictReturn},
	}})
	return conn.Flush()
}

// tcp prefixes a rule with `meta l4proto tcp`.
func tcp(rest ...expr.Any) []expr.Any {
	return append([]expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
	}, rest...)
}

func port(p uint16) expr.Any {
	return &expr.Immediate{Register: 1, Data: binary.BigEndian.AppendUint16(nil, p)}
}

func native32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

// policyProbe adds `ip rule fwmark 1 lookup 100` and the local default
// route through lo in table 100, as tproxy needs.
func policyProbe(fd int, v6 bool) error {
	h, err := netlink.NewHandleAt(netns.NsHandle(fd), unix.NETLINK_ROUTE) // one socket, not one per family
	if err != nil {
		return err
	}
	defer h.Close()
	fam, dst := netlink.FAMILY_V4, &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
	if v6 {
		fam, dst = netlink.FAMILY_V6, &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	}
	r := netlink.NewRule()
	r.Family, r.Mark, r.Table = fam, 1, 100
	if err := h.RuleAdd(r); err != nil {
		return fmt.Errorf("ip rule add fwmark 1 lookup 100: %w", err)
	}
	lo, err := h.LinkByName("lo")
	if err != nil {
		return err
	}
	err = h.RouteAdd(&netlink.Route{Family: fam, Table: 100, Type: unix.RTN_LOCAL, Scope: unix.RT_SCOPE_HOST, LinkIndex: lo.Attrs().Index, Dst: dst})
	if err != nil {
		return fmt.Errorf("ip route add local %s dev lo table 100: %w", dst, err)
	}
	return nil
}

// rulesCheck is the probe of detour's complete ruleset for mode: the
// configuration's rules when they are for that mode, a generic set with
// every kind of match otherwise.
func rulesCheck(mode intercept.Mode, noV6 bool, rules *intercept.Options) probe {
	p := probe{name: "detour " + string(mode) + " rules install and remove", mode: mode,
		fix: "see the failing checks above; `detour rules apply --dry-run` prints the rules"}
	var o intercept.Options
	if rules != nil && rules.Mode == mode {
		o = *rules
		p.name += " (as configured)"
		p.fix = "see the failing checks above; `detour rules apply --dry-run` with the same -c and flags prints the rules"
	} else {
		o = genericRules(mode, noV6)
	}
	p.run = func(_ context.Context, fd int) error { return installAndRemove(fd, o) }
	return p
}

// interfaceChecks look the configured interfaces up where check runs. The
// rules match an interface by name, so a missing one is no error for run,
// but nothing is intercepted on it until it appears: a warning.
func interfaceChecks(names []string) []Result {
	var rs []Result
	for _, name := range names {
		r := Result{Name: "interface " + name + " (this network namespace)", OK: true, Detail: "present"}
		if _, err := net.InterfaceByName(name); err != nil {
			r = Result{Name: r.Name, Warn: true,
				Detail: "not found; the rules match it by name, so nothing arriving on it is intercepted until it exists",
				Fix:    "check intercept.interfaces (--intercept-iface) against `ip link`"}
		}
		rs = append(rs, r)
	}
	return rs
}

// genericRules is a complete ruleset for mode with every kind of match.
func genericRules(mode intercept.Mode, noV6 bool) intercept.Options {
	o := intercept.Options{
		Mode: mode, Ports: append(intercept.PortList(80, 443), intercept.PortRange{First: 8000, Last: 8100}),
		Destinations: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")},
		Interfaces:   []string{"eth0"},
		ListenV4:     netip.MustParseAddrPort("0.0.0.0:15001"), ListenV6: netip.MustParseAddrPort("[::]:15001"),
		TableName: "detour_probe_" + string(mode),
	}
	if mode == intercept.ModeRedirect {
		o.ExcludeUIDs = []uint32{0}
	}
	if noV6 {
		o.ListenV6, o.Destinations = netip.AddrPort{}, o.Destinations[:1]
	}
	return o
}

// installAndRemove installs rules o in the namespace fd, checks that
// they read back whole, and removes them.
func installAndRemove(fd int, o intercept.Options) error {
	o.NetNSFd = fd
	if err := intercept.Apply(o); err != nil {
		return err
	}
	missing, err := intercept.Missing(o)
	if err == nil && len(missing) > 0 {
		err = fmt.Errorf("installed, but reading them back misses %s", strings.Join(missing, ", "))
	}
	if installed != nil {
		installed(o)
	}
	if cerr := intercept.Clean(o); err == nil {
		err = cerr
	}
	return err
}

// installed, when set, sees each ruleset installAndRemove installed
// before it is removed: tests read it back from the probe namespace.
var installed func(intercept.Options)

// origDstProbe redirects a real connection inside the probe namespace and
// reads its original destination back, as the redirect listener does.
func origDstProbe(ctx context.Context, fd int, v6 bool) error {
	loop := netip.MustParseAddr("127.0.0.1")
	if v6 {
		loop = netip.IPv6Loopback()
	}
	var ln *net.TCPListener
	err := inNS(fd, func() error {
		l, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(loop, 0)))
		ln = l
		return err
	})
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	defer ln.Close()

	const origPort = 9 // discard: nothing listens on it in the probe namespace
	o := intercept.Options{Mode: intercept.ModeRedirect, Ports: intercept.PortList(origPort), NetNSFd: fd, TableName: "detour_probe_origdst"}
	listen := ln.Addr().(*net.TCPAddr).AddrPort()
	if v6 {
		o.ListenV6 = listen
	} else {
		o.ListenV4 = listen
	}
	if err := intercept.Apply(o); err != nil {
		return fmt.Errorf("install the redirect rule: %w", err)
	}
	defer intercept.Clean(o)

	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	want := netip.AddrPortFrom(loop, origPort)
	var c net.Conn
	err = inNS(fd, func() error {
		var d net.Dialer
		c, err = d.DialContext(ctx, "tcp", want.String())
		return err
	})
	if err != nil {
		return fmt.Errorf("connect to %s was not redirected: %w", want, err)
	}
	defer c.Close()
	deadline, _ := ctx.Deadline()
	ln.SetDeadline(deadline)
	acc, err := ln.AcceptTCP()
	if err != nil {
		return fmt.Errorf("accept the redirected connection: %w", err)
	}
	defer acc.Close()
	got, err := originalDst(acc, v6)
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("original destination reads %s, want %s", got, want)
	}
	return nil
}

// originalDst is getsockopt(SO_ORIGINAL_DST) / IP6T_SO_ORIGINAL_DST (both
// option 80), which fill a sockaddr_in / sockaddr_in6.
func originalDst(c *net.TCPConn, v6 bool) (netip.AddrPort, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	var sa [unix.SizeofSockaddrInet6]byte
	size := uint32(len(sa))
	level, name := unix.SOL_IP, "SO_ORIGINAL_DST"
	if v6 {
		level, name = unix.SOL_IPV6, "IP6T_SO_ORIGINAL_DST"
	}
	var errno unix.Errno
	err = raw.Control(func(fd uintptr) {
		_, _, errno = unix.Syscall6(unix.SYS_GETSOCKOPT, fd, uintptr(level), unix.SO_ORIGINAL_DST,
			uintptr(unsafe.Pointer(&sa[0])), uintptr(unsafe.Pointer(&size)), 0)
	})
	if err == nil && errno != 0 {
		err = errno
	}
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("getsockopt %s: %w", name, err)
	}
	port := binary.BigEndian.Uint16(sa[2:4])
	if v6 {
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte(sa[8:24])), port), nil
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(sa[4:8])), port), nil
}
