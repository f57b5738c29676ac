package main

import (
	"log/slog"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/detour-proxy/detour/internal/config"
	"github.com/detour-proxy/detour/internal/httpproxy"
	"github.com/detour-proxy/detour/internal/upstream"
)

// newL7 builds the HTTP side from the config. isSelf is the loop guard, so
// a request steered by header to detour's own address is refused too.
// obs (metrics, access log) is told about every finished request and
// every upstream connect.
func newL7(cfg *config.Config, d *upstream.Dialer, log *slog.Logger, isSelf func(netip.AddrPort) bool, obs *observability) (*httpproxy.Proxy, error) {
	h := cfg.HTTP
	return httpproxy.New(httpproxy.Options{
		Dialer:                d,
		CleanupInterval:       time.Duration(h.CleanupInterval),
		RouteTimeout:          time.Duration(h.RouteTimeout),
		UseOriginalDstHeader:  h.UseOriginalDstHeader,
		OriginalDstHeader:     h.OriginalDstHeader,
		XForwardedFor:         h.XForwardedFor,
		ServerHeader:          h.ServerHeader,
		ServerHeaderMode:      h.ServerHeaderMode,
		MaxRequestHeaderBytes: h.MaxRequestHeaderKiB << 10,
		MaxRequestHeaders:     h.MaxRequestHeaders,
		AllowLoopback:         h.AllowLoopback,
		HeaderTimeout:         time.Duration(h.HeaderTimeout),
		IdleTimeout:           time.Duration(h.IdleTimeout),
		StreamIdleTimeout:     time.Duration(h.StreamIdleTimeout),
		DisableFastPath:       h.DisableFastPath,
		DisableLoops:          h.DisableLoops,
		MaxIdleConnsPerHost:   h.MaxIdleConnsPerHost,
		IsSelf:                isSelf,
		Logger:                log,
		OnRequest:             obs.onRequest,
		OnConnect:             obs.metrics.L7Connect,
	})
}

// l7Side is the HTTP side the proxy hands connections to: whichever
// httpproxy.Proxy is current. A reload makes a new one current, then
// shuts the old one down; a connection that loaded the old one just
// before and reached it once its shutdown began is not taken there
// (ServeConn's false) and goes to the current one instead, so that no
// connection accepted is lost to a reload.
type l7Side struct {
	cur atomic.Pointer[httpproxy.Proxy]
	// loaded, nil in production, is called between a connection's load
	// of the current side and its hand-over: a test's way into that gap.
	loaded func()
}

func newL7Side(p *httpproxy.Proxy, loaded func()) *l7Side {
	s := &l7Side{loaded: loaded}
	s.cur.Store(p)
	return s
}

// ServeConn serves c on the current side. A side shut down that nothing
// replaced (detour is stopping) takes no new connection: c, and the
// connect made for it, are closed then.
func (s *l7Side) ServeConn(c net.Conn, client, origDst netip.AddrPort, pre upstream.PreDial) {
	for p := s.cur.Load(); ; {
		if s.loaded != nil {
			s.loaded()
		}
		if p.ServeConn(c, client, origDst, pre) {
			return
		}
		next := s.cur.Load()
		if next == p {
			c.Close()
			if pre.Conn != nil {
				pre.Conn.Close()
			}
			return
		}
		p = next
	}
}

// current is the side new connections go to.
func (s *l7Side) current() *httpproxy.Proxy { return s.cur.Load() }

// Pooled asks the current side (proxy.L7).
func (s *l7Side) Pooled(client, origDst netip.AddrPort) bool {
	return s.cur.Load().Pooled(client, origDst)
}

// reachesAdmin reports whether a request to dst would reach the admin
// endpoint listening on admin (invalid when off), so that the steering
// header cannot aim a request at it (with http.allow_loopback, or when it
// listens on a non-loopback address).
func reachesAdmin(admin, dst netip.AddrPort) bool {
	if !admin.IsValid() || dst.Port() != admin.Port() {
		return false
	}
	a, d := admin.Addr().Unmap(), dst.Addr().Unmap()
	switch {
	case d == a, d.IsUnspecified(): // 0.0.0.0 and :: reach this host
		return true
	case a.IsUnspecified(): // a wildcard admin listens on every local address
		return d.IsLoopback() || isLocalAddr(d)
	}
	return false
}

// isLocalAddr reports whether a is one of the host's addresses. It is
// asked only for a destination on the admin port.
func isLocalAddr(a netip.Addr) bool {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, ia := range addrs {
		if p, err := netip.ParsePrefix(ia.String()); err == nil && p.Addr().Unmap() == a {
			return true
		}
	}
	return false
}
