package httpproxy

import (
	"cmp"
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// upstreamIdleTimeout closes pooled upstream connections unused this long,
// even on a host kept alive by other traffic.
const upstreamIdleTimeout = 60 * time.Second

// After the janitor removed many hosts (each with a Transport, its pool
// and buffers), the Go runtime would keep the freed memory for a long
// time: an idle proxy allocates too little to trigger a collection. Once
// freeMemoryHosts hosts were removed, the janitor returns the memory to
// the OS (debug.FreeOSMemory: a collection plus a scavenge, a few ms) at
// its next sweep if the cluster is empty by then, else at most once per
// freeMemoryEvery; and never twice within freeMemoryMinGap.
const (
	freeMemoryHosts  = 256
	freeMemoryMinGap = 5 * time.Second
	freeMemoryEvery  = time.Minute
)

// freeOSMemory is debug.FreeOSMemory; tests count the calls.
var freeOSMemory = debug.FreeOSMemory

type hostKey struct {
	dst    netip.AddrPort
	client netip.Addr // set only when upstream connections spoof the client
}

func (k hostKey) String() string {
	if k.client.IsValid() {
		return k.dst.String() + "/" + k.client.String()
	}
	return k.dst.String()
}

// HostInfo describes one live host of the original-destination cluster.
type HostInfo struct {
	Dst             netip.AddrPort
	Client          netip.Addr // the spoofed source; zero unless spoofing
	Created         time.Time
	LastUsed        time.Time
	Requests        uint64 // requests routed to the host
	Active          int    // requests in flight
	Open            int    // upstream connections open
	Idle            int    // open connections not carrying a request
	Connects        uint64 // upstream connections opened (pre-dialed included)
	Reuses          uint64 // requests served on a pooled connection
	Retries         uint64 // requests sent again on another connection after a pooled one failed (Envoy's upstream_rq_retry)
	OnLoop          uint64 // of which a loop served whole (onloop_linux.go)
	ConnectFailures uint64
}

// Key is the host's name in logs and the admin endpoint: "ip:port", or
// "ip:port/client-ip" when spoofing.
func (h HostInfo) Key() string { return hostKey{h.Dst, h.Client}.String() }

// host is one destination with its own pool: an http.Transport whose
// dialer always connects to the host's address.
type host struct {
	key     hostKey
	addr    string // key.dst as text
	created time.Time
	tr      *http.Transport
	c       *cluster

	// Guarded by cluster.mu.
	lastUsed  time.Time
	active    int
	requests  uint64
	preDialed []preConn
	links     []*upLink // the fast path's idle connections, oldest first

	open, inUse                atomic.Int64
	connects, reuses, failures atomic.Uint64
	retries                    atomic.Uint64 // requests sent again after a pooled connection failed
	onLoop                     atomic.Uint64 // requests a loop served whole
	kept                       atomic.Int64  // connections kept by client connections for a loop (fastConn.pin)
}

// cluster is the set of hosts, created on first use and removed by the
// janitor once unused for CleanupInterval.
type cluster struct {
	p     *Proxy
	mu    sync.Mutex
	hosts map[hostKey]*host
	// closed: close has begun; no connection joins the cluster after it,
	// as nothing would close it.
	closed bool
	// draining: Shutdown began; a connection whose request ended is
	// closed, not pooled, as no later request of this side needs it.
	draining bool
	// gone, once Shutdown or Close began (retiring), adds up the counters
	// of the hosts removed since, which HostTotals goes on listing: a
	// reload's bookkeeping reads a retired side's hosts after its close,
	// and their counts since its last look would otherwise be lost.
	gone map[hostKey]HostInfo
	stop chan struct{}
	done chan struct{}
	once sync.Once

	// Used by sweep only (the janitor, then close), under sweepMu: Close
	// may come while Shutdown sweeps.
	sweepMu  sync.Mutex
	removed  int // hosts removed since the memory was last returned
	lastFree time.Time
}

func newCluster(p *Proxy) *cluster {
	c := &cluster{p: p, hosts: make(map[hostKey]*host), stop: make(chan struct{}), done: make(chan struct{})}
	go c.janitor()
	return c
}

// getLocked returns the host for k, creating it. c.mu must be held.
func (c *cluster) getLocked(k hostKey) *host {
	if h := c.hosts[k]; h != nil {
		return h
	}
	now := time.Now()
	h := &host{key: k, addr: k.dst.String(), created: now, lastUsed: now, c: c}
	var protos http.Protocols
	protos.SetHTTP1(true) // h2c clients are forwarded as HTTP/1.1
	rt := c.p.o.RouteTimeout
	if rt < 0 {
		rt = 0
	}
	h.tr = &http.Transport{
		Proxy:                 nil, // never an environment proxy
		DialContext:           h.dial,
		MaxIdleConnsPerHost:   c.p.o.MaxIdleConnsPerHost,
		IdleConnTimeout:       upstreamIdleTimeout,
		ResponseHeaderTimeout: rt,
		ExpectContinueTimeout: time.Second,
		// Pass Accept-Encoding and bodies through untouched.
		DisableCompression: true,
		Protocols:          &protos,
	}
	c.hosts[k] = h
	c.p.log.Debug("created host", "host", k)
	return h
}

// acquire returns the host for k with one more request in flight, so the
// janitor leaves it alone until release.
func (c *cluster) acquire(k hostKey) *host {
	c.mu.Lock()
	defer c.mu.Unlock()
	h := c.getLocked(k)
	h.active++
	h.requests++
	h.lastUsed = time.Now()
	return h
}

func (c *cluster) release(h *host) {
	c.mu.Lock()
	h.active--
	h.lastUsed = time.Now()
	c.mu.Unlock()
}

// hasIdle reports whether k's host exists and has an open connection that
// no request uses and no client connection keeps, in either pool. A kept
// connection serving a request counts twice, so this errs towards false.
func (c *cluster) hasIdle(k hostKey) bool {
	c.mu.Lock()
	h := c.hosts[k]
	c.mu.Unlock()
	return h != nil && h.open.Load()-h.inUse.Load()-h.kept.Load() > 0
}

// preConn is a connection made while its client was sniffed, waiting
// for the host's first request, with the time its connect took.
type preConn struct {
	conn *net.TCPConn
	took time.Duration
}

// addPreDialed keeps conn for k's first request. It reports false, and
// the caller closes conn, once the cluster is closed.
func (c *cluster) addPreDialed(k hostKey, conn *net.TCPConn, took time.Duration) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	h := c.getLocked(k)
	h.preDialed = append(h.preDialed, preConn{conn, took})
	h.lastUsed = time.Now()
	return true
}

