package main

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"strings"

	"github.com/detour-proxy/detour/internal/admin"
	"github.com/detour-proxy/detour/internal/config"
	"github.com/detour-proxy/detour/internal/httpproxy"
	"github.com/detour-proxy/detour/internal/listen"
)

// restartOnly are the settings a reload cannot change: they shape the
// rules' marks and routes, the upstream sockets' identity, or the admin
// and access-log plumbing. A reload that changes one is rejected whole.
func restartOnly(cur, next *config.Config) []string {
	var changed []string
	check := func(name string, a, b any) {
		if !reflect.DeepEqual(a, b) {
			changed = append(changed, name)
		}
	}
	check("mode", cur.Mode, next.Mode)
	check("tcp.loops", cur.TCP.Loops, next.TCP.Loops)
	check("nice", cur.Nice, next.Nice)
	check("admin", cur.Admin, next.Admin)
	check("admin_allow_remote", cur.AdminAllowRemote, next.AdminAllowRemote)
	check("access_log", cur.AccessLog, next.AccessLog)
	check("access_log_format", cur.AccessLogFormat, next.AccessLogFormat)
	check("upstream.mark", cur.Upstream.Mark, next.Upstream.Mark)
	check("upstream.spoof_source", cur.Upstream.SpoofSource, next.Upstream.SpoofSource)
	check("intercept.tproxy_mark", cur.Intercept.TProxyMark, next.Intercept.TProxyMark)
	check("intercept.route_table", cur.Intercept.RouteTable, next.Intercept.RouteTable)
	check("intercept.table_name", cur.Intercept.TableName, next.Intercept.TableName)
	return changed
}

// reload re-reads the configuration and applies it: new listeners open
// before the rules change and old ones close after, so diverted traffic
// always has a socket; the rules are replaced in one atomic batch; new
// connections get the new settings while open ones continue untouched. On
// any error nothing changes, and nothing does once stopping is done.
// by names what asked for it in the log (SIGHUP, POST /reload). The file's
// errors are configErrors: `detour reload` tells them apart.
func (d *daemon) reload(stopping context.Context, reread func() (*config.Config, error), by string) error {
	next, err := reread()
	if err != nil {
		return configError{err}
	}
	if stopping.Err() != nil {
		return errStopping
	}
	if keys := restartOnly(d.cfg, next); len(keys) > 0 {
		return configError{fmt.Errorf("%s cannot change without a restart", strings.Join(keys, ", "))}
	}
	cur := d.srv.Listeners()
	lns, err := openListeners(next, cur, d.log)
	if err != nil {
		return err
	}
	// What can fail comes first: the rules change last, so a failure
	// leaves them as they were.
	dialer := newDialer(next)
	var l7 *httpproxy.Proxy
	if !reflect.DeepEqual(d.cfg.HTTP, next.HTTP) || d.cfg.Upstream != next.Upstream {
		if l7, err = newL7(next, dialer, d.log, d.isSelf, d.obs); err != nil {
			closeNew(lns, cur)
			return err
		}
	}
	if stopping.Err() != nil { // the stop came while the new parts opened
		closeNew(lns, cur)
		if l7 != nil {
			l7.Close()
		}
		return errStopping
	}
	rulesChanged := !reflect.DeepEqual(interceptOptions(d.cfg), interceptOptions(next))
	if rulesChanged {
		if err := d.applyRules(next); err != nil {
			closeNew(lns, cur)
			if l7 != nil {
				l7.Close()
			}
			// A failed install may have removed the old rules too
			// (intercept.Apply cleans up after a half-done one).
			if rerr := d.applyRules(d.cfg); rerr != nil {
				return fmt.Errorf("%w; the previous rules could not be restored either: %w", err, rerr)
			}
			return err
		}
	}
	var old *httpproxy.Proxy
	if l7 != nil {
		old = d.replaceL7(l7)
	}
	d.srv.Update(d.proxyOptions(next, dialer))
	if old != nil {
		if d.hooks.pointed != nil {
			d.hooks.pointed()
		}
		d.retireL7(old)
	}
	d.srv.SetListeners(lns)
	d.obs.serving(d.srv, d.http.current())
	d.obs.listening(lns)
	d.obs.setConfig(next)
	d.obs.setExpire(next)
	d.level.UnmarshalText([]byte(next.LogLevel))
	d.cfg = next
	d.log.Info(by+": configuration reloaded", "listeners", len(lns), "rules_changed", rulesChanged,
		"ports", next.Intercept.Ports, "protocol", next.Protocol)
	return nil
}

// errStopping is a reload's answer when the stop (SIGINT, SIGTERM) began
// before it changed anything: the drain must not wait for it, nor find
// rules it installed after the stop.
var errStopping = admin.ErrStopping

// replaceL7 makes l7 the HTTP side new connections go to and returns the
// old one, which goes on serving until retireL7. A connection that loaded
// the old one before this switch and reaches it after its shutdown began
// is not taken there and goes to l7 (l7Side).
func (d *daemon) replaceL7(l7 *httpproxy.Proxy) (old *httpproxy.Proxy) {
	old = d.http.cur.Swap(l7)
	d.obs.replaceL7(old, l7) // its hosts' counters go on in the new cluster's
	return old
}

// retireL7 shuts down old, an HTTP side no new connection is pointed at
// any more. It closes its idle keep-alive connections now, as HTTP allows
// between requests; the requests in flight on it finish on the old
// settings, however long they take (a download, an upgraded connection),
// as open L4 connections do: only the drain at exit cuts them
// (d.drainEnd).
func (d *daemon) retireL7(old *httpproxy.Proxy) {
	d.drains.Add(1)
	go func() {
		defer d.drains.Done()
		old.Shutdown(d.drainEnd)
		old.Close()
		d.obs.retired(old)
		if d.hooks.retired != nil {
			d.hooks.retired()
		}
	}()
}

// closeNew closes the listeners in lns that were not already open.
func closeNew(lns, had []*listen.Listener) {
	for _, l := range lns {
		if !slices.Contains(had, l) {
			l.Close()
		}
	}
}
