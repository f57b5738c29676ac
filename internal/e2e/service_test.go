package e2e

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/detour-proxy/detour/internal/intercept"
	"github.com/detour-proxy/detour/internal/ns"
)

// notification is one datagram detour sent to NOTIFY_SOCKET, and what the
// namespace looked like the moment the test read it.
type notification struct {
	fields   map[string]string
	raw      string
	at       uint64 // CLOCK_MONOTONIC µs when it was read
	ready200 bool   // GET /ready answered 200 then
	table    bool   // detour's nft table was installed then
}

// TestSystemdNotify: under a service manager (NOTIFY_SOCKET set, as
// systemd sets it for Type=notify-reload), detour says READY=1 once it
// serves with its rules installed, RELOADING=1 with MONOTONIC_USEC and
// then READY=1 around a SIGHUP reload, WATCHDOG=1 while WATCHDOG_USEC asks
// for it, and STOPPING=1 when SIGTERM starts the drain, then exits 0 with
// its rules gone. The test plays systemd's part: it listens on the socket
// and looks at the namespace as each message arrives.
func TestSystemdNotify(t *testing.T) {
	needRoot(t)
	n := tproxyNet(t, "sdn")
	startServers(t, n.Server)
	before := snapshot(t, n.Router)

	srv := notifySocket(t)
	msgs := make(chan notification, 64)
	go receiveNotifications(srv, n.Router, msgs)

	// The child inherits the environment (this test is not parallel, so
	// no other test's detour sees it); the watchdog asks for a ping every
	// 200ms.
	t.Setenv("WATCHDOG_USEC", "400000")
	file, write := configFile(t)
	write("mode: tproxy\nprotocol: tcp\nintercept: {ports: [7002]}\n")
	d := startDetour(t, n.Router, "-c", file)

	// next returns the next message that is not a watchdog ping, and
	// counts the pings.
	pings := 0
	next := func(what string) notification {
		t.Helper()
		// One deadline for the wait: the pings, which keep coming, must
		// not restart it.
		deadline := time.After(20 * time.Second)
		for {
			select {
			case m := <-msgs:
				if m.fields["WATCHDOG"] == "1" && len(m.fields) == 1 {
					pings++
					continue
				}
				t.Logf("notification: %q", m.raw)
				if m.fields["STATUS"] == "" {
					t.Errorf("%s came without a STATUS= line: %q", what, m.raw)
				}
				return m
			case <-deadline:
				t.Fatalf("no %s notification within 20s; detour's output:\n%s", what, d.Output())
			}
		}
	}

	m := next("READY=1 at start")
	if m.fields["READY"] != "1" || !m.ready200 || !m.table {
		t.Fatalf("first notification %q (/ready 200: %v, rules installed: %v); want READY=1 once both are so", m.raw, m.ready200, m.table)
	}
	if want := "serving: tproxy, 2 listeners, rules installed (ports 7002)"; m.fields["STATUS"] != want {
		t.Errorf("STATUS=%q, want %q", m.fields["STATUS"], want)
	}

	write("mode: tproxy\nprotocol: tcp\nintercept: {ports: [7002, 7004], check_interval: 200ms}\n")
	hupAt := monotonicUsec()
	if err := syscall.Kill(d.Pid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	m = next("RELOADING=1")
	usec, err := strconv.ParseUint(m.fields["MONOTONIC_USEC"], 10, 64)
	if m.fields["RELOADING"] != "1" || err != nil || usec < hupAt || usec > m.at {
		t.Fatalf("after SIGHUP: %q; want RELOADING=1 with MONOTONIC_USEC between the SIGHUP (%d) and its arrival (%d)", m.raw, hupAt, m.at)
	}
	m = next("READY=1 after the reload")
	if m.fields["READY"] != "1" || !m.ready200 {
		t.Fatalf("after RELOADING=1: %q (/ready 200: %v), want READY=1", m.raw, m.ready200)
	}
	if want := "serving: tproxy, 2 listeners, rules installed (ports 7002,7004)"; m.fields["STATUS"] != want {
		t.Errorf("STATUS=%q after the reload, want %q", m.fields["STATUS"], want)
	}
	if got, _ := intercept.Show(intercept.Options{Mode: intercept.ModeTProxy, NetNSFd: n.Router.Fd()}); !strings.Contains(got, "7004") {
		t.Errorf("READY=1 came before the reload's rules were installed:\n%s", got)
	}
	// Pings come every 200ms while detour serves; one may not have come
	// yet on a fast run.
	for deadline := time.After(10 * time.Second); pings == 0; {
		select {
		case m := <-msgs:
			if m.fields["WATCHDOG"] != "1" || len(m.fields) != 1 {
				t.Fatalf("unexpected notification while serving: %q", m.raw)
			}
			pings++
		case <-deadline:
			t.Fatal("no WATCHDOG=1 within 10s with WATCHDOG_USEC=400000 set")
		}
	}

	// While the periodic check cannot put vanished rules back (a foreign
	// default route in table 100, put in place of detour's in one step,
	// makes the install fail), STATUS= says so, and says so no more once
	// it can.
	if out, err := n.Router.Command(context.Background(), "ip", "route", "replace", "unreachable", "default", "table", "100").CombinedOutput(); err != nil {
		t.Fatalf("ip route replace: %v\n%s", err, out)
	}
	m = next("STATUS= when the rules check fails")
	if st := m.fields["STATUS"]; len(m.fields) != 1 || !strings.HasPrefix(st, "serving: tproxy, 2 listeners, rules check failing, new connections may bypass detour: ") {
		t.Errorf("while the rules cannot be reinstalled: %q, want only a STATUS= saying the check fails", m.raw)
	}
	if out, err := n.Router.Command(context.Background(), "ip", "route", "del", "unreachable", "default", "table", "100").CombinedOutput(); err != nil {
		t.Fatalf("ip route del: %v\n%s", err, out)
	}
	m = next("STATUS= when the rules are back")
	if want := "serving: tproxy, 2 listeners, rules installed (ports 7002,7004)"; m.fields["STATUS"] != want || !m.table {
		t.Errorf("after the check put the rules back: %q (rules installed: %v), want STATUS=%s", m.raw, m.table, want)
	}

	if err := syscall.Kill(d.Pid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	m = next("STOPPING=1")
	if m.fields["STOPPING"] != "1" {
		t.Fatalf("after SIGTERM: %q, want STOPPING=1", m.raw)
	}
	exitsClean(t, d, n.Router, before, 30*time.Second, "SIGTERM")
	select {
	case m := <-msgs:
		if m.fields["WATCHDOG"] != "1" {
			t.Errorf("notification after STOPPING=1: %q", m.raw)
		}
	default:
	}
}

// TestSystemdNotifyFailedStart: a run that cannot start (its admin
// address is taken) tells the service manager why, with the error number,
// so that `systemctl status` shows it beside the exit status.
func TestSystemdNotifyFailedStart(t *testing.T) {
	needRoot(t)
	n := tproxyNet(t, "sdf")
	taken, err := n.Router.Listen("tcp", "127.0.0.1:9901")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	srv := notifySocket(t)

	out, code := detourExit(t, n.Router, "run", "--protocol", "tcp", "--intercept-port", "7002")
	if code == 0 {
		t.Fatalf("run with its admin address taken exited 0:\n%s", out)
	}
	// The datagram was queued before detour exited.
	srv.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4096)
	k, err := srv.Read(buf)
	if err != nil {
		t.Fatalf("no notification from a run that failed to start (%v); its output:\n%s", err, out)
	}
	fields := notificationFields(buf[:k])
	if st := fields["STATUS"]; !strings.HasPrefix(st, "failed to start: ") || !strings.Contains(st, "address already in use") || fields["ERRNO"] != strconv.Itoa(int(syscall.EADDRINUSE)) || fields["READY"] != "" {
		t.Errorf("notification %q; want STATUS=failed to start: … address already in use, ERRNO=%d, no READY=1", buf[:k], int(syscall.EADDRINUSE))
	}
}

// receiveNotifications reads datagrams until c is closed, and looks at
// the namespace the moment each arrives.
func receiveNotifications(c *net.UnixConn, n *ns.NS, out chan<- notification) {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: n.Dialer(nil), DisableKeepAlives: true}}
	buf := make([]byte, 4096)
	for {
		k, err := c.Read(buf)
		if err != nil {
			return
		}
		m := notification{raw: string(buf[:k]), at: monotonicUsec(), fields: notificationFields(buf[:k])}
		if m.fields["WATCHDOG"] != "1" {
			m.table, _ = intercept.Installed(intercept.Options{Mode: intercept.ModeTProxy, NetNSFd: n.Fd()})
			if resp, err := client.Get("http://127.0.0.1:9901/ready"); err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				m.ready200 = resp.StatusCode == 200
			}
		}
		out <- m
	}
}

