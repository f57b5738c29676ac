package main

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/detour-proxy/detour/internal/admin"
)

// TestReloadCommand: `detour reload` exits with what became of the
// reload the admin endpoint ran for it: 0 applied, 2 the file rejected
// (configError, as at start), 1 applying it failed, detour stopping, or
// no detour there; the reason is printed.
func TestReloadCommand(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	notDetour := httptest.NewServer(http.NotFoundHandler())
	defer notDetour.Close()

	for _, c := range []struct {
		name     string
		err      error  // what the daemon's reload returns
		addr     string // instead of a detour's admin endpoint
		code     int
		out, say string // stdout, stderr hold these
	}{
		{name: "applied", code: exitOK, out: "configuration reloaded"},
		{name: "syntax error", err: configError{errors.New("config: line 2: intercept.portz is not a key")}, code: exitUsage,
			say: "detour reload: configuration rejected, the previous one serves on: config: line 2: intercept.portz is not a key"},
		{name: "restart-only key", err: configError{errors.New("tcp.loops cannot change without a restart")}, code: exitUsage,
			say: "tcp.loops cannot change without a restart"},
		{name: "listener failed", err: errors.New("listen 127.0.0.1:80: bind: permission denied"), code: exitFailure,
			say: "reload failed, the previous configuration serves on: listen 127.0.0.1:80: bind: permission denied"},
		{name: "stopping", err: errStopping, code: exitFailure, say: "not reloaded: detour is stopping"},
		{name: "nothing there", addr: closed, code: exitFailure, say: "cannot reach the admin endpoint at http://" + closed},
		{name: "not detour", addr: strings.TrimPrefix(notDetour.URL, "http://"), code: exitFailure, say: "answered 404 Not Found"},
		{name: "bad address", addr: "localhost:9901", code: exitUsage, say: `--admin "localhost:9901" is not ip:port`},
	} {
		t.Run(c.name, func(t *testing.T) {
			addr := c.addr
			if addr == "" {
				srv, err := admin.New(admin.Options{Addr: netip.MustParseAddrPort("127.0.0.1:0"), State: admin.NewState(),
					Reload: func(context.Context) error { return c.err }})
				if err != nil {
					t.Fatal(err)
				}
				if err := srv.Start(); err != nil {
					t.Fatal(err)
				}
				defer srv.Close()
				addr = srv.Addr().String()
			}
			var out, errw strings.Builder
			code := dispatch([]string{"reload", "--admin", addr}, &out, &errw)
			if code != c.code || !strings.Contains(out.String(), c.out) || !strings.Contains(errw.String(), c.say) ||
				(c.code == exitOK) != (errw.Len() == 0) {
				t.Errorf("exit %d, stdout %q, stderr %q; want exit %d, stdout with %q, stderr with %q",
					code, out.String(), errw.String(), c.code, c.out, c.say)
			}
		})
	}
}

// TestRequestReloadWhenStopping: a POST /reload that comes once the stop
// ended the loop that serves reloads is answered at once (503, `detour
// reload` exits 1), not left waiting for a loop that is gone.
func TestRequestReloadWhenStopping(t *testing.T) {
	end := make(chan struct{})
	close(end)
	d := &daemon{reloads: make(chan chan error), reloadsEnd: end}
	if err := d.requestReload(context.Background()); !errors.Is(err, admin.ErrStopping) {
		t.Errorf("requestReload after the stop: %v, want %v", err, admin.ErrStopping)
	}
}

// TestReloadTimeout: `detour reload` gives up on a detour that does not
// answer after --timeout (exit 1, saying so) instead of waiting for
// systemd's own timeout; --timeout 0 waits without a limit; a bad value
// is a usage error (exit 2). The stand-in admin endpoint never answers
// (until the test ends), or answers after a pause.
func TestReloadTimeout(t *testing.T) {
	release := make(chan struct{})
	silent := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer silent.Close()
	defer close(release) // before Close, which waits for the handlers
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(300 * time.Millisecond)
		io.WriteString(w, "configuration reloaded\n")
	}))
	defer slow.Close()
	silentAddr, slowAddr := strings.TrimPrefix(silent.URL, "http://"), strings.TrimPrefix(slow.URL, "http://")

	for _, c := range []struct {
		name string
		args []string
		code int
		say  string // stderr holds it
	}{
		{"silent detour", []string{"--admin", silentAddr, "--timeout", "200ms"}, exitFailure,
			"detour reload: no answer from the admin endpoint at " + silent.URL + " within 200ms (--timeout); the reload may still complete"},
		{"no limit", []string{"--admin", slowAddr, "--timeout", "0"}, exitOK, ""},
		{"within the limit", []string{"--admin", slowAddr, "--timeout", "30s"}, exitOK, ""},
		{"negative", []string{"--admin", silentAddr, "--timeout", "-1s"}, exitUsage,
			"detour reload: --timeout must not be negative (0 waits without a limit)"},
		{"not a duration", []string{"--admin", silentAddr, "--timeout", "5"}, exitUsage,
			`detour reload: --timeout: "5" is not a duration`},
	} {
		t.Run(c.name, func(t *testing.T) {
			var out, errw strings.Builder
			done := make(chan int, 1)
			go func() { done <- dispatch(append([]string{"reload"}, c.args...), &out, &errw) }()
			var code int
			select {
			case code = <-done:
			case <-time.After(60 * time.Second): // far beyond the 200ms asked for
				t.Fatal("detour reload still waits after 60s")
			}
			if code != c.code || !strings.Contains(errw.String(), c.say) || (c.say == "") != (errw.Len() == 0) {
				t.Errorf("exit %d, stdout %q, stderr %q; want exit %d, stderr with %q", code, out.String(), errw.String(), c.code, c.say)
			}
		})
	}
}
