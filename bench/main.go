// Command bench compares detour with the direct routed path and with
// HAProxy in transparent mode, on the lab's TPROXY topology (client →
// router → server namespaces), in one run with interleaved rounds.
//
//	go run ./bench                       # 3 rounds × 10 s, every config and workload
//	go run ./bench -quick                # smoke run: 1 round × 2 s, 1,000 idle conns
//	go run ./bench -configs direct,detour-l4,haproxy-tcp -workloads keepalive,iperf1
//	go run ./bench -json out.json -markdown out.md
//
// It needs root (network namespaces), and nginx, haproxy, iperf3 and wrk
// (it prints the apt-get command when one is missing, or runs it with
// -install). Everything happens inside namespaces it creates and removes,
// also on Ctrl-C. See README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"
)

// options are the command-line flags.
type options struct {
	rounds       int
	duration     time.Duration
	configs      []string
	workloads    []string
	quick        bool
	jsonFile     string
	mdFile       string
	detourBin    string
	baselineBin  string
	detourArgs   []string // more `detour run` flags for detour-l4, detour-l7 and detour-auto
	baselineArgs []string // and for base-l4, base-l7 and base-auto
	idleConns    int
	nginxWorkers string
	haproxySplic bool
	rps          bool
	install      bool
	keepTmp      bool
	verbose      bool
	id           string
	clientPorts  string
	profileDir   string
	syscalls     bool
	fromJSON     string
	quietWait    time.Duration
	quietMax     float64
	maxSteal     float64
	stealRetries int
}

func main() {
	// Hidden subcommand: the plain Go splice proxy baseline, started by the
	// harness itself inside the router namespace.
	if len(os.Args) > 1 && os.Args[1] == spliceProxyCmd {
		os.Exit(spliceProxyMain(os.Args[2:]))
	}
	os.Exit(benchMain(os.Args[1:]))
}

