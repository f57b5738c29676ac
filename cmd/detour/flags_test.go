package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/detour-proxy/detour/internal/config"
)

// TestIntFlagsOverrideFile checks that --tcp-loops and --nice override the
// file's tcp.loops and nice when given, 0 included, and that a bad number
// is a config error.
func TestIntFlagsOverrideFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "detour.yaml")
	if err := os.WriteFile(file, []byte("tcp: {loops: 2}\nnice: 3\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	loops := func(c *config.Config) int { return c.TCP.Loops }
	niceness := func(c *config.Config) int { return c.Nice }
	tests := []struct {
		name    string
		args    []string
		get     func(*config.Config) int
		want    int
		wantErr string
	}{
		{name: "loops: file only", args: []string{"-c", file}, get: loops, want: 2},
		{name: "loops: flag overrides file", args: []string{"-c", file, "--tcp-loops", "1"}, get: loops, want: 1},
		{name: "loops: flag back to one per CPU", args: []string{"-c", file, "--tcp-loops", "0"}, get: loops, want: 0},
		{name: "loops: no file, no flag", args: nil, get: loops, want: 0},
		{name: "loops: negative", args: []string{"--tcp-loops", "-1"}, wantErr: "tcp.loops: -1"},
		{name: "nice: file only", args: []string{"-c", file}, get: niceness, want: 3},
		{name: "nice: flag overrides file", args: []string{"-c", file, "--nice", "-4"}, get: niceness, want: -4},
		{name: "nice: flag back to as started", args: []string{"-c", file, "--nice", "0"}, get: niceness, want: 0},
		{name: "nice: out of range", args: []string{"--nice", "30"}, wantErr: "nice: 30: want -20"},
		// iptables' --uid-owner takes names; detour says how to get the number.
		{name: "exclude-uid: a user name", args: []string{"--mode", "redirect", "--exclude-uid", "www-data"}, wantErr: "is not a uid: give the number (id -u www-data)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newConfigFlags("run", io.Discard, true)
			if err := f.fs.Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			cfg, err := f.load()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("load: %v, want an error with %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := tt.get(cfg); got != tt.want {
				t.Errorf("got %d, want %d", got, tt.want)
			}
		})
	}
}
