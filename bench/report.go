package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// Row is one line of the results table: one metric of one workload, the
// median of each config, and the ratios the targets are about.
type Row struct {
	Workload string             `json:"workload"`
	Metric   string             `json:"metric"`
	Label    string             `json:"label"`
	Lower    bool               `json:"lower_is_better"`
	Values   map[string]float64 `json:"medians"` // config → median
	Ratios   map[string]float64 `json:"ratios"`  // "detour-l4/haproxy-tcp" → ratio
	// RoundRatios is the median over rounds of each round's ratio: a round
	// runs every config back to back, so its ratio is less exposed to a
	// machine whose speed drifts than a ratio of medians taken over the
	// whole run.
	RoundRatios map[string]float64 `json:"round_ratios,omitempty"`
}

// Target is one of issue 5's targets, evaluated on the medians.
type Target struct {
	Name     string  `json:"name"`
	Measured string  `json:"measured"`
	Value    float64 `json:"value"`
	Status   string  `json:"status"` // met, NOT met, n/a
}

type rowSpec struct {
	workload, metric, label string
	lower                   bool
}

func rowSpecs(idle int) []rowSpec {
	return []rowSpec{
		{"keepalive", mReqPerSec, "HTTP keep-alive, wrk -t1 -c50, 1 KiB body: req/s", false},
		{"keepalive", mMean, "same, mean latency (ms)", true},
		{"keepalive", mP50, "same, p50 latency (ms)", true},
		{"keepalive", mP90, "same, p90 latency (ms)", true},
		{"keepalive", mP99, "same, p99 latency (ms)", true},
		{"keepalive", mCPUPerReq, "same, proxy CPU per request (µs)", true},
		{"keepalive", mBusyPerReq, "same, whole machine's CPU per request (µs)", true},
		{"keepalive", mIdleCPU, "same, machine idle (% of both CPUs)", true},
		{"keepalive", mStealCPU, "same, CPU time the hypervisor took (% of both CPUs)", true},
		{"keepalive", mClientSegs, "same, TCP segments the client received per request", true},
		{"keepalive", mServerSegs, "same, TCP segments the server received per request", true},
		{"keepalive", mLoadSleeps, "same, wrk's sleeps per request", true},
		{"keepalive", mSrvSleeps, "same, nginx's sleeps per request", true},
		{"keepalive", mPrxSleeps, "same, proxy's sleeps per request", true},
		{"keepalive", mSyscalls, "same, proxy system calls per request (-syscalls)", true},
		{"keepalive", mEagain, "same, of which returned EAGAIN", true},
		{"keepalive", mServerConn, "same, connections nginx accepted", true},
		{"close", mConnPerSec, "new connection per request (Connection: close): conn/s", false},
		{"close", mP99, "same, p99 latency (ms)", true},
		{"close", mCPUPerReq, "same, proxy CPU per connection (µs)", true},
		{"close", mBusyPerReq, "same, whole machine's CPU per connection (µs)", true},
		{"close", mIdleCPU, "same, machine idle (% of both CPUs)", true},
		{"close", mStealCPU, "same, CPU time the hypervisor took (% of both CPUs)", true},
		{"close", mSyscalls, "same, proxy system calls per connection (-syscalls)", true},
		{"close", mEagain, "same, of which returned EAGAIN", true},
		{"iperf1", mGbps, "iperf3, 1 stream: Gbit/s", false},
		{"iperf1", mBusyPerGB, "same, whole machine's CPU per GB moved (ms)", true},
		{"iperf1", mIdleCPU, "same, machine idle (% of both CPUs)", true},
		{"iperf1", mStealCPU, "same, CPU time the hypervisor took (% of both CPUs)", true},
		{"iperf4", mGbps, "iperf3, 4 streams: Gbit/s", false},
		{"iperf4", mBusyPerGB, "same, whole machine's CPU per GB moved (ms)", true},
		{"iperf4", mIdleCPU, "same, machine idle (% of both CPUs)", true},
		{"iperf4", mStealCPU, "same, CPU time the hypervisor took (% of both CPUs)", true},
		{"iperf1", mRSSGrowth, "proxy RSS growth during iperf3 1 stream (MiB)", true},
		{"idle", mIdleRSS, fmt.Sprintf("proxy RSS with %s idle client connections (MiB)", thousands(float64(idle))), true},
		{"idle", mIdlePer, "same, per idle connection (KiB)", true},
	}
}

