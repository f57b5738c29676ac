// Package intercept installs and removes the kernel rules that divert TCP
// connections to detour: one nftables table (family inet) and, for TPROXY,
// the policy routing that delivers marked packets locally.
//
//	o := intercept.Options{
//		Mode:     intercept.ModeTProxy,
//		Ports:    intercept.PortList(80, 443),
//		ListenV4: netip.MustParseAddrPort("0.0.0.0:15001"),
//		ListenV6: netip.MustParseAddrPort("[::]:15001"),
//	}
//	owner, err := intercept.Own(o)   // ErrOwned while another detour holds them
//	defer owner.Release()
//	text, err := intercept.Render(o) // what Apply installs, for --dry-run
//	err = intercept.Apply(o)         // replaces leftovers of a crashed run
//	err = intercept.Drain(o)         // new connections pass, open ones go on
//	err = intercept.Clean(o)         // removes exactly what Apply added
//
// Apply swaps the table in one atomic netlink batch (google/nftables), so
// traffic sees the old rules or the new ones, never none; policy rules and
// routes (vishvananda/netlink) follow. Show reads everything back from the
// kernel and prints it with the same printer as Render, whose text matches
// `nft list table inet detour` and is kept as golden files in testdata/.
// Options.NetNSFd makes every call act in another network namespace, which
// is how the tests and the lab stay off the host's own rules.
//
// Design choices, see README.md for the rules themselves:
//   - tproxy mode returns early for connections to the router's own
//     addresses (`fib daddr type local`): they are served locally anyway,
//     and diverting them would only add a hop or, if detour listened on an
//     intercepted port, a loop. Forwarded traffic, which the TPROXY
//     deployment is about, is not affected.
//   - interfaces and excluded uids get one rule each instead of a set, so
//     that `nft list` prints them correctly (see matchPrefix).
//   - destinations are merged into disjoint ranges, as nft's auto-merge
//     would; a family with a listener but no destination of its own is
//     not intercepted when Destinations is non-empty.
package intercept
