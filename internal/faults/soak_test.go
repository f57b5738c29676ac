package faults

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/detour-proxy/detour/internal/lab"
	"github.com/detour-proxy/detour/internal/ns"
)

// Soak ports.
const (
	portSumL4   = 7030 // L4: [8-byte download size][32-byte seed] upload... FIN → sha256(upload) + download
	portSumHTTP = 7031 // HTTP: /dl?n=&seed= and POST /sum
)

// soakStats are the soak's figures.
type soakStats struct {
	l4Conns, httpReqs         atomic.Int64 // normal exchanges that verified
	bytesUp, bytesDown        atomic.Int64 // verified payload bytes
	faults                    atomic.Int64 // injected faults that got the right signal
	unexpected                atomic.Int64 // anything else: a checksum mismatch, a normal exchange failing, a wrong fault signal
	mu                        sync.Mutex
	firstUnexpected           []string
	slowReads, slowReadsBytes atomic.Int64
}

func (s *soakStats) bad(format string, args ...any) {
	s.unexpected.Add(1)
	s.mu.Lock()
	if len(s.firstUnexpected) < 10 {
		s.firstUnexpected = append(s.firstUnexpected, fmt.Sprintf(format, args...))
	}
	s.mu.Unlock()
}

// TestSoak runs mixed L4 and HTTP load with faults through a race-enabled
// detour for DETOUR_SOAK_DURATION (default 5m), checksumming every byte
// on both ends; at the end detour must have reported no race, and its
// descriptors and goroutines must be back to their baseline. Run it with
//
//	DETOUR_SOAK=1 go test -count=1 -run TestSoak -v -timeout 30m ./internal/faults
func TestSoak(t *testing.T) {
	needRoot(t)
	if os.Getenv("DETOUR_SOAK") == "" {
		t.Skip("soak test: set DETOUR_SOAK=1 to run it (about 5 minutes; DETOUR_SOAK_DURATION changes that)")
	}
	dur := 5 * time.Minute
	if v := os.Getenv("DETOUR_SOAK_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("DETOUR_SOAK_DURATION=%q: %v", v, err)
		}
		dur = d
	}
	bin := os.Getenv("DETOUR_RACE_BIN") // a prebuilt `go build -race` binary, when set
	if bin == "" {
		raceDir := filepath.Join(buildDir, "race")
		os.MkdirAll(raceDir, 0o755)
		buildStart := time.Now()
		var err error
		if bin, err = lab.BuildDetour(raceDir, "-race"); err != nil {
			t.Fatal(err)
		}
		t.Logf("built detour with -race in %v", time.Since(buildStart).Round(time.Second))
	}

	n := newLab(t)
	srv := startFaultServers(t, n.Server)
	serveTCP(t, n.Server, portSumL4, serveSumL4)
	startSumHTTP(t, n.Server)
	obsArgs, obs := observeArgs(t, n.Router)
	ports := interceptPorts + "," + strconv.Itoa(portSumL4) + "," + strconv.Itoa(portSumHTTP)
	d := startDetour(t, n.Router, runOpts{bin: bin}, append([]string{"--mode", "tproxy", "--listen", "0.0.0.0:15001", "--listen", "[::]:15001",
		"--intercept-port", ports, "--protocol", "auto", "--log-level", "info",
		"--idle-timeout", "30s", "--cleanup-interval", "1s"}, obsArgs...)...)
	pid := d.Pid()

	st := &soakStats{}
	dsts := []netip.Addr{n.ServerIP4, n.ServerIP6}
	// Warm up every path once, then let the hosts go.
	rng := rand.New(rand.NewPCG(1, 2))
	for _, dst := range dsts {
		soakL4(n.Client, dst, rng, st, false)
		soakHTTP(soakClient(n.Client, false), dst, rng, st, false)
	}
	if st.unexpected.Load() > 0 {
		t.Fatalf("warm-up failed: %v", st.firstUnexpected)
	}
	time.Sleep(3 * time.Second)
	base, baseRSS, baseG := fdsOf(t, pid), rssMiB(t, pid), obs.goroutines(t)
	t.Logf("baseline: %v, VmRSS %.1f MiB, %d goroutines", base, baseRSS, baseG)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	worker := func(seed uint64, fn func(rng *rand.Rand, i int)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, seed*7+1))
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				fn(rng, i)
			}
		}()
	}
	for w := 0; w < 4; w++ {
		worker(uint64(10+w), func(rng *rand.Rand, i int) { soakL4(n.Client, dsts[i%2], rng, st, w == 0) })
	}
	var clients []*http.Client
	for w := 0; w < 4; w++ {
		c := soakClient(n.Client, w != 3)
		clients = append(clients, c)
		worker(uint64(20+w), func(rng *rand.Rand, i int) { soakHTTP(c, dsts[i%2], rng, st, w == 0) })
	}
	worker(30, func(rng *rand.Rand, i int) {
		soakFault(n.Client, dsts[i%2], srv, i, st)
		time.Sleep(20 * time.Millisecond)
	})

	peakRSS, peakFDs := baseRSS, base.total()
	// Hosts (and their counters) go after the cleanup interval: the
	// highest sum seen shows the loops served requests under the load.
	onLoop := -1.0
	start := time.Now()
	for time.Since(start) < dur {
		time.Sleep(5 * time.Second)
		peakRSS, peakFDs = max(peakRSS, rssMiB(t, pid)), max(peakFDs, fdCount(t, pid))
		onLoop = max(onLoop, obs.metricSum(t, "detour_upstream_loop_requests_total"))
		if testing.Verbose() && int(time.Since(start).Seconds())%60 < 5 {
			t.Logf("%v: %d L4 connections, %d HTTP requests verified, %d faults, %d unexpected", time.Since(start).Round(time.Second),
				st.l4Conns.Load(), st.httpReqs.Load(), st.faults.Load(), st.unexpected.Load())
		}
	}
	close(stop)
	wg.Wait()
	loadTime := time.Since(start)
	for _, c := range clients {
		c.CloseIdleConnections()
	}

	// Let everything finish: idle pools go after the cleanup interval.
	time.Sleep(3 * time.Second)
	now := waitFDs(t, pid, base, 64, 30*time.Second, "after the soak")
	g := obs.goroutines(t)
	if baseG >= 0 {
		if !waitUntil(30*time.Second, func() bool { g = obs.goroutines(t); return g <= baseG+5 }) {
			t.Errorf("detour has %d goroutines after the soak, baseline %d", g, baseG)
		}
	}
	endRSS := rssMiB(t, pid)
	t.Logf("soak figures (%v of load, detour built with -race, 2 cores):\n"+
		"  L4 connections verified:    %d\n"+
		"  HTTP requests verified:     %d\n"+
		"  bytes verified:             %.1f MiB up, %.1f MiB down (sha256 on both ends)\n"+
		"  slow reads verified:        %d (%.1f MiB)\n"+
		"  faults injected, right signal: %d\n"+
		"  HTTP requests a loop served: %.0f (the highest sum over live hosts, every 5 s)\n"+
		"  unexpected errors:          %d\n"+
		"  fds:        baseline %v, peak %d, end %v\n"+
		"  goroutines: baseline %d, end %d\n"+
		"  VmRSS:      baseline %.1f MiB, peak %.1f MiB, end %.1f MiB",
		loadTime.Round(time.Second), st.l4Conns.Load(), st.httpReqs.Load(),
		float64(st.bytesUp.Load())/(1<<20), float64(st.bytesDown.Load())/(1<<20),
		st.slowReads.Load(), float64(st.slowReadsBytes.Load())/(1<<20),
		st.faults.Load(), onLoop, st.unexpected.Load(), base, peakFDs, now, baseG, g, baseRSS, peakRSS, endRSS)
	if st.unexpected.Load() > 0 {
		t.Errorf("%d unexpected errors; first ones:\n%s", st.unexpected.Load(), strings.Join(st.firstUnexpected, "\n"))
	}
	if st.l4Conns.Load() == 0 || st.httpReqs.Load() == 0 || st.faults.Load() == 0 || obs != nil && onLoop <= 0 {
		t.Errorf("the soak did not exercise every path")
	}
	if err := d.Stop(); err != nil {
		t.Errorf("stopping detour: %v", err)
	}
	if races := d.log.count("WARNING: DATA RACE"); races > 0 {
		t.Errorf("detour reported %d data races:\n%s", races, strings.Join(d.log.find("DATA RACE"), "\n"))
	}
	if p := d.log.count("panic:"); p > 0 {
		t.Errorf("detour panicked")
	}
}

