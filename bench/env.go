package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/detour-proxy/detour/internal/ns"
)

// tools the harness runs, with the Debian package that ships each.
var tools = []struct{ bin, pkg string }{
	{"ip", "iproute2"},
	{"ss", "iproute2"},
	{"nft", "nftables"},
	{"nginx", "nginx"},
	{"haproxy", "haproxy"},
	{"iperf3", "iperf3"},
	{"wrk", "wrk"},
}

// perfTool is needed only for -syscalls.
var perfTool = struct{ bin, pkg string }{"perf", "linux-perf"}

// missingError is returned when tools are missing and -install was not given.
type missingError struct{ cmd string }

func (e missingError) Error() string {
	return "missing tools; install them with:\n  " + e.cmd + "\n(or run the harness with -install)"
}

// checkTools finds every tool (and perf with withPerf), and installs the
// missing ones from Debian when install is set; otherwise it returns the
// command to run.
func checkTools(ctx context.Context, install, withPerf bool) error {
	list := tools
	if withPerf {
		list = append(list[:len(list):len(list)], perfTool)
	}
	var pkgs []string
	seen := map[string]bool{}
	for _, t := range list {
		if _, err := exec.LookPath(t.bin); err != nil && !seen[t.pkg] {
			seen[t.pkg] = true
			pkgs = append(pkgs, t.pkg)
		}
	}
	if len(pkgs) == 0 {
		return nil
	}
	cmd := "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y " + strings.Join(pkgs, " ")
	if !install {
		return missingError{cmd: cmd}
	}
	logf("installing missing tools: %s", cmd)
	c := exec.CommandContext(ctx, "sh", "-c", cmd)
	c.Stdout, c.Stderr = os.Stderr, os.Stderr
	if err := c.Run(); err != nil {
		return fmt.Errorf("%s: %w", cmd, err)
	}
	for _, t := range list {
		if _, err := exec.LookPath(t.bin); err != nil {
			return fmt.Errorf("%s still missing after installing %s", t.bin, t.pkg)
		}
	}
	// nginx's package starts a system-wide nginx on port 80 of the host;
	// the harness's own nginx runs in the server namespace and does not
	// care, but say so.
	logf("note: the Debian nginx/haproxy packages may have started host services; the harness does not use them")
	return nil
}

// raiseNoFile lifts RLIMIT_NOFILE so that the harness can hold the idle
// connections and the proxies it starts, which inherit the limit, can hold
// both sides of each. Root normally may raise the hard limit too; in a
// container without CAP_SYS_RESOURCE it can only raise the soft limit to
// the hard one. It returns the limit in force.
func raiseNoFile(want uint64) (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	if b, err := os.ReadFile("/proc/sys/fs/nr_open"); err == nil {
		if n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil && want > n {
			want = n
		}
	}
	if lim.Cur >= want {
		return lim.Cur, nil
	}
	// syscall.Setrlimit (not unix's) also makes os/exec pass the new limit
	// on to children instead of the one the process started with.
	var err error
	if lim.Max < want {
		if err = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: want, Max: want}); err == nil {
			return want, nil
		}
		err = fmt.Errorf("raise RLIMIT_NOFILE to %d: %w (hard limit %d; CAP_SYS_RESOURCE missing?)", want, err, lim.Max)
	}
	if serr := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: lim.Max, Max: lim.Max}); serr != nil {
		return lim.Cur, errors.Join(err, serr)
	}
	return min(lim.Max, want), err
}

// Machine describes where the benchmark ran.
type Machine struct {
	CPUs     int               `json:"cpus"`
	CPUModel string            `json:"cpu_model"`
	Kernel   string            `json:"kernel"`
	MemTotal string            `json:"mem_total"`
	Go       string            `json:"go"`
	Commit   string            `json:"commit"`
	Tools    map[string]string `json:"tools"`
}

func machineInfo(ctx context.Context, root string, detourBin string) Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version(), Tools: map[string]string{}}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		s := bufio.NewScanner(f)
		for s.Scan() {
			if k, v, ok := strings.Cut(s.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "MemTotal:") {
				m.MemTotal = strings.Join(strings.Fields(strings.TrimPrefix(l, "MemTotal:")), " ")
			}
		}
	}
	out := func(name string, args ...string) string {
		c := exec.CommandContext(ctx, name, args...)
		c.Dir = root
		b, _ := c.CombinedOutput()
		line, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
		return line
	}
	m.Commit = out("git", "describe", "--always", "--dirty", "--abbrev=12")
	m.Tools["nginx"] = out("nginx", "-v")
	m.Tools["haproxy"] = out("haproxy", "-v")
	m.Tools["iperf3"] = out("iperf3", "-v")
	m.Tools["wrk"] = out("wrk", "-v")
	m.Tools["detour"] = out(detourBin, "version")
	return m
}

