package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/detour-proxy/detour/internal/accesslog"
	"github.com/detour-proxy/detour/internal/admin"
	"github.com/detour-proxy/detour/internal/config"
	"github.com/detour-proxy/detour/internal/httpproxy"
	"github.com/detour-proxy/detour/internal/listen"
	"github.com/detour-proxy/detour/internal/metrics"
	"github.com/detour-proxy/detour/internal/proxy"
	"github.com/detour-proxy/detour/internal/tcpproxy"
)

// observability is one run's metrics, access log and admin endpoint.
type observability struct {
	log     *slog.Logger
	state   *admin.State
	metrics *metrics.Metrics
	alog    *accesslog.Logger
	admin   *admin.Server // nil when admin is off
	usr1    chan os.Signal

	// The effective configuration, replaced on reload; /config renders
	// it with the log level of the moment (POST /logging changes it).
	shown atomic.Pointer[config.Config]
	level *slog.LevelVar

	// Set once the proxy exists; read at scrape time.
	l7  atomic.Pointer[httpproxy.Proxy]
	srv atomic.Pointer[proxy.Server]

	// A reload that changes the HTTP options starts a new cluster, whose
	// hosts count from zero while the old one drains. The per-host
	// counters (/metrics, /clusters) are the sums over both, and what the
	// old one's hosts had counted carries on once they are gone, so a
	// reload never turns a counter back.
	hostsMu sync.Mutex
	old     []*oldL7
	carried map[string]httpproxy.HostInfo // by HostInfo.Key: counters only
	expire  time.Duration                 // a carried host not live again within this is forgotten
}

// oldL7 is an HTTP side replaced by a reload, draining; last is what its
// hosts counted when they were last listed.
type oldL7 struct {
	p    *httpproxy.Proxy
	last map[string]httpproxy.HostInfo
}

// startObservability opens the access log and starts the admin endpoint,
// which answers /ready with 503 until ready is called, and calls quit on
// POST /quitquitquit and reload on POST /reload (nil: no such endpoint).
func startObservability(cfg *config.Config, level *slog.LevelVar, log *slog.Logger, quit func(), reload func(context.Context) error) (_ *observability, err error) {
	o := &observability{log: log, state: admin.NewState(), level: level, carried: map[string]httpproxy.HostInfo{},
		expire: expireAfter(cfg)}
	reg := metrics.NewRegistry()
	reg.MustRegister(o.state)
	o.metrics, err = metrics.New(metrics.Options{
		Registry:       reg,
		Hosts:          o.hosts,
		Open:           o.open,
		L4Bytes:        tcpproxy.Moved,
		PerClientHosts: cfg.Upstream.SpoofSource,
		Expire:         expireAfter(cfg),
	})
	if err != nil {
		return nil, err
	}
	o.alog, err = accesslog.Open(accesslog.Options{Path: cfg.AccessLog, Format: accesslog.Format(cfg.AccessLogFormat), Logger: log})
	if err != nil {
		return nil, configError{fmt.Errorf("access_log (--access-log): %w (give a file detour's user may create or append to, in a directory that exists; or stdout, or off)", err)}
	}
	if o.alog != nil {
		log.Info("access log", "path", cfg.AccessLog, "format", cfg.AccessLogFormat)
	}
	// SIGUSR1 reopens the access log; caught even without one, so a
	// logrotate postrotate line never kills detour.
	o.usr1 = make(chan os.Signal, 1)
	signal.Notify(o.usr1, syscall.SIGUSR1)
	go o.reopenOnSignal()

	if cfg.AdminAddr.IsValid() {
		o.setConfig(cfg)
		o.admin, err = admin.New(admin.Options{
			Addr: cfg.AdminAddr, AllowRemote: cfg.AdminAllowRemote, State: o.state, Gatherer: reg,
			Metrics: o.metrics, Hosts: o.hosts, Config: o.config, CommandLine: o.commandLine, Level: level, Logger: log, Quit: quit, Reload: reload,
			Info: admin.Info{Version: buildVersion(), Mode: cfg.Mode, Protocol: cfg.Protocol},
		})
		if err == nil {
			err = o.admin.Start()
		}
		if err != nil {
			o.close()
			return nil, err
		}
		log.Info("admin endpoint", "addr", o.admin.Addr(), "try", fmt.Sprintf("detour status --admin %s", o.admin.Addr()))
	}
	return o, nil
}

// expireAfter is how long cfg keeps the series of a destination no longer
// used (an L4 destination, a carried cluster host): the cluster's cleanup
// interval, at least metrics.DefaultExpire.
func expireAfter(cfg *config.Config) time.Duration {
	return max(time.Duration(cfg.HTTP.CleanupInterval), metrics.DefaultExpire)
}

