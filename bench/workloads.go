package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// workloadSpec is one measurement run from the client namespace.
type workloadSpec struct {
	Name      string
	Label     string
	ProxyOnly bool // meaningless without a proxy (memory)
	Stream    bool // not HTTP: skipped for the L7 configs
}

// workloadSpecs in the order they run within a config (each in a fresh
// lab with a freshly started proxy).
var workloadSpecs = []workloadSpec{
	{Name: "keepalive", Label: "HTTP keep-alive (wrk -t1 -c50, 1 KiB)"},
	{Name: "iperf1", Label: "iperf3, 1 stream", Stream: true},
	{Name: "iperf4", Label: "iperf3, 4 streams", Stream: true},
	{Name: "idle", Label: "idle client connections (memory)", ProxyOnly: true},
	{Name: "close", Label: "new connection per request (Connection: close)"},
}

func workloadNames() []string {
	var n []string
	for _, w := range workloadSpecs {
		n = append(n, w.Name)
	}
	return n
}

// Metric names, as used in samples, medians and JSON.
const (
	mReqPerSec  = "req_per_s"
	mP50        = "p50_ms"
	mP90        = "p90_ms"
	mP99        = "p99_ms"
	mMean       = "mean_ms" // wrk's Latency Avg
	mMax        = "max_ms"  // wrk's Latency Max
	mConnPerSec = "conn_per_s"
	mGbps       = "gbit_per_s"
	mRetrans    = "retransmits"
	mIdleRSS    = "rss_mib"
	mIdleBase   = "rss_before_mib"
	mIdleConns  = "conns"
	mIdlePer    = "rss_per_conn_kib"
	mIdle10k    = "rss_at_10k_mib" // base + per-connection growth × 10,000
	mIdleFDs    = "proxy_fds"
	mRSSStart   = "proxy_rss_start_mib"
	mRSSPeak    = "proxy_rss_peak_mib"
	mRSSGrowth  = "proxy_rss_growth_mib"
	mCPU        = "proxy_cpu_s"
	mCPUPerReq  = "proxy_cpu_us_per_req"
	mSyscalls   = "proxy_syscalls_per_req" // -syscalls
	mEagain     = "proxy_eagain_per_req"   // -syscalls: of mSyscalls, those that returned EAGAIN
	mServerConn = "server_conns"           // connections nginx accepted during the run
	mForeign    = "other_cpu_pct"          // CPU of processes outside the lab, % of one CPU
	mIdleCPU    = "machine_idle_pct"       // the machine's idle time, % of all its CPUs' time
	mStealCPU   = "machine_steal_pct"      // time the hypervisor took from the VM's CPUs, % of all their time
	mBusyPerReq = "machine_cpu_us_per_req" // the machine's busy CPU time (load, proxy, server, kernel) per request
	mBusyPerGB  = "machine_cpu_ms_per_gb"  // iperf3: the machine's busy CPU time per GB moved
	mClientSegs = "client_segs_per_req"    // TCP segments the client's namespace received per request
	mServerSegs = "server_segs_per_req"    // TCP segments the server's namespace received per request
	mLoadSleeps = "wrk_sleeps_per_req"     // wrk's voluntary context switches per request
	mSrvSleeps  = "nginx_sleeps_per_req"   // nginx's (all its processes') voluntary context switches per request
	mPrxSleeps  = "proxy_sleeps_per_req"   // the proxy's (all its threads') voluntary context switches per request
)

// wrkResult is what the harness reads from wrk's output.
type wrkResult struct {
	Requests   int64
	ReqPerSec  float64
	Pct        map[string]float64 // "50" → ms
	Mean, Max  float64            // ms
	SocketErrs map[string]int64   // connect, read, write, timeout
	Non2xx     int64
}

