// Package proxy is detour's connection path: it accepts intercepted
// connections from the listeners, refuses ones that would loop back into
// detour, decides between L4 and L7, and forwards each to its original
// destination.
//
//	srv := proxy.New(proxy.Options{Listeners: lns, Dialer: d, Protocol: proxy.ProtocolTCP, Logger: log})
//	go srv.Serve()
//	...
//	srv.Shutdown(drainCtx) // stop accepting, let connections finish, then cut them
package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/detour-proxy/detour/internal/listen"
	"github.com/detour-proxy/detour/internal/tcpproxy"
	"github.com/detour-proxy/detour/internal/upstream"
)

// Protocol selects how intercepted connections are forwarded.
type Protocol string

const (
	ProtocolAuto Protocol = "auto" // sniff: HTTP/1.x and h2c go to L7, the rest to L4
	ProtocolHTTP Protocol = "http" // everything to L7
	ProtocolTCP  Protocol = "tcp"  // everything to L4
)

// L7 serves connections that carry HTTP. pre is the connect to origDst
// made while sniffing, if any: its open connection is used first; its
// error answers the first request (instead of a second connect attempt).
//
// Pooled reports whether a request to origDst would find an idle upstream
// connection: that destination has answered HTTP, and an HTTP server never
// speaks first, so auto mode does not connect while it sniffs. Without this,
// every short-lived client connection in auto mode opened an upstream
// connection of its own, which L7 left unused for the pooled one.
type L7 interface {
	ServeConn(c net.Conn, client, origDst netip.AddrPort, pre upstream.PreDial)
	Pooled(client, origDst netip.AddrPort) bool
}

// Options configures a Server.
type Options struct {
	Listeners []*listen.Listener
	Dialer    *upstream.Dialer
	Protocol  Protocol
	TCP       tcpproxy.Options
	HTTP      L7 // required unless Protocol is tcp
	// SniffTimeout bounds the wait for a silent client's first bytes in
	// auto mode before the connection is treated as L4; default
	// DefaultSniffTimeout. A server that speaks first never waits for it,
	// so it can be long: it only decides for clients that are slow to
	// send their first bytes, as Envoy's listener filter timeout does.
	SniffTimeout time.Duration
	// MaxConns bounds concurrent connections: at it, accepting pauses and
	// new clients wait in the listen backlog (Observer.Paused "limit").
	// Zero means no limit.
	MaxConns int
	// Observer receives connection events for metrics and access logs.
	Observer Observer
	// UpstreamLocal fills L4Record.UpstreamLocal, at one getsockname per
	// L4 connection: set it when an access log prints it, so that L4's
	// system calls per connection stay as they were without one. Like
	// Observer, it is fixed by New.
	UpstreamLocal bool
	Logger        *slog.Logger
}

// DefaultSniffTimeout is Envoy's default listener filter timeout.
const DefaultSniffTimeout = 15 * time.Second

// Observer is told about each connection; implementations must be fast and
// safe for concurrent use.
type Observer interface {
	// Accepted is called for every accepted connection.
	Accepted(mode listen.Mode)
	// Refused is called when a connection is closed before forwarding:
	// reason is "loop" or "not intercepted". It is followed by L4Done
	// with Flags "LR" or "NR", so access logs can name it.
	Refused(reason string)
	// Paused is called when an accept loop stops accepting for a while,
	// clients waiting in the listen backlog meanwhile: reason is "limit"
	// (MaxConns open) or "descriptors" (an accept or a connect ran out of
	// them).
	Paused(reason string)
	// L4Started is called when an L4 connection's upstream is connected
	// and copying begins; rec has no byte counts or end yet. Every
	// L4Started is followed by one L4Done for the same rec.ID.
	L4Started(rec L4Record)
	// L4Done is called when an L4 connection ends (also after a failed
	// upstream connect, Flags "UF", a loop refusal, Flags "LR", a
	// connection that was not intercepted, Flags "NR", and an end before
	// any upstream connection was made, NoUpstream).
	L4Done(rec L4Record)
}

