package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/detour-proxy/detour/internal/admin"
	"github.com/detour-proxy/detour/internal/config"
	"github.com/detour-proxy/detour/internal/httpproxy"
	"github.com/detour-proxy/detour/internal/metrics"
	"github.com/detour-proxy/detour/internal/proxy"
	"github.com/detour-proxy/detour/internal/tcpproxy"
	"github.com/detour-proxy/detour/internal/upstream"
)

// observed finishes cfg and starts its observability (the admin endpoint
// and metrics) with level, or the level cfg names when nil.
func observed(t *testing.T, cfg *config.Config, level *slog.LevelVar) *observability {
	t.Helper()
	if err := cfg.Finish(); err != nil {
		t.Fatal(err)
	}
	if level == nil {
		level = new(slog.LevelVar)
		level.UnmarshalText([]byte(cfg.LogLevel))
	}
	o, err := startObservability(cfg, level, slog.New(slog.DiscardHandler), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(o.close)
	return o
}

// TestConfigShowsLevelInForce: /config is the effective configuration, so
// after POST /logging changes the level its log_level says the new one.
func TestConfigShowsLevelInForce(t *testing.T) {
	cfg := &config.Config{Admin: "127.0.0.1:0"}
	o := observed(t, cfg, nil)
	base := "http://" + o.admin.Addr().String()
	get := func() string {
		t.Helper()
		resp, err := http.Get(base + "/config")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	if got := get(); !strings.Contains(got, "\nlog_level: info\n") {
		t.Fatalf("/config before the change:\n%s", got)
	}
	resp, err := http.Post(base+"/logging?level=debug", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := get(); !strings.Contains(got, "\nlog_level: debug\n") {
		t.Errorf("/config after POST /logging?level=debug:\n%s", got)
	}
}

// TestStatusShowsReloadedProtocol: a SIGHUP may change the protocol
// (reload.go passes the new configuration to setConfig), and /status, which
// `detour status` prints, must then say the protocol in force, not the one
// detour started with.
func TestStatusShowsReloadedProtocol(t *testing.T) {
	cfg := &config.Config{Admin: "127.0.0.1:0", Protocol: "auto"}
	o := observed(t, cfg, nil)
	next := *cfg
	next.Protocol = "tcp"
	o.setConfig(&next)
	resp, err := http.Get("http://" + o.admin.Addr().String() + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st struct{ Protocol string }
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	if st.Protocol != "tcp" {
		t.Errorf("/status protocol after a reload to protocol tcp: %q", st.Protocol)
	}
}

// TestReloadKeepsHostCounters: a SIGHUP that changes the HTTP options
// starts a new cluster while the old one drains. The per-host counters
// (detour_upstream_requests_total and the others, /clusters) must go on
// from what they were, also once the old cluster is gone: they used to
// start again from zero, a counter going backwards under a live series.
func TestReloadKeepsHostCounters(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") }))
	t.Cleanup(up.Close)
	dst := netip.MustParseAddrPort(up.Listener.Addr().String())
	cfg, o, log := quietObservability(t, &config.Config{Admin: "off"})
	dialer := newDialer(cfg)
	newProxy := func() (*httpproxy.Proxy, string) { // and the address that serves through it
		p, err := newL7(cfg, dialer, log, func(netip.AddrPort) bool { return false }, o)
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close(); p.Close() })
		go func() {
			for {
				c, err := ln.AcceptTCP()
				if err != nil {
					return
				}
				go p.ServeConn(c, c.RemoteAddr().(*net.TCPAddr).AddrPort(), dst, upstream.PreDial{})
			}
		}()
		return p, ln.Addr().String()
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	get := func(addr string) {
		t.Helper()
		resp, err := client.Get("http://" + addr + "/")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	requests := func() uint64 {
		for _, h := range o.hosts() {
			if h.Dst == dst {
				return h.Requests
			}
		}
		return 0
	}

	p1, addr1 := newProxy()
	o.serving(nil, p1)
	for range 3 {
		get(addr1)
	}
	if n := requests(); n != 3 {
		t.Fatalf("requests before the reload: %d, want 3", n)
	}
	p2, addr2 := newProxy()
	d := &daemon{cfg: cfg, log: log, obs: o, http: newL7Side(p1, nil), drainEnd: context.Background()}
	old := d.replaceL7(p2)
	// Checked before retireL7: with no request in flight the old side's
	// drain ends at once, and a loaded machine ran it before a check made
	// after retireL7 returned (the old hosts then carried, not listed
	// until live again: 0).
	if n := requests(); n != 3 {
		t.Errorf("requests right after the reload, the old HTTP side draining: %d, want 3", n)
	}
	d.retireL7(old)
	get(addr2)
	if n := requests(); n != 4 {
		t.Errorf("requests after one more on the new settings: %d, want 4", n)
	}
	d.drains.Wait() // the old HTTP side drained and closed
	if n := requests(); n != 4 {
		t.Errorf("requests once the old HTTP side is gone: %d, want 4", n)
	}
}

// TestReloadLetsRequestsInFlightFinish: a reload that changes the HTTP
// options leaves the requests in flight on the old HTTP side untouched
// (README, "Reloading"), however long they take: it used to cut them
// drain_timeout after the reload, as if detour were stopping. Only the
// drain at exit bounds them.
func TestReloadLetsRequestsInFlightFinish(t *testing.T) {
	release := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "first half,")
		w.(http.Flusher).Flush()
		<-release
		io.WriteString(w, "second half")
	}))
	t.Cleanup(up.Close)
	dst := netip.MustParseAddrPort(up.Listener.Addr().String())
	cfg, o, log := quietObservability(t, &config.Config{Admin: "off", Drain: config.Duration(50 * time.Millisecond)})
	dialer := newDialer(cfg)
	p1, err := newL7(cfg, dialer, log, func(netip.AddrPort) bool { return false }, o)
	if err != nil {
		t.Fatal(err)
	}
	p2, err := newL7(cfg, dialer, log, func(netip.AddrPort) bool { return false }, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p2.Close() })
	addr := serveOne(t, p1, dst)
	o.serving(nil, p1)
	resp, err := http.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	end, cutEnd := context.WithCancel(context.Background())
	d := &daemon{cfg: cfg, log: log, obs: o, http: newL7Side(p1, nil), drainEnd: end}
	d.retireL7(d.replaceL7(p2))
	time.Sleep(300 * time.Millisecond) // six times drain_timeout
	close(release)
	body, err := io.ReadAll(resp.Body)
	if err != nil || string(body) != "first half,second half" {
		t.Errorf("a request in flight through a reload: %q, %v; want it whole", body, err)
	}
	cutEnd() // the drain at exit
	d.drains.Wait()
}

