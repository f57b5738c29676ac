// Package metrics counts what detour does, in Prometheus form: downstream
// connections, loop-guard and other refusals, L4 connections by how they
// ended, HTTP requests by status class and response flag, latencies, bytes,
// and per-destination upstream counters.
//
// There is no package-level registry: the caller makes one (NewRegistry
// adds the Go runtime and process collectors), hands it to New, and serves
// it. A Metrics is a proxy.Observer; Request is httpproxy's OnRequest; L7
// wraps the HTTP side to count its connections.
//
//	reg := metrics.NewRegistry()
//	m, err := metrics.New(metrics.Options{Registry: reg, Hosts: l7.Hosts, Open: srv.Open})
//	srv := proxy.New(proxy.Options{Observer: m, HTTP: m.L7(l7), ...})
//	http.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
//
// Counters on the hot path are children of their vectors looked up once, at
// New, so an event costs a few atomic adds and no allocation. Per-host
// upstream counters are read from the original-destination cluster at
// scrape time.
package metrics

import (
	"errors"
	"math/bits"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	dto "github.com/prometheus/client_model/go"

	"github.com/detour-proxy/detour/internal/httpproxy"
	"github.com/detour-proxy/detour/internal/listen"
	"github.com/detour-proxy/detour/internal/proxy"
	"github.com/detour-proxy/detour/internal/upstream"
)

// DefaultExpire is how long an L4 destination with nothing open stays
// listed: the original-destination cluster's default cleanup interval.
const DefaultExpire = 5 * time.Second

// Label values.
const (
	LayerL4 = "l4" // spliced byte streams
	LayerL7 = "l7" // HTTP through the original-destination cluster

	noFlags = "-" // a connection or request that ended without a flag
)

// l4Protocols and l4Flags are the label values counted without a lookup;
// others still work, through the vector.
var (
	l4Protocols = []string{"tcp", "tls"}
	l4Flags     = []string{noFlags, "UF", "UC", "DC", "SI", "DT", "LR", "NR"}
	refusals    = []string{"loop", "not intercepted"}
	pauses      = []string{"limit", "descriptors"}
	modes       = []listen.Mode{listen.ModeTProxy, listen.ModeRedirect}
	codeClasses = []string{"none", "1xx", "2xx", "3xx", "4xx", "5xx", "other"}
)

// Options configures New.
type Options struct {
	// Registry receives every collector; required.
	Registry prometheus.Registerer
	// Hosts lists the original-destination cluster's live hosts; it is
	// called at scrape time. Nil means no L7 hosts.
	Hosts func() []httpproxy.HostInfo
	// L4Bytes returns the bytes L4 connections have forwarded so far, open
	// ones included (tcpproxy.Moved); called at scrape time. Nil counts
	// ended connections' bytes from the events instead, so a long
	// connection shows none until it ends.
	L4Bytes func() (sent, received uint64)
	// Open is the number of downstream connections being handled
	// (proxy.Server.Open); called at scrape time. Nil counts them from the
	// events instead, which misses connections refused without an event.
	Open func() int64
	// PerClientHosts says the cluster keeps one host per destination and
	// client IP (the dialer spoofs the source), so per-host request
	// timeouts are keyed the same way.
	PerClientHosts bool
	// Expire: an L4 destination with no connection open is dropped from
	// the per-destination metrics once unused this long; zero means
	// DefaultExpire.
	Expire time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Metrics counts detour's events. It is safe for concurrent use.
type Metrics struct {
	o Options

	accepted  *prometheus.CounterVec
	acceptedC map[listen.Mode]prometheus.Counter
	active    prometheus.Gauge // only without Options.Open
	refused   *prometheus.CounterVec
	paused    *prometheus.CounterVec
	refusedC  map[string]prometheus.Counter
	detected  *prometheus.CounterVec
	detectedC map[string]prometheus.Counter
	httpConns prometheus.Gauge

	l4Conns    *prometheus.CounterVec
	l4ConnsC   map[[2]string]prometheus.Counter
	l4Sent     prometheus.Counter
	l4Received prometheus.Counter
	l4Duration prometheus.Histogram
	connectDur [2]prometheus.Observer // by layer: l4, l7

	requests     [7]prometheus.Counter  // by codeClasses
	requestFlags [16]prometheus.Counter // by bit of httpproxy.Flags; nil for bits without a name
	reqDuration  prometheus.Histogram
	upDuration   prometheus.Histogram
	respBytes    prometheus.Counter

	mu        sync.Mutex
	dests     map[destKey]*dest
	lastSweep time.Time
}

// destKey names a per-destination entry: an L4 destination, or an L7 host
// (whose other counters live in the cluster) for its request timeouts.
type destKey struct {
	layer  uint8 // 4 or 7
	dst    netip.AddrPort
	client netip.Addr // L7 hosts per client only
}

type dest struct {
	connections, failures, timeouts uint64
	active                          int64
	lastUsed                        time.Time
}

// Destination is one L4 destination's upstream counters.
type Destination struct {
	Dst         netip.AddrPort
	Connections uint64 // upstream connections opened
	Active      int64  // open now
	Failures    uint64 // connects that failed (UF)
	Timeouts    uint64 // of which timed out
	LastUsed    time.Time
}

// NewRegistry returns a registry with the Go runtime, process and build
// information collectors (go_build_info names the module version, as
// `detour version` does), ready for New.
func NewRegistry() *prometheus.Registry {
	r := prometheus.NewRegistry()
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewBuildInfoCollector())
	return r
}

