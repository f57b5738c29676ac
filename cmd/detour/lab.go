package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/detour-proxy/detour/internal/lab"
)

const labHelp = `Usage: detour lab [tproxy|redirect] [flags]

Rebuilds the two tutorials' networks in network namespaces on this machine
(never touching the host's own) and shows detour at work, step by step:
  tproxy    client -> router (detour, TPROXY, no NAT) -> server (httpbin)
  redirect  one host whose applications are REDIRECTed to detour -> server
With no argument it runs both. Everything it made is removed at the end,
on failure, on Ctrl-C and SIGTERM, and when its terminal closes (SIGHUP).
Needs root.

Examples:
  detour lab
  detour lab tproxy --spoof-source
  detour lab redirect --keep      # leave it up and print how to explore it

Flags:
`

func cmdLab(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("lab", flag.ContinueOnError)
	fs.SetOutput(stderr)
	keep := fs.Bool("keep", false, "leave the namespaces, httpbin and detour up until Ctrl-C, and print how to explore them")
	id := fs.String("id", "", "namespace name part: dt-ID-ROLE (default: this process id)")
	spoof := fs.Bool("spoof-source", false, "tproxy lab: detour connects from the client's address")
	noV6 := fs.Bool("no-ipv6", false, "skip the IPv6 requests")
	goClient := fs.Bool("go-client", false, "use Go's HTTP client even when curl is installed")
	setUsage(fs, labHelp)
	mode := ""
	if len(args) > 0 && (args[0] == "tproxy" || args[0] == "redirect") {
		mode, args = args[0], args[1:]
	}
	if code, ok := parse(fs, args, stdout); !ok {
		return code
	}
	if mode == "" && fs.NArg() == 1 && (fs.Arg(0) == "tproxy" || fs.Arg(0) == "redirect") {
		mode = fs.Arg(0) // after the flags: detour lab --keep tproxy
	} else if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "detour lab: unexpected argument %q (the one argument is the network: tproxy or redirect)\n", fs.Arg(0))
		return exitUsage
	}
	if *id != "" {
		if err := lab.CheckID(*id); err != nil {
			fmt.Fprintf(stderr, "detour lab: --id: %v\n", err)
			return exitUsage
		}
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(stderr, "detour lab: needs root to create network namespaces (run it with sudo)")
		return exitFailure
	}
	bin, err := os.Executable()
	if err != nil {
		fmt.Fprintf(stderr, "detour lab: %v\n", err)
		return exitFailure
	}
	// A closed output pipe (`detour lab | head`) must not kill the lab
	// before it removes what it made: writes then fail, cleanup goes on.
	signal.Ignore(syscall.SIGPIPE)
	// SIGHUP too: a closed terminal or ssh session must not kill the lab
	// before it removes its namespaces.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	err = lab.Run(ctx, lab.Options{Mode: mode, Binary: bin, Out: stdout, ID: *id, Keep: *keep,
		SpoofSource: *spoof, NoIPv6: *noV6, GoClient: *goClient})
	if err != nil {
		fmt.Fprintf(stderr, "detour lab: %v\n", err)
		return exitFailure
	}
	return exitOK
}
