package metrics

import (
	"net"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/detour-proxy/detour/internal/httpproxy"
	"github.com/detour-proxy/detour/internal/listen"
	"github.com/detour-proxy/detour/internal/proxy"
	"github.com/detour-proxy/detour/internal/upstream"
)

// clock is a settable time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// values gathers reg into "name{l1=v1,l2=v2}" -> value (histograms: count).
func values(t *testing.T, reg prometheus.Gatherer) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, l.GetName()+"="+l.GetValue())
			}
			sort.Strings(ls)
			labels := ""
			if len(ls) > 0 {
				labels = "{" + strings.Join(ls, ",") + "}"
			}
			key := mf.GetName() + labels
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				out[key] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[key] = m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM: // as the text format names them
				out[mf.GetName()+"_count"+labels] = float64(m.GetHistogram().GetSampleCount())
				out[mf.GetName()+"_sum"+labels] = m.GetHistogram().GetSampleSum()
			}
		}
	}
	return out
}

func want(t *testing.T, got map[string]float64, exp map[string]float64) {
	t.Helper()
	for k, v := range exp {
		g, ok := got[k]
		if !ok {
			t.Errorf("%s: missing", k)
			continue
		}
		if g != v {
			t.Errorf("%s = %v, want %v", k, g, v)
		}
	}
}

var (
	client = netip.MustParseAddrPort("198.18.1.2:40000")
	dst80  = netip.MustParseAddrPort("198.18.2.2:80")
	dst22  = netip.MustParseAddrPort("198.18.2.2:22")
	dst23  = netip.MustParseAddrPort("[::ffff:198.18.2.2]:23")
	dst24  = netip.MustParseAddrPort("198.18.2.2:24")
)

func newTest(t *testing.T, o Options) (*Metrics, *prometheus.Registry, *clock) {
	t.Helper()
	reg := prometheus.NewRegistry()
	clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	o.Registry, o.Now = reg, clk.now
	m, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return m, reg, clk
}

func TestNewNeedsRegistry(t *testing.T) {
	if _, err := New(Options{}); err == nil {
		t.Fatal("New without a registry succeeded")
	}
}

func TestNewRegistryHasRuntimeCollectors(t *testing.T) {
	reg := NewRegistry()
	if _, err := New(Options{Registry: reg}); err != nil {
		t.Fatal(err)
	}
	got := values(t, reg)
	for _, name := range []string{"go_goroutines", "process_open_fds"} {
		if _, ok := got[name]; !ok {
			t.Errorf("%s missing from NewRegistry's metrics", name)
		}
	}
	buildInfo := false
	for k := range got {
		buildInfo = buildInfo || strings.HasPrefix(k, "go_build_info{")
	}
	if !buildInfo {
		t.Error("go_build_info missing from NewRegistry's metrics")
	}
	// Two Metrics can't share one registry: duplicate names are an error.
	if _, err := New(Options{Registry: reg}); err == nil {
		t.Error("second New on the same registry succeeded")
	}
}