// dropPreDialed runs when the client connection that brought conn ends.
// If no request took conn, it joins the fast path's pool when that has
// room and the upstream has not closed it, and is closed otherwise: a
// connection made while sniffing that a pooled one made unnecessary serves
// a later request instead of leaving a TIME_WAIT behind.
func (c *cluster) dropPreDialed(k hostKey, conn *net.TCPConn) {
	c.mu.Lock()
	h := c.hosts[k]
	var found preConn
	if h != nil {
		if i := slices.IndexFunc(h.preDialed, func(d preConn) bool { return d.conn == conn }); i >= 0 {
			found = h.preDialed[i]
			h.preDialed = slices.Delete(h.preDialed, i, i+1)
		}
	}
	c.mu.Unlock()
	if found.conn == nil {
		return
	}
	l := newUpLink(conn, h)
	if !l.alive() {
		conn.Close()
		return
	}
	h.opened(found.took)
	c.putLink(l) // or closes it
}

// dial is the host's Transport.DialContext: a pre-dialed connection if one
// is waiting, else a new one to the host's address, whatever address the
// Transport asks for.
func (h *host) dial(ctx context.Context, _, _ string) (net.Conn, error) {
	conn, err := h.connect(ctx)
	if err != nil {
		return nil, err
	}
	c := &upConn{TCPConn: conn, h: h, local: localAddr(conn), wake: make(chan struct{}, 1)}
	c.idle.timeout = h.c.p.o.StreamIdleTimeout
	return c, nil
}

// localAddr is c's local address, the one its socket had when net made
// it (a getsockname per connection, none per request); zero when unknown.
func localAddr(c *net.TCPConn) netip.AddrPort {
	a, ok := c.LocalAddr().(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}
	}
	return unmap(a.AddrPort())
}

