// Package admin serves detour's admin endpoint: readiness, Prometheus
// metrics, the live hosts of the original-destination cluster, the
// effective configuration, pprof, and the log level at run time.
//
//	st := admin.NewState()
//	srv, err := admin.New(admin.Options{Addr: addr, State: st, Gatherer: reg, Metrics: m, Hosts: l7.Hosts, ...})
//	err = srv.Start()             // listens, serves in the background
//	st.SetPhase(admin.Ready)      // GET /ready answers 200 from now on
//	defer srv.Close()
//
// Endpoints:
//
//	GET  /                 HTML index: the endpoints and the current hosts
//	GET  /ready            200 "ready", or 503 "starting" / "draining"
//	GET  /metrics          Prometheus text format (also /stats/prometheus, Envoy's path, with ?filter=RE, ?usedonly)
//	GET  /stats            Envoy's plain-text stats: "name: value" lines; ?filter=RE, ?usedonly, ?format=json|prometheus
//	GET  /clusters         hosts and L4 destinations as a text table; ?format=json
//	GET  /status           JSON for `detour status`: phase, listeners, rules, totals, hosts
//	GET  /server_info      Envoy's: version, state (LIVE...), uptime, command_line_options
//	GET  /config           the effective configuration (YAML)
//	GET  /logging          the log level; POST /logging?level=debug changes it
//	GET  /debug/pprof/     Go profiles
//	POST /quitquitquit     Envoy's: stop as on SIGTERM (drain, remove the rules, exit 0)
//	POST /reload           reload as on SIGHUP, and answer once it is applied or rejected
//
// The endpoint reveals traffic and changes the log level, so it listens on
// loopback unless Options.AllowRemote says otherwise, and refuses what a
// browser's web page could send it: cross-origin POSTs (a page must not
// change the log level, nor stop detour), and (on loopback) requests
// under a DNS name.
package admin

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/detour-proxy/detour/internal/httpproxy"
	"github.com/detour-proxy/detour/internal/metrics"
)

// Info names the running detour.
type Info struct {
	Version  string
	Mode     string // tproxy | redirect
	Protocol string // auto | http | tcp, at start (State.SetProtocol: since a reload)
}

