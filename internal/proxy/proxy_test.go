package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/detour-proxy/detour/internal/listen"
	"github.com/detour-proxy/detour/internal/ns"
	"github.com/detour-proxy/detour/internal/upstream"
)

// countingObserver records refusals.
type countingObserver struct {
	nopObserver
	loops atomic.Int64
}

func (o *countingObserver) Refused(reason string) {
	if reason == "loop" {
		o.loops.Add(1)
	}
}

// nsTProxyListener makes a namespace (removed when the test ends) with a
// transparent listener on its loopback: dialing that listener directly is
// a connection whose original destination is the proxy itself.
func nsTProxyListener(t *testing.T, tag string) (*ns.NS, *listen.Listener) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root for a network namespace and IP_TRANSPARENT (CI runs as root)")
	}
	n, err := ns.New(fmt.Sprintf("dt-%s-%d", tag, os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	var ln *listen.Listener
	if err := n.Do(func() (err error) {
		ln, err = listen.Listen(listen.Options{Mode: listen.ModeTProxy, Addr: netip.MustParseAddrPort("127.0.0.1:0")})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return n, ln
}

func openFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestLoopGuardLeaksNothing: a thousand connections whose destination is
// the proxy itself are refused without dialing, and leave no goroutine or
// descriptor behind.
func TestLoopGuardLeaksNothing(t *testing.T) {
	n, ln := nsTProxyListener(t, "loop")
	obs := &countingObserver{}
	// A dialer that fails the test if the guard lets anything through.
	srv := New(Options{Listeners: []*listen.Listener{ln}, Dialer: upstream.New(upstream.Options{}), Protocol: ProtocolTCP, Observer: obs})
	go srv.Serve()
	t.Cleanup(func() { srv.Shutdown(context.Background()) })

	dialer := n.Dialer(nil)
	try := func() {
		c, err := dialer(context.Background(), "tcp", ln.Addr().String())
		if err != nil {
			return // reset before connect returned: closed, as it should be
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = io.ReadAll(c)
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatal("looping connection not closed within 5s")
		}
		c.Close()
	}
	for range 20 {
		try()
	}
	waitFor := func(cond func() bool) bool {
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if cond() {
				return true
			}
		}
		return cond()
	}
	waitFor(func() bool { return obs.loops.Load() == 20 })
	goroutines, fds := runtime.NumGoroutine(), openFDs(t)
	for range 1000 {
		try()
	}
	if !waitFor(func() bool { return obs.loops.Load() == 1020 }) {
		t.Fatalf("loop refusals = %d, want 1020", obs.loops.Load())
	}
	if !waitFor(func() bool { return runtime.NumGoroutine() <= goroutines+2 && openFDs(t) <= fds+2 }) {
		t.Fatalf("after 1000 looping connections: goroutines %d -> %d, fds %d -> %d",
			goroutines, runtime.NumGoroutine(), fds, openFDs(t))
	}
}

func TestSelfAddrs(t *testing.T) {
	s := newSelfAddrs([]uint16{15001}, []netip.Addr{netip.MustParseAddr("198.18.1.1"), netip.IPv6Unspecified()})
	tests := []struct {
		dst  string
		want bool
	}{
		{"198.18.1.1:15001", true},
		{"127.0.0.1:15001", true},
		{"[::1]:15001", true},
		{"0.0.0.0:15001", true},
		{"198.18.2.2:15001", false}, // another host on the proxy's port number: forward it
		{"198.18.1.1:80", false},
		{"127.0.0.1:80", false},
	}
	for _, tt := range tests {
		if got := s.contains(netip.MustParseAddrPort(tt.dst)); got != tt.want {
			t.Errorf("contains(%s) = %v, want %v", tt.dst, got, tt.want)
		}
	}
}

// TestSelfAddrsRefreshWhileScanned: a refresh of the host's addresses does
// not rewrite the slice another connection is scanning (go test -race
// found that it did).
func TestSelfAddrsRefreshWhileScanned(t *testing.T) {
	var local netip.Addr
	if ifAddrs, err := net.InterfaceAddrs(); err == nil {
		for _, ia := range ifAddrs {
			if p, err := netip.ParsePrefix(ia.String()); err == nil && !p.Addr().IsLoopback() && !p.Addr().IsLinkLocalUnicast() {
				local = p.Addr().Unmap()
				break
			}
		}
	}
	if !local.IsValid() {
		t.Skip("skipping: this machine has no address outside loopback to look up")
	}
	s := newSelfAddrs([]uint16{15001}, nil)
	dst := netip.AddrPortFrom(local, 15001)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 200 {
				s.mu.Lock()
				s.fetched = time.Time{} // the next call refreshes
				s.mu.Unlock()
				if !s.contains(dst) {
					t.Errorf("contains(%s) = false for one of the host's addresses", dst)
					return
				}
			}
		})
	}
	wg.Wait()
}

