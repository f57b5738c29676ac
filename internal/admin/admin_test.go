package admin

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/detour-proxy/detour/internal/httpproxy"
	"github.com/detour-proxy/detour/internal/listen"
	"github.com/detour-proxy/detour/internal/metrics"
	"github.com/detour-proxy/detour/internal/proxy"
)

var now = time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)

type fixture struct {
	srv   *Server
	state *State
	level *slog.LevelVar
	m     *metrics.Metrics
	quits *atomic.Int32 // calls of Options.Quit
}

// start serves f's endpoint on its loopback address, which it returns,
// until the test ends.
func (f *fixture) start(t *testing.T) string {
	t.Helper()
	if err := f.srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.srv.Close() })
	return f.srv.Addr().String()
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	reg := prometheus.NewRegistry()
	hosts := []httpproxy.HostInfo{{
		Dst: netip.MustParseAddrPort("198.18.2.2:80"), Created: now.Add(-90 * time.Second), LastUsed: now.Add(-2 * time.Second),
		Requests: 5, Active: 1, Open: 2, Idle: 1, Connects: 2, Reuses: 3, Retries: 4, OnLoop: 2,
	}, {
		Dst: netip.MustParseAddrPort("198.18.2.2:81"), Client: netip.MustParseAddr("198.18.1.2"),
		Created: now.Add(-time.Second), LastUsed: now.Add(-time.Second), Requests: 1, ConnectFailures: 1,
	}}
	hostsFn := func() []httpproxy.HostInfo { return hosts }
	m, err := metrics.New(metrics.Options{Registry: reg, Hosts: hostsFn, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	m.Accepted(listen.ModeTProxy)
	m.Accepted(listen.ModeTProxy)
	m.Refused("loop")
	m.L4Done(proxy.L4Record{OrigDst: netip.MustParseAddrPort("198.18.1.1:15001"), Protocol: "tcp", Flags: "LR"})
	rec := proxy.L4Record{OrigDst: netip.MustParseAddrPort("198.18.2.2:7002"), Protocol: "tcp"}
	m.L4Started(rec)
	st := NewState()
	st.since = now.Add(-time.Hour - 5*time.Minute)
	reg.MustRegister(st)
	level := new(slog.LevelVar)
	quits := new(atomic.Int32)
	srv, err := New(Options{
		Addr: netip.MustParseAddrPort("127.0.0.1:0"), State: st, Gatherer: reg, Metrics: m, Hosts: hostsFn,
		Config: func() []byte { return []byte("mode: tproxy\n") }, Level: level, Info: Info{Version: "v1.2.3", Mode: "tproxy", Protocol: "auto"},
		Now: func() time.Time { return now }, Quit: func() { quits.Add(1) },
	})
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{srv: srv, state: st, level: level, m: m, quits: quits}
}

func (f *fixture) do(t *testing.T, method, target string) (int, string, http.Header) {
	t.Helper()
	w := httptest.NewRecorder()
	r := httptest.NewRequest(method, target, nil)
	r.Host = "127.0.0.1:9901"
	f.srv.ServeHTTP(w, r)
	return w.Code, w.Body.String(), w.Header()
}

func TestCheckAddr(t *testing.T) {
	for _, c := range []struct {
		addr  string
		allow bool
		ok    bool
	}{
		{"127.0.0.1:9901", false, true},
		{"[::1]:9901", false, true},
		{"127.0.0.2:9901", false, true},
		{"0.0.0.0:9901", false, false},
		{"[::]:9901", false, false},
		{"198.18.1.1:9901", false, false},
		{"198.18.1.1:9901", true, true},
		{"0.0.0.0:9901", true, true},
	} {
		err := CheckAddr(netip.MustParseAddrPort(c.addr), c.allow)
		if (err == nil) != c.ok {
			t.Errorf("CheckAddr(%s, %v) = %v", c.addr, c.allow, err)
		}
		if err != nil && !strings.Contains(err.Error(), "--admin-allow-remote") {
			t.Errorf("error does not say how to allow it: %v", err)
		}
	}
	if _, err := New(Options{Addr: netip.MustParseAddrPort("0.0.0.0:9901"), State: NewState()}); err == nil {
		t.Error("New accepted a remote address without AllowRemote")
	}
	if _, err := New(Options{Addr: netip.MustParseAddrPort("127.0.0.1:9901")}); err == nil {
		t.Error("New accepted no State")
	}
}

func TestReady(t *testing.T) {
	f := newFixture(t)
	for _, c := range []struct {
		phase Phase
		code  int
	}{{Starting, 503}, {Ready, 200}, {Draining, 503}} {
		f.state.SetPhase(c.phase)
		code, body, _ := f.do(t, "GET", "/ready")
		if code != c.code || body != string(c.phase)+"\n" {
			t.Errorf("%s: /ready = %d %q, want %d", c.phase, code, body, c.code)
		}
	}
}

func TestMetricsEndpoint(t *testing.T) {
	f := newFixture(t)
	f.state.SetPhase(Ready)
	f.state.SetRules(Rules{Managed: true, Installed: true, Table: "inet detour", Ports: []string{"80"}})
	f.state.SetListeners([]string{"0.0.0.0:15001", "[::]:15001"})
	code, body, h := f.do(t, "GET", "/metrics")
	if code != 200 || !strings.HasPrefix(h.Get("Content-Type"), "text/plain") {
		t.Fatalf("/metrics: %d %s", code, h.Get("Content-Type"))
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v\n%s", err, body)
	}
	for name, want := range map[string]float64{
		"detour_ready": 1, "detour_rules_installed": 1, "detour_listeners": 2, "detour_cluster_hosts": 2,
	} {
		fam := fams[name]
		if fam == nil || len(fam.Metric) != 1 || fam.Metric[0].GetGauge().GetValue() != want {
			t.Errorf("%s: %v, want %v", name, fam, want)
		}
	}
	if fam := fams["detour_downstream_refused_total"]; fam == nil {
		t.Error("detour_downstream_refused_total missing")
	}
}

func TestClusters(t *testing.T) {
	f := newFixture(t)
	code, body, _ := f.do(t, "GET", "/clusters")
	if code != 200 {
		t.Fatalf("/clusters: %d", code)
	}
	for _, want := range []string{
		"original-destination cluster: 2 hosts",
		"HOST           REQUESTS  ACTIVE  OPEN  IDLE  CONNECTS  REUSES  RETRIES  ON_LOOP  CONNECT_FAILURES  AGE   LAST_USED",
		"198.18.2.2:80  5         1       2     1     2         3       4        2        0                 1m30s  2s ago",
		"198.18.2.2:81/198.18.1.2",
		"L4 destinations: 1",
		"198.18.2.2:7002  1            1       0                 0         0s ago",
	} {
		// tabwriter pads each column to its widest cell: compare without runs of spaces.
		if !strings.Contains(squash(body), squash(want)) {
			t.Errorf("/clusters lacks %q:\n%s", want, body)
		}
	}
	code, body, h := f.do(t, "GET", "/clusters?format=json")
	if code != 200 || h.Get("Content-Type") != "application/json" {
		t.Fatalf("/clusters?format=json: %d %s", code, h.Get("Content-Type"))
	}
	var c Clusters
	if err := json.Unmarshal([]byte(body), &c); err != nil {
		t.Fatal(err)
	}
	if len(c.Hosts) != 2 || c.Hosts[0].Host != "198.18.2.2:80" || c.Hosts[0].Requests != 5 || c.Hosts[0].Idle != 1 ||
		c.Hosts[1].Client != "198.18.1.2" || c.Hosts[1].ConnectFailures != 1 ||
		len(c.TCPDestinations) != 1 || c.TCPDestinations[0].Active != 1 {
		t.Errorf("clusters JSON: %s", body)
	}
	if code, _, _ := f.do(t, "GET", "/clusters?format=xml"); code != 400 {
		t.Errorf("format=xml: %d, want 400", code)
	}
}

func squash(s string) string { return strings.Join(strings.Fields(s), " ") }

func TestStatusAndWriteStatus(t *testing.T) {
	f := newFixture(t)
	f.state.SetPhase(Ready)
	f.state.SetRules(Rules{Managed: true, Installed: true, Table: "inet detour", Ports: []string{"80", "443"}})
	f.state.SetListeners([]string{"0.0.0.0:15001"})
	_, body, _ := f.do(t, "GET", "/status")
	var st Status
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatal(err)
	}
	if st.Phase != Ready || st.Version != "v1.2.3" || len(st.Hosts) != 2 || st.Connections.Accepted != 2 ||
		st.Connections.LoopRefused != 1 || !st.Rules.Installed {
		t.Fatalf("status: %s", body)
	}
	var out strings.Builder
	WriteStatus(&out, st)
	for _, want := range []string{
		"detour v1.2.3: ready, mode tproxy, protocol auto, up 1h5m",
		"listeners:   0.0.0.0:15001",
		"rules:       installed, table inet detour, ports 80,443",
		"connections: 1 active, 2 accepted, 1 refused (1 loops); 0 HTTP requests",
		"198.18.2.2:80",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status output lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	st.Rules = Rules{}
	WriteStatus(&out, st)
	if !strings.Contains(out.String(), "rules:       none configured") {
		t.Errorf("unmanaged rules:\n%s", out.String())
	}
}

func TestConfigLoggingIndexPprof(t *testing.T) {
	f := newFixture(t)
	if code, body, _ := f.do(t, "GET", "/config"); code != 200 || body != "mode: tproxy\n" {
		t.Errorf("/config: %d %q", code, body)
	}
	if _, body, _ := f.do(t, "GET", "/logging"); body != "log level: info\n" {
		t.Errorf("GET /logging: %q", body)
	}
	if code, body, _ := f.do(t, "POST", "/logging?level=debug"); code != 200 || body != "log level: debug\n" || f.level.Level() != slog.LevelDebug {
		t.Errorf("POST /logging?level=debug: %d %q, level %v", code, body, f.level.Level())
	}
	if code, _, _ := f.do(t, "POST", "/logging?level=loud"); code != 400 || f.level.Level() != slog.LevelDebug {
		t.Errorf("POST /logging?level=loud: %d, level %v", code, f.level.Level())
	}
	if code, _, _ := f.do(t, "POST", "/logging"); code != 400 {
		t.Errorf("POST /logging without level: %d", code)
	}
	if code, _, _ := f.do(t, "GET", "/logging?level=warn"); code != 405 || f.level.Level() != slog.LevelDebug {
		t.Errorf("GET /logging?level=warn: %d, level %v; want 405 and the level unchanged", code, f.level.Level())
	}
	if code, _, _ := f.do(t, "PUT", "/logging?level=warn"); code != 405 {
		t.Errorf("PUT /logging: %d, want 405", code)
	}
	if code, _, _ := f.do(t, "POST", "/ready"); code != 405 {
		t.Errorf("POST /ready: %d, want 405", code)
	}
	code, body, h := f.do(t, "GET", "/")
	if code != 200 || !strings.HasPrefix(h.Get("Content-Type"), "text/html") {
		t.Fatalf("/: %d %s", code, h.Get("Content-Type"))
	}
	for _, want := range []string{`href="metrics"`, `href="stats"`, `href="server_info"`, `href="clusters?format=json"`, `href="debug/pprof/"`, "<td>198.18.2.2:80</td><td>5</td>", "2s ago", "198.18.2.2:7002"} {
		if !strings.Contains(body, want) {
			t.Errorf("index lacks %q", want)
		}
	}
	if code, _, _ := f.do(t, "GET", "/nope"); code != 404 {
		t.Errorf("/nope: %d", code)
	}
	if code, body, _ := f.do(t, "GET", "/debug/pprof/"); code != 200 || !strings.Contains(body, "goroutine") {
		t.Errorf("/debug/pprof/: %d", code)
	}
}

func TestStartServesOnLoopback(t *testing.T) {
	f := newFixture(t)
	addr := f.start(t)
	f.state.SetPhase(Ready)
	resp, err := http.Get("http://" + addr + "/ready")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "ready\n" {
		t.Fatalf("/ready over TCP: %d %q", resp.StatusCode, b)
	}
	// A second server on the same port fails with a hint.
	g, err := New(Options{Addr: f.srv.Addr(), State: NewState()})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Start(); err == nil || !strings.Contains(err.Error(), "--admin") {
		g.Close()
		t.Fatalf("second Start on a busy port: %v", err)
	}
}

func TestAge(t *testing.T) {
	for d, want := range map[time.Duration]string{
		850 * time.Millisecond:                    "850ms",
		12*time.Second + 300*time.Millisecond:     "12s",
		3*time.Minute + 4*time.Second:             "3m4s",
		3*time.Minute + 10*time.Second:            "3m10s",
		3 * time.Minute:                           "3m",
		2*time.Hour + 5*time.Minute + time.Second: "2h5m",
		-time.Second:                              "0s",
	} {
		if got := Age(now, now.Add(-d)); got != want {
			t.Errorf("Age(%v) = %q, want %q", d, got, want)
		}
	}
	if Age(now, time.Time{}) != "-" {
		t.Error("Age of the zero time")
	}
}

// TestQueryParameters: a parameter an endpoint does not take, one given
// twice, or a malformed query is refused with a 400 that names it; they
// used to be ignored, so /clusters?fromat=json answered the text table
// and /logging?level=info&level=debug set the first level in silence.
func TestQueryParameters(t *testing.T) {
	f := newFixture(t)
	for _, c := range []struct {
		method, target string
		code           int
		says           string // in the body of a 400
	}{
		{"GET", "/ready", 503, ""},
		{"GET", "/ready?", 503, ""},
		{"GET", "/ready?verbose=1", 400, `unknown query parameter "verbose": this endpoint takes none`},
		{"GET", "/metrics?filter=detour", 400, `unknown query parameter "filter"`},
		{"GET", "/metrics", 200, ""},
		{"GET", "/?x", 400, `"x"`},
		{"GET", "/status?pretty", 400, `"pretty"`},
		{"GET", "/server_info?format=json", 400, `unknown query parameter "format": this endpoint takes none`},
		{"GET", "/config?format=json", 400, `"format"`},
		{"GET", "/clusters?format=json", 200, ""},
		{"GET", "/clusters?fromat=json", 400, `unknown query parameter "fromat": this endpoint takes format`},
		{"GET", "/clusters?format=json&format=text", 400, `query parameter "format" given 2 times: give it once`},
		{"GET", "/clusters?format=%zz", 400, "invalid URL escape"},
		{"GET", "/logging?verbose", 400, `"verbose"`},
		{"POST", "/logging?level=warn&level=debug", 400, `"level" given 2 times`},
		{"POST", "/logging?level=warn&x=1", 400, `unknown query parameter "x": this endpoint takes level`},
		{"GET", "/debug/pprof/goroutine?debug=1", 200, ""}, // Go's own handlers, with their own parameters
	} {
		code, body, _ := f.do(t, c.method, c.target)
		if code != c.code || !strings.Contains(body, c.says) {
			t.Errorf("%s %s: %d %q; want %d saying %q", c.method, c.target, code, body, c.code, c.says)
		}
	}
	if f.level.Level() != slog.LevelInfo {
		t.Errorf("the level changed to %v through refused requests", f.level.Level())
	}
}

// TestMethods: every endpoint answers the methods it lists (HEAD with
// GET) and 405 with Allow to the others; Go's pprof handlers used to
// answer any method.
func TestMethods(t *testing.T) {
	f := newFixture(t)
	f.state.SetPhase(Ready)
	for _, c := range []struct {
		method, target string
		code           int
		allow          string
	}{
		{"GET", "/", 200, ""},
		{"HEAD", "/ready", 200, ""},
		{"POST", "/", 405, "GET, HEAD"},
		{"DELETE", "/ready", 405, "GET, HEAD"},
		{"OPTIONS", "/metrics", 405, "GET, HEAD"},
		{"PUT", "/clusters", 405, "GET, HEAD"},
		{"POST", "/stats", 405, "GET, HEAD"},
		{"HEAD", "/stats", 200, ""},
		{"POST", "/status", 405, "GET, HEAD"},
		{"PUT", "/server_info", 405, "GET, HEAD"},
		{"GET", "/quitquitquit", 405, "POST"},
		{"HEAD", "/quitquitquit", 405, "POST"},
		{"PATCH", "/config", 405, "GET, HEAD"},
		{"DELETE", "/logging?level=debug", 405, "GET, HEAD, POST"},
		{"HEAD", "/debug/pprof/", 200, ""},
		{"POST", "/debug/pprof/", 405, "GET, HEAD"},
		{"DELETE", "/debug/pprof/cmdline", 405, "GET, HEAD"},
		{"POST", "/debug/pprof/profile?seconds=1", 405, "GET, HEAD"},
		{"PUT", "/debug/pprof/trace", 405, "GET, HEAD"},
		{"POST", "/debug/pprof/symbol", 200, ""},
		{"POST", "/debug/pprof/heap", 405, "GET, HEAD"},
	} {
		code, _, h := f.do(t, c.method, c.target)
		if code != c.code || h.Get("Allow") != c.allow {
			t.Errorf("%s %s: %d, Allow %q; want %d, Allow %q", c.method, c.target, code, h.Get("Allow"), c.code, c.allow)
		}
	}
}

// TestLoggingLevels: POST /logging sets only the levels log_level names
// (any case); slog's offsets (warn-2, which is info+2) used to be taken,
// and /config then showed a log_level no configuration file accepts.
func TestLoggingLevels(t *testing.T) {
	f := newFixture(t)
	for _, c := range []struct {
		level string
		code  int
		want  slog.Level
	}{
		{"debug", 200, slog.LevelDebug},
		{"WARN", 200, slog.LevelWarn},
		{"warn-2", 400, slog.LevelWarn},
		{"info%2B1", 400, slog.LevelWarn},
		{"4", 400, slog.LevelWarn},
		{"error", 200, slog.LevelError},
		{"", 400, slog.LevelError},
		{"info", 200, slog.LevelInfo},
	} {
		code, body, _ := f.do(t, "POST", "/logging?level="+c.level)
		if code != c.code || f.level.Level() != c.want {
			t.Errorf("POST /logging?level=%s: %d %q, level %v; want %d, level %v", c.level, code, body, f.level.Level(), c.code, c.want)
		}
	}
}

// TestConnectionBounds: the endpoint holds at most maxConns connections
// (while none is idle between requests, the others wait in the listen
// backlog), so connections from any local process cannot take the
// descriptors the proxy needs; it used to accept every one. A head beyond
// maxHeaderBytes gets 431.
func TestConnectionBounds(t *testing.T) {
	f := newFixture(t)
	f.state.SetPhase(Ready)
	addr := f.start(t)
	dial := func() net.Conn {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	get := func(c net.Conn, wait time.Duration) (string, error) {
		c.SetReadDeadline(time.Now().Add(wait))
		return bufio.NewReader(c).ReadString('\n')
	}

	held := make([]net.Conn, maxConns)
	for i := range held {
		held[i] = dial()
	}
	// Once the held ones are accepted (none has sent a request: none is
	// idle), one more is not served while they stay.
	for deadline := time.Now().Add(30 * time.Second); f.srv.lim.count() < maxConns; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d connections accepted after 30s", f.srv.lim.count(), maxConns)
		}
	}
	extra := dial()
	io.WriteString(extra, "GET /ready HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
	if line, err := get(extra, 500*time.Millisecond); err == nil {
		t.Fatalf("connection %d was served while %d others were open: %q", maxConns+1, maxConns, line)
	}
	held[0].Close()
	if line, err := get(extra, 30*time.Second); err != nil || !strings.HasPrefix(line, "HTTP/1.1 200") {
		t.Fatalf("connection %d once one closed: %q, %v; want it served", maxConns+1, line, err)
	}

	big := held[1]
	fmt.Fprintf(big, "GET /ready HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: %s\r\n\r\n", strings.Repeat("a", maxHeaderBytes+8<<10)) // net/http allows 4 KiB more
	if line, err := get(big, 30*time.Second); err != nil || !strings.HasPrefix(line, "HTTP/1.1 431") {
		t.Errorf("a %d KiB head: %q, %v; want 431", maxHeaderBytes>>10+8, line, err)
	}
}

// TestIdleConnectionsMakeRoom: when maxConns keep-alive connections are
// idle between requests, a new connection closes the one idle longest and
// is served at once. Before, it waited in the backlog until one of them
// closed: a local process that kept maxConns connections idle, with a
// request each under the 2-minute idle timeout, held off /ready probes,
// scrapes and detour status for as long as it liked.
func TestIdleConnectionsMakeRoom(t *testing.T) {
	f := newFixture(t)
	f.state.SetPhase(Ready)
	addr := f.start(t)
	get := func(c net.Conn, r *bufio.Reader) (*http.Response, error) {
		c.SetDeadline(time.Now().Add(30 * time.Second)) // far below the idle timeout it would wait for
		if _, err := io.WriteString(c, "GET /ready HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"); err != nil {
			return nil, err
		}
		resp, err := http.ReadResponse(r, nil)
		if err != nil {
			return nil, err
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp, err
	}
	type held struct {
		c net.Conn
		r *bufio.Reader
	}
	hs := make([]held, maxConns)
	for i := range hs {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		hs[i] = held{c, bufio.NewReader(c)}
		if resp, err := get(c, hs[i].r); err != nil || resp.StatusCode != 200 {
			t.Fatalf("held connection %d: %v, %v", i+1, resp, err)
		}
		// The server marks a connection idle after the client may have
		// read its response: wait, so that they turn idle in order.
		waitIdle(t, f.srv.lim, i+1)
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if resp, err := get(c, bufio.NewReader(c)); err != nil || resp.StatusCode != 200 {
		t.Fatalf("connection %d while %d were idle: %v, %v; want it served", maxConns+1, maxConns, resp, err)
	}
	// The one idle longest made the room.
	hs[0].c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if n, err := hs[0].r.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("the connection idle longest: read %d, %v; want it closed (EOF)", n, err)
	}
	if n := f.srv.lim.count(); n > maxConns {
		t.Errorf("%d connections open, more than %d", n, maxConns)
	}
}

// waitIdle waits until n of l's connections are idle between requests.
func waitIdle(t *testing.T, l *connLimit, n int) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(time.Millisecond) {
		l.mu.Lock()
		idle := len(l.idle)
		l.mu.Unlock()
		if idle == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connections idle, want %d", idle, n)
		}
	}
}

