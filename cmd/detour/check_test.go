package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCheckRejectsBadAccessLogFormat: `detour check -c` validates the
// file as run would, so an Envoy format string with an operator detour
// does not know is a config error (exit 2) that names it.
func TestCheckRejectsBadAccessLogFormat(t *testing.T) {
	path := filepath.Join(t.TempDir(), "detour.yaml")
	if err := os.WriteFile(path, []byte("access_log_format: '[%START_TIME%] %REQ(:PATH)% %UPSTREAM_PEER_SUBJECT%'\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if code := cmdCheck([]string{"-c", path}, &stdout, &stderr); code != exitUsage {
		t.Errorf("exit %d, want %d; stderr %q", code, exitUsage, stderr.String())
	}
	for _, w := range []string{"access_log_format", "unknown operator %UPSTREAM_PEER_SUBJECT%", "detour knows START_TIME"} {
		if !strings.Contains(stderr.String(), w) {
			t.Errorf("stderr %q lacks %q", stderr.String(), w)
		}
	}
}