// TestMaxConnsPausesAccepting: at the limit a new client is not accepted
// (it waits in the listen backlog, as under HAProxy's maxconn) and the
// pause is counted; once a connection ends it is accepted and served (here
// by the loop guard, since it dialed the listener itself).
func TestMaxConnsPausesAccepting(t *testing.T) {
	n, ln := nsTProxyListener(t, "limit")
	obs := &limitObserver{}
	srv := New(Options{Listeners: []*listen.Listener{ln}, Dialer: upstream.New(upstream.Options{}),
		Protocol: ProtocolTCP, Observer: obs, MaxConns: 2})
	var held atomic.Int64 // both slots taken, as by two long-lived connections
	hold := func(n int64) { held.Add(n); srv.open.Add(n); srv.conns.Add(int(n)) }
	end := func() { held.Add(-1); srv.release() }
	hold(2)
	go srv.Serve()
	t.Cleanup(func() {
		for held.Load() > 0 {
			end()
		}
		srv.Shutdown(context.Background())
	})

	c, err := n.Dialer(nil)(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err) // the kernel completes the handshake: the backlog
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read at the limit: %v; want it to wait (not accepted, not closed)", err)
	}
	if obs.limited.Load() != 1 || obs.loops.Load() != 0 {
		t.Fatalf("limit pauses = %d, loop refusals = %d; want 1 and 0", obs.limited.Load(), obs.loops.Load())
	}
	end() // one of the two ends
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read after a slot freed: %v; want the loop guard's reset", err)
	}
	// The loop guard's refusal took the freed slot while it ran: a second
	// pause may have begun meanwhile.
	if obs.loops.Load() != 1 || obs.limited.Load() < 1 {
		t.Fatalf("after a slot freed: loops %d, limit pauses %d; want 1 and at least 1", obs.loops.Load(), obs.limited.Load())
	}
}

// TestOutOfDescriptorsPausesAccepting: after connects failed for want of
// descriptors, the accept loops pause (doubling up to a second) and a new
// client waits in the backlog instead of being accepted and lost; after
// the pause it is served (here by the loop guard).
func TestOutOfDescriptorsPausesAccepting(t *testing.T) {
	n, ln := nsTProxyListener(t, "nofd")
	obs := &limitObserver{}
	srv := New(Options{Listeners: []*listen.Listener{ln}, Dialer: upstream.New(upstream.Options{}),
		Protocol: ProtocolTCP, Observer: obs})
	for range 8 { // failures in a row: 5 ms doubling to 640 ms
		srv.outOfDescriptors()
	}
	go srv.Serve()
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	c, err := n.Dialer(nil)(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) || obs.loops.Load() != 0 {
		t.Fatalf("read during the pause: %v (loop refusals %d); want it to wait in the backlog", err, obs.loops.Load())
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) || obs.loops.Load() != 1 {
		t.Fatalf("read after the pause: %v (loop refusals %d); want the loop guard's reset", err, obs.loops.Load())
	}
}

// TestAcceptOutOfDescriptorsCounted: an accept that fails for want of
// descriptors pauses accepting as a connect that failed so does, and is
// counted as such (detour_downstream_accept_paused_total{reason=
// "descriptors"}); it used to back off unseen by the metric. Once
// descriptors are free again the waiting client is served (here by the
// loop guard).
func TestAcceptOutOfDescriptorsCounted(t *testing.T) {
	n, ln := nsTProxyListener(t, "acceptfd")
	obs := &limitObserver{}
	srv := New(Options{Listeners: []*listen.Listener{ln}, Dialer: upstream.New(upstream.Options{}),
		Protocol: ProtocolAuto, Observer: obs})
	c, err := n.Dialer(nil)(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	free, err := unix.Dup(0) // the lowest free descriptor: the next accept's
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(free)
	low := lim
	low.Cur = uint64(free)
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	restored := false
	restore := func() {
		if !restored {
			restored = true
			if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
				t.Fatal(err)
			}
		}
	}
	defer restore()
	go srv.Serve()
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	for deadline := time.Now().Add(2 * time.Second); obs.nofd.Load() == 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	restore()
	if obs.nofd.Load() == 0 {
		t.Errorf("accepts failed with EMFILE, but no pause for want of descriptors was counted")
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) || obs.loops.Load() != 1 {
		t.Fatalf("read once descriptors are free: %v (loop refusals %d); want the loop guard's reset", err, obs.loops.Load())
	}
}