// TestBrowserRequests: a web page open in a browser on detour's host may
// send requests to the loopback endpoint. A cross-origin POST (which a
// browser sends without asking) must not change the log level, and a
// request under a DNS name (DNS rebinding: the page's own name, pointed
// at 127.0.0.1 after it loaded, so the browser lets it read the answer)
// must not read traffic; both used to be served. Tools (curl, detour
// status, Prometheus) send neither an Origin nor a DNS name.
func TestBrowserRequests(t *testing.T) {
	f := newFixture(t)
	do := func(method, target, host string, hdr map[string]string) int {
		w := httptest.NewRecorder()
		r := httptest.NewRequest(method, target, nil)
		r.Host = host
		for k, v := range hdr {
			r.Header.Set(k, v)
		}
		f.srv.ServeHTTP(w, r)
		return w.Code
	}
	for _, c := range []struct {
		name, method, target, host string
		hdr                        map[string]string
		code                       int
	}{
		{"curl", "POST", "/logging?level=warn", "127.0.0.1:9901", nil, 200},
		{"same origin", "POST", "/logging?level=warn", "127.0.0.1:9901", map[string]string{"Sec-Fetch-Site": "same-origin", "Origin": "http://127.0.0.1:9901"}, 200},
		{"cross-site fetch", "POST", "/logging?level=debug", "127.0.0.1:9901", map[string]string{"Sec-Fetch-Site": "cross-site"}, 403},
		{"foreign origin", "POST", "/logging?level=debug", "127.0.0.1:9901", map[string]string{"Origin": "http://evil.example"}, 403},
		{"rebound name", "GET", "/clusters", "evil.example:9901", nil, 403},
		{"rebound name, POST", "POST", "/logging?level=debug", "evil.example:9901", nil, 403},
		{"cross-site quit", "POST", "/quitquitquit", "127.0.0.1:9901", map[string]string{"Sec-Fetch-Site": "cross-site"}, 403},
		{"foreign origin quit", "POST", "/quitquitquit", "127.0.0.1:9901", map[string]string{"Origin": "http://evil.example"}, 403},
		{"rebound name quit", "POST", "/quitquitquit", "evil.example:9901", nil, 403},
		{"no-cors form quit", "POST", "/quitquitquit", "127.0.0.1:9901", map[string]string{"Sec-Fetch-Site": "same-site", "Origin": "http://localhost:8080"}, 403},
		{"localhost", "GET", "/clusters", "localhost:9901", nil, 200},
		{"IPv6", "GET", "/clusters", "[::1]:9901", nil, 200},
		{"no port", "GET", "/clusters", "127.0.0.1", nil, 200},
		{"HTTP/1.0 without Host", "GET", "/clusters", "", nil, 200},
	} {
		if code := do(c.method, c.target, c.host, c.hdr); code != c.code {
			t.Errorf("%s: %s %s (Host %q): %d, want %d", c.name, c.method, c.target, c.host, code, c.code)
		}
	}
	if f.level.Level() != slog.LevelWarn {
		t.Errorf("level %v after the refused requests; want warn, the last one allowed", f.level.Level())
	}
	if n := f.quits.Load(); n != 0 {
		t.Errorf("a web page's POST /quitquitquit stopped detour (%d calls of Quit)", n)
	}

	// With --admin-allow-remote the endpoint is meant to be reached by name.
	remote, err := New(Options{Addr: netip.MustParseAddrPort("0.0.0.0:0"), AllowRemote: true, State: NewState()})
	if err != nil {
		t.Fatal(err)
	}
	w := httptest.NewRecorder()
	r := httptest.NewRequest("GET", "/ready", nil)
	r.Host = "router.example:9901"
	remote.ServeHTTP(w, r)
	if w.Code != 503 {
		t.Errorf("allow-remote, by name: %d, want 503 (starting)", w.Code)
	}
}

