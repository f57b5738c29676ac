package main

import (
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/detour-proxy/detour/internal/config"
	"github.com/detour-proxy/detour/internal/intercept"
	"github.com/detour-proxy/detour/internal/listen"
)

// listFlag collects a repeatable, comma-separated flag.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error {
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*l = append(*l, p)
		}
	}
	return nil
}

// configFlags are the flags shared by run and rules; each overrides the
// matching key of the -c file only when given.
type configFlags struct {
	fs                                   *flag.FlagSet
	file, mode                           string
	listen, ports, dsts, ifaces, uids    listFlag
	excludeDsts                          listFlag
	tproxyMark, upstreamMark, routeTable string
	tableName                            string
	spoof                                bool
	protocol, admin, logLevel            string
	adminRemote                          bool
	accessLog, accessLogFormat           string
	connectTimeout, idleTimeout, drain   time.Duration
	cleanupInterval, routeTimeout        time.Duration
	headerTimeout, streamIdleTimeout     time.Duration
	httpIdleTimeout                      time.Duration
	useOrigDstHeader                     bool
	maxConns, loops, nice                int
	sniffTimeout                         time.Duration
}

func newConfigFlags(name string, stderr io.Writer, withRun bool) *configFlags {
	f := &configFlags{fs: flag.NewFlagSet(name, flag.ContinueOnError)}
	fs := f.fs
	fs.SetOutput(stderr)
	fs.StringVar(&f.file, "c", "", "YAML config file (flags override its keys)")
	fs.StringVar(&f.mode, "mode", "", "interception mode: tproxy (router/gateway) or redirect (same host) (default tproxy)")
	fs.Var(&f.listen, "listen", "listener ip:port, repeatable (default tproxy 0.0.0.0:15001 and [::]:15001; redirect 127.0.0.1:4999 and [::1]:4999, with --intercept-iface 0.0.0.0:4999 and [::]:4999; IPv4 only where the namespace has no IPv6)")
	fs.Var(&f.ports, "intercept-port", "destination TCP ports and ranges to intercept, comma-separated, like 80,8000-8100 (no ports: no rules)")
	fs.Var(&f.dsts, "intercept-dst", "only intercept these destination CIDRs, comma-separated (default any)")
	fs.Var(&f.excludeDsts, "exclude-dst", "never intercept these destination CIDRs, comma-separated, even inside --intercept-dst")
	fs.Var(&f.ifaces, "intercept-iface", "only intercept traffic arriving on these interfaces, comma-separated (redirect: adds a prerouting redirect for a NAT gateway)")
	fs.Var(&f.uids, "exclude-uid", "redirect mode: never intercept sockets of these uids (the tutorial's owner match)")
	fs.StringVar(&f.tproxyMark, "tproxy-mark", "", "fwmark the tproxy rules set and policy routing matches (default 0x1)")
	fs.StringVar(&f.routeTable, "route-table", "", "policy routing table for the tproxy local route (default 100)")
	fs.StringVar(&f.upstreamMark, "upstream-mark", "", "SO_MARK on detour's upstream sockets, exempted from interception (default 0x2)")
	fs.StringVar(&f.tableName, "table-name", "", "the nftables table (family inet) of the rules; a second detour in one namespace needs its own (default detour)")
	if withRun {
		fs.BoolVar(&f.spoof, "spoof-source", false, "tproxy: connect upstream from the client's IP, so servers see the real client")
		fs.StringVar(&f.protocol, "protocol", "", "auto (sniff), http or tcp (default auto)")
		fs.StringVar(&f.admin, "admin", "", "admin endpoint ip:port or off (default 127.0.0.1:9901); read it with detour status")
		fs.BoolVar(&f.adminRemote, "admin-allow-remote", false, "let --admin listen on a non-loopback address (it reveals traffic)")
		fs.StringVar(&f.accessLog, "access-log", "", "access log: off, stdout or a file path, reopened on SIGUSR1 (default off)")
		fs.StringVar(&f.accessLogFormat, "access-log-format", "", "access log format: text (logfmt), json, envoy (Envoy's default format), istio (Istio's) or an Envoy format string such as '%START_TIME% %REQ(:PATH)% %RESPONSE_CODE%' (default text)")
		fs.StringVar(&f.logLevel, "log-level", "", "debug, info, warn or error (default info)")
		fs.DurationVar(&f.connectTimeout, "connect-timeout", 0, "upstream connect timeout (default 5s)")
		fs.DurationVar(&f.idleTimeout, "idle-timeout", 0, "close L4 connections idle this long (default 1h)")
		fs.DurationVar(&f.drain, "drain-timeout", 0, "on SIGTERM, let connections finish this long (default 15s)")
		fs.DurationVar(&f.cleanupInterval, "cleanup-interval", 0, "remove original-destination hosts unused this long (default 5s)")
		fs.DurationVar(&f.routeTimeout, "route-timeout", 0, "HTTP request timeout, answered with 504 (default 15s)")
		fs.DurationVar(&f.headerTimeout, "header-timeout", 0, "HTTP: close a client whose request headers take longer than this (slowloris; flag HT) (default 10s)")
		fs.DurationVar(&f.httpIdleTimeout, "http-idle-timeout", 0, "HTTP: close a client's keep-alive connection idle this long between requests (at least 10ms) (default 5m)")
		fs.DurationVar(&f.streamIdleTimeout, "stream-idle-timeout", 0, "HTTP: close a connection whose response write stays blocked this long (the client stopped reading), or whose client or upstream sends no byte of a body this long (408 for a request body) (flag SI) (default 5m)")
		fs.DurationVar(&f.sniffTimeout, "sniff-timeout", 0, "auto protocol: wait this long for a silent client's first bytes, then forward at L4 (default 15s)")
		fs.IntVar(&f.maxConns, "max-connections", 0, "at this many open connections, stop accepting: new clients wait in the listen backlog (default 0: no limit)")
		fs.IntVar(&f.loops, "tcp-loops", 0, "epoll loops carrying L4 connections (default 0: one per CPU); a restart changes it")
		fs.IntVar(&f.nice, "nice", 0, "scheduling priority of every detour thread, -20 (runs first) to 19; below 0 needs root; a restart changes it (default 0: as started)")
		fs.BoolVar(&f.useOrigDstHeader, "use-original-dst-header", false, "HTTP: route to the ip:port in x-detour-original-dst-host")
	}
	return f
}

