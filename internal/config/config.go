// Package config holds detour's typed configuration: the YAML schema, its
// defaults and its validation. Flags and the file map onto the same Config;
// each package below takes its own Options struct, built here, so only
// cmd/detour knows about YAML.
//
//	cfg, err := config.Load("detour.yaml") // strict: unknown keys are errors
//	cfg.Mode = "redirect"                   // a flag overrides the file
//	err = cfg.Finish()                      // defaults, then validation
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/detour-proxy/detour/internal/accesslog"
	"github.com/detour-proxy/detour/internal/httpproxy"
	"github.com/detour-proxy/detour/internal/intercept"
	"github.com/detour-proxy/detour/internal/nice"
)

// Defaults, documented in the README.
const (
	DefaultTProxyPort     = 15001
	DefaultRedirectPort   = 4999
	DefaultTProxyMark     = 0x1
	DefaultRouteTable     = 100
	DefaultUpstreamMark   = 0x2
	DefaultConnectTimeout = 5 * time.Second
	DefaultIdleTimeout    = time.Hour
	DefaultAdmin          = "127.0.0.1:9901"
	DefaultAccessLog      = "off" // or stdout, or a file path
	DefaultDrainTimeout   = 15 * time.Second
	DefaultSniffTimeout   = 15 * time.Second
)

// Config is everything `detour run` and `detour rules` act on.
type Config struct {
	Mode      string    `yaml:"mode"`   // tproxy | redirect
	Listen    []string  `yaml:"listen"` // ip:port, one per family
	Protocol  string    `yaml:"protocol"`
	Intercept Intercept `yaml:"intercept"`
	Upstream  Upstream  `yaml:"upstream"`
	TCP       TCP       `yaml:"tcp"`
	HTTP      HTTP      `yaml:"http"`
	Admin     string    `yaml:"admin"`
	// AdminAllowRemote lets the admin endpoint listen on a non-loopback
	// address; it reveals traffic and changes the log level.
	AdminAllowRemote bool `yaml:"admin_allow_remote"`
	// AccessLog is off, stdout, or a file path (reopened on SIGUSR1).
	AccessLog       string   `yaml:"access_log"`
	AccessLogFormat string   `yaml:"access_log_format"` // text | json | envoy | istio | an Envoy format string
	LogLevel        string   `yaml:"log_level"`
	Drain           Duration `yaml:"drain_timeout"`
	// MaxConnections bounds concurrent intercepted connections; 0 = none.
	MaxConnections int `yaml:"max_connections"`
	// SniffTimeout: in auto mode, how long a silent client may take to send
	// its first bytes before the connection is forwarded at L4.
	SniffTimeout Duration `yaml:"sniff_timeout"`
	// Nice is the process's scheduling priority, -20 (first) to 19, as
	// HAProxy's `nice`; 0 leaves it as started. Below 0 needs root.
	Nice int `yaml:"nice"`

	// NoIPv6 is set by the caller before Finish when its network namespace
	// has no IPv6: the default listeners are then IPv4 only, since their
	// IPv6 twin could not work there. An explicit listen list is kept.
	NoIPv6 bool `yaml:"-"`

	// Parsed forms, filled by Finish.
	ListenAddrs []netip.AddrPort `yaml:"-"`
	// ListenDefault: listen was not given and Finish filled the defaults.
	ListenDefault bool           `yaml:"-"`
	AdminAddr     netip.AddrPort `yaml:"-"` // invalid when admin is off
}

// Intercept selects the traffic the kernel diverts to detour. With no ports
// detour installs no rules and only serves what reaches its listeners.
type Intercept struct {
	// Ports are ports and inclusive ranges (80, "8000-8100"); a port
	// given twice or in two ranges is an error, ranges may touch.
	Ports        []PortRange `yaml:"ports"`
	Destinations []string    `yaml:"destinations"` // CIDRs
	// ExcludeDestinations (CIDRs) are never intercepted, even when
	// Destinations includes them.
	ExcludeDestinations []string `yaml:"exclude_destinations"`
	Interfaces          []string `yaml:"interfaces"`
	ExcludeUIDs         []uint32 `yaml:"exclude_uids"`
	TProxyMark          Mark     `yaml:"tproxy_mark"`
	RouteTable          int      `yaml:"route_table"`
	TableName           string   `yaml:"table_name"`
	// CheckInterval is how often a run checks that its rules are still
	// installed and puts back what vanished (a firewall's flush).
	CheckInterval Duration `yaml:"check_interval"`

	DestinationPrefixes []netip.Prefix `yaml:"-"`
	ExcludePrefixes     []netip.Prefix `yaml:"-"`
}

