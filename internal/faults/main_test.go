package faults

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/detour-proxy/detour/internal/lab"
	"github.com/detour-proxy/detour/internal/ns"
)

// detourBin is the binary under test, built by TestMain; buildDir holds it
// (and the race-enabled build of the soak test).
var detourBin, buildDir string

// ids makes namespace names unique across this package's tests; the pid
// keeps them unique across packages and runs.
var ids atomic.Int64

// testNofile is the descriptor limit this test process raises itself to:
// the 10,000-connection test holds both ends of every connection here.
const testNofile = 200_000

func TestMain(m *testing.M) {
	if port := os.Getenv(echoHelperEnv); port != "" {
		echoHelper(port) // a child process of TestTenThousandConnections
		return
	}
	if os.Geteuid() != 0 {
		fmt.Println("faults: skipping all tests: they create network namespaces and need root (CI runs as root)")
		os.Exit(m.Run())
	}
	lim := syscall.Rlimit{Cur: testNofile, Max: testNofile}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		fmt.Printf("faults: raising RLIMIT_NOFILE to %d: %v (the 10k-connection test may fail)\n", testNofile, err)
	}
	var err error
	buildDir, err = os.MkdirTemp("", "detour-faults-")
	if err != nil {
		panic(err)
	}
	if detourBin = os.Getenv("DETOUR_BIN"); detourBin == "" { // a prebuilt binary, when set
		detourBin, err = lab.BuildDetour(buildDir)
	}
	if err != nil {
		fmt.Printf("faults: %v\n", err)
		os.RemoveAll(buildDir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(buildDir)
	os.Exit(code)
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root to create network namespaces (CI runs as root)")
	}
}

// newID returns a unique lab id: "f<pid>n<n>" (the whole pid: with
// pid%1000, two concurrent runs whose pids differ by 1000 collided).
func newID() string {
	return fmt.Sprintf("f%dn%d", os.Getpid(), ids.Add(1))
}

// newLab builds a TPROXY lab (client → router → server) removed when the
// test ends.
func newLab(t *testing.T) *lab.TProxyNet {
	t.Helper()
	n, err := lab.NewTProxyNet(newID())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// run runs a command inside n and fails the test if it fails.
func run(t *testing.T, n *ns.NS, name string, args ...string) {
	t.Helper()
	out, err := n.Command(context.Background(), name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %s %s: %v\n%s", n.Name, name, strings.Join(args, " "), err, out)
	}
}

// dropSYNs makes the server namespace silently drop TCP segments to port:
// connects to it time out instead of being refused. Each segment's source
// port goes into the set synsrc first, so synAttempts can count the
// connects made to it. The table goes with the namespace.
func dropSYNs(t *testing.T, server *ns.NS, port int) {
	t.Helper()
	script := fmt.Sprintf(`table inet faults {
	set synsrc {
		type inet_service
		flags dynamic
	}
	chain in {
		type filter hook input priority 0; policy accept;
		tcp dport %d add @synsrc { tcp sport }
		tcp dport %d drop
	}
}
`, port, port)
	cmd := server.Command(context.Background(), "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		if _, lerr := exec.LookPath("nft"); lerr != nil {
			t.Skip("nft not installed (apt-get install nftables)")
		}
		t.Fatalf("nft in %s: %v\n%s", server.Name, err, out)
	}
}

// synAttempts is how many connects reached dropSYNs' port so far: the
// distinct source ports of the segments it dropped (a SYN retransmitted
// keeps its port, a new connect gets another).
func synAttempts(t *testing.T, server *ns.NS) int {
	t.Helper()
	out, err := server.Command(context.Background(), "nft", "list", "set", "inet", "faults", "synsrc").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list set in %s: %v\n%s", server.Name, err, out)
	}
	_, elems, ok := strings.Cut(string(out), "elements = {")
	if !ok {
		return 0
	}
	elems, _, _ = strings.Cut(elems, "}")
	return len(strings.Split(elems, ","))
}

// detourRun is a running detour with its full log.
type detourRun struct {
	*lab.Detour
	log *logRec
}

// runOpts are how to start detour beyond its arguments.
type runOpts struct {
	bin    string // default detourBin
	nofile int    // RLIMIT_NOFILE for detour (soft and hard); 0 keeps ours
}

// startDetour runs `detour run ARGS` on the router until the test ends.
func startDetour(t *testing.T, n *ns.NS, o runOpts, args ...string) *detourRun {
	t.Helper()
	bin := o.bin
	if bin == "" {
		bin = detourBin
	}
	if o.nofile > 0 {
		bin = limitWrapper(t, bin, o.nofile)
	}
	rec := &logRec{}
	d, err := lab.StartDetour(context.Background(), n, bin, args, rec)
	if err != nil {
		t.Fatalf("start detour %v: %v", args, err)
	}
	t.Cleanup(func() {
		if err := d.Stop(); err != nil {
			t.Errorf("stopping detour: %v", err)
		}
		if t.Failed() {
			t.Logf("detour log (last 300 lines):\n%s", rec.tail(300))
		}
	})
	return &detourRun{Detour: d, log: rec}
}