// quietObservability finishes cfg and starts its observability with a
// logger that discards, closed when the test ends.
func quietObservability(t *testing.T, cfg *config.Config) (*config.Config, *observability, *slog.Logger) {
	t.Helper()
	if err := cfg.Finish(); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	o, err := startObservability(cfg, new(slog.LevelVar), log, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(o.close)
	return cfg, o, log
}

// TestReloadFollowsCleanupInterval: the per-destination series expire
// after http.cleanup_interval (at least metrics.DefaultExpire), and a
// reload that changes it changes their expiry: it used to stay the one
// detour started with.
func TestReloadFollowsCleanupInterval(t *testing.T) {
	conf := func(cleanup time.Duration) *config.Config {
		return &config.Config{Admin: "off", Mode: "redirect", Listen: []string{"127.0.0.1:0"},
			HTTP: config.HTTP{CleanupInterval: config.Duration(cleanup)}}
	}
	cfg, o, log := quietObservability(t, conf(time.Minute))
	lns, err := openListeners(cfg, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	dialer := newDialer(cfg)
	d := &daemon{cfg: cfg, log: log, level: new(slog.LevelVar), obs: o, drainEnd: context.Background()}
	l7, err := newL7(cfg, dialer, log, func(netip.AddrPort) bool { return false }, o)
	if err != nil {
		t.Fatal(err)
	}
	d.http = newL7Side(l7, nil)
	d.srv = proxy.New(proxy.Options{Listeners: lns, Logger: log})
	d.srv.Update(d.proxyOptions(cfg, dialer))
	t.Cleanup(func() {
		for _, l := range d.srv.Listeners() {
			l.Close()
		}
		d.http.current().Close()
		d.drains.Wait()
	})
	for _, c := range []struct {
		cleanup, want time.Duration
	}{
		{time.Minute, time.Minute}, // at start
		{10 * time.Minute, 10 * time.Minute},
		{time.Second, metrics.DefaultExpire},
	} {
		if c.cleanup != time.Duration(d.cfg.HTTP.CleanupInterval) {
			next := conf(c.cleanup)
			if err := d.reload(context.Background(), func() (*config.Config, error) { return next, next.Finish() }, "test"); err != nil {
				t.Fatal(err)
			}
		}
		o.hostsMu.Lock()
		carried := o.expire
		o.hostsMu.Unlock()
		if got := o.metrics.Expire(); got != c.want || carried != c.want {
			t.Errorf("cleanup_interval %v: series expire after %v, carried hosts after %v; want %v", c.cleanup, got, carried, c.want)
		}
	}
}

// serveOne returns an address whose first connection p serves, as if
// intercepted on its way to dst.
func serveOne(t *testing.T, p *httpproxy.Proxy, dst netip.AddrPort) string {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.AcceptTCP()
		if err == nil {
			p.ServeConn(c, c.RemoteAddr().(*net.TCPAddr).AddrPort(), dst, upstream.PreDial{})
		}
	}()
	return ln.Addr().String()
}

// TestServerInfoShowsConfigInForce: /server_info's command_line_options
// are the configuration in force: tcp.loops as the loops that run
// (Envoy's concurrency), a reload's protocol, the log level POST /logging
// set, drain_timeout as Envoy's drain_time.
func TestServerInfoShowsConfigInForce(t *testing.T) {
	cfg := &config.Config{Admin: "127.0.0.1:0", Mode: "redirect", Listen: []string{"127.0.0.1:4999"}, Protocol: "auto",
		Drain: config.Duration(20 * time.Second)}
	level := new(slog.LevelVar)
	o := observed(t, cfg, level)
	next := *cfg
	next.Protocol = "tcp"
	o.setConfig(&next)
	level.Set(slog.LevelDebug)
	resp, err := http.Get("http://" + o.admin.Addr().String() + "/server_info")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var si struct {
		Version string `json:"version"`
		Opts    struct {
			Mode, Protocol string
			Listeners      []string
			Concurrency    int
			AdminAddress   string `json:"admin_address"`
			LogLevel       string `json:"log_level"`
			DrainTime      string `json:"drain_time"`
		} `json:"command_line_options"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&si); err != nil {
		t.Fatal(err)
	}
	op := si.Opts
	if si.Version != buildVersion() || op.Mode != "redirect" || op.Protocol != "tcp" || fmt.Sprint(op.Listeners) != "[127.0.0.1:4999]" ||
		op.Concurrency != tcpproxy.Loops() || op.Concurrency < 1 || op.AdminAddress != o.admin.Addr().String() ||
		op.LogLevel != "debug" || op.DrainTime != "20s" {
		t.Errorf("/server_info: %+v (want tcp.loops %d)", si, tcpproxy.Loops())
	}
}

// TestStatusShowsPortRanges: /status and `detour status` list an
// intercepted range as one entry, as the config gives it; a wide range
// (1-65535) used to become one entry per port.
func TestStatusShowsPortRanges(t *testing.T) {
	cfg := &config.Config{Admin: "127.0.0.1:0", Intercept: config.Intercept{Ports: []config.PortRange{{First: 80, Last: 80}, {First: 1024, Last: 65535}}}}
	o := observed(t, cfg, nil)
	o.rules(cfg, admin.Rules{Installed: true})
	resp, err := http.Get("http://" + o.admin.Addr().String() + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st struct{ Rules struct{ Ports []string } }
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	if want := []string{"80", "1024-65535"}; !slices.Equal(st.Rules.Ports, want) {
		t.Errorf("/status rules.ports = %q, want %q", st.Rules.Ports, want)
	}
}
