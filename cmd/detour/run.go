package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os/signal"
	"syscall"
	"time"

	"github.com/detour-proxy/detour/internal/config"
	"github.com/detour-proxy/detour/internal/intercept"
	"github.com/detour-proxy/detour/internal/listen"
	"github.com/detour-proxy/detour/internal/proxy"
	"github.com/detour-proxy/detour/internal/tcpproxy"
	"github.com/detour-proxy/detour/internal/upstream"
)

const runHelp = `Usage: detour run [-c detour.yaml] [flags]

Opens the listeners, installs the interception rules (when ports are given),
forwards every intercepted connection to its original destination, and on
SIGINT/SIGTERM drains connections and removes the rules. Rules left by a
run that was killed are removed at the next start.

Examples:
  # router: TPROXY port 80 of forwarded traffic to detour (tutorial 1)
  detour run --mode tproxy --intercept-port 80
  # same host: REDIRECT local applications' port 80 (tutorial 2)
  detour run --mode redirect --intercept-port 80 --listen 127.0.0.1:4999

Flags:
`

func cmdRun(args []string, stdout, stderr io.Writer) int {
	f := newConfigFlags("run", stderr, true)
	f.fs.Usage = func() { fmt.Fprint(stderr, runHelp); f.fs.PrintDefaults() }
	if code, ok := parse(f.fs, args); !ok {
		return code
	}
	if f.fs.NArg() > 0 {
		fmt.Fprintf(stderr, "detour run: unexpected argument %q\n", f.fs.Arg(0))
		return exitUsage
	}
	cfg, err := f.load()
	if err != nil {
		fmt.Fprintf(stderr, "detour run: %v\n", err)
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, stderr); err != nil {
		fmt.Fprintf(stderr, "detour run: %v\n", err)
		return exitFailure
	}
	return exitOK
}

// run is the daemon's whole life: listeners, rules, serve, drain, clean.
func run(ctx context.Context, cfg *config.Config, logw io.Writer) (err error) {
	level := new(slog.LevelVar)
	level.UnmarshalText([]byte(cfg.LogLevel))
	log := slog.New(slog.NewTextHandler(logw, &slog.HandlerOptions{Level: level}))

	// Metrics, access log and the admin endpoint (503 on /ready until ready).
	obs, err := startObservability(cfg, level, log)
	if err != nil {
		return err
	}
	defer obs.close()

	var lns []*listen.Listener
	defer func() {
		for _, l := range lns {
			l.Close()
		}
	}()
	for _, a := range cfg.ListenAddrs {
		l, err := listen.Listen(listen.Options{Mode: listen.Mode(cfg.Mode), Addr: a})
		if err != nil {
			return err
		}
		lns = append(lns, l)
		log.Info("listening", "addr", l.Addr(), "mode", cfg.Mode)
	}
	obs.listening(lns)

	if len(cfg.Intercept.Ports) > 0 {
		io := interceptOptions(cfg)
		if err := intercept.Apply(io); err != nil {
			return fmt.Errorf("install rules: %w (try `detour check --mode %s`)", err, cfg.Mode)
		}
		log.Info("rules installed", "mode", cfg.Mode, "ports", cfg.Intercept.Ports, "table", "inet "+io.TableName)
		obs.rules(cfg, true)
		defer func() {
			if cerr := intercept.Clean(io); cerr != nil {
				err = errors.Join(err, fmt.Errorf("remove rules: %w", cerr))
				return
			}
			obs.rules(cfg, false)
			log.Info("rules removed")
		}()
	}

	dialer := upstream.New(upstream.Options{
		ConnectTimeout: time.Duration(cfg.Upstream.ConnectTimeout),
		Mark:           cfg.Upstream.Mark,
		SpoofSource:    cfg.Upstream.SpoofSource,
	})
	var srv *proxy.Server
	l7, err := newL7(cfg, dialer, log, func(dst netip.AddrPort) bool { return srv.IsSelf(dst) }, obs.onRequest)
	if err != nil {
		return err
	}
	defer l7.Close()
	srv = proxy.New(proxy.Options{
		Listeners:    lns,
		Dialer:       dialer,
		Protocol:     proxy.Protocol(cfg.Protocol),
		MaxConns:     cfg.MaxConnections,
		SniffTimeout: time.Duration(cfg.SniffTimeout),
		TCP:          tcpproxy.Options{IdleTimeout: time.Duration(cfg.TCP.IdleTimeout)},
		HTTP:         obs.metrics.L7(l7),
		Observer:     observer{obs},
		Logger:       log,
	})
	obs.serving(srv, l7)
	served := make(chan struct{})
	go func() { srv.Serve(); close(served) }()
	obs.ready()
	log.Info("ready", "listeners", len(lns), "protocol", cfg.Protocol)

	<-ctx.Done()
	obs.draining()
	log.Info("shutting down: draining connections", "drain_timeout", time.Duration(cfg.Drain))
	drainCtx, cancel := context.WithTimeout(context.Background(), time.Duration(cfg.Drain))
	defer cancel()
	// The HTTP side closes idle keep-alive connections and waits for
	// requests in flight while the accept loops stop and L4 streams finish.
	httpDrained := make(chan error, 1)
	go func() { httpDrained <- l7.Shutdown(drainCtx) }()
	if derr := srv.Shutdown(drainCtx); derr != nil {
		log.Warn(derr.Error())
	}
	if herr := <-httpDrained; herr != nil {
		log.Warn("HTTP drain ended with requests in flight", "err", herr)
	}
	<-served
	lns = nil // closed by Shutdown
	return nil
}
