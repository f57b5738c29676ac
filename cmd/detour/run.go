package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/detour-proxy/detour/internal/admin"
	"github.com/detour-proxy/detour/internal/config"
	"github.com/detour-proxy/detour/internal/intercept"
	"github.com/detour-proxy/detour/internal/listen"
	"github.com/detour-proxy/detour/internal/nice"
	"github.com/detour-proxy/detour/internal/proxy"
	"github.com/detour-proxy/detour/internal/sdnotify"
	"github.com/detour-proxy/detour/internal/tcpproxy"
	"github.com/detour-proxy/detour/internal/upstream"
)

const runHelp = `Usage: detour run [-c detour.yaml] [flags]

Opens the listeners, installs the interception rules (when ports are given),
forwards every intercepted connection to its original destination, and on
SIGINT/SIGTERM (or POST /quitquitquit on the admin endpoint) drains
connections and removes the rules. Rules left by a
run that was killed are removed at the next start. SIGHUP re-reads the
config file (flags still override it) and applies it without dropping
connections; ` + "`detour reload`" + ` does the same and reports whether the file was
rejected. SIGUSR1 reopens the access log. Under systemd (NOTIFY_SOCKET
set) it reports READY=1, RELOADING=1 and STOPPING=1: see
contrib/systemd/detour.service.

Examples:
  # router: TPROXY port 80 of forwarded traffic to detour (tutorial 1)
  detour run --mode tproxy --intercept-port 80
  # same host: REDIRECT local applications' port 80 (tutorial 2)
  detour run --mode redirect --intercept-port 80 --listen 127.0.0.1:4999

Flags:
`

