package sdnotify

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// listen opens the service manager's side: a unixgram socket at addr.
func listen(t *testing.T, addr string) *net.UnixConn {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func receive(t *testing.T, c *net.UnixConn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b := make([]byte, 4096)
	n, err := c.Read(b)
	if err != nil {
		t.Fatalf("no notification: %v", err)
	}
	return string(b[:n])
}

// TestSend: a message reaches the socket NOTIFY_SOCKET names, a path or
// an abstract name, as one datagram of newline-terminated fields.
func TestSend(t *testing.T) {
	for _, tc := range []struct{ name, addr string }{
		{"path", filepath.Join(t.TempDir(), "notify")},
		{"abstract", fmt.Sprintf("@detour-sdnotify-test-%d", os.Getpid())},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := listen(t, tc.addr)
			t.Setenv("NOTIFY_SOCKET", tc.addr)
			n, err := FromEnv()
			if err != nil {
				t.Fatal(err)
			}
			if !n.Enabled() {
				t.Fatalf("FromEnv with NOTIFY_SOCKET=%s: not enabled", tc.addr)
			}
			if err := n.Send(Ready, Status("serving:\ntproxy")); err != nil {
				t.Fatal(err)
			}
			if got, want := receive(t, srv), "READY=1\nSTATUS=serving: tproxy\n"; got != want {
				t.Errorf("got %q, want %q", got, want)
			}
			if err := n.Send(Stopping); err != nil {
				t.Fatal(err)
			}
			if got := receive(t, srv); got != "STOPPING=1\n" {
				t.Errorf("got %q, want %q", got, "STOPPING=1\n")
			}
		})
	}
}

// TestFromEnvUnsets: the variables are gone once read, so that a child
// process does not notify in detour's name; without NOTIFY_SOCKET every
// call does nothing and nothing is an error.
func TestFromEnvUnsets(t *testing.T) {
	for _, set := range []bool{true, false} {
		t.Run(fmt.Sprint("NOTIFY_SOCKET set: ", set), func(t *testing.T) {
			if set {
				t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "nobody-listens"))
			} else {
				t.Setenv("NOTIFY_SOCKET", "")
				os.Unsetenv("NOTIFY_SOCKET")
			}
			t.Setenv("WATCHDOG_USEC", "1000000")
			t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
			n, err := FromEnv()
			if err != nil {
				t.Fatal(err)
			}
			for _, k := range []string{"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} {
				if v, ok := os.LookupEnv(k); ok {
					t.Errorf("%s=%q still set after FromEnv", k, v)
				}
			}
			if n.Enabled() != set {
				t.Errorf("Enabled() = %v, want %v", n.Enabled(), set)
			}
			if !set {
				if err := n.Send(Ready); err != nil {
					t.Errorf("Send without NOTIFY_SOCKET: %v, want nil", err)
				}
				if d := n.WatchdogInterval(); d != 0 {
					t.Errorf("WatchdogInterval without NOTIFY_SOCKET: %v, want 0", d)
				}
			} else if d := n.WatchdogInterval(); d != 500*time.Millisecond {
				t.Errorf("WatchdogInterval: %v, want half of WATCHDOG_USEC", d)
			}
		})
	}
	var nilN *Notifier
	if err := nilN.Send(Ready); err != nil || nilN.Enabled() {
		t.Errorf("nil notifier: Send %v, Enabled %v; want nil, false", err, nilN.Enabled())
	}
}

func TestNewRejects(t *testing.T) {
	for _, addr := range []string{"relative/path", "@", "vsock:2:1234"} {
		n, err := New(addr)
		if err == nil || !strings.Contains(err.Error(), "NOTIFY_SOCKET") {
			t.Errorf("New(%q): %v, want an error naming NOTIFY_SOCKET", addr, err)
		}
		if n.Enabled() {
			t.Errorf("New(%q): enabled", addr)
		}
	}
}

func TestWatchdogInterval(t *testing.T) {
	for _, tc := range []struct {
		usec, pid string
		want      time.Duration
	}{
		{"", "", 0},
		{"3000000", "", 1500 * time.Millisecond},
		{"3000000", "42", 1500 * time.Millisecond}, // 42 is this process
		{"3000000", "43", 0},                       // another process is watched
		{"0", "", 0},
		{"-5", "", 0},
		{"soon", "", 0},
	} {
		if got := watchdogInterval(tc.usec, tc.pid, 42); got != tc.want {
			t.Errorf("WATCHDOG_USEC=%q WATCHDOG_PID=%q: %v, want %v", tc.usec, tc.pid, got, tc.want)
		}
	}
}

// TestMonotonicNow: the clock systemd compares MONOTONIC_USEC with is
// CLOCK_MONOTONIC, which Go's own monotonic readings do not expose; the
// value must lie between two readings of it, in microseconds.
func TestMonotonicNow(t *testing.T) {
	before := monotonicUsec()
	v, ok := strings.CutPrefix(MonotonicNow(), "MONOTONIC_USEC=")
	after := monotonicUsec()
	got, err := strconv.ParseUint(v, 10, 64)
	if !ok || err != nil || got < before || got > after || got == 0 {
		t.Fatalf("MonotonicNow() = %q, want MONOTONIC_USEC= between %d and %d", MonotonicNow(), before, after)
	}
	// Microseconds since boot, not nanoseconds or seconds: no more than
	// /proc/uptime (CLOCK_BOOTTIME, which also counts suspends), and more
	// than the second a test binary takes to come up after boot.
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		t.Fatal(err)
	}
	up, _ := strconv.ParseFloat(strings.Fields(string(b))[0], 64)
	if s := float64(got) / 1e6; s > up+5 || s < 1 {
		t.Errorf("MONOTONIC_USEC %d is %.0fs since boot; the uptime is %.0fs", got, s, up)
	}
}

func TestErrno(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want string
	}{
		{nil, ""},
		{errors.New("no number"), ""},
		{fmt.Errorf("listen: %w", &os.SyscallError{Syscall: "bind", Err: syscall.EADDRINUSE}), "ERRNO=98"},
		{syscall.Errno(0), ""},
	} {
		if got := Errno(tt.err); got != tt.want {
			t.Errorf("Errno(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}
}
