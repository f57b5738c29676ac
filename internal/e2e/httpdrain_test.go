package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/detour-proxy/detour/internal/ns"
)

const portDrainHTTP = 7032 // drainServer: /ok, /slow, /hang, /who

// drainServer is an HTTP server in the server namespace whose answers the
// drain test times: /slow answers 1 s after release is closed, /hang
// never. It records the peer of each request by path.
type drainServer struct {
	got     chan string   // the paths of /slow and /hang as they arrive
	release chan struct{} // closed by the test: /slow may answer

	mu    sync.Mutex
	peers map[string]netip.AddrPort
}

func startDrainServer(t *testing.T, n *ns.NS) *drainServer {
	t.Helper()
	s := &drainServer{got: make(chan string, 8), release: make(chan struct{}), peers: map[string]netip.AddrPort{}}
	ln, err := n.Listen("tcp4", net.JoinHostPort("0.0.0.0", strconv.Itoa(portDrainHTTP)))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(s.serve)}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return s
}

func (s *drainServer) serve(w http.ResponseWriter, r *http.Request) {
	peer := netip.MustParseAddrPort(r.RemoteAddr)
	peer = netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port())
	s.mu.Lock()
	s.peers[r.URL.Path] = peer
	s.mu.Unlock()
	switch r.URL.Path {
	case "/slow":
		s.got <- r.URL.Path
		select {
		case <-s.release:
		case <-r.Context().Done():
			return
		}
		time.Sleep(time.Second)
		w.Write([]byte("slow"))
	case "/hang":
		s.got <- r.URL.Path
		<-r.Context().Done()
	case "/who":
		w.Write([]byte(peer.Addr().String()))
	default:
		w.Write([]byte("ok"))
	}
}

func (s *drainServer) peer(path string) netip.AddrPort {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peers[path]
}

// httpConn is a client's keep-alive connection that sends requests by hand,
// so the test sees exactly what detour does to it.
type httpConn struct {
	c  *net.TCPConn
	br *bufio.Reader
}

func dialHTTP(t *testing.T, n *ns.NS, dst netip.Addr) *httpConn {
	c := dial(t, n, dst, portDrainHTTP)
	c.SetDeadline(time.Now().Add(time.Minute))
	return &httpConn{c: c, br: bufio.NewReader(c)}
}

func (h *httpConn) send(t *testing.T, path string) {
	t.Helper()
	if _, err := fmt.Fprintf(h.c, "GET %s HTTP/1.1\r\nHost: drain.test\r\n\r\n", path); err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
}

// read reads a whole response; it fails the test unless it is 200 with body.
func (h *httpConn) read(t *testing.T, path, body string) *http.Response {
	t.Helper()
	resp, err := http.ReadResponse(h.br, nil)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || string(b) != body {
		t.Fatalf("GET %s: %s %q, %v; want 200 %q", path, resp.Status, b, err, body)
	}
	return resp
}

// closed reports whether the peer closed the connection before deadline:
// a read returns EOF or a reset rather than data or a timeout.
func (h *httpConn) closed(deadline time.Time) (bool, error) {
	h.c.SetReadDeadline(deadline)
	n, err := h.br.Read(make([]byte, 1))
	if n > 0 {
		return false, fmt.Errorf("got data")
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false, err
	}
	return true, err
}

// upstreamSockets lists the router's sockets to the server's port that
// are not in TIME-WAIT, as "STATE local-port".
func upstreamSockets(t *testing.T, n *ns.NS) []string {
	t.Helper()
	out, err := n.Command(context.Background(), "ss", "-tnHa", "dport", "=", ":"+strconv.Itoa(portDrainHTTP)).CombinedOutput()
	if err != nil {
		t.Fatalf("ss: %v\n%s", err, out)
	}
	var socks []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) < 4 || f[0] == "TIME-WAIT" {
			continue
		}
		local, err := netip.ParseAddrPort(f[3])
		if err != nil {
			t.Fatalf("ss: local address %q: %v", f[3], err)
		}
		socks = append(socks, f[0]+" "+strconv.Itoa(int(local.Port())))
	}
	return socks
}

