package intercept

import (
	"errors"
	"fmt"
	"slices"

	"golang.org/x/sys/unix"
)

// Apply installs the interception described by o, replacing whatever detour
// installed before (for example the leftovers of a crashed run). The
// nftables table is swapped in one atomic batch; the policy routing follows.
// If the policy routing fails, everything is removed again.
func Apply(o Options) error {
	if err := o.Validate(); err != nil {
		return err
	}
	o = o.withDefaults()
	rs := build(o)
	c, err := nftConn(o.NetNSFd)
	if err != nil {
		return fmt.Errorf("intercept: open nftables: %w", err)
	}
	if err := replaceTable(c, rs); err != nil {
		return fmt.Errorf("intercept: install table inet %s: %w%s", o.TableName, err, hint(err))
	}
	if err := applyPolicy(o, rs); err != nil {
		return errors.Join(fmt.Errorf("intercept: policy routing: %w%s", err, hint(err)), Clean(o))
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
// are added if rs has them and removed (as leftovers) if it has not.
func applyPolicy(o Options, rs ruleset) error {
	p, err := openPolicy(o)
	if err != nil {
		return err
	}
	defer p.close()
	for _, v6 := range []bool{false, true} {
		want := false
		for _, r := range rs.rules {
			want = want || r.v6 == v6
		}
		if want {
			err = p.ensure(v6)
		} else {
			err = p.remove(v6)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// Clean removes what detour installs: the table, the `fwmark M lookup T`
// rules (IPv4 and IPv6) and the local default routes in table T. Nothing
// else is touched, and nothing being there is success. Only TableName,
// TProxyMark, RouteTable and NetNSFd matter.
func Clean(o Options) error {
	if err := o.validateTarget(); err != nil {
		return err
	}
	o = o.withDefaults()
	var errs []error
	c, err := nftConn(o.NetNSFd)
	if err == nil {
		err = deleteTable(c, o.TableName)
	}
	if err != nil {
		errs = append(errs, fmt.Errorf("intercept: remove table inet %s: %w%s", o.TableName, err, hint(err)))
	}
	p, err := openPolicy(o)
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("intercept: policy routing: %w", err))...)
	}
	defer p.close()
	for _, v6 := range []bool{false, true} {
		if err := p.remove(v6); err != nil {
			errs = append(errs, fmt.Errorf("intercept: policy routing: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Show reads back what is installed and prints it like Render does, or
// "nothing installed".
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

// Installed reports whether any part of detour's interception is present.
func Installed(o Options) (bool, error) {
	rs, err := read(o)
	return err == nil && !rs.empty(), err
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
	p, err := openPolicy(o)
	if err != nil {
		return ruleset{}, fmt.Errorf("intercept: policy routing: %w", err)
	}
	defer p.close()
	if err := p.read(&rs); err != nil {
		return ruleset{}, fmt.Errorf("intercept: policy routing: %w", err)
	}
	return rs, nil
}

// hint suggests what to do about the usual kernel errors.
func hint(err error) string {
	switch {
	case errors.Is(err, unix.EPERM):
		return " (this needs root or CAP_NET_ADMIN)"
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.EAFNOSUPPORT):
		return " (the kernel may lack an nftables feature or module; run `detour check`)"
	}
	return ""
}