func cmdRun(args []string, stdout, stderr io.Writer) int {
	f := newConfigFlags("run", stderr, true)
	setUsage(f.fs, runHelp)
	if code, ok := parseFlagsOnly(f.fs, args, stdout, stderr); !ok {
		return code
	}
	cfg, err := f.load()
	if err != nil {
		fmt.Fprintf(stderr, "detour run: %v\n", err)
		return exitUsage
	}
	// A log reader that goes away (`detour run 2>&1 | head`, a logger
	// that dies) must not kill detour by SIGPIPE with its rules still
	// diverting traffic into closed listeners: writes then fail, and
	// detour serves on, as nginx and HAProxy do.
	signal.Ignore(syscall.SIGPIPE)
	// The first SIGINT or SIGTERM starts the drain; a second one cuts it
	// short (what is still open is closed, flag DT), so an operator who
	// cannot wait drain_timeout has a way out that still removes the
	// rules: SIGKILL leaves them.
	stopSig := make(chan os.Signal, 2)
	signal.Notify(stopSig, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(stopSig)
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	hard, stopHard := context.WithCancel(context.Background())
	defer stopHard()
	go func() {
		select {
		case <-stopSig:
		case <-hard.Done():
			return
		}
		stop()
		select {
		case <-stopSig:
		case <-hard.Done():
			return
		}
		stopHard()
	}()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	if err := run(ctx, hard, cfg, f.load, hup, stderr, hooks{}); err != nil {
		fmt.Fprintf(stderr, "detour run: %v\n", err)
		if errors.As(err, new(configError)) {
			return exitUsage
		}
		return exitFailure
	}
	return exitOK
}

// configError is a start-up failure that a value of the configuration
// causes and only another value fixes (an access log path that cannot be
// opened): exit 2, as for the errors f.load finds, not 1, which says that
// something at run time went wrong.
type configError struct{ error }

func (e configError) Unwrap() error { return e.error }

// Is makes a configError admin.ErrConfig: POST /reload answers it 409,
// and `detour reload` exits 2, as for an error in the file at start.
func (e configError) Is(target error) bool { return target == admin.ErrConfig }

// daemon is one run's moving parts; reload swaps some of them.
type daemon struct {
	cfg    *config.Config
	log    *slog.Logger
	level  *slog.LevelVar
	obs    *observability
	srv    *proxy.Server
	http   *l7Side // the HTTP side; a reload replaces what it serves with
	hooks  hooks
	rules  *intercept.Options // installed rules, nil when none
	owner  *intercept.Owner   // holds what the rules use (table; route table and mark), from the first install to exit
	admin  netip.AddrPort     // the admin endpoint (invalid: off); a restart changes it
	drains sync.WaitGroup     // L7 proxies replaced by a reload, draining
	// drainEnd is done when the drain at exit ends (drain_timeout, or a
	// second SIGINT or SIGTERM): what L7 proxies replaced by a reload
	// still serve is cut then, not before.
	drainEnd context.Context

	// The rules check's error while it keeps failing the same way, and
	// when it was last logged: once a minute, not at every check.
	rulesErr   string
	rulesErrAt time.Time

	// reloads carries POST /reload's requests to the loop that serves
	// SIGHUP, which answers each on its channel; reloadsEnd is closed
	// when the stop ends that loop.
	reloads    chan chan error
	reloadsEnd <-chan struct{}

	sd        *sdnotify.Notifier // systemd's notify socket (notify.go)
	sdFailed  bool               // a notification failed and was logged
	reloadErr error              // the last reload's rejection, for STATUS=
}

// hooks let tests act at moments of a run that no signal or log line
// marks; every one is nil in production.
type hooks struct {
	// pointed: a reload that replaces the HTTP side pointed new
	// connections at the new one; the old one is not yet retired.
	pointed func()
	// retired: an HTTP side a reload replaced is closed.
	retired func()
	// loaded: a connection's goroutine loaded the current HTTP side and
	// has not yet handed the connection to it (l7Side.loaded).
	loaded func()
}

// run is the daemon's whole life: listeners, rules, serve, reload on
// SIGHUP, drain, clean. ctx ends serving and starts the drain; hard, done
// too, ends the drain at once.
func run(ctx, hard context.Context, cfg *config.Config, reread func() (*config.Config, error), hup <-chan os.Signal, logw io.Writer, h hooks) (err error) {
	// POST /quitquitquit stops as the first SIGINT or SIGTERM does, but is
	// no signal: the SIGTERM that Kubernetes sends after a preStop hook
	// that posted it does not cut the drain short; a second one does.
	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	quit := func() { stop(errQuit) }
	drainEnd, endDrain := context.WithCancel(hard)
	defer endDrain()
	d := &daemon{cfg: cfg, admin: cfg.AdminAddr, level: new(slog.LevelVar), drainEnd: drainEnd, hooks: h}
	d.level.UnmarshalText([]byte(cfg.LogLevel))
	d.log = slog.New(slog.NewTextHandler(logw, &slog.HandlerOptions{Level: d.level}))
	log := d.log
	d.startNotify()
	defer func() {
		if err != nil && d.srv == nil {
			d.notifyFailed(err)
		}
	}()
	if cfg.Nice != 0 {
		if err := nice.Set(cfg.Nice); err != nil {
			return configError{err}
		}
	}
	if err := tcpproxy.SetLoops(cfg.TCP.Loops); err != nil {
		return err
	}
	warnNoLinger(log)

	// Metrics, access log and the admin endpoint (503 on /ready until ready).
	d.reloads, d.reloadsEnd = make(chan chan error), ctx.Done()
	d.obs, err = startObservability(cfg, d.level, log, quit, d.requestReload)
	if err != nil {
		return err
	}
	defer d.obs.close()

	if cfg.ListenDefault && cfg.NoIPv6 {
		log.Warn("IPv6 is unavailable in this network namespace: listening on IPv4 only, IPv6 connections are not intercepted (`detour check` says how to enable it)",
			"why", listen.Inspect().NoIPv6)
	}
	lns, err := openListeners(cfg, nil, log)
	if err != nil {
		return err
	}
	d.obs.listening(lns)
	defer func() {
		if d.srv == nil { // never served: Shutdown did not close them
			for _, l := range lns {
				l.Close()
			}
		}
	}()

	defer func() { d.owner.Release() }() // after the rules are gone
	if err := d.applyRules(cfg); err != nil {
		return err
	}
	defer func() {
		if cerr := d.cleanRules(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()

	dialer := newDialer(cfg)
	l7, err := newL7(cfg, dialer, log, d.isSelf, d.obs)
	if err != nil {
		return err
	}
	d.http = newL7Side(l7, d.hooks.loaded)
	// The access log prints the L4 upstream connections' local addresses;
	// without one they are not asked for (a getsockname each).
	d.srv = proxy.New(proxy.Options{Listeners: lns, Observer: observer{d.obs}, UpstreamLocal: d.obs.alog != nil, Logger: log})
	d.srv.Update(d.proxyOptions(cfg, dialer))
	d.obs.serving(d.srv, d.http.current())
	served := make(chan struct{})
	go func() { d.srv.Serve(); close(served) }()
	d.obs.ready()
	d.notifyReady()
	// Logged whatever the level: scripts and the lab wait for this line.
	ready := slog.NewRecord(time.Now(), slog.LevelInfo, "ready", 0)
	ready.AddAttrs(slog.Int("listeners", len(lns)), slog.String("protocol", cfg.Protocol), slog.Int("l4_loops", tcpproxy.Loops()))
	log.Handler().Handle(context.Background(), ready)

	// The rules are checked here, between signals, so a check never
	// races a reload's install, and never runs once the drain began. A
	// stop goes first: select picks at random among ready cases, and a
	// SIGHUP just before the SIGTERM would otherwise be served first,
	// delaying the stop by a reload and installing rules it then drains.
	check := time.NewTicker(time.Duration(d.cfg.Intercept.CheckInterval))
	defer check.Stop()
	watchdog, stopWatchdog := d.watchdog()
	defer stopWatchdog()
	for ctx.Err() == nil {
		select {
		case <-hup:
			if ctx.Err() == nil {
				d.serveReload(ctx, reread, "SIGHUP")
				check.Reset(time.Duration(d.cfg.Intercept.CheckInterval))
			}
		case done := <-d.reloads:
			if ctx.Err() != nil {
				done <- errStopping
				break
			}
			done <- d.serveReload(ctx, reread, "POST /reload")
			check.Reset(time.Duration(d.cfg.Intercept.CheckInterval))
		case <-check.C:
			d.ensureRules(ctx, "periodic check")
		case <-watchdog:
			d.notify(sdnotify.Watchdog)
		case <-ctx.Done():
		}
	}

	d.notifyStopping()
	// No listener serves any more (detour_listeners, /status: Shutdown
	// closes them first), told before /ready turns 503, so that an
	// observer who sees the drain sees both.
	d.obs.listening(nil)
	d.obs.draining()
	// New connections pass directly while the open ones drain (a NAT
	// redirect would send them into the closed listeners).
	if d.rules != nil {
		if err := intercept.Drain(*d.rules); err != nil {
			log.Warn("draining with the rules in place: new connections may be refused until they are removed", "err", err)
		} else {
			d.obs.rules(d.cfg, admin.Rules{Drained: true})
		}
	}
	cut := "a second SIGINT or SIGTERM ends the drain now"
	if context.Cause(ctx) == errQuit {
		cut = "two SIGINT or SIGTERM end the drain now"
	}
	log.Info("shutting down: draining connections ("+cut+")", "drain_timeout", time.Duration(d.cfg.Drain))
	drainCtx, cancel := context.WithTimeout(hard, time.Duration(d.cfg.Drain))
	defer cancel()
	context.AfterFunc(drainCtx, endDrain) // HTTP sides replaced by a reload are cut with the rest
	// The HTTP side closes idle keep-alive connections and waits for
	// requests in flight while the accept loops stop and L4 streams finish.
	httpDrained := make(chan error, 1)
	l7 = d.http.current()
	go func() { httpDrained <- l7.Shutdown(drainCtx) }()
	if derr := d.srv.Shutdown(drainCtx); derr != nil {
		log.Warn(derr.Error())
	}
	if herr := <-httpDrained; herr != nil {
		log.Warn("HTTP drain ended with requests in flight", "err", herr)
	}
	l7.Close()
	d.drains.Wait()
	<-served
	return nil
}

// errQuit is the cause of a stop that POST /quitquitquit began.
var errQuit = errors.New("POST /quitquitquit")

// isSelf is the L7 loop guard: detour's listeners and its admin endpoint.
func (d *daemon) isSelf(dst netip.AddrPort) bool {
	return d.srv != nil && d.srv.IsSelf(dst) || reachesAdmin(d.admin, dst)
}

// openListeners opens cfg's listeners, reusing those in have with the same
// address; on error it closes only what it opened.
func openListeners(cfg *config.Config, have []*listen.Listener, log *slog.Logger) ([]*listen.Listener, error) {
	byAddr := map[netip.AddrPort]*listen.Listener{}
	for _, l := range have {
		byAddr[l.Addr()] = l
	}
	var out, opened []*listen.Listener
	for _, a := range cfg.ListenAddrs {
		if l, ok := byAddr[a]; ok {
			out = append(out, l)
			continue
		}
		l, err := listen.Listen(listen.Options{Mode: listen.Mode(cfg.Mode), Addr: a})
		if err != nil {
			for _, o := range opened {
				o.Close()
			}
			return nil, err
		}
		opened = append(opened, l)
		out = append(out, l)
		log.Info("listening", "addr", l.Addr(), "mode", cfg.Mode)
	}
	return out, nil
}

// applyRules installs (or atomically replaces) the interception rules cfg
// asks for. When it asks for none, rules installed before stop diverting
// new connections but keep serving the open ones until exit (Drain).
func (d *daemon) applyRules(cfg *config.Config) error {
	o := interceptOptions(cfg)
	if len(cfg.Intercept.Ports) == 0 {
		if d.rules == nil && d.owner == nil {
			if there, _ := intercept.Installed(o); there {
				d.log.Warn("rules of this table are installed, by `detour rules apply`, a killed run or a detour still running; this run installs none and leaves them (`detour rules clean` removes them unless a running detour owns them)", "table", "inet "+o.TableName)
			}
		}
		// The open connections still need part of the rules (see
		// intercept.Drain): a reload that drops every port stops diverting
		// new ones and removes the rest at exit.
		if d.rules == nil {
			return nil
		}
		if err := intercept.Drain(*d.rules); err != nil {
			return fmt.Errorf("stop diverting: %w", err)
		}
		d.obs.rules(cfg, admin.Rules{Drained: true})
		d.log.Info("rules no longer divert new connections; what the open ones need stays until exit", "table", "inet "+o.TableName)
		return nil
	}
	if d.owner == nil {
		owner, err := intercept.Own(o)
		if err != nil {
			return ownedHint(err)
		}
		d.owner = owner
		if there, _ := intercept.Installed(o); there {
			d.log.Info("replacing rules already installed in this namespace, by a killed run or `detour rules apply`", "table", "inet "+o.TableName)
		}
	}
	if err := intercept.Apply(o); err != nil {
		// tproxy's local routes go through lo; the kernel only says
		// "network is down".
		if !listen.Inspect().LoopbackUp {
			return fmt.Errorf("install rules: %w (the loopback interface lo is down: ip link set lo up)", err)
		}
		if errors.Is(err, syscall.EEXIST) { // the error says what is in the way; check would not see it
			return fmt.Errorf("install rules: %w", err)
		}
		return fmt.Errorf("install rules: %w (try `detour check --mode %s`)", err, cfg.Mode)
	}
	d.rules = &o
	d.log.Info("rules installed", "mode", cfg.Mode, "ports", cfg.Intercept.Ports, "table", "inet "+o.TableName)
	for _, name := range cfg.Intercept.Interfaces {
		if _, err := net.InterfaceByName(name); err != nil {
			d.log.Warn("interface not found in this network namespace: the rules match it by name, so nothing arriving on it is intercepted until it exists (check intercept.interfaces, --intercept-iface, against `ip link`)", "interface", name)
		}
	}
	if kept, _ := intercept.Kept(o); len(kept) > 0 {
		d.log.Info("policy routing that was already in place is used and will be left as it is at exit: detour did not add it", "kept", strings.Join(kept, "; "))
	}
	d.obs.rules(cfg, admin.Rules{Installed: true})
	return nil
}

// serveReload is one reload, asked for by a SIGHUP or POST /reload, told
// to the service manager and logged; the rules check and READY=1 follow
// it, whatever its outcome, unless the stop overtook it.
func (d *daemon) serveReload(stopping context.Context, reread func() (*config.Config, error), by string) error {
	err := d.reloadNotified(stopping, reread, by)
	if errors.Is(err, errStopping) {
		d.log.Info(by + ": reload abandoned: detour is stopping")
		return err
	}
	if err != nil {
		d.log.Error(by+": reload rejected; still running the previous configuration", "err", err)
	}
	d.ensureRules(stopping, by)
	d.notifyReady()
	return err
}

// requestReload is POST /reload: it has the loop that serves SIGHUP
// reload, so that the two never overlap, and waits for the outcome, which
// a signal cannot return to its sender.
func (d *daemon) requestReload(ctx context.Context) error {
	done := make(chan error, 1)
	select {
	case d.reloads <- done:
	case <-d.reloadsEnd:
		return errStopping
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// ensureRules puts back the rules when part of them vanished under the run
// (a firewall reload's `nft flush ruleset`): traffic would bypass detour
// with no error anywhere. Drained rules (no ports) are left as they are,
// and so is everything once the stop began.
func (d *daemon) ensureRules(stopping context.Context, why string) {
	if d.rules == nil || len(d.cfg.Intercept.Ports) == 0 || stopping.Err() != nil {
		return
	}
	failing := d.rulesErr != ""
	defer func() {
		if (d.rulesErr != "") != failing { // systemctl status says it as the log does
			d.notify(sdnotify.Status(d.serviceStatus()))
		}
	}()
	missing, err := intercept.Ensure(*d.rules)
	repeat := err != nil && err.Error() == d.rulesErr && time.Since(d.rulesErrAt) < time.Minute
	if len(missing) > 0 {
		d.obs.rules(d.cfg, admin.Rules{})
		if !repeat {
			d.log.Warn("rules vanished or changed under detour; reinstalling them", "checked_on", why, "missing", strings.Join(missing, "; "), "table", "inet "+d.rules.TableName)
		}
	}
	if err != nil {
		if !repeat {
			d.log.Error("rules check failed; traffic may bypass detour until a check succeeds (logged once a minute while it fails the same way)", "checked_on", why, "err", err)
			d.rulesErr, d.rulesErrAt = err.Error(), time.Now()
		}
		return
	}
	d.rulesErr = ""
	if len(missing) > 0 {
		d.obs.state.RulesReinstalled()
		d.obs.rules(d.cfg, admin.Rules{Installed: true})
		d.log.Info("rules reinstalled", "table", "inet "+d.rules.TableName)
	}
}

func (d *daemon) cleanRules() error {
	if d.rules == nil {
		return nil
	}
	if err := intercept.Clean(*d.rules); err != nil {
		return fmt.Errorf("remove rules: %w", err)
	}
	d.rules = nil
	d.obs.rules(d.cfg, admin.Rules{})
	d.log.Info("rules removed")
	return nil
}

func newDialer(cfg *config.Config) *upstream.Dialer {
	return upstream.New(upstream.Options{
		ConnectTimeout: time.Duration(cfg.Upstream.ConnectTimeout),
		Mark:           uint32(cfg.Upstream.Mark),
		SpoofSource:    cfg.Upstream.SpoofSource,
	})
}

// proxyOptions are the settings a reload may change for new connections.
func (d *daemon) proxyOptions(cfg *config.Config, dialer *upstream.Dialer) proxy.Options {
	return proxy.Options{
		Dialer:       dialer,
		Protocol:     proxy.Protocol(cfg.Protocol),
		MaxConns:     cfg.MaxConnections,
		SniffTimeout: time.Duration(cfg.SniffTimeout),
		TCP:          tcpproxy.Options{IdleTimeout: time.Duration(cfg.TCP.IdleTimeout)},
		HTTP:         d.obs.metrics.L7(d.http),
	}
}

// warnNoLinger says when the L4 loops cannot wait for answers in the
// kernel: they serve on without it, more slowly, and say nothing
// themselves.
func warnNoLinger(log *slog.Logger) {
	if err := tcpproxy.LingerSupport(); err != nil {
		log.Warn("the L4 loops cannot wait for answers in the kernel; they serve without it, more slowly", "err", err, "fix", tcpproxy.LingerFix)
	}
}