// PortRange is an intercepted port (First == Last) or inclusive range.
// YAML writes a port as a number and a range as "first-last", quoted or
// not.
type PortRange intercept.PortRange

// ParsePortRange reads "80" or "8000-8100", as the flag and the file give
// them.
func ParsePortRange(s string) (PortRange, error) {
	first, last, isRange := strings.Cut(s, "-")
	if !isRange {
		last = first
	}
	lo, err1 := strconv.ParseUint(first, 10, 32)
	hi, err2 := strconv.ParseUint(last, 10, 32)
	switch {
	case err1 != nil || err2 != nil:
		return PortRange{}, fmt.Errorf("%q is not a port or port range (like 80 or 8000-8100)", s)
	case lo == 0 || hi == 0 || lo > 65535 || hi > 65535:
		return PortRange{}, fmt.Errorf("%q is not a port or port range: ports are 1-65535", s)
	case lo > hi:
		return PortRange{}, fmt.Errorf("%q is not a port range: it runs backwards; write %d-%d", s, hi, lo)
	}
	return PortRange{uint16(lo), uint16(hi)}, nil
}

// String prints 80 or 8000-8100.
func (r PortRange) String() string { return intercept.PortRange(r).String() }

// MarshalText is String, for logs in JSON.
func (r PortRange) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalYAML reads a port (80) or a range (8000-8100 or "8000-8100").
func (r *PortRange) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: a port is one value (like 80 or 8000-8100), not a list or keys", n.Line)
	}
	p, err := ParsePortRange(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*r = p
	return nil
}

// MarshalYAML writes a port as a number and a range as "first-last".
func (r PortRange) MarshalYAML() (any, error) {
	if r.First == r.Last {
		return r.First, nil
	}
	return r.String(), nil
}

// Contains reports whether port p is in r.
func (r PortRange) Contains(p uint16) bool { return intercept.PortRange(r).Contains(p) }

// InterceptPorts converts the ports for the rules.
func (i *Intercept) InterceptPorts() []intercept.PortRange {
	out := make([]intercept.PortRange, len(i.Ports))
	for j, r := range i.Ports {
		out[j] = intercept.PortRange(r)
	}
	return out
}

// Intercepts reports whether p is one of the intercepted ports.
func (i *Intercept) Intercepts(p uint16) bool {
	return slices.ContainsFunc(i.Ports, func(r PortRange) bool { return r.Contains(p) })
}

// Upstream configures detour's connections to original destinations.
type Upstream struct {
	ConnectTimeout Duration `yaml:"connect_timeout"`
	Mark           Mark     `yaml:"mark"`
	SpoofSource    bool     `yaml:"spoof_source"`
}

// TCP configures L4 forwarding.
type TCP struct {
	IdleTimeout Duration `yaml:"idle_timeout"`
	// Loops is the number of epoll loops (threads' worth of work) that
	// carry L4 connections; 0 means one per CPU Go runs on. Like HAProxy's
	// nbthread or Envoy's --concurrency: fewer loops answer kept-alive
	// connections sooner on a machine the proxy shares, more loops accept
	// new connections faster.
	Loops int `yaml:"loops"`
}

// MaxLoops bounds tcp.loops.
const MaxLoops = 256

// HTTP configures L7 forwarding; see internal/httpproxy.
type HTTP struct {
	CleanupInterval      Duration `yaml:"cleanup_interval"`
	RouteTimeout         Duration `yaml:"route_timeout"`
	UseOriginalDstHeader bool     `yaml:"use_original_dst_header"`
	OriginalDstHeader    string   `yaml:"original_dst_header"`
	XForwardedFor        string   `yaml:"x_forwarded_for"`
	ServerHeader         string   `yaml:"server_header"`
	ServerHeaderMode     string   `yaml:"server_header_mode"`
	MaxRequestHeaderKiB  int      `yaml:"max_request_header_kib"`
	// MaxRequestHeaders bounds a request's header field lines (431).
	MaxRequestHeaders int `yaml:"max_request_headers"`
	// MaxIdleConnsPerHost bounds, each on its own, a host's idle upstream
	// connections in the fast path's pool and in net/http's, and the
	// connections kept by client connections that the epoll loops serve:
	// up to three times as many in all.
	MaxIdleConnsPerHost int `yaml:"max_idle_conns_per_host"`
	// AllowLoopback lets the steering header name a loopback address.
	AllowLoopback bool `yaml:"allow_loopback"`
	// HeaderTimeout bounds reading a request's head (slowloris).
	HeaderTimeout Duration `yaml:"header_timeout"`
	// IdleTimeout closes a client's keep-alive connection idle this long
	// between requests (Envoy's common_http_protocol_options.idle_timeout,
	// HAProxy's timeout http-keep-alive), however it is served.
	IdleTimeout Duration `yaml:"idle_timeout"`
	// StreamIdleTimeout: a client whose response write stays blocked this
	// long (it stopped reading) is closed; so is a request or response
	// body with no byte from its sender for this long (see
	// httpproxy.Options.StreamIdleTimeout).
	StreamIdleTimeout Duration `yaml:"stream_idle_timeout"`
	// DisableFastPath serves every request with net/http and ReverseProxy
	// instead of forwarding common HTTP/1.1 requests on the fast path.
	DisableFastPath bool `yaml:"disable_fast_path"`
	// DisableLoops keeps each fast-path connection on its own goroutine
	// between requests instead of letting the L4 epoll loops serve its
	// keep-alive requests.
	DisableLoops bool `yaml:"disable_loops"`
}