func benchMain(args []string) int {
	var o options
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: go run ./bench [flags]   (as root; see bench/README.md)\n\nFlags:\n")
		fs.PrintDefaults()
		fmt.Fprintf(fs.Output(), "\nConfigs:   %s\nWorkloads: %s\n", strings.Join(configNames(), ","), strings.Join(workloadNames(), ","))
	}
	var configs, workloads string
	fs.IntVar(&o.rounds, "rounds", 3, "rounds; each round runs every config once, in a rotated order")
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "length of each wrk and iperf3 run")
	fs.StringVar(&configs, "configs", strings.Join(defaultConfigs(), ","), "configs to run, comma-separated (base-l4, base-l7 and base-auto need -baseline)")
	fs.StringVar(&workloads, "workloads", strings.Join(workloadNames(), ","), "workloads to run, comma-separated")
	fs.BoolVar(&o.quick, "quick", false, "smoke run: 1 round × 2 s and 1,000 idle connections (explicit -rounds/-duration/-idle-conns win)")
	fs.StringVar(&o.jsonFile, "json", "", "write every sample, the medians and the ratios as JSON to this file")
	fs.StringVar(&o.mdFile, "markdown", "", "write the report (machine, command, tables, targets) as Markdown to this file")
	fs.StringVar(&o.detourBin, "detour", "", "detour binary to use (default: go build ./cmd/detour into a temporary directory)")
	var detourArgs, baselineArgs string
	fs.StringVar(&detourArgs, "detour-args", "", "more detour run flags for detour-l4, detour-l7 and detour-auto, space-separated (e.g. \"--tcp-loops 1\")")
	fs.StringVar(&baselineArgs, "baseline-args", "", "more detour run flags for base-l4, base-l7 and base-auto: with the same binary as -detour and -baseline, compares two settings")
	fs.StringVar(&o.baselineBin, "baseline", "", "a second detour binary (say, the build before a change) run as base-l4, base-l7 and base-auto beside detour-l4, detour-l7 and detour-auto, in the same rounds; the ratios table compares them")
	fs.IntVar(&o.idleConns, "idle-conns", 10000, "idle client connections held open for the memory workload")
	fs.StringVar(&o.nginxWorkers, "nginx-workers", "auto", "nginx worker_processes (a number or auto)")
	fs.BoolVar(&o.haproxySplic, "haproxy-splice", false, "add option splice-auto (and maxpipes 32) to HAProxy (off by default, as in Debian's stock config)")
	fs.BoolVar(&o.rps, "rps", false, "turn on receive packet steering on the lab's links, so one stream's segments stay in order as behind a NIC's receive-side scaling (veth reorders them otherwise; see bench/README.md)")
	fs.BoolVar(&o.install, "install", false, "apt-get install missing tools instead of only printing the command")
	fs.BoolVar(&o.keepTmp, "keep-tmp", false, "keep the temporary directory (configs, logs) after the run")
	fs.BoolVar(&o.verbose, "v", false, "print every command the harness runs")
	fs.StringVar(&o.clientPorts, "client-ports", "", "set net.ipv4.ip_local_port_range in the client namespace, e.g. 1024-65535 (default: the kernel's)")
	fs.StringVar(&o.profileDir, "profile", "", "run detour with its admin endpoint and save pprof profiles here (CPU during timed workloads, heap and goroutines with the idle connections); adds some overhead")
	fs.BoolVar(&o.syscalls, "syscalls", false, "count the proxy's system calls (and those that returned EAGAIN) per request with perf during keepalive and close; slows every config a little")
	fs.DurationVar(&o.quietWait, "quiet-wait", 30*time.Second, "before each workload, wait up to this long for processes outside the lab to use less than -quiet-cpu (0: don't wait)")
	fs.Float64Var(&o.quietMax, "quiet-cpu", 0.25, "CPU (in CPUs) that processes outside the lab may use for a workload to start without waiting")
	fs.Float64Var(&o.maxSteal, "max-steal", 5, "measure a workload again (fresh lab, fresh proxy) when the hypervisor took more than this percentage of the CPUs' time during it (steal in /proc/stat); 0: never")
	fs.IntVar(&o.stealRetries, "steal-retries", 2, "how many times one measurement is taken again for -max-steal; the last one is kept whatever its steal")
	fs.StringVar(&o.fromJSON, "from-json", "", "measure nothing: print the report (and -markdown) of a run saved with -json")
	fs.StringVar(&o.id, "id", "", "lab id: namespaces are dt-ID-cli/rtr/srv (default bench<pid>)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "bench: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if o.quick {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		if !set["rounds"] {
			o.rounds = 1
		}
		if !set["duration"] {
			o.duration = 2 * time.Second
		}
		if !set["idle-conns"] {
			o.idleConns = 1000
		}
	}
	var err error
	if o.configs, err = pick("config", configs, configNames()); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		return 2
	}
	o.detourArgs, o.baselineArgs = strings.Fields(detourArgs), strings.Fields(baselineArgs)
	if len(o.baselineArgs) > 0 && o.baselineBin == "" {
		fmt.Fprintln(os.Stderr, "bench: -baseline-args needs -baseline (the binary they are given to)")
		return 2
	}
	if o.baselineBin != "" {
		o.configs = withBaselines(o.configs)
		if _, err := os.Stat(o.baselineBin); err != nil {
			fmt.Fprintf(os.Stderr, "bench: -baseline: %v\n", err)
			return 2
		}
	} else if slices.ContainsFunc(o.configs, func(c string) bool { return specOf(c).Baseline }) {
		fmt.Fprintln(os.Stderr, "bench: base-l4, base-l7 and base-auto run the -baseline binary: give -baseline")
		return 2
	}
	if o.workloads, err = pick("workload", workloads, workloadNames()); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		return 2
	}
	o.workloads = inOrder(o.workloads, workloadNames())
	if o.rounds < 1 || o.duration < time.Second || o.idleConns < 1 {
		fmt.Fprintln(os.Stderr, "bench: -rounds and -idle-conns must be ≥ 1 and -duration ≥ 1s")
		return 2
	}
	if o.duration%time.Second != 0 {
		// wrk and iperf3 take whole seconds, and the rates are multiplied
		// by -duration to count what the CPU figures are divided by.
		fmt.Fprintf(os.Stderr, "bench: -duration %s: give whole seconds (wrk and iperf3 run for whole seconds)\n", o.duration)
		return 2
	}
	if o.duration > 120*time.Second {
		fmt.Fprintln(os.Stderr, "bench: -duration is capped at 120s: load generators are bounded in time")
		return 2
	}
	if o.id == "" {
		o.id = fmt.Sprintf("bench%d", os.Getpid())
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var res *Results
	if o.fromJSON != "" {
		res, err = readJSON(o.fromJSON)
		o.jsonFile = ""
	} else {
		res, err = run(ctx, o, os.Args)
	}
	if res != nil {
		report(os.Stdout, res)
		if o.jsonFile != "" {
			if werr := writeJSON(o.jsonFile, res); werr != nil {
				fmt.Fprintf(os.Stderr, "bench: %v\n", werr)
				err = errors.Join(err, werr)
			} else {
				fmt.Fprintf(os.Stderr, "bench: wrote %s\n", o.jsonFile)
			}
		}
		if o.mdFile != "" {
			if werr := writeMarkdown(o.mdFile, res); werr != nil {
				fmt.Fprintf(os.Stderr, "bench: %v\n", werr)
				err = errors.Join(err, werr)
			} else {
				fmt.Fprintf(os.Stderr, "bench: wrote %s\n", o.mdFile)
			}
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		var me missingError
		if errors.As(err, &me) {
			return 2
		}
		return 1
	}
	if res != nil && len(res.Failures) > 0 {
		fmt.Fprintf(os.Stderr, "bench: %d measurement(s) failed or were not verified as proxied; see the failures above\n", len(res.Failures))
		return 1
	}
	return 0
}

// inOrder returns the selected names in the order of all.
func inOrder(sel, all []string) []string {
	var out []string
	for _, a := range all {
		for _, s := range sel {
			if s == a {
				out = append(out, a)
				break
			}
		}
	}
	return out
}

// pick parses a comma-separated selection and checks it against known.
func pick(what, list string, known []string) ([]string, error) {
	var out []string
	for _, s := range strings.Split(list, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		ok := false
		for _, k := range known {
			if k == s {
				ok = true
			}
		}
		if !ok {
			return nil, fmt.Errorf("unknown %s %q (known: %s)", what, s, strings.Join(known, ","))
		}
		out = append(out, s)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no %s selected", what)
	}
	return out, nil
}
