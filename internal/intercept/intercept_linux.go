package intercept

import (
	"errors"
	"fmt"
	"slices"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// Apply installs the interception described by o, replacing whatever detour
// installed before (for example the leftovers of a crashed run, also when
// that run used another mark or route table: the table records them). The
// nftables table is swapped in one atomic batch; the policy routing follows.
// If the policy routing fails, everything is removed again, the replaced
// install's policy routing included.
func Apply(o Options) error { return apply(o, true) }

// apply installs o's rules. When the policy routing fails, cleanOnFail
// removes everything (Apply: a start leaves nothing half made); Ensure
// keeps what it could install, since half the rules still divert more
// than none (IPv6 disabled under a running detour fails only its IPv6
// route).
func apply(o Options, cleanOnFail bool) error {
	if err := o.Validate(); err != nil {
		return err
	}
	o = o.withDefaults()
	rs := build(o)
	c, err := nftConn(o.NetNSFd)
	if err != nil {
		return fmt.Errorf("intercept: open nftables: %w", err)
	}
	prev := recordedPairs(c, o)
	if err := replaceTable(c, rs); err != nil {
		return fmt.Errorf("intercept: install table inet %s: %w%s", o.TableName, err, hint(err))
	}
	if err := applyPolicy(o, rs, prev); err != nil {
		err = fmt.Errorf("intercept: policy routing: %w%s", err, hint(err))
		if cleanOnFail {
			// The table that recorded prev is gone: clean them now or
			// nothing will find them again.
			_, cerr := clean(o, prev, true)
			err = errors.Join(err, cerr)
		}
		return err
	}
	return nil
}

// ownPair is the policy routing o's tproxy rules use.
func (o Options) ownPair() policyPair { return policyPair{o.TProxyMark, o.RouteTable} }

// ownPairs is the policy routing o installs: none in redirect mode, whose
// mark and route table are only defaults no rule of its uses, so that the
// policy routing of a tproxy table of another name is not taken for its
// own.
func (o Options) ownPairs() []policyPair {
	if o.Mode == ModeRedirect {
		return nil
	}
	return []policyPair{o.ownPair()}
}

// recordedPairs returns the policy routing that the installed table of o's
// name records, when it is not o's own: a previous install's. A table that
// cannot be read records nothing; Apply replaces it anyway.
func recordedPairs(c *nftables.Conn, o Options) []policyPair {
	rs, _, err := readTable(c, o.NetNSFd, o.TableName)
	if err != nil {
		return nil
	}
	return stalePairs(rs, o)
}

// stalePairs is the policy routing the table rs records, when it is not
// o's own.
func stalePairs(rs ruleset, o Options) []policyPair {
	if p, ok := recordedPolicy(rs); ok && !slices.Contains(o.ownPairs(), p) {
		return []policyPair{p}
	}
	return nil
}

// Drain stops diverting new connections while the ones already diverted go
// on: for the drain after SIGTERM, and for a reload that drops every port.
// It swaps in the same table minus what diverts a new connection, and
// leaves the policy routing; Clean removes the rest when they are done.
//
//   - tproxy: the tproxy rules go; the socket rule and the policy routing,
//     which deliver the open connections' packets, stay.
//   - redirect: an unconditional return goes to the top of each nat chain,
//     which sees only a connection's first packet. The redirect rules stay
//     below it because, with no rule left that uses conntrack, the kernel
//     stops tracking the namespace's connections and the open ones lose
//     their translation (and are reset).
func Drain(o Options) error {
	if err := o.Validate(); err != nil {
		return err
	}
	o = o.withDefaults()
	rs := build(o)
	for i, ch := range rs.chains {
		if ch.kind == "nat" {
			rs.chains[i].rules = append([][]stmt{{verdict("return")}}, ch.rules...)
			continue
		}
		rs.chains[i].rules = slices.DeleteFunc(slices.Clone(ch.rules), func(r []stmt) bool {
			return slices.ContainsFunc(r, func(s stmt) bool { _, ok := s.(tproxyTo); return ok })
		})
	}
	c, err := nftConn(o.NetNSFd)
	if err != nil {
		return fmt.Errorf("intercept: open nftables: %w", err)
	}
	if err := replaceTable(c, rs); err != nil {
		return fmt.Errorf("intercept: drain table inet %s: %w%s", o.TableName, err, hint(err))
	}
	return nil
}

// applyPolicy makes the policy routing match rs: a family's rule and route
// are added if rs has them, and removed (as leftovers) if it has not, as
// are those of the stale pairs a previous install recorded.
func applyPolicy(o Options, rs ruleset, stale []policyPair) error {
	p, err := openPolicy(o)
	if err != nil {
		return err
	}
	defer p.close()
	own := o.ownPair()
	for _, v6 := range []bool{false, true} {
		if slices.ContainsFunc(rs.rules, func(r ipRule) bool { return r.v6 == v6 }) {
			if err := p.ensure(own, v6); err != nil {
				return err
			}
		}
	}
	var errs []error
	for _, pp := range append(o.ownPairs(), stale...) {
		_, err := removePolicy(o, p, pp, rs, true)
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// removePolicy removes pp's rules and routes that rs does not have. Policy
// routing whose mark or route table a live detour holds (see ownPolicy) is
// in use, not left over, and stays: then it returns why. owning says
// whether the caller holds Own(o).
func removePolicy(o Options, p *policy, pp policyPair, rs ruleset, owning bool) (inUse error, err error) {
	keepRule := func(v6 bool) bool {
		return slices.Contains(rs.rules, ipRule{v6: v6, mark: pp.mark, mask: 0xffffffff, table: pp.table})
	}
	keepRoutes := func(v6 bool) bool { return slices.Contains(rs.routes, localRoute{v6: v6, table: pp.table}) }
	if keepRule(false) && keepRule(true) && keepRoutes(false) && keepRoutes(true) {
		return nil, nil
	}
	held, err := ownPolicy(o, pp, owning)
	if errors.Is(err, ErrOwned) {
		return err, nil
	}
	if err != nil {
		return nil, err
	}
	defer held.Release()
	var errs []error
	for _, v6 := range []bool{false, true} {
		if !keepRule(v6) {
			errs = append(errs, p.remove(pp, v6, keepRoutes(v6)))
		}
	}
	return nil, errors.Join(errs...)
}

// Clean removes what detour installs: the table, the `fwmark M lookup T`
// rules (IPv4 and IPv6) and the local default routes in table T, both for
// o's mark and table (in tproxy mode: redirect installs no policy routing)
// and for those the installed table records (so a plain `rules clean`
// also removes what `rules apply --route-table 200` added).
// Nothing else is touched, policy routing a live detour holds stays, and
// nothing being there is success. Only Mode, TableName, TProxyMark,
// RouteTable and NetNSFd matter.
//
// The caller holds Own(o) (a run at exit, `rules apply`), or nothing,
// in a namespace of its own (`detour check`'s probes).
func Clean(o Options) error {
	_, err := clean(o, nil, true)
	return err
}

// CleanUnowned is Clean for a caller that holds nothing (`rules clean`):
// it holds o's table while it removes it, and each mark and route table
// only while it removes that policy routing, so that a killed run's
// leftovers are removed also while another detour, with another table,
// holds the mark and route table they share. That policy routing is the
// live one's, and stays: inUse says so, naming its holder. A live detour
// that holds o's table is ErrOwned, and nothing is removed.
func CleanUnowned(o Options) (inUse []string, err error) {
	if err := o.validateTarget(); err != nil {
		return nil, err
	}
	o = o.withDefaults()
	w, err := own(o.NetNSFd, []hold{tableHold(o)})
	if err != nil {
		return nil, err
	}
	defer w.Release()
	return clean(o, nil, false)
}

// clean is Clean, also removing the policy routing of extra: what a table
// that is no longer there recorded. owning says whether the caller holds
// Own(o); inUse names the policy routing left because a live detour holds
// it.
func clean(o Options, extra []policyPair, owning bool) (inUse []string, _ error) {
	if err := o.validateTarget(); err != nil {
		return nil, err
	}
	o = o.withDefaults()
	var errs []error
	stale := slices.Clone(extra)
	c, err := nftConn(o.NetNSFd)
	if err == nil {
		for _, pp := range recordedPairs(c, o) {
			if !slices.Contains(stale, pp) {
				stale = append(stale, pp)
			}
		}
		err = deleteTable(c, o.TableName)
	}
	if err != nil {
		errs = append(errs, fmt.Errorf("intercept: remove table inet %s: %w%s", o.TableName, err, hint(err)))
	}
	p, err := openPolicy(o)
	if err != nil {
		return nil, errors.Join(append(errs, fmt.Errorf("intercept: policy routing: %w", err))...)
	}
	defer p.close()
	for _, pp := range append(o.ownPairs(), stale...) {
		owned, err := removePolicy(o, p, pp, ruleset{}, owning)
		if err != nil {
			errs = append(errs, fmt.Errorf("intercept: policy routing: %w", err))
		}
		if owned != nil {
			inUse = append(inUse, fmt.Sprintf("fwmark %#x lookup %d (%v)", pp.mark, pp.table, owned))
		}
	}
	return inUse, errors.Join(errs...)
}

// Show reads back what is installed and prints it like Render does, or
// "nothing installed". The policy routing shown is o's and the one the
// table records, whatever mark and route table o names.
func Show(o Options) (string, error) {
	rs, err := read(o)
	if err != nil {
		return "", err
	}
	if rs.empty() {
		return "nothing installed\n", nil
	}
	return rs.String(), nil
}

// Kept names, as ip commands, the policy routing of o (and that its table
// records) that is in place but was not added by detour: a rule or route
// made by hand before detour ran, which Apply uses and Clean leaves.
func Kept(o Options) ([]string, error) {
	rs, err := read(o)
	if err != nil {
		return nil, err
	}
	return rs.keptText(), nil
}

// Installed reports whether any part of detour's interception is present.
func Installed(o Options) (bool, error) {
	rs, err := read(o)
	return err == nil && !rs.empty(), err
}

// Missing names each part of what Apply(o) installs that the kernel no
// longer has as Apply left it: the table, a chain, a chain's rules, a
// policy rule or route; and a chain someone added to the table. Someone
// else's `nft flush ruleset` (a firewall reload) or `ip rule flush`
// removes them under a running detour, and traffic then bypasses it
// without an error anywhere.
func Missing(o Options) ([]string, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	o = o.withDefaults()
	got, err := read(o)
	if err != nil {
		return nil, err
	}
	return missingParts(build(o), got), nil
}

// Ensure puts back o's rules when part of them is missing (see Missing),
// and returns what was missing; nil when everything was in place. A
// running detour calls it every DefaultCheckInterval and on SIGHUP, as
// kube-proxy and Istio re-sync theirs.
func Ensure(o Options) (missing []string, err error) {
	missing, err = Missing(o)
	if err != nil || len(missing) == 0 {
		return missing, err
	}
	return missing, apply(o, false)
}

func read(o Options) (ruleset, error) {
	if err := o.validateTarget(); err != nil {
		return ruleset{}, err
	}
	o = o.withDefaults()
	c, err := nftConn(o.NetNSFd)
	if err != nil {
		return ruleset{}, fmt.Errorf("intercept: open nftables: %w", err)
	}
	rs, _, err := readTable(c, o.NetNSFd, o.TableName)
	if err != nil {
		return ruleset{}, fmt.Errorf("intercept: read table inet %s: %w%s", o.TableName, err, hint(err))
	}
	pairs := append(o.ownPairs(), stalePairs(rs, o)...)
	p, err := openPolicy(o)
	if err != nil {
		return ruleset{}, fmt.Errorf("intercept: policy routing: %w", err)
	}
	defer p.close()
	if err := p.read(&rs, pairs); err != nil {
		return ruleset{}, fmt.Errorf("intercept: policy routing: %w", err)
	}
	return rs, nil
}

// hint suggests what to do about the usual kernel errors.
func hint(err error) string {
	switch {
	case errors.Is(err, unix.EPERM):
		return " (this needs root or CAP_NET_ADMIN)"
	case errors.Is(err, unix.EACCES): // what the kernel says to an IPv6 route with IPv6 off
		return " (is IPv6 disabled on lo? sysctl net.ipv6.conf.lo.disable_ipv6)"
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.EAFNOSUPPORT):
		return " (the kernel may lack an nftables feature or module; run `detour check`)"
	}
	return ""
}