// sumStream is the deterministic download for a seed.
func sumStream(seed [32]byte, n int64) io.Reader {
	return io.LimitReader(rand.NewChaCha8(seed), n)
}

func shaOf(r io.Reader) ([32]byte, int64) {
	h := sha256.New()
	n, _ := io.Copy(h, r)
	return [32]byte(h.Sum(nil)), n
}

// serveSumL4: header [8-byte download size][32-byte seed], then the upload
// until FIN; answers sha256(upload) and the download, then closes.
func serveSumL4(c *net.TCPConn) {
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	var hdr [40]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return
	}
	size := int64(binary.BigEndian.Uint64(hdr[:8]))
	sum, _ := shaOf(c)
	if _, err := c.Write(sum[:]); err != nil {
		return
	}
	io.Copy(c, sumStream([32]byte(hdr[8:]), size))
}

// soakL4 is one checksummed L4 exchange; slow reads the reply in small
// pieces with pauses.
func soakL4(cli *ns.NS, dst netip.Addr, rng *rand.Rand, st *soakStats, slow bool) {
	up, down := rng.Int64N(256<<10), rng.Int64N(512<<10)
	var seed [32]byte
	binary.BigEndian.PutUint64(seed[:], rng.Uint64())
	c, err := cli.Dialer(&net.Dialer{Timeout: 30 * time.Second})(bgCtx(), "tcp", hostPort(dst, portSumL4))
	if err != nil {
		st.bad("L4 dial %s: %v", dst, err)
		return
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	var hdr [40]byte
	binary.BigEndian.PutUint64(hdr[:8], uint64(down))
	copy(hdr[8:], seed[:])
	upSeed := seed
	upSeed[31] ^= 0xff
	wantUp, _ := shaOf(sumStream(upSeed, up))
	go func() {
		c.Write(hdr[:])
		io.Copy(c, sumStream(upSeed, up))
		c.(*net.TCPConn).CloseWrite()
	}()
	var gotUp [32]byte
	if _, err := io.ReadFull(c, gotUp[:]); err != nil {
		st.bad("L4 %s: reading the upload's sha256: %v", dst, err)
		return
	}
	if gotUp != wantUp {
		st.bad("L4 %s: the server's sha256 of a %d-byte upload differs", dst, up)
		return
	}
	var r io.Reader = c
	if slow {
		r = &slowReader{r: c}
	}
	gotDown, n := shaOf(r)
	if wantDown, _ := shaOf(sumStream(seed, down)); gotDown != wantDown || n != down {
		st.bad("L4 %s: download of %d bytes: got %d, sha256 match %v", dst, down, n, gotDown == wantDown)
		return
	}
	st.l4Conns.Add(1)
	st.bytesUp.Add(up)
	st.bytesDown.Add(down)
	if slow {
		st.slowReads.Add(1)
		st.slowReadsBytes.Add(down)
	}
}

// slowReader reads at most 4 KiB at a time with a 2ms pause: a slow client.
type slowReader struct{ r io.Reader }

func (s *slowReader) Read(p []byte) (int, error) {
	time.Sleep(2 * time.Millisecond)
	return s.r.Read(p[:min(len(p), 4<<10)])
}

// startSumHTTP serves GET /dl?n=&seed= (n bytes of the seed's stream) and
// POST /sum (answers the body's sha256 in hex) on portSumHTTP.
func startSumHTTP(t *testing.T, n *ns.NS) {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /dl", func(w http.ResponseWriter, r *http.Request) {
		size, _ := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		seed, _ := hex.DecodeString(r.URL.Query().Get("seed"))
		w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
		io.Copy(w, sumStream([32]byte(append(seed, make([]byte, 32)...)[:32]), size))
	})
	mux.HandleFunc("POST /sum", func(w http.ResponseWriter, r *http.Request) {
		sum, n := shaOf(r.Body)
		fmt.Fprintf(w, "%x %d", sum, n)
	})
	for _, a := range []struct{ network, addr string }{{"tcp4", "0.0.0.0"}, {"tcp6", "::"}} {
		ln, err := n.Listen(a.network, net.JoinHostPort(a.addr, strconv.Itoa(portSumHTTP)))
		if err != nil {
			t.Fatal(err)
		}
		hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go hs.Serve(ln)
		t.Cleanup(func() { hs.Close() })
	}
}

