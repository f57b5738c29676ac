package proxy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"github.com/detour-proxy/detour/internal/listen"
	"github.com/detour-proxy/detour/internal/rawsys"
	"github.com/detour-proxy/detour/internal/sniff"
	"github.com/detour-proxy/detour/internal/tcpproxy"
	"github.com/detour-proxy/detour/internal/upstream"
)

// forward picks L4 or L7 for a connection that passed the loop guard: an
// L4 copy starts here, L7 is left to handle.
func (s *Server) forward(o *Options, log *connLog, c *listen.Conn) routed {
	if o.Protocol == ProtocolHTTP {
		return routed{next: toL7, log: log}
	}
	// The record of a connection that may go to L4 starts at its accept,
	// before any sniffing.
	rec := L4Record{ID: log.id, Start: time.Now(), Client: c.Client, OrigDst: c.OrigDst, Protocol: "tcp"}
	if o.Protocol == ProtocolAuto {
		res, d, err := s.sniffAuto(o, log, c)
		return s.forwardSniffed(o, log, c, rec, res, err, d)
	}
	return s.forwardL4(o, log, c, nil, rec)
}

// l7 is the HTTP side a connection goes to: the current one. A
// connection accepted or sniffed under older settings (its first bytes
// may take up to sniff_timeout) goes to the HTTP side of now. The old one
// serves only when the current settings have none (protocol tcp since).
func (s *Server) l7(o *Options) L7 {
	if cur := s.cur.Load(); cur.HTTP != nil {
		return cur.HTTP
	}
	return o.HTTP
}

// serveL7 hands the connection to the HTTP side until it is done. The
// requests' own log lines carry the client's address and request id; this
// one closes the connection's story under its id.
func (s *Server) serveL7(o *Options, log *connLog, c *listen.Conn, pre upstream.PreDial) {
	pre.ConnID = log.n
	s.l7(o).ServeConn(c.TCPConn, c.Client, c.OrigDst, pre)
	if log.debug {
		log.closedL7(c.Client)
	}
}

// closedL7 logs the end of an L7 connection; out of line, so that its
// arguments take no room beneath every request of the connection.
//
//go:noinline
func (l *connLog) closedL7(client netip.AddrPort) {
	l.get().Debug("closed", "client", client, "forwarded", "L7")
}

// dialFailGrace is how long auto mode still waits for a client's first
// bytes after the upstream connect failed.
const dialFailGrace = 200 * time.Millisecond

// dialed is a connect made for a connection: the socket or the error,
// how long it took and when the sniff that ran meanwhile ended (what L7
// gets of it, pre), and what only the sniff and L4 need.
type dialed struct {
	up    *os.File // the connected socket (upstream.Dialer.Connect); nil if the connect failed
	reset error    // the reset the connect's outcome took from up (the server wrote and reset at once)
	pre   upstream.PreDial
	spoke bool        // the server sent bytes before the client: a banner
	grace *time.Timer // after a failed connect: ends the sniff soon
}