// TestPrometheusExposition: /metrics, and /stats/prometheus where
// Envoy's scrape configs look (it used to be 404), are valid Prometheus
// text exposition, every detour family with a help line and a type, and
// counters named _total.
func TestPrometheusExposition(t *testing.T) {
	f := newFixture(t)
	f.m.Request(&httpproxy.RequestInfo{Dst: netip.MustParseAddrPort("198.18.2.2:80"), Status: 200})
	for _, path := range []string{"/metrics", "/stats/prometheus"} {
		code, body, h := f.do(t, "GET", path)
		if code != 200 || !strings.HasPrefix(h.Get("Content-Type"), "text/plain; version=0.0.4") {
			t.Fatalf("%s: %d %q", path, code, h.Get("Content-Type"))
		}
		parser := expfmt.NewTextParser(model.UTF8Validation)
		fams, err := parser.TextToMetricFamilies(strings.NewReader(body))
		if err != nil {
			t.Fatalf("%s does not parse: %v", path, err)
		}
		if len(fams) < 20 {
			t.Errorf("%s: %d families, want detour's 20 and more", path, len(fams))
		}
		for name, fam := range fams {
			if !strings.HasPrefix(name, "detour_") || !model.IsValidLegacyMetricName(name) {
				t.Errorf("%s: family %q: want a detour_ name in the legacy charset", path, name)
			}
			if fam.GetHelp() == "" || strings.Contains(fam.GetHelp(), "\n") {
				t.Errorf("%s: %s has help %q", path, name, fam.GetHelp())
			}
			if fam.GetType() == dto.MetricType_COUNTER && !strings.HasSuffix(name, "_total") {
				t.Errorf("%s: counter %s not named _total", path, name)
			}
			if n := strings.Count(body, "# TYPE "+name+" "); n != 1 {
				t.Errorf("%s: %d TYPE lines for %s", path, n, name)
			}
		}
	}
}