// setExpire makes the expiry follow cfg, a reload's: it used to stay the
// one of the configuration detour started with.
func (o *observability) setExpire(cfg *config.Config) {
	d := expireAfter(cfg)
	o.metrics.SetExpire(d)
	o.hostsMu.Lock()
	o.expire = d
	o.hostsMu.Unlock()
}

// setConfig records cfg for /config, with the defaults it leaves to run
// time filled in: tcp.loops shows the loops that run, not 0.
func (o *observability) setConfig(cfg *config.Config) {
	shown := *cfg
	if shown.TCP.Loops == 0 {
		shown.TCP.Loops = tcpproxy.Loops()
	}
	o.shown.Store(&shown)
	o.state.SetProtocol(cfg.Protocol) // /status: a reload may change it
}

// config renders the effective configuration for /config: log_level is
// the level in force, which POST /logging may have changed since.
func (o *observability) config() []byte {
	p := o.shown.Load()
	if p == nil {
		return nil
	}
	shown := *p
	if o.level != nil {
		shown.LogLevel = strings.ToLower(o.level.Level().String())
	}
	yml, err := shown.Marshal()
	if err != nil {
		return []byte("# " + err.Error() + "\n")
	}
	return yml
}

// commandLine is /server_info's command_line_options: the configuration
// in force (a reload's), with the log level of the moment.
func (o *observability) commandLine() admin.CommandLine {
	cfg := o.shown.Load()
	if cfg == nil {
		return admin.CommandLine{}
	}
	lns := make([]string, len(cfg.ListenAddrs))
	for i, a := range cfg.ListenAddrs {
		lns[i] = a.String()
	}
	cl := admin.CommandLine{Mode: cfg.Mode, Protocol: cfg.Protocol, Listeners: lns, Concurrency: cfg.TCP.Loops,
		LogLevel: cfg.LogLevel, DrainTime: admin.Seconds(cfg.Drain)}
	if o.level != nil {
		cl.LogLevel = strings.ToLower(o.level.Level().String())
	}
	return cl
}

func (o *observability) reopenOnSignal() {
	for range o.usr1 {
		if o.alog == nil {
			o.log.Info("SIGUSR1: no access log file to reopen")
			continue
		}
		if err := o.alog.Reopen(); err != nil {
			o.log.Error("SIGUSR1: reopening the access log failed; still writing to the old file", "path", o.alog.Path(), "err", err)
			continue
		}
		o.log.Info("SIGUSR1: access log reopened", "path", o.alog.Path())
	}
}

func (o *observability) hosts() []httpproxy.HostInfo {
	o.hostsMu.Lock()
	defer o.hostsMu.Unlock()
	var cur []httpproxy.HostInfo
	if p := o.l7.Load(); p != nil {
		cur = p.Hosts()
	}
	if len(o.old) == 0 && len(o.carried) == 0 {
		return cur
	}
	byKey := make(map[string]int, len(cur))
	for i, h := range cur {
		byKey[h.Key()] = i
	}
	add := func(h httpproxy.HostInfo, gauges bool) bool {
		i, ok := byKey[h.Key()]
		if !ok {
			if !gauges { // a carried host not live: not listed
				return false
			}
			byKey[h.Key()] = len(cur)
			cur = append(cur, h)
			return true
		}
		c := &cur[i]
		c.AddCounters(h)
		if gauges {
			c.Active += h.Active
			c.Open += h.Open
			c.Idle += h.Idle
			c.Span(h)
		}
		return true
	}
	for _, r := range o.old {
		now := byHostKey(r.p.HostTotals())
		for _, h := range now {
			add(h, true)
		}
		for k, h := range r.last {
			if _, ok := now[k]; !ok { // swept from the old cluster
				o.carryLocked(h)
			}
		}
		r.last = now
	}
	cutoff := time.Now().Add(-o.expire)
	for k, h := range o.carried {
		if !add(h, false) && h.LastUsed.Before(cutoff) {
			delete(o.carried, k)
		}
	}
	slices.SortFunc(cur, func(a, b httpproxy.HostInfo) int { return strings.Compare(a.Key(), b.Key()) })
	return cur
}

// byHostKey indexes hosts by HostInfo.Key.
func byHostKey(hosts []httpproxy.HostInfo) map[string]httpproxy.HostInfo {
	m := make(map[string]httpproxy.HostInfo, len(hosts))
	for _, h := range hosts {
		m[h.Key()] = h
	}
	return m
}