// L4Record describes one finished L4 connection.
type L4Record struct {
	ID              string
	Start           time.Time
	Client, OrigDst netip.AddrPort
	// UpstreamLocal is the upstream connection's local address (with
	// spoof_source, the client's IP), when Options.UpstreamLocal asks for
	// it; zero when no connection was made.
	UpstreamLocal   netip.AddrPort
	Protocol        string // detected: tcp, tls, ...
	SNI             string
	Sent, Received  int64
	Duration        time.Duration
	ConnectDuration time.Duration
	End             string // tcpproxy.End or upstream failure reason
	Flags           string // Envoy-style response flags: UF, UC, DC, ...
	// NoUpstream: it ended before an upstream connection was made (the
	// client reset, or the drain cut it, while it was sniffed or its
	// connect was under way), so L4Started was not called for it, as for
	// UF and LR.
	NoUpstream bool
}

// Server runs the accept loops and the per-connection path.
type Server struct {
	cur     atomic.Pointer[Options] // settings for new connections (Update swaps them)
	obs     Observer
	log     *slog.Logger
	upLocal bool // Options.UpstreamLocal
	self    atomic.Pointer[selfAddrs]

	mu      sync.Mutex
	lns     map[netip.AddrPort]*listen.Listener
	serving bool
	stopped chan struct{} // closed by Shutdown once no accept loop runs

	ids   atomic.Uint64
	open  atomic.Int64 // connections being handled
	conns sync.WaitGroup

	// The accept loops hold back while MaxConns are open or descriptors
	// ran out (waitForRoom).
	freed    chan struct{} // a connection ended: a full server may accept again
	fdsMu    sync.Mutex
	fds      acceptBackoff // after connects that failed for want of descriptors
	fdsUntil atomic.Int64  // unix ns: accept nothing before; 0 when no pause is set
	warns    warnLimiter   // per-connection warnings, at most one per interval each

	// connCtx is canceled when the drain period ends, cutting what is left
	// of auto mode's sniffing and dialing; live cuts the L4 connections
	// (and protocol tcp's dials), without registering each one on a
	// shared context.
	connCtx    context.Context
	cancelCtx  context.CancelFunc
	live       cutList
	pipes      *tcpproxy.Pipes // lent to the L4 copies for bulk bursts
	acceptDone sync.WaitGroup
	closing    atomic.Bool
}

