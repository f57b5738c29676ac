package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/detour-proxy/detour/internal/config"
)

// TestRunConfigErrorsExit2: a start-up failure that a configured value
// causes exits 2 with the key and the fix, as the README's exit codes
// say, before a listener opens. An access log in a directory that does
// not exist exited 1, as a runtime failure.
func TestRunConfigErrorsExit2(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no-such-dir", "access.log")
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"--access-log", missing}, []string{"access_log (--access-log)", "no such file or directory", "or off"}},
		{[]string{"--access-log", t.TempDir()}, []string{"access_log (--access-log)", "is a directory"}},
		{[]string{"--access-log", "stdout", "--access-log-format", "%START_TIME% %UPSTREAM_PEER_SUBJECT%"},
			[]string{"access_log_format", "unknown operator %UPSTREAM_PEER_SUBJECT%", "detour knows START_TIME, DURATION"}},
	} {
		var stdout, stderr bytes.Buffer
		// A listener no test binds: the run must fail before it opens.
		args := append([]string{"--admin", "off", "--mode", "redirect", "--listen", "127.0.0.1:1"}, tc.args...)
		code := cmdRun(args, &stdout, &stderr)
		for _, w := range tc.want {
			if !strings.Contains(stderr.String(), w) {
				t.Errorf("%v: stderr %q lacks %q", tc.args, stderr.String(), w)
			}
		}
		if code != exitUsage {
			t.Errorf("%v: exit %d, want %d (a config error); stderr %q", tc.args, code, exitUsage, stderr.String())
		}
		if strings.Contains(stderr.String(), "access log: open") {
			t.Errorf("%v: stderr %q names the access log twice", tc.args, stderr.String())
		}
	}
}

// TestStopGoesBeforeReload: a SIGHUP and a SIGTERM that arrive together
// (both pending when the loop next looks) stop detour without a reload;
// a stop that arrives during a reload's re-read abandons it before it
// changes anything (its rules included). The loop's select used to pick
// either at random, so a stop waited for a whole reload, and the reload
// could install rules after the stop began.
func TestStopGoesBeforeReload(t *testing.T) {
	start := func(t *testing.T, ctx context.Context, reread func() (*config.Config, error)) string {
		t.Helper()
		cfg := &config.Config{Mode: "redirect", Listen: []string{"127.0.0.1:0"}, Admin: "off", Protocol: "tcp"}
		if err := cfg.Finish(); err != nil {
			t.Fatal(err)
		}
		hup := make(chan os.Signal, 1)
		hup <- syscall.SIGHUP
		var log bytes.Buffer
		if err := run(ctx, ctx, cfg, reread, hup, &log, hooks{}); err != nil {
			t.Fatalf("run: %v\n%s", err, log.String())
		}
		return log.String()
	}
	t.Run("both_pending", func(t *testing.T) {
		// The select chose at random: 20 runs all pass by chance 2^-20.
		for range 20 {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			rereads := 0
			start(t, ctx, func() (*config.Config, error) { rereads++; return nil, errors.New("unused") })
			if rereads != 0 {
				t.Fatalf("the SIGHUP pending with the stop was served (%d re-reads)", rereads)
			}
		}
	})
	t.Run("stop_during_reread", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		log := start(t, ctx, func() (*config.Config, error) {
			cancel() // SIGTERM while the file is read
			next := &config.Config{Mode: "redirect", Listen: []string{"127.0.0.1:0"}, Admin: "off", Protocol: "http"}
			return next, next.Finish()
		})
		if strings.Contains(log, "configuration reloaded") || !strings.Contains(log, "reload abandoned") {
			t.Errorf("a reload went on after the stop began:\n%s", log)
		}
	})
}
