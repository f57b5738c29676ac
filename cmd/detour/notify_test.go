package main

import (
	"testing"

	"github.com/detour-proxy/detour/internal/config"
	"github.com/detour-proxy/detour/internal/intercept"
	"github.com/detour-proxy/detour/internal/proxy"
)

// TestServiceStatus: the STATUS= line names the intercepted ports as the
// configuration gives them, a range as one entry.
func TestServiceStatus(t *testing.T) {
	for _, tc := range []struct {
		ports []config.PortRange
		rules bool
		want  string
	}{
		{[]config.PortRange{{First: 80, Last: 80}, {First: 8000, Last: 8100}}, true, "serving: tproxy, 0 listeners, rules installed (ports 80,8000-8100)"},
		{[]config.PortRange{{First: 1, Last: 65535}}, true, "serving: tproxy, 0 listeners, rules installed (ports 1-65535)"},
		{nil, false, "serving: tproxy, 0 listeners, no rules (no intercept ports)"},
		{nil, true, "serving: tproxy, 0 listeners, rules drained (no intercept ports)"},
	} {
		d := &daemon{cfg: &config.Config{Mode: "tproxy"}, srv: proxy.New(proxy.Options{})}
		d.cfg.Intercept.Ports = tc.ports
		if tc.rules {
			d.rules = &intercept.Options{}
		}
		if got := d.serviceStatus(); got != tc.want {
			t.Errorf("ports %v: %q, want %q", tc.ports, got, tc.want)
		}
	}
}