// TestHTTPDrainOnSIGTERM: what README "Stopping" says the drain does to
// HTTP, through the binary in the tproxy lab. At SIGTERM an idle
// keep-alive connection served by the loops closes at once; a request in
// flight gets its whole response with Connection: close, then its
// connection closes; one that outlasts drain_timeout is cut and logged
// with flag DT; a new connection reaches the server directly; no upstream
// connection but the hanging request's stays open; then detour exits 0
// with its rules gone. On the fast path a request whose head is half sent
// at SIGTERM is answered too (net/http closes its connection unanswered:
// its Server drops a request whose head completes after Shutdown began).
func TestHTTPDrainOnSIGTERM(t *testing.T) {
	needRoot(t)
	const drain = 8 * time.Second
	for _, tc := range []struct {
		name, tag, config string
		// fast: the fast path serves, the idle connection's third request
		// on a loop. It answers a request whose head is half sent at
		// SIGTERM; net/http closes that connection unanswered.
		fast bool
	}{
		{"auto", "hda", "protocol: auto\n", true},
		{"http", "hdh", "protocol: http\n", true},
		{"http net/http", "hdn", "protocol: http\nhttp: {disable_fast_path: true}\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			n := tproxyNet(t, tc.tag)
			srv := startDrainServer(t, n.Server)
			logPath := filepath.Join(t.TempDir(), "access.log")
			path, write := configFile(t)
			write(fmt.Sprintf("mode: tproxy\nadmin: %s\ndrain_timeout: %s\naccess_log: %s\nintercept: {ports: [%d]}\n%s",
				obsAdmin, drain, logPath, portDrainHTTP, tc.config))
			before := snapshot(t, n.Router)
			d := startDetour(t, n.Router, "-c", path)

			// (a) A keep-alive connection with three requests behind it:
			// from its third request the loops serve it.
			idle := dialHTTP(t, n.Client, n.ServerIP4)
			for range 3 {
				idle.send(t, "/ok")
				idle.read(t, "/ok", "ok")
			}
			if p := srv.peer("/ok"); p.Addr() == n.ClientIP4 {
				t.Fatalf("/ok reached the server from the client %s: not through detour", p)
			}
			if tc.fast {
				host := fmt.Sprintf("detour_upstream_loop_requests_total{host=%s:%d}", n.ServerIP4, portDrainHTTP)
				obsWaitMetrics(t, obsClient(n.Router), map[string]float64{host: 1})
			}
			// (b) and (c): requests in flight at SIGTERM.
			slow := dialHTTP(t, n.Client, n.ServerIP4)
			slow.send(t, "/slow")
			hang := dialHTTP(t, n.Client, n.ServerIP4)
			hang.send(t, "/hang")
			// (g) A request whose head is half sent at SIGTERM: it starts
			// during the drain.
			var late *httpConn
			if tc.fast {
				late = dialHTTP(t, n.Client, n.ServerIP4)
				if _, err := io.WriteString(late.c, "GET /late HTTP/1.1\r\nHost: drain.test\r\n"); err != nil {
					t.Fatal(err)
				}
			}
			for range 2 {
				select {
				case <-srv.got:
				case <-time.After(10 * time.Second):
					t.Fatal("the server did not get /slow and /hang")
				}
			}

			// Every connection is with the HTTP side before SIGTERM: one
			// still sniffed or on its way there when the drain begins is
			// closed, as a connection that sent no request (under CI's
			// load /late was, now and then).
			conns := 3.0 // idle, slow, hang
			if tc.fast {
				conns++ // late
			}
			obsWaitMetrics(t, obsClient(n.Router), map[string]float64{"detour_http_connections_active": conns})

			term := time.Now()
			if err := syscall.Kill(d.Pid(), syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			waitLog(t, d.Output, "shutting down: draining connections", 1)
			close(srv.release) // /slow answers a second into the drain

			// (a) The idle connection is closed at once, well before
			// drain_timeout.
			if ok, err := idle.closed(term.Add(drain / 2)); !ok {
				t.Errorf("the idle keep-alive connection is still open %v after SIGTERM (drain_timeout %v): %v", time.Since(term), drain, err)
			}
			// (b) The slow response comes whole, says Connection: close,
			// and its connection closes after it.
			resp := slow.read(t, "/slow", "slow")
			if !resp.Close { // ReadResponse takes "Connection: close" out of the header into Close
				t.Errorf("/slow answered during the drain without Connection: close")
			}
			if ok, err := slow.closed(term.Add(drain / 2)); !ok {
				t.Errorf("the connection of /slow is still open after its response: %v", err)
			}
			// (g) The fast path answers the late request like the slow one.
			if tc.fast {
				if _, err := io.WriteString(late.c, "\r\n"); err != nil {
					t.Fatal(err)
				}
				if resp := late.read(t, "/late", "ok"); !resp.Close {
					t.Errorf("/late answered during the drain without Connection: close")
				}
				if ok, err := late.closed(term.Add(drain / 2)); !ok {
					t.Errorf("the connection of /late is still open after its response: %v", err)
				}
			}
			// (d) A new connection passes directly.
			who := dialHTTP(t, n.Client, n.ServerIP4)
			who.send(t, "/who")
			who.read(t, "/who", n.ClientIP4.String())

			// (f) Of the router's upstream connections only the hanging
			// request's is left, while the drain goes on.
			want := []string{"ESTAB " + strconv.Itoa(int(srv.peer("/hang").Port()))}
			var socks []string
			for deadline := time.Now().Add(drain / 4); ; time.Sleep(50 * time.Millisecond) {
				if socks = upstreamSockets(t, n.Router); strings.Join(socks, ",") == want[0] {
					break
				}
				if time.Now().After(deadline) {
					t.Errorf("upstream sockets in the router during the drain: %q, want only /hang's %q", socks, want)
					break
				}
			}
			select {
			case <-d.Done():
				t.Fatalf("detour exited with /hang in flight, %v into a drain of %v", time.Since(term), drain)
			default:
			}

			// (c) The hanging request is cut when drain_timeout ends.
			if ok, err := hang.closed(term.Add(drain + 15*time.Second)); !ok {
				t.Errorf("/hang still open %v after SIGTERM (drain_timeout %v): %v", time.Since(term), drain, err)
			}
			// (e) detour exits 0 and takes its rules with it.
			exitsClean(t, d, n.Router, before, 15*time.Second, "/hang was cut")

			b, err := os.ReadFile(logPath)
			if err != nil {
				t.Fatal(err)
			}
			var hangLine string
			for _, line := range strings.Split(string(b), "\n") {
				if strings.Contains(line, "/hang") {
					hangLine = line
				}
			}
			if !regexp.MustCompile(`\bflags=\S*DT`).MatchString(hangLine) {
				t.Errorf("access log has no flag DT for /hang:\n%s", b)
			}
			// detour's own log says what the access log says of it: the
			// cut /hang is the one request here that fails.
			for _, line := range strings.Split(d.Output(), "\n") {
				if strings.Contains(line, "upstream error") && !strings.Contains(line, "flags=DT") {
					t.Errorf("detour's log of the cut request: %s; want flags=DT", line)
				}
			}
		})
	}
}
