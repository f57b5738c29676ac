package main

import (
	"log/slog"
	"net/netip"
	"time"

	"github.com/detour-proxy/detour/internal/config"
	"github.com/detour-proxy/detour/internal/httpproxy"
	"github.com/detour-proxy/detour/internal/upstream"
)

// newL7 builds the HTTP side from the config. isSelf is the loop guard, so
// a request steered by header to detour's own address is refused too.
// onRequest (metrics, access log) is told about every finished request.
func newL7(cfg *config.Config, d *upstream.Dialer, log *slog.Logger, isSelf func(netip.AddrPort) bool, onRequest func(httpproxy.RequestInfo)) (*httpproxy.Proxy, error) {
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
		IsSelf:                isSelf,
		Logger:                log,
		OnRequest:             onRequest,
	})
}
