package faults

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/detour-proxy/detour/internal/lab"
	"github.com/detour-proxy/detour/internal/ns"
)

// Server ports in the lab, each with one behaviour. All are intercepted.
const (
	portEcho      = 7001 // echoes until the client's FIN, then half-closes
	portRefused   = 7003 // nothing listens: connects are refused (RST)
	portSilent    = 7006 // accepts and reads, never answers
	portResetMid  = 7007 // reads a request, sends half a Content-Length body, then resets
	portReuseRace = 7008 // HTTP keep-alive; closes a connection when its 2nd request arrives
	portDownload  = 7009 // HTTP: GET /?n=BYTES sends BYTES of body
	portDropSYN   = 7010 // SYNs dropped by nftables in the server namespace
	portPush      = 7011 // writes 1 GiB as soon as a client connects
	portUpload    = 7012 // HTTP: reads the request body, then answers
	portHTTP      = 80   // go-httpbin or a plain HTTP server: the "normal" traffic
)

// interceptPorts is every port above, for --intercept-port.
const interceptPorts = "80,7001,7003,7006,7007,7008,7009,7010,7011,7012"

// resetMidBody is the Content-Length portResetMid announces; it sends half.
const resetMidBody = 1 << 20

// pushSize is how much portPush tries to write.
const pushSize = 1 << 30

// outcome is what a server saw of one connection's end.
type outcome struct {
	n   int64 // bytes written (push, download) or read (upload)
	err error // nil when the transfer completed
	at  time.Time
}

// request is one request the reuse-race server read.
type request struct {
	method string
	nth    int // 1 for the first request on its connection
	body   int // body bytes read
}

// faultServers runs the behaviours above in the server namespace, on
// 0.0.0.0 and [::].
type faultServers struct {
	pushed     chan outcome // one per portPush connection
	downloaded chan outcome // one per portDownload request
	uploaded   chan outcome // one per portUpload request

	mu    sync.Mutex
	race  []request
	conns map[net.Conn]struct{}
}

func startFaultServers(t *testing.T, n *ns.NS) *faultServers {
	t.Helper()
	s := &faultServers{
		pushed:     make(chan outcome, 64),
		downloaded: make(chan outcome, 64),
		uploaded:   make(chan outcome, 64),
		conns:      map[net.Conn]struct{}{},
	}
	for port, h := range map[int]func(*net.TCPConn){
		portEcho: serveEcho, portSilent: serveSilent, portResetMid: serveResetMid,
		portReuseRace: s.serveReuseRace, portDownload: s.serveDownload, portDropSYN: serveSilent,
		portPush: s.servePush, portUpload: s.serveUpload,
	} {
		serveTCP(t, n, port, s.track(h))
	}
	t.Cleanup(func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		for c := range s.conns {
			c.Close()
		}
	})
	return s
}

// track remembers open connections so cleanup can close them.
func (s *faultServers) track(h func(*net.TCPConn)) func(*net.TCPConn) {
	return func(c *net.TCPConn) {
		s.mu.Lock()
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		defer func() {
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
		h(c)
	}
}

// serveTCP runs h for each connection to port in n until the test ends.
func serveTCP(t *testing.T, n *ns.NS, port int, h func(*net.TCPConn)) {
	t.Helper()
	stop, err := lab.ServeTCP(n, port, h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
}

func serveEcho(c *net.TCPConn) {
	io.Copy(c, c)
	c.CloseWrite()
	io.Copy(io.Discard, c)
}

func serveSilent(c *net.TCPConn) { io.Copy(io.Discard, c) }

// serveResetMid reads a request head (any bytes up to a blank line, so
// that L4 clients can use it too), sends the response headers and half
// the body, waits for it to be delivered, and resets.
func serveResetMid(c *net.TCPConn) {
	br := bufio.NewReader(c)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		if line == "\r\n" || line == "\n" {
			break
		}
	}
	fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n", resetMidBody)
	c.Write(make([]byte, resetMidBody/2))
	time.Sleep(300 * time.Millisecond) // let the half body reach the client
	c.SetLinger(0)
	c.Close()
}

// serveReuseRace answers the first request of each connection with keep-
// alive (no Connection: close), and closes the connection without an
// answer when a second request arrives on it: what a server does when its
// idle timeout fires just as a proxy reuses the pooled connection.
func (s *faultServers) serveReuseRace(c *net.TCPConn) {
	br := bufio.NewReader(c)
	for nth := 1; ; nth++ {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		n, _ := io.Copy(io.Discard, req.Body)
		s.mu.Lock()
		s.race = append(s.race, request{method: req.Method, nth: nth, body: int(n)})
		s.mu.Unlock()
		if nth >= 2 {
			return // closed with a FIN, nothing answered
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")
	}
}

func (s *faultServers) raceRequests() []request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]request(nil), s.race...)
}

// serveDownload answers GET /?n=BYTES with BYTES of body (keep-alive), and
// reports how far each response got.
func (s *faultServers) serveDownload(c *net.TCPConn) {
	br := bufio.NewReader(c)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		io.Copy(io.Discard, req.Body)
		size, _ := strconv.ParseInt(req.URL.Query().Get("n"), 10, 64)
		if _, err := fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n", size); err != nil {
			s.downloaded <- outcome{err: err, at: time.Now()}
			return
		}
		n, err := writePattern(c, size)
		s.downloaded <- outcome{n: n, err: err, at: time.Now()}
		if err != nil {
			return
		}
	}
}

// servePush writes pushSize bytes to whoever connects and reports when it
// stopped and why.
func (s *faultServers) servePush(c *net.TCPConn) {
	n, err := writePattern(c, pushSize)
	s.pushed <- outcome{n: n, err: err, at: time.Now()}
}

// serveUpload reads a request and its body, reporting how much arrived and
// whether the body was complete, then answers 200.
func (s *faultServers) serveUpload(c *net.TCPConn) {
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	n, err := io.Copy(io.Discard, req.Body)
	s.uploaded <- outcome{n: n, err: err, at: time.Now()}
	if err == nil {
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
	}
}

// writePattern writes size bytes of a fixed pattern in 64 KiB chunks.
func writePattern(w io.Writer, size int64) (int64, error) {
	chunk := make([]byte, 64<<10)
	for i := range chunk {
		chunk[i] = byte(i)
	}
	var n int64
	for n < size {
		m, err := w.Write(chunk[:min(int64(len(chunk)), size-n)])
		n += int64(m)
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// drain empties a report channel left over from earlier steps.
func drain(ch chan outcome) {
	for {
		select {
		case <-ch:
		default:
			return
		}
	}
}

// next waits for a report.
func next(t *testing.T, ch chan outcome, timeout time.Duration, what string) outcome {
	t.Helper()
	select {
	case o := <-ch:
		return o
	case <-time.After(timeout):
		t.Fatalf("%s: the server saw no end of its connection within %v (leaked upstream connection?)", what, timeout)
		return outcome{}
	}
}