// TestStats: GET /stats answers Envoy's plain-text stats, one sorted
// "name: value" line per series with the labels folded into the name,
// and takes Envoy's filter, usedonly and format=json; it used to be 404,
// so scripts written for Envoy's admin found nothing there.
// TestStatsPrometheus: Envoy's two ways to the Prometheus text, /stats/prometheus
// and /stats?format=prometheus (a scrape config's metrics_path /stats
// with params format=prometheus), both with Envoy's filter and usedonly,
// which keep a series when /stats would list one of its lines.
func TestStatsPrometheus(t *testing.T) {
	f := newFixture(t)
	f.m.Request(&httpproxy.RequestInfo{Dst: netip.MustParseAddrPort("198.18.2.2:80"), Status: 200, Duration: 250 * time.Millisecond})
	_, all, _ := f.do(t, "GET", "/metrics")
	for _, c := range []struct {
		target      string
		code        int
		has, hasNot []string
	}{
		{"/stats?format=prometheus", 200, []string{"# TYPE detour_downstream_connections_total counter", `detour_downstream_connections_total{mode="tproxy"} 2`,
			`detour_downstream_connections_total{mode="redirect"} 0`, "detour_http_request_duration_seconds_bucket{le="}, nil},
		{"/stats/prometheus?usedonly", 200, []string{`detour_downstream_connections_total{mode="tproxy"} 2`, "detour_http_request_duration_seconds_bucket{le=", "detour_http_request_duration_seconds_count 1"},
			[]string{`{mode="redirect"} 0`, "detour_http_requests_total{code_class=\"5xx\"}"}},
		{"/stats?format=prometheus&usedonly", 200, []string{`detour_downstream_connections_total{mode="tproxy"} 2`}, []string{`{mode="redirect"} 0`}},
		{"/stats/prometheus?filter=downstream_connections_total%5C.mode%5C.redirect", 200, []string{`detour_downstream_connections_total{mode="redirect"} 0`},
			[]string{`{mode="tproxy"}`, "detour_cluster_hosts", "# TYPE detour_http"}},
		{"/stats?format=prometheus&filter=duration_seconds_count", 200, []string{"detour_http_request_duration_seconds_count 1", "detour_http_request_duration_seconds_bucket{le="},
			[]string{"detour_downstream"}},
		{"/stats/prometheus?filter=(", 400, []string{`filter "(": not a regular expression`}, nil},
		{"/stats/prometheus?usedonly=no", 400, []string{`usedonly="no"`}, nil},
		{"/stats/prometheus?format=json", 400, []string{`unknown query parameter "format"`}, nil},
	} {
		code, body, h := f.do(t, "GET", c.target)
		if code != c.code {
			t.Errorf("%s: %d %q, want %d", c.target, code, body, c.code)
			continue
		}
		checkBody(t, c.target, body, c.has, c.hasNot)
		if code == 200 && !strings.HasPrefix(h.Get("Content-Type"), "text/plain; version=0.0.4") {
			t.Errorf("%s: Content-Type %q, want the Prometheus text format's", c.target, h.Get("Content-Type"))
		}
	}
	// Unfiltered, it is /metrics.
	if _, body, _ := f.do(t, "GET", "/stats?format=prometheus"); squashSamples(body) != squashSamples(all) {
		t.Errorf("/stats?format=prometheus differs from /metrics:\n%s\n---\n%s", body, all)
	}
}