// sniffAuto tells L7 from L4 by a connection's first bytes. Bytes
// queued already decide at once. Otherwise it dials the destination while it
// waits for them, so a server that speaks first (SMTP, SSH, MySQL banners)
// is noticed the moment its banner arrives instead of after a sniffing
// timeout, and HTTP takes that connection as its first pooled one. A
// destination with an idle pooled HTTP connection (L7.Pooled) is not dialed
// while sniffing: it answered HTTP, and an HTTP server never speaks first.
//
// The sniff runs on this goroutine and the connect, then the wait for a
// banner, on one other, which interrupts the sniff: a connection waiting
// for its client's first bytes holds two goroutines, or one. It returns
// the sniff's result, the connect made meanwhile (nil if none was) and the
// sniff's error.
func (s *Server) sniffAuto(o *Options, log *connLog, c *listen.Conn) (sniff.Result, *dialed, error) {
	if res, final, err := sniff.Now(c.TCPConn); final || err != nil {
		return res, nil, err // err: the client reset before a byte
	}
	if o.HTTP.Pooled(c.Client, c.OrigDst) { // nothing to dial, nothing to race
		res, err := sniff.Sniff(s.connCtx, c.TCPConn, o.SniffTimeout)
		return res, nil, err
	}
	sniffCtx, stopSniff := context.WithCancel(s.connCtx)
	defer stopSniff()
	dialc := make(chan dialed, 1)
	go func() {
		d := s.dial(o, c)
		if d.pre.Err != nil {
			// An HTTP client gets a 503 only if its request is seen, and it
			// sends it right after connecting: wait a moment for it, not
			// the whole sniffing timeout.
			d.grace = time.AfterFunc(min(dialFailGrace, o.SniffTimeout), stopSniff)
		} else if err := waitBanner(sniffCtx, &d); err == nil {
			d.spoke = true
			stopSniff()
		} else if sniffCtx.Err() == nil {
			// The upstream failed (a reset) before either side spoke. The
			// peek took the socket's error: an L4 copy would see a FIN
			// and pass it on as a half-close, after the client's bytes or
			// the sniffing timeout. Treat it as a failed connect: the
			// client is reset, or an HTTP request seen within the grace
			// answered 503.
			d.up.Close()
			d.up, d.reset = nil, nil
			d.pre.Err = &upstream.DialError{Dst: c.OrigDst, Reason: upstream.Classify(err), Err: err}
			d.grace = time.AfterFunc(min(dialFailGrace, o.SniffTimeout), stopSniff)
		}
		dialc <- d // after WaitReadable cleared its deadline on d.up
	}()
	res, err := sniff.Sniff(sniffCtx, c.TCPConn, o.SniffTimeout)
	sniffed := time.Now()
	stopSniff() // ends the wait for a banner
	d := <-dialc
	d.pre.Sniffed = sniffed
	if d.grace != nil {
		d.grace.Stop()
	}
	if d.spoke && err != nil { // the banner, not the client, ended the sniff
		if log.debug {
			log.get().Debug("upstream spoke first; forwarding at L4")
		}
		res, err = sniff.Result{Protocol: sniff.Unknown}, nil
	}
	return res, &d, err
}

// dial connects to the connection's original destination, as the L4
// loop does (upstream.Dialer.Connect): a server that accepts, writes and
// resets at once was connected, and its bytes reach the client.
func (s *Server) dial(o *Options, c *listen.Conn) dialed {
	start := time.Now()
	up, reset, err := o.Dialer.Connect(s.connCtx, c.Client, c.OrigDst)
	return dialed{up: up, reset: reset, pre: upstream.PreDial{Err: err, Took: time.Since(start)}}
}

// waitBanner returns nil once the server of d's open connection sent
// bytes or closed, before the client spoke (ctx ends the wait). A server
// that reset the connection as it connected (d.reset) spoke if it sent
// bytes first; without any it failed, with d.reset.
func waitBanner(ctx context.Context, d *dialed) error {
	if d.reset == nil {
		return sniff.WaitReadable(ctx, d.up)
	}
	var b [1]byte
	if n, _ := sniff.Peek(ctx, d.up, b[:]); n > 0 {
		return nil
	}
	return d.reset
}

// forL7 is the connect d as L7 takes it: a *net.TCPConn with keep-alive,
// as L7's own dials make, or the error. A server that wrote and reset at
// once is no HTTP server: a failed connect.
func (d *dialed) forL7(dst netip.AddrPort) upstream.PreDial {
	pre := d.pre
	if d.up == nil {
		return pre
	}
	if d.reset != nil {
		d.up.Close()
		pre.Err = &upstream.DialError{Dst: dst, Reason: upstream.ReasonReset, Err: d.reset}
		return pre
	}
	nc, err := net.FileConn(d.up) // a second descriptor, in Go's poller
	d.up.Close()
	if err != nil {
		pre.Err = &upstream.DialError{Dst: dst, Reason: upstream.Classify(err), Err: err}
		return pre
	}
	pre.Conn = nc.(*net.TCPConn)
	_ = upstream.EnableKeepAlive(pre.Conn)
	return pre
}