// moduleRoot finds the directory of go.mod from the working directory up.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && bytes.Contains(b, []byte("module github.com/detour-proxy/detour")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("run the harness from inside the detour repository (no go.mod of github.com/detour-proxy/detour above %s)", dir)
		}
		dir = parent
	}
}

var verbose bool

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

func vlogf(format string, args ...any) {
	if verbose {
		logf(format, args...)
	}
}

// runIn runs a bounded command inside n and returns its combined output.
func runIn(ctx context.Context, n *ns.NS, timeout time.Duration, name string, args ...string) (string, error) {
	out, _, err := runInUsage(ctx, n, timeout, name, args...)
	return out, err
}

// runInUsage is runIn that also returns the command's resource usage (nil
// if it did not start): `ip netns exec` execs the command in place, so the
// usage is the command's own.
func runInUsage(ctx context.Context, n *ns.NS, timeout time.Duration, name string, args ...string) (string, *syscall.Rusage, error) {
	var buf bytes.Buffer
	usage, err := runCmd(ctx, n, timeout, &buf, &buf, name, args...)
	if err != nil {
		err = fmt.Errorf("%w\n%s", err, indent(buf.String()))
	}
	return buf.String(), usage, err
}

// runSplit is runIn with stdout and stderr kept apart (for JSON output).
func runSplit(ctx context.Context, n *ns.NS, timeout time.Duration, name string, args ...string) (stdout, stderr string, err error) {
	var o, e bytes.Buffer
	if _, err = runCmd(ctx, n, timeout, &o, &e, name, args...); err != nil {
		err = fmt.Errorf("%w\n%s", err, indent(e.String()+o.String()))
	}
	return o.String(), e.String(), err
}

// runCmd runs a bounded command inside n, its output going to stdout and
// stderr, and returns its resource usage (nil if it did not start); an
// error names the namespace and the command.
func runCmd(ctx context.Context, n *ns.NS, timeout time.Duration, stdout, stderr io.Writer, name string, args ...string) (*syscall.Rusage, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	vlogf("[%s] %s %s", n.Name, name, strings.Join(args, " "))
	c := n.Command(ctx, name, args...)
	c.Stdout, c.Stderr = stdout, stderr
	c.WaitDelay = 2 * time.Second
	err := c.Run()
	var usage *syscall.Rusage
	if c.ProcessState != nil {
		usage, _ = c.ProcessState.SysUsage().(*syscall.Rusage)
	}
	if err != nil {
		if ctx.Err() == context.DeadlineExceeded {
			err = fmt.Errorf("timed out after %s", timeout)
		}
		return usage, fmt.Errorf("[%s] %s %s: %w", n.Name, name, strings.Join(args, " "), err)
	}
	return usage, nil
}

func indent(s string) string {
	s = strings.TrimRight(s, "\n")
	if len(s) > 4000 {
		s = "…" + s[len(s)-4000:]
	}
	if s == "" {
		return "  (no output)"
	}
	return "  " + strings.ReplaceAll(s, "\n", "\n  ")
}

// daemon is a long-running process inside a namespace (nginx, iperf3 -s,
// haproxy, the splice proxy). `ip netns exec` execs the program in place,
// so Pid is the program's own pid. It gets SIGKILL if the harness dies, and
// runs in its own process group so that a Ctrl-C reaches only the harness,
// which stops everything in order.
type daemon struct {
	name string
	cmd  *exec.Cmd
	out  *tail
	done chan struct{}
	err  error
}