// connect returns a pre-dialed connection if one is waiting, else a new
// one to the host's address; it counts the connection open.
func (h *host) connect(ctx context.Context) (*net.TCPConn, error) {
	log := h.c.p.log
	h.c.mu.Lock()
	var pre preConn
	if n := len(h.preDialed); n > 0 {
		pre, h.preDialed = h.preDialed[n-1], h.preDialed[:n-1]
	}
	h.c.mu.Unlock()
	conn, took := pre.conn, pre.took
	if conn == nil {
		start := time.Now()
		var err error
		conn, err = h.c.p.o.Dialer.Dial(ctx, netip.AddrPortFrom(h.key.client, 0), h.key.dst)
		if err != nil {
			if ctx.Err() == nil { // not a client that gave up
				h.failures.Add(1)
			}
			return nil, err
		}
		took = time.Since(start)
	}
	h.opened(took)
	if h.c.p.debug() {
		log.Debug("new upstream connection", "host", h.key, "local", conn.LocalAddr(), "pre_dialed", pre.conn != nil)
	}
	return conn, nil
}

// opened counts a connection to the host made and open, and reports its
// connect time (OnConnect); closing it (upLink.close, upConn.Close)
// counts it closed.
func (h *host) opened(took time.Duration) {
	h.connects.Add(1)
	h.open.Add(1)
	if f := h.c.p.o.OnConnect; f != nil {
		f(took)
	}
}

// takeLink returns the host's most recently pooled fast-path connection
// that the upstream has neither closed nor sent bytes on since its last
// response, if any. Every connection is checked (a non-blocking peek),
// however recently it was pooled: bytes an upstream sent after a response
// (a body on a HEAD, 204 or 304 response, more body than its
// Content-Length said) would be read as the next request's response, on
// the same host's pool that other clients share. net/http's Transport
// notices such bytes at once ("Unsolicited response received on idle
// HTTP channel") and closes the connection, as Envoy and HAProxy do.
func (c *cluster) takeLink(h *host) *upLink {
	for {
		c.mu.Lock()
		n := len(h.links)
		if n == 0 {
			c.mu.Unlock()
			return nil
		}
		l := h.links[n-1]
		h.links[n-1] = nil
		h.links = h.links[:n-1]
		c.mu.Unlock()
		if l.alive() {
			return l
		}
		l.close()
	}
}

// pruneLinksLocked removes the pooled fast-path connections the upstream
// closed (or sent unexpected bytes on) and returns them to be closed.
// c.mu must be held.
func (h *host) pruneLinksLocked() []*upLink {
	var dead []*upLink
	h.links = slices.DeleteFunc(h.links, func(l *upLink) bool {
		if l.alive() {
			return false
		}
		dead = append(dead, l)
		return true
	})
	return dead
}

// putLink pools a fast-path connection after a response, or closes it
// when the pool is full or the host was removed.
func (c *cluster) putLink(l *upLink) {
	h := l.h
	l.since = time.Now()
	c.mu.Lock()
	if !c.closed && !c.draining && c.hosts[h.key] == h && len(h.links) < c.p.o.MaxIdleConnsPerHost {
		h.links = append(h.links, l)
		l = nil
	}
	c.mu.Unlock()
	if l != nil {
		l.close()
	}
}

// expireLinks closes fast-path connections idle since before cutoff.
// c.mu must be held; the connections are returned to be closed outside.
func (h *host) expireLinksLocked(cutoff time.Time) []*upLink {
	n := 0
	for n < len(h.links) && h.links[n].since.Before(cutoff) {
		n++
	}
	if n == 0 {
		return nil
	}
	old := slices.Clone(h.links[:n])
	h.links = slices.Delete(h.links, 0, n)
	return old
}

// upConn counts open upstream connections. Embedding *net.TCPConn keeps
// WriteTo (and ReadFrom when StreamIdleTimeout is off), so copies can
// still splice.
type upConn struct {
	*net.TCPConn
	h     *host
	local netip.AddrPort // the connection's local address, for request records
	idle  idleDeadline   // the write deadline (Write); nothing else sets one
	once  sync.Once
	// The check of each response head (Read): armed when a request goes
	// out (expectHead), then run by the Transport's read loop, the
	// connection's only reader.
	armed    atomic.Uint32 // armHead, armHeadHEAD
	scanning bool
	headReq  bool // the request is a HEAD
	scan     headScan
	rest     int64 // body bytes the response has yet to send, when bounded
	bounded  bool
	cut      error // what the next Read returns
	// headErr is the read error (a close, a reset) that came before the
	// end of the response head being read; nil while none came.
	headErr atomic.Pointer[error]
	// Where the read loop is, for awaitReader.
	reading atomic.Bool   // a Read is in progress
	closed  atomic.Bool   // Close was called
	waiter  atomic.Bool   // awaitReader waits: Read and Close wake it
	wake    chan struct{} // awaitReader's wake-up (buffered 1)
}