// forwardSniffed starts the L4 copy of a sniffed connection, or leaves it
// to handle for L7; d is the connect made while sniffing, or nil if none
// was (L7 then uses its pool or dials, L4 dials now). err is the sniff's.
func (s *Server) forwardSniffed(o *Options, log *connLog, c *listen.Conn, rec L4Record, res sniff.Result, err error, d *dialed) routed {
	switch res.Protocol {
	case sniff.HTTP1, sniff.HTTP2:
		if log.debug {
			log.get().Debug("sniffed", "protocol", res.Protocol, "forwarding", "L7")
		}
		if d == nil {
			return routed{next: toL7, log: log}
		}
		// When the connect failed, L7 answers the first request 503 with
		// its reason instead of waiting for a second connect.
		return routed{next: toL7, log: log, pre: d.forL7(c.OrigDst)}
	}
	if log.debug && err != nil && res.N == 0 {
		// The client closed (or failed) before sending anything: nothing to forward.
		log.get().Debug("client closed before sending", "err", err)
	}
	rec.Protocol, rec.SNI = l4ProtocolName(res.Protocol), res.SNI
	var serr *os.SyscallError
	if res.N == 0 && errors.As(err, &serr) {
		// The client reset before sending a byte. The peek took the
		// socket's error, so an L4 copy would read a plain EOF and pass it
		// on as a FIN: reset the connection made meanwhile instead, and
		// make none.
		c.Reset()
		s.closeUnused(&rec, d)
		s.l4Done(log, rec, tcpproxy.Result{End: tcpproxy.EndDownstreamErr, Err: err})
		return routed{}
	}
	if s.connCtx.Err() != nil {
		// The drain period ended while the connection was sniffed: cut it,
		// as the L4 copies are then (flag DT). Its connect did not fail;
		// a dial now would, with the canceled context, and be recorded as
		// a connect failure (UF) of that destination.
		c.Reset()
		s.closeUnused(&rec, d)
		s.l4Done(log, rec, tcpproxy.Result{End: tcpproxy.EndCanceled, Err: s.connCtx.Err()})
		return routed{}
	}
	if log.debug {
		log.get().Debug("sniffed", "protocol", rec.Protocol, "sni", rec.SNI, "forwarding", "L4")
	}
	if d == nil {
		dd := s.dial(o, c)
		d = &dd
	}
	if d.pre.Err != nil {
		s.failDial(log, c, &rec, d.pre.Err)
		return routed{}
	}
	rec.ConnectDuration = d.pre.Took
	if s.upLocal || log.debug {
		rec.UpstreamLocal = fileLocalAddr(d.up)
	}
	if log.debug {
		log.connected(c.OrigDst, rec.UpstreamLocal, d.pre.Took)
	}
	return s.forwardL4(o, log, c, d, rec)
}

// closeUnused resets the connection made while sniffing, if one was, for
// a connection that ends before its copy: the connection was made (its
// L4Started), and is reported closed with it; without one rec is marked
// NoUpstream.
func (s *Server) closeUnused(rec *L4Record, d *dialed) {
	if d == nil || d.up == nil {
		rec.NoUpstream = true
		return
	}
	if fd, err := tcpproxy.ConnFD(d.up); err == nil {
		if s.upLocal {
			rec.UpstreamLocal, _ = listen.LocalAddr(fd)
		}
		rawsys.SetLinger0(fd)
	}
	d.up.Close()
	rec.ConnectDuration = d.pre.Took
	s.obs.L4Started(*rec)
}

// connected logs an upstream connect made while sniffing.
func (l *connLog) connected(dst, local netip.AddrPort, took time.Duration) {
	l.get().Debug("upstream connected", "dst", dst, "local", local, "connect_time", took)
}

// fileLocalAddr is the local address of up, a connected socket; zero if
// getsockname failed.
func fileLocalAddr(up *os.File) netip.AddrPort {
	var local netip.AddrPort
	if fd, err := tcpproxy.ConnFD(up); err == nil {
		local, _ = listen.LocalAddr(fd)
	}
	return local
}

func l4ProtocolName(p sniff.Protocol) string {
	if p == sniff.TLS {
		return "tls"
	}
	return "tcp"
}

// failDial logs a failed upstream connect and resets the client, as a
// refused direct connect would have.
func (s *Server) failDial(log *connLog, c *listen.Conn, rec *L4Record, err error) {
	c.Reset()
	s.dialFailed(log, c, rec, err)
}

// dialFailed logs and records a failed upstream connect whose client was
// reset.
func (s *Server) dialFailed(log *connLog, c *listen.Conn, rec *L4Record, err error) {
	if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
		s.outOfDescriptors()
	}
	reason := upstream.Classify(err)
	log.get().Info("upstream connect failed; closing client", "dst", c.OrigDst, "reason", reason, "err", err)
	rec.End, rec.Flags, rec.Duration = string(reason), "UF", time.Since(rec.Start)
	s.obs.L4Done(*rec)
}