func TestL4AndRefusals(t *testing.T) {
	m, reg, clk := newTest(t, Options{})
	// 2 good connections to :22, one reset by the client, one refused
	// upstream on :23, one connect timeout on :23, one loop, one not
	// intercepted.
	for i := 0; i < 7; i++ {
		m.Accepted(listen.ModeTProxy)
	}
	m.Refused("not intercepted")
	m.L4Done(proxy.L4Record{OrigDst: dst22, Protocol: "tcp", Flags: "NR", End: "not intercepted", NoUpstream: true})
	m.Refused("loop")
	m.Paused("limit") // not a connection: the clients wait
	m.Paused("limit")
	m.L4Done(proxy.L4Record{OrigDst: dst22, Protocol: "tcp", Flags: "LR", End: "loop refused"})
	for i, fl := range []string{"", "", "DC"} {
		rec := proxy.L4Record{ID: "C" + string(rune('1'+i)), OrigDst: dst22, Protocol: "tls", ConnectDuration: time.Millisecond}
		m.L4Started(rec)
		rec.Sent, rec.Received, rec.Flags, rec.Duration = 10, 100, fl, time.Second
		if i == 2 {
			vals := values(t, reg)
			want(t, vals, map[string]float64{
				`detour_upstream_connections_active{host=198.18.2.2:22,layer=l4}`: 1,
				`detour_downstream_connections_active`:                            3,
			})
		}
		m.L4Done(rec)
	}
	m.L4Done(proxy.L4Record{OrigDst: dst23, Protocol: "tcp", Flags: "UF", End: "connection refused"})
	m.L4Done(proxy.L4Record{OrigDst: dst23, Protocol: "tcp", Flags: "UF", End: "connect timeout"})
	// A client that reset before anything was dialed (a scanner): no
	// upstream connection to count, no destination listed.
	m.Accepted(listen.ModeTProxy)
	m.L4Done(proxy.L4Record{OrigDst: dst24, Protocol: "tcp", Flags: "DC", End: "downstream reset", NoUpstream: true})

	got := values(t, reg)
	want(t, got, map[string]float64{
		`detour_downstream_connections_total{mode=tproxy}`:                    8,
		`detour_downstream_connections_total{mode=redirect}`:                  0,
		`detour_downstream_connections_active`:                                0,
		`detour_downstream_refused_total{reason=loop}`:                        1,
		`detour_downstream_refused_total{reason=not intercepted}`:             1,
		`detour_downstream_accept_paused_total{reason=limit}`:                 2,
		`detour_downstream_accept_paused_total{reason=descriptors}`:           0,
		`detour_downstream_protocol_total{protocol=tls}`:                      3,
		`detour_downstream_protocol_total{protocol=tcp}`:                      3,
		`detour_downstream_protocol_total{protocol=http}`:                     0,
		`detour_tcp_connections_total{flag=-,protocol=tls}`:                   2,
		`detour_tcp_connections_total{flag=DC,protocol=tls}`:                  1,
		`detour_tcp_connections_total{flag=DC,protocol=tcp}`:                  1,
		`detour_tcp_connections_total{flag=UF,protocol=tcp}`:                  2,
		`detour_tcp_connections_total{flag=LR,protocol=tcp}`:                  1,
		`detour_tcp_connections_total{flag=NR,protocol=tcp}`:                  1,
		`detour_tcp_bytes_total{direction=sent}`:                              30,
		`detour_tcp_bytes_total{direction=received}`:                          300,
		`detour_tcp_connection_duration_seconds_count`:                        3,
		`detour_upstream_connect_duration_seconds_count{layer=l4}`:            3,
		`detour_upstream_connect_duration_seconds_count{layer=l7}`:            0,
		`detour_upstream_connections_total{host=198.18.2.2:22,layer=l4}`:      3,
		`detour_upstream_connections_active{host=198.18.2.2:22,layer=l4}`:     0,
		`detour_upstream_connect_failures_total{host=198.18.2.2:22,layer=l4}`: 0,
		`detour_upstream_connections_total{host=198.18.2.2:23,layer=l4}`:      0,
		`detour_upstream_connect_failures_total{host=198.18.2.2:23,layer=l4}`: 2,
		`detour_upstream_timeouts_total{host=198.18.2.2:23,layer=l4}`:         1,
		`detour_cluster_hosts`:                                                0,
	})
	s := m.Summary()
	if s.Accepted != 8 || s.Refused != 2 || s.LoopRefused != 1 || s.Active != 0 || s.Requests != 0 {
		t.Errorf("Summary = %+v", s)
	}
	ds := m.Destinations()
	if len(ds) != 2 || ds[0].Dst != dst22 || ds[0].Connections != 3 || ds[1].Failures != 2 || ds[1].Timeouts != 1 {
		t.Errorf("Destinations = %+v", ds)
	}

	// Unused destinations expire; one with a connection open stays.
	m.L4Started(proxy.L4Record{OrigDst: dst22, Protocol: "tcp"})
	clk.add(DefaultExpire + time.Second)
	got = values(t, reg)
	if _, ok := got[`detour_upstream_connections_total{host=198.18.2.2:23,layer=l4}`]; ok {
		t.Error("destination :23 still listed after it expired")
	}
	if got[`detour_upstream_connections_active{host=198.18.2.2:22,layer=l4}`] != 1 {
		t.Error("destination :22 with an open connection was dropped")
	}
}

