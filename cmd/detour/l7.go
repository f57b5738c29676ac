package main

import (
	"log/slog"

	"github.com/detour-proxy/detour/internal/config"
	"github.com/detour-proxy/detour/internal/proxy"
	"github.com/detour-proxy/detour/internal/upstream"
)

// newL7 builds the HTTP side; until it exists every protocol is L4.
func newL7(cfg *config.Config, d *upstream.Dialer, log *slog.Logger) (proxy.L7, error) {
	cfg.Protocol = "tcp"
	return nil, nil
}
