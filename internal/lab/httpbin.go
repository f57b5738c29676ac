package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mccutchen/go-httpbin/v2/httpbin"

	"github.com/detour-proxy/detour/internal/ns"
)

// HTTPBin is go-httpbin serving inside a namespace, on 0.0.0.0:Port and
// [::]:Port (the IPv6 listener is IPv6-only). It records who connected, so
// tests and the walkthrough can tell what the server saw: the client's
// address or the proxy's, and whether a connection was reused.
type HTTPBin struct {
	Port int

	srv  *http.Server
	lns  []net.Listener
	done chan struct{}

	mu    sync.Mutex
	conns int
	reqs  []Request
}

// Request is one request HTTPBin served.
type Request struct {
	Peer   netip.AddrPort // the connection's remote address as the server saw it
	Conn   int            // which connection it came on: 1 for the first one accepted, ...
	Method string
	URI    string
	// XFF is the X-Forwarded-For header as received ("" without one):
	// detour's L7 adds it, its L4 and the direct path do not.
	XFF string
}

type connKey struct{}

// StartHTTPBin serves go-httpbin inside n on port (0 picks a free IPv4
// port and uses the same one for IPv6; see Port).
func StartHTTPBin(n *ns.NS, port int) (*HTTPBin, error) {
	h := &HTTPBin{done: make(chan struct{})}
	ln4, err := n.Listen("tcp4", net.JoinHostPort("0.0.0.0", strconv.Itoa(port)))
	if err != nil {
		return nil, fmt.Errorf("httpbin in %s: %w", n.Name, err)
	}
	h.Port = ln4.Addr().(*net.TCPAddr).Port
	// "tcp6" makes Go set IPV6_V6ONLY, so the two listeners don't overlap.
	ln6, err := n.Listen("tcp6", net.JoinHostPort("::", strconv.Itoa(h.Port)))
	if err != nil {
		ln4.Close()
		return nil, fmt.Errorf("httpbin in %s: %w", n.Name, err)
	}
	h.lns = []net.Listener{ln4, ln6}

	bin := httpbin.New()
	h.srv = &http.Server{
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.record(r); bin.ServeHTTP(w, r) }),
		ReadHeaderTimeout: 10 * time.Second,
		ConnContext: func(ctx context.Context, _ net.Conn) context.Context {
			h.mu.Lock()
			h.conns++
			id := h.conns
			h.mu.Unlock()
			return context.WithValue(ctx, connKey{}, id)
		},
	}
	var wg sync.WaitGroup
	for _, ln := range h.lns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h.srv.Serve(ln) // returns http.ErrServerClosed on Close
		}()
	}
	go func() { wg.Wait(); close(h.done) }()
	return h, nil
}

func (h *HTTPBin) record(r *http.Request) {
	peer, _ := netip.ParseAddrPort(r.RemoteAddr)
	id, _ := r.Context().Value(connKey{}).(int)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.reqs = append(h.reqs, Request{
		Peer:   netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port()),
		Conn:   id,
		Method: r.Method,
		URI:    r.RequestURI,
		XFF:    strings.Join(r.Header.Values("X-Forwarded-For"), ", "),
	})
}

// Requests returns the requests served so far, oldest first.
func (h *HTTPBin) Requests() []Request {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Request(nil), h.reqs...)
}

// Conns returns how many connections the server has accepted so far.
func (h *HTTPBin) Conns() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.conns
}

// Close stops the server and closes its connections.
func (h *HTTPBin) Close() error {
	err := h.srv.Close()
	<-h.done
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// HTTPClient returns an HTTP client whose connections are made inside n.
// It ignores proxy environment variables and opens a new connection for
// every request, like curl, so that any reuse seen by a server is the
// proxy's doing.
func HTTPClient(n *ns.NS) *http.Client {
	return &http.Client{
		Timeout: 15 * time.Second,
		Transport: &http.Transport{
			DialContext:       n.Dialer(&net.Dialer{Timeout: 5 * time.Second}),
			DisableKeepAlives: true,
		},
	}
}
