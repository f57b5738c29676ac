package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/detour-proxy/detour/internal/lab"
	"github.com/detour-proxy/detour/internal/ns"
)

// detourBin is the binary under test, built by TestMain.
var detourBin string

// ids makes namespace names unique across this package's parallel tests;
// the pid keeps them unique across packages and concurrent runs.
var ids atomic.Int64

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		fmt.Println("e2e: skipping all tests: they create network namespaces and need root (CI runs as root)")
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "detour-e2e-")
	if err != nil {
		panic(err)
	}
	detourBin, err = lab.BuildDetour(dir)
	if err != nil {
		fmt.Printf("e2e: %v\n", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root to create network namespaces (CI runs as root)")
	}
}

// newID returns an id for namespace names: "<tag><pid>-<n>". The whole
// pid and the separator keep two concurrent runs apart: with pid%1000 and
// no separator, pid 1012's third id and pid 2001's twenty-third were both
// "<tag>123".
func newID(tag string) string {
	return fmt.Sprintf("%s%d-%d", tag, os.Getpid(), ids.Add(1))
}

func tproxyNet(t *testing.T, tag string) *lab.TProxyNet {
	t.Helper()
	n, err := lab.NewTProxyNet(newID(tag))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

func redirectNet(t *testing.T, tag string) *lab.RedirectNet {
	t.Helper()
	n, err := lab.NewRedirectNet(newID(tag))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// startDetour runs `detour run ARGS` in n until the test ends; its output
// is logged when the test fails.
func startDetour(t *testing.T, n *ns.NS, args ...string) *lab.Detour {
	t.Helper()
	return startDetourBin(t, n, detourBin, args...)
}

// startDetourBin is startDetour with another binary: one that runs detour
// the way a test needs it run.
func startDetourBin(t *testing.T, n *ns.NS, bin string, args ...string) *lab.Detour {
	t.Helper()
	d, err := lab.StartDetour(context.Background(), n, bin, args, nil)
	if err != nil {
		t.Fatalf("start detour %v: %v", args, err)
	}
	t.Cleanup(func() {
		d.Stop()
		if t.Failed() {
			t.Logf("detour output:\n%s", d.Output())
		}
	})
	return d
}

// exitsClean waits up to within for d to exit by itself (after what),
// wants exit 0, and wants n's rules and routes as they were before it
// started.
func exitsClean(t *testing.T, d *lab.Detour, n *ns.NS, before string, within time.Duration, after string) {
	t.Helper()
	select {
	case <-d.Done():
	case <-time.After(within):
		t.Fatalf("detour still running %v after %s", within, after)
	}
	if err := d.Stop(); err != nil {
		t.Fatalf("exit status: %v", err)
	}
	if now := snapshot(t, n); now != before {
		t.Fatalf("rules left after %s:\n%s", after, now)
	}
}

// detourCmd runs the detour binary in n and returns its combined output.
func detourCmd(t *testing.T, n *ns.NS, args ...string) (string, error) {
	t.Helper()
	out, err := n.Command(context.Background(), detourBin, args...).CombinedOutput()
	return string(out), err
}

// snapshot captures the namespace's netfilter and routing state.
func snapshot(t *testing.T, n *ns.NS) string {
	t.Helper()
	var b strings.Builder
	for _, c := range [][]string{
		{"nft", "list", "ruleset"},
		{"ip", "rule"}, {"ip", "-6", "rule"},
		{"ip", "route", "show", "table", "all"}, {"ip", "-6", "route", "show", "table", "all"},
	} {
		out, err := n.Command(context.Background(), c[0], c[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v\n%s", c, err, out)
		}
		fmt.Fprintf(&b, "## %s\n", strings.Join(c, " "))
		for _, line := range strings.SplitAfter(string(out), "\n") {
			// The kernel adds IPv6 link-local routes on its own schedule
			// after a link comes up; detour never touches them.
			if !strings.Contains(line, "fe80::") {
				b.WriteString(line)
			}
		}
	}
	return b.String()
}

// configFile returns the path of a config file in a directory of the test's
// own, and a function that (re)writes it.
func configFile(t *testing.T) (path string, write func(body string)) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "detour.yaml")
	return path, func(body string) {
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// startHTTPBin serves httpbin on port 80 in n until the test ends.
func startHTTPBin(t *testing.T, n *ns.NS) *lab.HTTPBin {
	t.Helper()
	bin, err := lab.StartHTTPBin(n, 80)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bin.Close() })
	return bin
}
