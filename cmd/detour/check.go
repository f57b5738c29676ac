package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"time"

	"github.com/detour-proxy/detour/internal/check"
	"github.com/detour-proxy/detour/internal/config"
	"github.com/detour-proxy/detour/internal/intercept"
)

const checkHelp = `Usage: detour check [--mode tproxy|redirect] [--router] [--listen ADDR]...

Reports whether this kernel, these privileges and this network namespace
allow the mode: nftables and its tproxy, socket, fib, nat and meta
expressions, policy routing, IP_TRANSPARENT, SO_MARK and SO_ORIGINAL_DST
(each probed in a throwaway network namespace), and, in the namespace it
runs in (run it where detour will run, e.g. with ip netns exec), whether
lo is up, whether IPv6 is available, and whether run's listeners (the
defaults, or --listen) can bind. Nothing changes. Every failing line says
how to fix it; a warn line is something run works around (IPv4 only, for
one). Exit 1 when run would fail in the mode.

Examples:
  detour check --mode tproxy --router   # also reads net.ipv4.ip_forward
  detour check --mode redirect --listen 127.0.0.1:4999

Flags:
`

func cmdCheck(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	mode := fs.String("mode", "", "tproxy or redirect (default: both)")
	router := fs.Bool("router", false, "tproxy on a router: also check IP forwarding")
	var addrs listFlag
	fs.Var(&addrs, "listen", "listener ip:port run will use, repeatable (default: run's defaults for the mode)")
	setUsage(fs, checkHelp)
	if code, ok := parseFlagsOnly(fs, args, stdout, stderr); !ok {
		return code
	}
	if *mode != "" && *mode != "tproxy" && *mode != "redirect" {
		fmt.Fprintf(stderr, "detour check: --mode %q (use tproxy or redirect)\n", *mode)
		return exitUsage
	}
	o := check.Options{Mode: intercept.Mode(*mode), Router: *router}
	for _, m := range []intercept.Mode{intercept.ModeTProxy, intercept.ModeRedirect} {
		if *mode != "" && intercept.Mode(*mode) != m {
			continue
		}
		ls, err := checkListeners(m, addrs)
		if err != nil {
			fmt.Fprintf(stderr, "detour check: %v\n", err)
			return exitUsage
		}
		o.Listeners = append(o.Listeners, ls...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if !check.Print(stdout, check.Run(ctx, o)) {
		return exitFailure
	}
	return exitOK
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
