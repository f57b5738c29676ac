package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/detour-proxy/detour/internal/config"
)

const reloadHelp = `Usage: detour reload [--admin ADDR] [--timeout D]

Has a running detour re-read its configuration file and apply it, as SIGHUP
does, and waits for the outcome, which a signal cannot report: exit 0 once
the new configuration serves; exit 2 when the file is rejected (an error
in it, or a change to a setting only a restart applies: mode, admin,
tcp.loops, ...), with the reason; exit 1 when applying it failed (a
listener, the rules) or detour cannot be reached. A rejected reload changes
nothing: the previous configuration serves on. It asks detour's admin
endpoint (POST /reload), so it needs one (not admin: off). systemd's unit
runs it as ExecReload=, so that ` + "`systemctl reload detour`" + ` fails on a
rejected file. It waits --timeout for the outcome (default 60s, under systemd's
default TimeoutStartSec= of 90s; 0 waits without a limit), then exits 1:
a detour that does not answer does not hold the command until systemd
kills it, and the reason reaches the journal.

Examples:
  detour reload
  ip netns exec dt-1234-rtr detour reload      # the lab's detour
  detour reload --admin '[::1]:9901'
  detour reload --timeout 5m                   # rules that take long to install

Flags:
`

func cmdReload(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("reload", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("admin", config.DefaultAdmin, "the admin endpoint of the detour to reload (its run --admin)")
	timeout := fs.Duration("timeout", defaultReloadTimeout, "give up (exit 1) when detour has not answered after this long; 0 waits without a limit")
	setUsage(fs, reloadHelp)
	if code, ok := parseFlagsOnly(fs, args, stdout, stderr); !ok {
		return code
	}
	base, ok := adminBase("reload", *addr, stderr)
	if !ok {
		return exitUsage
	}
	if *timeout < 0 {
		fmt.Fprintln(stderr, "detour reload: --timeout must not be negative (0 waits without a limit)")
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	code, msg := postReload(ctx, base, *timeout)
	if code == exitOK {
		fmt.Fprintln(stdout, msg)
	} else {
		fmt.Fprintf(stderr, "detour reload: %s\n", msg)
	}
	return code
}

// defaultReloadTimeout is under systemd's default TimeoutStartSec= (90s),
// which bounds ExecReload=, so the command says why before systemd kills
// it; a reload takes what opening listeners and installing rules take,
// far less.
const defaultReloadTimeout = 60 * time.Second

// errReloadTimeout ends a reload whose answer did not come in time.
var errReloadTimeout = errors.New("reload timeout")

// postReload asks base for a reload, waiting at most timeout (0: no
// limit; Ctrl-C at a terminal) for the answer, and returns the exit code
// and what to print.
func postReload(ctx context.Context, base string, timeout time.Duration) (int, string) {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, timeout, errReloadTimeout)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/reload", nil)
	if err != nil {
		return exitFailure, err.Error()
	}
	resp, err := (&http.Client{Transport: &http.Transport{Proxy: nil}}).Do(req)
	if err != nil {
		if context.Cause(ctx) == errReloadTimeout {
			return exitFailure, fmt.Sprintf("no answer from the admin endpoint at %s within %v (--timeout); the reload may still complete (`detour status`, the log)",
				base, timeout)
		}
		if ctx.Err() != nil {
			return exitFailure, "interrupted; the reload may still complete (`detour status`, the log)"
		}
		return exitFailure, fmt.Sprintf("cannot reach the admin endpoint at %s (%v); is `detour run` running in this network namespace, with --admin %s (not admin: off)?",
			base, errors.Unwrap(err), strings.TrimPrefix(base, "http://"))
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	body := strings.TrimSpace(string(b))
	switch resp.StatusCode {
	case http.StatusOK:
		return exitOK, body
	case http.StatusConflict:
		return exitUsage, "configuration rejected, the previous one serves on: " + body
	case http.StatusInternalServerError:
		return exitFailure, "reload failed, the previous configuration serves on: " + body
	case http.StatusServiceUnavailable:
		return exitFailure, "not reloaded: " + body
	}
	return exitFailure, fmt.Sprintf("%s/reload answered %s (%s); is that detour's admin endpoint, of a detour that has `detour reload`?", base, resp.Status, body)
}