var (
	reWrkPct    = regexp.MustCompile(`(?m)^\s+(50|75|90|99)%\s+([0-9.]+)(us|ms|s)\s*$`)
	reWrkLat    = regexp.MustCompile(`(?m)^\s+Latency\s+([0-9.]+)(us|ms|s)\s+[0-9.]+(?:us|ms|s)\s+([0-9.]+)(us|ms|s)`)
	reWrkRPS    = regexp.MustCompile(`(?m)^Requests/sec:\s+([0-9.]+)`)
	reWrkReqs   = regexp.MustCompile(`(?m)^\s+([0-9]+) requests in`)
	reWrkSock   = regexp.MustCompile(`Socket errors: connect ([0-9]+), read ([0-9]+), write ([0-9]+), timeout ([0-9]+)`)
	reWrkNon2xx = regexp.MustCompile(`Non-2xx or 3xx responses: ([0-9]+)`)
)

// wrkMillis converts one of wrk's durations (number and unit) to ms.
func wrkMillis(num, unit string) float64 {
	v, _ := strconv.ParseFloat(num, 64)
	switch unit {
	case "us":
		v /= 1000
	case "s":
		v *= 1000
	}
	return v
}

func parseWrk(out string) (wrkResult, error) {
	r := wrkResult{Pct: map[string]float64{}, SocketErrs: map[string]int64{}}
	m := reWrkRPS.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("no Requests/sec in wrk's output:\n%s", indent(out))
	}
	r.ReqPerSec, _ = strconv.ParseFloat(m[1], 64)
	if m := reWrkReqs.FindStringSubmatch(out); m != nil {
		r.Requests, _ = strconv.ParseInt(m[1], 10, 64)
	}
	for _, m := range reWrkPct.FindAllStringSubmatch(out, -1) {
		r.Pct[m[1]] = wrkMillis(m[2], m[3])
	}
	if m := reWrkLat.FindStringSubmatch(out); m != nil {
		r.Mean, r.Max = wrkMillis(m[1], m[2]), wrkMillis(m[3], m[4])
	}
	if len(r.Pct) == 0 {
		return r, fmt.Errorf("no latency distribution in wrk's output (--latency):\n%s", indent(out))
	}
	if m := reWrkSock.FindStringSubmatch(out); m != nil {
		for i, k := range []string{"connect", "read", "write", "timeout"} {
			r.SocketErrs[k], _ = strconv.ParseInt(m[i+1], 10, 64)
		}
	}
	if m := reWrkNon2xx.FindStringSubmatch(out); m != nil {
		r.Non2xx, _ = strconv.ParseInt(m[1], 10, 64)
	}
	return r, nil
}

// runWrk runs wrk in the client namespace against nginx.
func (b *bench) runWrk(ctx context.Context, s *Sample, closeConn bool) error {
	d := b.o.duration
	args := []string{"-t1", "-c50", fmt.Sprintf("-d%ds", int(d.Seconds())), "--latency", "--timeout", "5s"}
	if closeConn {
		args = append(args, "-H", "Connection: close")
	}
	args = append(args, "http://"+b.tn.ServerIP4.String()+"/")
	acc0, aerr := b.ng.accepts(b.tn.Server)
	out, usage, err := runInUsage(ctx, b.tn.Client, d+30*time.Second, "wrk", args...)
	if err != nil {
		return err
	}
	if acc1, err := b.ng.accepts(b.tn.Server); err == nil && aerr == nil {
		s.Metrics[mServerConn] = float64(acceptedBetween(acc0, acc1))
	}
	r, err := parseWrk(out)
	if err != nil {
		return err
	}
	if usage != nil && r.Requests > 0 {
		s.Metrics[mLoadSleeps] = float64(usage.Nvcsw) / float64(r.Requests)
	}
	if closeConn {
		s.Metrics[mConnPerSec] = r.ReqPerSec
	} else {
		s.Metrics[mReqPerSec] = r.ReqPerSec
	}
	s.Metrics[mP50], s.Metrics[mP90], s.Metrics[mP99] = r.Pct["50"], r.Pct["90"], r.Pct["99"]
	if r.Mean > 0 {
		s.Metrics[mMean], s.Metrics[mMax] = r.Mean, r.Max
	}
	var errs int64
	var parts []string
	for _, k := range []string{"connect", "read", "write", "timeout"} {
		if n := r.SocketErrs[k]; n > 0 {
			errs += n
			parts = append(parts, fmt.Sprintf("%s %d", k, n))
		}
	}
	if len(parts) > 0 {
		s.Notes = append(s.Notes, "wrk socket errors: "+strings.Join(parts, ", "))
	}
	if r.Requests == 0 {
		return fmt.Errorf("wrk completed no request:\n%s", indent(out))
	}
	if r.Non2xx > 0 {
		return fmt.Errorf("%d of %d responses were not 2xx/3xx (the proxy failed requests)", r.Non2xx, r.Requests)
	}
	if errs*100 > r.Requests {
		return fmt.Errorf("wrk socket errors on more than 1%% of %d requests (%s)", r.Requests, strings.Join(parts, ", "))
	}
	return nil
}

