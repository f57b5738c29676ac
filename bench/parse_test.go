package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const wrkOut = `Running 10s test @ http://198.18.2.2/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   612.73us  200.10us   5.00ms   80.00%
    Req/Sec    80.12k     3.21k   85.00k    70.00%
  Latency Distribution
     50%  590.00us
     75%  700.00us
     90%  800.00us
     99%    1.20ms
  800000 requests in 10.00s, 900.00MB read
  Socket errors: connect 0, read 3, write 0, timeout 1
  Non-2xx or 3xx responses: 5
Requests/sec:  80000.50
Transfer/sec:     90.00MB
`

func TestParseWrk(t *testing.T) {
	r, err := parseWrk(wrkOut)
	if err != nil {
		t.Fatal(err)
	}
	if r.ReqPerSec != 80000.5 || r.Requests != 800000 || r.Non2xx != 5 {
		t.Errorf("got %+v", r)
	}
	if r.Pct["50"] != 0.59 || r.Pct["99"] != 1.2 {
		t.Errorf("percentiles %v, want 50%%=0.59 ms, 99%%=1.2 ms", r.Pct)
	}
	if r.Mean != 0.61273 || r.Max != 5 {
		t.Errorf("mean %v ms, max %v ms; want 0.61273 and 5", r.Mean, r.Max)
	}
	if r.SocketErrs["read"] != 3 || r.SocketErrs["timeout"] != 1 {
		t.Errorf("socket errors %v", r.SocketErrs)
	}
	if _, err := parseWrk("unable to connect to 198.18.2.2:80 Connection refused"); err == nil {
		t.Error("no error for output without results")
	}
}

func TestParseProbeLine(t *testing.T) {
	p, err := parseProbeLine(`198.18.2.1 /probe/x-1 xff="198.18.1.2" via="-"`)
	if err != nil {
		t.Fatal(err)
	}
	if p.Peer.String() != "198.18.2.1" || p.XFF != "198.18.1.2" || p.Via != "" {
		t.Errorf("got %+v", p)
	}
	if _, err := parseProbeLine("garbage"); err == nil {
		t.Error("no error for a bad line")
	}
}

func TestParseVmRSS(t *testing.T) {
	if got := parseVmRSS(strings.NewReader("Name:\tdetour\nVmRSS:\t   2048 kB\n")); got != 2<<20 {
		t.Errorf("got %d, want %d", got, 2<<20)
	}
}