// soakSize is the size of a soak body: under 6 KiB half the time, so that
// the epoll loops serve those exchanges whole on kept-alive connections,
// else up to 256 KiB (handed back to the connection's goroutine).
func soakSize(rng *rand.Rand) int64 {
	if rng.IntN(2) == 0 {
		return rng.Int64N(6 << 10)
	}
	return rng.Int64N(256 << 10)
}

// soakHTTP is one checksummed download and one checksummed upload.
func soakHTTP(c *http.Client, dst netip.Addr, rng *rand.Rand, st *soakStats, slow bool) {
	base := "http://" + hostPort(dst, portSumHTTP)
	size := soakSize(rng)
	var seed [32]byte
	binary.BigEndian.PutUint64(seed[:], rng.Uint64())
	resp, err := c.Get(fmt.Sprintf("%s/dl?n=%d&seed=%x", base, size, seed))
	if err != nil {
		st.bad("HTTP GET %s: %v", dst, err)
		return
	}
	var r io.Reader = resp.Body
	if slow {
		r = &slowReader{r: resp.Body}
	}
	got, n := shaOf(r)
	resp.Body.Close()
	if want, _ := shaOf(sumStream(seed, size)); resp.StatusCode != 200 || got != want || n != size {
		st.bad("HTTP GET %s: status %d, %d of %d bytes, sha256 match %v", dst, resp.StatusCode, n, size, got == want)
		return
	}
	st.httpReqs.Add(1)
	st.bytesDown.Add(size)
	if slow {
		st.slowReads.Add(1)
		st.slowReadsBytes.Add(size)
	}

	up := soakSize(rng)
	seed[0] ^= 0x55
	body := make([]byte, up)
	io.ReadFull(sumStream(seed, up), body)
	resp, err = c.Post(base+"/sum", "application/octet-stream", bytes.NewReader(body))
	if err != nil {
		st.bad("HTTP POST %s: %v", dst, err)
		return
	}
	ans, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	want := sha256.Sum256(body)
	if resp.StatusCode != 200 || err != nil || string(ans) != fmt.Sprintf("%x %d", want, up) {
		st.bad("HTTP POST %s of %d bytes: %d %q %v", dst, up, resp.StatusCode, ans, err)
		return
	}
	st.httpReqs.Add(1)
	st.bytesUp.Add(up)
}