func startDaemon(n *ns.NS, name string, args ...string) (*daemon, error) {
	vlogf("[%s] start %s %s", n.Name, name, strings.Join(args, " "))
	cmd := n.Command(context.Background(), name, args...)
	d := &daemon{name: name, cmd: cmd, out: &tail{max: 1 << 20}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = d.out, d.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	waited, err := ns.StartPinned(cmd) // Pdeathsig only when this process dies
	if err != nil {
		return nil, fmt.Errorf("start %s in %s: %w", name, n.Name, err)
	}
	go func() {
		d.err = <-waited
		close(d.done)
	}()
	return d, nil
}

func (d *daemon) Pid() int { return d.cmd.Process.Pid }

// exited reports whether the process is gone, with its output.
func (d *daemon) exited() (bool, string) {
	select {
	case <-d.done:
		return true, fmt.Sprintf("%s exited (%v):\n%s", d.name, d.err, indent(d.out.String()))
	default:
		return false, ""
	}
}

// Stop sends SIGTERM and, after 5s, SIGKILL; it waits for the process.
func (d *daemon) Stop() error {
	if d == nil {
		return nil
	}
	select {
	case <-d.done:
		return nil
	default:
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
		return nil
	case <-time.After(5 * time.Second):
		d.cmd.Process.Kill()
		<-d.done
		return fmt.Errorf("%s (pid %d) ignored SIGTERM for 5s and was killed", d.name, d.Pid())
	}
}

// tail keeps the last max bytes written to it.
type tail struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append([]byte(nil), t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}

// waitListening polls `ss` inside n until something listens on port.
func waitListening(ctx context.Context, n *ns.NS, port int, d interface{ exited() (bool, string) }, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		out, err := runIn(ctx, n, 5*time.Second, "ss", "-Htln", fmt.Sprintf("sport = :%d", port))
		if err == nil && strings.TrimSpace(out) != "" {
			return nil
		}
		if d != nil {
			if gone, why := d.exited(); gone {
				return fmt.Errorf("nothing listens on port %d in %s: %s", port, n.Name, why)
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nothing listens on port %d in %s after %s", port, n.Name, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// procStat is what the harness reads about a proxy process.
type procStat struct {
	CPU   time.Duration // user + system time of all its threads
	RSS   int64         // bytes
	FDs   int
	Alive bool
}

// clkTck is USER_HZ, which is 100 on every Linux architecture Go supports.
const clkTck = 100

func readProc(pid int) procStat {
	var s procStat
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s
	}
	s.Alive = true
	// Fields after the command name, which is in parentheses and may
	// contain spaces: state is field 3, utime 14, stime 15.
	if i := bytes.LastIndexByte(b, ')'); i >= 0 {
		f := strings.Fields(string(b[i+1:]))
		if len(f) > 12 {
			ut, _ := strconv.ParseInt(f[11], 10, 64)
			st, _ := strconv.ParseInt(f[12], 10, 64)
			s.CPU = time.Duration(ut+st) * time.Second / clkTck
		}
	}
	s.RSS = readRSS(pid)
	if ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid)); err == nil {
		s.FDs = len(ents)
	}
	return s
}

// machineCPU is the whole machine's CPU time, in USER_HZ ticks summed
// over its CPUs: idle (idle and iowait) and busy (everything else, steal
// included). On a machine the load generator, the proxy and the server
// share, a proxy that costs the same per request but leaves the CPUs idle
// more often (its wake-ups come late) serves fewer requests: the two
// figures tell those apart. steal (part of busy) is the time the
// hypervisor ran something else while the VM wanted its CPUs: a round
// with much of it measured the neighbours as well as the proxy.
type machineCPU struct{ busy, idle, steal int64 }

func readMachineCPU() (machineCPU, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return machineCPU{}, err
	}
	return parseMachineCPU(b)
}

// parseMachineCPU reads /proc/stat's first line: "cpu user nice system
// idle iowait irq softirq steal guest guest_nice" (guest time is already
// counted in user and nice).
func parseMachineCPU(b []byte) (machineCPU, error) {
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 9 || f[0] != "cpu" {
		return machineCPU{}, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var v [8]int64
	for i := range v {
		n, err := strconv.ParseInt(f[1+i], 10, 64)
		if err != nil {
			return machineCPU{}, fmt.Errorf("/proc/stat: %w", err)
		}
		v[i] = n
	}
	idle := v[3] + v[4]
	return machineCPU{busy: v[0] + v[1] + v[2] + v[5] + v[6] + v[7], idle: idle, steal: v[7]}, nil
}

// since is the time spent between start and m.
func (m machineCPU) since(start machineCPU) machineCPU {
	return machineCPU{busy: m.busy - start.busy, idle: m.idle - start.idle, steal: m.steal - start.steal}
}

// readRSS returns VmRSS from /proc/PID/status in bytes (0 if unknown).
func readRSS(pid int) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	return parseVmRSS(f)
}

func parseVmRSS(r io.Reader) int64 {
	s := bufio.NewScanner(r)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "VmRSS:"); ok {
			f := strings.Fields(v) // "12345 kB"
			if len(f) >= 1 {
				n, _ := strconv.ParseInt(f[0], 10, 64)
				return n << 10
			}
		}
	}
	return 0
}

// rssSampler records the peak RSS of a process while a workload runs.
type rssSampler struct {
	stop chan struct{}
	done chan struct{}
	peak int64
}

func sampleRSS(pid int, every time.Duration) *rssSampler {
	s := &rssSampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			if r := readRSS(pid); r > s.peak {
				s.peak = r
			}
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *rssSampler) Stop() int64 {
	close(s.stop)
	<-s.done
	return s.peak
}

// foreign measures the CPU time of processes outside the lab (other work on
// the machine) while a workload runs: on a 2-CPU machine it competes with
// the load generator, the proxy and the server, so the report shows it.
type foreign struct {
	labNS map[string]bool // "net:[INODE]" of the lab's namespaces
	self  int
	start map[int]procCPU
}

type procCPU struct {
	comm  string
	ticks int64
}