// Options configures New.
type Options struct {
	// Addr is where to listen; a non-loopback address needs AllowRemote.
	Addr        netip.AddrPort
	AllowRemote bool
	// State is the daemon's phase, listeners and rules; required.
	State *State
	// Gatherer is served on /metrics; nil serves nothing there.
	Gatherer prometheus.Gatherer
	// Metrics gives the totals and L4 destinations; nil leaves them out.
	Metrics *metrics.Metrics
	// Hosts lists the cluster's live hosts; nil means none.
	Hosts func() []httpproxy.HostInfo
	// Config returns the effective configuration, served on /config; a
	// function, since SIGHUP may replace it.
	Config func() []byte
	// Level is the logger's level, changed by POST /logging; nil makes
	// /logging answer 404.
	Level *slog.LevelVar
	Info  Info
	// Logger receives the admin server's own events; nil discards.
	Logger *slog.Logger
	// CommandLine gives /server_info's command_line_options (New fills
	// in AdminAddress); nil shows Info's mode and protocol and State's
	// listeners.
	CommandLine func() CommandLine
	// Quit stops detour as SIGTERM does, on POST /quitquitquit; nil makes
	// that 404.
	Quit func()
	// Reload reloads the configuration as SIGHUP does, on POST /reload,
	// and returns once it is applied (nil) or rejected; nil makes that
	// 404. An error that is ErrConfig (the file is at fault) is answered
	// 409, ErrStopping 503, any other 500.
	Reload func(context.Context) error
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Server is the admin HTTP endpoint; it is an http.Handler.
type Server struct {
	o   Options
	mux *http.ServeMux
	h   http.Handler // mux, behind the cross-origin check
	srv *http.Server
	ln  net.Listener
	lim *connLimit // ln, bounded: maxConns
}

// CheckAddr refuses a non-loopback address unless allowRemote.
func CheckAddr(addr netip.AddrPort, allowRemote bool) error {
	if !addr.IsValid() {
		return errors.New("admin: no address")
	}
	if !addr.Addr().IsLoopback() && !allowRemote {
		return fmt.Errorf("admin: %s is not a loopback address, and the admin endpoint reveals traffic and changes the log level: "+
			"listen on 127.0.0.1 or [::1] (reach it with ssh -L or `ip netns exec`), or allow it explicitly with --admin-allow-remote (admin_allow_remote: true)", addr)
	}
	return nil
}

// New checks o and builds the handler; Start listens.
func New(o Options) (*Server, error) {
	if o.State == nil {
		return nil, errors.New("admin: Options.State is required")
	}
	if err := CheckAddr(o.Addr, o.AllowRemote); err != nil {
		return nil, err
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	s := &Server{o: o, mux: http.NewServeMux()}
	m := s.mux
	m.HandleFunc("GET /{$}", takes(s.index))
	m.HandleFunc("GET /ready", takes(s.ready))
	if o.Gatherer != nil {
		prom := takes(promhttp.HandlerFor(o.Gatherer, promhttp.HandlerOpts{
			ErrorLog: slog.NewLogLogger(o.Logger.Handler(), slog.LevelWarn),
		}).ServeHTTP)
		m.HandleFunc("GET /metrics", prom)
		m.HandleFunc("GET /stats/prometheus", takes(s.prometheus, "filter", "usedonly")) // Envoy's path: scrape configs written for Envoy work
		m.HandleFunc("GET /stats", takes(s.stats, "filter", "format", "usedonly"))
	}
	m.HandleFunc("GET /clusters", takes(s.clusters, "format"))
	m.HandleFunc("GET /status", takes(s.status))
	m.HandleFunc("GET /server_info", takes(s.serverInfo)) // Envoy's
	m.HandleFunc("GET /config", takes(s.config))
	if o.Level != nil {
		m.HandleFunc("GET /logging", takes(s.getLogging, "level")) // to say that GET does not change it
		m.HandleFunc("POST /logging", takes(s.setLogging, "level"))
	}
	if o.Quit != nil {
		m.HandleFunc("POST /quitquitquit", takes(s.quit)) // Envoy's
	}
	if o.Reload != nil {
		m.HandleFunc("POST /reload", takes(s.reload))
	}
	// Go's handlers take any method; only GET reads a profile (and POST
	// /debug/pprof/symbol, which `go tool pprof` sends addresses with).
	m.HandleFunc("GET /debug/pprof/", pprof.Index)
	m.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	m.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	m.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	m.HandleFunc("POST /debug/pprof/symbol", pprof.Symbol)
	m.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	// A web page in a browser on this host may send requests here: a
	// cross-origin POST (/logging) is refused with 403.
	s.h = http.NewCrossOriginProtection().Handler(m)
	return s, nil
}

// takes refuses with 400 a request whose query has a parameter the
// endpoint does not take, one given twice, or bad escapes: a typo
// (?fromat=json) or a parameter of Envoy's admin (?filter=, ?usedonly)
// would otherwise be ignored in silence, and the answer taken for what
// was asked.
func takes(h http.HandlerFunc, params ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.URL.RawQuery != "" {
			if msg := checkQuery(r.URL.RawQuery, params); msg != "" {
				http.Error(w, r.URL.Path+": "+msg, http.StatusBadRequest)
				return
			}
		}
		h(w, r)
	}
}

// checkQuery says what is wrong with raw for an endpoint that takes
// params, or "" when nothing is.
func checkQuery(raw string, params []string) string {
	q, err := url.ParseQuery(raw)
	if err != nil {
		return fmt.Sprintf("query %q: %v", raw, err)
	}
	for _, k := range slices.Sorted(maps.Keys(q)) {
		switch {
		case !slices.Contains(params, k) && len(params) == 0:
			return fmt.Sprintf("unknown query parameter %q: this endpoint takes none", k)
		case !slices.Contains(params, k):
			return fmt.Sprintf("unknown query parameter %q: this endpoint takes %s", k, strings.Join(params, ", "))
		case len(q[k]) > 1:
			return fmt.Sprintf("query parameter %q given %d times: give it once", k, len(q[k]))
		}
	}
	return ""
}

// ServeHTTP serves the admin endpoints.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !s.o.AllowRemote && !addressedByIP(r.Host) {
		http.Error(w, fmt.Sprintf("Host %q: this admin endpoint answers requests addressed to an IP address or localhost "+
			"(a DNS name that points here would let any web page read it: DNS rebinding); use http://%s/", r.Host, s.Addr()), http.StatusForbidden)
		return
	}
	s.h.ServeHTTP(w, r)
}

