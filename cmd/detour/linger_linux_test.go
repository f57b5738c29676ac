package main

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/detour-proxy/detour/internal/fdtest"
)

// TestWarnNoLinger (its refused half in a process of its own: it installs
// a seccomp filter) checks that run warns, with the fix, when the kernel
// refuses the L4 loops' epoll_pwait2, and says nothing where it works.
// The run stops at a configuration error that comes after the warning
// (an access log in a directory that does not exist), before it opens a
// listener or installs a rule.
func TestWarnNoLinger(t *testing.T) {
	start := func() string {
		t.Helper()
		var stdout, stderr bytes.Buffer
		missing := filepath.Join(t.TempDir(), "no-such-dir", "access.log")
		if code := cmdRun([]string{"--admin", "off", "--mode", "redirect", "--listen", "127.0.0.1:1", "--access-log", missing}, &stdout, &stderr); code != exitUsage {
			t.Fatalf("exit %d, want %d (the access log's config error); stderr %q", code, exitUsage, stderr.String())
		}
		return stderr.String()
	}
	if out := start(); strings.Contains(out, "epoll_pwait2") {
		t.Fatalf("warned on a kernel with epoll_pwait2: %s", out)
	}
	if !fdtest.InOwnProcess(t) {
		return
	}
	fdtest.RefuseSyscall(t, unix.SYS_EPOLL_PWAIT2, unix.EPERM)
	out := start()
	for _, want := range []string{"the L4 loops cannot wait for answers", "epoll_pwait2: operation not permitted", "seccomp profile that allows epoll_pwait2"} {
		if !strings.Contains(out, want) {
			t.Errorf("the warning lacks %q: %s", want, out)
		}
	}
}
