package e2e

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/detour-proxy/detour/internal/lab"
	"github.com/detour-proxy/detour/internal/ns"
)

const portSilent = 7006 // accepts, reads, never answers

// httpLab is the tproxy lab with httpbin on the server and detour in auto
// mode on the router, as in the first tutorial.
type httpLab struct {
	net    *lab.TProxyNet
	bin    *lab.HTTPBin
	detour *lab.Detour
}

func startHTTPLab(t *testing.T, extra ...string) *httpLab {
	t.Helper()
	n := tproxyNet(t, "h")
	bin := startHTTPBin(t, n.Server)
	stop, err := lab.ServeTCP(n.Server, portSilent, func(c *net.TCPConn) { io.Copy(io.Discard, c) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	args := append([]string{"--mode", "tproxy", "--listen", "0.0.0.0:15001", "--listen", "[::]:15001",
		"--intercept-port", "80,7003,7006", "--admin", "off", "--log-level", "debug",
		"--cleanup-interval", "1s", "--route-timeout", "2s"}, extra...)
	d := startDetour(t, n.Router, args...)
	return &httpLab{net: n, bin: bin, detour: d}
}

// keepAliveClient dials from n and keeps one connection for all requests.
func keepAliveClient(n *ns.NS) *http.Client {
	return &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{
		DialContext: n.Dialer(&net.Dialer{Timeout: 5 * time.Second}), MaxIdleConnsPerHost: 1,
	}}
}

type headersBody struct {
	Headers map[string][]string `json:"headers"`
}

var uuidRe = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func getHeaders(t *testing.T, c *http.Client, url string, reqHeaders map[string]string) (*http.Response, headersBody) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	for k, v := range reqHeaders {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	var hb headersBody
	if err := json.NewDecoder(resp.Body).Decode(&hb); err != nil {
		t.Fatalf("decode /headers: %v", err)
	}
	return resp, hb
}

// TestHTTPThroughRouter checks, in the tproxy lab with real clients, what
// the tutorial shows Envoy doing with intercepted HTTP.
func TestHTTPThroughRouter(t *testing.T) {
	needRoot(t)
	l := startHTTPLab(t)
	client := keepAliveClient(l.net.Client)

	for _, dst := range []netip.Addr{l.net.ServerIP4, l.net.ServerIP6} {
		url := "http://" + netip.AddrPortFrom(dst, 80).String() + "/headers"
		t.Run("headers "+dst.String(), func(t *testing.T) {
			resp, hb := getHeaders(t, client, url, nil)
			if got := resp.Header.Get("Server"); got != "detour" {
				t.Errorf("server header = %q, want detour", got)
			}
			if ms, err := strconv.Atoi(resp.Header.Get("X-Detour-Upstream-Service-Time")); err != nil || ms < 0 {
				t.Errorf("x-detour-upstream-service-time = %q", resp.Header.Get("X-Detour-Upstream-Service-Time"))
			}
			if got := hb.Headers["X-Forwarded-Proto"]; len(got) != 1 || got[0] != "http" {
				t.Errorf("upstream saw x-forwarded-proto %v", got)
			}
			if got := hb.Headers["X-Request-Id"]; len(got) != 1 || !uuidRe.MatchString(got[0]) {
				t.Errorf("upstream saw x-request-id %v, want one UUIDv4", got)
			}
			if got := hb.Headers["Host"]; len(got) != 1 || got[0] != netip.AddrPortFrom(dst, 80).Addr().String() && !strings.Contains(got[0], dst.String()) {
				t.Errorf("host header changed: %v", got)
			}
		})
	}

	t.Run("debug log closes the connection under its id", func(t *testing.T) {
		client.CloseIdleConnections()
		waitLog(t, l.detour.Output, "forwarded=L7", 1)
		id := regexp.MustCompile(`msg=closed (conn=C\d+) client=\S+ forwarded=L7`).FindStringSubmatch(l.detour.Output())
		if id == nil || !strings.Contains(l.detour.Output(), "msg=sniffed "+id[1]) {
			t.Fatalf("want a closed line with forwarded=L7 under the id of a sniffed connection:\n%s", l.detour.Output())
		}
	})

	t.Run("client request id kept", func(t *testing.T) {
		_, hb := getHeaders(t, client, "http://198.18.2.2/headers", map[string]string{"X-Request-Id": "trace-abc-123"})
		if got := hb.Headers["X-Request-Id"]; len(got) != 1 || got[0] != "trace-abc-123" {
			t.Fatalf("x-request-id = %v, want the client's", got)
		}
	})

	t.Run("steering header stripped and ignored", func(t *testing.T) {
		resp, hb := getHeaders(t, client, "http://198.18.2.2/headers",
			map[string]string{"X-Detour-Original-Dst-Host": "198.18.2.2:7003"})
		if resp.StatusCode != 200 {
			t.Fatalf("status %d: the header steered the request", resp.StatusCode)
		}
		if _, ok := hb.Headers["X-Detour-Original-Dst-Host"]; ok {
			t.Fatal("steering header reached the server")
		}
	})

	t.Run("ten sequential requests share one upstream connection", func(t *testing.T) {
		c := keepAliveClient(l.net.Client)
		before := l.bin.Conns()
		for i := 0; i < 10; i++ {
			resp, err := c.Get("http://198.18.2.2/get")
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		if got := l.bin.Conns() - before; got > 1 {
			t.Fatalf("server accepted %d connections for 10 keep-alive requests, want at most 1", got)
		}
	})

	t.Run("refused upstream is 503 naming the reason", func(t *testing.T) {
		resp, err := client.Get("http://198.18.2.2:7003/")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 503 || !strings.Contains(string(body), "connection refused") {
			t.Fatalf("got %d %q, want 503 naming connection refused", resp.StatusCode, body)
		}
	})

	t.Run("silent upstream is 504 after the route timeout", func(t *testing.T) {
		start := time.Now()
		resp, err := client.Get("http://198.18.2.2:7006/")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 504 || !strings.Contains(string(body), "upstream request timeout") {
			t.Fatalf("got %d %q, want 504 upstream request timeout", resp.StatusCode, body)
		}
		if d := time.Since(start); d < 2*time.Second {
			t.Fatalf("504 after %v, before the 2s route timeout", d)
		}
	})

	t.Run("curl", func(t *testing.T) {
		if _, err := exec.LookPath("curl"); err != nil {
			t.Skip("curl not installed")
		}
		out, err := l.net.Client.Command(context.Background(), "curl", "-sv", "--max-time", "10", "http://198.18.2.2/headers").CombinedOutput()
		if err != nil {
			t.Fatalf("curl: %v\n%s", err, out)
		}
		for _, want := range []string{"< HTTP/1.1 200", "< Server: detour", "< X-Detour-Upstream-Service-Time:", `"X-Forwarded-Proto"`} {
			if !strings.Contains(string(out), want) {
				t.Errorf("curl output lacks %q:\n%s", want, out)
			}
		}
		h2, err := l.net.Client.Command(context.Background(), "curl", "-s", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
			"--http2-prior-knowledge", "--max-time", "10", "http://198.18.2.2/get").CombinedOutput()
		if err != nil || string(h2) != "2 200" {
			t.Errorf("h2c prior knowledge through detour: %q, %v", h2, err)
		}
	})

	t.Run("stale host removed after the cleanup interval", func(t *testing.T) {
		deadline := time.Now().Add(15 * time.Second)
		for time.Now().Before(deadline) {
			if strings.Contains(l.detour.Output(), "removing stale host") {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Fatalf("no \"removing stale host\" in detour's log within 15s")
	})
}

// TestHTTPThroughRedirect: the second tutorial, at L7.
func TestHTTPThroughRedirect(t *testing.T) {
	needRoot(t)
	n := redirectNet(t, "hr")
	startHTTPBin(t, n.Server)
	startDetour(t, n.Host, "--mode", "redirect", "--intercept-port", "80", "--admin", "off")
	client := keepAliveClient(n.Host)
	for _, dst := range []netip.Addr{n.ServerIP4, n.ServerIP6} {
		resp, hb := getHeaders(t, client, "http://"+netip.AddrPortFrom(dst, 80).String()+"/headers", nil)
		if resp.Header.Get("Server") != "detour" || len(hb.Headers["X-Request-Id"]) != 1 {
			t.Fatalf("%s: not proxied at L7: server=%q headers=%v", dst, resp.Header.Get("Server"), hb.Headers)
		}
	}
}

// TestHTTPKeepAliveOnLoops checks, through the router's TPROXY rules over
// IPv4 and IPv6, that the epoll loops serve a keep-alive connection's
// requests from its third on (debug logging, which the other tests here
// use, keeps connections off the loops), with detour's fields both ways.
func TestHTTPKeepAliveOnLoops(t *testing.T) {
	needRoot(t)
	l := startHTTPLab(t, "--log-level", "info", "--admin", obsAdmin)
	const requests = 6
	for _, dst := range []netip.Addr{l.net.ServerIP4, l.net.ServerIP6} {
		c := keepAliveClient(l.net.Client)
		url := "http://" + netip.AddrPortFrom(dst, 80).String() + "/headers"
		ids := map[string]bool{}
		for i := range requests {
			resp, hb := getHeaders(t, c, url, nil)
			id := hb.Headers["X-Request-Id"]
			if resp.StatusCode != 200 || resp.Header.Get("Server") != "detour" || resp.Header.Get("X-Detour-Upstream-Service-Time") == "" ||
				len(id) != 1 || !uuidRe.MatchString(id[0]) || ids[id[0]] || len(hb.Headers["X-Forwarded-Proto"]) != 1 {
				t.Fatalf("%s request %d: %s, header %v, upstream saw %v", dst, i, resp.Status, resp.Header, hb.Headers)
			}
			ids[id[0]] = true
		}
		c.CloseIdleConnections()
	}
	// A loop counts a request once its response is written whole, which
	// can come a moment after the client read it: scrape until both
	// counts are in (or the wait is over), then check them.
	hosts := []string{"198.18.2.2:80", "[2001:db8:2::2]:80"}
	var got map[string]float64
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		var err error
		if got, err = obsScrape(obsClient(l.net.Router), obsAdmin); err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(hosts, func(h string) bool { return got[`detour_upstream_loop_requests_total{host=`+h+`}`] < requests-2 }) ||
			time.Now().After(deadline) {
			break
		}
	}
	for _, host := range hosts {
		if n := got[`detour_upstream_loop_requests_total{host=`+host+`}`]; n != requests-2 {
			t.Errorf("%s: %v requests served on a loop, want %d", host, n, requests-2)
		}
	}
}

// TestHTTPAutoReusesPool: in auto mode (the default) a new client
// connection to a destination with an idle pooled connection is not dialed
// while sniffing; its request reuses the pool, as with --protocol http.
// Before, each client connection opened an upstream connection of its own.
func TestHTTPAutoReusesPool(t *testing.T) {
	needRoot(t)
	l := startHTTPLab(t, "--log-level", "info", "--admin", obsAdmin, "--cleanup-interval", "30s")
	const host = "198.18.2.2:80"
	url := "http://" + netip.AddrPortFrom(l.net.ServerIP4, 80).String() + "/headers"
	admin := obsClient(l.net.Router)
	const clients = 3
	for i := range clients {
		if i > 0 {
			// The last response may reach the client before its upstream
			// connection is back in the pool.
			deadline := time.Now().Add(5 * time.Second)
			for {
				got, err := obsScrape(admin, obsAdmin)
				if err == nil && got[`detour_upstream_connections_idle{host=`+host+`}`] >= 1 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("client %d: no idle upstream connection (%v)", i, err)
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
		if resp, _ := getHeaders(t, lab.HTTPClient(l.net.Client), url, nil); resp.StatusCode != 200 || resp.Header.Get("Server") != "detour" {
			t.Fatalf("client %d: %s, header %v", i, resp.Status, resp.Header)
		}
	}
	// A connect made while sniffing is accepted by httpbin even when detour
	// closes it unused; give one a moment to show up.
	time.Sleep(200 * time.Millisecond)
	if n := l.bin.Conns(); n != 1 {
		t.Errorf("httpbin accepted %d connections for %d client connections, want 1", n, clients)
	}
	got, err := obsScrape(admin, obsAdmin)
	if err != nil {
		t.Fatal(err)
	}
	if n := got[`detour_upstream_connections_total{host=`+host+`,layer=l7}`]; n != 1 {
		t.Errorf("%v upstream connections for %d client connections, want 1", n, clients)
	}
	if n := got[`detour_upstream_reused_total{host=`+host+`}`]; n != clients-1 {
		t.Errorf("%v requests reused a connection, want %d", n, clients-1)
	}
}
