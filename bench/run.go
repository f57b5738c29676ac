package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/detour-proxy/detour/internal/lab"
)

// bench is one run of the harness.
type bench struct {
	o         options
	root      string // the repository
	tmp       string // configs and logs
	detourBin string
	selfBin   string // this program, for the splice proxy
	tn        *lab.TProxyNet
	ng        *nginx
	nofile    int // RLIMIT_NOFILE in force, inherited by every process started
	warnedL4  bool
}

// Sample is one workload run against one config in one round.
type Sample struct {
	Round    int                `json:"round"`
	Config   string             `json:"config"`
	Workload string             `json:"workload"`
	Metrics  map[string]float64 `json:"metrics"`
	Checks   []string           `json:"checks,omitempty"` // what proved the traffic took the intended path
	Notes    []string           `json:"notes,omitempty"`
	Error    string             `json:"error,omitempty"` // set: the sample is not used
	Seconds  float64            `json:"seconds"`
}

// Probe is what nginx saw of a probe request sent through a config.
type Probe struct {
	Round    int         `json:"round"`
	Config   string      `json:"config"`
	Workload string      `json:"workload"` // the probe ran right before it
	Seen     probeResult `json:"seen"`
	Want     netip.Addr  `json:"want_peer"`
	L7       bool        `json:"l7"` // an X-Forwarded-For header arrived: the request was proxied at L7
	Error    string      `json:"error,omitempty"`
}

// Results is the whole run; it is also the JSON output.
type Results struct {
	Date     string  `json:"date"`
	Command  string  `json:"command"`
	Machine  Machine `json:"machine"`
	Rounds   int     `json:"rounds"`
	Duration string  `json:"duration"`
	// DurationSec is Duration in seconds.
	DurationSec float64  `json:"duration_s"`
	IdleConns   int      `json:"idle_conns"`
	NoFile      int      `json:"rlimit_nofile"`
	Configs     []string `json:"configs"`
	Workloads   []string `json:"workloads"`
	Setup       Setup    `json:"setup"`
	Probes      []Probe  `json:"probes"`
	Samples     []Sample `json:"samples"`
	// Remeasured are samples taken again because the hypervisor took more
	// than -max-steal of the CPUs' time during them; not in the medians.
	Remeasured []Sample `json:"remeasured,omitempty"`
	// Medians[config][workload][metric] over the rounds' valid samples.
	Medians  map[string]map[string]map[string]float64 `json:"medians"`
	Rows     []Row                                    `json:"rows"`
	Targets  []Target                                 `json:"targets"`
	Failures []string                                 `json:"failures,omitempty"`
	Partial  bool                                     `json:"partial,omitempty"` // interrupted
}

// Setup records how the servers and proxies were configured.
type Setup struct {
	NginxWorkers  string   `json:"nginx_workers"`
	HAProxySplice bool     `json:"haproxy_splice"`
	RPS           bool     `json:"rps,omitempty"`
	HAProxyConfig string   `json:"haproxy_config_tcp"`
	DetourArgs    []string `json:"detour_args"`
}