// New prepares a Server; Serve starts it.
func New(o Options) *Server {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Observer == nil {
		o.Observer = nopObserver{}
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{obs: o.Observer, log: o.Logger, upLocal: o.UpstreamLocal, connCtx: ctx, cancelCtx: cancel, pipes: tcpproxy.NewPipes(),
		lns: map[netip.AddrPort]*listen.Listener{}, stopped: make(chan struct{}), freed: make(chan struct{}, 1)}
	for _, l := range o.Listeners {
		s.lns[l.Addr()] = l
	}
	s.Update(o)
	s.updateSelf()
	return s
}

// Update replaces the forwarding settings (Dialer, Protocol, TCP, HTTP,
// SniffTimeout, MaxConns) for connections accepted from now on; open
// connections keep the settings they started with. Listeners, Observer,
// UpstreamLocal and Logger are not changed here (see SetListeners).
func (s *Server) Update(o Options) {
	if o.Protocol == "" {
		o.Protocol = ProtocolAuto
	}
	if o.SniffTimeout <= 0 {
		o.SniffTimeout = DefaultSniffTimeout
	}
	o.Listeners, o.Observer, o.UpstreamLocal, o.Logger = nil, s.obs, s.upLocal, s.log
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cur.Store(&o)
	for _, l := range s.lns {
		s.deferAcceptLocked(l)
	}
}

// deferAcceptLocked sets TCP_DEFER_ACCEPT on l for protocol http, whose
// clients speak first, and clears it otherwise (auto and tcp forward
// protocols whose server may speak first). With it, a new connection is
// accepted with its request already there: no read that finds nothing
// and waits (new HTTP connections/s 1.03-1.08 x, detour's CPU per
// connection 0.84-0.90 x, bench/RESULTS.md).
func (s *Server) deferAcceptLocked(l *listen.Listener) {
	on := s.cur.Load().Protocol == ProtocolHTTP
	if err := l.SetDeferAccept(on); err != nil {
		s.log.Warn("could not set the listener's TCP_DEFER_ACCEPT; connections are accepted before their first bytes", "listener", l.Addr(), "on", on, "err", err)
	}
}

// SetListeners makes lns the set of listeners: new ones start accepting,
// ones no longer present are closed; listeners present in both keep
// accepting without a gap.
func (s *Server) SetListeners(lns []*listen.Listener) {
	s.mu.Lock()
	defer s.mu.Unlock()
	keep := map[netip.AddrPort]bool{}
	for _, l := range lns {
		keep[l.Addr()] = true
		if _, ok := s.lns[l.Addr()]; ok {
			continue
		}
		s.lns[l.Addr()] = l
		s.deferAcceptLocked(l)
		if s.serving {
			s.acceptDone.Add(1)
			go s.acceptLoop(l)
		}
	}
	for addr, l := range s.lns {
		if !keep[addr] {
			l.Close()
			delete(s.lns, addr)
		}
	}
	s.updateSelfLocked()
}

// Listeners returns the current listeners.
func (s *Server) Listeners() []*listen.Listener {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*listen.Listener, 0, len(s.lns))
	for _, l := range s.lns {
		out = append(out, l)
	}
	return out
}

func (s *Server) updateSelf() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.updateSelfLocked()
}

func (s *Server) updateSelfLocked() {
	var ports []uint16
	var addrs []netip.Addr
	for _, l := range s.lns {
		ports = append(ports, l.Addr().Port())
		addrs = append(addrs, l.Addr().Addr())
	}
	s.self.Store(newSelfAddrs(ports, addrs))
}

// IsSelf reports whether dst is one of the server's own listening
// addresses: forwarding there would loop.
func (s *Server) IsSelf(dst netip.AddrPort) bool { return s.self.Load().contains(dst) }

// Open is the number of connections being handled now.
func (s *Server) Open() int64 { return s.open.Load() }

// Serve accepts on every listener until Shutdown; it returns when all
// accept loops have stopped.
func (s *Server) Serve() {
	s.mu.Lock()
	s.serving = true
	for _, l := range s.lns {
		s.acceptDone.Add(1)
		go s.acceptLoop(l)
	}
	s.mu.Unlock()
	<-s.stopped
}

// Shutdown stops accepting, waits for open connections until ctx ends, then
// cuts the rest. It returns the number of connections that had to be cut.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if s.closing.Swap(true) {
		s.mu.Unlock()
		return errors.New("proxy: Shutdown called twice")
	}
	for _, l := range s.lns {
		l.Close()
	}
	s.mu.Unlock()
	s.acceptDone.Wait()
	close(s.stopped)
	done := make(chan struct{})
	go func() { s.conns.Wait(); close(done) }()
	defer s.pipes.Close() // every copy has ended
	select {
	case <-done:
		s.cutConns()
		return nil
	case <-ctx.Done():
		s.cutConns()
		<-done
		return fmt.Errorf("drain period ended with connections open; they were closed")
	}
}

// cutConns cuts every connection still open.
func (s *Server) cutConns() {
	s.cancelCtx()
	s.live.cutAll()
}