// iperfJSON is the part of iperf3 -J output the harness reads.
type iperfJSON struct {
	Start struct {
		Connected []struct {
			LocalHost  string `json:"local_host"`
			RemoteHost string `json:"remote_host"`
		} `json:"connected"`
	} `json:"start"`
	End struct {
		SumSent struct {
			BitsPerSecond float64 `json:"bits_per_second"`
			Retransmits   float64 `json:"retransmits"`
		} `json:"sum_sent"`
		SumReceived struct {
			Bytes         float64 `json:"bytes"`
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
	} `json:"end"`
	Error string `json:"error"`
}

// runIperf runs a one-off iperf3 server in the server namespace and the
// client in the client namespace; it checks which peer the server saw.
func (b *bench) runIperf(ctx context.Context, s *Sample, streams int, wantPeer string) error {
	srv, err := startDaemon(b.tn.Server, "iperf3", "-s", "-1", "-J", "-p", "5201")
	if err != nil {
		return err
	}
	defer srv.Stop()
	if err := waitListening(ctx, b.tn.Server, 5201, srv, 10*time.Second); err != nil {
		return err
	}
	d := b.o.duration
	out, _, err := runSplit(ctx, b.tn.Client, d+30*time.Second, "iperf3",
		"-c", b.tn.ServerIP4.String(), "-p", "5201", "-t", strconv.Itoa(int(d.Seconds())),
		"-P", strconv.Itoa(streams), "-J", "--connect-timeout", "5000")
	var cj iperfJSON
	if jerr := json.Unmarshal([]byte(out), &cj); jerr != nil {
		if err != nil {
			return err
		}
		return fmt.Errorf("iperf3 client output is not JSON: %v\n%s", jerr, indent(out))
	}
	if cj.Error != "" {
		return fmt.Errorf("iperf3: %s", cj.Error)
	}
	if err != nil {
		return err
	}
	s.Metrics[mGbps] = cj.End.SumReceived.BitsPerSecond / 1e9
	s.Metrics[mRetrans] = cj.End.SumSent.Retransmits

	// The one-off server exits after the test; read whom it saw.
	select {
	case <-srv.done:
	case <-time.After(10 * time.Second):
		return fmt.Errorf("iperf3 server did not exit after the test")
	}
	var sj iperfJSON
	if err := json.Unmarshal([]byte(srv.out.String()), &sj); err != nil {
		return fmt.Errorf("iperf3 server output is not JSON: %v", err)
	}
	if len(sj.Start.Connected) != streams {
		return fmt.Errorf("iperf3 server saw %d streams, want %d", len(sj.Start.Connected), streams)
	}
	for _, c := range sj.Start.Connected {
		if c.RemoteHost != wantPeer {
			return fmt.Errorf("iperf3 server saw a stream from %s, want %s", c.RemoteHost, wantPeer)
		}
	}
	s.Checks = append(s.Checks, fmt.Sprintf("iperf3 server saw %d stream(s) from %s", streams, wantPeer))
	return nil
}

// runIdle holds n keep-alive client connections, each after one request,
// and measures the proxy's resident memory.
func (b *bench) runIdle(ctx context.Context, s *Sample, p proxyProc) error {
	n := b.o.idleConns
	if s.Config == "splice" {
		// Six descriptors per idle connection (two pipes held by its
		// waiting splices): fit under the open-file limit.
		n = min(n, (b.nofile-100)/6)
	}
	pid := p.Pid()
	settle := func() { time.Sleep(1500 * time.Millisecond) }
	settle()
	s.Metrics[mIdleBase] = mib(readRSS(pid))

	t0 := time.Now()
	ctx, cancel := context.WithTimeout(ctx, 120*time.Second)
	defer cancel()
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	dst := net.JoinHostPort(b.tn.ServerIP4.String(), "80")
	// Dial on one thread inside the client namespace.
	var dialErr error
	failed := 0
	err := b.tn.Client.Do(func() error {
		d := net.Dialer{Timeout: 5 * time.Second}
		for len(conns) < n && ctx.Err() == nil {
			c, err := d.DialContext(ctx, "tcp4", dst)
			if err != nil {
				failed++
				dialErr = err
				if failed > n/100+1 {
					return fmt.Errorf("%d dials failed, last: %w", failed, err)
				}
				continue
			}
			conns = append(conns, c)
		}
		return ctx.Err()
	})
	if err != nil {
		return fmt.Errorf("idle: opened %d of %d connections: %w", len(conns), n, err)
	}
	vlogf("idle: %d connections open after %s", len(conns), time.Since(t0).Round(time.Millisecond))
	if failed > 0 {
		s.Notes = append(s.Notes, fmt.Sprintf("%d dials failed (last: %v)", failed, dialErr))
	}
	// One request on each, in parallel, so that L4 and L7 proxies alike
	// hold an upstream (or pooled) connection and a served client.
	var next, bad atomic.Int64
	var firstErr firstError
	var wg sync.WaitGroup
	req := []byte("GET / HTTP/1.1\r\nHost: " + b.tn.ServerIP4.String() + "\r\nUser-Agent: detour-bench-idle\r\n\r\n")
	for w := 0; w < 64; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(conns) || ctx.Err() != nil {
					return
				}
				if err := oneRequest(conns[i], req); err != nil {
					bad.Add(1)
					firstErr.set(err)
				}
			}
		}()
	}
	wg.Wait()
	vlogf("idle: requests done after %s", time.Since(t0).Round(time.Millisecond))
	ok := int64(len(conns)) - bad.Load()
	s.Metrics[mIdleConns] = float64(ok)
	if bad.Load() > 0 {
		s.Notes = append(s.Notes, fmt.Sprintf("%d requests failed (first: %v)", bad.Load(), firstErr.get()))
	}
	if ok*100 < int64(n)*99 {
		return fmt.Errorf("idle: only %d of %d connections served a request", ok, n)
	}
	settle()
	st := readProc(pid)
	s.Metrics[mIdleRSS] = mib(st.RSS)
	s.Metrics[mIdleFDs] = float64(st.FDs)
	per := (s.Metrics[mIdleRSS] - s.Metrics[mIdleBase]) / float64(ok)
	s.Metrics[mIdlePer] = per * 1024
	s.Metrics[mIdle10k] = s.Metrics[mIdleBase] + per*10000
	if st.FDs < int(ok) {
		return fmt.Errorf("idle: the proxy has %d open files for %d client connections: they are not going through it", st.FDs, ok)
	}
	s.Checks = append(s.Checks, fmt.Sprintf("proxy holds %d fds for %d idle conns", st.FDs, ok))
	if b.profiling(s.Config) {
		b.memProfiles(ctx, s)
	}
	return nil
}

// firstError keeps the first error set by any of several goroutines. (An
// atomic.Value panics when a later error has another type than the one it
// holds: a proxy that died mid-workload failed requests with two kinds of
// error, the panic ended the run, and its lab was left behind.)
type firstError struct{ p atomic.Pointer[error] }

func (f *firstError) set(err error) { f.p.CompareAndSwap(nil, &err) }

func (f *firstError) get() error {
	if p := f.p.Load(); p != nil {
		return *p
	}
	return nil
}

func oneRequest(c net.Conn, req []byte) error {
	c.SetDeadline(time.Now().Add(15 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write(req); err != nil {
		return err
	}
	resp, err := http.ReadResponse(bufio.NewReaderSize(c, 2048), nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	nb, err := io.Copy(io.Discard, resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != 200 || nb != bodySize {
		return fmt.Errorf("%d with %d bytes", resp.StatusCode, nb)
	}
	if resp.Close {
		return fmt.Errorf("server closed the keep-alive connection")
	}
	return nil
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }
