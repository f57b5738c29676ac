package main

import (
	"context"
	"io"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/detour-proxy/detour/internal/config"
	"github.com/detour-proxy/detour/internal/fdtest"
	"github.com/detour-proxy/detour/internal/httpproxy"
)

// TestReloadKeepsCountsOfRequestsInFlight: what a request in flight on the
// old HTTP side counts after a reload (here its connect, which fails once
// the reload is done) must still count once that side is retired. The
// retired side's counters used to be read after its close, which removes
// its hosts: what they counted since the last look (the reload itself,
// or a scrape) was lost, and detour_upstream_connect_failures_total and
// the others went back.
func TestReloadKeepsCountsOfRequestsInFlight(t *testing.T) {
	_, dst := fdtest.FullListener(t, time.Second) // its SYNs are dropped: the connect waits out connect_timeout
	cfg, o, log := quietObservability(t, &config.Config{Admin: "off", Upstream: config.Upstream{ConnectTimeout: config.Duration(time.Second)}})
	dialer := newDialer(cfg)
	newProxy := func() *httpproxy.Proxy {
		p, err := newL7(cfg, dialer, log, func(netip.AddrPort) bool { return false }, o)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		return p
	}
	get := func(addr string) <-chan error {
		got := make(chan error, 1)
		go func() {
			resp, err := http.Get("http://" + addr + "/")
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			got <- err
		}()
		return got
	}
	p1, p2 := newProxy(), newProxy()
	o.serving(nil, p1)
	got := get(serveOne(t, p1, dst))
	// The request is in flight (its host is active) while its connect waits.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(time.Millisecond) {
		if hs := p1.Hosts(); len(hs) == 1 && hs[0].Active == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the request never reached the old HTTP side")
		}
	}
	d := &daemon{cfg: cfg, log: log, obs: o, http: newL7Side(p1, nil), drainEnd: context.Background()}
	d.retireL7(d.replaceL7(p2))
	<-got
	d.drains.Wait()             // the old side drained and closed
	<-get(serveOne(t, p2, dst)) // the host is live again: it lists what it counted before too
	var failures, requests uint64
	for _, h := range o.hosts() {
		if h.Dst == dst {
			failures, requests = h.ConnectFailures, h.Requests
		}
	}
	if requests != 2 || failures != 2 {
		t.Errorf("after the old side retired and one more request: %d requests, %d connect failures; want 2 and 2", requests, failures)
	}
}