// load builds the config: file first, then the flags that were set.
func (f *configFlags) load() (*config.Config, error) {
	cfg := &config.Config{}
	if f.file != "" {
		c, err := config.Load(f.file)
		if err != nil {
			return nil, err
		}
		cfg = c
	}
	var err error
	f.fs.Visit(func(fl *flag.Flag) {
		if err != nil {
			return
		}
		err = f.apply(cfg, fl.Name)
	})
	if err != nil {
		return nil, err
	}
	// Default listeners follow what this network namespace has.
	cfg.NoIPv6 = listen.Inspect().NoIPv6 != ""
	if err := cfg.Finish(); err != nil {
		return nil, err
	}
	// Finish names keys; this catches anything else the rules would refuse
	// before a listener opens (exit 2, not 1 after "listening").
	if len(cfg.Intercept.Ports) > 0 {
		if err := interceptOptions(cfg).Validate(); err != nil {
			return nil, err
		}
	}
	return cfg, nil
}

func (f *configFlags) apply(cfg *config.Config, name string) error {
	switch name {
	case "mode":
		cfg.Mode = f.mode
	case "listen":
		cfg.Listen = f.listen
	case "intercept-port":
		cfg.Intercept.Ports = nil
		for _, p := range f.ports {
			r, err := config.ParsePortRange(p)
			if err != nil {
				return fmt.Errorf("--intercept-port: %w", err)
			}
			cfg.Intercept.Ports = append(cfg.Intercept.Ports, r)
		}
	case "intercept-dst":
		cfg.Intercept.Destinations = f.dsts
	case "exclude-dst":
		cfg.Intercept.ExcludeDestinations = f.excludeDsts
	case "intercept-iface":
		cfg.Intercept.Interfaces = f.ifaces
	case "exclude-uid":
		cfg.Intercept.ExcludeUIDs = nil
		for _, u := range f.uids {
			n, err := strconv.ParseUint(u, 10, 32)
			if err != nil {
				return fmt.Errorf("--exclude-uid: %q is not a uid: give the number (id -u %s), which needs no passwd entry", u, u)
			}
			cfg.Intercept.ExcludeUIDs = append(cfg.Intercept.ExcludeUIDs, uint32(n))
		}
	case "tproxy-mark", "upstream-mark":
		v := f.tproxyMark
		if name == "upstream-mark" {
			v = f.upstreamMark
		}
		n, err := strconv.ParseUint(v, 0, 32)
		if err != nil || n == 0 {
			return fmt.Errorf("--%s: %q is not a mark (a non-zero number like 0x1)", name, v)
		}
		if name == "tproxy-mark" {
			cfg.Intercept.TProxyMark = config.Mark(n)
		} else {
			cfg.Upstream.Mark = config.Mark(n)
		}
	case "route-table":
		n, err := strconv.Atoi(f.routeTable)
		if err != nil || n <= 0 {
			return fmt.Errorf("--route-table: %q is not a table number", f.routeTable)
		}
		cfg.Intercept.RouteTable = n
	case "table-name":
		cfg.Intercept.TableName = f.tableName
	case "spoof-source":
		cfg.Upstream.SpoofSource = f.spoof
	case "protocol":
		cfg.Protocol = f.protocol
	case "admin":
		cfg.Admin = f.admin
	case "admin-allow-remote":
		cfg.AdminAllowRemote = f.adminRemote
	case "access-log":
		cfg.AccessLog = f.accessLog
	case "access-log-format":
		cfg.AccessLogFormat = f.accessLogFormat
	case "log-level":
		cfg.LogLevel = f.logLevel
	case "connect-timeout":
		cfg.Upstream.ConnectTimeout = config.Duration(f.connectTimeout)
	case "idle-timeout":
		cfg.TCP.IdleTimeout = config.Duration(f.idleTimeout)
	case "drain-timeout":
		cfg.Drain = config.Duration(f.drain)
	case "cleanup-interval":
		cfg.HTTP.CleanupInterval = config.Duration(f.cleanupInterval)
	case "route-timeout":
		cfg.HTTP.RouteTimeout = config.Duration(f.routeTimeout)
	case "header-timeout":
		cfg.HTTP.HeaderTimeout = config.Duration(f.headerTimeout)
	case "http-idle-timeout":
		cfg.HTTP.IdleTimeout = config.Duration(f.httpIdleTimeout)
	case "stream-idle-timeout":
		cfg.HTTP.StreamIdleTimeout = config.Duration(f.streamIdleTimeout)
	case "sniff-timeout":
		cfg.SniffTimeout = config.Duration(f.sniffTimeout)
	case "max-connections":
		cfg.MaxConnections = f.maxConns
	case "tcp-loops":
		cfg.TCP.Loops = f.loops
	case "nice":
		cfg.Nice = f.nice
	case "use-original-dst-header":
		cfg.HTTP.UseOriginalDstHeader = f.useOrigDstHeader
	}
	return nil
}

