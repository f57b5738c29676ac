package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/signal"
	"syscall"
	"time"

	"github.com/detour-proxy/detour/internal/listen"
)

const origdstHelp = `Usage: detour origdst --listen ADDR [--mode redirect|tproxy]

Accepts connections and prints, for each, the client, the original
destination and how it was learned (SO_ORIGINAL_DST, IP6T_SO_ORIGINAL_DST,
or the tproxy socket's local address), then closes it. It replaces the
tutorials' Python SO_ORIGINAL_DST script; it installs no rules.

Example (with a REDIRECT rule to port 4999 in place):
  detour origdst --listen 127.0.0.1:4999

Flags:
`

func cmdOrigDst(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("origdst", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var addrs listFlag
	fs.Var(&addrs, "listen", "ip:port to accept on, repeatable")
	mode := fs.String("mode", "redirect", "redirect (SO_ORIGINAL_DST) or tproxy (transparent listener)")
	setUsage(fs, origdstHelp)
	if code, ok := parseFlagsOnly(fs, args, stdout, stderr); !ok {
		return code
	}
	if len(addrs) == 0 {
		fmt.Fprintln(stderr, "detour origdst: --listen ADDR is required (like 127.0.0.1:4999)")
		return exitUsage
	}
	if *mode != "redirect" && *mode != "tproxy" {
		fmt.Fprintf(stderr, "detour origdst: --mode %q (use redirect or tproxy)\n", *mode)
		return exitUsage
	}
	var lns []*listen.Listener
	for _, a := range addrs {
		ap, err := netip.ParseAddrPort(a)
		if err != nil {
			fmt.Fprintf(stderr, "detour origdst: --listen %q is not ip:port\n", a)
			return exitUsage
		}
		l, err := listen.Listen(listen.Options{Mode: listen.Mode(*mode), Addr: ap})
		if err != nil {
			fmt.Fprintf(stderr, "detour origdst: %v\n", err)
			return exitFailure
		}
		defer l.Close()
		lns = append(lns, l)
		fmt.Fprintf(stdout, "listening on %s (%s)\n", l.Addr(), *mode)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	lines := make(chan string)
	for _, l := range lns {
		go printOrigDst(l, lines)
	}
	for {
		select {
		case <-ctx.Done():
			return exitOK
		case line := <-lines:
			fmt.Fprintln(stdout, line)
		}
	}
}

// printOrigDst sends a line per connection l accepts until l closes. A
// failed accept (out of descriptors, say) is told and tried again after a
// pause that doubles while failures go on, up to a second, as net/http's
// server does; it used to end the listener's printing without a word.
func printOrigDst(l *listen.Listener, lines chan<- string) {
	var pause time.Duration
	for {
		c, err := l.Accept()
		switch {
		case errors.Is(err, listen.ErrNotIntercepted):
			lines <- fmt.Sprintf("client %s -> no original destination (%v)", c.Client, err)
		case errors.Is(err, net.ErrClosed):
			return
		case err != nil:
			pause = min(max(2*pause, 5*time.Millisecond), time.Second)
			lines <- fmt.Sprintf("accept on %s failed: %v (trying again in %v)", l.Addr(), err, pause)
			time.Sleep(pause)
			continue
		default:
			lines <- fmt.Sprintf("client %s -> original destination %s (learned by %s)", c.Client, c.OrigDst, c.How)
			c.Close()
		}
		pause = 0
	}
}