// checkBody checks that target's body holds each of has and none of
// hasNot.
func checkBody(t *testing.T, target, body string, has, hasNot []string) {
	t.Helper()
	for _, want := range has {
		if !strings.Contains(body, want) {
			t.Errorf("%s lacks %q:\n%s", target, want, body)
		}
	}
	for _, not := range hasNot {
		if strings.Contains(body, not) {
			t.Errorf("%s has %q:\n%s", target, not, body)
		}
	}
}

// squashSamples drops the lines that change between two scrapes (the
// process and Go runtime collectors').
func squashSamples(s string) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, "detour_") && !strings.Contains(l, "uptime") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

func TestStats(t *testing.T) {
	f := newFixture(t)
	f.m.Request(&httpproxy.RequestInfo{Dst: netip.MustParseAddrPort("198.18.2.2:80"), Status: 200, Duration: 250 * time.Millisecond})
	for _, c := range []struct {
		target   string
		code     int
		has      []string // lines, or text in the body of a 400
		hasNot   []string
		minLines int
	}{
		{"/stats", 200, []string{
			"detour_downstream_connections_total.mode.tproxy: 2\n",
			"detour_downstream_connections_total.mode.redirect: 0\n",
			"detour_downstream_refused_total.reason.not_intercepted: 0\n", // a space in a label value
			"detour_http_requests_total.code_class.2xx: 1\n",
			"detour_http_request_duration_seconds_count: 1\n", // a histogram: its count and sum
			"detour_http_request_duration_seconds_sum: 0.25\n",
			"detour_tcp_connections_total.flag.LR.protocol.tcp: 1\n",
			"detour_upstream_requests_total.host.198.18.2.2:81/198.18.1.2: 1\n",
		}, []string{"_bucket", "{", ".le."}, 60},
		{"/stats?usedonly", 200, []string{"detour_downstream_connections_total.mode.tproxy: 2\n", "detour_http_request_duration_seconds_sum: 0.25\n"},
			[]string{": 0\n"}, 10},
		{"/stats?usedonly=true", 200, []string{"detour_cluster_hosts: 2\n"}, []string{": 0\n"}, 10},
		{"/stats?filter=requests_total", 200, []string{"detour_http_requests_total.code_class.5xx: 0\n", "detour_upstream_requests_total.host.198.18.2.2:80: 5\n"},
			[]string{"detour_cluster_hosts", "detour_downstream"}, 9},
		{"/stats?filter=^detour_upstream_.*host%5C.198%5C.18%5C.2%5C.2:80($|%5C.)&usedonly", 200, []string{
			"detour_upstream_connections_active.host.198.18.2.2:80.layer.l7: 2\n", "detour_upstream_reused_total.host.198.18.2.2:80: 3\n",
		}, []string{"7002", "198.18.1.2", ": 0\n"}, 7},
		{"/stats?filter=nothing-matches", 200, nil, []string{"detour"}, 0},
		{"/stats?filter=(", 400, []string{`filter "(": not a regular expression`, "missing closing )"}, nil, 0},
		{"/stats?usedonly=no", 400, []string{`usedonly="no": usedonly takes no value`}, nil, 0},
		{"/stats?format=xml", 400, []string{`format "xml": use text, json or prometheus`}, nil, 0},
		{"/stats?type=Counters", 400, []string{`unknown query parameter "type": this endpoint takes filter, format, usedonly`}, nil, 0},
		{"/stats?format=text&usedonly", 200, []string{"detour_cluster_hosts: 2\n"}, nil, 10},
	} {
		code, body, h := f.do(t, "GET", c.target)
		if code != c.code {
			t.Errorf("%s: %d %q, want %d", c.target, code, body, c.code)
			continue
		}
		checkBody(t, c.target, body, c.has, c.hasNot)
		if code != 200 {
			continue
		}
		if ct := h.Get("Content-Type"); ct != "text/plain; charset=utf-8" {
			t.Errorf("%s: Content-Type %q", c.target, ct)
		}
		lines := strings.Split(strings.TrimSuffix(body, "\n"), "\n")
		if body == "" {
			lines = nil
		}
		if len(lines) < c.minLines {
			t.Errorf("%s: %d lines, want at least %d", c.target, len(lines), c.minLines)
		}
		var prev string
		for _, l := range lines {
			name, val, ok := strings.Cut(l, ": ")
			if !ok || strings.ContainsAny(name, " \t") || strings.Contains(val, " ") {
				t.Errorf("%s: line %q is not name: value", c.target, l)
			}
			if _, err := strconv.ParseFloat(val, 64); err != nil {
				t.Errorf("%s: line %q: value %v", c.target, l, err)
			}
			if name <= prev {
				t.Errorf("%s: %q after %q: not sorted, or twice", c.target, name, prev)
			}
			prev = name
		}
	}

	// format=json: Envoy's {"stats":[{"name":..,"value":..}]}, the same stats.
	code, body, h := f.do(t, "GET", "/stats?format=json&filter=tproxy|duration_seconds_sum|2xx")
	if code != 200 || h.Get("Content-Type") != "application/json" {
		t.Fatalf("/stats?format=json: %d %q", code, h.Get("Content-Type"))
	}
	var got struct {
		Stats []struct {
			Name  string   `json:"name"`
			Value *float64 `json:"value"`
		} `json:"stats"`
	}
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatalf("/stats?format=json: %v\n%s", err, body)
	}
	want := map[string]float64{
		"detour_downstream_connections_total.mode.tproxy": 2, "detour_http_requests_total.code_class.2xx": 1,
		"detour_http_request_duration_seconds_sum": 0.25,
	}
	seen := 0
	for _, s := range got.Stats {
		if w, ok := want[s.Name]; ok {
			seen++
			if s.Value == nil || *s.Value != w {
				t.Errorf("JSON %s = %v, want %v", s.Name, s.Value, w)
			}
		}
	}
	if seen != len(want) {
		t.Errorf("JSON has %d of %v:\n%s", seen, want, body)
	}
	if _, body, _ := f.do(t, "GET", "/stats?format=json&filter=nothing-matches"); squash(body) != `{ "stats": [] }` {
		t.Errorf("JSON with nothing selected: %q, want an empty list", body)
	}
}