func TestHTTPRequestsAndHosts(t *testing.T) {
	hosts := []httpproxy.HostInfo{
		{Dst: dst80, Requests: 5, Active: 1, Open: 2, Idle: 1, Connects: 2, Reuses: 3, Retries: 4, OnLoop: 2},
		{Dst: netip.MustParseAddrPort("198.18.2.2:7003"), Requests: 1, ConnectFailures: 1},
	}
	m, reg, _ := newTest(t, Options{Hosts: func() []httpproxy.HostInfo { return hosts }})
	for _, i := range []httpproxy.RequestInfo{
		{Status: 200, Dst: dst80, Duration: 2 * time.Millisecond, UpstreamTime: time.Millisecond, BodyBytes: 100},
		{Status: 204, Dst: dst80, Duration: 2 * time.Millisecond, UpstreamTime: time.Millisecond},
		{Status: 404, Dst: dst80, Duration: time.Millisecond, UpstreamTime: time.Millisecond, BodyBytes: 9},
		{Status: 503, Dst: hosts[1].Dst, Flags: httpproxy.UpstreamConnectFailure, Duration: time.Millisecond, BodyBytes: 50},
		{Status: 504, Dst: dst80, Flags: httpproxy.UpstreamTimeout, Duration: time.Second, BodyBytes: 24},
		{Status: 0, Dst: dst80, Flags: httpproxy.DownstreamClosed | httpproxy.UpstreamClosed, Duration: time.Millisecond},
		{Status: 508, Dst: dst80, Flags: httpproxy.LoopRefused},
		{Status: 502, Dst: dst80, Flags: httpproxy.UpstreamProtocolError},
	} {
		m.Request(&i)
	}
	m.L7Connect(3 * time.Millisecond)
	m.L7Connect(time.Millisecond)
	var inner fakeL7
	m.L7(&inner).ServeConn(nil, client, dst80, upstream.PreDial{})
	if inner.n != 1 {
		t.Fatal("L7 wrapper did not call through")
	}
	inner.pooled = true
	if !m.L7(&inner).Pooled(client, dst80) {
		t.Fatal("L7 wrapper did not pass Pooled through")
	}
	got := values(t, reg)
	want(t, got, map[string]float64{
		`detour_http_requests_total{code_class=2xx}`:                            2,
		`detour_http_requests_total{code_class=4xx}`:                            1,
		`detour_http_requests_total{code_class=5xx}`:                            4,
		`detour_http_requests_total{code_class=none}`:                           1,
		`detour_http_requests_total{code_class=1xx}`:                            0,
		`detour_http_response_flags_total{flag=UF}`:                             1,
		`detour_http_response_flags_total{flag=UT}`:                             1,
		`detour_http_response_flags_total{flag=UC}`:                             1,
		`detour_http_response_flags_total{flag=DC}`:                             1,
		`detour_http_response_flags_total{flag=LR}`:                             1,
		`detour_http_response_flags_total{flag=UPE}`:                            1,
		`detour_http_request_duration_seconds_count`:                            8,
		`detour_http_upstream_duration_seconds_count`:                           3,
		`detour_upstream_connect_duration_seconds_count{layer=l7}`:              2,
		`detour_upstream_connect_duration_seconds_sum{layer=l7}`:                0.004,
		`detour_upstream_connect_duration_seconds_count{layer=l4}`:              0,
		`detour_http_response_body_bytes_total`:                                 183,
		`detour_downstream_protocol_total{protocol=http}`:                       1,
		`detour_http_connections_active`:                                        0,
		`detour_cluster_hosts`:                                                  2,
		`detour_upstream_requests_total{host=198.18.2.2:80}`:                    5,
		`detour_upstream_requests_active{host=198.18.2.2:80}`:                   1,
		`detour_upstream_connections_total{host=198.18.2.2:80,layer=l7}`:        2,
		`detour_upstream_connections_active{host=198.18.2.2:80,layer=l7}`:       2,
		`detour_upstream_connections_idle{host=198.18.2.2:80}`:                  1,
		`detour_upstream_reused_total{host=198.18.2.2:80}`:                      3,
		`detour_upstream_retries_total{host=198.18.2.2:80}`:                     4,
		`detour_upstream_loop_requests_total{host=198.18.2.2:80}`:               2,
		`detour_upstream_timeouts_total{host=198.18.2.2:80,layer=l7}`:           1,
		`detour_upstream_timeouts_total{host=198.18.2.2:7003,layer=l7}`:         0,
		`detour_upstream_connect_failures_total{host=198.18.2.2:7003,layer=l7}`: 1,
	})
	// Every flag httpproxy names has its series, at 0 before it is seen.
	for i := 0; i < 16; i++ {
		if name := httpproxy.Flags(1 << i).String(); name != "" {
			if _, ok := got[`detour_http_response_flags_total{flag=`+name+`}`]; !ok {
				t.Errorf("no series for flag %s", name)
			}
		}
	}
	if s := m.Summary(); s.Requests != 8 {
		t.Errorf("Summary.Requests = %d, want 8", s.Requests)
	}
}

