package e2e

import (
	"bufio"
	"io"
	"net/http"
	"path/filepath"
	"testing"
	"time"
)

// TestIdleHTTPStacks: an idle keep-alive HTTP connection keeps its
// goroutine, and a goroutine keeps the stack its deepest moment needed, so
// the path of a connection's first request (sniffing and the connect made
// meanwhile in auto mode, serving, the metrics and the access log) must fit
// in 8 KiB, the size detour grows its connection goroutines to at once. A
// few hundred bytes more made every idle auto-mode connection hold 16 KiB
// (197 MiB at 10,000 connections against 139 MiB; bench/RESULTS.md,
// 2026-12-05 session 15). Measured as the growth of the runtime's stack
// memory per idle connection, with the access log on. Each request is
// sent as its connection opens, so auto mode decides at once and no
// helper goroutine's freed stack shares the memory counted (the connect
// made while sniffing takes one, which stays at the same depth).
func TestIdleHTTPStacks(t *testing.T) {
	needRoot(t)
	t.Parallel()
	const conns = 400
	for _, tc := range []struct {
		name, tag string
		args      []string
	}{
		{"auto", "stka", []string{"--protocol", "auto"}},
		{"http", "stkh", []string{"--protocol", "http"}},
		// The connect from the client's address copies Go's dialer: the
		// deepest connect.
		{"http spoofing", "stks", []string{"--protocol", "http", "--spoof-source"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			n := tproxyNet(t, tc.tag)
			startHTTPBin(t, n.Server)
			startDetour(t, n.Router, append([]string{"--mode", "tproxy", "--listen", "0.0.0.0:15001", "--intercept-port", "80",
				"--admin", obsAdmin, "--access-log", filepath.Join(t.TempDir(), "access.log"), "--access-log-format", "json"},
				tc.args...)...)
			adm := obsClient(n.Router)
			before, err := obsScrape(adm, obsAdmin)
			if err != nil {
				t.Fatal(err)
			}

			req := "GET /get HTTP/1.1\r\nHost: " + n.ServerIP4.String() + "\r\n\r\n"
			for i := range conns {
				c := dial(t, n.Client, n.ServerIP4, 80) // open until the test ends
				c.SetDeadline(time.Now().Add(10 * time.Second))
				if _, err := io.WriteString(c, req); err != nil {
					t.Fatalf("connection %d: %v", i, err)
				}
				resp, err := http.ReadResponse(bufio.NewReader(c), nil)
				if err != nil {
					t.Fatalf("connection %d: %v", i, err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || resp.Header.Get("Server") != "detour" {
					t.Fatalf("connection %d: %s, server %q; want 200 from detour", i, resp.Status, resp.Header.Get("Server"))
				}
			}
			after, err := obsScrape(adm, obsAdmin)
			if err != nil {
				t.Fatal(err)
			}

			// One goroutine per idle connection (a few of detour's own may
			// have ended meanwhile).
			if g := after["go_goroutines"] - before["go_goroutines"]; g < conns-20 {
				t.Fatalf("detour has %.0f goroutines more with %d idle connections; want about one each", g, conns)
			}
			per := (after["go_memstats_stack_inuse_bytes"] - before["go_memstats_stack_inuse_bytes"]) / conns
			t.Logf("%.1f KiB of stack per idle connection", per/1024)
			if per > 12<<10 {
				t.Errorf("%.1f KiB of stack per idle connection; want 8 KiB (a goroutine's stack grew to 16 KiB)", per/1024)
			}
		})
	}
}