// TestStatName: labels fold into the name in label order, empty values
// left out and whitespace replaced, so one series has one stable name
// with no space in it.
func TestStatName(t *testing.T) {
	lp := func(kv ...string) []*dto.LabelPair {
		var out []*dto.LabelPair
		for i := 0; i < len(kv); i += 2 {
			out = append(out, &dto.LabelPair{Name: &kv[i], Value: &kv[i+1]})
		}
		return out
	}
	for _, c := range []struct {
		name   string
		labels []*dto.LabelPair
		want   string
	}{
		{"detour_ready", nil, "detour_ready"},
		{"detour_x_total", lp("flag", "UF", "protocol", "tcp"), "detour_x_total.flag.UF.protocol.tcp"},
		{"detour_x_total", lp("reason", "not intercepted"), "detour_x_total.reason.not_intercepted"},
		{"detour_x_total", lp("reason", "a\tb\nc"), "detour_x_total.reason.a_b_c"},
		{"go_build_info", lp("checksum", "", "path", "github.com/detour-proxy/detour", "version", "(devel)"),
			"go_build_info.path.github.com/detour-proxy/detour.version.(devel)"},
		{"detour_h", lp("host", "[2001:db8::2]:80"), "detour_h.host.[2001:db8::2]:80"},
	} {
		if got := statName(c.name, c.labels); got != c.want {
			t.Errorf("statName(%s, %v) = %q, want %q", c.name, c.labels, got, c.want)
		}
	}
}