// addressedByIP reports whether a request's Host names an IP address or
// localhost (or is empty, as HTTP/1.0 allows), as a request meant for a
// loopback endpoint does. A page of a site whose DNS name the attacker
// points at 127.0.0.1 after it loaded (DNS rebinding) is same-origin to
// its own name, so the browser lets it read the answers; its requests
// carry that name.
func addressedByIP(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if host == "" || strings.EqualFold(host, "localhost") {
		return true
	}
	_, err := netip.ParseAddr(host)
	return err == nil
}

// The admin endpoint's bounds. Its connections take descriptors from the
// proxy's own limit, so any local process could have starved the proxy
// by opening them and keeping them idle (there was no idle timeout):
// beyond maxConns, a new one closes the connection idle longest, or, when
// none is idle, waits in the listen backlog (connLimit); idle ones close
// after IdleTimeout. Its requests are small: heads beyond maxHeaderBytes
// get 431 (net/http's default allowed 1 MiB).
const (
	maxConns       = 64
	maxHeaderBytes = 64 << 10
)

// Start listens on Options.Addr and serves in the background.
func (s *Server) Start() error {
	ln, err := net.Listen("tcp", s.o.Addr.String())
	if err != nil {
		return fmt.Errorf("admin endpoint: %w (pick another --admin address, or --admin off)", err)
	}
	s.ln = ln
	s.srv = &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.o.Logger.Handler(), slog.LevelDebug),
	}
	s.lim = newConnLimit(ln, maxConns)
	s.srv.ConnState = s.lim.connState
	go s.srv.Serve(s.lim)
	return nil
}

// Addr is the address Start listens on.
func (s *Server) Addr() netip.AddrPort {
	if s.ln == nil {
		return s.o.Addr
	}
	return s.ln.Addr().(*net.TCPAddr).AddrPort()
}

// Close stops serving at once.
func (s *Server) Close() error {
	if s.srv == nil {
		return nil
	}
	return s.srv.Close()
}

// Shutdown stops serving after the requests in flight.
func (s *Server) Shutdown(ctx context.Context) error {
	if s.srv == nil {
		return nil
	}
	return s.srv.Shutdown(ctx)
}