func run(ctx context.Context, o options, argv []string) (res *Results, err error) {
	verbose = o.verbose
	if os.Geteuid() != 0 {
		return nil, errors.New("the harness creates network namespaces and needs root: sudo make bench (or sudo go run ./bench)")
	}
	if err := checkTools(ctx, o.install, o.syscalls); err != nil {
		return nil, err
	}
	b := &bench{o: o}
	lim, err := raiseNoFile(200000)
	if err != nil {
		logf("note: %v; the open-file limit is %d", err, lim)
	}
	b.nofile = int(lim)
	// A proxy holds two descriptors per idle connection (client and
	// upstream) plus a few of its own.
	if most := (b.nofile - 100) / 2; o.idleConns > most {
		logf("note: the open-file limit %d lets a proxy hold at most %d idle connections; using %d instead of %d (memory at 10,000 is extrapolated)",
			b.nofile, most, most, o.idleConns)
		b.o.idleConns = most
	}
	err = nil
	if b.root, err = moduleRoot(); err != nil {
		return nil, err
	}
	if b.tmp, err = os.MkdirTemp("", "detour-bench-"); err != nil {
		return nil, err
	}
	os.Chmod(b.tmp, 0o755)
	if o.keepTmp {
		defer logf("kept %s (configs and logs)", b.tmp)
	} else {
		defer os.RemoveAll(b.tmp)
	}
	if b.selfBin, err = os.Executable(); err != nil {
		return nil, err
	}
	b.detourBin = o.detourBin
	if b.detourBin == "" {
		b.detourBin = filepath.Join(b.tmp, "detour")
		logf("building detour: go build -o %s ./cmd/detour", b.detourBin)
		c := exec.CommandContext(ctx, "go", "build", "-o", b.detourBin, "./cmd/detour")
		c.Dir = b.root
		if out, err := c.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("go build ./cmd/detour: %w\n%s", err, indent(string(out)))
		}
	}
	warnStale()

	res = &Results{
		Date:        time.Now().UTC().Format("2006-01-02 15:04 UTC"),
		Command:     commandLine(argv),
		Machine:     machineInfo(ctx, b.root, b.detourBin),
		Rounds:      o.rounds,
		Duration:    o.duration.String(),
		DurationSec: o.duration.Seconds(),
		IdleConns:   b.o.idleConns,
		NoFile:      b.nofile,
		Configs:     o.configs,
		Workloads:   o.workloads,
		Setup: Setup{
			NginxWorkers:  o.nginxWorkers,
			HAProxySplice: o.haproxySplic,
			RPS:           o.rps,
			HAProxyConfig: haproxyConfig("tcp", haproxyPort, o.haproxySplic, b.nofile),
			DetourArgs:    append(ruleArgs(detourPort, "to-cli"), detourExtraArgs("tcp|http")...),
		},
	}
	defer func() { res.summarize() }()

	logf("lab: every measurement runs in a fresh lab: namespaces dt-%s-cli, dt-%s-rtr, dt-%s-srv", o.id, o.id, o.id)
	total := time.Now()
	for r := 1; r <= o.rounds; r++ {
		order := rotate(o.configs, r-1)
		logf("round %d/%d: %s", r, o.rounds, strings.Join(order, " → "))
		for _, name := range order {
			if err := ctx.Err(); err != nil {
				res.Partial = true
				return res, err
			}
			if err := b.runConfig(ctx, res, r, specOf(name)); err != nil {
				if ctx.Err() != nil {
					res.Partial = true
					return res, ctx.Err()
				}
				return res, err
			}
		}
	}
	logf("all rounds done in %s", time.Since(total).Round(time.Second))
	return res, nil
}

