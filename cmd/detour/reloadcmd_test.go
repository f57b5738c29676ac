package main

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

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
