package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/detour-proxy/detour/internal/admin"
	"github.com/detour-proxy/detour/internal/lab"
	"github.com/detour-proxy/detour/internal/ns"
)

const obsAdmin = "127.0.0.1:9901"

// obsClient reaches an admin endpoint from inside n.
func obsClient(n *ns.NS) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		Proxy: nil, DialContext: n.Dialer(nil), DisableKeepAlives: true,
	}}
}

func obsGet(c *http.Client, addr, path string) (int, string, error) {
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// obsScrape parses /metrics with expfmt into "name{l1=v1,l2=v2}" ->
// value; labels sorted by name, histograms as name_count{...}.
func obsScrape(c *http.Client, addr string) (map[string]float64, error) {
	code, body, err := obsGet(c, addr, "/metrics")
	if err != nil {
		return nil, err
	}
	if code != 200 {
		return nil, fmt.Errorf("/metrics: %d", code)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("parse /metrics: %w", err)
	}
	out := map[string]float64{}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, l.GetName()+"="+l.GetValue())
			}
			sort.Strings(ls)
			labels := ""
			if len(ls) > 0 {
				labels = "{" + strings.Join(ls, ",") + "}"
			}
			key := name + labels
			switch {
			case m.Counter != nil:
				out[key] = m.GetCounter().GetValue()
			case m.Gauge != nil:
				out[key] = m.GetGauge().GetValue()
			case m.Histogram != nil:
				out[name+"_count"+labels] = float64(m.GetHistogram().GetSampleCount()) // as the text format names it
			case m.Untyped != nil:
				out[key] = m.GetUntyped().GetValue()
			}
		}
	}
	return out, nil
}

// obsMismatch lists the expected values the scrape does not hold.
func obsMismatch(got, want map[string]float64) string {
	var bad []string
	for k, v := range want {
		if g, ok := got[k]; !ok {
			bad = append(bad, fmt.Sprintf("%s missing (want %v)", k, v))
		} else if g != v {
			bad = append(bad, fmt.Sprintf("%s = %v, want %v", k, g, v))
		}
	}
	sort.Strings(bad)
	return strings.Join(bad, "\n")
}

// obsWaitMetrics scrapes until every expected value holds (events land
// a moment after the client sees its connection end).
func obsWaitMetrics(t *testing.T, c *http.Client, want map[string]float64) map[string]float64 {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := obsScrape(c, obsAdmin)
		var bad string
		if err == nil {
			if bad = obsMismatch(got, want); bad == "" {
				return got
			}
		} else {
			bad = err.Error()
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics after 10s:\n%s", bad)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// obsRecord is one access log line (JSON).
type obsRecord struct {
	Kind       string  `json:"kind"`
	ID         string  `json:"id"`
	RequestID  string  `json:"request_id"`
	Client     string  `json:"client"`
	OrigDst    string  `json:"original_dst"`
	Dst        string  `json:"dst"`
	Protocol   string  `json:"protocol"`
	Method     string  `json:"method"`
	Authority  string  `json:"authority"`
	Path       string  `json:"path"`
	Status     int     `json:"status"`
	Flags      string  `json:"flags"`
	Sent       int64   `json:"sent"`
	Received   int64   `json:"received"`
	DurationMS float64 `json:"duration_ms"`
	UpstreamMS float64 `json:"upstream_ms"`
	Reused     bool    `json:"reused"`
	End        string  `json:"end"`
	Time       string  `json:"time"`
	ConnectMS  float64 `json:"connect_ms"`
	SNI        *string `json:"sni"`
}

func obsReadLog(t *testing.T, path string) []obsRecord {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []obsRecord
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		var r obsRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("%s: bad line %q: %v", path, sc.Text(), err)
		}
		if _, err := time.Parse(time.RFC3339Nano, r.Time); err != nil {
			t.Errorf("record time %q: %v", r.Time, err)
		}
		out = append(out, r)
	}
	return out
}

// obsBanner runs one L4 exchange with the banner server: 22 bytes of
// banner and 3 echoed to the client, 3 sent.
func obsBanner(t *testing.T, n *lab.TProxyNet) *net.TCPConn {
	t.Helper()
	conn := dial(t, n.Client, n.ServerIP4, portBanner)
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	banner := make([]byte, len("220 detour-e2e ready\r\n"))
	if _, err := io.ReadFull(conn, banner); err != nil {
		t.Fatalf("banner: %v", err)
	}
	return conn
}