type fakeL7 struct {
	n      int
	pooled bool
}

func (f *fakeL7) ServeConn(net.Conn, netip.AddrPort, netip.AddrPort, upstream.PreDial) { f.n++ }
func (f *fakeL7) Pooled(netip.AddrPort, netip.AddrPort) bool                           { return f.pooled }

// TestOpenFunc: with Options.Open the active gauge is read from the server.
func TestOpenFunc(t *testing.T) {
	_, reg, _ := newTest(t, Options{Open: func() int64 { return 42 }})
	want(t, values(t, reg), map[string]float64{`detour_downstream_connections_active`: 42})
}

// TestL4BytesFunc: with Options.L4Bytes the byte counters are read from it
// at scrape time (open connections' bytes included), and an ended
// connection's record does not add its bytes a second time.
func TestL4BytesFunc(t *testing.T) {
	sent, received := uint64(1000), uint64(5000)
	m, reg, _ := newTest(t, Options{L4Bytes: func() (uint64, uint64) { return sent, received }})
	want(t, values(t, reg), map[string]float64{
		`detour_tcp_bytes_total{direction=sent}`:     1000,
		`detour_tcp_bytes_total{direction=received}`: 5000,
	})
	rec := proxy.L4Record{OrigDst: dst22, Protocol: "tcp", Sent: 30, Received: 300}
	m.L4Started(rec)
	m.L4Done(rec)
	sent, received = 1030, 5300
	want(t, values(t, reg), map[string]float64{
		`detour_tcp_bytes_total{direction=sent}`:     1030,
		`detour_tcp_bytes_total{direction=received}`: 5300,
	})
}

// TestHotPathAllocations: counting an event allocates nothing once the
// destination exists.
func TestHotPathAllocations(t *testing.T) {
	m, _, _ := newTest(t, Options{})
	ri := httpproxy.RequestInfo{Status: 200, Dst: dst80, Duration: time.Millisecond, UpstreamTime: time.Millisecond, BodyBytes: 10}
	rec := proxy.L4Record{OrigDst: dst22, Protocol: "tcp", Sent: 1, Received: 2}
	m.L4Started(rec)
	m.L4Done(rec)
	if n := testing.AllocsPerRun(100, func() {
		m.Accepted(listen.ModeTProxy)
		m.Request(&ri)
		m.L4Started(rec)
		m.L4Done(rec)
	}); n != 0 {
		t.Errorf("%v allocations per event set, want 0", n)
	}
}

func BenchmarkRequest(b *testing.B) {
	m, err := New(Options{Registry: prometheus.NewRegistry()})
	if err != nil {
		b.Fatal(err)
	}
	ri := httpproxy.RequestInfo{Status: 200, Dst: dst80, Duration: time.Millisecond, UpstreamTime: time.Millisecond, BodyBytes: 10}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.Request(&ri)
		}
	})
}

// TestSetExpire: a reload that changes http.cleanup_interval changes how
// long an unused destination's series stay, both ways.
func TestSetExpire(t *testing.T) {
	for _, c := range []struct {
		name       string
		expire     time.Duration
		after      time.Duration
		wantListed bool
	}{
		{"longer keeps it", time.Minute, 30 * time.Second, true},
		{"longer, then past it", time.Minute, time.Minute + time.Second, false},
		{"zero is the default", 0, DefaultExpire + time.Second, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			m, reg, clk := newTest(t, Options{})
			m.SetExpire(c.expire)
			rec := proxy.L4Record{OrigDst: dst22, Protocol: "tcp"}
			m.L4Started(rec)
			m.L4Done(rec)
			clk.add(c.after)
			_, listed := values(t, reg)[`detour_upstream_connections_total{host=198.18.2.2:22,layer=l4}`]
			if listed != c.wantListed {
				t.Errorf("expire %v, %v later: listed %v, want %v", c.expire, c.after, listed, c.wantListed)
			}
		})
	}
}