func TestParseMachineCPU(t *testing.T) {
	tests := []struct {
		name, in string
		want     machineCPU
		wantErr  bool
	}{
		{"kernel 6 line", "cpu  100 2 30 400 5 6 7 8 9 10\ncpu0 1 2 3 4 5 6 7 8 9 10\n", machineCPU{busy: 100 + 2 + 30 + 6 + 7 + 8, idle: 405, steal: 8}, false},
		{"no guest fields", "cpu 1 0 1 10 0 0 0 0\n", machineCPU{busy: 2, idle: 10}, false},
		{"per-CPU line first", "cpu0 1 2 3 4 5 6 7 8\n", machineCPU{}, true},
		{"too short", "cpu 1 2 3\n", machineCPU{}, true},
		{"not a number", "cpu 1 2 x 4 5 6 7 8\n", machineCPU{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseMachineCPU([]byte(tt.in))
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
	if d := (machineCPU{busy: 50, idle: 70, steal: 9}).since(machineCPU{busy: 20, idle: 60, steal: 4}); d != (machineCPU{busy: 30, idle: 10, steal: 5}) {
		t.Errorf("since: got %+v", d)
	}
	if m, err := readMachineCPU(); err != nil || m.busy+m.idle <= 0 {
		t.Errorf("this machine's /proc/stat: %+v, %v", m, err)
	}
}

func TestParseTCPSegs(t *testing.T) {
	const kernel6 = "Ip: Forwarding DefaultTTL InReceives\nIp: 1 64 900\n" +
		"Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors\n" +
		"Tcp: 1 200 120000 -1 10 20 0 0 3 12345 23456 7 0 1 0\n" +
		"Udp: InDatagrams NoPorts\nUdp: 5 6\n"
	tests := []struct {
		name, in string
		want     tcpSegs
		wantErr  bool
	}{
		{"kernel 6", kernel6, tcpSegs{in: 12345, out: 23456}, false},
		{"fields in another order", "Tcp: OutSegs X InSegs\nTcp: 4 5 6\n", tcpSegs{in: 6, out: 4}, false},
		{"no Tcp lines", "Ip: Forwarding\nIp: 1\n", tcpSegs{}, true},
		{"only the names", "Tcp: InSegs OutSegs\n", tcpSegs{}, true},
		{"OutSegs missing", "Tcp: InSegs RetransSegs\nTcp: 1 2\n", tcpSegs{}, true},
		{"not a number", "Tcp: InSegs OutSegs\nTcp: 1 x\n", tcpSegs{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseTCPSegs(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestSleeps(t *testing.T) {
	tests := []struct {
		name, status string
		want         int64
	}{
		{"kernel 6", "Name:\twrk\nvoluntary_ctxt_switches:\t4711\nnonvoluntary_ctxt_switches:\t12\n", 4711},
		{"absent", "Name:\twrk\n", 0},
		{"not a number", "voluntary_ctxt_switches:\tx\n", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := parseVoluntarySwitches(tt.status); got != tt.want {
				t.Errorf("got %d, want %d", got, tt.want)
			}
		})
	}
	// This process's threads: sleeping makes the count grow.
	before := sleeps(os.Getpid())
	for range 3 {
		time.Sleep(time.Millisecond)
	}
	if after := sleeps(os.Getpid()); after <= before {
		t.Errorf("sleeps(self) went from %d to %d across three sleeps", before, after)
	}
	if n := sleeps(-1); n != 0 {
		t.Errorf("sleeps of no process: %d", n)
	}
	// pidsNamed finds this process by its name in its own namespace.
	comm, err := os.ReadFile("/proc/self/comm")
	if err != nil {
		t.Fatal(err)
	}
	self := fmt.Sprintf("/proc/%d/ns/net", os.Getpid())
	if pids := pidsNamed(self, strings.TrimSpace(string(comm))); !slices.Contains(pids, os.Getpid()) {
		t.Errorf("pidsNamed(%s, %q) = %v, want it to hold %d", self, comm, pids, os.Getpid())
	}
	if pids := pidsNamed("/nonexistent", "nginx"); pids != nil {
		t.Errorf("pidsNamed of no namespace: %v", pids)
	}
}

func TestMedianAndFormat(t *testing.T) {
	if m := median([]float64{3, 1, 2}); m != 2 {
		t.Errorf("median = %v", m)
	}
	if m := median([]float64{4, 1, 2, 3}); m != 2.5 {
		t.Errorf("median = %v", m)
	}
	for v, want := range map[float64]string{0: "0", 999: "999", 1000: "1,000", 47123.6: "47,124", -1234567: "-1,234,567"} {
		if got := thousands(v); got != want {
			t.Errorf("thousands(%v) = %q, want %q", v, got, want)
		}
	}
	if got := rotate([]string{"a", "b", "c"}, 4); strings.Join(got, "") != "bca" {
		t.Errorf("rotate = %v", got)
	}
}

func TestHAProxyConfigForwardsToOriginalDestination(t *testing.T) {
	for _, mode := range []string{"tcp", "http"} {
		c := haproxyConfig(mode, 15002, false, 20000)
		for _, want := range []string{"mode " + mode, "bind 0.0.0.0:15002 transparent", "bind :::15002 v6only transparent", "server orig 0.0.0.0\n", "maxconn 9950"} {
			if !strings.Contains(c, want) {
				t.Errorf("%s config lacks %q:\n%s", mode, want, c)
			}
		}
		if (mode == "http") != strings.Contains(c, "option forwardfor") {
			t.Errorf("%s config: option forwardfor only in http mode:\n%s", mode, c)
		}
	}
}

// HAProxy refuses to start when 2 × maxconn + 2 × maxpipes (maxconn / 4
// unless set) plus its own 18 descriptors exceed the open-file limit:
// -haproxy-splice once made it exit at startup at a 20,000 limit.
func TestHAProxySpliceFitsTheOpenFileLimit(t *testing.T) {
	for _, nofile := range []int{1024, 20000, 200000, 400000} {
		for _, mode := range []string{"tcp", "http"} {
			c := haproxyConfig(mode, 15002, true, nofile)
			if !strings.Contains(c, "option splice-auto") {
				t.Errorf("%s config with splice lacks option splice-auto:\n%s", mode, c)
			}
			global, _, _ := strings.Cut(c, "defaults")
			var maxconn, maxpipes int
			for _, l := range strings.Split(global, "\n") {
				fmt.Sscanf(strings.TrimSpace(l), "maxconn %d", &maxconn)
				fmt.Sscanf(strings.TrimSpace(l), "maxpipes %d", &maxpipes)
			}
			if maxpipes == 0 {
				maxpipes = maxconn / 4 // HAProxy's default
			}
			if need := 2*maxconn + 2*maxpipes + 18; maxconn == 0 || need > nofile {
				t.Errorf("nofile %d, %s: maxconn %d and maxpipes %d need %d descriptors:\n%s", nofile, mode, maxconn, maxpipes, need, c)
			}
		}
	}
}

// -h names each flag with its value's type, or nothing for a switch: the
// flag package takes a `quoted` word of the usage as the value's name, so
// -haproxy-splice once read as if it took "option splice-auto", and
// -detour-args and -baseline-args as if they took "detour run".
func TestHelpNamesNoValueForSwitches(t *testing.T) {
	code, out := runBenchMain(t, "-h")
	if code != 0 {
		t.Fatalf("-h: exit status %d, want 0", code)
	}
	types := map[string]bool{"string": true, "int": true, "float": true, "duration": true}
	for _, line := range strings.Split(out, "\n") {
		head, _, _ := strings.Cut(line, "\t") // a one-letter flag's usage follows a tab
		f := strings.Fields(head)
		if !strings.HasPrefix(line, "  -") || len(f) == 0 {
			continue
		}
		name, value := f[0], strings.Join(f[1:], " ")
		if value != "" && !types[value] {
			t.Errorf("-h shows %s as taking %q", name, value)
		}
	}
}

// wrk and iperf3 run for whole seconds, while the CPU per request and
// per GB divide by -duration's worth of the measured rate: a -duration of
// 2.5s ran them for 2 s and understated those figures by a fifth. Such a
// -duration is refused (-from-json of a missing file keeps the test from
// measuring anything if it is not).
func TestDurationMustBeWholeSeconds(t *testing.T) {
	for _, d := range []string{"2500ms", "1.5s"} {
		if code, out := runBenchMain(t, "-duration", d, "-from-json", "/nonexistent/run.json"); code != 2 {
			t.Errorf("-duration %s: exit status %d, want 2 (a usage error): %s", d, code, out)
		}
	}
	if code, out := runBenchMain(t, "-duration", "2s", "-from-json", "/nonexistent/run.json"); code != 1 {
		t.Errorf("-duration 2s: exit status %d, want 1 (the missing file): %s", code, out)
	}
}

// runBenchMain runs the harness's main with args and returns its exit
// status and what it wrote to stderr (kept in a file, which, unlike a
// pipe, no amount of output can fill).
func runBenchMain(t *testing.T, args ...string) (int, string) {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "stderr")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	stderr := os.Stderr
	os.Stderr = f
	code := benchMain(args)
	os.Stderr = stderr
	out, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	return code, string(out)
}

func TestSummarizeRatiosAndTargets(t *testing.T) {
	r := &Results{Configs: []string{"direct", "detour-l4", "haproxy-tcp"}, IdleConns: 10000, DurationSec: 10}
	add := func(c, w string, m map[string]float64) {
		r.Samples = append(r.Samples, Sample{Config: c, Workload: w, Metrics: m})
	}
	add("direct", "iperf1", map[string]float64{mGbps: 10})
	add("detour-l4", "iperf1", map[string]float64{mGbps: 9.5, mRSSGrowth: 0.5})
	add("detour-l4", "iperf1", map[string]float64{mGbps: 8.5, mRSSGrowth: 0.5})
	add("detour-l4", "iperf1", map[string]float64{mGbps: 1}) // failed: not counted
	r.Samples[len(r.Samples)-1].Error = "boom"
	add("haproxy-tcp", "keepalive", map[string]float64{mReqPerSec: 100})
	add("detour-l4", "keepalive", map[string]float64{mReqPerSec: 120})
	r.summarize()
	if v, _ := r.get("detour-l4", "iperf1", mGbps); v != 9 {
		t.Errorf("median iperf1 = %v, want 9", v)
	}
	status := map[string]string{}
	for _, tg := range r.Targets {
		status[tg.Name] = tg.Status
	}
	if s := status["L4: iperf3 1 stream ≥ 0.90 × direct"]; s != "met" {
		t.Errorf("iperf1 target %q, want met (0.90)", s)
	}
	if s := status["L4: keep-alive req/s ≥ 1.0 × HAProxy tcp"]; s != "met" {
		t.Errorf("keep-alive target %q, want met", s)
	}
	if s := status["L4: new connections/s ≥ 1.0 × HAProxy tcp"]; s != "n/a" {
		t.Errorf("conn/s target %q, want n/a", s)
	}
}

// The ceiling divides every CPU's time by the CPU one GB cost, and says
// nothing when a figure it needs is missing.
func TestStreamCeiling(t *testing.T) {
	tests := []struct {
		name       string
		cpus       int
		directGbps float64
		perGB      float64 // detour-l4's; 0: not measured
		want       string
	}{
		{"2 CPUs, 1 s per GB", 2, 20, 1000, "2.50× direct's 400: as much CPU time as direct used carries 0.40× direct, all 2 CPUs busy at most 16.0 Gbit/s, 0.80× direct"},
		{"4 CPUs, 0.5 s per GB", 4, 20, 500, "1.25× direct's 400: as much CPU time as direct used carries 0.80× direct, all 4 CPUs busy at most 64.0 Gbit/s, 3.20× direct"},
		{"no CPU figure", 2, 20, 0, ""},
		{"machine unknown", 0, 20, 1000, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &Results{Configs: []string{"direct", "detour-l4"}, Rounds: 1, IdleConns: 10000, DurationSec: 10, Machine: Machine{CPUs: tt.cpus}}
			dm := map[string]float64{mGbps: tt.directGbps, mBusyPerGB: 400}
			m := map[string]float64{mGbps: 10}
			if tt.perGB > 0 {
				m[mBusyPerGB] = tt.perGB
			}
			r.Samples = append(r.Samples,
				Sample{Config: "direct", Workload: "iperf1", Round: 1, Metrics: dm},
				Sample{Config: "detour-l4", Workload: "iperf1", Round: 1, Metrics: m})
			r.summarize()
			got := r.streamCeiling("detour-l4")
			if tt.want == "" {
				if got != "" {
					t.Fatalf("ceiling %q, want none", got)
				}
				return
			}
			if !strings.Contains(got, tt.want) {
				t.Fatalf("ceiling %q, want it to say %q", got, tt.want)
			}
			for _, tg := range r.Targets {
				if strings.HasPrefix(tg.Name, "L4: iperf3 1 stream") && !strings.Contains(tg.Measured, tt.want) {
					t.Errorf("target says %q, want the ceiling too", tg.Measured)
				}
			}
		})
	}
}

func TestParsePerfStat(t *testing.T) {
	tests := []struct {
		name          string
		out           string
		calls, eagain float64
		wantErr       bool
	}{
		{"two counts", "18864,,raw_syscalls:sys_enter,1260888627,100.00,,\n1112,,raw_syscalls:sys_exit,1260860722,100.00,,\n", 18864, 1112, false},
		{"other lines around", "\n# started on x\n18,,raw_syscalls:sys_enter,1,100.00,,\n0,,raw_syscalls:sys_exit,1,100.00,,\n", 18, 0, false},
		{"not counted", "<not counted>,,raw_syscalls:sys_enter,0,0.00,,\n", 0, 0, true},
		{"one count", "18,,raw_syscalls:sys_enter,1,100.00,,\n", 0, 0, true},
		{"nothing", "perf: permission denied\n", 0, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			calls, eagain, err := parsePerfStat(tt.out)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			if err == nil && (calls != tt.calls || eagain != tt.eagain) {
				t.Fatalf("got %v, %v; want %v, %v", calls, eagain, tt.calls, tt.eagain)
			}
		})
	}
}

// A round's ratio pairs configs measured back to back; its median differs
// from the ratio of the medians when the machine's speed drifts.
func TestRoundRatios(t *testing.T) {
	r := &Results{Configs: []string{"detour-l4", "haproxy-tcp"}, Rounds: 3, IdleConns: 10000, DurationSec: 10}
	for i, v := range [][2]float64{{80, 100}, {200, 250}, {90, 100}} {
		r.Samples = append(r.Samples,
			Sample{Config: "detour-l4", Workload: "keepalive", Round: i + 1, Metrics: map[string]float64{mReqPerSec: v[0]}},
			Sample{Config: "haproxy-tcp", Workload: "keepalive", Round: i + 1, Metrics: map[string]float64{mReqPerSec: v[1]}})
	}
	r.summarize()
	var row *Row
	for i := range r.Rows {
		if r.Rows[i].Metric == mReqPerSec {
			row = &r.Rows[i]
		}
	}
	if row == nil {
		t.Fatal("no req/s row")
	}
	if got := row.Ratios["detour-l4/haproxy-tcp"]; got != 0.9 {
		t.Errorf("ratio of medians = %v, want 0.9 (90 / 100)", got)
	}
	if got := row.RoundRatios["detour-l4/haproxy-tcp"]; got != 0.8 {
		t.Errorf("median per-round ratio = %v, want 0.8 (0.8, 0.8, 0.9)", got)
	}
	for _, tg := range r.Targets {
		if tg.Name == "L4: keep-alive req/s ≥ 1.0 × HAProxy tcp" && !strings.Contains(tg.Measured, "per round 0.80×") {
			t.Errorf("target says %q, want the per-round ratio too", tg.Measured)
		}
	}
}

// Auto mode is compared with the protocol it detects: L7 for the HTTP
// workloads, L4 for iperf3, and not the other way round.
func TestAutoRatios(t *testing.T) {
	r := &Results{Configs: []string{"detour-l4", "detour-l7", "detour-auto"}, Rounds: 1, IdleConns: 10000, DurationSec: 10}
	for _, s := range []struct {
		config, workload, metric string
		v                        float64
	}{
		{"detour-l4", "keepalive", mReqPerSec, 100},
		{"detour-l7", "keepalive", mReqPerSec, 50},
		{"detour-auto", "keepalive", mReqPerSec, 45},
		{"detour-l4", "iperf1", mGbps, 10},
		{"detour-auto", "iperf1", mGbps, 9},
	} {
		r.Samples = append(r.Samples, Sample{Config: s.config, Workload: s.workload, Round: 1, Metrics: map[string]float64{s.metric: s.v}})
	}
	r.summarize()
	want := map[string]map[string]float64{
		mReqPerSec: {"detour-auto/detour-l7": 0.9},
		mGbps:      {"detour-auto/detour-l4": 0.9},
	}
	for _, row := range r.Rows {
		w, ok := want[row.Metric]
		if !ok {
			continue
		}
		for k, v := range row.Ratios {
			if strings.HasPrefix(k, "detour-auto/") && w[k] != v {
				t.Errorf("%s: ratio %s = %v, want %v", row.Label, k, v, w[k])
			}
		}
		for k, v := range w {
			if row.Ratios[k] != v {
				t.Errorf("%s: ratio %s = %v, want %v", row.Label, k, row.Ratios[k], v)
			}
		}
	}
}

func TestWithBaselines(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"detour-l4", "detour-l4,base-l4"},
		{"direct,detour-l4,detour-l7,haproxy-tcp", "direct,detour-l4,base-l4,detour-l7,base-l7,haproxy-tcp"},
		{"detour-l7,base-l7", "detour-l7,base-l7"},
		{"haproxy-http,splice", "haproxy-http,splice"},
		{"detour-l7,detour-auto", "detour-l7,base-l7,detour-auto,base-auto"},
	} {
		if got := strings.Join(withBaselines(strings.Split(tc.in, ",")), ","); got != tc.want {
			t.Errorf("withBaselines(%s) = %s, want %s", tc.in, got, tc.want)
		}
	}
	for _, c := range defaultConfigs() {
		if specOf(c).Baseline {
			t.Errorf("default configs include %s, which needs -baseline", c)
		}
		for _, b := range withBaselines([]string{c}) {
			specOf(b) // panics for a baseline config that does not exist
		}
	}
}

// TestUserArgs checks that -detour-args go to detour's configs and
// -baseline-args to the baseline's, and to no other config.
func TestUserArgs(t *testing.T) {
	o := &options{detourArgs: []string{"--tcp-loops", "2"}, baselineArgs: []string{"--tcp-loops", "1"}}
	for _, tc := range []struct{ config, want string }{
		{"detour-l4", "--tcp-loops 2"},
		{"detour-l7", "--tcp-loops 2"},
		{"detour-auto", "--tcp-loops 2"},
		{"base-l4", "--tcp-loops 1"},
		{"base-l7", "--tcp-loops 1"},
		{"base-auto", "--tcp-loops 1"},
	} {
		if got := strings.Join(o.userArgs(specOf(tc.config)), " "); got != tc.want {
			t.Errorf("userArgs(%s) = %q, want %q", tc.config, got, tc.want)
		}
	}
}

// TestFirstErrorKeepsTheFirst: errors of different types, from several
// goroutines, keep the first one and never panic (as atomic.Value did).
func TestFirstErrorKeepsTheFirst(t *testing.T) {
	var f firstError
	if f.get() != nil {
		t.Fatal("an empty firstError holds an error")
	}
	first := errors.New("first")
	f.set(first)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i%2 == 0 {
				f.set(&net.OpError{Op: "read", Err: io.EOF})
			} else {
				f.set(fmt.Errorf("wrapped: %w", io.ErrUnexpectedEOF))
			}
		}()
	}
	wg.Wait()
	if got := f.get(); got != first {
		t.Errorf("got %v, want the first error", got)
	}
}