func newForeign(nsPaths ...string) *foreign {
	f := &foreign{labNS: map[string]bool{}, self: os.Getpid()}
	for _, p := range nsPaths {
		if id := nsID(p); id != "" {
			f.labNS[id] = true
		}
	}
	f.start = f.snapshot()
	return f
}

func (f *foreign) snapshot() map[int]procCPU {
	out := map[int]procCPU{}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return out
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == f.self {
			continue
		}
		if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid)); err != nil || f.labNS[ns] {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		i, j := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
		if i < 0 || j < i {
			continue
		}
		fl := strings.Fields(string(b[j+1:]))
		if len(fl) <= 12 {
			continue
		}
		ut, _ := strconv.ParseInt(fl[11], 10, 64)
		st, _ := strconv.ParseInt(fl[12], 10, 64)
		out[pid] = procCPU{comm: string(b[i+1 : j]), ticks: ut + st}
	}
	return out
}

// done returns the CPU the other processes used since newForeign, as a
// fraction of one CPU over elapsed, and the busiest of them.
func (f *foreign) done(elapsed time.Duration) (frac float64, top string) {
	end := f.snapshot()
	var total, best int64
	for pid, e := range end {
		s, ok := f.start[pid]
		if !ok || s.comm != e.comm {
			continue // started during the sample: not counted
		}
		d := e.ticks - s.ticks
		total += d
		if d > best {
			best, top = d, e.comm
		}
	}
	if elapsed <= 0 {
		return 0, top
	}
	return (time.Duration(total) * time.Second / clkTck).Seconds() / elapsed.Seconds(), top
}

// tcpSegs is a namespace's TCP segment counters (/proc/net/snmp's Tcp
// InSegs and OutSegs). Per request, they show how a proxy packs its writes:
// a response relayed in two pieces costs the receiver a second wake-up,
// which the proxy's own CPU time does not show.
type tcpSegs struct{ in, out int64 }

// readTCPSegs reads n's counters (cat, so that /proc/net is n's).
func readTCPSegs(ctx context.Context, n *ns.NS) (tcpSegs, error) {
	out, err := runIn(ctx, n, 5*time.Second, "cat", "/proc/net/snmp")
	if err != nil {
		return tcpSegs{}, err
	}
	return parseTCPSegs(out)
}

// parseTCPSegs finds InSegs and OutSegs in /proc/net/snmp's pair of "Tcp:"
// lines: the first names the fields, the second holds their values.
func parseTCPSegs(snmp string) (tcpSegs, error) {
	var names []string
	for _, line := range strings.Split(snmp, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "Tcp:" {
			continue
		}
		if names == nil {
			names = f
			continue
		}
		var s tcpSegs
		var found int
		for i, name := range names {
			if i >= len(f) || (name != "InSegs" && name != "OutSegs") {
				continue
			}
			v, err := strconv.ParseInt(f[i], 10, 64)
			if err != nil {
				return tcpSegs{}, fmt.Errorf("/proc/net/snmp: %s: %w", name, err)
			}
			if name == "InSegs" {
				s.in = v
			} else {
				s.out = v
			}
			found++
		}
		if found != 2 {
			return tcpSegs{}, fmt.Errorf("/proc/net/snmp: no InSegs and OutSegs in %q", line)
		}
		return s, nil
	}
	return tcpSegs{}, fmt.Errorf("/proc/net/snmp: no Tcp lines")
}

// sleeps counts how many times the threads of pids went to sleep: their
// voluntary context switches, each a wait for an event (a preemption or a
// sched_yield is involuntary). Per request it counts wake-ups: a process
// that sleeps less per request handles more on each wake-up.
func sleeps(pids ...int) int64 {
	var n int64
	for _, pid := range pids {
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
		for _, t := range tasks {
			if b, err := os.ReadFile(t); err == nil {
				n += parseVoluntarySwitches(string(b))
			}
		}
	}
	return n
}

// parseVoluntarySwitches reads voluntary_ctxt_switches from a task's
// /proc status (0 if absent).
func parseVoluntarySwitches(status string) int64 {
	for _, line := range strings.Split(status, "\n") {
		if v, ok := strings.CutPrefix(line, "voluntary_ctxt_switches:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return 0
}

// pidsNamed returns the processes called comm in the network namespace
// nsPath (the server's nginx master and workers).
func pidsNamed(nsPath, comm string) []int {
	want := nsID(nsPath)
	if want == "" {
		return nil
	}
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid)); err != nil || ns != want {
			continue
		}
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err == nil && strings.TrimSpace(string(b)) == comm {
			pids = append(pids, pid)
		}
	}
	return pids
}

// nsID is how /proc/PID/ns/net names the namespace mounted at path
// ("net:[INODE]"), or "" if path is not there.
func nsID(path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		return ""
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return ""
	}
	return fmt.Sprintf("net:[%d]", st.Ino)
}