// readerWait bounds awaitReader's wait; the read loop's next step after
// a response is a read, or the close, so it is never expected to run out.
const readerWait = time.Second

// awaitReader waits, before a request goes out on c pooled, until the
// Transport's read loop has gone back to reading c (or c is closed).
// After a response the read loop pools c, then peeks at its buffer: a
// read means the buffer is empty; bytes still in it (ones the upstream
// sent after a chunked body, in the read that ended it: upConn counts
// only Content-Length bodies) make it close c, since no response is
// expected. A request that went out first would be expected, and those
// bytes read as its response. Not waiting costs nothing: the read loop
// is nearly always back in its read long before c is taken again.
func (c *upConn) awaitReader() {
	if c.reading.Load() || c.closed.Load() {
		return
	}
	c.waiter.Store(true) // then Read and Close see it, or the loop below sees them
	defer c.waiter.Store(false)
	t := time.NewTimer(readerWait)
	defer t.Stop()
	for !c.reading.Load() && !c.closed.Load() {
		select {
		case <-c.wake:
		case <-t.C:
			return
		}
	}
}

// wakeWaiter wakes awaitReader, if it waits.
func (c *upConn) wakeWaiter() {
	if c.waiter.Load() {
		select {
		case c.wake <- struct{}{}:
		default:
		}
	}
}

const (
	armHead     = 1 + iota // a request goes out
	armHeadHEAD            // a HEAD request goes out
)

// expectHead arms the check of the next response head: a request goes
// out on c, a HEAD one if head.
func (c *upConn) expectHead(head bool) {
	if head {
		c.armed.Store(armHeadHEAD)
	} else {
		c.armed.Store(armHead)
	}
}

// Read is the Transport's read. While a response head is expected it
// follows the head (headScan). A final head with both Content-Length and
// Transfer-Encoding is returned without its last byte, and the next read
// fails with errFramingConflict: http.ReadResponse fails inside the head,
// so the Transport neither retries the request (its first byte came) nor
// keeps the connection, and the client gets 502 UPE (protocol error), as
// on the fast path. A read error before the head's end is kept (headErr):
// a head cut by a close is a termination (UC), not the malformed head
// http.ReadResponse makes of it. Bytes after the response's end, when its head tells
// where that is (bodyLen: a 204's body, bytes after a Content-Length
// body), are dropped with an EOF: the Transport relays the response and
// closes the connection, where it would have pooled it and, when the
// next request won the race with its read loop, read them as that
// request's response (the fast path's pool peeks a connection for such
// bytes before it reuses it). Body bytes are counted, not scanned.
func (c *upConn) Read(p []byte) (int, error) {
	if c.cut != nil {
		return 0, c.cut
	}
	c.reading.Store(true)
	c.wakeWaiter()
	n, err := c.TCPConn.Read(p)
	c.reading.Store(false)
	if a := c.armed.Load(); a != 0 && c.armed.CompareAndSwap(a, 0) {
		c.scan, c.scanning, c.headReq, c.bounded = headScan{}, true, a == armHeadHEAD, false
		c.headErr.Store(nil)
	}
	if !c.scanning {
		return c.bound(0, n, err)
	}
	end := c.scan.feed(p[:n])
	if end < 0 {
		if err != nil {
			c.headErr.Store(&err)
		}
		return n, err
	}
	c.scanning = false
	switch {
	case c.scan.conflict:
		c.cut = errFramingConflict
		if end == 0 {
			return 0, c.cut
		}
		return end, nil
	}
	c.rest = c.scan.bodyLen(c.headReq)
	c.bounded = c.rest >= 0
	return c.bound(end+1, n, err)
}

// bound counts p[from:n], body bytes a read returned, against the
// response's known length: the bytes past it are dropped, and the read
// says EOF (see Read).
func (c *upConn) bound(from, n int, err error) (int, error) {
	if !c.bounded {
		return n, err
	}
	body := int64(n - from)
	if body > c.rest {
		c.bounded, c.cut = false, io.EOF
		return from + int(c.rest), io.EOF
	}
	c.rest -= body
	c.bounded = c.rest > 0
	return n, err
}