// TestWarnLimiter: one warning per kind per interval; the next one says
// how many were held back.
func TestWarnLimiter(t *testing.T) {
	var w warnLimiter
	t0 := time.Unix(1000, 0)
	steps := []struct {
		kind     warnKind
		at       time.Duration
		ok       bool
		wantMore int
	}{
		{warnLoop, 0, true, 0},
		{warnLoop, time.Second, false, 0},
		{warnLoop, 2 * time.Second, false, 0},
		{warnLimit, 2 * time.Second, true, 0}, // another kind has its own turn
		{warnLoop, warnEvery, true, 2},
		{warnLoop, warnEvery + time.Second, false, 0},
	}
	for i, s := range steps {
		if ok, more := w.allow(s.kind, t0.Add(s.at)); ok != s.ok || more != s.wantMore {
			t.Errorf("step %d: allow = %v, %d; want %v, %d", i, ok, more, s.ok, s.wantMore)
		}
	}
}

type limitObserver struct {
	countingObserver
	limited atomic.Int64
	nofd    atomic.Int64 // pauses for want of descriptors
}

func (o *limitObserver) Paused(reason string) {
	switch reason {
	case "limit":
		o.limited.Add(1)
	case "descriptors":
		o.nofd.Add(1)
	}
}

func TestAcceptBackoff(t *testing.T) {
	ms := time.Millisecond
	tests := []struct {
		name string
		gaps []time.Duration // time since the previous error, per error
		want []time.Duration
	}{
		{"first error waits the minimum", []time.Duration{0}, []time.Duration{5 * ms}},
		{"errors right after the wait double it", []time.Duration{0, 5 * ms, 10 * ms, 20 * ms}, []time.Duration{5 * ms, 10 * ms, 20 * ms, 40 * ms}},
		{"capped at one second", []time.Duration{0, 5 * ms, 10 * ms, 20 * ms, 40 * ms, 80 * ms, 160 * ms, 320 * ms, 640 * ms, time.Second, time.Second},
			[]time.Duration{5 * ms, 10 * ms, 20 * ms, 40 * ms, 80 * ms, 160 * ms, 320 * ms, 640 * ms, time.Second, time.Second, time.Second}},
		{"a quiet period starts over", []time.Duration{0, 5 * ms, 3 * time.Second}, []time.Duration{5 * ms, 10 * ms, 5 * ms}},
		{"a success between errors does not", []time.Duration{0, 6 * ms, 12 * ms, 25 * ms}, []time.Duration{5 * ms, 10 * ms, 20 * ms, 40 * ms}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b acceptBackoff
			now := time.Unix(1000, 0)
			for i, gap := range tt.gaps {
				now = now.Add(gap)
				if got := b.fail(now); got != tt.want[i] {
					t.Fatalf("error %d: wait %v, want %v", i, got, tt.want[i])
				}
			}
		})
	}
}

// TestCutList: cutAll calls every tracked entry's latest stop function
// once, not removed ones, and an entry tracked after cutAll is cut at once.
func TestCutList(t *testing.T) {
	var l cutList
	calls := map[string]int{}
	stop := func(name string) func() { return func() { calls[name]++ } }
	var a, b, c, d cutEntry
	l.track(&a, stop("a-dial"))
	l.track(&b, stop("b"))
	l.track(&c, stop("c"))
	l.track(&a, stop("a-copy")) // the dial finished: a is now cut by its copy
	l.remove(&b)
	l.remove(&b) // twice: harmless
	l.cutAll()
	if calls["a-dial"] != 0 || calls["a-copy"] != 1 || calls["b"] != 0 || calls["c"] != 1 {
		t.Fatalf("after cutAll: %v", calls)
	}
	l.track(&d, stop("d"))
	if calls["d"] != 1 {
		t.Fatalf("entry tracked after cutAll not cut: %v", calls)
	}
	l.remove(&a)
	l.remove(&c)
	l.remove(&d)
	if l.head.next != &l.head || l.head.prev != &l.head {
		t.Fatal("list not empty after removing every entry")
	}
}

