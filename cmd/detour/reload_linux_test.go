package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/detour-proxy/detour/internal/config"
	"github.com/detour-proxy/detour/internal/fdtest"
	"github.com/detour-proxy/detour/internal/logbuf"
	"github.com/detour-proxy/detour/internal/ns"
)

// inNetnsEnv marks the copy of the test binary that runs inside the
// namespace the parent test made.
const inNetnsEnv = "DETOUR_TEST_IN_NETNS"

// inOwnNetns runs body, a test that runs a whole detour in-process, inside
// a namespace of its own named after tag: the test binary runs itself
// there (`ip netns exec`), since a Go process cannot move all of its
// threads into one.
func inOwnNetns(t *testing.T, tag string, body func(t *testing.T)) {
	if os.Getenv(inNetnsEnv) == t.Name() {
		body(t)
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root for a network namespace and redirect rules (CI runs as root)")
	}
	n, err := ns.New(fmt.Sprintf("dt-%s-B%d", tag, os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	fdtest.Rerun(t, inNetnsEnv, "ip", "netns", "exec", n.Name)
}

// reloadLab is a detour run in-process (redirect mode, protocol http) in
// front of an upstream that answers "ok", whose reload changes
// http.server_header from "before-reload" to "after-reload": the Server
// header says which HTTP side answered.
type reloadLab struct {
	upURL string
	hup   chan os.Signal
	logs  *logbuf.Buffer
}

// startReloadLab starts it with h and waits until it is ready; the test's
// cleanup stops it and waits for the run's end.
func startReloadLab(t *testing.T, h hooks) *reloadLab {
	t.Helper()
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") }))
	t.Cleanup(up.Close)
	port := netip.MustParseAddrPort(up.Listener.Addr().String()).Port()
	conf := func(server string) (*config.Config, error) {
		c, err := config.Parse([]byte(fmt.Sprintf("mode: redirect\nprotocol: http\nadmin: off\nlisten: ['127.0.0.1:15001']\n"+
			"intercept: {ports: [%d]}\nhttp: {server_header: %s}\n", port, server)))
		if err == nil {
			err = c.Finish()
		}
		return c, err
	}
	first, err := conf("before-reload")
	if err != nil {
		t.Fatal(err)
	}
	l := &reloadLab{upURL: up.URL, hup: make(chan os.Signal, 1), logs: &logbuf.Buffer{}}
	ctx, stop := context.WithCancel(context.Background())
	hard, stopHard := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, hard, first, func() (*config.Config, error) { return conf("after-reload") }, l.hup, l.logs, h)
	}()
	t.Cleanup(func() {
		stop()
		defer stopHard()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run: %v", err)
			}
		case <-time.After(time.Minute):
			stopHard()
			t.Errorf("run did not end within a minute of the stop:\n%s", l.logs.String())
		}
	})
	if !l.logs.WaitFor("msg=ready", 1, 30*time.Second) {
		t.Fatalf("detour never got ready:\n%s", l.logs.String())
	}
	return l
}

// get sends a request through the rules to the upstream on a fresh
// connection, so that it is routed then, and returns the response's
// Server header.
func (l *reloadLab) get() (string, error) {
	c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(l.upURL)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return "", err
	}
	return resp.Header.Get("Server"), nil
}

// reloaded sends a SIGHUP and waits for its reload to finish.
func (l *reloadLab) reloaded(t *testing.T, n int) {
	t.Helper()
	l.hup <- nil
	if !l.logs.WaitFor("configuration reloaded", n, 30*time.Second) {
		t.Fatalf("reload %d never finished:\n%s", n, l.logs.String())
	}
}

// TestReloadPointsNewConnectionsFirst: a SIGHUP that changes http.*
// must point new connections at the new HTTP side before the old one
// begins to shut down. It used to start the old one's shutdown first,
// and a connection routed in that gap went to a side that turned it away
// (the client saw its connection closed without a response). The test
// sends a request through the real redirect rules at exactly that moment
// (hooks.pointed) and wants it answered by the new side.
func TestReloadPointsNewConnectionsFirst(t *testing.T) {
	inOwnNetns(t, "hupgap", func(t *testing.T) {
		var got struct {
			ran    bool
			server string
			err    error
		}
		var l *reloadLab
		l = startReloadLab(t, hooks{pointed: func() {
			got.ran = true
			got.server, got.err = l.get()
		}})
		l.reloaded(t, 1)
		switch {
		case !got.ran:
			t.Fatalf("the reload did not replace the HTTP side:\n%s", l.logs.String())
		case got.err != nil:
			t.Fatalf("a request routed as the reload switched HTTP sides failed: %v", got.err)
		case got.server != "after-reload":
			t.Errorf("a request routed as the reload switched HTTP sides: Server %q, want the new side's %q", got.server, "after-reload")
		}
	})
}

// TestReloadTakesLateConnections: a connection whose goroutine loaded the
// HTTP side just before a reload replaced it, and handed itself to that
// side only once the side was retired, used to be closed without a
// response: the retired side turned it away. It now goes to the new side.
// The test holds its request's connection in that gap (hooks.loaded)
// while a whole reload runs and the old side is retired (hooks.retired).
func TestReloadTakesLateConnections(t *testing.T) {
	inOwnNetns(t, "hupwin", func(t *testing.T) {
		retired := make(chan struct{})
		var once, retire sync.Once
		// The hook runs on a connection's goroutine: the request's path
		// through the kernel orders nothing for the race detector.
		var shared atomic.Pointer[reloadLab]
		l := startReloadLab(t, hooks{
			loaded: func() {
				once.Do(func() {
					shared.Load().reloaded(t, 1)
					select {
					case <-retired:
					case <-time.After(30 * time.Second):
						t.Error("the old HTTP side was never retired")
					}
				})
			},
			retired: func() { retire.Do(func() { close(retired) }) },
		})
		shared.Store(l)
		server, err := l.get()
		switch {
		case err != nil:
			t.Fatalf("a connection that reached a retired HTTP side failed: %v\n%s", err, l.logs.String())
		case server != "after-reload":
			t.Errorf("a connection that reached a retired HTTP side: Server %q, want the new side's %q", server, "after-reload")
		}
	})
}