func (c *upConn) Close() error {
	c.once.Do(func() { c.h.open.Add(-1) })
	err := c.TCPConn.Close()
	c.closed.Store(true)
	c.wakeWaiter()
	return err
}

// Write bounds each write by StreamIdleTimeout, as the fast path bounds
// its writes of a request body: an upstream that stops reading a request
// body (or a tunnel's bytes) fails the write, and the request is answered
// 504, instead of holding the client and the connection until the
// upstream closes. (The Transport sets no write deadline of its own.)
func (c *upConn) Write(b []byte) (int, error) {
	c.idle.write(c.TCPConn)
	return c.TCPConn.Write(b)
}

// ReadFrom copies through Write, so that each write is bounded too: the
// Transport writes a request body with it (never from a socket it could
// splice from).
func (c *upConn) ReadFrom(r io.Reader) (int64, error) {
	if c.idle.timeout <= 0 {
		return c.TCPConn.ReadFrom(r)
	}
	bufs := c.h.c.p.copyBufs
	buf := bufs.Get()
	defer bufs.Put(buf)
	return io.CopyBuffer(writerOnly{c}, r, buf)
}

// writerOnly hides its Writer's other methods (ReadFrom) from io.Copy.
type writerOnly struct{ io.Writer }

// idleConns are a host's idle connections, taken out of it under c.mu
// to be closed after (takeIdleLocked, close).
type idleConns struct {
	h     *host
	pre   []preConn
	links []*upLink
}

// takeIdleLocked takes h's pre-dialed and pooled connections; c.mu is held.
func (h *host) takeIdleLocked() idleConns {
	ic := idleConns{h, h.preDialed, h.links}
	h.preDialed, h.links = nil, nil
	return ic
}

// close closes them, and the host's Transport's idle connections.
func (ic idleConns) close() {
	ic.h.tr.CloseIdleConnections()
	for _, d := range ic.pre {
		d.conn.Close()
	}
	for _, l := range ic.links {
		l.close()
	}
}

func (c *cluster) janitor() {
	defer close(c.done)
	interval := c.p.o.CleanupInterval
	t := time.NewTicker(max(interval/2, time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case now := <-t.C:
			c.sweep(now.Add(-interval))
		}
	}
}

// sweep removes hosts with nothing in flight and unused since cutoff;
// once the cluster is closed, every host.
func (c *cluster) sweep(cutoff time.Time) {
	c.mu.Lock()
	left := len(c.hosts)
	c.mu.Unlock()
	// The hosts removed by earlier sweeps are gone by now (their
	// connections closed, their goroutines ended): their memory can go.
	c.releaseMemory(time.Now(), left)

	c.mu.Lock()
	var stale []idleConns
	var expired []*upLink
	linkCutoff := time.Now().Add(-upstreamIdleTimeout)
	for k, h := range c.hosts {
		if c.closed || h.active == 0 && !h.lastUsed.After(cutoff) {
			if c.gone != nil {
				g := c.gone[k]
				g.add(h.info())
				c.gone[k] = g
			}
			delete(c.hosts, k)
			stale = append(stale, h.takeIdleLocked())
			continue
		}
		expired = append(expired, h.expireLinksLocked(linkCutoff)...)
		expired = append(expired, h.pruneLinksLocked()...)
	}
	c.mu.Unlock()
	for _, l := range expired {
		l.close()
	}
	for _, ic := range stale {
		h := ic.h
		c.p.log.Debug("removing stale host", "host", h.key, "idle_conns", max(h.open.Load()-h.inUse.Load(), 0))
		ic.close()
	}
	c.removed += len(stale)
}

// releaseMemory returns freed memory to the OS after many hosts were
// removed; hosts is the cluster's size now.
func (c *cluster) releaseMemory(now time.Time, hosts int) {
	if c.removed < freeMemoryHosts {
		return
	}
	since := now.Sub(c.lastFree)
	if since < freeMemoryMinGap || hosts > 0 && since < freeMemoryEvery {
		return
	}
	c.p.log.Debug("returning memory to the OS", "hosts_removed", c.removed, "hosts", hosts)
	c.removed, c.lastFree = 0, now
	freeOSMemory()
}