// TestServerInfo: GET /server_info answers Envoy's ServerInfo fields
// (the phase as Envoy's state, uptimes as protobuf durations), where
// Istio's tooling and scripts written for Envoy look; it used to be 404.
func TestServerInfo(t *testing.T) {
	f := newFixture(t)
	f.state.SetListeners([]string{"0.0.0.0:15001"})
	for _, c := range []struct {
		phase Phase
		state string
	}{{Starting, "PRE_INITIALIZING"}, {Ready, "LIVE"}, {Draining, "DRAINING"}} {
		f.state.SetPhase(c.phase)
		code, body, h := f.do(t, "GET", "/server_info")
		if code != 200 || h.Get("Content-Type") != "application/json" {
			t.Fatalf("/server_info: %d %q", code, h.Get("Content-Type"))
		}
		var got map[string]any
		if err := json.Unmarshal([]byte(body), &got); err != nil {
			t.Fatalf("/server_info: %v\n%s", err, body)
		}
		want := map[string]any{
			"version": "v1.2.3", "state": c.state, "uptime_current_epoch": "3900s", "uptime_all_epochs": "3900s",
			"hot_restart_version": "disabled",
		}
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s: %s = %v, want %v", c.phase, k, got[k], v)
			}
		}
		opts, _ := got["command_line_options"].(map[string]any)
		if opts["mode"] != "tproxy" || opts["protocol"] != "auto" || opts["admin_address"] != "127.0.0.1:0" ||
			fmt.Sprint(opts["listeners"]) != "[0.0.0.0:15001]" {
			t.Errorf("%s: command_line_options %v", c.phase, opts)
		}
	}

	// Options.CommandLine, when given, says what is in force.
	g, err := New(Options{Addr: netip.MustParseAddrPort("127.0.0.1:0"), State: NewState(), Info: Info{Version: "v1"},
		CommandLine: func() CommandLine {
			return CommandLine{Mode: "redirect", Protocol: "http", Listeners: []string{"127.0.0.1:4999"}, Concurrency: 3,
				LogLevel: "debug", DrainTime: Seconds(1500 * time.Millisecond)}
		}})
	if err != nil {
		t.Fatal(err)
	}
	addr := (&fixture{srv: g}).start(t)
	resp, err := http.Get("http://" + addr + "/server_info")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var si struct {
		State string `json:"state"`
		Opts  struct {
			Mode, Protocol string
			AdminAddress   string `json:"admin_address"`
			LogLevel       string `json:"log_level"`
			DrainTime      string `json:"drain_time"`
			Listeners      []string
			Concurrency    int
		} `json:"command_line_options"`
	}
	if err := json.Unmarshal(b, &si); err != nil {
		t.Fatal(err)
	}
	o := si.Opts
	if si.State != "PRE_INITIALIZING" || o.Mode != "redirect" || o.Protocol != "http" || o.Concurrency != 3 ||
		o.LogLevel != "debug" || o.DrainTime != "1.5s" || o.AdminAddress != addr || len(o.Listeners) != 1 {
		t.Errorf("/server_info with Options.CommandLine: %s", b)
	}
}

