package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestLabUsageErrors: a bad argument or flag value is a usage error (exit
// 2) naming it, before the root check and before anything is made.
func TestLabUsageErrors(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"lab", "--id", "a b"}, `lab id "a b"`},
		{[]string{"lab", "--id", strings.Repeat("x", 41)}, "lab id"},
		{[]string{"lab", "tproxy", "--id", "a/b"}, `lab id "a/b"`},
		{[]string{"lab", "nowhere"}, `unexpected argument "nowhere"`},
		{[]string{"lab", "--bogus"}, "bogus"},
	} {
		var out, errw bytes.Buffer
		if code := dispatch(tt.args, &out, &errw); code != exitUsage || !strings.Contains(errw.String(), tt.want) {
			t.Errorf("%q: exit %d, stderr %q; want exit %d mentioning %q", tt.args, code, errw.String(), exitUsage, tt.want)
		}
	}
}