// runConfig runs the selected workloads against one config. Each workload
// gets a fresh lab (namespaces and nginx) and a freshly started proxy, so
// no state carries over from one measurement to the next: not the sockets
// one workload leaves in TIME_WAIT (see README.md), not a proxy's grown
// heap or pools. It returns an error only for what stops the whole run; a
// failed measurement is recorded.
func (b *bench) runConfig(ctx context.Context, res *Results, round int, spec configSpec) error {
	for _, wname := range b.o.workloads {
		var w workloadSpec
		for _, ws := range workloadSpecs {
			if ws.Name == wname {
				w = ws
			}
		}
		if w.ProxyOnly && !spec.Proxy {
			continue
		}
		if w.Stream && spec.L7 {
			continue // an HTTP proxy cannot carry iperf3
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		for attempt := 0; ; attempt++ {
			again, err := b.runOne(ctx, res, round, spec, w, attempt < b.o.stealRetries)
			if err != nil {
				return err
			}
			if !again {
				break
			}
		}
	}
	return nil
}

// runOne builds the lab, starts the config, probes it, measures one
// workload and tears everything down. With mayRetry, a sample during which
// the hypervisor took more than -max-steal of the CPUs' time goes to
// res.Remeasured instead, and again says to measure it once more: on a
// shared VM such a round measures the neighbours, not the proxy.
func (b *bench) runOne(ctx context.Context, res *Results, round int, spec configSpec, w workloadSpec, mayRetry bool) (again bool, err error) {
	fail := func(msg string) {
		msg = fmt.Sprintf("round %d %s %s: %s", round, spec.Name, w.Name, msg)
		res.Failures = append(res.Failures, msg)
		logf("  FAIL %s", msg)
	}
	down, err := b.labUp(ctx)
	if err != nil {
		return false, err
	}
	defer func() { err = errors.Join(err, down()) }()
	if err := b.checkNoRules(ctx); err != nil {
		return false, fmt.Errorf("before %s: %w", spec.Name, err)
	}
	p, err := b.startConfig(ctx, spec, round)
	if err != nil {
		return false, fmt.Errorf("start %s: %w", spec.Name, err)
	}
	stopped := false
	stop := func() error {
		if stopped || p == nil {
			return nil
		}
		stopped = true
		return p.Stop()
	}
	defer stop()

	want := b.tn.RouterIP4
	if !spec.Proxy {
		want = b.tn.ClientIP4
	}
	pr := Probe{Round: round, Config: spec.Name, Workload: w.Name, Want: want}
	seen, err := b.ng.probe(b.tn.Client, b.tn.ServerIP4, fmt.Sprintf("%s-%s-r%d-%d", spec.Name, w.Name, round, time.Now().UnixNano()))
	pr.Seen = seen
	pr.L7 = strings.Contains(seen.XFF, b.tn.ClientIP4.String())
	switch {
	case err != nil:
		pr.Error = err.Error()
	case seen.Peer != want:
		pr.Error = fmt.Sprintf("nginx saw the probe from %s, want %s", seen.Peer, want)
	case spec.Name == "haproxy-http" && !pr.L7:
		pr.Error = "HAProxy http mode added no X-Forwarded-For: it did not proxy at L7"
	case spec.Protocol == "auto" && !pr.L7:
		pr.Error = "detour --protocol auto added no X-Forwarded-For: it did not detect the HTTP request"
	case !spec.httpAtL7() && seen.XFF != "":
		pr.Error = fmt.Sprintf("an L4 path added X-Forwarded-For %q", seen.XFF)
	}
	res.Probes = append(res.Probes, pr)
	if pr.Error != "" {
		fail("probe: " + pr.Error)
		return false, nil
	}
	if spec.Protocol == "http" && !pr.L7 && !b.warnedL4 {
		b.warnedL4 = true
		logf("  WARNING: no X-Forwarded-For through detour --protocol http: this build forwarded it at L4")
	}

	s := b.measure(ctx, round, spec, w, p, want)
	s.Checks = append([]string{"probe seen from " + seen.Peer.String()}, s.Checks...)
	again = mayRetry && tooMuchSteal(s, b.o.maxSteal) // only a valid sample
	if again {
		s.Notes = append(s.Notes, fmt.Sprintf("measured again: the hypervisor took %.0f%% of the CPUs' time (-max-steal %g)", s.Metrics[mStealCPU], b.o.maxSteal))
		res.Remeasured = append(res.Remeasured, s)
	} else {
		res.Samples = append(res.Samples, s)
	}
	if s.Error != "" {
		msg := s.Error
		if len(s.Notes) > 0 {
			msg += " (" + strings.Join(s.Notes, "; ") + ")"
		}
		fail(msg)
	} else {
		logf("  %-12s %-9s %s", spec.Name, w.Name, s.summary())
	}
	if p != nil {
		if st := readProc(p.Pid()); !st.Alive {
			return false, fmt.Errorf("%s died during %s", spec.Name, w.Name)
		}
	}
	if err := stop(); err != nil {
		fail("stop: " + err.Error())
	}
	return again, nil
}

// tooMuchSteal says whether the hypervisor took more than max percent of
// the CPUs' time during s, a valid sample of a workload whose figure is a
// rate (a resident size does not depend on it). max 0 turns it off.
func tooMuchSteal(s Sample, max float64) bool {
	return max > 0 && s.Error == "" && s.Workload != "idle" && s.Metrics[mStealCPU] > max
}

// waitQuiet waits, up to -quiet-wait, until processes outside the lab use
// less than -quiet-cpu over one second: on a small shared machine they
// compete with the load generator, the proxy and the server.
func (b *bench) waitQuiet(ctx context.Context) (waited time.Duration, load float64, top string) {
	if b.o.quietWait <= 0 {
		return 0, 0, ""
	}
	start := time.Now()
	logged := false
	for {
		f := newForeign(b.tn.Client.Path(), b.tn.Router.Path(), b.tn.Server.Path())
		t0 := time.Now()
		sleepCtx(ctx, time.Second)
		load, top = f.done(time.Since(t0))
		if load < b.o.quietMax || ctx.Err() != nil {
			if logged {
				logf("    quiet after %s", time.Since(start).Round(time.Second))
			}
			return time.Since(start) - time.Since(t0), load, top
		}
		if time.Since(start) >= b.o.quietWait {
			logf("    still busy after %s (%.0f%% of a CPU, busiest %s): measuring anyway", b.o.quietWait, load*100, top)
			return time.Since(start), load, top
		}
		if !logged {
			logf("    waiting for other processes to quiet down (%.0f%% of a CPU, busiest %s)", load*100, top)
			logged = true
		}
	}
}

// labUp builds the lab and starts nginx in the server namespace. Each
// config gets a fresh one: sockets that one config leaves in TIME_WAIT in
// the router (up to 60 s) would otherwise slow the next one's connects,
// which collide with them (see README.md, "TIME_WAIT").
func (b *bench) labUp(ctx context.Context) (down func() error, err error) {
	t0 := time.Now()
	tn, err := lab.NewTProxyNet(b.o.id)
	if err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	b.tn = tn
	if b.o.rps {
		if err := tn.SteerFlows(ctx); err != nil {
			tn.Close()
			return nil, err
		}
	}
	if r := b.o.clientPorts; r != "" {
		if err := tn.Client.Sysctl("net.ipv4.ip_local_port_range", strings.Replace(r, "-", " ", 1)); err != nil {
			tn.Close()
			return nil, fmt.Errorf("lab: client port range: %w", err)
		}
	}
	ng, err := startNginx(ctx, tn.Server, filepath.Join(b.tmp, "nginx"), b.o.nginxWorkers, b.nofile)
	if err != nil {
		tn.Close()
		return nil, err
	}
	b.ng = ng
	vlogf("lab up in %s", time.Since(t0).Round(time.Millisecond))
	return func() error {
		err := ng.Stop()
		if cerr := tn.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
		b.tn, b.ng = nil, nil
		return err
	}, nil
}

// measure runs one workload and checks that the proxy (if any) carried it:
// its CPU time must have grown by at least 1% of the run's length (a
// backstop: the probe and iperf3's server check the path itself; under
// heavy load from other processes a proxy may get little CPU).
func (b *bench) measure(ctx context.Context, round int, spec configSpec, w workloadSpec, p proxyProc, want netip.Addr) Sample {
	s := Sample{Round: round, Config: spec.Name, Workload: w.Name, Metrics: map[string]float64{}}
	if waited, load, top := b.waitQuiet(ctx); waited >= time.Second {
		s.Notes = append(s.Notes, fmt.Sprintf("waited %s for other processes to quiet down (last: %.0f%% of a CPU, %s)", waited.Round(time.Second), load*100, top))
	}
	start := time.Now()
	var st0 procStat
	var rs *rssSampler
	if p != nil {
		st0 = readProc(p.Pid())
		s.Metrics[mRSSStart] = mib(st0.RSS)
		rs = sampleRSS(p.Pid(), 100*time.Millisecond)
	}
	fg := newForeign(b.tn.Client.Path(), b.tn.Router.Path(), b.tn.Server.Path())
	mc0, mcErr := readMachineCPU()
	cs0, csErr := readTCPSegs(ctx, b.tn.Client)
	nginxPids := pidsNamed(b.tn.Server.Path(), "nginx")
	srvSleeps0 := sleeps(nginxPids...)
	var prxSleeps0 int64
	if p != nil {
		prxSleeps0 = sleeps(p.Pid())
	}
	ss0, ssErr := readTCPSegs(ctx, b.tn.Server)
	waitProfile := func() {}
	if b.profiling(spec.Name) && w.Name != "idle" {
		waitProfile = b.cpuProfile(ctx, &s)
	}
	var sc *syscallCount
	if b.o.syscalls && p != nil && (w.Name == "keepalive" || w.Name == "close") {
		var err error
		if sc, err = countSyscalls(p.Pid()); err != nil {
			s.Notes = append(s.Notes, err.Error())
		}
	}
	var err error
	switch w.Name {
	case "keepalive":
		err = b.runWrk(ctx, &s, false)
	case "close":
		err = b.runWrk(ctx, &s, true)
	case "iperf1":
		err = b.runIperf(ctx, &s, 1, want.String())
	case "iperf4":
		err = b.runIperf(ctx, &s, 4, want.String())
	case "idle":
		err = b.runIdle(ctx, &s, p)
	default:
		err = fmt.Errorf("unknown workload %q", w.Name)
	}
	waitProfile()
	var calls, eagain float64
	if sc != nil {
		var serr error
		if calls, eagain, serr = sc.stop(); serr != nil {
			s.Notes = append(s.Notes, serr.Error())
			sc = nil // nothing counted
		}
	}
	s.Seconds = time.Since(start).Seconds()
	// Requests or connections served: what CPU per request divides by.
	served := (s.Metrics[mReqPerSec] + s.Metrics[mConnPerSec]) * b.o.duration.Seconds()
	if mc1, err := readMachineCPU(); err == nil && mcErr == nil {
		d := mc1.since(mc0)
		if total := d.busy + d.idle; total > 0 {
			s.Metrics[mIdleCPU] = 100 * float64(d.idle) / float64(total)
			s.Metrics[mStealCPU] = 100 * float64(d.steal) / float64(total)
		}
		if served > 0 {
			s.Metrics[mBusyPerReq] = float64(d.busy) / clkTck * 1e6 / served
		}
		// A stream's cost per byte: with it, what both CPUs could carry.
		if gb := s.Metrics[mGbps] * b.o.duration.Seconds() / 8; gb > 0 {
			s.Metrics[mBusyPerGB] = float64(d.busy) / clkTck * 1e3 / gb
		}
	}
	// How the work was packed: segments and wake-ups per request.
	if served > 0 {
		s.Metrics[mSrvSleeps] = float64(sleeps(nginxPids...)-srvSleeps0) / served
		if p != nil {
			s.Metrics[mPrxSleeps] = float64(sleeps(p.Pid())-prxSleeps0) / served
		}
		cs1, err1 := readTCPSegs(ctx, b.tn.Client)
		ss1, err2 := readTCPSegs(ctx, b.tn.Server)
		if errors.Join(csErr, ssErr, err1, err2) == nil {
			s.Metrics[mClientSegs] = float64(cs1.in-cs0.in) / served
			s.Metrics[mServerSegs] = float64(ss1.in-ss0.in) / served
		}
	}
	frac, top := fg.done(time.Since(start))
	s.Metrics[mForeign] = frac * 100
	if frac > 0.10 {
		s.Notes = append(s.Notes, fmt.Sprintf("other processes used %.0f%% of a CPU (busiest: %s)", frac*100, top))
	}
	if p != nil {
		s.Metrics[mRSSPeak] = mib(rs.Stop())
		s.Metrics[mRSSGrowth] = s.Metrics[mRSSPeak] - s.Metrics[mRSSStart]
		st1 := readProc(p.Pid())
		cpu := (st1.CPU - st0.CPU).Seconds()
		s.Metrics[mCPU] = cpu
		if served > 0 {
			s.Metrics[mCPUPerReq] = cpu * 1e6 / served
			if sc != nil {
				s.Metrics[mSyscalls] = calls / served
				s.Metrics[mEagain] = eagain / served
			}
		}
		minCPU := 0.01 * b.o.duration.Seconds()
		if w.Name == "idle" {
			minCPU = 0.01
		}
		if err == nil && cpu < minCPU {
			err = fmt.Errorf("the proxy used %.3fs of CPU, less than %.3fs: the traffic did not go through it", cpu, minCPU)
		}
		if err == nil {
			s.Checks = append(s.Checks, fmt.Sprintf("proxy used %.2fs CPU", cpu))
		}
	}
	if err != nil {
		s.Error = err.Error()
	}
	return s
}

func (s Sample) summary() string {
	m := s.Metrics
	var out string
	switch s.Workload {
	case "keepalive":
		out = fmt.Sprintf("%9.0f req/s  p50 %.2f ms  p99 %.2f ms", m[mReqPerSec], m[mP50], m[mP99])
	case "close":
		out = fmt.Sprintf("%9.0f conn/s p50 %.2f ms  p99 %.2f ms", m[mConnPerSec], m[mP50], m[mP99])
	case "iperf1", "iperf4":
		out = fmt.Sprintf("%9.2f Gbit/s (retransmits %.0f)", m[mGbps], m[mRetrans])
	case "idle":
		out = fmt.Sprintf("%9.1f MiB RSS with %.0f idle conns (%.1f MiB before)", m[mIdleRSS], m[mIdleConns], m[mIdleBase])
	}
	if v, ok := m[mCPU]; ok {
		out += fmt.Sprintf("  [proxy cpu %.2fs, rss %.1f→%.1f MiB]", v, m[mRSSStart], m[mRSSPeak])
	}
	if v := m[mStealCPU]; v >= 1 {
		out += fmt.Sprintf("  [steal %.0f%%]", v)
	}
	if len(s.Notes) > 0 {
		out += "  (" + strings.Join(s.Notes, "; ") + ")"
	}
	return out
}

func rotate(s []string, k int) []string {
	if len(s) == 0 {
		return nil
	}
	k %= len(s)
	return append(append([]string(nil), s[k:]...), s[:k]...)
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// warnStale points at namespaces left by a harness that was killed.
func warnStale() {
	left, _ := filepath.Glob("/var/run/netns/dt-bench*")
	if len(left) > 0 {
		logf("warning: namespaces from an earlier run that was killed: %s", strings.Join(left, " "))
		logf("  remove them with: for n in %s; do ip netns pids ${n##*/} | xargs -r kill; ip netns del ${n##*/}; done", strings.Join(left, " "))
	}
}

func commandLine(argv []string) string {
	args := argv[1:]
	return strings.TrimSpace("go run ./bench " + strings.Join(args, " "))
}