// close stops the janitor and removes every host, closing its idle
// connections.
func (c *cluster) close() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.once.Do(func() { close(c.stop) })
	<-c.done
	c.sweepMu.Lock()
	c.sweep(time.Now().Add(time.Hour))
	c.sweepMu.Unlock()
	// Hosts still busy (a tunnel, a net/http handler whose client Close
	// cut) are removed too, with their idle connections: no janitor would
	// remove them once idle, and a pooled connection nobody reads would
	// stay open for the life of the process. The connections in use are
	// closed when their requests end (putLink; the Transport closes those
	// that become idle after CloseIdleConnections, or after its idle
	// timeout one that a later request of the handler pooled).
}

// drain closes the idle connections of every host, and from now on
// those whose requests end: the fast path's at putLink, the Transport's
// as they become idle (CloseIdleConnections makes it close those until
// it dials again). Shutdown began: the requests in flight are the last
// this side serves. The hosts stay, with their counters, until close.
func (c *cluster) drain() {
	c.mu.Lock()
	c.draining = true
	idle := make([]idleConns, 0, len(c.hosts))
	for _, h := range c.hosts {
		idle = append(idle, h.takeIdleLocked())
	}
	c.mu.Unlock()
	for _, ic := range idle {
		ic.close()
	}
}

// retiring makes the cluster keep the counters of the hosts it removes
// from now on (gone): Shutdown or Close began.
func (c *cluster) retiring() {
	c.mu.Lock()
	if c.gone == nil {
		c.gone = make(map[hostKey]HostInfo)
	}
	c.mu.Unlock()
}

// info is h as Hosts lists it; c.mu is held.
func (h *host) info() HostInfo {
	open, inUse := h.open.Load(), h.inUse.Load()
	return HostInfo{
		Dst: h.key.dst, Client: h.key.client,
		Created: h.created, LastUsed: h.lastUsed,
		Requests: h.requests, Active: h.active,
		Open: int(open), Idle: int(max(open-inUse, 0)),
		Connects: h.connects.Load(), Reuses: h.reuses.Load(), Retries: h.retries.Load(), OnLoop: h.onLoop.Load(), ConnectFailures: h.failures.Load(),
	}
}

// add adds the counters of a removed instance of the same host, h, to
// g: its counts, its first creation, its last use.
func (g *HostInfo) add(h HostInfo) {
	if g.Created.IsZero() {
		*g = HostInfo{Dst: h.Dst, Client: h.Client, Created: h.Created}
	}
	g.AddCounters(h)
	g.Span(h)
}

// AddCounters adds h's counters (not its gauges) to g's: what two
// instances of one host (a removed and a new one, or those of a cluster a
// reload replaced and of its successor) counted together.
func (g *HostInfo) AddCounters(h HostInfo) {
	g.Requests += h.Requests
	g.Connects += h.Connects
	g.Reuses += h.Reuses
	g.Retries += h.Retries
	g.OnLoop += h.OnLoop
	g.ConnectFailures += h.ConnectFailures
}

// Span widens g's lifetime to cover h's: the earlier creation, the later
// last use.
func (g *HostInfo) Span(h HostInfo) {
	if h.Created.Before(g.Created) {
		g.Created = h.Created
	}
	if h.LastUsed.After(g.LastUsed) {
		g.LastUsed = h.LastUsed
	}
}

// Hosts lists the cluster's live hosts, ordered by key.
func (p *Proxy) Hosts() []HostInfo { return p.hostList(false) }

// HostTotals is Hosts and, once Shutdown or Close began, the hosts
// removed since, with what they counted: all a side retired by a reload
// counted, read once it closed (which removes every host).
func (p *Proxy) HostTotals() []HostInfo { return p.hostList(true) }

func (p *Proxy) hostList(withGone bool) []HostInfo {
	c := p.hosts
	c.mu.Lock()
	out := make([]HostInfo, 0, len(c.hosts))
	for _, h := range c.hosts {
		out = append(out, h.info())
	}
	for k, g := range c.gone {
		if !withGone {
			break
		}
		if h, ok := c.hosts[k]; ok { // removed, then made again
			i := slices.IndexFunc(out, func(o HostInfo) bool { return o.Dst == h.key.dst && o.Client == h.key.client })
			out[i].add(g)
			continue
		}
		out = append(out, g)
	}
	c.mu.Unlock()
	slices.SortFunc(out, func(a, b HostInfo) int { return cmp.Compare(a.Key(), b.Key()) })
	return out
}
