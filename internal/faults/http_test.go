package faults

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/detour-proxy/detour/internal/lab"
	"github.com/detour-proxy/detour/internal/ns"
)

// startHTTPLab is the TPROXY lab with go-httpbin on port 80 next to the
// fault servers, and detour sniffing (--protocol auto) with a 3s connect
// timeout (as startL4Lab's: a normal connect whose first SYN is lost takes
// 1s), a 2s route timeout and a 1s cleanup interval.
func startHTTPLab(t *testing.T) *faultLab {
	t.Helper()
	n := newLab(t)
	bin, err := lab.StartHTTPBin(n.Server, portHTTP)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bin.Close() })
	srv := startFaultServers(t, n.Server)
	dropSYNs(t, n.Server, portDropSYN)
	obsArgs, obs := observeArgs(t, n.Router)
	d := startDetour(t, n.Router, runOpts{}, append([]string{"--mode", "tproxy", "--listen", "0.0.0.0:15001", "--listen", "[::]:15001",
		"--intercept-port", interceptPorts, "--protocol", "auto", "--log-level", "debug",
		"--connect-timeout", "3s", "--route-timeout", "2s", "--cleanup-interval", "1s",
		"--header-timeout", "10s", "--stream-idle-timeout", "2s"}, obsArgs...)...)
	return &faultLab{net: n, srv: srv, d: d, obs: obs}
}

// httpClient makes its connections inside n; keepAlive keeps one
// connection per destination, else every request has its own.
func httpClient(n *ns.NS, keepAlive bool) *http.Client {
	return &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{
		DialContext:         n.Dialer(&net.Dialer{Timeout: 5 * time.Second}),
		DisableKeepAlives:   !keepAlive,
		MaxIdleConnsPerHost: 1,
		MaxConnsPerHost:     1,
	}}
}

