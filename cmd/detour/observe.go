package main

import (
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
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
}

// startObservability opens the access log and starts the admin endpoint,
// which answers /ready with 503 until ready is called.
func startObservability(cfg *config.Config, level *slog.LevelVar, log *slog.Logger) (_ *observability, err error) {
	o := &observability{log: log, state: admin.NewState(), level: level}
	reg := metrics.NewRegistry()
	reg.MustRegister(o.state)
	o.metrics, err = metrics.New(metrics.Options{
		Registry:       reg,
		Hosts:          o.hosts,
		Open:           o.open,
		L4Bytes:        tcpproxy.Moved,
		PerClientHosts: cfg.Upstream.SpoofSource,
		Expire:         max(time.Duration(cfg.HTTP.CleanupInterval), metrics.DefaultExpire),
	})
	if err != nil {
		return nil, err
	}
	o.alog, err = accesslog.Open(accesslog.Options{Path: cfg.AccessLog, Format: accesslog.Format(cfg.AccessLogFormat), Logger: log})
	if err != nil {
		return nil, err
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
			Metrics: o.metrics, Hosts: o.hosts, Config: o.config, Level: level, Logger: log,
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
	if p := o.l7.Load(); p != nil {
		return p.Hosts()
	}
	return nil
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
	r.Managed, r.Table, r.Ports = true, "inet "+cfg.Intercept.TableName, cfg.Intercept.Ports
	o.state.SetRules(r)
}

// onRequest is httpproxy's OnRequest: metrics, then the access log.
func (o *observability) onRequest(i *httpproxy.RequestInfo) {
	o.metrics.Request(i)
	o.alog.HTTP(i)
}

// serving records the running proxy, for the metrics read at scrape time.
func (o *observability) serving(srv *proxy.Server, l7 *httpproxy.Proxy) {
	o.srv.Store(srv)
	o.l7.Store(l7)
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
	v, rev := "devel", ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				rev = " " + s.Value[:12]
			}
		}
	}
	return v + rev
}