// Latency buckets, in seconds: 100µs to 60s.
var latencyBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

// New creates the metrics and registers them in o.Registry.
func New(o Options) (*Metrics, error) {
	if o.Registry == nil {
		return nil, errors.New("metrics: Options.Registry is required")
	}
	if o.Expire <= 0 {
		o.Expire = DefaultExpire
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	m := &Metrics{o: o, dests: make(map[destKey]*dest)}
	var cs []prometheus.Collector
	add := func(c prometheus.Collector) { cs = append(cs, c) }

	m.accepted = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "detour_downstream_connections_total",
		Help: "Intercepted connections accepted, by interception mode.",
	}, []string{"mode"})
	add(m.accepted)
	m.acceptedC = make(map[listen.Mode]prometheus.Counter)
	for _, md := range modes {
		m.acceptedC[md] = m.accepted.WithLabelValues(string(md))
	}
	activeOpts := prometheus.GaugeOpts{
		Name: "detour_downstream_connections_active",
		Help: "Intercepted connections being handled now.",
	}
	if o.Open != nil {
		add(prometheus.NewGaugeFunc(activeOpts, func() float64 { return float64(o.Open()) }))
	} else {
		m.active = prometheus.NewGauge(activeOpts)
		add(m.active)
	}
	m.refused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "detour_downstream_refused_total",
		Help: "Connections closed before forwarding, by reason: loop (the loop guard), not intercepted.",
	}, []string{"reason"})
	m.paused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "detour_downstream_accept_paused_total",
		Help: "Times accepting paused, the clients waiting in the listen backlog: limit (max_connections open), descriptors (they ran out).",
	}, []string{"reason"})
	add(m.paused)
	for _, r := range pauses {
		m.paused.WithLabelValues(r)
	}
	add(m.refused)
	m.refusedC = make(map[string]prometheus.Counter)
	for _, r := range refusals {
		m.refusedC[r] = m.refused.WithLabelValues(r)
	}
	m.detected = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "detour_downstream_protocol_total",
		Help: "Forwarded connections by detected protocol: http (served at L7), tls and tcp (spliced at L4; counted when they end).",
	}, []string{"protocol"})
	add(m.detected)
	m.detectedC = make(map[string]prometheus.Counter)
	for _, p := range append([]string{"http"}, l4Protocols...) {
		m.detectedC[p] = m.detected.WithLabelValues(p)
	}
	m.httpConns = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "detour_http_connections_active",
		Help: "Downstream connections being served at L7 now.",
	})
	add(m.httpConns)

	m.l4Conns = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "detour_tcp_connections_total",
		Help: "L4 connections ended, by detected protocol and response flag (- for none; see the README).",
	}, []string{"protocol", "flag"})
	add(m.l4Conns)
	m.l4ConnsC = make(map[[2]string]prometheus.Counter)
	for _, p := range l4Protocols {
		for _, f := range l4Flags {
			m.l4ConnsC[[2]string{p, f}] = m.l4Conns.WithLabelValues(p, f)
		}
	}
	if o.L4Bytes != nil {
		const help = "Bytes forwarded by L4 connections, counted as they move: sent is client to server, received server to client."
		for i, dir := range []string{"sent", "received"} {
			add(prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "detour_tcp_bytes_total", Help: help, ConstLabels: prometheus.Labels{"direction": dir},
			}, func() float64 {
				sent, received := o.L4Bytes()
				return float64([2]uint64{sent, received}[i])
			}))
		}
	} else {
		l4Bytes := prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "detour_tcp_bytes_total",
			Help: "Bytes forwarded by ended L4 connections: sent is client to server, received server to client.",
		}, []string{"direction"})
		add(l4Bytes)
		m.l4Sent, m.l4Received = l4Bytes.WithLabelValues("sent"), l4Bytes.WithLabelValues("received")
	}
	m.l4Duration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "detour_tcp_connection_duration_seconds",
		Help:    "Lifetime of ended L4 connections that reached their upstream.",
		Buckets: []float64{.001, .01, .1, 1, 10, 60, 300, 1800, 3600, 6 * 3600},
	})
	add(m.l4Duration)
	connectDur := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "detour_upstream_connect_duration_seconds",
		Help:    "Time to connect upstream connections, by layer: l4 per L4 connection, l7 per connection the cluster opens.",
		Buckets: latencyBuckets,
	}, []string{"layer"})
	add(connectDur)
	m.connectDur = [2]prometheus.Observer{connectDur.WithLabelValues("l4"), connectDur.WithLabelValues("l7")}

	reqs := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "detour_http_requests_total",
		Help: "HTTP requests done, by status class sent to the client (none: the client had gone).",
	}, []string{"code_class"})
	add(reqs)
	for i, c := range codeClasses {
		m.requests[i] = reqs.WithLabelValues(c)
	}
	flags := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "detour_http_response_flags_total",
		Help: "HTTP requests by response flag (UF, UT, UC, UPE, DC, LR, ...; see the README). A request may count under several.",
	}, []string{"flag"})
	add(flags)
	for i := range m.requestFlags {
		if name := httpproxy.Flags(1 << i).String(); name != "" && name != noFlags {
			m.requestFlags[i] = flags.WithLabelValues(name)
		}
	}
	m.reqDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "detour_http_request_duration_seconds",
		Help:    "HTTP request duration, from the request's headers to the end of the response.",
		Buckets: latencyBuckets,
	})
	add(m.reqDuration)
	m.upDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "detour_http_upstream_duration_seconds",
		Help:    "Time from sending a request upstream to its response headers, for requests that got a response.",
		Buckets: latencyBuckets,
	})
	add(m.upDuration)
	m.respBytes = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "detour_http_response_body_bytes_total",
		Help: "HTTP response body bytes written to clients.",
	})
	add(m.respBytes)
	add(hostCollector{m})

	for _, c := range cs {
		if err := o.Registry.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// SetExpire changes Options.Expire from now on (zero: DefaultExpire): a
// reload may change the cluster's cleanup interval, which the per-host
// series follow.
func (m *Metrics) SetExpire(d time.Duration) {
	if d <= 0 {
		d = DefaultExpire
	}
	m.mu.Lock()
	m.o.Expire = d
	m.mu.Unlock()
}

// Expire is the expiry in force (Options.Expire, or SetExpire's).
func (m *Metrics) Expire() time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.o.Expire
}

