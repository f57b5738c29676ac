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
	Rerun(t, ownProcessEnv)
	return false
}

// Rerun runs the calling top-level test alone in a fresh copy of the test
// binary, with env set to the test's name so that the copy knows it is
// one, started through prefix when given (`ip netns exec NAME`: in a
// namespace), and fails t unless the copy passed. What the copy printed
// goes to t's log.
func Rerun(t *testing.T, env string, prefix ...string) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	args := append(append([]string{}, prefix...), self, "-test.run=^"+regexp.QuoteMeta(t.Name())+"$", "-test.count=1", "-test.v")
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Env = append(os.Environ(), env+"="+t.Name())
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: "+t.Name()+" ") {
		t.Fatalf("%s in a copy of the test binary (%s): %v\n%s", t.Name(), strings.Join(prefix, " "), err, out)
	}
	t.Logf("in a copy of the test binary (%s):\n%s", strings.Join(prefix, " "), out)
}