// HTTP defaults and bounds.
const (
	// MaxHTTPRequestHeaderKiB bounds http.max_request_header_kib, as
	// Envoy bounds max_request_headers_kb.
	MaxHTTPRequestHeaderKiB = 8192

	DefaultHTTPMaxRequestHeaders   = 100
	DefaultHTTPMaxIdleConnsPerHost = 1024
	DefaultHTTPHeaderTimeout       = 10 * time.Second
	DefaultHTTPStreamIdleTimeout   = 5 * time.Minute
	DefaultHTTPIdleTimeout         = 5 * time.Minute
	// MinHTTPIdleTimeout bounds http.idle_timeout from below: a client
	// cannot send its next request sooner than that reliably, so a shorter
	// one would close nearly every keep-alive connection as its response
	// ends, under a client about to reuse it (most likely a unit mistyped,
	// 5ms for 5m).
	MinHTTPIdleTimeout = 10 * time.Millisecond
)

// Mark is a firewall mark. YAML takes it as the flags do, in decimal or
// hex, quoted or not (1, 0x1, "0x1"), and /config writes it in hex, as
// nft and ip rule print marks.
type Mark uint32

// UnmarshalYAML reads a number in any base strconv knows (0x1, 1, 0o1).
func (m *Mark) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: a mark is one value (like 0x1), not a list or keys", n.Line)
	}
	v, err := strconv.ParseUint(n.Value, 0, 32)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a mark (a number from 0 to 0xffffffff, like 0x1)", n.Line, n.Value)
	}
	*m = Mark(v)
	return nil
}

// MarshalYAML writes the mark in hex, unquoted.
func (m Mark) MarshalYAML() (any, error) {
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!int", Value: fmt.Sprintf("0x%x", uint32(m))}, nil
}

// Duration is a time.Duration written as "5s", "1h30m" in YAML.
type Duration time.Duration

// UnmarshalYAML parses Go duration syntax.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: a duration is one value (like 5s, 1m30s), not a list or keys", n.Line)
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration (like 5s, 1m30s)", n.Line, n.Value)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes Go duration syntax.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// Load reads a YAML file strictly: unknown keys are errors naming the key.
func Load(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return Parse(b)
}

// Parse decodes YAML strictly.
func Parse(b []byte) (*Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) { // empty file: empty config
		var root yaml.Node
		yaml.Unmarshal(b, &root) // for the keys' names; a syntax error leaves it empty
		msgs := []string{strings.TrimPrefix(err.Error(), "yaml: ")}
		var te *yaml.TypeError
		if errors.As(err, &te) {
			msgs = mapSlice(te.Errors, readable)
		}
		return nil, fmt.Errorf("config: %s", strings.Join(mapSlice(msgs, func(m string) string { return withKey(m, &root) }), "; "))
	}
	if err := dec.Decode(new(yaml.Node)); !errors.Is(err, io.EOF) {
		return nil, errors.New("config: the file holds a second YAML document (after ---), which detour would not read; put all keys in one")
	}
	return &c, nil
}

// sections name each struct of the schema by its key, for error messages.
var sections = map[string]string{
	"config.Config": "", "config.Intercept": "intercept.", "config.Upstream": "upstream.",
	"config.TCP": "tcp.", "config.HTTP": "http.",
}