// acceptLoop accepts until the listener closes. Running out of file
// descriptors pauses every loop (outOfDescriptors); other errors back off
// instead of spinning.
func (s *Server) acceptLoop(l *listen.Listener) {
	defer s.acceptDone.Done()
	var backoff acceptBackoff
	for {
		s.waitForRoom()
		// The settings when the wait began serve the connection: protocol
		// tcp takes it as a bare descriptor, which only L4 can serve.
		o := s.cur.Load()
		var c *listen.Conn
		var err error
		if o.Protocol == ProtocolTCP {
			c, err = l.AcceptRaw()
		} else {
			c, err = l.Accept()
		}
		if errors.Is(err, listen.ErrNotIntercepted) {
			s.notIntercepted(l, c)
			continue
		}
		if err != nil {
			if s.closing.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				// Out of descriptors, as a connect can be: every loop
				// pauses (counted as such, Observer.Paused) while the
				// client waits in the backlog.
				s.outOfDescriptors()
				continue
			}
			wait := backoff.fail(time.Now())
			if ok, more := s.warns.allow(warnAccept, time.Now()); ok {
				s.log.Error("accept failed; backing off", "listener", l.Addr(), "err", err, "backoff", wait, "more_since_last_warning", more)
			}
			time.Sleep(wait)
			continue
		}
		s.obs.Accepted(l.Mode())
		// A reload while Accept waited: the new settings serve the
		// connection, if they take the kind of socket it was accepted as.
		if cur := s.cur.Load(); cur != o && (cur.Protocol == ProtocolTCP) == (o.Protocol == ProtocolTCP) {
			o = cur
		}
		s.open.Add(1)
		s.conns.Add(1)
		go s.handle(o, c)
	}
}

// notIntercepted accounts for c, a connection that reached listener l
// without an interception rule (no original destination), which Accept
// closed: counted, warned about now and then, and, as the loop guard's
// refusals are, recorded with an end and a flag (NR: no route, as Envoy
// names a connection no filter chain takes), so that the access log has
// every connection detour closed.
func (s *Server) notIntercepted(l *listen.Listener, c *listen.Conn) {
	s.obs.Accepted(l.Mode())
	s.obs.Refused("not intercepted")
	id := "C" + strconv.FormatUint(s.ids.Add(1), 10)
	if ok, more := s.warns.allow(warnNotIntercepted, time.Now()); ok {
		s.log.Warn("closed a connection that was not redirected (no original destination); is the listener reachable directly?",
			"conn", id, "client", c.Client, "listener", l.Addr(), "more_since_last_warning", more)
	}
	s.obs.L4Done(L4Record{ID: id, Start: time.Now(), Client: c.Client, OrigDst: c.OrigDst, Protocol: "tcp",
		End: "not intercepted", Flags: "NR", NoUpstream: true})
}

