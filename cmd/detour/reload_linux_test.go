package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/detour-proxy/detour/internal/config"
	"github.com/detour-proxy/detour/internal/logbuf"
	"github.com/detour-proxy/detour/internal/ns"
)

// inNetnsEnv marks the copy of the test binary that runs inside the
// namespace the parent test made.
const inNetnsEnv = "DETOUR_TEST_IN_NETNS"

// TestReloadPointsNewConnectionsFirst: a SIGHUP that changes http.*
// must point new connections at the new HTTP side before the old one
// begins to shut down. It used to start the old one's shutdown first,
// and a connection routed in that gap went to a side that turned it away
// (the client saw its connection closed without a response). The test
// sends a request through the real redirect rules at exactly that moment
// (reloadPointed) and wants it answered by the new side.
//
// A whole detour runs in-process, so it runs inside a namespace of its
// own: the test binary runs itself there (`ip netns exec`), since a Go
// process cannot move all of its threads into one.
func TestReloadPointsNewConnectionsFirst(t *testing.T) {
	if os.Getenv(inNetnsEnv) != "" {
		reloadGapInNetns(t)
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root for a network namespace and redirect rules (CI runs as root)")
	}
	n, err := ns.New(fmt.Sprintf("dt-hupgap-B%d", os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := n.Command(ctx, self, "-test.run=^TestReloadPointsNewConnectionsFirst$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), inNetnsEnv+"=1")
	out, err := cmd.CombinedOutput()
	t.Logf("inside namespace %s:\n%s", n.Name, out)
	if err != nil || !strings.Contains(string(out), "--- PASS") {
		t.Fatalf("inside namespace %s: %v\n%s", n.Name, err, out)
	}
}

// reloadGapInNetns is the test's body, in a namespace of its own.
func reloadGapInNetns(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") }))
	defer up.Close()
	port := netip.MustParseAddrPort(up.Listener.Addr().String()).Port()
	conf := func(server string) string {
		return fmt.Sprintf("mode: redirect\nprotocol: http\nadmin: off\nlisten: ['127.0.0.1:15001']\n"+
			"intercept: {ports: [%d]}\nhttp: {server_header: %s}\n", port, server)
	}
	first, err := config.Parse([]byte(conf("before-reload")))
	if err == nil {
		err = first.Finish()
	}
	if err != nil {
		t.Fatal(err)
	}
	reread := func() (*config.Config, error) {
		c, err := config.Parse([]byte(conf("after-reload")))
		if err == nil {
			err = c.Finish()
		}
		return c, err
	}

	// The request in the gap: through the rules to the upstream, on a
	// fresh connection, so that it is routed then.
	var got struct {
		ran    bool
		server string
		err    error
	}
	reloadPointed = func() {
		got.ran = true
		c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		resp, err := c.Get(up.URL)
		if err != nil {
			got.err = err
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		got.server = resp.Header.Get("Server")
	}
	defer func() { reloadPointed = nil }()

	var logs logbuf.Buffer
	ctx, stop := context.WithCancel(context.Background())
	hard, stopHard := context.WithCancel(context.Background())
	defer stopHard()
	hup := make(chan os.Signal, 1)
	done := make(chan error, 1)
	go func() { done <- run(ctx, hard, first, reread, hup, &logs) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	if !logs.WaitFor("msg=ready", 1, 30*time.Second) {
		t.Fatalf("detour never got ready:\n%s", logs.String())
	}
	hup <- nil
	if !logs.WaitFor("configuration reloaded", 1, 30*time.Second) {
		t.Fatalf("the reload never finished:\n%s", logs.String())
	}
	switch {
	case !got.ran:
		t.Fatalf("the reload did not replace the HTTP side:\n%s", logs.String())
	case got.err != nil:
		t.Fatalf("a request routed as the reload switched HTTP sides failed: %v", got.err)
	case got.server != "after-reload":
		t.Errorf("a request routed as the reload switched HTTP sides: Server %q, want the new side's %q", got.server, "after-reload")
	}
}