// kinds say in words what a Go type in yaml.v3's messages accepts.
var kinds = map[string]string{
	"uint16": "a number from 0 to 65535", "uint32": "a number from 0 to 4294967295",
	"int": "a whole number", "bool": "true or false", "string": "a string",
	"[]string": "a list", "[]config.PortRange": "a list of ports", "[]uint32": "a list of numbers",
}

// readable rewrites one of yaml.v3's type errors in the schema's words:
// "line 2: field conect_timeout not found in type config.Upstream"
// becomes "line 2: upstream.conect_timeout is not a key", and "cannot
// unmarshal !!int `70000` into uint16" says what the key takes.
func readable(msg string) string {
	line, rest, ok := strings.Cut(msg, ": ")
	if !ok {
		return msg
	}
	var field, typ string
	if _, err := fmt.Sscanf(rest, "field %s not found in type %s", &field, &typ); err == nil {
		if prefix, ok := sections[typ]; ok {
			return fmt.Sprintf("%s: %s%s is not a key (README lists them all)", line, prefix, field)
		}
	}
	if i := strings.LastIndex(rest, " into "); strings.HasPrefix(rest, "cannot unmarshal ") && i > 0 {
		if prefix, ok := sections[rest[i+len(" into "):]]; ok {
			where := "the file"
			if prefix != "" {
				where = strings.TrimSuffix(prefix, ".")
			}
			return fmt.Sprintf("%s: %s must hold keys (key: value), not a list or a value", line, where)
		}
		if kind, ok := kinds[rest[i+len(" into "):]]; ok {
			value := strings.TrimPrefix(rest[:i], "cannot unmarshal ")
			if _, v, ok := strings.Cut(value, " "); ok { // drop the YAML tag (!!int)
				value = v
			}
			return fmt.Sprintf("%s: %s is not %s", line, value, kind)
		}
	}
	return msg
}

// badValue finds the line and the value in "line 3: `70000` is not ..."
// and `line 3: "5" is not a duration ...`.
var badValue = regexp.MustCompile("^line ([0-9]+): [`\"]([^`\"]*)[`\"] is not ")

// withKey names the key of the value a message is about, which yaml.v3's
// messages leave out: "line 1: intercept.ports: `70000` is not ...". It
// also puts back a value yaml.v3 cut to its first 7 bytes, and says how
// to write one value where a list belongs, as a newcomer often does
// (`listen: 127.0.0.1:4999`).
func withKey(msg string, root *yaml.Node) string {
	m := badValue.FindStringSubmatchIndex(msg)
	if m == nil {
		return msg
	}
	line, _ := strconv.Atoi(msg[m[2]:m[3]])
	key, n := keyOf(root, line, msg[m[4]:m[5]], "")
	if key == "" {
		return msg
	}
	msg = msg[:m[4]] + n.Value + msg[m[5]:]
	if strings.HasSuffix(msg, " is not a list") || strings.HasSuffix(msg, " is not a list of ports") || strings.HasSuffix(msg, " is not a list of numbers") {
		item := strconv.Quote(n.Value)
		if n.ShortTag() == "!!int" {
			item = n.Value
		}
		msg += " (one item is written [" + item + "])"
	}
	at := m[4] - 1 // the opening quote
	return msg[:at] + key + ": " + msg[at:]
}

// keyOf returns the dotted key whose value (or list item) is the scalar v
// on line, and that scalar, or "". A v that yaml.v3 cut short ("127.0.0...")
// matches the value it was cut from.
func keyOf(n *yaml.Node, line int, v, path string) (string, *yaml.Node) {
	switch n.Kind {
	case yaml.DocumentNode, yaml.SequenceNode:
		for _, c := range n.Content {
			if k, s := keyOf(c, line, v, path); k != "" {
				return k, s
			}
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			p := n.Content[i].Value
			if path != "" {
				p = path + "." + p
			}
			if k, s := keyOf(n.Content[i+1], line, v, p); k != "" {
				return k, s
			}
		}
	case yaml.ScalarNode:
		if n.Line == line && path != "" && (n.Value == v || cutFrom(v, n.Value)) {
			return path, n
		}
	}
	return "", nil
}

// cutFrom reports whether v is yaml.v3's shortening of a value over 10
// bytes: its first 7, then "...".
func cutFrom(v, value string) bool {
	short, ok := strings.CutSuffix(v, "...")
	return ok && len(short) == 7 && len(value) > 10 && strings.HasPrefix(value, short)
}

func mapSlice(s []string, f func(string) string) []string {
	out := make([]string, len(s))
	for i, v := range s {
		out[i] = f(v)
	}
	return out
}