// interceptOptions maps the config onto the rules package's options.
func interceptOptions(cfg *config.Config) intercept.Options {
	o := intercept.Options{
		Mode:                intercept.Mode(cfg.Mode),
		Ports:               cfg.Intercept.InterceptPorts(),
		Destinations:        cfg.Intercept.DestinationPrefixes,
		ExcludeDestinations: cfg.Intercept.ExcludePrefixes,
		Interfaces:          cfg.Intercept.Interfaces,
		TProxyMark:          uint32(cfg.Intercept.TProxyMark),
		RouteTable:          cfg.Intercept.RouteTable,
		UpstreamMark:        uint32(cfg.Upstream.Mark),
		ExcludeUIDs:         cfg.Intercept.ExcludeUIDs,
		TableName:           cfg.Intercept.TableName,
	}
	for _, a := range cfg.ListenAddrs {
		if a.Addr().Is4() && !o.ListenV4.IsValid() {
			o.ListenV4 = a
		}
		if a.Addr().Is6() && !o.ListenV6.IsValid() {
			o.ListenV6 = a
		}
	}
	return o
}

// setUsage makes fs print help, then its flags, to its output (stdout when
// help was asked for: see parse).
func setUsage(fs *flag.FlagSet, help string) {
	fs.Usage = func() { fmt.Fprint(fs.Output(), help); fs.PrintDefaults() }
}

// parseFlagsOnly is parse for a command that takes no arguments besides
// its flags: a stray one is a usage error naming it.
func parseFlagsOnly(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) (code int, ok bool) {
	if code, ok := parse(fs, args, stdout); !ok {
		return code, false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "detour %s: unexpected argument %q (flags and their values go before it; a list is comma-separated)\n", fs.Name(), fs.Arg(0))
		return exitUsage, false
	}
	return 0, true
}