// soakFault injects fault i (cycling through the kinds) and checks the
// client's signal.
func soakFault(cli *ns.NS, dst netip.Addr, srv *faultServers, i int, st *soakStats) {
	oneShot := soakClient(cli, false)
	ok := func(cond bool, format string, args ...any) {
		if cond {
			st.faults.Add(1)
		} else {
			st.bad("fault: "+format, args...)
		}
	}
	switch i % 7 {
	case 0: // L4 to a refused port: reset
		_, err := dialRawRead(cli, dst, portRefused, []byte{0x16, 0x03, 0x01}, 30*time.Second)
		ok(errors.Is(err, syscall.ECONNRESET), "L4 refused %s: %v, want a reset", dst, err)
	case 1: // HTTP to a refused port: 503
		code, _, err := get(oneShot, "http://"+hostPort(dst, portRefused)+"/")
		ok(err == nil && code == 503, "HTTP refused %s: %d %v, want 503", dst, code, err)
	case 2: // HTTP upstream reset mid-response: a truncated body, never a complete one
		resp, err := oneShot.Get("http://" + hostPort(dst, portResetMid) + "/")
		if err == nil {
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		ok(err != nil, "HTTP reset mid-response %s: the body read completed", dst)
	case 3: // L4 upstream reset mid-response: a reset
		_, err := dialRawRead(cli, dst, portResetMid, []byte("\x00binary request\r\n\r\n"), 30*time.Second)
		ok(errors.Is(err, syscall.ECONNRESET), "L4 reset mid-response %s: %v, want a reset", dst, err)
	case 4: // client aborts an HTTP download
		c, err := cli.Dialer(nil)(bgCtx(), "tcp", hostPort(dst, portDownload))
		if err != nil {
			st.bad("fault: dial: %v", err)
			return
		}
		c.SetDeadline(time.Now().Add(30 * time.Second))
		io.WriteString(c, "GET /?n=67108864 HTTP/1.1\r\nHost: soak\r\n\r\n")
		_, err = io.ReadFull(c, make([]byte, 256<<10))
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
		ok(err == nil, "HTTP download abort %s: %v", dst, err)
	case 5: // client aborts an L4 push
		c, err := cli.Dialer(nil)(bgCtx(), "tcp", hostPort(dst, portPush))
		if err != nil {
			st.bad("fault: dial: %v", err)
			return
		}
		c.SetDeadline(time.Now().Add(30 * time.Second))
		_, err = io.ReadFull(c, make([]byte, 256<<10))
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
		ok(err == nil, "L4 push abort %s: %v", dst, err)
	case 6: // client vanishes mid-request
		c, err := cli.Dialer(nil)(bgCtx(), "tcp", hostPort(dst, portUpload))
		if err != nil {
			st.bad("fault: dial: %v", err)
			return
		}
		io.WriteString(c, "POST /upload HTTP/1.1\r\nHost: soak\r\nContent-Length: 1048576\r\n\r\n")
		c.Write(make([]byte, 64<<10))
		time.Sleep(20 * time.Millisecond)
		c.Close()
		st.faults.Add(1)
	}
	for _, ch := range []chan outcome{srv.pushed, srv.downloaded, srv.uploaded} {
		drain(ch)
	}
}

// soakClient is httpClient with timeouts for a machine under heavy load.
func soakClient(n *ns.NS, keepAlive bool) *http.Client {
	return &http.Client{Timeout: 90 * time.Second, Transport: &http.Transport{
		DialContext:         n.Dialer(&net.Dialer{Timeout: 30 * time.Second}),
		DisableKeepAlives:   !keepAlive,
		MaxIdleConnsPerHost: 1,
		MaxConnsPerHost:     1,
	}}
}

// dialRawRead connects, writes first, and reads until the connection ends;
// a reset during connect counts as the end.
func dialRawRead(n *ns.NS, dst netip.Addr, port int, first []byte, timeout time.Duration) (int64, error) {
	c, err := n.Dialer(&net.Dialer{Timeout: timeout})(bgCtx(), "tcp", hostPort(dst, port))
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.Write(first)
	return readErr(c, timeout)
}