// Finish fills defaults and validates. Errors name the key and the fix.
func (c *Config) Finish() error {
	if c.Mode == "" {
		c.Mode = "tproxy"
	}
	if c.Mode != "tproxy" && c.Mode != "redirect" {
		return fmt.Errorf("mode: %q is not a mode (use tproxy or redirect)", c.Mode)
	}
	if c.Protocol == "" {
		c.Protocol = "auto"
	}
	switch c.Protocol {
	case "auto", "http", "tcp":
	default:
		return fmt.Errorf("protocol: %q is not a protocol (use auto, http or tcp)", c.Protocol)
	}
	c.ListenDefault = len(c.Listen) == 0
	if c.ListenDefault {
		c.Listen = c.defaultListen()
	}
	c.ListenAddrs = nil
	for _, l := range c.Listen {
		ap, err := netip.ParseAddrPort(l)
		if err != nil {
			return fmt.Errorf("listen: %q is not ip:port (like 0.0.0.0:%d or [::]:%d)", l, DefaultTProxyPort, DefaultTProxyPort)
		}
		if ap.Port() == 0 && len(c.Intercept.Ports) > 0 {
			return fmt.Errorf("listen: %q needs a fixed port, the interception rules point at it", l)
		}
		for _, had := range c.ListenAddrs {
			if overlap(had, ap) {
				return fmt.Errorf("listen: %s and %s are the same socket; give each address once", had, ap)
			}
		}
		c.ListenAddrs = append(c.ListenAddrs, ap)
	}
	if err := c.Intercept.finish(c.Mode); err != nil {
		return err
	}
	if err := positive("upstream.connect_timeout", &c.Upstream.ConnectTimeout, DefaultConnectTimeout); err != nil {
		return err
	}
	if c.Upstream.Mark == 0 {
		c.Upstream.Mark = DefaultUpstreamMark
	}
	if c.Upstream.Mark == c.Intercept.TProxyMark {
		return fmt.Errorf("upstream.mark: 0x%x equals intercept.tproxy_mark; detour's own upstream packets would be routed to lo — pick different marks", c.Upstream.Mark)
	}
	if c.Upstream.SpoofSource && c.Mode != "tproxy" {
		return fmt.Errorf("upstream.spoof_source: only works in tproxy mode (the replies must come back through detour's rules)")
	}
	if err := positive("tcp.idle_timeout", &c.TCP.IdleTimeout, DefaultIdleTimeout); err != nil {
		return err
	}
	if c.TCP.Loops < 0 || c.TCP.Loops > MaxLoops {
		return fmt.Errorf("tcp.loops: %d: want 0 (one per CPU) to %d", c.TCP.Loops, MaxLoops)
	}
	if c.Admin == "" {
		c.Admin = DefaultAdmin
	}
	if err := c.finishObservability(); err != nil {
		return err
	}
	if c.LogLevel == "" {
		c.LogLevel = "info"
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("log_level: %q is not a level (use debug, info, warn or error)", c.LogLevel)
	}
	if c.MaxConnections < 0 {
		return fmt.Errorf("max_connections: must be 0 (no limit) or positive")
	}
	if c.Nice < nice.Min || c.Nice > nice.Max {
		return fmt.Errorf("nice: %d: want %d (runs first) to %d (runs last); 0 leaves the priority detour started with", c.Nice, nice.Min, nice.Max)
	}
	if err := positive("sniff_timeout", &c.SniffTimeout, DefaultSniffTimeout); err != nil {
		return err
	}
	if err := positive("drain_timeout", &c.Drain, DefaultDrainTimeout); err != nil {
		return err
	}
	if err := c.checkListenFamilies(); err != nil {
		return err
	}
	return c.HTTP.finish()
}

// positive fills an unset duration with its default and rejects a
// negative one.
func positive(key string, d *Duration, def time.Duration) error {
	if *d == 0 {
		*d = Duration(def)
	}
	if *d < 0 {
		return fmt.Errorf("%s: %v is negative; give a positive duration (default %v)", key, time.Duration(*d), def)
	}
	return nil
}

// redirects reports whether redirect mode's rules would take a local
// connection to a: its port is intercepted, its family is (a listener of
// that family, and intercept.destinations, if any, naming one of its
// family), a destination contains it, when destinations are given, and
// no exclusion does. v4 and v6 are the families' first listeners.
func (c *Config) redirects(a, v4, v6 netip.AddrPort) bool {
	ip := a.Addr().Unmap()
	contains := func(p netip.Prefix) bool { return p.Contains(ip) }
	switch {
	case !c.Intercept.Intercepts(a.Port()):
		return false
	case ip.Is4() && !v4.IsValid(), ip.Is6() && !v6.IsValid():
		return false // the family has no rules
	case len(c.Intercept.DestinationPrefixes) > 0 && !slices.ContainsFunc(c.Intercept.DestinationPrefixes, contains):
		return false
	}
	return !slices.ContainsFunc(c.Intercept.ExcludePrefixes, contains)
}

