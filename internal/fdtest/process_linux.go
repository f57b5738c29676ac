package fdtest

import (
	"context"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// ownProcessEnv names the test a copy of the test binary runs alone.
const ownProcessEnv = "DETOUR_FDTEST_OWN_PROCESS"

// InOwnProcess runs the calling top-level test in a fresh copy of the
// test binary, with nothing else in it, and reports whether the caller is
// that copy (and should go on) rather than the parent (which should
// return). A test that fills the descriptor table needs this: in the
// package's process, what earlier tests left behind (a keep-alive
// connection whose peer went, a socket left to a finalizer) can close
// right after Exhaust filled the table, on a loaded machine, and the
// descriptor freed lets the very call the test wants to fail succeed.
func InOwnProcess(t *testing.T) bool {
	t.Helper()
	if os.Getenv(ownProcessEnv) == t.Name() {
		return true
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, self, "-test.run=^"+regexp.QuoteMeta(t.Name())+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), ownProcessEnv+"="+t.Name())
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: "+t.Name()+" ") {
		t.Fatalf("%s in its own process: %v\n%s", t.Name(), err, out)
	}
	t.Logf("in its own process:\n%s", out)
	return false
}