func TestSeconds(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0: `"0s"`, 12 * time.Second: `"12s"`, time.Hour + 5*time.Minute: `"3900s"`, 1500 * time.Millisecond: `"1.5s"`,
		250 * time.Millisecond: `"0.25s"`,
	} {
		if b, err := json.Marshal(Seconds(d)); err != nil || string(b) != want {
			t.Errorf("Seconds(%v) = %s, %v; want %s", d, b, err, want)
		}
	}
}

// TestQuitQuitQuit: POST /quitquitquit, with which Istio's pilot-agent and
// Kubernetes preStop hooks stop Envoy, answers "OK" and then calls
// Options.Quit; it used to be 404. Without Quit it is 404 still.
func TestQuitQuitQuit(t *testing.T) {
	f := newFixture(t)
	addr := f.start(t)
	resp, err := http.Post("http://"+addr+"/quitquitquit", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || string(b) != "OK\n" {
		t.Fatalf("POST /quitquitquit: %d %q, %v; want 200 OK", resp.StatusCode, b, err)
	}
	// The answer goes out before Quit is called.
	for deadline := time.Now().Add(30 * time.Second); f.quits.Load() == 0 && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
	}
	if n := f.quits.Load(); n != 1 {
		t.Errorf("Quit called %d times, want 1", n)
	}
	if code, body, _ := f.do(t, "POST", "/quitquitquit?now"); code != 400 || !strings.Contains(body, `"now"`) || f.quits.Load() != 1 {
		t.Errorf("POST /quitquitquit?now: %d %q, %d calls; want 400 and no call", code, body, f.quits.Load())
	}
	if _, body, _ := f.do(t, "GET", "/"); !strings.Contains(body, "/quitquitquit") {
		t.Error("the index does not list /quitquitquit")
	}

	g, err := New(Options{Addr: netip.MustParseAddrPort("127.0.0.1:0"), State: NewState()})
	if err != nil {
		t.Fatal(err)
	}
	w := httptest.NewRecorder()
	r := httptest.NewRequest("POST", "/quitquitquit", nil)
	r.Host = "127.0.0.1:9901"
	g.ServeHTTP(w, r)
	if w.Code != 404 {
		t.Errorf("POST /quitquitquit without Options.Quit: %d, want 404", w.Code)
	}
}

// TestReload: POST /reload answers once Options.Reload returns, with a
// status that tells `detour reload` (systemd's ExecReload=) what became
// of the reload: 200 applied, 409 the file rejected, 503 stopping, 500
// applying failed; the error is the body. Without Reload it is 404, and
// a web page's POST does not reach it.
func TestReload(t *testing.T) {
	for _, c := range []struct {
		name string
		err  error
		code int
		body string
	}{
		{"applied", nil, 200, "configuration reloaded\n"},
		{"file rejected", fmt.Errorf("%w: line 2: intercept.portz is not a key", ErrConfig), 409, "configuration rejected: line 2: intercept.portz is not a key\n"},
		{"stopping", ErrStopping, 503, "detour is stopping\n"},
		{"apply failed", errors.New("listen 127.0.0.1:80: bind: permission denied"), 500, "listen 127.0.0.1:80: bind: permission denied\n"},
	} {
		calls := 0
		srv, err := New(Options{Addr: netip.MustParseAddrPort("127.0.0.1:0"), State: NewState(),
			Reload: func(context.Context) error { calls++; return c.err }})
		if err != nil {
			t.Fatal(err)
		}
		f := &fixture{srv: srv}
		if code, body, _ := f.do(t, "POST", "/reload"); code != c.code || body != c.body || calls != 1 {
			t.Errorf("%s: POST /reload: %d %q after %d calls; want %d %q after 1", c.name, code, body, calls, c.code, c.body)
		}
		if code, _, h := f.do(t, "GET", "/reload"); code != 405 || h.Get("Allow") != "POST" || calls != 1 {
			t.Errorf("%s: GET /reload: %d, Allow %q, %d calls; want 405, Allow POST, no call", c.name, code, h.Get("Allow"), calls)
		}
		w := httptest.NewRecorder()
		r := httptest.NewRequest("POST", "/reload", nil)
		r.Host = "127.0.0.1:9901"
		r.Header.Set("Sec-Fetch-Site", "cross-site")
		srv.ServeHTTP(w, r)
		if w.Code != 403 || calls != 1 {
			t.Errorf("%s: cross-site POST /reload: %d, %d calls; want 403 and no call", c.name, w.Code, calls)
		}
		if _, body, _ := f.do(t, "GET", "/"); !strings.Contains(body, "/reload") {
			t.Errorf("%s: the index does not list /reload", c.name)
		}
	}
	f := newFixture(t)
	if code, _, _ := f.do(t, "POST", "/reload"); code != 404 {
		t.Errorf("POST /reload without Options.Reload: %d, want 404", code)
	}
}
