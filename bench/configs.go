package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/detour-proxy/detour/internal/lab"
)

// configSpec is one way of carrying the client's traffic to the server.
type configSpec struct {
	Name     string // flag and JSON name
	Label    string // table column
	Proxy    bool   // a process on the router carries the traffic
	L7       bool   // compared with HAProxy http rather than HAProxy tcp
	Protocol string // detour's --protocol; empty for the other configs
	Baseline bool   // detour from -baseline, to compare two builds in one run
}

var configSpecs = []configSpec{
	{Name: "direct", Label: "direct"},
	{Name: "detour-l4", Label: "detour L4", Proxy: true, Protocol: "tcp"},
	{Name: "detour-l7", Label: "detour L7", Proxy: true, L7: true, Protocol: "http"},
	{Name: "detour-auto", Label: "detour auto", Proxy: true, Protocol: "auto"},
	{Name: "haproxy-tcp", Label: "HAProxy tcp", Proxy: true},
	{Name: "haproxy-http", Label: "HAProxy http", Proxy: true, L7: true},
	{Name: "splice", Label: "Go splice", Proxy: true},
	{Name: "base-l4", Label: "baseline L4", Proxy: true, Protocol: "tcp", Baseline: true},
	{Name: "base-l7", Label: "baseline L7", Proxy: true, L7: true, Protocol: "http", Baseline: true},
	{Name: "base-auto", Label: "baseline auto", Proxy: true, Protocol: "auto", Baseline: true},
}

// httpAtL7 says whether the config must carry the bench's HTTP requests
// at L7, adding X-Forwarded-For: the L7 configs, and detour's default auto
// mode, which sniffs them (and carries iperf3 at L4).
func (c configSpec) httpAtL7() bool { return c.L7 || c.Protocol == "auto" }

// configNames are all configs, the baseline ones included.
func configNames() []string {
	var n []string
	for _, c := range configSpecs {
		n = append(n, c.Name)
	}
	return n
}

// defaultConfigs are the configs a run has unless -configs says otherwise:
// all but the baseline ones, which -baseline adds.
func defaultConfigs() []string {
	var n []string
	for _, c := range configSpecs {
		if !c.Baseline {
			n = append(n, c.Name)
		}
	}
	return n
}

// withBaselines adds base-l4 (base-l7) after detour-l4 (detour-l7) where
// the selection has one and not the other.
func withBaselines(sel []string) []string {
	var out []string
	for _, s := range sel {
		out = append(out, s)
		if b, ok := strings.CutPrefix(s, "detour-"); ok && !slices.Contains(sel, "base-"+b) {
			out = append(out, "base-"+b)
		}
	}
	return out
}

func specOf(name string) configSpec {
	for _, c := range configSpecs {
		if c.Name == name {
			return c
		}
	}
	panic("unknown config " + name)
}

// Ports the proxies listen on in the router namespace.
const (
	detourPort  = 15001
	haproxyPort = 15002
	splicePort  = 15003
)

// haproxyMaxPipes bounds the pipes HAProxy splices through with
// -haproxy-splice: two descriptors each, within the 100 that maxconn
// leaves of the open-file limit; iperf4 needs 8 (4 streams, both ways),
// and HAProxy copies through its buffers when none is free.
const haproxyMaxPipes = 32

// interceptedPorts are the destination ports the rules divert: nginx and iperf3.
const interceptedPorts = "80,5201"

// proxyProc is a running proxy.
type proxyProc interface {
	Pid() int
	Stop() error
}

// detourExtraArgs are detour run's flags besides the interception ones.
// Info: lab.StartDetour waits for msg=ready, which builds before 1d876a6
// log only at info; detour logs nothing per connection at info.
func detourExtraArgs(proto string) []string {
	return []string{"--protocol", proto, "--admin", "off", "--log-level", "info"}
}

// ruleArgs are the interception flags shared by detour run and detour rules.
func ruleArgs(port int, router string) []string {
	return []string{
		"--mode", "tproxy",
		"--listen", "0.0.0.0:" + strconv.Itoa(port),
		"--listen", "[::]:" + strconv.Itoa(port),
		"--intercept-port", interceptedPorts,
		"--intercept-iface", router,
	}
}

// startConfig starts the config's proxy (nil for direct) with its rules.
func (b *bench) startConfig(ctx context.Context, spec configSpec, round int) (proxyProc, error) {
	name := spec.Name
	if spec.Protocol != "" {
		return b.startDetour(ctx, spec, round)
	}
	switch name {
	case "direct":
		return nil, nil
	case "haproxy-tcp", "haproxy-http":
		mode := strings.TrimPrefix(name, "haproxy-")
		cfg := haproxyConfig(mode, haproxyPort, b.o.haproxySplic, b.nofile)
		path := filepath.Join(b.tmp, name+".cfg")
		if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
			return nil, err
		}
		if _, err := runIn(ctx, b.tn.Router, 10*time.Second, "haproxy", "-c", "-q", "-f", path); err != nil {
			return nil, fmt.Errorf("haproxy config check: %w", err)
		}
		return b.startWithRules(ctx, haproxyPort, "haproxy", "-f", path, "-db")
	case "splice":
		return b.startWithRules(ctx, splicePort, b.selfBin, spliceProxyCmd,
			"-listen", "0.0.0.0:"+strconv.Itoa(splicePort), "-listen", "[::]:"+strconv.Itoa(splicePort))
	}
	return nil, fmt.Errorf("unknown config %q", name)
}

