package main

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
)

// TestRunConfigErrorsExit2: a start-up failure that a configured value
// causes exits 2 with the key and the fix, as the README's exit codes
// say, before a listener opens. An access log in a directory that does
// not exist exited 1, as a runtime failure.
func TestRunConfigErrorsExit2(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no-such-dir", "access.log")
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"--access-log", missing}, []string{"access_log (--access-log)", "no such file or directory", "or off"}},
		{[]string{"--access-log", t.TempDir()}, []string{"access_log (--access-log)", "is a directory"}},
	} {
		var stdout, stderr bytes.Buffer
		// A listener no test binds: the run must fail before it opens.
		args := append([]string{"--admin", "off", "--mode", "redirect", "--listen", "127.0.0.1:1"}, tc.args...)
		code := cmdRun(args, &stdout, &stderr)
		for _, w := range tc.want {
			if !strings.Contains(stderr.String(), w) {
				t.Errorf("%v: stderr %q lacks %q", tc.args, stderr.String(), w)
			}
		}
		if code != exitUsage {
			t.Errorf("%v: exit %d, want %d (a config error); stderr %q", tc.args, code, exitUsage, stderr.String())
		}
	}
}
