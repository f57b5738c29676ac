package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/detour-proxy/detour/internal/check"
	"github.com/detour-proxy/detour/internal/intercept"
)

const checkHelp = `Usage: detour check [--mode tproxy|redirect] [--router]

Reports whether this kernel and these privileges allow the mode: nftables
and its tproxy, socket, fib, nat and meta expressions, policy routing,
IP_TRANSPARENT, SO_MARK and SO_ORIGINAL_DST. Each probe runs in a throwaway
network namespace; nothing on the host changes. Every failing line says how
to fix it. Exit 1 when the mode cannot work.

Examples:
  detour check --mode tproxy --router   # also reads net.ipv4.ip_forward
  detour check --mode redirect

Flags:
`

func cmdCheck(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	mode := fs.String("mode", "", "tproxy or redirect (default: both)")
	router := fs.Bool("router", false, "tproxy on a router: also check IP forwarding")
	setUsage(fs, checkHelp)
	if code, ok := parseFlagsOnly(fs, args, stdout, stderr); !ok {
		return code
	}
	if *mode != "" && *mode != "tproxy" && *mode != "redirect" {
		fmt.Fprintf(stderr, "detour check: --mode %q (use tproxy or redirect)\n", *mode)
		return exitUsage
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if !check.Print(stdout, check.Run(ctx, check.Options{Mode: intercept.Mode(*mode), Router: *router})) {
		return exitFailure
	}
	return exitOK
}