// TestDeferAcceptFollowsProtocol: the listeners defer accepting until the
// client's first bytes (TCP_DEFER_ACCEPT) with protocol http only: a
// client of auto or tcp may be waiting for its server's banner. A reload
// that changes the protocol changes it on every listener, and a listener
// added later gets the current setting.
func TestDeferAcceptFollowsProtocol(t *testing.T) {
	newLn := func() *listen.Listener {
		ln, err := listen.Listen(listen.Options{Mode: listen.ModeRedirect, Addr: netip.MustParseAddrPort("127.0.0.1:0")})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		return ln
	}
	deferred := func(ln *listen.Listener) bool {
		rc, err := ln.TCPListener().SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		v := 0
		rc.Control(func(fd uintptr) { v, err = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT) })
		if err != nil {
			t.Fatal(err)
		}
		return v > 0
	}
	a := newLn()
	s := New(Options{Listeners: []*listen.Listener{a}, Protocol: ProtocolHTTP})
	defer s.Shutdown(context.Background())
	b := newLn()
	for i, step := range []struct {
		do   func()
		want bool
	}{
		{func() {}, true},
		{func() { s.Update(Options{Protocol: ProtocolAuto}) }, false},
		{func() { s.Update(Options{Protocol: ProtocolHTTP}) }, true},
		{func() { s.SetListeners([]*listen.Listener{a, b}) }, true},
		{func() { s.Update(Options{Protocol: ProtocolTCP}) }, false},
		{func() { s.Update(Options{}) }, false}, // auto, the default
	} {
		step.do()
		for _, ln := range s.Listeners() {
			if got := deferred(ln); got != step.want {
				t.Errorf("step %d: %v deferred %v, want %v", i, ln.Addr(), got, step.want)
			}
		}
	}
	if len(s.Listeners()) != 2 {
		t.Errorf("%d listeners, want 2", len(s.Listeners()))
	}
}

// recordingObserver keeps the refusals and the ended connections.
type recordingObserver struct {
	nopObserver
	mu      sync.Mutex
	refused []string
	done    []L4Record
}

func (o *recordingObserver) Refused(reason string) {
	o.mu.Lock()
	o.refused = append(o.refused, reason)
	o.mu.Unlock()
}

func (o *recordingObserver) L4Done(rec L4Record) {
	o.mu.Lock()
	o.done = append(o.done, rec)
	o.mu.Unlock()
}

// TestNotInterceptedIsRecorded: a connection that reaches the listener
// without an interception rule is closed, and, like a loop refusal, ends
// with a record (L4Done, flag NR) naming the client and the address it
// dialed, so the access log has it: it used to be only counted.
func TestNotInterceptedIsRecorded(t *testing.T) {
	for _, p := range []Protocol{ProtocolAuto, ProtocolTCP} { // Accept and AcceptRaw
		t.Run(string(p), func(t *testing.T) {
			ln, err := listen.Listen(listen.Options{Mode: listen.ModeRedirect, Addr: netip.MustParseAddrPort("127.0.0.1:0")})
			if err != nil {
				t.Fatal(err)
			}
			obs := &recordingObserver{}
			srv := New(Options{Listeners: []*listen.Listener{ln}, Dialer: upstream.New(upstream.Options{}), Protocol: p, Observer: obs})
			go srv.Serve()
			t.Cleanup(func() { srv.Shutdown(context.Background()) })

			c, err := net.Dial("tcp", ln.Addr().String()) // no NAT rule: no original destination
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetReadDeadline(time.Now().Add(30 * time.Second))
			if n, err := c.Read(make([]byte, 1)); err == nil {
				t.Fatalf("read %d bytes from a connection that was not intercepted; want it closed", n)
			}
			client := netip.MustParseAddrPort(c.LocalAddr().String())
			var done []L4Record
			for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
				obs.mu.Lock()
				done = slices.Clone(obs.done)
				obs.mu.Unlock()
				if len(done) > 0 {
					break
				}
			}
			if len(done) != 1 {
				t.Fatalf("records of a connection that was not intercepted: %+v, want one", done)
			}
			r := done[0]
			if r.Flags != "NR" || r.End != "not intercepted" || !r.NoUpstream || r.Client != client || r.OrigDst != ln.Addr() || r.ID == "" || r.Start.IsZero() {
				t.Errorf("record %+v; want flag NR, end %q, NoUpstream, client %v, original_dst %v, an id and a start", r, "not intercepted", client, ln.Addr())
			}
			obs.mu.Lock()
			defer obs.mu.Unlock()
			if !slices.Equal(obs.refused, []string{"not intercepted"}) {
				t.Errorf("refusals %q, want one, not intercepted", obs.refused)
			}
		})
	}
}