func (s *Server) ready(w http.ResponseWriter, _ *http.Request) {
	phase := s.o.State.Phase()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if phase != Ready {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	io.WriteString(w, string(phase)+"\n")
}

// Host is one live host of the original-destination cluster.
type Host struct {
	Host            string    `json:"host"` // dst, or dst/client when spoofing
	Dst             string    `json:"dst"`
	Client          string    `json:"client,omitempty"`
	Requests        uint64    `json:"requests"`
	Active          int       `json:"active"` // requests in flight
	Open            int       `json:"open"`   // upstream connections
	Idle            int       `json:"idle"`   // of which idle in the pool
	Connects        uint64    `json:"connects"`
	Reuses          uint64    `json:"reuses"`
	Retries         uint64    `json:"retries"` // requests sent again after a pooled connection failed
	OnLoop          uint64    `json:"on_loop"` // requests an epoll loop served whole
	ConnectFailures uint64    `json:"connect_failures"`
	Created         time.Time `json:"created"`
	LastUsed        time.Time `json:"last_used"`
}

// TCPDestination is one recent L4 destination.
type TCPDestination struct {
	Dst             string    `json:"dst"`
	Connections     uint64    `json:"connections"`
	Active          int64     `json:"active"`
	ConnectFailures uint64    `json:"connect_failures"`
	Timeouts        uint64    `json:"timeouts"`
	LastUsed        time.Time `json:"last_used"`
}

// Clusters is /clusters?format=json.
type Clusters struct {
	Hosts           []Host           `json:"hosts"`
	TCPDestinations []TCPDestination `json:"tcp_destinations"`
}

// Status is /status: everything `detour status` shows.
type Status struct {
	Version     string          `json:"version"`
	Phase       Phase           `json:"phase"`
	Mode        string          `json:"mode"`
	Protocol    string          `json:"protocol"`
	Started     time.Time       `json:"started"`
	Now         time.Time       `json:"now"`
	Listeners   []string        `json:"listeners"`
	Rules       Rules           `json:"rules"`
	Connections metrics.Summary `json:"connections"`
	Clusters
}

func (s *Server) clusterData() Clusters {
	c := Clusters{Hosts: []Host{}, TCPDestinations: []TCPDestination{}}
	if s.o.Hosts != nil {
		for _, h := range s.o.Hosts() {
			hh := Host{Host: h.Key(), Dst: h.Dst.String(), Requests: h.Requests, Active: h.Active, Open: h.Open,
				Idle: h.Idle, Connects: h.Connects, Reuses: h.Reuses, Retries: h.Retries, OnLoop: h.OnLoop, ConnectFailures: h.ConnectFailures,
				Created: h.Created, LastUsed: h.LastUsed}
			if h.Client.IsValid() {
				hh.Client = h.Client.String()
			}
			c.Hosts = append(c.Hosts, hh)
		}
	}
	if s.o.Metrics != nil {
		for _, d := range s.o.Metrics.Destinations() {
			c.TCPDestinations = append(c.TCPDestinations, TCPDestination{Dst: d.Dst.String(), Connections: d.Connections,
				Active: d.Active, ConnectFailures: d.Failures, Timeouts: d.Timeouts, LastUsed: d.LastUsed})
		}
	}
	return c
}

func (s *Server) statusData() Status {
	phase, since, lns, rules := s.o.State.snapshot()
	if lns == nil {
		lns = []string{}
	}
	st := Status{Version: s.o.Info.Version, Phase: phase, Mode: s.o.Info.Mode, Protocol: s.o.State.protocolOr(s.o.Info.Protocol),
		Started: since, Now: s.o.Now(), Listeners: lns, Rules: rules, Clusters: s.clusterData()}
	if s.o.Metrics != nil {
		st.Connections = s.o.Metrics.Summary()
	}
	return st
}

func (s *Server) clusters(w http.ResponseWriter, r *http.Request) {
	c := s.clusterData()
	switch r.URL.Query().Get("format") {
	case "json":
		writeJSON(w, c)
	case "", "text":
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		WriteClusters(w, c, s.o.Now())
	default:
		http.Error(w, "format: use text or json", http.StatusBadRequest)
	}
}

func (s *Server) status(w http.ResponseWriter, _ *http.Request) { writeJSON(w, s.statusData()) }

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func (s *Server) config(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if s.o.Config != nil {
		w.Write(s.o.Config())
	}
}

func (s *Server) getLogging(w http.ResponseWriter, r *http.Request) {
	if r.URL.Query().Has("level") { // a GET must not change it; say so rather than ignore it
		w.Header().Set("Allow", "GET, POST")
		http.Error(w, "GET only reads the level; change it with POST /logging?level=...", http.StatusMethodNotAllowed)
		return
	}
	fmt.Fprintf(w, "log level: %s\n", strings.ToLower(s.o.Level.Level().String()))
}

// quit is POST /quitquitquit, with which Istio's pilot-agent and
// Kubernetes preStop hooks stop Envoy. The answer goes out first: the
// stop closes this endpoint once the drain is done.
func (s *Server) quit(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Content-Length", "3")
	w.Header().Set("Connection", "close")
	io.WriteString(w, "OK\n")
	http.NewResponseController(w).Flush()
	s.o.Logger.Info("POST /quitquitquit: stopping, as on SIGTERM", "remote", r.RemoteAddr)
	s.o.Quit()
}

// The errors Options.Reload answers with when the reload did not happen.
var (
	// ErrConfig: the configuration file is at fault (an error in it, or a
	// change to a setting only a restart applies).
	ErrConfig = errors.New("configuration rejected")
	// ErrStopping: detour is stopping and reloads no more.
	ErrStopping = errors.New("detour is stopping")
)

// reload is POST /reload, with which `detour reload` (the unit's
// ExecReload=) learns the outcome of the reload it asked for: a signal
// cannot tell its sender whether the file was rejected.
func (s *Server) reload(w http.ResponseWriter, r *http.Request) {
	s.o.Logger.Info("POST /reload: reloading the configuration, as on SIGHUP", "remote", r.RemoteAddr)
	err := s.o.Reload(r.Context())
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	switch {
	case err == nil:
		io.WriteString(w, "configuration reloaded\n")
	case errors.Is(err, ErrStopping):
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
	case errors.Is(err, ErrConfig):
		http.Error(w, err.Error(), http.StatusConflict)
	default:
		http.Error(w, err.Error(), http.StatusInternalServerError)
	}
}

// levels are the levels POST /logging sets: log_level's. slog would
// also take offsets (warn-2 is info+2), which /config would then show as
// a log_level no configuration file accepts.
var levels = map[string]slog.Level{"debug": slog.LevelDebug, "info": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError}

func (s *Server) setLogging(w http.ResponseWriter, r *http.Request) {
	v := r.URL.Query().Get("level")
	l, ok := levels[strings.ToLower(v)]
	if !ok {
		http.Error(w, fmt.Sprintf("level %q: use debug, info, warn or error, as in POST /logging?level=debug", v), http.StatusBadRequest)
		return
	}
	old := s.o.Level.Level()
	s.o.Level.Set(l)
	s.o.Logger.Info("log level changed through the admin endpoint", "from", old, "to", l, "remote", r.RemoteAddr)
	fmt.Fprintf(w, "log level: %s\n", strings.ToLower(l.String()))
}

// WriteClusters prints the hosts and L4 destinations as aligned tables.
func WriteClusters(w io.Writer, c Clusters, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "original-destination cluster: %d %s\n", len(c.Hosts), plural(len(c.Hosts), "host", "hosts"))
	if len(c.Hosts) > 0 {
		fmt.Fprintln(tw, "HOST\tREQUESTS\tACTIVE\tOPEN\tIDLE\tCONNECTS\tREUSES\tRETRIES\tON_LOOP\tCONNECT_FAILURES\tAGE\tLAST_USED")
		for _, h := range c.Hosts {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\n", h.Host, h.Requests, h.Active, h.Open, h.Idle,
				h.Connects, h.Reuses, h.Retries, h.OnLoop, h.ConnectFailures, Age(now, h.Created), Age(now, h.LastUsed)+" ago")
		}
	}
	tw.Flush()
	fmt.Fprintf(tw, "\nL4 destinations: %d\n", len(c.TCPDestinations))
	if len(c.TCPDestinations) > 0 {
		fmt.Fprintln(tw, "DST\tCONNECTIONS\tACTIVE\tCONNECT_FAILURES\tTIMEOUTS\tLAST_USED")
		for _, d := range c.TCPDestinations {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%s\n", d.Dst, d.Connections, d.Active, d.ConnectFailures, d.Timeouts,
				Age(now, d.LastUsed)+" ago")
		}
	}
	tw.Flush()
}