// notificationFields splits a datagram's NAME=value lines.
func notificationFields(msg []byte) map[string]string {
	fields := map[string]string{}
	for _, line := range strings.Split(strings.TrimSuffix(string(msg), "\n"), "\n") {
		name, value, _ := strings.Cut(line, "=")
		fields[name] = value
	}
	return fields
}

func monotonicUsec() uint64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Sec)*1e6 + uint64(ts.Nsec)/1e3
}

// TestDetourReload: `detour reload`, the unit's ExecReload=, reloads the
// running detour and exits with the outcome, so that `systemctl reload`
// fails on a rejected file; a SIGHUP alone cannot tell systemd that. A
// good edit applies (exit 0); a syntax error, a bad value and a change to
// a restart-only key exit 2 naming the problem, and the previous
// configuration serves on. RELOADING=1 and READY=1 are sent before the
// command exits, so that systemd 259 and later, which runs ExecReload=
// before its own reload signal, sees the reload done and sends none. The
// command runs as the unit runs it: not root, with only CAP_NET_ADMIN.
func TestDetourReload(t *testing.T) {
	needRoot(t)
	asUnit := unitWrapper(t)
	n := tproxyNet(t, "drl")
	startServers(t, n.Server)
	srv := notifySocket(t)
	file, write := configFile(t)
	good := "mode: tproxy\nprotocol: tcp\nintercept: {ports: [7002, 7004]}\n"
	write("mode: tproxy\nprotocol: tcp\nintercept: {ports: [7002]}\n")
	d := startDetour(t, n.Router, "-c", file)
	queued(t, srv) // READY=1 at start
	whoami := func() string {
		c := dial(t, n.Client, n.ServerIP4, portWhoAmI)
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		b, _ := io.ReadAll(c)
		return string(b)
	}
	reload := func() (string, string, int) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := n.Router.Command(ctx, asUnit, "reload")
		var out, errw strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errw
		err := cmd.Run()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatalf("detour reload: %v", err)
		}
		return out.String(), errw.String(), cmd.ProcessState.ExitCode()
	}

	write(good)
	if out, errw, code := reload(); code != 0 || out != "configuration reloaded\n" || errw != "" {
		t.Fatalf("reload of a good edit: exit %d, stdout %q, stderr %q; want 0 and \"configuration reloaded\"\n%s", code, out, errw, d.Output())
	}
	if got := queued(t, srv); len(got) != 2 || got[0]["RELOADING"] != "1" || got[1]["READY"] != "1" ||
		got[1]["STATUS"] != "serving: tproxy, 2 listeners, rules installed (ports 7002,7004)" {
		t.Errorf("notifications queued when detour reload exited: %v; want RELOADING=1, then READY=1 with the new ports", got)
	}
	if got := whoami(); got != n.RouterIP4.String() {
		t.Fatalf("port %d after the reload: the server saw %q, want the router %s (intercepted)", portWhoAmI, got, n.RouterIP4)
	}

	for _, c := range []struct{ name, file, says string }{
		{"syntax error", "mode: tproxy\nprotocol: tcp\nintercept: {ports: [7002]\n", "config: line 2: did not find expected ',' or '}'"},
		{"invalid value", "mode: tproxy\nprotocol: tcp\nintercept: {ports: [7002, 70000]}\n", `intercept.ports: "70000" is not a port`},
		{"restart-only key", good + "tcp: {loops: 3}\n", "tcp.loops cannot change without a restart"},
	} {
		write(c.file)
		out, errw, code := reload()
		if code != 2 || out != "" || !strings.HasPrefix(errw, "detour reload: configuration rejected, the previous one serves on: ") || !strings.Contains(errw, c.says) {
			t.Errorf("%s: exit %d, stdout %q, stderr %q; want exit 2 and stderr saying %q", c.name, code, out, errw, c.says)
		}
		if got := queued(t, srv); len(got) != 2 || got[0]["RELOADING"] != "1" || got[1]["READY"] != "1" ||
			!strings.Contains(got[1]["STATUS"], "last reload rejected, previous configuration kept: ") {
			t.Errorf("%s: notifications %v; want RELOADING=1, then READY=1 saying the reload was rejected", c.name, got)
		}
		if got := whoami(); got != n.RouterIP4.String() {
			t.Errorf("%s: port %d after the rejected reload: the server saw %q, want the router (the previous configuration)", c.name, portWhoAmI, got)
		}
	}

	write("mode: tproxy\nprotocol: tcp\nintercept: {ports: [7002]}\n")
	if out, errw, code := reload(); code != 0 {
		t.Fatalf("reload after the rejected ones: exit %d, stdout %q, stderr %q; want 0", code, out, errw)
	}
	if got := whoami(); got != n.ClientIP4.String() {
		t.Errorf("port %d after a reload that dropped it: the server saw %q, want the client (not intercepted)", portWhoAmI, got)
	}
}

// queued returns the notifications waiting on c, without waiting for more.
func queued(t *testing.T, c *net.UnixConn) []map[string]string {
	t.Helper()
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var got []map[string]string
	buf := make([]byte, 4096)
	for {
		var k int
		var rerr error
		if err := raw.Control(func(fd uintptr) { k, _, rerr = unix.Recvfrom(int(fd), buf, unix.MSG_DONTWAIT) }); err != nil {
			t.Fatal(err)
		}
		if errors.Is(rerr, unix.EAGAIN) {
			return got
		}
		if rerr != nil {
			t.Fatal(rerr)
		}
		got = append(got, notificationFields(buf[:k]))
	}
}

// notifySocket stands in for systemd's notify socket: NOTIFY_SOCKET names
// it for every detour the test starts (the environment is the process's:
// such tests are not parallel), and it closes once they have stopped.
func notifySocket(t *testing.T) *net.UnixConn {
	sock := filepath.Join(t.TempDir(), "notify")
	srv, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	t.Setenv("NOTIFY_SOCKET", sock)
	return srv
}