// checkListenFamilies checks what the rules need of the listeners: one per
// family the destinations name, and, for a NAT gateway, not on loopback.
func (c *Config) checkListenFamilies() error {
	var v4, v6 netip.AddrPort
	for _, a := range c.ListenAddrs {
		if a.Addr().Is4() && !v4.IsValid() {
			v4 = a
		}
		if a.Addr().Is6() && !v6.IsValid() {
			v6 = a
		}
	}
	if len(c.Intercept.Ports) == 0 {
		return nil
	}
	for _, p := range c.Intercept.DestinationPrefixes {
		if p.Addr().Is4() && !v4.IsValid() {
			return fmt.Errorf("intercept.destinations: %s is IPv4, but no listen address is: add one like 0.0.0.0:PORT", p)
		}
		if p.Addr().Is6() && !v6.IsValid() && c.NoIPv6 && c.ListenDefault {
			return fmt.Errorf("intercept.destinations: %s is IPv6, but this network namespace has no IPv6, so detour listens on IPv4 only: remove it, or enable IPv6 (`detour check` says how)", p)
		}
		if p.Addr().Is6() && !v6.IsValid() {
			return fmt.Errorf("intercept.destinations: %s is IPv6, but no listen address is: add one like [::]:PORT", p)
		}
	}
	// REDIRECT takes connections to the admin endpoint too when the rules
	// match it (tproxy leaves the router's own addresses alone), and
	// detour refuses them as a loop: detour status would fail.
	if a := c.AdminAddr; c.Mode == "redirect" && a.IsValid() && c.redirects(a, v4, v6) {
		return fmt.Errorf("admin: %s: its port is in intercept.ports, so redirect sends connections to it (detour status, a scrape) to detour's listener, which refuses them; give the admin endpoint a port outside intercept.ports, or add its address to intercept.exclude_destinations", a)
	}
	if c.Mode == "redirect" && len(c.Intercept.Interfaces) > 0 {
		for _, a := range []netip.AddrPort{v4, v6} {
			if a.IsValid() && !a.Addr().IsUnspecified() {
				where := "on one address"
				if a.Addr().IsLoopback() {
					where = "on loopback"
				}
				return fmt.Errorf("listen: %s is %s, but intercept.interfaces redirects the gateway's connections to each interface's own address, and local ones to loopback; listen on the unspecified address (0.0.0.0:%d, [::]:%d)", a, where, a.Port(), a.Port())
			}
		}
	}
	if c.Mode == "redirect" {
		// REDIRECT sends a local connection to the loopback address
		// (127.0.0.1, ::1) at the port of the family's first listener,
		// whatever address that listener has: something must listen there.
		for _, a := range []netip.AddrPort{v4, v6} {
			if !a.IsValid() {
				continue
			}
			lo := netip.IPv6Loopback()
			if a.Addr().Is4() {
				lo = netip.AddrFrom4([4]byte{127, 0, 0, 1})
			}
			if !slices.ContainsFunc(c.ListenAddrs, func(l netip.AddrPort) bool {
				return l.Port() == a.Port() && (l.Addr() == lo || l.Addr().IsUnspecified() && l.Addr().Is4() == lo.Is4())
			}) {
				return fmt.Errorf("listen: %s: REDIRECT sends local connections to %s, where detour would not listen, and refuses them; listen on %s or on the unspecified address",
					a, netip.AddrPortFrom(lo, a.Port()), netip.AddrPortFrom(lo, a.Port()))
			}
		}
	}
	return nil
}

// finishObservability checks the admin endpoint and access log keys.
func (c *Config) finishObservability() error {
	c.AdminAddr = netip.AddrPort{}
	if c.Admin != "off" {
		ap, err := netip.ParseAddrPort(c.Admin)
		if err != nil {
			return fmt.Errorf("admin: %q is not ip:port or off", c.Admin)
		}
		if !ap.Addr().IsLoopback() && !c.AdminAllowRemote {
			return fmt.Errorf("admin: %s is not a loopback address, and the admin endpoint reveals traffic and changes the log level; "+
				"use 127.0.0.1:PORT or [::1]:PORT, or allow it explicitly with --admin-allow-remote (admin_allow_remote: true)", c.Admin)
		}
		for _, l := range c.ListenAddrs {
			if overlap(l, ap) {
				return fmt.Errorf("admin: %s is also a listener (%s); give the admin endpoint its own port", ap, l)
			}
		}
		c.AdminAddr = ap
	}
	if c.AccessLog == "" {
		c.AccessLog = DefaultAccessLog
	}
	if c.AccessLogFormat == "" {
		c.AccessLogFormat = "text"
	}
	if err := accesslog.CheckFormat(accesslog.Format(c.AccessLogFormat)); err != nil {
		return fmt.Errorf("access_log_format: %w", err)
	}
	return nil
}