// waitForRoom holds an accept loop back while MaxConns connections are
// open, and for a while after a connect failed for want of descriptors
// (each connection needs two; an accept needs one, so every client
// accepted then would be lost). The clients wait in the listen backlog
// meanwhile, as under HAProxy's maxconn, instead of being accepted only
// to be closed.
func (s *Server) waitForRoom() {
	for paused := false; !s.closing.Load(); {
		if until := s.fdsUntil.Load(); until != 0 { // read the clock only after a pause was set
			if wait := time.Until(time.Unix(0, until)); wait > 0 {
				time.Sleep(min(wait, 100*time.Millisecond))
				continue
			}
			s.fdsUntil.CompareAndSwap(until, 0)
		}
		limit := s.cur.Load().MaxConns
		if limit <= 0 || s.open.Load() < int64(limit) {
			return
		}
		if !paused {
			paused = true
			s.obs.Paused("limit")
		}
		if ok, more := s.warns.allow(warnLimit, time.Now()); ok {
			s.log.Warn("connection limit reached; new connections wait in the listen backlog", "limit", limit, "more_since_last_warning", more)
		}
		select { // a release, or a reload that raised the limit
		case <-s.freed:
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// outOfDescriptors holds the accept loops back after an accept or a
// connect failed with EMFILE or ENFILE, doubling the pause while failures
// go on.
func (s *Server) outOfDescriptors() {
	s.fdsMu.Lock()
	now := time.Now()
	wait := s.fds.fail(now)
	s.fdsUntil.Store(now.Add(wait).UnixNano())
	s.fdsMu.Unlock()
	s.obs.Paused("descriptors")
	if ok, more := s.warns.allow(warnDescriptors, now); ok {
		s.log.Error("out of file descriptors: accepting paused; raise the limit (ulimit -n, LimitNOFILE) or lower max_connections", "pause", wait, "more_since_last_warning", more)
	}
}

// acceptBackoff spaces out accepts after errors. It is not reset by a
// successful accept: with descriptors exhausted, every failure is followed
// by one accept that takes the descriptor the last refused connection freed,
// so only a quiet period (longer than the longest wait) starts it over.
type acceptBackoff struct {
	wait    time.Duration
	lastErr time.Time
}

const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

// fail records an accept error at now and returns how long to wait.
func (b *acceptBackoff) fail(now time.Time) time.Duration {
	if b.lastErr.IsZero() || now.Sub(b.lastErr) > b.wait+acceptBackoffMax {
		b.wait = acceptBackoffMin
	} else {
		b.wait = min(2*b.wait, acceptBackoffMax)
	}
	b.lastErr = now
	return b.wait
}

// handle runs one connection's path up to the start of its L4 copy, or
// the whole of it for L7 and refused connections, with the settings o of
// when it was accepted. An L4 connection goes on in tcpproxy's event loop,
// which connects it and releases it when it ends, so that this goroutine
// and its deep stack (dial, logging) are not kept for the connection's
// lifetime. With protocol tcp the connection is a bare descriptor
// (listen.Listener.AcceptRaw): no net.TCPConn is made for either side.
//
// L7 is served from here, once route has returned what it decided: an
// idle HTTP connection keeps its goroutine and its stack, which stays at
// 8 KiB only while the deepest request path (serving, then the metrics and
// the access log) fits in it beneath this frame; with route's, forward's
// and forwardSniffed's frames below it, it grew to 16 KiB (auto mode's idle
// memory, bench/RESULTS.md 2026-12-05 session 15; TestIdleHTTPStacks).
func (s *Server) handle(o *Options, c *listen.Conn) {
	if c.TCPConn != nil { // auto mode's connect or L7 lies ahead; a bare descriptor's way stays shallow
		presizeStack()
	}
	r := s.route(o, c)
	switch r.next {
	case copying:
		return // the copy releases it
	case toL7:
		s.serveL7(o, r.log, c, r.pre)
	}
	s.release()
}

// routed is what route decided for a connection.
type routed struct {
	next next
	log  *connLog
	pre  upstream.PreDial // toL7: the connect made while sniffing, if any
}

// next is where a routed connection goes.
type next uint8

const (
	finished next = iota // refused, or its connect failed: release it
	copying              // an L4 copy took it over and releases it
	toL7                 // the HTTP side serves it (handle)
)

// presizeStack grows the calling goroutine's stack to 8 KiB, enough for
// the dial or the observers, while the goroutine is still shallow. A goroutine starts with
// a small stack (the average its kind needed)
// and the dial, deep in net, would make it grow twice; a growth copies the
// stack and walks every frame on it, so growing at once, with one or two
// frames, costs much less.
//
//go:noinline
func presizeStack() {
	var pad [5 << 10]byte
	stackSink(&pad)
}

//go:noinline
func stackSink(*[5 << 10]byte) {}

// release accounts for a connection that is done.
func (s *Server) release() {
	s.open.Add(-1)
	s.conns.Done()
	select {
	case s.freed <- struct{}{}:
	default:
	}
}

// route refuses a connection to detour itself and picks L4 or L7 for the
// others.
func (s *Server) route(o *Options, c *listen.Conn) routed {
	log := newConnLog(s.log, s.ids.Add(1))
	if log.debug {
		log.get().Debug("accepted", "client", c.Client, "original_dst", c.OrigDst, "learned_by", c.How)
	}

	if s.IsSelf(c.OrigDst) {
		if ok, more := s.warns.allow(warnLoop, time.Now()); ok || log.debug {
			log.get().Warn("refused a connection to detour's own listener (loop); exempt detour's traffic or don't dial the proxy port directly",
				"client", c.Client, "original_dst", c.OrigDst, "more_since_last_warning", more)
		}
		s.obs.Refused("loop")
		c.Reset()
		s.obs.L4Done(L4Record{ID: log.id, Start: time.Now(), Client: c.Client, OrigDst: c.OrigDst, Protocol: "tcp",
			End: "loop refused", Flags: "LR"})
		return routed{}
	}
	return s.forward(o, log, c)
}

// connLog is one connection's logger: the server's, with the connection's
// id. slog's With costs allocations, so it is built only when a record is
// written, which at the default level (info) most connections never do.
// Debug records are written only when debug is set, and callers check it
// before building the record's arguments.
type connLog struct {
	base  *slog.Logger
	id    string
	n     uint64 // the number in id
	debug bool
	l     *slog.Logger
}

func newConnLog(base *slog.Logger, n uint64) *connLog {
	var b [24]byte
	return &connLog{base: base, n: n, id: string(strconv.AppendUint(append(b[:0], 'C'), n, 10)),
		debug: base.Enabled(context.Background(), slog.LevelDebug)}
}

func (l *connLog) get() *slog.Logger {
	if l.l == nil {
		l.l = l.base.With("conn", l.id)
	}
	return l.l
}

// forwardL4 starts the copy: of auto mode's connection (c.TCPConn) to the
// upstream connection d made, or of protocol tcp's bare descriptor (c.FD,
// d nil) to a connect that completes on tcpproxy's loop (NewConnecting),
// so no goroutine waits for it and no net.TCPConn is built for either
// side. It returns copying when the copy started (and will release the
// connection).
func (s *Server) forwardL4(o *Options, log *connLog, c *listen.Conn, d *dialed, rec L4Record) routed {
	to := o.TCP
	to.Pipes = s.pipes
	to.OnLongLived, to.LongLivedAfter = setUpstreamKeepAlive, keepAliveAfter
	to.Logger = nil
	if log.debug {
		to.Logger = log.get()
	}
	var p *tcpproxy.Pair
	started := d != nil // L4Started was called
	if d != nil {
		to.UpstreamReset = d.reset
		p = tcpproxy.New(c.TCPConn, d.up, to)
		s.obs.L4Started(rec)
	} else {
		if log.debug {
			log.get().Debug("upstream connecting", "dst", c.OrigDst)
		}
		fd, err := o.Dialer.Start(c.Client, c.OrigDst)
		if err != nil {
			s.failDial(log, c, &rec, err)
			return routed{}
		}
		to.ConnectTimeout = o.Dialer.Options().ConnectTimeout
		to.OnConnected = func(fd int, d time.Duration) { // on the loop
			rec.ConnectDuration = d
			if s.upLocal || log.debug {
				rec.UpstreamLocal, _ = listen.LocalAddr(fd)
			}
			if log.debug {
				log.get().Debug("upstream connected", "dst", c.OrigDst, "local", rec.UpstreamLocal, "connect_time", d)
			}
			s.obs.L4Started(rec)
			started = true
		}
		p = tcpproxy.NewConnecting(c.FD, fd, to)
	}
	cut := &cutEntry{}
	s.live.track(cut, p.Cancel)
	p.Start(func(res tcpproxy.Result) {
		// On tcpproxy's loop goroutine: nothing here may block.
		s.live.remove(cut)
		switch {
		case res.End == tcpproxy.EndConnectFailed: // the loop reset the client
			s.dialFailed(log, c, &rec, &upstream.DialError{Dst: c.OrigDst, Reason: upstream.Classify(res.Err), Err: res.Err})
		default:
			rec.NoUpstream = !started // the client reset, or the drain ended, during the connect
			s.l4Done(log, rec, res)
		}
		s.release()
	})
	return routed{next: copying}
}

// keepAliveAfter is how long an L4 connection lasts before its upstream socket gets TCP keep-alive (upstream.KeepAlive:
// the first probe after 60 s of silence). Most L4 connections end sooner,
// and the four setsockopts would be an eighth of a new connection's
// system calls; a connection that lasts gets its probes 15 s late at most.
const keepAliveAfter = 15 * time.Second

// setUpstreamKeepAlive runs on tcpproxy's loop; like Go's own dialer it
// ignores a failure (the socket just goes without probes).
func setUpstreamKeepAlive(fd int) { _ = upstream.EnableKeepAliveFD(fd) }

// l4Done records a finished L4 connection.
func (s *Server) l4Done(log *connLog, rec L4Record, res tcpproxy.Result) {
	rec.Sent, rec.Received, rec.End = res.Sent, res.Received, string(res.End)
	rec.Duration = time.Since(rec.Start)
	switch res.End {
	case tcpproxy.EndUpstreamErr:
		rec.Flags = "UC"
	case tcpproxy.EndDownstreamErr:
		rec.Flags = "DC"
	case tcpproxy.EndIdle:
		rec.Flags = "SI" // stream idle timeout, as Envoy names it
	case tcpproxy.EndCanceled:
		rec.Flags = "DT" // drain time ran out
	}
	if log.debug {
		log.get().Debug("closed", "sent", res.Sent, "received", res.Received, "end", res.End, "duration", rec.Duration)
	}
	s.obs.L4Done(rec)
}

// cutList holds, for each connection being dialed or copied at L4, the
// function that cuts it when the drain period ends: an intrusive list
// under one mutex, so tracking a connection allocates nothing.
type cutList struct {
	mu   sync.Mutex
	head cutEntry // sentinel; head.next is the first entry
	cut  bool     // cutAll was called: entries tracked from now on are cut at once
}

type cutEntry struct {
	prev, next *cutEntry
	stop       func()
}

// track adds e (if it is not in the list yet) with stop as the way to cut
// it, replacing the previous one. After cutAll it calls stop at once.
func (l *cutList) track(e *cutEntry, stop func()) {
	l.mu.Lock()
	if l.head.next == nil {
		l.head.next, l.head.prev = &l.head, &l.head
	}
	if e.next == nil {
		e.prev, e.next = &l.head, l.head.next
		l.head.next.prev = e
		l.head.next = e
	}
	e.stop = stop
	cut := l.cut
	l.mu.Unlock()
	if cut {
		stop()
	}
}

// remove takes e out of the list.
func (l *cutList) remove(e *cutEntry) {
	l.mu.Lock()
	if e.next != nil {
		e.prev.next, e.next.prev = e.next, e.prev
		e.prev, e.next = nil, nil
	}
	l.mu.Unlock()
}

// cutAll cuts every entry, and every one tracked later.
func (l *cutList) cutAll() {
	l.mu.Lock()
	l.cut = true
	var stops []func()
	if l.head.next != nil {
		for e := l.head.next; e != &l.head; e = e.next {
			stops = append(stops, e.stop)
		}
	}
	l.mu.Unlock()
	for _, stop := range stops {
		stop()
	}
}

type nopObserver struct{}

func (nopObserver) Accepted(listen.Mode) {}
func (nopObserver) Refused(string)       {}
func (nopObserver) Paused(string)        {}
func (nopObserver) L4Started(L4Record)   {}
func (nopObserver) L4Done(L4Record)      {}