// ratioPair is one comparison of the ratios table, a against b, on every
// workload or only on those listed.
type ratioPair struct {
	a, b      string
	workloads []string
}

func (p ratioPair) key() string { return p.a + "/" + p.b }

func (p ratioPair) covers(workload string) bool {
	return len(p.workloads) == 0 || slices.Contains(p.workloads, workload)
}

// ratioPairs are the comparisons in the ratios table: detour against the
// floor (direct) and against the reference (HAProxy, tcp for L4, http for
// L7), L4 against the plain Go splice proxy, the default auto mode against
// the protocol it detects (what sniffing costs), and detour against the
// -baseline build.
var ratioPairs = []ratioPair{
	{a: "detour-l4", b: "direct"},
	{a: "detour-l4", b: "haproxy-tcp"},
	{a: "detour-l4", b: "splice"},
	{a: "detour-l7", b: "direct"},
	{a: "detour-l7", b: "haproxy-http"},
	{a: "detour-auto", b: "detour-l7", workloads: []string{"keepalive", "close", "idle"}},
	{a: "detour-auto", b: "detour-l4", workloads: []string{"iperf1", "iperf4"}},
	{a: "detour-l4", b: "base-l4"},
	{a: "detour-l7", b: "base-l7"},
	{a: "detour-auto", b: "base-auto"},
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// summarize computes the medians, rows and targets from the samples.
func (r *Results) summarize() {
	if r == nil {
		return
	}
	vals := map[string]map[string]map[string][]float64{}
	byRound := map[roundKey]float64{}
	for _, s := range r.Samples {
		if s.Error == "" {
			for k, v := range s.Metrics {
				byRound[roundKey{s.Config, s.Workload, k, s.Round}] = v
			}
		}
		if s.Error != "" {
			continue
		}
		if vals[s.Config] == nil {
			vals[s.Config] = map[string]map[string][]float64{}
		}
		if vals[s.Config][s.Workload] == nil {
			vals[s.Config][s.Workload] = map[string][]float64{}
		}
		for k, v := range s.Metrics {
			vals[s.Config][s.Workload][k] = append(vals[s.Config][s.Workload][k], v)
		}
	}
	r.Medians = map[string]map[string]map[string]float64{}
	for c, ws := range vals {
		r.Medians[c] = map[string]map[string]float64{}
		for w, ms := range ws {
			r.Medians[c][w] = map[string]float64{}
			for m, v := range ms {
				r.Medians[c][w][m] = median(v)
			}
		}
	}
	r.Rows = nil
	for _, rs := range rowSpecs(r.IdleConns) {
		row := Row{Workload: rs.workload, Metric: rs.metric, Label: rs.label, Lower: rs.lower,
			Values: map[string]float64{}, Ratios: map[string]float64{}, RoundRatios: map[string]float64{}}
		for _, c := range r.Configs {
			if v, ok := r.get(c, rs.workload, rs.metric); ok {
				if rs.metric == mIdleRSS {
					// Only configs that held the full count belong in this row
					// (the splice proxy gets fewer: see README.md).
					if n, _ := r.get(c, "idle", mIdleConns); n < 0.99*float64(r.IdleConns) {
						continue
					}
				}
				row.Values[c] = v
			}
		}
		if len(row.Values) == 0 {
			continue
		}
		for _, p := range ratioPairs {
			if rs.metric == mRSSGrowth {
				break // near-zero denominators: compare the values themselves
			}
			if !p.covers(rs.workload) {
				continue
			}
			a, aok := row.Values[p.a]
			b, bok := row.Values[p.b]
			if aok && bok && b != 0 {
				row.Ratios[p.key()] = a / b
			}
			if rr := roundRatios(byRound, p.a, p.b, rs.workload, rs.metric, r.Rounds); len(rr) > 1 {
				row.RoundRatios[p.key()] = median(rr)
			}
		}
		r.Rows = append(r.Rows, row)
	}
	r.Targets = r.targets()
}

// roundKey names one metric of one sample.
type roundKey struct {
	config, workload, metric string
	round                    int
}

// roundRatios returns a/b for every round in which both were measured.
func roundRatios(v map[roundKey]float64, a, b, workload, metric string, rounds int) []float64 {
	var out []float64
	for i := 1; i <= rounds; i++ {
		va, aok := v[roundKey{a, workload, metric, i}]
		vb, bok := v[roundKey{b, workload, metric, i}]
		if aok && bok && vb != 0 {
			out = append(out, va/vb)
		}
	}
	return out
}

// roundRatio is the median per-round ratio of a row, if there is one.
func (r *Results) roundRatio(a, b, workload, metric string) (float64, bool) {
	for _, row := range r.Rows {
		if row.Workload == workload && row.Metric == metric {
			v, ok := row.RoundRatios[a+"/"+b]
			return v, ok
		}
	}
	return 0, false
}

func (r *Results) get(config, workload, metric string) (float64, bool) {
	v, ok := r.Medians[config][workload][metric]
	return v, ok
}

func (r *Results) l7Active() (active, known bool) {
	for _, p := range r.Probes {
		if p.Config == "detour-l7" && p.Error == "" {
			known = true
			active = p.L7
		}
	}
	return
}

func (r *Results) targets() []Target {
	var ts []Target
	ratio := func(name, a, b, workload, metric string, limit float64, atMost bool) {
		t := Target{Name: name, Status: "n/a"}
		va, ok1 := r.get(a, workload, metric)
		vb, ok2 := r.get(b, workload, metric)
		if ok1 && ok2 && vb != 0 {
			t.Value = va / vb
			t.Measured = fmt.Sprintf("%.2f× (%s vs %s)", t.Value, fmtMetric(metric, va), fmtMetric(metric, vb))
			if rr, ok := r.roundRatio(a, b, workload, metric); ok {
				t.Measured += fmt.Sprintf("; per round %.2f×", rr)
			}
			met := t.Value >= limit
			if atMost {
				met = t.Value <= limit
			}
			t.Status = "NOT met"
			if met {
				t.Status = "met"
			}
		} else {
			t.Measured = "not measured in this run"
		}
		ts = append(ts, t)
	}
	ratio("L4: iperf3 1 stream ≥ 0.90 × direct", "detour-l4", "direct", "iperf1", mGbps, 0.90, false)
	ts[len(ts)-1].Measured += r.streamCeiling("detour-l4")
	ratio("L4: iperf3 4 streams ≥ 1.0 × plain Go splice proxy", "detour-l4", "splice", "iperf4", mGbps, 1.0, false)
	ratio("L4: iperf3 4 streams ≥ 1.0 × HAProxy tcp", "detour-l4", "haproxy-tcp", "iperf4", mGbps, 1.0, false)
	ratio("L4: keep-alive req/s ≥ 1.0 × HAProxy tcp", "detour-l4", "haproxy-tcp", "keepalive", mReqPerSec, 1.0, false)
	ratio("L4: new connections/s ≥ 1.0 × HAProxy tcp", "detour-l4", "haproxy-tcp", "close", mConnPerSec, 1.0, false)
	n := len(ts)
	ratio("L7: keep-alive req/s ≥ 1.0 × HAProxy http", "detour-l7", "haproxy-http", "keepalive", mReqPerSec, 1.0, false)
	ratio("L7: keep-alive p99 ≤ 1.0 × HAProxy http's", "detour-l7", "haproxy-http", "keepalive", mP99, 1.0, true)
	ratio("L7: new connections/s ≥ 1.0 × HAProxy http", "detour-l7", "haproxy-http", "close", mConnPerSec, 1.0, false)
	if active, known := r.l7Active(); known && !active {
		for i := n; i < len(ts); i++ {
			ts[i].Measured += " — detour forwarded --protocol http at L4 in this build"
		}
	}
	for _, c := range []string{"detour-l4", "detour-l7", "detour-auto"} {
		t := Target{Name: fmt.Sprintf("Memory (%s): ≤ 150 MiB resident with 10,000 idle client connections", c), Status: "n/a"}
		if v, ok := r.get(c, "idle", mIdleRSS); ok {
			conns, _ := r.get(c, "idle", mIdleConns)
			t.Value = v
			t.Measured = fmt.Sprintf("%.1f MiB with %s connections", v, thousands(conns))
			if conns < 10000 {
				// The open-file limit kept the count below 10,000:
				// judge the linear extrapolation.
				v, _ = r.get(c, "idle", mIdle10k)
				t.Value = v
				t.Measured += fmt.Sprintf(", %.1f MiB extrapolated to 10,000", v)
			}
			t.Status = "NOT met"
			if v <= 150 {
				t.Status = "met"
			}
		} else {
			t.Measured = "not measured in this run"
		}
		ts = append(ts, t)
	}
	t := Target{Name: "Memory (detour-l4): flat during a transfer (RSS growth ≤ 8 MiB during iperf3 1 stream)", Status: "n/a", Measured: "not measured in this run"}
	if v, ok := r.get("detour-l4", "iperf1", mRSSGrowth); ok {
		g, _ := r.get("detour-l4", "iperf1", mGbps)
		t.Value = v
		t.Measured = fmt.Sprintf("+%.1f MiB while moving %.1f GB", v, g*r.DurationSec/8)
		t.Status = "NOT met"
		if v <= 8 {
			t.Status = "met"
		}
	}
	ts = append(ts, t)
	ts = append(ts, Target{Name: "Zero allocations per L4 byte; allocations per HTTP request", Status: "n/a",
		Measured: "not measured by this harness: see the Go benchmarks (go test -bench . -benchmem ./internal/...)"})
	return ts
}

// streamCeiling says what config's single stream costs per byte against
// direct routing's, and how fast it could go at that cost: with as much
// CPU time as direct routing used, and with every CPU busy. When even the
// second is under a target, no scheduling reaches it, only a cheaper byte.
func (r *Results) streamCeiling(config string) string {
	perGB, ok1 := r.get(config, "iperf1", mBusyPerGB)
	direct, ok2 := r.get("direct", "iperf1", mGbps)
	directPerGB, ok3 := r.get("direct", "iperf1", mBusyPerGB)
	if !ok1 || !ok2 || !ok3 || perGB <= 0 || directPerGB <= 0 || direct <= 0 || r.Machine.CPUs <= 0 {
		return ""
	}
	most := float64(r.Machine.CPUs) * 1e3 / perGB * 8 // Gbit/s
	return fmt.Sprintf("; CPU per GB %.0f ms, %.2f× direct's %.0f: as much CPU time as direct used carries %.2f× direct, all %d CPUs busy at most %.1f Gbit/s, %.2f× direct",
		perGB, perGB/directPerGB, directPerGB, directPerGB/perGB, r.Machine.CPUs, most, most/direct)
}

func fmtMetric(metric string, v float64) string {
	switch metric {
	case mReqPerSec, mConnPerSec, mServerConn:
		return thousands(v)
	case mP50, mP90, mP99, mMean:
		return fmt.Sprintf("%.2f ms", v)
	case mGbps:
		return fmt.Sprintf("%.2f", v)
	case mIdleRSS, mRSSGrowth, mRSSPeak, mRSSStart, mIdlePer, mIdle10k,
		mCPUPerReq, mSyscalls, mEagain, mBusyPerReq, mIdleCPU, mStealCPU, mBusyPerGB:
		return fmt.Sprintf("%.1f", v)
	case mClientSegs, mServerSegs, mLoadSleeps, mSrvSleeps, mPrxSleeps:
		return fmt.Sprintf("%.2f", v)
	}
	return fmt.Sprintf("%.3g", v)
}

func fmtCell(metric string, v float64) string {
	s := fmtMetric(metric, v)
	return strings.TrimSuffix(s, " ms")
}

// thousands formats v rounded to an integer with thousands separators.
func thousands(v float64) string {
	n := int64(math.Round(v))
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// tables writes the medians table and the ratios table in Markdown.
func (r *Results) tables(w io.Writer) {
	var cols []configSpec
	for _, c := range configSpecs {
		for _, sel := range r.Configs {
			if c.Name == sel {
				cols = append(cols, c)
			}
		}
	}
	fmt.Fprintf(w, "Medians of %d round(s) × %s:\n\n", r.Rounds, r.Duration)
	fmt.Fprint(w, "| workload |")
	for _, c := range cols {
		fmt.Fprintf(w, " %s |", c.Label)
	}
	fmt.Fprint(w, "\n|---|")
	for range cols {
		fmt.Fprint(w, "---:|")
	}
	fmt.Fprintln(w)
	for _, row := range r.Rows {
		fmt.Fprintf(w, "| %s |", row.Label)
		for _, c := range cols {
			if v, ok := row.Values[c.Name]; ok {
				fmt.Fprintf(w, " %s |", fmtCell(row.Metric, v))
			} else {
				fmt.Fprint(w, " — |")
			}
		}
		fmt.Fprintln(w)
	}

	var pairs []ratioPair
	for _, p := range ratioPairs {
		for _, row := range r.Rows {
			if _, ok := row.Ratios[p.key()]; ok {
				pairs = append(pairs, p)
				break
			}
		}
	}
	if len(pairs) == 0 {
		return
	}
	r.ratioTable(w, "Ratios of the medians (for latency, CPU and memory rows, lower is better)", pairs,
		func(row Row) map[string]float64 { return row.Ratios })
	if r.Rounds > 1 {
		r.ratioTable(w, "Medians of the per-round ratios (each round runs every config back to back, so these drift less with the machine's speed)", pairs,
			func(row Row) map[string]float64 { return row.RoundRatios })
	}
}

// ratioTable writes one ratio per row and config pair, as of(row) holds
// them; rows without any are left out.
func (r *Results) ratioTable(w io.Writer, title string, pairs []ratioPair, of func(Row) map[string]float64) {
	fmt.Fprintf(w, "\n%s:\n\n| workload |", title)
	for _, p := range pairs {
		fmt.Fprintf(w, " %s / %s |", specOf(p.a).Label, specOf(p.b).Label)
	}
	fmt.Fprint(w, "\n|---|")
	for range pairs {
		fmt.Fprint(w, "---:|")
	}
	fmt.Fprintln(w)
	for _, row := range r.Rows {
		ratios := of(row)
		if len(ratios) == 0 {
			continue
		}
		fmt.Fprintf(w, "| %s |", row.Label)
		for _, p := range pairs {
			if v, ok := ratios[p.key()]; ok {
				fmt.Fprintf(w, " %.2f |", v)
			} else {
				fmt.Fprint(w, " — |")
			}
		}
		fmt.Fprintln(w)
	}
}

func (r *Results) targetsTable(w io.Writer) {
	fmt.Fprint(w, "| target (issue 5) | measured | status |\n|---|---|---|\n")
	for _, t := range r.Targets {
		fmt.Fprintf(w, "| %s | %s | %s |\n", t.Name, t.Measured, t.Status)
	}
}

func (r *Results) verification(w io.Writer) {
	seen := map[string]bool{}
	for _, p := range r.Probes {
		if seen[p.Config] {
			continue
		}
		seen[p.Config] = true
		line := fmt.Sprintf("- %s: nginx saw the probe from %s (want %s)", specOf(p.Config).Label, p.Seen.Peer, p.Want)
		if p.Seen.XFF != "" {
			line += ", X-Forwarded-For " + p.Seen.XFF
		}
		if specOf(p.Config).Protocol == "http" && !p.L7 {
			line += " — no X-Forwarded-For: detour forwarded `--protocol http` at L4"
		}
		if p.Error != "" {
			line += " — FAILED: " + p.Error
		}
		fmt.Fprintln(w, line)
	}
	checks := map[string]map[string]bool{}
	for _, s := range r.Samples {
		if s.Error == "" && len(s.Checks) > 0 {
			if checks[s.Config] == nil {
				checks[s.Config] = map[string]bool{}
			}
			for _, c := range s.Checks {
				// Keep the kind of check, not the numbers.
				switch {
				case strings.HasPrefix(c, "probe seen from "):
					checks[s.Config]["nginx saw every measurement's probe come from "+strings.TrimPrefix(c, "probe seen from ")] = true
				case strings.HasPrefix(c, "proxy used"):
					checks[s.Config]["proxy CPU time grew during every workload"] = true
				case strings.HasPrefix(c, "iperf3 server saw"):
					checks[s.Config]["iperf3's server saw every stream come from "+c[strings.LastIndex(c, " ")+1:]] = true
				case strings.HasPrefix(c, "proxy holds"):
					checks[s.Config]["the proxy held ≥ 1 fd per idle connection"] = true
				}
			}
		}
	}
	for _, c := range r.Configs {
		if len(checks[c]) == 0 {
			continue
		}
		var ks []string
		for k := range checks[c] {
			ks = append(ks, k)
		}
		sort.Strings(ks)
		fmt.Fprintf(w, "- %s: %s\n", specOf(c).Label, strings.Join(ks, "; "))
	}
}

// disturbance describes the CPU other processes and the hypervisor took
// during the samples.
func (r *Results) disturbance() string {
	v := r.sortedValues(mForeign)
	if len(v) == 0 {
		return ""
	}
	d := fmt.Sprintf("Processes outside the lab used a median %.0f%% of one CPU during the samples (max %.0f%%); samples above 10%% carry a note in the JSON.",
		median(v), v[len(v)-1])
	if steal := r.sortedValues(mStealCPU); len(steal) > 0 {
		d += fmt.Sprintf(" The hypervisor took a median %.0f%% of the CPUs' time during the samples (steal; max %.0f%%)", median(steal), steal[len(steal)-1])
		if n := len(r.Remeasured); n > 0 {
			d += fmt.Sprintf("; %d measurement(s) during which it took more were taken again (\"remeasured\" in the JSON)", n)
		}
		d += "."
	}
	return d
}

// sortedValues returns metric's values over the kept samples that have it,
// in ascending order.
func (r *Results) sortedValues(metric string) []float64 {
	var v []float64
	for _, s := range r.Samples {
		if x, ok := s.Metrics[metric]; ok {
			v = append(v, x)
		}
	}
	sort.Float64s(v)
	return v
}

// report prints the tables, targets and failures to the terminal.
func report(w io.Writer, r *Results) {
	fmt.Fprintln(w)
	if r.Partial {
		fmt.Fprintln(w, "(interrupted: partial results)")
	}
	r.tables(w)
	if d := r.disturbance(); d != "" {
		fmt.Fprintln(w, "\n"+d)
	}
	fmt.Fprintln(w)
	r.targetsTable(w)
	fmt.Fprintln(w, "\nVerification:")
	r.verification(w)
	if len(r.Failures) > 0 {
		fmt.Fprintln(w, "\nFailures (excluded from the medians):")
		for _, f := range r.Failures {
			fmt.Fprintln(w, "- "+strings.ReplaceAll(f, "\n", "\n  "))
		}
	}
}

// readJSON loads a run written by -json, to print its report again.
func readJSON(path string) (*Results, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r Results
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	r.summarize()
	return &r, nil
}

func writeJSON(path string, r *Results) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// writeMarkdown writes the report in the form bench/RESULTS.md uses.
func writeMarkdown(path string, r *Results) error {
	var b strings.Builder
	m := r.Machine
	fmt.Fprintf(&b, "Date: %s  \nCommand: `%s`  \n", r.Date, r.Command)
	fmt.Fprintf(&b, "Machine: %d CPUs (%s), %s RAM, kernel %s, %s  \n", m.CPUs, m.CPUModel, m.MemTotal, m.Kernel, m.Go)
	fmt.Fprintf(&b, "Tree: %s (%s)  \n", m.Commit, m.Tools["detour"])
	fmt.Fprintf(&b, "Tools: %s; %s; %s; %s  \n", m.Tools["nginx"], m.Tools["haproxy"], m.Tools["wrk"], m.Tools["iperf3"])
	fmt.Fprintf(&b, "Setup: nginx worker_processes %s; HAProxy nbthread %d, splice %v; %s idle connections; RPS on the lab's links %v\n\n",
		r.Setup.NginxWorkers, m.CPUs, r.Setup.HAProxySplice, thousands(float64(r.IdleConns)), r.Setup.RPS)
	if r.Partial {
		b.WriteString("(interrupted: partial results)\n\n")
	}
	r.tables(&b)
	if d := r.disturbance(); d != "" {
		b.WriteString("\n" + d + "\n")
	}
	b.WriteString("\n")
	r.targetsTable(&b)
	b.WriteString("\nVerification (each config, each round):\n\n")
	r.verification(&b)
	if len(r.Failures) > 0 {
		b.WriteString("\nFailures (excluded from the medians):\n\n")
		for _, f := range r.Failures {
			fmt.Fprintf(&b, "- %s\n", strings.ReplaceAll(f, "\n", " "))
		}
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}
