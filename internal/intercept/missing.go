package intercept

import (
	"fmt"
	"slices"
	"time"
)

// DefaultCheckInterval is how often a running detour checks that its rules
// are still installed (Ensure): often enough that a firewall reload which
// flushed them is repaired within seconds, rarely enough that the netlink
// dumps cost nothing measurable.
const DefaultCheckInterval = 5 * time.Second

// missingParts names what of want got lacks or has changed, in the words of
// Render's text: "table inet detour", "chain prerouting of table inet
// detour", "rules of chain ...", a chain detour does not install ("chain X
// of table inet detour (not detour's)"), and each policy rule or route as
// its ip command.
func missingParts(want, got ruleset) []string {
	var out []string
	table := "table inet " + want.table
	switch {
	case got.table == "":
		out = append(out, table)
	default:
		for _, wc := range want.chains {
			i := slices.IndexFunc(got.chains, func(c chain) bool { return c.name == wc.name })
			if i < 0 {
				out = append(out, fmt.Sprintf("chain %s of %s", wc.name, table))
				continue
			}
			gc := got.chains[i]
			same := gc.kind == wc.kind && gc.hook == wc.hook && gc.priority == wc.priority && gc.policy == wc.policy &&
				slices.EqualFunc(gc.rules, wc.rules, func(a, b []stmt) bool { return ruleString(a) == ruleString(b) })
			if !same {
				out = append(out, fmt.Sprintf("rules of chain %s of %s", wc.name, table))
			}
		}
		// The table is detour's own: a chain someone added to it would
		// hook packets detour never meant to touch.
		for _, gc := range got.chains {
			if !slices.ContainsFunc(want.chains, func(c chain) bool { return c.name == gc.name }) {
				out = append(out, fmt.Sprintf("chain %s of %s (not detour's)", gc.name, table))
			}
		}
	}
	// Policy routing detour did not add serves as well as its own.
	for _, r := range want.rules {
		if !slices.ContainsFunc(got.rules, func(g ipRule) bool { g.kept = false; return g == r }) {
			out = append(out, ruleset{rules: []ipRule{r}}.policyText())
		}
	}
	for _, r := range want.routes {
		if !slices.ContainsFunc(got.routes, func(g localRoute) bool { g.kept = false; return g == r }) {
			out = append(out, ruleset{routes: []localRoute{r}}.policyText())
		}
	}
	return out
}
