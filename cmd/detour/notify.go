package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/detour-proxy/detour/internal/config"
	"github.com/detour-proxy/detour/internal/sdnotify"
)

// The service manager's view of run (systemd's Type=notify-reload, see
// "Running as a service" in the README): READY=1 when /ready turns 200,
// RELOADING=1 and READY=1 around each reload, STOPPING=1 when the drain
// begins, and a STATUS= line for `systemctl status`. Without NOTIFY_SOCKET
// all of it does nothing.

// startNotify reads NOTIFY_SOCKET; an address it cannot use is logged,
// not fatal: detour serves the same without a service manager.
func (d *daemon) startNotify() {
	sd, err := sdnotify.FromEnv()
	if err != nil {
		d.log.Warn(err.Error())
	}
	d.sd = sd
}

// notify sends fields; the first failure is logged, later ones not (the
// watchdog would repeat it every few seconds).
func (d *daemon) notify(fields ...string) {
	if err := d.sd.Send(fields...); err != nil && !d.sdFailed {
		d.sdFailed = true
		d.log.Warn("the service manager cannot be told detour's state (NOTIFY_SOCKET); logged once", "err", err)
	}
}

// notifyReady says that detour serves with its rules installed, at start
// and at the end of a reload.
func (d *daemon) notifyReady() {
	d.notify(sdnotify.Ready, sdnotify.Status(d.serviceStatus()))
}

// reloadNotified is d.reload told to the service manager: RELOADING=1
// with the monotonic time Type=notify-reload matches its SIGHUP with. The
// READY=1 that ends it follows the rules check (notifyReady).
func (d *daemon) reloadNotified(stopping context.Context, reread func() (*config.Config, error), by string) error {
	d.notify(sdnotify.Reloading, sdnotify.MonotonicNow(), sdnotify.Status("reloading the configuration"))
	err := d.reload(stopping, reread, by)
	if !errors.Is(err, errStopping) {
		d.reloadErr = err
	}
	return err
}

// notifyFailed tells `systemctl status` why run ends without having
// served, with the error number when the error carries one; the exit
// status says that it failed.
func (d *daemon) notifyFailed(err error) {
	fields := []string{sdnotify.Status("failed to start: " + err.Error())}
	if errno := sdnotify.Errno(err); errno != "" {
		fields = append(fields, errno)
	}
	d.notify(fields...)
}

// notifyStopping says that the drain began.
func (d *daemon) notifyStopping() {
	d.notify(sdnotify.Stopping, sdnotify.Status(fmt.Sprintf("stopping: draining connections for up to %s, then removing the rules", time.Duration(d.cfg.Drain))))
}

// watchdog ticks at half WatchdogSec= while the service manager watches
// detour (never otherwise: the channel is nil). The ticks are served by
// run's signal loop, so a loop that hangs stops them.
func (d *daemon) watchdog() (<-chan time.Time, func()) {
	every := d.sd.WatchdogInterval()
	if every <= 0 {
		return nil, func() {}
	}
	t := time.NewTicker(every)
	return t.C, t.Stop
}

// serviceStatus is the STATUS= line while serving.
func (d *daemon) serviceStatus() string {
	rules := "no rules (no intercept ports)"
	switch {
	case d.rules != nil && len(d.cfg.Intercept.Ports) > 0:
		rules = "rules installed (ports " + strings.Join(portStrings(d.cfg.Intercept.Ports), ",") + ")"
	case d.rules != nil:
		rules = "rules drained (no intercept ports)"
	}
	if d.rulesErr != "" {
		rules = "rules check failing, new connections may bypass detour: " + d.rulesErr
	}
	s := fmt.Sprintf("serving: %s, %d listeners, %s", d.cfg.Mode, len(d.srv.Listeners()), rules)
	if d.reloadErr != nil {
		s += "; last reload rejected, previous configuration kept: " + d.reloadErr.Error()
	}
	return s
}