// get fetches url and returns the status and body.
func get(c *http.Client, url string) (int, string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// getOK is one normal request to httpbin through detour.
func getOK(c *http.Client, dst netip.Addr) error {
	code, body, err := get(c, "http://"+hostPort(dst, portHTTP)+"/get")
	if err != nil {
		return err
	}
	if code != 200 || !strings.Contains(body, `"url"`) {
		return fmt.Errorf("GET /get via %s: %d %q", dst, code, body)
	}
	return nil
}

// rawRequest connects to dst:port and writes head (and body bytes).
func rawRequest(t *testing.T, n *ns.NS, dst netip.Addr, port int, head string, body int) *net.TCPConn {
	t.Helper()
	c := dialTCP(t, n, dst, port)
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(c, head); err != nil {
		t.Fatal(err)
	}
	if body > 0 {
		if _, err := c.Write(make([]byte, body)); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// TestHTTPFaults injects upstream and client faults into HTTP requests
// through one detour, while a canary keeps requesting httpbin through it
// and a slowloris client trickles its headers.
func TestHTTPFaults(t *testing.T) {
	needRoot(t)
	t.Parallel()
	l := startHTTPLab(t)
	cli, pid := l.net.Client, l.d.Pid()
	v4, v6 := l.net.ServerIP4, l.net.ServerIP6
	oneShot := httpClient(cli, false)

	for _, dst := range []netip.Addr{v4, v6, v4, v6} { // warm up
		if err := getOK(oneShot, dst); err != nil {
			t.Fatalf("normal request through detour before any fault: %v", err)
		}
	}
	// The warm-up hosts go after the 1s cleanup interval, with their pools.
	waitUntil(10*time.Second, func() bool { return l.d.log.count("removing stale host") >= 2 })
	time.Sleep(200 * time.Millisecond)
	base := fdsOf(t, pid)
	t.Logf("detour after warm-up: %v, VmRSS %.1f MiB", base, rssMiB(t, pid))

	keep := httpClient(cli, true)
	// flags counts the access log records each fault produced, by flag:
	// the metrics must count at least as many.
	flags := map[string]float64{}
	can := startCanary(100*time.Millisecond, func(i int) error {
		if i%2 == 1 {
			return getOK(keep, v6)
		}
		return getOK(keep, v4)
	})
	serving := func(t *testing.T) {
		t.Helper()
		for _, dst := range []netip.Addr{v4, v6} {
			if err := getOK(oneShot, dst); err != nil {
				t.Errorf("after the fault, a normal request to %s failed: %v", dst, err)
			}
		}
	}

	// Slowloris runs alongside all the faults below.
	slow := startSlowloris(cli, v4)

	for _, dst := range []netip.Addr{v4, v6} {
		t.Run("refused upstream is 503/"+dst.String(), func(t *testing.T) {
			mark := l.d.log.len()
			start := time.Now()
			code, body, err := get(oneShot, "http://"+hostPort(dst, portRefused)+"/")
			if err != nil {
				t.Fatal(err)
			}
			if code != 503 || !strings.Contains(body, "connection refused") {
				t.Errorf("got %d %q, want 503 naming connection refused", code, body)
			}
			if el := time.Since(start); el > 3*time.Second {
				t.Errorf("503 after %v, want at once", el)
			}
			l.d.log.waitLog(t, mark, 5*time.Second, `msg="upstream error"`, "flags=UF", "connection refused")
			l.obs.wantCount(t, flags, "kind=http", "original_dst="+hostPort(dst, portRefused), "status=503", "flags=UF")
			serving(t)
		})
	}

	t.Run("SYN-dropping upstream is 503 connect timeout", func(t *testing.T) {
		mark := l.d.log.len()
		attempts := synAttempts(t, l.net.Server)
		start := time.Now()
		code, body, err := get(oneShot, "http://"+hostPort(v4, portDropSYN)+"/")
		el := time.Since(start)
		if err != nil {
			t.Fatal(err)
		}
		if code != 503 || !strings.Contains(body, "connect timeout") {
			t.Errorf("got %d %q, want 503 naming connect timeout", code, body)
		}
		t.Logf("503 %q after %v (--connect-timeout 3s)", body, el.Round(time.Millisecond))
		// auto mode dials while it sniffs; when that connect fails, L7
		// answers with its error instead of dialing again: one connect,
		// counted where the server drops it. (Telling one timeout from
		// two by the clock alone needed a bound 0.8s above the timeout,
		// too close for a loaded 2-CPU machine.)
		if n := synAttempts(t, l.net.Server) - attempts; n != 1 {
			t.Errorf("detour connected %d times to the SYN-dropping upstream, want once (not a second connect from L7)", n)
		}
		if el < 2900*time.Millisecond || el > 8*time.Second {
			t.Errorf("503 after %v, want about the 3s connect timeout", el.Round(time.Millisecond))
		}
		l.d.log.waitLog(t, mark, 5*time.Second, `msg="upstream error"`, "flags=UF", "connect timeout")
		l.obs.wantCount(t, flags, "kind=http", "original_dst="+hostPort(v4, portDropSYN), "status=503", "flags=UF")
		serving(t)
	})

	t.Run("silent upstream is 504 after the route timeout", func(t *testing.T) {
		mark := l.d.log.len()
		start := time.Now()
		code, body, err := get(oneShot, "http://"+hostPort(v4, portSilent)+"/")
		el := time.Since(start)
		if err != nil {
			t.Fatal(err)
		}
		if code != 504 || !strings.Contains(body, "upstream request timeout") {
			t.Errorf("got %d %q, want 504 upstream request timeout", code, body)
		}
		if el < 2*time.Second || el > 6*time.Second {
			t.Errorf("504 after %v, want about the 2s route timeout", el)
		}
		l.d.log.waitLog(t, mark, 5*time.Second, `msg="upstream error"`, "flags=UT")
		l.obs.wantCount(t, flags, "kind=http", "original_dst="+hostPort(v4, portSilent), "status=504", "flags=UT")
		serving(t)
	})

	for _, dst := range []netip.Addr{v4, v6} {
		t.Run("upstream reset mid-response truncates, never completes/"+dst.String(), func(t *testing.T) {
			mark := l.d.log.len()
			resp, err := oneShot.Get("http://" + hostPort(dst, portResetMid) + "/")
			if err != nil {
				t.Fatalf("the response headers should arrive before the reset: %v", err)
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			t.Logf("status %d, Content-Length %d, got %d bytes, then %v", resp.StatusCode, resp.ContentLength, len(b), err)
			if err == nil {
				t.Errorf("the body read ended cleanly after %d bytes: a truncated response passed as complete", len(b))
			}
			if len(b) >= resetMidBody {
				t.Errorf("got %d bytes, more than the server sent", len(b))
			}
			l.d.log.waitLog(t, mark, 5*time.Second, "msg=request", "path=/", "flags=UC")
			l.obs.wantCount(t, flags, "kind=http", "original_dst="+hostPort(dst, portResetMid), "flags=~UC")
			serving(t)
		})
	}

	t.Run("pooled connection closed as it is reused: GET retried, POST not", func(t *testing.T) {
		c := httpClient(cli, true)
		defer c.CloseIdleConnections()
		base := "http://" + hostPort(v4, portReuseRace)
		for i, path := range []string{"/first", "/reused"} {
			code, body, err := get(c, base+path)
			if err != nil || code != 200 || body != "first" {
				t.Fatalf("GET %s (#%d): %d %q %v, want 200 from a retry on a new connection", path, i+1, code, body, err)
			}
		}
		reqs := l.srv.raceRequests()
		t.Logf("server saw %v", reqs)
		if len(reqs) != 3 || reqs[1].nth != 2 || reqs[2].nth != 1 || reqs[2].method != "GET" {
			t.Errorf("server saw %v, want GET#1, GET#2 (closed unanswered), GET#1 on a new connection (the retry)", reqs)
		}

		mark := l.d.log.len()
		resp, err := c.Post(base+"/post", "text/plain", strings.NewReader("a body that must not be sent twice"))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		t.Logf("POST on the closing pooled connection: %d %q", resp.StatusCode, body)
		if resp.StatusCode != 503 && resp.StatusCode != 502 {
			t.Errorf("POST got %d %q, want 502 or 503 (not retried)", resp.StatusCode, body)
		}
		posts := 0
		for _, r := range l.srv.raceRequests() {
			if r.method == "POST" {
				posts++
			}
		}
		if posts != 1 {
			t.Errorf("server saw the POST %d times, want once: a request with a body was retried", posts)
		}
		l.d.log.waitLog(t, mark, 5*time.Second, `msg="upstream error"`, "flags=UC")
		l.obs.wantCount(t, flags, "kind=http", "method=POST", "path=/post", "status="+strconv.Itoa(resp.StatusCode), "flags=~UC")
		serving(t)
	})

	t.Run("client vanishes mid-request: upstream closed", func(t *testing.T) {
		drain(l.srv.uploaded)
		mark := l.d.log.len()
		const announced, sent = 8 << 20, 256 << 10
		c := rawRequest(t, cli, v4, portUpload, fmt.Sprintf("POST /upload HTTP/1.1\r\nHost: fault\r\nContent-Length: %d\r\n\r\n", announced), sent)
		time.Sleep(300 * time.Millisecond) // let the body start flowing upstream
		c.Close()
		gone := time.Now()
		o := next(t, l.srv.uploaded, 10*time.Second, "client vanished mid-request")
		t.Logf("server read %d of %d body bytes, then %v, %v after the client closed", o.n, announced, o.err, o.at.Sub(gone).Round(time.Millisecond))
		if o.err == nil || o.n >= announced {
			t.Errorf("server read a complete body (%d bytes, %v) the client never sent", o.n, o.err)
		}
		if d := o.at.Sub(gone); d > 5*time.Second {
			t.Errorf("upstream connection closed only %v after the client vanished", d)
		}
		t.Logf("detour: %s", l.d.log.waitLog(t, mark, 5*time.Second, "msg=request", "path=/upload", "flags=DC"))
		l.obs.wantCount(t, flags, "kind=http", "path=/upload", "flags=~DC")
		serving(t)
	})

	t.Run("client vanishes mid-response: upstream closed", func(t *testing.T) {
		drain(l.srv.downloaded)
		mark := l.d.log.len()
		c := rawRequest(t, cli, v4, portDownload, "GET /?n=1073741824 HTTP/1.1\r\nHost: fault\r\n\r\n", 0)
		if _, err := io.ReadFull(c, make([]byte, 1<<20)); err != nil {
			t.Fatalf("reading the first MiB: %v", err)
		}
		c.SetLinger(0)
		c.Close()
		gone := time.Now()
		o := next(t, l.srv.downloaded, 10*time.Second, "client vanished mid-response")
		t.Logf("server wrote %d bytes, then %v, %v after the client's reset", o.n, o.err, o.at.Sub(gone).Round(time.Millisecond))
		if o.err == nil {
			t.Errorf("server wrote the whole body to a client that had reset")
		}
		if d := o.at.Sub(gone); d > 5*time.Second {
			t.Errorf("upstream connection closed only %v after the client vanished", d)
		}
		line := l.d.log.waitLog(t, mark, 5*time.Second, "msg=request", "dst="+hostPort(v4, portDownload))
		t.Logf("detour: %s", line)
		// Whether the client write fails first or net/http notices the reset
		// and cancels the request (the upstream read fails first), it is DC.
		if !strings.Contains(line, "flags=DC") {
			t.Errorf("a client that reset mid-response was not flagged DC: %s", line)
		}
		l.obs.wantCount(t, flags, "kind=http", "original_dst="+hostPort(v4, portDownload), "flags=~DC")
		serving(t)
	})

	t.Run("client that never reads: bounded memory, closed after the stream idle timeout", func(t *testing.T) {
		drain(l.srv.downloaded)
		mark := l.d.log.len()
		before := rssMiB(t, pid)
		start := time.Now()
		c := rawRequest(t, cli, v4, portDownload, "GET /?n=1073741824 HTTP/1.1\r\nHost: fault\r\n\r\n", 0)
		peak := before
		for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
			peak = max(peak, rssMiB(t, pid))
		}
		t.Logf("detour VmRSS %.1f MiB before, peak %.1f MiB while the server pushes 1 GiB to a client that reads nothing", before, peak)
		if peak > before+64 {
			t.Errorf("detour's VmRSS grew from %.1f to %.1f MiB for one stalled client, want under +64 MiB", before, peak)
		}
		// --stream-idle-timeout 2s: the write to the client that stays
		// blocked fails, detour closes both connections.
		o := next(t, l.srv.downloaded, 10*time.Second, "stalled response closed by the stream idle timeout")
		t.Logf("detour closed the stalled response after %d bytes, %v after the request: %v", o.n, o.at.Sub(start).Round(time.Millisecond), o.err)
		if o.err == nil {
			t.Errorf("the server wrote the whole body to a client that never read")
		}
		if d := o.at.Sub(start); d < 1500*time.Millisecond || d > 5*time.Second {
			t.Errorf("upstream connection closed %v after the request, want about the 2s stream idle timeout", d)
		}
		t.Logf("detour: %s", l.d.log.waitLog(t, mark, 5*time.Second, "msg=request", "dst="+hostPort(v4, portDownload), "flags=SI"))
		l.d.log.waitLog(t, mark, 5*time.Second, "stream idle timeout")
		l.obs.wantCount(t, flags, "kind=http", "original_dst="+hostPort(v4, portDownload), "status=200", "flags=SI")
		c.SetLinger(0)
		c.Close()
	})

	t.Run("slowloris closed after the header timeout", func(t *testing.T) {
		r := slow.wait(t)
		t.Logf("slowloris: trickled %d header bytes over %v, then %v; got %q", r.sent, r.closedAfter.Round(time.Millisecond), r.err, r.got)
		// --header-timeout 10s (the default).
		if r.closedAfter < 9*time.Second || r.closedAfter > 25*time.Second {
			t.Errorf("slowloris connection closed after %v, want about the 10s header timeout", r.closedAfter)
		}
		if strings.HasPrefix(r.got, "HTTP/1.1 2") {
			t.Errorf("slowloris got a success response: %q", r.got)
		}
		named := l.d.log.find(r.local)
		t.Logf("detour's log lines about the slowloris connection (%s):\n%s", r.local, strings.Join(named, "\n"))
		if !containsAny(named, "request header timeout") || !containsAny(named, "flags=HT") {
			t.Errorf("detour logged no line naming the header timeout that closed the slowloris connection %s", r.local)
		}
		if l.obs != nil {
			l.obs.wantCount(t, flags, "kind=http", "client="+r.local, "status=0", "flags=HT")
		}
	})

	can.finish(t)
	keep.CloseIdleConnections()
	for flag, n := range flags {
		l.obs.wantMetric(t, n, "detour_http_response_flags_total", `flag="`+flag+`"`)
	}
	// The fault hosts and their pools go after the 1s cleanup interval.
	if now := waitFDs(t, pid, base, 0, 15*time.Second, "after the HTTP faults"); now.other > base.other {
		t.Logf("router sockets:\n%s", sockets(l.net.Router))
	}
	if l.d.log.count("WARNING: DATA RACE") > 0 || l.d.log.count("panic:") > 0 {
		t.Error("detour reported a data race or a panic")
	}
}

// slowloris is a client that sends a request line and then one header
// byte every 500ms, never finishing its headers.
type slowloris struct {
	done chan slowResult
}

type slowResult struct {
	local       string // the client's address, as detour logs it
	sent        int
	closedAfter time.Duration
	err         error
	got         string
}

func startSlowloris(n *ns.NS, dst netip.Addr) *slowloris {
	s := &slowloris{done: make(chan slowResult, 1)}
	go func() {
		c, err := n.Dialer(nil)(bgCtx(), "tcp", hostPort(dst, portHTTP))
		if err != nil {
			s.done <- slowResult{err: err}
			return
		}
		defer c.Close()
		local := c.LocalAddr().String()
		start := time.Now()
		io.WriteString(c, "GET /get HTTP/1.1\r\n")
		closed := make(chan slowResult, 1)
		go func() {
			c.SetReadDeadline(time.Now().Add(60 * time.Second))
			b, err := io.ReadAll(bufio.NewReader(c))
			if err == nil {
				err = io.EOF
			}
			closed <- slowResult{closedAfter: time.Since(start), err: err, got: string(b)}
		}()
		header := []byte("X-Slowloris: " + strings.Repeat("a", 200))
		for i := 0; ; i++ {
			select {
			case r := <-closed:
				r.sent, r.local = i, local
				s.done <- r
				return
			case <-time.After(500 * time.Millisecond):
			}
			if _, err := c.Write(header[i%len(header) : i%len(header)+1]); err != nil && !errors.Is(err, net.ErrClosed) {
				// Keep waiting for the read side to report.
				continue
			}
		}
	}()
	return s
}

func (s *slowloris) wait(t *testing.T) slowResult {
	t.Helper()
	select {
	case r := <-s.done:
		return r
	case <-time.After(70 * time.Second):
		t.Fatal("slowloris connection still open after 70s")
		return slowResult{}
	}
}

func containsAny(lines []string, subs ...string) bool {
	for _, l := range lines {
		for _, s := range subs {
			if strings.Contains(l, s) {
				return true
			}
		}
	}
	return false
}
