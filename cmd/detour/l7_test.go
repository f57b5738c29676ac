package main

import (
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/detour-proxy/detour/internal/config"
)

func TestIsSelfCoversAdmin(t *testing.T) {
	ap := netip.MustParseAddrPort
	for _, tt := range []struct {
		admin, dst string
		want       bool
	}{
		{"127.0.0.1:9901", "127.0.0.1:9901", true},
		{"127.0.0.1:9901", "0.0.0.0:9901", true},
		{"127.0.0.1:9901", "[::ffff:127.0.0.1]:9901", true},
		{"127.0.0.1:9901", "127.0.0.1:9902", false},
		{"127.0.0.1:9901", "198.18.2.2:9901", false},
		{"198.18.1.1:9901", "198.18.1.1:9901", true},
		{"198.18.1.1:9901", "198.18.1.2:9901", false},
		{"0.0.0.0:9901", "127.0.0.1:9901", true},
		{"[::]:9901", "[::1]:9901", true},
		{"[::]:9901", "[::]:9901", true},
		{"0.0.0.0:9901", "198.51.100.7:9901", false}, // not a local address
		{"", "127.0.0.1:9901", false},                // admin off
	} {
		var admin netip.AddrPort
		if tt.admin != "" {
			admin = ap(tt.admin)
		}
		d := &daemon{admin: admin} // no listeners: only the admin address counts
		if got := d.isSelf(ap(tt.dst)); got != tt.want {
			t.Errorf("admin %s: isSelf(%s) = %v, want %v", tt.admin, tt.dst, got, tt.want)
		}
	}
}

func TestHTTPTimeoutFlags(t *testing.T) {
	f := newConfigFlags("run", io.Discard, true)
	if err := f.fs.Parse([]string{"--header-timeout", "3s", "--stream-idle-timeout", "90s"}); err != nil {
		t.Fatal(err)
	}
	cfg, err := f.load()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.HTTP.HeaderTimeout != config.Duration(3*time.Second) || cfg.HTTP.StreamIdleTimeout != config.Duration(90*time.Second) {
		t.Errorf("http %+v", cfg.HTTP)
	}
	f = newConfigFlags("run", io.Discard, true)
	if err := f.fs.Parse([]string{"--header-timeout", "-1s"}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.load(); err == nil {
		t.Error("negative --header-timeout accepted")
	}
}
