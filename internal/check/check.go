// Package check finds out what this kernel and these privileges allow
// detour to do ("detour check"), and says how to fix what is missing.
//
//	rs := check.Run(ctx, check.Options{Mode: intercept.ModeTProxy, Router: true})
//	if !check.Print(os.Stdout, rs) {
//		os.Exit(1)
//	}
//
// Every probe that needs the kernel to accept something (nftables rules,
// policy routes, a real REDIRECT with SO_ORIGINAL_DST) runs in a throwaway
// network namespace that lives only as long as the probe: the host's own
// rules, routes and sysctls are read at most, never changed. That namespace
// cannot show what detour will meet where it runs, so the namespace Run is
// called in is inspected too (lo up, IPv6, whether the listeners bind).
package check

import (
	"fmt"
	"io"
	"net/netip"

	"github.com/detour-proxy/detour/internal/intercept"
)

// Result is the outcome of one check. Fix says what to do when OK is false.
// Warn marks a failure detour runs with, in a reduced way (IPv4 only, say):
// it is printed as a warning and does not fail the check.
type Result struct {
	Name   string
	OK     bool
	Warn   bool
	Detail string
	Fix    string
}

// Options selects the checks. An empty Mode checks what both modes need.
type Options struct {
	Mode intercept.Mode
	// Router: detour runs on a router or NAT gateway (either mode), so
	// also check that the host forwards packets.
	Router bool
	// Listeners are the addresses run would open; each is tried (bound,
	// never listened on) in the namespace check runs in.
	Listeners []Listener
	// Rules, when set, are the rules run would install (a configuration's
	// ports, destinations, interfaces, uids, marks and table): the rules
	// probe installs and removes exactly these in the throwaway namespace,
	// in place of a generic set, and each of their interfaces is looked up
	// in the namespace check runs in.
	Rules *intercept.Options
	// AccessLog, when set, is the access log file a configuration names
	// (not stdout or off): check says whether run could open it.
	AccessLog string
}

// Listener is an address run would listen on in Mode. Default marks one of
// run's defaults, whose IPv6 twin run leaves out where the namespace has no
// IPv6; an address the user gave must work as given.
type Listener struct {
	Mode    intercept.Mode
	Addr    netip.AddrPort
	Default bool
}

// Print writes one aligned line per result, with the fix under each
// failure or warning, and reports whether none failed:
//
//	ok    nftables tproxy expression
//	FAIL  nftables socket expression: no such file or directory
//	      fix: modprobe nft_socket
//	warn  net.ipv6.conf.all.forwarding: is 0; IPv6 clients are not routed
//	      fix: sysctl -w net.ipv6.conf.all.forwarding=1 (...)
func Print(w io.Writer, rs []Result) (allOK bool) {
	allOK = true
	for _, r := range rs {
		status := "ok"
		switch {
		case !r.OK && r.Warn:
			status = "warn"
		case !r.OK:
			status, allOK = "FAIL", false
		}
		line := fmt.Sprintf("%-6s%s", status, r.Name)
		if r.Detail != "" {
			line += ": " + r.Detail
		}
		fmt.Fprintln(w, line)
		if !r.OK && r.Fix != "" {
			fmt.Fprintf(w, "%-6sfix: %s\n", "", r.Fix)
		}
	}
	return allOK
}

// wants reports whether a check for mode m runs under o.
func (o Options) wants(m intercept.Mode) bool { return o.Mode == "" || o.Mode == m }

func result(name string, err error, fix string) Result {
	if err != nil {
		return Result{Name: name, Detail: err.Error(), Fix: fix}
	}
	return Result{Name: name, OK: true}
}