// TestAcceptedBetween: the connections counted between two stub_status
// reads are exactly those made in between, though each read comes on a
// connection of its own that the counter includes.
func TestAcceptedBetween(t *testing.T) {
	var accepts atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "Active connections: 1 \nserver accepts handled requests\n %d %d 1 \nReading: 0 Writing: 1 Waiting: 0 \n",
			accepts.Load(), accepts.Load())
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			accepts.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

	acc0, err := stubAccepts(client, srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	const made = 5
	for range made {
		c, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	acc1, err := stubAccepts(client, srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	if got := acceptedBetween(acc0, acc1); got != made {
		t.Errorf("acceptedBetween(%d, %d) = %d, want the %d connections made in between", acc0, acc1, got, made)
	}
}

func TestTooMuchSteal(t *testing.T) {
	sample := func(workload string, steal float64, failed string) Sample {
		return Sample{Workload: workload, Error: failed, Metrics: map[string]float64{mStealCPU: steal}}
	}
	tests := []struct {
		name string
		s    Sample
		max  float64
		want bool
	}{
		{"over the limit", sample("keepalive", 12, ""), 5, true},
		{"at the limit", sample("keepalive", 5, ""), 5, false},
		{"under it", sample("iperf1", 1, ""), 5, false},
		{"turned off", sample("close", 40, ""), 0, false},
		{"a memory figure", sample("idle", 40, ""), 5, false},
		{"a failed sample", sample("keepalive", 40, "wrk: exit 1"), 5, false},
		{"no steal figure", Sample{Workload: "keepalive", Metrics: map[string]float64{}}, 5, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tooMuchSteal(tt.s, tt.max); got != tt.want {
				t.Errorf("tooMuchSteal = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestDisturbanceReportsSteal(t *testing.T) {
	r := &Results{
		Samples: []Sample{
			{Metrics: map[string]float64{mForeign: 1, mStealCPU: 0}},
			{Metrics: map[string]float64{mForeign: 3, mStealCPU: 2}},
			{Metrics: map[string]float64{mForeign: 2, mStealCPU: 4}},
		},
		Remeasured: []Sample{{Metrics: map[string]float64{mStealCPU: 33}}},
	}
	d := r.disturbance()
	for _, want := range []string{"median 2% of one CPU", "(max 3%)", "a median 2% of the CPUs' time", "max 4%", "1 measurement(s)"} {
		if !strings.Contains(d, want) {
			t.Errorf("disturbance() = %q, want it to contain %q", d, want)
		}
	}
	r.Remeasured = nil
	if d := r.disturbance(); strings.Contains(d, "taken again") {
		t.Errorf("nothing remeasured, but disturbance() = %q", d)
	}
}
