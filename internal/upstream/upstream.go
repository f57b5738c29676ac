// Package upstream dials original destinations for detour.
//
// Every upstream socket carries a socket mark (SO_MARK) so that detour's
// interception rules can tell its own traffic from the traffic they divert:
// without it, a REDIRECT rule in nat OUTPUT would send detour's upstream
// connection straight back to detour. With SpoofSource the socket is made
// transparent and bound to the client's address, so the server sees the real
// client (Envoy's original_src, HAProxy's "usesrc clientip").
//
//	d := upstream.New(upstream.Options{ConnectTimeout: 5 * time.Second, Mark: 0x2})
//	c, err := d.Dial(ctx, client, origDst)
package upstream

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"
)

// PreDial is a connect to a connection's original destination made
// while its first bytes were sniffed (auto mode), handed to the HTTP side
// with the connection. The zero value means none was made.
type PreDial struct {
	Conn *net.TCPConn  // the open connection; nil if the connect failed
	Err  error         // why the connect failed
	Took time.Duration // how long the connect took (Conn set)
	// Sniffed is when the client's first bytes were seen. The connection's
	// first request began then: waiting for the connect counts in its
	// duration.
	Sniffed time.Time
	// ConnID is the connection's number in the access log and the debug
	// log (7 for C7), so that its requests' records name it; 0: none.
	// Not about the connect, but what else the caller learned of the
	// connection travels here too.
	ConnID uint64
}

// DefaultConnectTimeout bounds a connect when Options leaves it zero.
const DefaultConnectTimeout = 5 * time.Second

// Options configures a Dialer.
type Options struct {
	// ConnectTimeout bounds each connect; zero means DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// Mark is set with SO_MARK on every upstream socket; zero sets none.
	Mark uint32
	// SpoofSource binds upstream sockets to the client's IP address.
	SpoofSource bool
}

// Dialer opens upstream TCP connections. It is safe for concurrent use.
type Dialer struct {
	opts Options
	// Go's dialer, built once: a net.Dialer is a few hundred bytes, and
	// a connect made on an HTTP connection's goroutine is the deepest
	// point of its stack, which the goroutine keeps while the connection
	// idles.
	keep net.Dialer
}

// New returns a Dialer for o.
func New(o Options) *Dialer {
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = DefaultConnectTimeout
	}
	d := &Dialer{opts: o}
	d.keep = net.Dialer{Timeout: o.ConnectTimeout, Control: d.control, KeepAliveConfig: KeepAlive}
	return d
}

// Options returns the dialer's effective options.
func (d *Dialer) Options() Options { return d.opts }

// Dial connects to dst. client is the downstream peer; it is used only when
// SpoofSource is set.
func (d *Dialer) Dial(ctx context.Context, client, dst netip.AddrPort) (*net.TCPConn, error) {
	return d.dial(ctx, client, dst, &d.keep)
}

// KeepAlive is the TCP keep-alive of upstream sockets: a client's own
// probes end at detour's socket, so only detour's keep the state of NATs
// and firewalls between detour and the server alive on a quiet
// connection, and notice a dead server within about 2 minutes.
var KeepAlive = net.KeepAliveConfig{Enable: true, Idle: 60 * time.Second, Interval: 15 * time.Second, Count: 4}

func (d *Dialer) dial(ctx context.Context, client, dst netip.AddrPort, nd *net.Dialer) (*net.TCPConn, error) {
	if d.opts.SpoofSource && client.IsValid() {
		return d.dialFrom(ctx, client, dst, nd)
	}
	network := "tcp4"
	if dst.Addr().Unmap().Is6() {
		network = "tcp6"
	}
	c, err := nd.DialContext(ctx, network, netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port()).String())
	if err != nil {
		return nil, &DialError{Dst: dst, Reason: Classify(err), Err: err}
	}
	return c.(*net.TCPConn), nil
}

// dialFrom connects from the client's address (SpoofSource) with a copy
// of nd.
func (d *Dialer) dialFrom(ctx context.Context, client, dst netip.AddrPort, nd *net.Dialer) (*net.TCPConn, error) {
	from := *nd
	from.LocalAddr = &net.TCPAddr{IP: client.Addr().Unmap().AsSlice()}
	return d.dial(ctx, netip.AddrPort{}, dst, &from)
}

// DialError is a failed upstream connect with its reason.
type DialError struct {
	Dst    netip.AddrPort
	Reason Reason
	Err    error
}

func (e *DialError) Error() string {
	return "connect " + e.Dst.String() + ": " + string(e.Reason) + ": " + e.Err.Error()
}

func (e *DialError) Unwrap() error { return e.Err }

// Reason names why an upstream connection failed, in words an operator
// (and an HTTP error body) can use.
type Reason string

const (
	ReasonRefused     Reason = "connection refused"
	ReasonTimeout     Reason = "connect timeout"
	ReasonReset       Reason = "connection reset"
	ReasonUnreachable Reason = "destination unreachable"
	ReasonCanceled    Reason = "canceled"
	ReasonOther       Reason = "connect error"
)

// Classify maps a dial or I/O error onto a Reason.
func Classify(err error) Reason {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return ReasonRefused
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return ReasonReset
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return ReasonUnreachable
	case errors.Is(err, context.Canceled):
		return ReasonCanceled
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout():
		return ReasonTimeout
	}
	return ReasonOther
}
