package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestTCPLoopsFlag checks that --tcp-loops overrides the file's tcp.loops
// when given, 0 included, and that a bad number is a config error.
func TestTCPLoopsFlag(t *testing.T) {
	file := filepath.Join(t.TempDir(), "detour.yaml")
	if err := os.WriteFile(file, []byte("tcp: {loops: 2}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		args    []string
		want    int
		wantErr string
	}{
		{name: "file only", args: []string{"-c", file}, want: 2},
		{name: "flag overrides file", args: []string{"-c", file, "--tcp-loops", "1"}, want: 1},
		{name: "flag back to one per CPU", args: []string{"-c", file, "--tcp-loops", "0"}, want: 0},
		{name: "no file, no flag", args: nil, want: 0},
		{name: "negative", args: []string{"--tcp-loops", "-1"}, wantErr: "tcp.loops: -1"},
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
			if cfg.TCP.Loops != tt.want {
				t.Errorf("tcp.loops = %d, want %d", cfg.TCP.Loops, tt.want)
			}
		})
	}
}