// WriteStatus prints st compactly for a terminal: `detour status`.
func WriteStatus(w io.Writer, st Status) {
	fmt.Fprintf(w, "detour %s: %s, mode %s, protocol %s, up %s\n", st.Version, st.Phase, st.Mode, st.Protocol, Age(st.Now, st.Started))
	fmt.Fprintf(w, "listeners:   %s\n", cmp.Or(strings.Join(st.Listeners, ", "), "none"))
	switch r := st.Rules; {
	case !r.Managed:
		fmt.Fprintf(w, "rules:       none configured (no intercept ports)\n")
	case r.Drained:
		fmt.Fprintf(w, "rules:       drained, table %s (new connections pass; the open ones keep what they need until exit)\n", r.Table)
	case r.Installed:
		fmt.Fprintf(w, "rules:       installed, table %s, ports %s%s\n", r.Table, ports(r.Ports), reinstalled(r.Reinstalled))
	default:
		fmt.Fprintf(w, "rules:       not installed (ports %s)\n", ports(r.Ports))
	}
	c := st.Connections
	fmt.Fprintf(w, "connections: %d active, %d accepted, %d refused (%d loops); %d HTTP requests\n\n",
		c.Active, c.Accepted, c.Refused, c.LoopRefused, c.Requests)
	WriteClusters(w, st.Clusters, st.Now)
}

// reinstalled notes how often vanished rules were put back, if ever.
func reinstalled(n uint64) string {
	if n == 0 {
		return ""
	}
	return fmt.Sprintf(" (reinstalled %d %s after they vanished)", n, plural(int(n), "time", "times"))
}

func ports(ps []string) string { return strings.Join(ps, ",") }

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// Age is how long ago t was, rounded for people: 850ms, 12s, 3m4s, 2h5m.
func Age(now, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := max(now.Sub(t), 0)
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(time.Second).String()
	case d < time.Hour:
		s := d.Round(time.Second).String()
		if strings.HasSuffix(s, "m0s") {
			s = strings.TrimSuffix(s, "0s")
		}
		return s
	default:
		return strings.TrimSuffix(d.Round(time.Minute).String(), "0s") // always ends in m0s
	}
}

