package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/detour-proxy/detour/internal/admin"
	"github.com/detour-proxy/detour/internal/config"
)

const statusHelp = `Usage: detour status [--admin ADDR] [--watch [--interval D]] [--json]

Shows what a running detour is doing, read from its admin endpoint: phase,
listeners, rules, connection totals, the live hosts of the
original-destination cluster (requests, active, pooled connections) and the
recent L4 destinations. Run it where detour runs; for the lab, inside the
router (or host) namespace.

Examples:
  detour status
  detour status --watch --interval 1s
  ip netns exec dt-1234-rtr detour status     # the lab's detour
  detour status --admin '[::1]:9901' --json

Flags:
`

func cmdStatus(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("admin", config.DefaultAdmin, "the admin endpoint of the detour to ask (its run --admin)")
	watch := fs.Bool("watch", false, "refresh until Ctrl-C")
	interval := fs.Duration("interval", 2*time.Second, "with --watch: how often to refresh")
	asJSON := fs.Bool("json", false, "print the admin endpoint's /status JSON instead of tables")
	setUsage(fs, statusHelp)
	if code, ok := parseFlagsOnly(fs, args, stdout, stderr); !ok {
		return code
	}
	base, ok := adminBase("status", *addr, stderr)
	if !ok {
		return exitUsage
	}
	if *interval <= 0 {
		fmt.Fprintln(stderr, "detour status: --interval must be positive")
		return exitUsage
	}
	if !*watch && flagGiven(fs, "interval") {
		// Ignoring it would print once and let the user think it refreshes.
		fmt.Fprintln(stderr, "detour status: --interval needs --watch (detour status --watch --interval D)")
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil}}

	show := func() error {
		st, raw, err := fetchStatus(ctx, client, base)
		if err != nil {
			return err
		}
		if *asJSON {
			stdout.Write(raw)
		} else {
			admin.WriteStatus(stdout, st)
		}
		return nil
	}
	if !*watch {
		if err := show(); err != nil {
			fmt.Fprintf(stderr, "detour status: %v\n", err)
			return exitFailure
		}
		return exitOK
	}
	clear := isTerminal(stdout)
	for {
		if clear {
			fmt.Fprint(stdout, "\x1b[H\x1b[2J") // home, clear screen
		} else {
			fmt.Fprintln(stdout) // piped: one report after the other
		}
		fmt.Fprintf(stdout, "%s  (every %s, Ctrl-C to stop)\n", base, *interval)
		if err := show(); err != nil && ctx.Err() == nil {
			fmt.Fprintf(stdout, "%v\n", err)
		}
		select {
		case <-ctx.Done():
			return exitOK
		case <-time.After(*interval):
		}
	}
}

// fetchStatus reads /status; errors say how to reach a running detour.
func fetchStatus(ctx context.Context, c *http.Client, base string) (admin.Status, []byte, error) {
	var st admin.Status
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/status", nil)
	if err != nil {
		return st, nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return st, nil, ctx.Err()
		}
		return st, nil, fmt.Errorf("cannot reach the admin endpoint at %s (%v); is `detour run` running in this network namespace, with --admin %s?",
			base, errors.Unwrap(err), strings.TrimPrefix(base, "http://"))
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return st, nil, fmt.Errorf("reading %s/status: %w", base, err)
	}
	if resp.StatusCode != http.StatusOK {
		return st, nil, fmt.Errorf("%s/status answered %s; is that detour's admin endpoint?", base, resp.Status)
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		return st, nil, fmt.Errorf("%s/status is not detour's status JSON: %w", base, err)
	}
	return st, raw, nil
}

// isTerminal reports whether w is a terminal (a character device), which
// screen control sequences suit; a pipe or a file gets plain text.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// adminBase is the URL of the admin endpoint at addr, the --admin of a
// command (cmd) that asks a running detour; false, said on stderr, when
// addr is not ip:port.
func adminBase(cmd, addr string, stderr io.Writer) (string, bool) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		fmt.Fprintf(stderr, "detour %s: --admin %q is not ip:port (like %s)\n", cmd, addr, config.DefaultAdmin)
		return "", false
	}
	return "http://" + ap.String(), true
}
