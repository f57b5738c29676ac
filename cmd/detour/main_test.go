package main

import (
	"strings"
	"testing"
)

// TestDispatchOtherToolsForms checks the forms users of other tools type
// first: `--version` for the version command, `help COMMAND` for its help.
func TestDispatchOtherToolsForms(t *testing.T) {
	tests := []struct {
		args      []string
		code      int
		stdoutHas string
	}{
		{[]string{"--version"}, exitOK, "detour "},
		{[]string{"-version"}, exitOK, "detour "},
		{[]string{"version"}, exitOK, "detour "},
		{[]string{"help", "run"}, exitOK, "Usage: detour run"},
		{[]string{"help", "rules"}, exitOK, "Usage: detour rules"},
		{[]string{"help"}, exitOK, "detour — "},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var out, errw strings.Builder
			code := dispatch(tt.args, &out, &errw)
			if code != tt.code || !strings.HasPrefix(out.String(), tt.stdoutHas) || errw.Len() != 0 {
				t.Errorf("exit %d, stdout %q, stderr %q; want exit %d, stdout starting %q", code, out.String(), errw.String(), tt.code, tt.stdoutHas)
			}
		})
	}
}
