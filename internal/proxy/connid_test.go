package proxy

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/detour-proxy/detour/internal/httpproxy"
	"github.com/detour-proxy/detour/internal/logbuf"
	"github.com/detour-proxy/detour/internal/upstream"
)

// TestL7RequestsCarryConnID: a request's record names its client
// connection by the number the debug log (and an L4 record) gives that
// connection, on the fast path and on net/http's, so the access log can
// join them. It was 0: HTTP records printed %CONNECTION_ID% as "-".
func TestL7RequestsCarryConnID(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	defer up.Close()
	dst := netip.MustParseAddrPort(up.Listener.Addr().String())
	for _, c := range []struct {
		name     string
		protocol Protocol
		netHTTP  bool
	}{
		{"http, fast path", ProtocolHTTP, false},
		{"http, net/http", ProtocolHTTP, true},
		{"auto, fast path", ProtocolAuto, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			infos := make(chan httpproxy.RequestInfo, 4)
			hp, err := httpproxy.New(httpproxy.Options{Dialer: upstream.New(upstream.Options{ConnectTimeout: 5 * time.Second}),
				DisableFastPath: c.netHTTP, OnRequest: func(i *httpproxy.RequestInfo) { infos <- *i }})
			if err != nil {
				t.Fatal(err)
			}
			defer hp.Close()
			var logs logbuf.Buffer
			s := New(Options{Dialer: upstream.New(upstream.Options{ConnectTimeout: 5 * time.Second}), Protocol: c.protocol,
				HTTP: httpSide{hp}, SniffTimeout: 5 * time.Second, Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
			ln := listenLoopback(t)
			for conn := 0; conn < 2; conn++ { // the second connection has another id
				cli, srv := connect(t, ln)
				go handleAccepted(s, accepted(cli, srv, dst))
				br := bufio.NewReader(cli)
				for req := 0; req < 2; req++ {
					fmt.Fprintf(cli, "GET /%d HTTP/1.1\r\nHost: x\r\n\r\n", req)
					res, err := http.ReadResponse(br, nil)
					if err != nil {
						t.Fatal(err)
					}
					io.Copy(io.Discard, res.Body)
					res.Body.Close()
					var i httpproxy.RequestInfo
					select {
					case i = <-infos:
					case <-time.After(10 * time.Second):
						t.Fatal("no request record")
					}
					want := acceptedID(t, logs.String(), cli.LocalAddr().String())
					if i.ConnID != want {
						t.Errorf("connection %d, request %d: ConnID %d, want %d (the debug log's C%d)", conn, req, i.ConnID, want, want)
					}
				}
				cli.Close()
				waitReleased(t, s)
			}
		})
	}
}

// httpSide is the HTTP proxy as the Server's L7, as cmd/detour wires it.
type httpSide struct{ *httpproxy.Proxy }

func (h httpSide) ServeConn(c net.Conn, client, origDst netip.AddrPort, pre upstream.PreDial) {
	if !h.Proxy.ServeConn(c, client, origDst, pre) {
		c.Close()
	}
}

// acceptedID is the number in the conn=C<n> of the debug log's "accepted"
// line for client.
func acceptedID(t *testing.T, logs, client string) uint64 {
	t.Helper()
	m := regexp.MustCompile(`msg=accepted conn=C(\d+) client=` + regexp.QuoteMeta(client) + ` `).FindStringSubmatch(logs)
	if m == nil {
		t.Fatalf("no accepted line for %s in:\n%s", client, logs)
	}
	n, _ := strconv.ParseUint(m[1], 10, 64)
	return n
}