func obsFinishBanner(t *testing.T, conn *net.TCPConn) {
	t.Helper()
	conn.Write([]byte("hi\n"))
	echo := make([]byte, 3)
	if _, err := io.ReadFull(conn, echo); err != nil || string(echo) != "hi\n" {
		t.Fatalf("echo %q: %v", echo, err)
	}
	conn.CloseWrite()
	if rest, err := io.ReadAll(conn); err != nil || len(rest) > 0 {
		t.Fatalf("after the echo: %q, %v", rest, err)
	}
	conn.Close()
}

// obsRefused dials dst and expects detour to close (or reset) it without
// data.
func obsRefused(t *testing.T, from *ns.NS, dst netip.AddrPort) {
	t.Helper()
	c, err := from.Dialer(nil)(context.Background(), "tcp", dst.String())
	if err != nil {
		return
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err == nil || n > 0 {
		t.Fatalf("%s: read %d bytes; want the connection closed", dst, n)
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("%s: still open after 10s", dst)
	}
}

// TestObserve sends known traffic through detour in the tproxy lab and
// checks that the metrics, /clusters, `detour status` and the access log
// count exactly that; that SIGUSR1 rotates the access log; and that /ready
// turns 503 while detour drains.
func TestObserve(t *testing.T) {
	needRoot(t)
	t.Parallel()
	const N, M = 5, 3 // HTTP requests to httpbin, L4 exchanges with the banner server
	n := tproxyNet(t, "ob")
	web, err := lab.StartHTTPBin(n.Server, 80)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { web.Close() })
	startServers(t, n.Server)
	logPath := filepath.Join(t.TempDir(), "access.log")
	d := startDetour(t, n.Router, "--mode", "tproxy", "--listen", "0.0.0.0:15001", "--listen", "[::]:15001",
		"--intercept-port", "80,7002,7003", "--admin", obsAdmin, "--access-log", logPath, "--access-log-format", "json",
		"--cleanup-interval", "1m", "--drain-timeout", "5s")
	adm := obsClient(n.Router)
	if code, body, err := obsGet(adm, obsAdmin, "/ready"); err != nil || code != 200 || body != "ready\n" {
		t.Fatalf("/ready after msg=ready: %d %q %v", code, body, err)
	}

	server := n.ServerIP4.String()
	hc := lab.HTTPClient(n.Client)
	for i := 0; i < N; i++ {
		resp, err := hc.Get(fmt.Sprintf("http://%s/get?i=%d", server, i))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("GET /get: %s", resp.Status)
		}
	}
	// HTTP to a port nothing listens on: detour answers 503 (UF).
	resp, err := hc.Get("http://" + server + ":7003/refused")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 {
		t.Fatalf("GET to a refused port: %s, want 503", resp.Status)
	}
	for i := 0; i < M; i++ {
		conn := obsBanner(t, n)
		if i == 0 { // an open connection's bytes count before it ends
			obsWaitMetrics(t, adm, map[string]float64{
				`detour_tcp_bytes_total{direction=received}`:        22,
				`detour_tcp_connections_total{flag=-,protocol=tcp}`: 0,
			})
		}
		obsFinishBanner(t, conn)
	}
	// A silent L4 client to the refused port: reset (UF).
	obsRefused(t, n.Client, netip.AddrPortFrom(n.ServerIP4, portClosed))

	first := map[string]float64{
		`detour_downstream_connections_total{mode=tproxy}`:                  N + 1 + M + 1,
		`detour_http_requests_total{code_class=2xx}`:                        N,
		`detour_http_requests_total{code_class=5xx}`:                        1,
		`detour_tcp_connections_total{flag=-,protocol=tcp}`:                 M,
		`detour_tcp_connections_total{flag=UF,protocol=tcp}`:                1,
		`detour_downstream_connections_active`:                              0,
		`detour_upstream_connections_active{host=198.18.2.2:7002,layer=l4}`: 0,
	}
	obsWaitMetrics(t, adm, first)

	// Rotate the access log: what was logged so far stays in the old file.
	if err := os.Rename(logPath, logPath+".1"); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(d.Pid(), syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(d.Output(), "access log reopened"); {
		if time.Now().After(deadline) {
			t.Fatal("no 'access log reopened' in detour's log 5s after SIGUSR1")
		}
		time.Sleep(20 * time.Millisecond)
	}

	// The loop guard: the client dials the router's own proxy port.
	obsRefused(t, n.Client, netip.MustParseAddrPort("198.18.1.1:15001"))

	got := obsWaitMetrics(t, adm, map[string]float64{
		`detour_ready`:           1,
		`detour_rules_installed`: 1,
		`detour_listeners`:       2,
		`detour_downstream_connections_total{mode=tproxy}`:                      N + 1 + M + 1 + 1,
		`detour_downstream_connections_total{mode=redirect}`:                    0,
		`detour_downstream_connections_active`:                                  0,
		`detour_downstream_refused_total{reason=loop}`:                          1,
		`detour_downstream_refused_total{reason=not intercepted}`:               0,
		`detour_downstream_protocol_total{protocol=http}`:                       N + 1,
		`detour_downstream_protocol_total{protocol=tcp}`:                        M + 1,
		`detour_downstream_protocol_total{protocol=tls}`:                        0,
		`detour_http_connections_active`:                                        0,
		`detour_tcp_connections_total{flag=-,protocol=tcp}`:                     M,
		`detour_tcp_connections_total{flag=UF,protocol=tcp}`:                    1,
		`detour_tcp_connections_total{flag=LR,protocol=tcp}`:                    1,
		`detour_tcp_connections_total{flag=UC,protocol=tcp}`:                    0,
		`detour_tcp_connections_total{flag=DC,protocol=tcp}`:                    0,
		`detour_tcp_bytes_total{direction=sent}`:                                3 * M,
		`detour_tcp_bytes_total{direction=received}`:                            25 * M,
		`detour_tcp_connection_duration_seconds_count`:                          M,
		`detour_upstream_connect_duration_seconds_count{layer=l4}`:              M,
		`detour_http_requests_total{code_class=2xx}`:                            N,
		`detour_http_requests_total{code_class=5xx}`:                            1,
		`detour_http_requests_total{code_class=4xx}`:                            0,
		`detour_http_requests_total{code_class=none}`:                           0,
		`detour_http_response_flags_total{flag=UF}`:                             1,
		`detour_http_response_flags_total{flag=UT}`:                             0,
		`detour_http_response_flags_total{flag=UC}`:                             0,
		`detour_http_response_flags_total{flag=DC}`:                             0,
		`detour_http_response_flags_total{flag=LR}`:                             0,
		`detour_http_request_duration_seconds_count`:                            N + 1,
		`detour_http_upstream_duration_seconds_count`:                           N,
		`detour_cluster_hosts`:                                                  2,
		`detour_upstream_requests_total{host=198.18.2.2:80}`:                    N,
		`detour_upstream_requests_active{host=198.18.2.2:80}`:                   0,
		`detour_upstream_connect_failures_total{host=198.18.2.2:80,layer=l7}`:   0,
		`detour_upstream_requests_total{host=198.18.2.2:7003}`:                  1,
		`detour_upstream_connect_failures_total{host=198.18.2.2:7003,layer=l7}`: 1,
		`detour_upstream_connections_total{host=198.18.2.2:7003,layer=l7}`:      0,
		`detour_upstream_connections_total{host=198.18.2.2:7002,layer=l4}`:      M,
		`detour_upstream_connections_active{host=198.18.2.2:7002,layer=l4}`:     0,
		`detour_upstream_connect_failures_total{host=198.18.2.2:7002,layer=l4}`: 0,
		`detour_upstream_connections_total{host=198.18.2.2:7003,layer=l4}`:      0,
		`detour_upstream_connect_failures_total{host=198.18.2.2:7003,layer=l4}`: 1,
		`detour_upstream_timeouts_total{host=198.18.2.2:7003,layer=l4}`:         0,
	})
	if _, ok := got["go_goroutines"]; !ok {
		t.Error("no Go runtime metrics")
	}
	if _, ok := got["process_open_fds"]; !ok {
		t.Error("no process metrics")
	}
	// Each request to :80 used a new upstream connection or a pooled one.
	reused := got[`detour_upstream_reused_total{host=198.18.2.2:80}`]
	connects := got[`detour_upstream_connections_total{host=198.18.2.2:80,layer=l7}`]
	if connects < 1 || connects+reused < N || reused > N-1 {
		t.Errorf(":80: %v connections opened, %v requests reused one; want every one of %d requests served by either", connects, reused, N)
	}
	// Every upstream connection the cluster opened had its connect timed
	// (:7003's failed, so none there).
	if timed := got[`detour_upstream_connect_duration_seconds_count{layer=l7}`]; timed != connects {
		t.Errorf("l7 connect times: %v observed, want one per upstream connection opened (%v)", timed, connects)
	}
	// A loop serves only requests on a kept (reused) upstream connection.
	if onLoop, ok := got[`detour_upstream_loop_requests_total{host=198.18.2.2:80}`]; !ok || onLoop > reused {
		t.Errorf(":80: %v requests served on a loop (series present: %v), %v reused; want at most the reused ones", onLoop, ok, reused)
	}

	// /clusters, as JSON and as text.
	code, body, err := obsGet(adm, obsAdmin, "/clusters?format=json")
	if err != nil || code != 200 {
		t.Fatalf("/clusters?format=json: %d %v", code, err)
	}
	var cl admin.Clusters
	if err := json.Unmarshal([]byte(body), &cl); err != nil {
		t.Fatal(err)
	}
	hosts := map[string]admin.Host{}
	for _, h := range cl.Hosts {
		hosts[h.Host] = h
	}
	if h := hosts["198.18.2.2:80"]; len(cl.Hosts) != 2 || h.Requests != N || h.Active != 0 ||
		float64(h.Reuses) != reused || float64(h.Connects) != connects || h.ConnectFailures != 0 || h.Idle < 1 {
		t.Errorf("/clusters host :80 = %+v (of %d hosts)", h, len(cl.Hosts))
	}
	if h := hosts["198.18.2.2:7003"]; h.Requests != 1 || h.ConnectFailures != 1 || h.Connects != 0 {
		t.Errorf("/clusters host :7003 = %+v", h)
	}
	dests := map[string]admin.TCPDestination{}
	for _, dd := range cl.TCPDestinations {
		dests[dd.Dst] = dd
	}
	if dd := dests["198.18.2.2:7002"]; len(dests) != 2 || dd.Connections != M || dd.Active != 0 {
		t.Errorf("/clusters L4 destinations = %+v", cl.TCPDestinations)
	}
	if dd := dests["198.18.2.2:7003"]; dd.ConnectFailures != 1 || dd.Connections != 0 {
		t.Errorf("/clusters L4 :7003 = %+v", dd)
	}
	if code, body, _ := obsGet(adm, obsAdmin, "/clusters"); code != 200 ||
		!strings.Contains(body, "original-destination cluster: 2 hosts") || !strings.Contains(body, "198.18.2.2:80 ") {
		t.Errorf("/clusters text: %d\n%s", code, body)
	}
	if code, body, _ := obsGet(adm, obsAdmin, "/config"); code != 200 || !strings.Contains(body, "access_log_format: json") ||
		!strings.Contains(body, "admin: "+obsAdmin) || !strings.Contains(body, "\n    loops: "+loggedLoops(t, d.Output())+"\n") {
		t.Errorf("/config: %d\n%s", code, body)
	}

	// `detour status` in the router's namespace.
	out, err := detourCmd(t, n.Router, "status")
	if err != nil {
		t.Fatalf("detour status: %v\n%s", err, out)
	}
	for _, want := range []string{
		": ready, mode tproxy, protocol auto",
		"listeners:   0.0.0.0:15001, [::]:15001",
		"rules:       installed, table inet detour, ports 80,7002,7003",
		fmt.Sprintf("%d accepted, 1 refused (1 loops); %d HTTP requests", N+M+3, N+1),
		"198.18.2.2:80", "198.18.2.2:7002",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("detour status lacks %q:\n%s", want, out)
		}
	}

	// Draining: a connection stays open, SIGTERM, /ready turns 503.
	long := obsBanner(t, n)
	if err := syscall.Kill(d.Pid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(3 * time.Second); ; {
		code, body, err := obsGet(adm, obsAdmin, "/ready")
		if err == nil && code == 503 && body == "draining\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/ready during drain: %d %q %v; want 503 draining", code, body, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The listeners are closed: none serves (Envoy's draining listeners
	// leave total_listeners_active too).
	if m, err := obsScrape(adm, obsAdmin); err != nil || m["detour_ready"] != 0 || m["detour_downstream_connections_active"] != 1 ||
		m["detour_listeners"] != 0 {
		t.Errorf("metrics during drain: ready %v, active %v, listeners %v, %v", m["detour_ready"], m["detour_downstream_connections_active"],
			m["detour_listeners"], err)
	}
	obsFinishBanner(t, long)
	select {
	case <-d.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("detour did not exit after its last connection closed")
	}
	if err := d.Stop(); err != nil {
		t.Fatalf("exit: %v", err)
	}

	// The access log: the old file has everything before SIGUSR1, the
	// new one the loop refusal and the drained connection.
	old, cur := obsReadLog(t, logPath+".1"), obsReadLog(t, logPath)
	var http200, http503, l4ok, l4uf int
	reusedLog := 0
	for _, r := range old {
		switch {
		case r.Kind == "http" && r.Status == 200:
			http200++
			if r.Flags != "-" || r.Method != "GET" || !strings.HasPrefix(r.Path, "/get?i=") || r.Dst != server+":80" || r.OrigDst != server+":80" ||
				!strings.HasPrefix(r.Client, n.ClientIP4.String()+":") || r.RequestID == "" || r.Protocol != "HTTP/1.1" ||
				r.Authority != server || r.Received == 0 || r.UpstreamMS <= 0 || r.DurationMS < r.UpstreamMS {
				t.Errorf("HTTP 200 record: %+v", r)
			}
			if r.Reused {
				reusedLog++
			}
		case r.Kind == "http" && r.Status == 503:
			http503++
			if r.Flags != "UF" || r.Dst != server+":7003" || r.Path != "/refused" || r.UpstreamMS != 0 {
				t.Errorf("HTTP 503 record: %+v", r)
			}
		case r.Kind == "tcp" && r.Flags == "-":
			l4ok++
			if r.OrigDst != server+":7002" || r.Sent != 3 || r.Received != 25 || r.Protocol != "tcp" || r.End != "closed" ||
				r.ID == "" || r.SNI == nil || *r.SNI != "" {
				t.Errorf("L4 record: %+v", r)
			}
		case r.Kind == "tcp" && r.Flags == "UF":
			l4uf++
			if r.OrigDst != server+":7003" || r.End != "connection refused" || r.Sent != 0 {
				t.Errorf("L4 UF record: %+v", r)
			}
		default:
			t.Errorf("unexpected record before rotation: %+v", r)
		}
	}
	if http200 != N || http503 != 1 || l4ok != M || l4uf != 1 || len(old) != N+1+M+1 {
		t.Errorf("rotated log: %d HTTP 200, %d HTTP 503, %d L4, %d L4 UF of %d records; want %d, 1, %d, 1", http200, http503, l4ok, l4uf, len(old), N, M)
	}
	if float64(reusedLog) != reused {
		t.Errorf("access log: %d requests reused a connection, metrics say %v", reusedLog, reused)
	}
	var lr, drained int
	for _, r := range cur {
		switch {
		case r.Kind == "tcp" && r.Flags == "LR":
			lr++
			if r.OrigDst != "198.18.1.1:15001" || r.End != "loop refused" || !strings.HasPrefix(r.Client, n.ClientIP4.String()+":") {
				t.Errorf("LR record: %+v", r)
			}
		case r.Kind == "tcp" && r.Flags == "-" && r.OrigDst == server+":7002" && r.Sent == 3 && r.Received == 25:
			drained++
		default:
			t.Errorf("unexpected record after rotation: %+v", r)
		}
	}
	if lr != 1 || drained != 1 {
		t.Errorf("new log: %d LR, %d drained connections; want 1 and 1", lr, drained)
	}
}

// TestObserveAdminAddress: a non-loopback admin address is a config error
// (exit 2, before anything is installed) unless --admin-allow-remote, and
// then it is reachable from another host.
func TestObserveAdminAddress(t *testing.T) {
	needRoot(t)
	t.Parallel()
	n := tproxyNet(t, "oa")
	before := snapshot(t, n.Router)
	out, err := detourCmd(t, n.Router, "run", "--intercept-port", "80", "--admin", "198.18.1.1:9901")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Fatalf("run with a remote admin address: %v, want exit status 2\n%s", err, out)
	}
	for _, want := range []string{"admin: 198.18.1.1:9901 is not a loopback address", "--admin-allow-remote"} {
		if !strings.Contains(out, want) {
			t.Errorf("message lacks %q:\n%s", want, out)
		}
	}
	if after := snapshot(t, n.Router); after != before {
		t.Fatalf("a refused run changed the router:\n%s", after)
	}

	startDetour(t, n.Router, "--mode", "tproxy", "--listen", "0.0.0.0:15001", "--admin", "198.18.1.1:9901", "--admin-allow-remote")
	code, body, err := obsGet(obsClient(n.Client), "198.18.1.1:9901", "/ready")
	if err != nil || code != 200 || body != "ready\n" {
		t.Fatalf("/ready from the client with --admin-allow-remote: %d %q %v", code, body, err)
	}
	// And `detour status` says when it finds nothing.
	out, err = detourCmd(t, n.Client, "status")
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(out, "cannot reach the admin endpoint at http://127.0.0.1:9901") {
		t.Errorf("detour status with no detour: %v\n%s", err, out)
	}
}

// loggedLoops is the l4_loops the ready line of a detour's log names.
func loggedLoops(t *testing.T, log string) string {
	t.Helper()
	m := regexp.MustCompile(`msg=ready .*l4_loops=([0-9]+)`).FindStringSubmatch(log)
	if m == nil || m[1] == "0" {
		t.Fatalf("no ready line with l4_loops in:\n%s", log)
	}
	return m[1]
}