// carryLocked keeps the counters of a host that a replaced cluster no
// longer lists; o.hostsMu is held.
func (o *observability) carryLocked(h httpproxy.HostInfo) {
	c, ok := o.carried[h.Key()]
	if !ok {
		c = httpproxy.HostInfo{Dst: h.Dst, Client: h.Client}
	}
	c.AddCounters(h)
	c.LastUsed = time.Now() // when carried: forgotten o.expire after, unless live again
	o.carried[h.Key()] = c
}

// replaceL7 makes next the HTTP side whose hosts are listed, and keeps
// listing old's (draining) hosts beside them until retired.
func (o *observability) replaceL7(old, next *httpproxy.Proxy) {
	o.hostsMu.Lock()
	defer o.hostsMu.Unlock()
	o.old = append(o.old, &oldL7{p: old, last: byHostKey(old.HostTotals())})
	o.l7.Store(next)
}

// retired is told that old, replaced by a reload, has finished draining:
// its hosts' counters carry on in the current cluster's.
func (o *observability) retired(old *httpproxy.Proxy) {
	o.hostsMu.Lock()
	defer o.hostsMu.Unlock()
	for i, r := range o.old {
		if r.p != old {
			continue
		}
		final := byHostKey(old.HostTotals()) // its hosts are gone: what they counted
		for k, h := range r.last {
			if f, ok := final[k]; ok {
				h = f // counted on since
			}
			o.carryLocked(h)
			delete(final, k)
		}
		for _, h := range final {
			o.carryLocked(h)
		}
		o.old = slices.Delete(o.old, i, i+1)
		return
	}
}

func (o *observability) open() int64 {
	if s := o.srv.Load(); s != nil {
		return s.Open()
	}
	return 0
}

func (o *observability) listening(lns []*listen.Listener) {
	addrs := make([]string, len(lns))
	for i, l := range lns {
		addrs[i] = l.Addr().String()
	}
	o.state.SetListeners(addrs)
}

// rules records the state of the run's rules, r's Installed or Drained
// (neither: found missing); the table and ports are cfg's.
func (o *observability) rules(cfg *config.Config, r admin.Rules) {
	r.Managed, r.Table, r.Ports = true, "inet "+cfg.Intercept.TableName, portStrings(cfg.Intercept.Ports)
	o.state.SetRules(r)
}

// portStrings writes the ports as the status shows them: "80",
// "8000-8100" (a range stays one entry, however wide).
func portStrings(ranges []config.PortRange) []string {
	out := make([]string, len(ranges))
	for i, r := range ranges {
		out[i] = r.String()
	}
	return out
}

// onRequest is httpproxy's OnRequest: metrics, then the access log.
func (o *observability) onRequest(i *httpproxy.RequestInfo) {
	o.metrics.Request(i)
	o.alog.HTTP(i)
}

// serving records the running proxy, for the metrics read at scrape time.
func (o *observability) serving(srv *proxy.Server, l7 *httpproxy.Proxy) {
	o.srv.Store(srv)
	o.hostsMu.Lock()
	o.l7.Store(l7)
	o.hostsMu.Unlock()
}

func (o *observability) ready()    { o.state.SetPhase(admin.Ready) }
func (o *observability) draining() { o.state.SetPhase(admin.Draining) }

// close stops the admin endpoint and flushes the access log.
func (o *observability) close() {
	signal.Stop(o.usr1)
	close(o.usr1)
	if o.admin != nil {
		o.admin.Close()
	}
	if err := o.alog.Close(); err != nil {
		o.log.Error("closing the access log", "err", err)
	}
}

// observer is the proxy's Observer: metrics and the access log.
type observer struct{ *observability }

func (o observer) Accepted(m listen.Mode)     { o.metrics.Accepted(m) }
func (o observer) Refused(reason string)      { o.metrics.Refused(reason) }
func (o observer) Paused(reason string)       { o.metrics.Paused(reason) }
func (o observer) L4Started(r proxy.L4Record) { o.metrics.L4Started(r) }
func (o observer) L4Done(r proxy.L4Record) {
	o.metrics.L4Done(r)
	o.alog.L4(r)
}

// buildVersion is the module version and VCS revision, as `detour version`.
func buildVersion() string {
	bi, _ := debug.ReadBuildInfo()
	return versionOf(bi)
}

// versionOf is bi's module version, "devel" when none was stamped (go
// run, -buildvcs=false), followed by the VCS revision unless the version
// already names it: since Go 1.24 a go build from a git clone stamps a
// pseudo-version, v0.0.0-DATE-REVISION, that ends in the revision.
func versionOf(bi *debug.BuildInfo) string {
	v, rev := "devel", ""
	if bi == nil {
		return v
	}
	if bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		v = bi.Main.Version
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			rev = s.Value[:12]
		}
	}
	if rev == "" || strings.Contains(v, rev) {
		return v
	}
	return v + " " + rev
}