// Accepted implements proxy.Observer.
func (m *Metrics) Accepted(mode listen.Mode) {
	if c, ok := m.acceptedC[mode]; ok {
		c.Inc()
	} else {
		m.accepted.WithLabelValues(string(mode)).Inc()
	}
	if m.active != nil {
		m.active.Inc()
	}
}

// Refused implements proxy.Observer.
func (m *Metrics) Refused(reason string) {
	if c, ok := m.refusedC[reason]; ok {
		c.Inc()
	} else {
		m.refused.WithLabelValues(reason).Inc()
	}
	// A refusal ends with L4Done, which counts the connection as ended.
}

// Paused implements proxy.Observer.
func (m *Metrics) Paused(reason string) { m.paused.WithLabelValues(reason).Inc() }

// L4Started implements proxy.Observer.
func (m *Metrics) L4Started(rec proxy.L4Record) {
	now := m.o.Now()
	m.mu.Lock()
	d := m.destLocked(destKey{layer: 4, dst: unmap(rec.OrigDst)}, now)
	d.connections++
	d.active++
	d.lastUsed = now
	m.mu.Unlock()
	if rec.ConnectDuration > 0 {
		m.connectDur[0].Observe(rec.ConnectDuration.Seconds())
	}
}

// L7Connect is httpproxy's OnConnect: one upstream connection of the
// cluster, connected in d.
func (m *Metrics) L7Connect(d time.Duration) { m.connectDur[1].Observe(d.Seconds()) }

// L4Done implements proxy.Observer.
func (m *Metrics) L4Done(rec proxy.L4Record) {
	if m.active != nil {
		m.active.Dec()
	}
	flag := rec.Flags
	if flag == "" {
		flag = noFlags
	}
	if c, ok := m.l4ConnsC[[2]string{rec.Protocol, flag}]; ok {
		c.Inc()
	} else {
		m.l4Conns.WithLabelValues(rec.Protocol, flag).Inc()
	}
	if flag == "LR" || flag == "NR" { // refused (loop, not intercepted): no protocol, no upstream
		return
	}
	if c, ok := m.detectedC[rec.Protocol]; ok {
		c.Inc()
	} else {
		m.detected.WithLabelValues(rec.Protocol).Inc()
	}
	if m.l4Sent != nil { // else Options.L4Bytes counts them as they move
		m.l4Sent.Add(float64(rec.Sent))
		m.l4Received.Add(float64(rec.Received))
	}

	if rec.NoUpstream { // ended before a connect was made or failed: nothing upstream to count
		return
	}
	now := m.o.Now()
	m.mu.Lock()
	d := m.destLocked(destKey{layer: 4, dst: unmap(rec.OrigDst)}, now)
	if flag == "UF" {
		d.failures++
		if rec.End == string(upstream.ReasonTimeout) {
			d.timeouts++
		}
	} else {
		d.active--
	}
	d.lastUsed = now
	m.mu.Unlock()
	if flag != "UF" {
		m.l4Duration.Observe(rec.Duration.Seconds())
	}
}

// Request is httpproxy's OnRequest: it counts one finished request.
func (m *Metrics) Request(i *httpproxy.RequestInfo) {
	class := 0
	if i.Status > 0 {
		class = min(i.Status/100, 6)
	}
	m.requests[class].Inc()
	for f := i.Flags; f != 0; f &= f - 1 {
		if c := m.requestFlags[bits.TrailingZeros16(uint16(f))]; c != nil {
			c.Inc()
		}
	}
	m.reqDuration.Observe(i.Duration.Seconds())
	if i.UpstreamTime > 0 {
		m.upDuration.Observe(i.UpstreamTime.Seconds())
	}
	m.respBytes.Add(float64(i.BodyBytes))
	if i.Flags&httpproxy.UpstreamTimeout != 0 {
		k := destKey{layer: 7, dst: unmap(i.Dst)}
		if m.o.PerClientHosts {
			k.client = i.Client.Addr().Unmap()
		}
		now := m.o.Now()
		m.mu.Lock()
		d := m.destLocked(k, now)
		d.timeouts++
		d.lastUsed = now
		m.mu.Unlock()
	}
}

// L7 wraps the HTTP side so that its downstream connections are counted.
func (m *Metrics) L7(next proxy.L7) proxy.L7 { return &l7{next, m} }

type l7 struct {
	next proxy.L7
	m    *Metrics
}

func (w *l7) Pooled(client, origDst netip.AddrPort) bool { return w.next.Pooled(client, origDst) }

func (w *l7) ServeConn(c net.Conn, client, origDst netip.AddrPort, pre upstream.PreDial) {
	w.m.detectedC["http"].Inc()
	w.m.httpConns.Inc()
	defer func() {
		w.m.httpConns.Dec()
		if w.m.active != nil {
			w.m.active.Dec()
		}
	}()
	w.next.ServeConn(c, client, origDst, pre)
}

// destLocked returns the entry for k, creating it; m.mu must be held. It
// sweeps expired L4 entries now and then, so the map stays small even if
// nobody scrapes.
func (m *Metrics) destLocked(k destKey, now time.Time) *dest {
	if d := m.dests[k]; d != nil {
		return d
	}
	if now.Sub(m.lastSweep) >= m.o.Expire {
		m.sweepLocked(now, nil)
	}
	d := &dest{lastUsed: now}
	m.dests[k] = d
	return d
}

// sweepLocked drops L4 entries with nothing open that were unused for
// Expire, and, when live is not nil, L7 entries whose host is gone.
func (m *Metrics) sweepLocked(now time.Time, live map[destKey]bool) {
	m.lastSweep = now
	cutoff := now.Add(-m.o.Expire)
	for k, d := range m.dests {
		switch {
		case k.layer == 4 && d.active <= 0 && d.lastUsed.Before(cutoff):
			delete(m.dests, k)
		case k.layer == 7 && live != nil && !live[k] && d.lastUsed.Before(cutoff):
			delete(m.dests, k)
		}
	}
}

// Destinations lists the L4 destinations seen recently (or with
// connections open), ordered by address.
func (m *Metrics) Destinations() []Destination {
	now := m.o.Now()
	m.mu.Lock()
	m.sweepLocked(now, nil)
	var out []Destination
	for k, d := range m.dests {
		if k.layer != 4 {
			continue
		}
		out = append(out, Destination{Dst: k.dst, Connections: d.connections, Active: d.active,
			Failures: d.failures, Timeouts: d.timeouts, LastUsed: d.lastUsed})
	}
	m.mu.Unlock()
	slices.SortFunc(out, func(a, b Destination) int { return a.Dst.Compare(b.Dst) })
	return out
}

// Summary is a few totals for `detour status`.
type Summary struct {
	Accepted    uint64 `json:"accepted"`     // downstream connections accepted
	Active      int64  `json:"active"`       // being handled now
	Refused     uint64 `json:"refused"`      // closed before forwarding (loop, not intercepted)
	LoopRefused uint64 `json:"loop_refused"` // of which by the loop guard
	Requests    uint64 `json:"http_requests"`
}

// Summary reads the totals from the counters.
func (m *Metrics) Summary() Summary {
	var s Summary
	for _, c := range m.acceptedC {
		s.Accepted += counterValue(c)
	}
	for r, c := range m.refusedC {
		v := counterValue(c)
		s.Refused += v
		if r == "loop" {
			s.LoopRefused = v
		}
	}
	for _, c := range m.requests {
		s.Requests += counterValue(c)
	}
	if m.o.Open != nil {
		s.Active = m.o.Open()
	} else {
		s.Active = int64(gaugeValue(m.active))
	}
	return s
}

func counterValue(c prometheus.Counter) uint64 {
	var d dto.Metric
	if c.Write(&d) != nil {
		return 0
	}
	return uint64(d.GetCounter().GetValue())
}

func gaugeValue(g prometheus.Gauge) float64 {
	var d dto.Metric
	if g.Write(&d) != nil {
		return 0
	}
	return d.GetGauge().GetValue()
}

func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// hostCollector reports per-destination upstream metrics at scrape time:
// the cluster's hosts (layer l7) and the recent L4 destinations (l4).
type hostCollector struct{ m *Metrics }

var (
	descHosts = prometheus.NewDesc("detour_cluster_hosts",
		"Live hosts in the original-destination cluster.", nil, nil)
	descUpCreated = prometheus.NewDesc("detour_upstream_connections_total",
		"Upstream connections opened, per destination host.", []string{"host", "layer"}, nil)
	descUpActive = prometheus.NewDesc("detour_upstream_connections_active",
		"Upstream connections open now, per destination host (l7: pooled idle ones included).", []string{"host", "layer"}, nil)
	descUpIdle = prometheus.NewDesc("detour_upstream_connections_idle",
		"Idle pooled upstream connections, per cluster host.", []string{"host"}, nil)
	descUpReused = prometheus.NewDesc("detour_upstream_reused_total",
		"HTTP requests served on a pooled (reused) upstream connection, per cluster host.", []string{"host"}, nil)
	descUpRetries = prometheus.NewDesc("detour_upstream_retries_total",
		"HTTP requests sent again on another upstream connection after a pooled one failed before any response byte (Envoy's upstream_rq_retry), per cluster host.", []string{"host"}, nil)
	descUpOnLoop = prometheus.NewDesc("detour_upstream_loop_requests_total",
		"HTTP keep-alive requests an epoll loop served whole, per cluster host.", []string{"host"}, nil)
	descUpFailures = prometheus.NewDesc("detour_upstream_connect_failures_total",
		"Upstream connects that failed, per destination host.", []string{"host", "layer"}, nil)
	descUpTimeouts = prometheus.NewDesc("detour_upstream_timeouts_total",
		"Upstream timeouts per destination host: l4 connect timeouts, l7 requests with no response headers in time (UT).", []string{"host", "layer"}, nil)
	descUpRequests = prometheus.NewDesc("detour_upstream_requests_total",
		"HTTP requests routed to each cluster host.", []string{"host"}, nil)
	descUpRequestsActive = prometheus.NewDesc("detour_upstream_requests_active",
		"HTTP requests in flight to each cluster host.", []string{"host"}, nil)
)

func (hostCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descHosts, descUpCreated, descUpActive, descUpIdle, descUpReused,
		descUpRetries, descUpOnLoop, descUpFailures, descUpTimeouts, descUpRequests, descUpRequestsActive} {
		ch <- d
	}
}

func (c hostCollector) Collect(ch chan<- prometheus.Metric) {
	m := c.m
	var hosts []httpproxy.HostInfo
	if m.o.Hosts != nil {
		hosts = m.o.Hosts()
	}
	ch <- prometheus.MustNewConstMetric(descHosts, prometheus.GaugeValue, float64(len(hosts)))

	live := make(map[destKey]bool, len(hosts))
	now := m.o.Now()
	m.mu.Lock()
	timeouts := make([]uint64, len(hosts))
	for i, h := range hosts {
		k := destKey{layer: 7, dst: h.Dst, client: h.Client}
		live[k] = true
		if d := m.dests[k]; d != nil {
			timeouts[i] = d.timeouts
		}
	}
	m.sweepLocked(now, live)
	type l4 struct {
		key string
		d   dest
	}
	l4s := make([]l4, 0, len(m.dests))
	for k, d := range m.dests {
		if k.layer == 4 {
			l4s = append(l4s, l4{k.dst.String(), *d})
		}
	}
	m.mu.Unlock()

	counter, gauge := prometheus.CounterValue, prometheus.GaugeValue
	for i, h := range hosts {
		key := h.Key()
		ch <- prometheus.MustNewConstMetric(descUpCreated, counter, float64(h.Connects), key, LayerL7)
		ch <- prometheus.MustNewConstMetric(descUpActive, gauge, float64(h.Open), key, LayerL7)
		ch <- prometheus.MustNewConstMetric(descUpIdle, gauge, float64(h.Idle), key)
		ch <- prometheus.MustNewConstMetric(descUpReused, counter, float64(h.Reuses), key)
		ch <- prometheus.MustNewConstMetric(descUpRetries, counter, float64(h.Retries), key)
		ch <- prometheus.MustNewConstMetric(descUpOnLoop, counter, float64(h.OnLoop), key)
		ch <- prometheus.MustNewConstMetric(descUpFailures, counter, float64(h.ConnectFailures), key, LayerL7)
		ch <- prometheus.MustNewConstMetric(descUpTimeouts, counter, float64(timeouts[i]), key, LayerL7)
		ch <- prometheus.MustNewConstMetric(descUpRequests, counter, float64(h.Requests), key)
		ch <- prometheus.MustNewConstMetric(descUpRequestsActive, gauge, float64(h.Active), key)
	}
	for _, e := range l4s {
		ch <- prometheus.MustNewConstMetric(descUpCreated, counter, float64(e.d.connections), e.key, LayerL4)
		ch <- prometheus.MustNewConstMetric(descUpActive, gauge, float64(e.d.active), e.key, LayerL4)
		ch <- prometheus.MustNewConstMetric(descUpFailures, counter, float64(e.d.failures), e.key, LayerL4)
		ch <- prometheus.MustNewConstMetric(descUpTimeouts, counter, float64(e.d.timeouts), e.key, LayerL4)
	}
}