// limitWrapper writes a script that execs bin with RLIMIT_NOFILE set to
// n (soft and hard), through prlimit (util-linux) or the shell's ulimit.
// Every step execs in place, so the process id seen by the test is
// detour's own.
func limitWrapper(t *testing.T, bin string, n int) string {
	t.Helper()
	line := fmt.Sprintf("ulimit -n %d && exec %q \"$@\"", n, bin)
	if p, err := exec.LookPath("prlimit"); err == nil {
		line = fmt.Sprintf("exec %q --nofile=%d:%d -- %q \"$@\"", p, n, n, bin)
	}
	path := filepath.Join(t.TempDir(), "detour-nofile")
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+line+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// logRec keeps every line detour logged (lab.StartDetour writes it one
// line at a time), for counting and searching.
type logRec struct {
	mu    sync.Mutex
	lines []string
}

const maxLogLines = 1 << 20

func (l *logRec) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		if len(l.lines) < maxLogLines {
			l.lines = append(l.lines, s)
		}
	}
	return len(p), nil
}

// count is the number of lines containing every one of subs.
func (l *logRec) count(subs ...string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, s := range l.lines {
		if containsAll(s, subs) {
			n++
		}
	}
	return n
}

// find returns the lines containing every one of subs.
func (l *logRec) find(subs ...string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, s := range l.lines {
		if containsAll(s, subs) {
			out = append(out, s)
		}
	}
	return out
}

func (l *logRec) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.lines)
}

// since returns the lines logged after the first n.
func (l *logRec) since(n int) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines[min(n, len(l.lines)):]...)
}

func (l *logRec) tail(n int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines[max(0, len(l.lines)-n):], "\n")
}

func containsAll(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// waitLog waits until a line logged after mark contains every one of subs.
func (l *logRec) waitLog(t *testing.T, mark int, timeout time.Duration, subs ...string) string {
	t.Helper()
	var found string
	ok := waitUntil(timeout, func() bool {
		for _, s := range l.since(mark) {
			if containsAll(s, subs) {
				found = s
				return true
			}
		}
		return false
	})
	if !ok {
		t.Errorf("detour logged no line with %q within %v", subs, timeout)
	}
	return found
}

// waitUntil polls cond every 50ms until it holds or timeout passes.
func waitUntil(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// --- detour's resources, from /proc ---

// fds counts a process's open descriptors by kind.
type fds struct {
	pipes, other int
	kinds        map[string]int // socket, pipe, anon_inode, file
}

func (f fds) total() int { return f.pipes + f.other }

func (f fds) String() string { return fmt.Sprintf("%d fds %v", f.total(), f.kinds) }

// fdsOf reads pid's descriptors from /proc.
func fdsOf(t *testing.T, pid int) fds {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("reading detour's fds: %v", err)
	}
	f := fds{kinds: map[string]int{}}
	for _, e := range es {
		target, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		k := "file"
		if i := strings.Index(target, ":"); i > 0 && !strings.HasPrefix(target, "/") {
			k = target[:i]
		}
		f.kinds[k]++
		if k == "pipe" {
			f.pipes++
		} else {
			f.other++
		}
	}
	return f
}

// fdCount is the number of pid's open descriptors.
func fdCount(t *testing.T, pid int) int {
	t.Helper()
	es, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatalf("reading detour's fds: %v", err)
	}
	return len(es)
}

// waitFDs waits until pid's descriptors other than pipes are back to
// base, and its pipes within pipeSlack of base, and fails the test
// otherwise. Pipes get slack because Go's splice pools them: the pool
// grows to the peak number of concurrent splices and only garbage
// collections empty it.
func waitFDs(t *testing.T, pid int, base fds, pipeSlack int, timeout time.Duration, what string) fds {
	t.Helper()
	var now fds
	if !waitUntil(timeout, func() bool {
		now = fdsOf(t, pid)
		return now.other <= base.other && now.pipes <= base.pipes+pipeSlack
	}) {
		t.Errorf("%s: detour has %v after %v, baseline %v (pipes may exceed it by %d)", what, now, timeout, base, pipeSlack)
	}
	return now
}

// procStatus reads a "Key:  value kB" field of /proc/PID/status in KiB.
func procStatus(t *testing.T, pid int, key string) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("reading detour's status: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, key+":"); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				n, _ := strconv.Atoi(f[0])
				return n
			}
		}
	}
	t.Fatalf("no %s in /proc/%d/status", key, pid)
	return 0
}

// rssMiB is pid's resident set in MiB.
func rssMiB(t *testing.T, pid int) float64 {
	return float64(procStatus(t, pid, "VmRSS")) / 1024
}

// cpuTime is the CPU time pid has used, user plus system.
func cpuTime(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatalf("reading detour's stat: %v", err)
	}
	// Fields after the command name, which is in parentheses: state is
	// field 3, utime 14 and stime 15 (man 5 proc).
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	utime, _ := strconv.Atoi(f[11])
	stime, _ := strconv.Atoi(f[12])
	const clkTck = 100 // USER_HZ, 100 on every Linux architecture Go supports
	return time.Duration(utime+stime) * time.Second / clkTck
}

// --- clients ---

// dialTCP connects from n to dst:port.
func dialTCP(t *testing.T, n *ns.NS, dst netip.Addr, port int) *net.TCPConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := n.Dialer(nil)(ctx, "tcp", netip.AddrPortFrom(dst, uint16(port)).String())
	if err != nil {
		t.Fatalf("dial %s:%d: %v", dst, port, err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// hostPort formats dst:port for URLs and dials.
func hostPort(dst netip.Addr, port int) string {
	return netip.AddrPortFrom(dst, uint16(port)).String()
}

func bgCtx() context.Context { return context.Background() }

// sockets lists the TCP sockets in n (ss -tanpe), for failure messages.
func sockets(n *ns.NS) string {
	out, err := n.Command(bgCtx(), "ss", "-tanpe").CombinedOutput()
	if err != nil {
		return fmt.Sprintf("ss: %v\n%s", err, out)
	}
	return string(out)
}