// parse runs the flag set; help is exit 0, a bad flag exit 2.
//
// Asked for help, the usage goes to stdout, so that `detour run --help |
// less` shows it. A bad flag gets one line on the set's output naming it,
// with the flag it was likely meant to be or the form its value takes,
// instead of flag's own error followed by the whole usage, which scrolls
// the error out of sight.
func parse(fs *flag.FlagSet, args []string, stdout io.Writer) (code int, ok bool) {
	errw := fs.Output()
	fs.SetOutput(io.Discard)
	for _, a := range args {
		if a == "--" {
			break
		}
		if a == "-h" || a == "-help" || a == "--h" || a == "--help" {
			fs.SetOutput(stdout)
		}
	}
	err := fs.Parse(args)
	fs.SetOutput(errw)
	if err == nil {
		return 0, true
	}
	if err == flag.ErrHelp {
		return exitOK, false
	}
	fmt.Fprintf(errw, "detour %s: %s (detour %s --help lists the flags)\n", fs.Name(), flagError(fs, err), fs.Name())
	return exitUsage, false
}

// flagError says what was wrong with a flag in detour's words: flag's
// errors name it with one dash and give "parse error" for a bad value.
func flagError(fs *flag.FlagSet, err error) string {
	msg := err.Error()
	if name, ok := strings.CutPrefix(msg, "flag provided but not defined: -"); ok {
		near := nearestFlags(fs, name)
		if len(near) == 0 {
			return fmt.Sprintf("%s is not a flag", dashed(name))
		}
		for i, n := range near {
			near[i] = dashed(n)
		}
		alts := strings.Join(near, ", ")
		if len(near) > 1 {
			alts = strings.Join(near[:len(near)-1], ", ") + " or " + near[len(near)-1]
		}
		return fmt.Sprintf("%s is not a flag; did you mean %s?", dashed(name), alts)
	}
	if name, ok := strings.CutPrefix(msg, "flag needs an argument: -"); ok {
		return fmt.Sprintf("%s needs a value", dashed(name))
	}
	var value, name string
	if _, e := fmt.Sscanf(msg, "invalid value %q for flag -%s", &value, &name); e != nil {
		if _, e := fmt.Sscanf(msg, "invalid boolean value %q for -%s", &value, &name); e != nil {
			return msg
		}
	}
	name = strings.TrimSuffix(name, ":")
	fl := fs.Lookup(name)
	if fl == nil {
		return msg
	}
	g, _ := fl.Value.(flag.Getter)
	if g == nil {
		return msg
	}
	switch g.Get().(type) {
	case time.Duration:
		return fmt.Sprintf("%s: %q is not a duration (like 5s, 100ms, 1m30s)", dashed(name), value)
	case int:
		return fmt.Sprintf("%s: %q is not a whole number", dashed(name), value)
	case bool:
		return fmt.Sprintf("%s: %q is not true or false (%s alone turns it on)", dashed(name), value, dashed(name))
	}
	return msg
}

// dashed writes a flag as its help does: -c, --mode.
func dashed(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}

// otherNames maps what users of Envoy, HAProxy and iptables reach for to
// detour's flag for it.
var otherNames = map[string]string{
	"config": "c", "config-path": "c", "f": "c",
	"port": "intercept-port", "dport": "intercept-port", "ports": "intercept-port",
	"on-port": "listen", "tproxy-port": "listen", "bind": "listen",
	"uid-owner": "exclude-uid", "exclude-uids": "exclude-uid",
	"keepalive-timeout": "http-idle-timeout", "http-keep-alive": "http-idle-timeout",
	"concurrency": "tcp-loops", "nbthread": "tcp-loops", "maxconn": "max-connections",
	"v": "log-level", "verbose": "log-level", "debug": "log-level", "l": "log-level",
}

// nearestFlags returns the flags of fs that name was likely meant to be:
// another tool's name for one, the closest within two edits, or else
// those it abbreviates or extends (--intercept, --keep-up).
func nearestFlags(fs *flag.FlagSet, name string) []string {
	if n, ok := otherNames[name]; ok && fs.Lookup(n) != nil {
		return []string{n}
	}
	best, bestDist, related := "", 3, []string{}
	fs.VisitAll(func(fl *flag.Flag) {
		if d := editDistance(name, fl.Name); d < bestDist {
			best, bestDist = fl.Name, d
		}
		if len(name) > 1 && (strings.HasPrefix(fl.Name, name) || strings.HasPrefix(name, fl.Name+"-")) {
			related = append(related, fl.Name)
		}
	})
	if best != "" {
		return []string{best}
	}
	return related
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// flagGiven reports whether the flag name was given on the command line,
// even at its default value.
func flagGiven(fs *flag.FlagSet, name string) bool {
	given := false
	fs.Visit(func(fl *flag.Flag) { given = given || fl.Name == name })
	return given
}
