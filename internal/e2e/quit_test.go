package e2e

import (
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestQuitQuitQuit: POST /quitquitquit on the admin endpoint, with which
// Istio's pilot-agent and Kubernetes preStop hooks stop Envoy, stops
// detour as SIGTERM does: it answers OK, stops diverting, lets the open
// connection finish, removes its rules and exits 0. The SIGTERM that
// Kubernetes sends after the preStop hook does not cut that drain short
// (a second signal would). A GET, and a POST a web page in a browser
// could send, stop nothing. It used to be 404.
func TestQuitQuitQuit(t *testing.T) {
	needRoot(t)
	n := tproxyNet(t, "qqq")
	startServers(t, n.Server)
	before := snapshot(t, n.Router)
	d := startDetour(t, n.Router, "--mode", "tproxy", "--intercept-port", interceptPorts,
		"--protocol", "tcp", "--admin", obsAdmin, "--drain-timeout", "1h")
	c := obsClient(n.Router)
	post := func(hdr map[string]string) (int, string) {
		t.Helper()
		req, err := http.NewRequest("POST", "http://"+obsAdmin+"/quitquitquit", nil)
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("POST /quitquitquit: %v", err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("POST /quitquitquit: reading the answer: %v", err)
		}
		return resp.StatusCode, string(b)
	}

	conn := dial(t, n.Client, n.ServerIP4, portBanner)
	conn.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := io.ReadFull(conn, make([]byte, len("220 detour-e2e ready\r\n"))); err != nil {
		t.Fatal(err)
	}

	// Neither a GET nor a web page's cross-site POST stops it.
	if code, _, _ := obsGet(c, obsAdmin, "/quitquitquit"); code != http.StatusMethodNotAllowed {
		t.Errorf("GET /quitquitquit: %d, want 405", code)
	}
	if code, _ := post(map[string]string{"Sec-Fetch-Site": "cross-site", "Origin": "http://evil.example"}); code != http.StatusForbidden {
		t.Errorf("a cross-site POST /quitquitquit: %d, want 403", code)
	}
	if code, body, err := obsGet(c, obsAdmin, "/ready"); code != 200 || err != nil {
		t.Fatalf("/ready after the refused requests: %d %q, %v; want detour still serving", code, body, err)
	}

	if code, body := post(nil); code != 200 || body != "OK\n" {
		t.Fatalf("POST /quitquitquit: %d %q, want 200 OK", code, body)
	}
	waitLog(t, d.Output, "shutting down: draining connections", 1) // logged once the rules stopped diverting
	if code, body, err := obsGet(c, obsAdmin, "/server_info"); err != nil || code != 200 || !strings.Contains(body, `"state": "DRAINING"`) {
		t.Errorf("/server_info while draining: %d, %v\n%s", code, err, body)
	}
	// Kubernetes' SIGTERM after the preStop hook: the drain goes on.
	if err := syscall.Kill(d.Pid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.Done():
		t.Fatalf("detour exited on the SIGTERM after /quitquitquit with a connection open and 1h of drain left:\n%s", d.Output())
	case <-time.After(500 * time.Millisecond):
	}
	conn.Write([]byte("still here\r\n"))
	echo := make([]byte, len("still here\r\n"))
	if _, err := io.ReadFull(conn, echo); err != nil || string(echo) != "still here\r\n" {
		t.Fatalf("open connection broken during the drain /quitquitquit began: %q, %v", echo, err)
	}
	// A new connection passes directly: the rules no longer divert.
	who := dial(t, n.Client, n.ServerIP4, portWhoAmI)
	who.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, err := io.ReadAll(who); string(b) != n.ClientIP4.String() {
		t.Fatalf("a new connection during the drain reached the server as %q (%v), want directly from %s", b, err, n.ClientIP4)
	}

	conn.Close()
	exitsClean(t, d, n.Router, before, 10*time.Second, "its last connection closed")
}