// startDetour starts detour run (the -baseline binary for a baseline
// config) with the config's protocol; its log goes to the temporary
// directory.
func (b *bench) startDetour(ctx context.Context, spec configSpec, round int) (proxyProc, error) {
	bin := b.detourBin
	if spec.Baseline {
		bin = b.o.baselineBin
	}
	args := append(ruleArgs(detourPort, b.tn.RouterIfaceIn), detourExtraArgs(spec.Protocol)...)
	args = append(args, b.o.userArgs(spec)...)
	if b.profiling(spec.Name) {
		args = append(args, "--admin", adminAddr) // the last --admin wins
	}
	logw, err := os.Create(filepath.Join(b.tmp, fmt.Sprintf("%s-round%d.log", spec.Name, round)))
	if err != nil {
		return nil, err
	}
	vlogf("[%s] %s run %s", b.tn.Router.Name, bin, strings.Join(args, " "))
	d, err := lab.StartDetour(ctx, b.tn.Router, bin, args, logw)
	if err != nil {
		logw.Close()
		return nil, err
	}
	return &detourProc{d: d, log: logw}, nil
}

// userArgs are the -detour-args or -baseline-args that spec runs with.
func (o *options) userArgs(spec configSpec) []string {
	if spec.Baseline {
		return o.baselineArgs
	}
	return o.detourArgs
}

// startWithRules installs detour's TPROXY rules for port (`detour rules
// apply` in the router namespace), then starts the program; Stop stops it
// and removes the rules.
func (b *bench) startWithRules(ctx context.Context, port int, name string, args ...string) (proxyProc, error) {
	rargs := append([]string{"rules", "apply"}, ruleArgs(port, b.tn.RouterIfaceIn)...)
	if _, err := runIn(ctx, b.tn.Router, 15*time.Second, b.detourBin, rargs...); err != nil {
		return nil, err
	}
	clean := func() error {
		cargs := append([]string{"rules", "clean"}, ruleArgs(port, b.tn.RouterIfaceIn)...)
		_, err := runIn(context.Background(), b.tn.Router, 15*time.Second, b.detourBin, cargs...)
		return err
	}
	d, err := startDaemon(b.tn.Router, name, args...)
	if err != nil {
		clean()
		return nil, err
	}
	if err := waitListening(ctx, b.tn.Router, port, d, 15*time.Second); err != nil {
		d.Stop()
		clean()
		return nil, err
	}
	return &ruledProc{daemon: d, clean: clean}, nil
}

type ruledProc struct {
	*daemon
	clean func() error
}

func (p *ruledProc) Stop() error {
	err := p.daemon.Stop()
	if cerr := p.clean(); cerr != nil && err == nil {
		err = cerr
	}
	return err
}

type detourProc struct {
	d   *lab.Detour
	log *os.File
}

func (p *detourProc) Pid() int { return p.d.Pid() }

func (p *detourProc) Stop() error {
	err := p.d.Stop()
	p.log.Close()
	return err
}

// haproxyConfig is HAProxy in transparent mode: the frontend binds with
// "transparent" (IP_TRANSPARENT, so TPROXY'd connections are accepted),
// and the server address 0.0.0.0 without a port means "the destination
// address and port the client connected to" — the original destination.
// HAProxy connects from the router's own address (no usesrc), like detour
// without --spoof-source. Threads default to one per CPU, as detour's
// GOMAXPROCS does. http mode keeps client and server connections alive
// (HAProxy's defaults: http-keep-alive, http-reuse safe) and adds
// X-Forwarded-For, as detour's L7 does.
//
// HAProxy sizes its descriptor needs as 2 × maxconn + 2 × maxpipes plus a
// few of its own (18 here), and refuses to start if the open-file limit is
// lower. maxconn takes all but 100 of the limit, and maxpipes defaults to
// maxconn / 4, so with splice (-haproxy-splice) maxpipes is set to
// haproxyMaxPipes, which fits in those 100: without it HAProxy failed to
// start at a 20,000 limit ("Cannot raise FD limit to 24892").
func haproxyConfig(mode string, port int, splice bool, nofile int) string {
	maxconn := min(100000, (nofile-100)/2) // two descriptors per connection
	var b strings.Builder
	fmt.Fprintf(&b, `# generated by detour's bench harness
global
    maxconn %d
    nbthread %d
`, maxconn, runtime.NumCPU())
	if splice {
		fmt.Fprintf(&b, "    maxpipes %d\n", haproxyMaxPipes)
	}
	fmt.Fprintf(&b, `
defaults
    mode %s
    maxconn %d
    timeout connect 5s
    timeout client 300s
    timeout server 300s
`, mode, maxconn)
	if mode == "http" {
		b.WriteString("    timeout http-request 300s\n    timeout http-keep-alive 300s\n    option forwardfor\n")
	}
	if splice {
		b.WriteString("    option splice-auto\n")
	}
	fmt.Fprintf(&b, `
frontend fe
    bind 0.0.0.0:%d transparent
    bind :::%d v6only transparent
    default_backend be

backend be
    server orig 0.0.0.0
`, port, port)
	return b.String()
}

// checkNoRules fails when the router has nftables tables or fwmark policy
// rules, so that "direct" really is the plain routed path.
func (b *bench) checkNoRules(ctx context.Context) error {
	out, err := runIn(ctx, b.tn.Router, 10*time.Second, "nft", "list", "ruleset")
	if err != nil {
		return err
	}
	if strings.Contains(out, "table") {
		return fmt.Errorf("the router still has nftables rules:\n%s", indent(out))
	}
	for _, fam := range []string{"-4", "-6"} {
		out, err := runIn(ctx, b.tn.Router, 10*time.Second, "ip", fam, "rule", "show")
		if err != nil {
			return err
		}
		if strings.Contains(out, "fwmark") {
			return fmt.Errorf("the router still has policy rules:\n%s", indent(out))
		}
	}
	return nil
}