// defaultListen is one listener per family (IPv4 only when NoIPv6).
func (c *Config) defaultListen() []string {
	v4, v6, port := "0.0.0.0", "[::]", DefaultTProxyPort
	if c.Mode == "redirect" {
		port = DefaultRedirectPort
		if len(c.Intercept.Interfaces) == 0 { // a NAT gateway's redirect targets the interface's address
			v4, v6 = "127.0.0.1", "[::1]"
		}
	}
	l := []string{fmt.Sprintf("%s:%d", v4, port)}
	if !c.NoIPv6 {
		l = append(l, fmt.Sprintf("%s:%d", v6, port))
	}
	return l
}

func (i *Intercept) finish(mode string) error {
	var err error
	if i.DestinationPrefixes, err = prefixes("intercept.destinations", i.Destinations); err != nil {
		return err
	}
	if i.ExcludePrefixes, err = prefixes("intercept.exclude_destinations", i.ExcludeDestinations); err != nil {
		return err
	}
	if err := checkPorts(i.Ports); err != nil {
		return err
	}
	for _, f := range i.Interfaces {
		if err := intercept.CheckIfName(f); err != nil {
			return fmt.Errorf("intercept.interfaces: %w", err)
		}
	}
	if len(i.ExcludeUIDs) > 0 && mode != "redirect" {
		return fmt.Errorf("intercept.exclude_uids: only applies in redirect mode (tproxy sees forwarded packets, which have no local owner)")
	}
	if i.TProxyMark == 0 {
		i.TProxyMark = DefaultTProxyMark
	}
	if i.RouteTable == 0 {
		i.RouteTable = DefaultRouteTable
	}
	if err := intercept.CheckRouteTable(i.RouteTable); err != nil {
		return fmt.Errorf("intercept.route_table: %w", err)
	}
	if i.TableName == "" {
		i.TableName = "detour"
	}
	if err := intercept.CheckTableName(i.TableName); err != nil {
		return fmt.Errorf("intercept.table_name: %w", err)
	}
	if err := positive("intercept.check_interval", &i.CheckInterval, intercept.DefaultCheckInterval); err != nil {
		return err
	}
	// Each check reads the table and the policy routing over netlink; a
	// tiny interval makes that a busy loop (1ns: a whole CPU).
	if time.Duration(i.CheckInterval) < MinCheckInterval {
		return fmt.Errorf("intercept.check_interval: %v is too short; give at least %v (default %v)", time.Duration(i.CheckInterval), MinCheckInterval, intercept.DefaultCheckInterval)
	}
	return nil
}