var indexTmpl = template.Must(template.New("index").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>detour admin</title>
<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{padding:.2em .8em;text-align:right;border-bottom:1px solid #ddd}td:first-child,th:first-child{text-align:left}code{background:#f4f4f4}</style>
</head><body>
<h1>detour {{.Version}}</h1>
<p>{{.Phase}} · mode {{.Mode}} · protocol {{.Protocol}} · listeners {{range $i, $l := .Listeners}}{{if $i}}, {{end}}<code>{{$l}}</code>{{end}}</p>
<h2>Endpoints</h2>
<ul>
<li><a href="ready">/ready</a>: 200 when serving with the rules installed, 503 while starting or draining</li>
<li><a href="metrics">/metrics</a>: Prometheus metrics</li>
<li><a href="stats">/stats</a> (<a href="stats?usedonly">used only</a>, <a href="stats?format=json">JSON</a>): the same as <code>name: value</code> lines, as Envoy's <code>/stats</code>; <code>?filter=REGEX</code></li>
<li><a href="clusters">/clusters</a> (<a href="clusters?format=json">JSON</a>): the original-destination cluster's live hosts and the L4 destinations</li>
<li><a href="status">/status</a>: the summary <code>detour status</code> shows, as JSON</li>
<li><a href="server_info">/server_info</a>: version, state, uptime and options, as Envoy's <code>/server_info</code></li>
<li><a href="config">/config</a>: the effective configuration (YAML)</li>
<li><a href="logging">/logging</a>: the log level; <code>curl -X POST '{{.Base}}/logging?level=debug'</code> changes it</li>
<li><a href="debug/pprof/">/debug/pprof/</a>: Go profiles</li>
{{if .Reload}}<li>/reload: <code>curl -X POST {{.Base}}/reload</code> reloads the configuration file as SIGHUP does, and answers 200 once it is applied, 409 (with the error) when it is rejected; <code>detour reload</code> does this</li>{{end}}
{{if .Quit}}<li>/quitquitquit: <code>curl -X POST {{.Base}}/quitquitquit</code> stops detour as SIGTERM does: drain, remove the rules, exit</li>{{end}}
</ul>
<h2>Original-destination cluster: {{len .Hosts}} hosts</h2>
{{if .Hosts}}<table><tr><th>host</th><th>requests</th><th>active</th><th>open</th><th>idle</th><th>connects</th><th>reuses</th><th>retries</th><th>on loop</th><th>connect failures</th><th>last used</th></tr>
{{range .Hosts}}<tr><td>{{.Name}}</td><td>{{.Requests}}</td><td>{{.Active}}</td><td>{{.Open}}</td><td>{{.Idle}}</td><td>{{.Connects}}</td><td>{{.Reuses}}</td><td>{{.Retries}}</td><td>{{.OnLoop}}</td><td>{{.ConnectFailures}}</td><td>{{.LastUsedAgo}}</td></tr>
{{end}}</table>{{end}}
<h2>L4 destinations: {{len .TCPDestinations}}</h2>
{{if .TCPDestinations}}<table><tr><th>destination</th><th>connections</th><th>active</th><th>connect failures</th><th>timeouts</th></tr>
{{range .TCPDestinations}}<tr><td>{{.Dst}}</td><td>{{.Connections}}</td><td>{{.Active}}</td><td>{{.ConnectFailures}}</td><td>{{.Timeouts}}</td></tr>
{{end}}</table>{{end}}
</body></html>
`))

func (s *Server) index(w http.ResponseWriter, r *http.Request) {
	st := s.statusData()
	type hostRow struct {
		Host
		Name, LastUsedAgo string
	}
	data := struct {
		Status
		Base   string
		Hosts  []hostRow
		Quit   bool
		Reload bool
	}{Status: st, Base: "http://" + r.Host, Quit: s.o.Quit != nil, Reload: s.o.Reload != nil}
	for _, h := range st.Hosts {
		data.Hosts = append(data.Hosts, hostRow{h, h.Host, Age(st.Now, h.LastUsed) + " ago"})
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := indexTmpl.Execute(w, data); err != nil {
		s.o.Logger.Warn("admin index", "err", err)
	}
}
