package main

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"github.com/detour-proxy/detour/internal/config"
)

// TestConfigShowsLevelInForce: /config is the effective configuration, so
// after POST /logging changes the level its log_level says the new one.
func TestConfigShowsLevelInForce(t *testing.T) {
	cfg := &config.Config{Admin: "127.0.0.1:0"}
	if err := cfg.Finish(); err != nil {
		t.Fatal(err)
	}
	level := new(slog.LevelVar)
	level.UnmarshalText([]byte(cfg.LogLevel))
	o, err := startObservability(cfg, level, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(o.close)
	base := "http://" + o.admin.Addr().String()
	get := func() string {
		t.Helper()
		resp, err := http.Get(base + "/config")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	if got := get(); !strings.Contains(got, "\nlog_level: info\n") {
		t.Fatalf("/config before the change:\n%s", got)
	}
	resp, err := http.Post(base+"/logging?level=debug", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := get(); !strings.Contains(got, "\nlog_level: debug\n") {
		t.Errorf("/config after POST /logging?level=debug:\n%s", got)
	}
}

// TestStatusShowsReloadedProtocol: a SIGHUP may change the protocol
// (reload.go passes the new configuration to setConfig), and /status, which
// `detour status` prints, must then say the protocol in force, not the one
// detour started with.
func TestStatusShowsReloadedProtocol(t *testing.T) {
	cfg := &config.Config{Admin: "127.0.0.1:0", Protocol: "auto"}
	if err := cfg.Finish(); err != nil {
		t.Fatal(err)
	}
	o, err := startObservability(cfg, new(slog.LevelVar), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(o.close)
	next := *cfg
	next.Protocol = "tcp"
	o.setConfig(&next)
	resp, err := http.Get("http://" + o.admin.Addr().String() + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st struct{ Protocol string }
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	if st.Protocol != "tcp" {
		t.Errorf("/status protocol after a reload to protocol tcp: %q", st.Protocol)
	}
}