// prefixes parses CIDRs (or single addresses) of the key.
func prefixes(key string, cidrs []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, d := range cidrs {
		p, err := netip.ParsePrefix(d)
		if err != nil {
			a, aerr := netip.ParseAddr(d)
			if aerr != nil {
				return nil, fmt.Errorf("%s: %q is not a CIDR (like 198.18.2.0/24 or 2001:db8::/32)", key, d)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if p.Masked() != p {
			return nil, fmt.Errorf("%s: %q has host bits set; did you mean %s?", key, d, p.Masked())
		}
		if p.Addr().Is4In6() {
			return nil, fmt.Errorf("%s: %q is IPv4-mapped IPv6, which no packet carries; write it as an IPv4 CIDR", key, d)
		}
		out = append(out, p)
	}
	return out, nil
}

// checkPorts refuses a port given twice, or in two ranges: a typo more
// often than a wish, and nft would merge them out of sight.
func checkPorts(ports []PortRange) error {
	for _, r := range ports {
		if r.First == 0 || r.First > r.Last {
			return fmt.Errorf("intercept.ports: %s is not a port or port range (1-65535, first to last)", r)
		}
	}
	sorted := slices.Clone(ports)
	slices.SortFunc(sorted, func(a, b PortRange) int { return int(a.First) - int(b.First) })
	for j := 1; j < len(sorted); j++ {
		a, b := sorted[j-1], sorted[j]
		switch {
		case a == b && a.First == a.Last:
			return fmt.Errorf("intercept.ports: %s is given twice; give each port once", a)
		case b.First <= a.Last:
			return fmt.Errorf("intercept.ports: %s and %s overlap; give each port once (ranges may touch, like 8000-8099 and 8100-8200)", a, b)
		}
	}
	return nil
}

// MinCheckInterval bounds intercept.check_interval from below.
const MinCheckInterval = 100 * time.Millisecond

func (h *HTTP) finish() error {
	if err := positive("http.cleanup_interval", &h.CleanupInterval, 5*time.Second); err != nil {
		return err
	}
	if err := positive("http.route_timeout", &h.RouteTimeout, 15*time.Second); err != nil {
		return err
	}
	if h.OriginalDstHeader == "" {
		h.OriginalDstHeader = "x-detour-original-dst-host"
	}
	if !httpproxy.ValidHeaderName(h.OriginalDstHeader) {
		return fmt.Errorf("http.original_dst_header: %q is not a header name (letters, digits and !#$%%&'*+-.^_`|~)", h.OriginalDstHeader)
	}
	if h.XForwardedFor == "" {
		h.XForwardedFor = "append"
	}
	if h.XForwardedFor != "append" && h.XForwardedFor != "leave" {
		return fmt.Errorf("http.x_forwarded_for: %q (use append or leave)", h.XForwardedFor)
	}
	if h.ServerHeader == "" {
		h.ServerHeader = "detour"
	}
	if !httpproxy.ValidHeaderValue(h.ServerHeader) {
		return fmt.Errorf("http.server_header: %q holds a control character (a line break, say), which would split the response's head", h.ServerHeader)
	}
	if h.ServerHeaderMode == "" {
		h.ServerHeaderMode = "overwrite"
	}
	switch h.ServerHeaderMode {
	case "overwrite", "append_if_absent", "pass_through":
	default:
		return fmt.Errorf("http.server_header_mode: %q (use overwrite, append_if_absent or pass_through)", h.ServerHeaderMode)
	}
	if h.MaxRequestHeaderKiB == 0 {
		h.MaxRequestHeaderKiB = 60
	}
	if h.MaxRequestHeaderKiB < 0 || h.MaxRequestHeaderKiB > MaxHTTPRequestHeaderKiB {
		return fmt.Errorf("http.max_request_header_kib: %d: want 1 to %d (default 60)", h.MaxRequestHeaderKiB, MaxHTTPRequestHeaderKiB)
	}
	if h.MaxRequestHeaders == 0 {
		h.MaxRequestHeaders = DefaultHTTPMaxRequestHeaders
	}
	if h.MaxRequestHeaders < 0 {
		return fmt.Errorf("http.max_request_headers: must be positive (default %d)", DefaultHTTPMaxRequestHeaders)
	}
	if h.MaxIdleConnsPerHost == 0 {
		h.MaxIdleConnsPerHost = DefaultHTTPMaxIdleConnsPerHost
	}
	if h.MaxIdleConnsPerHost < 0 {
		return fmt.Errorf("http.max_idle_conns_per_host: must be positive (default %d)", DefaultHTTPMaxIdleConnsPerHost)
	}
	if err := positive("http.header_timeout", &h.HeaderTimeout, DefaultHTTPHeaderTimeout); err != nil {
		return err
	}
	if err := positive("http.idle_timeout", &h.IdleTimeout, DefaultHTTPIdleTimeout); err != nil {
		return err
	}
	if time.Duration(h.IdleTimeout) < MinHTTPIdleTimeout {
		return fmt.Errorf("http.idle_timeout: %v is too short; give at least %v (default %v)", time.Duration(h.IdleTimeout), MinHTTPIdleTimeout, DefaultHTTPIdleTimeout)
	}
	return positive("http.stream_idle_timeout", &h.StreamIdleTimeout, DefaultHTTPStreamIdleTimeout)
}

// String prints Go duration syntax.
func (d Duration) String() string { return time.Duration(d).String() }

// overlap reports whether two listening addresses would be the same
// socket: the same port, and the same address or a wildcard of the same
// family (a [::] listener is IPv6-only here, see internal/listen).
func overlap(a, b netip.AddrPort) bool {
	if a.Port() != b.Port() || a.Port() == 0 || a.Addr().Is4() != b.Addr().Is4() {
		return false
	}
	return a.Addr() == b.Addr() || a.Addr().IsUnspecified() || b.Addr().IsUnspecified()
}
