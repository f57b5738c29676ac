package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"time"

	"github.com/detour-proxy/detour/internal/accesslog"
	"github.com/detour-proxy/detour/internal/check"
	"github.com/detour-proxy/detour/internal/config"
	"github.com/detour-proxy/detour/internal/intercept"
)

const checkHelp = `Usage: detour check [-c detour.yaml] [--mode tproxy|redirect] [--router]
                    [--listen ADDR]... [interception flags, as for run]

Reports whether this kernel, these privileges and this network namespace
allow the mode: nftables and its tproxy, socket, fib, nat and meta
expressions, policy routing, IP_TRANSPARENT, SO_MARK and SO_ORIGINAL_DST
(each probed in a throwaway network namespace), and, in the namespace it
runs in (run it where detour will run, e.g. with ip netns exec), whether
lo is up, whether IPv6 is available, and whether run's listeners (the
defaults, or --listen) can bind. Nothing changes. Every failing line says
how to fix it; a warn line is something run works around (IPv4 only, for
one). Exit 1 when run would fail in the mode.

With -c or an interception flag (--intercept-port, --intercept-dst,
--exclude-dst, --intercept-iface, --exclude-uid, --tproxy-mark, --route-table,
--upstream-mark, --table-name), check reads the configuration as run
would (an error in it exits 2, naming the key), checks its mode and
listeners, installs and removes exactly the rules it would install in the
throwaway namespace (a generic set when it has no ports: run installs
none then), looks up its interfaces here and tries its access log file
(without creating it); interfaces make it a router
or gateway, so IP forwarding is checked as with --router. Without them
it checks both modes, or --mode, with a generic rule set.

Examples:
  detour check --mode tproxy --router   # also reads net.ipv4.ip_forward
  detour check --mode redirect --listen 127.0.0.1:4999
  detour check -c /etc/detour.yaml      # this configuration's mode, listeners and rules

Flags:
`

func cmdCheck(args []string, stdout, stderr io.Writer) int {
	f := newConfigFlags("check", stderr, false)
	router := f.fs.Bool("router", false, "detour runs on a router or NAT gateway: also check IP forwarding (implied by a configuration with interfaces)")
	setUsage(f.fs, checkHelp)
	if code, ok := parseFlagsOnly(f.fs, args, stdout, stderr); !ok {
		return code
	}
	var o check.Options
	var err error
	if flagSetBut(f.fs, "mode", "listen", "router") {
		o, err = configuredCheck(f)
	} else {
		o, err = modeCheck(f.mode, f.listen)
	}
	if err != nil {
		fmt.Fprintf(stderr, "detour check: %v\n", err)
		return exitUsage
	}
	o.Router = o.Router || *router
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if !check.Print(stdout, check.Run(ctx, o)) {
		return exitFailure
	}
	return exitOK
}

// flagSetBut reports whether a flag other than the named ones was given:
// for check, -c or one of the interception flags it shares with run and
// rules, which make it check that configuration rather than what a mode
// needs in general.
func flagSetBut(fs *flag.FlagSet, names ...string) bool {
	set := false
	fs.Visit(func(fl *flag.Flag) { set = set || !slices.Contains(names, fl.Name) })
	return set
}

// configuredCheck checks what run would do with f's file and flags: its
// mode, its listeners and, when it has ports, its rules. Interfaces to
// intercept on make it a router or gateway, whose forwarding is checked.
func configuredCheck(f *configFlags) (check.Options, error) {
	cfg, err := f.load()
	if err != nil {
		return check.Options{}, err
	}
	m := intercept.Mode(cfg.Mode)
	o := check.Options{Mode: m, Router: len(cfg.Intercept.Interfaces) > 0}
	if cfg.AccessLog != accesslog.PathOff && cfg.AccessLog != accesslog.PathStdout && cfg.AccessLog != "" {
		o.AccessLog = cfg.AccessLog
	}
	for _, a := range cfg.ListenAddrs {
		o.Listeners = append(o.Listeners, check.Listener{Mode: m, Addr: a, Default: cfg.ListenDefault})
	}
	if len(cfg.Intercept.Ports) > 0 {
		rules := interceptOptions(cfg)
		o.Rules = &rules
	}
	return o, nil
}

// modeCheck checks what mode needs (both modes when it is empty), with
// the given listeners or run's defaults.
func modeCheck(mode string, addrs []string) (check.Options, error) {
	if mode != "" && mode != "tproxy" && mode != "redirect" {
		return check.Options{}, fmt.Errorf("--mode %q (use tproxy or redirect)", mode)
	}
	o := check.Options{Mode: intercept.Mode(mode)}
	for _, m := range []intercept.Mode{intercept.ModeTProxy, intercept.ModeRedirect} {
		if mode != "" && intercept.Mode(mode) != m {
			continue
		}
		ls, err := checkListeners(m, addrs)
		if err != nil {
			return check.Options{}, err
		}
		o.Listeners = append(o.Listeners, ls...)
	}
	return o, nil
}

// checkListeners are the listeners run would open in mode m: the given
// addresses, or run's defaults (both families; check says which it drops).
func checkListeners(m intercept.Mode, given []string) ([]check.Listener, error) {
	var ls []check.Listener
	if len(given) > 0 {
		for _, a := range given {
			ap, err := netip.ParseAddrPort(a)
			if err != nil {
				return nil, fmt.Errorf("--listen %q is not ip:port (like 127.0.0.1:4999)", a)
			}
			ls = append(ls, check.Listener{Mode: m, Addr: ap})
		}
		return ls, nil
	}
	c := config.Config{Mode: string(m)}
	if err := c.Finish(); err != nil {
		return nil, err
	}
	for _, a := range c.ListenAddrs {
		ls = append(ls, check.Listener{Mode: m, Addr: a, Default: true})
	}
	return ls, nil
}
