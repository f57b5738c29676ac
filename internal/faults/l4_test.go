package faults

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/detour-proxy/detour/internal/lab"
	"github.com/detour-proxy/detour/internal/ns"
)

// faultLab is a TPROXY lab with the fault servers and a detour in front
// of them.
type faultLab struct {
	net *lab.TProxyNet
	srv *faultServers
	d   *detourRun
	obs *observer // nil when the binary has no access log and admin endpoint
}

// startL4Lab is the lab with detour forwarding everything at L4
// (--protocol tcp), a 3s connect timeout and a 2s idle timeout.
//
// The connect timeout applies to the canary's connects too. The kernel
// resends a lost SYN after 1s (its initial retransmission timeout), so at
// 1s a canary whose first SYN (or SYN-ACK) was lost, as on a loaded
// machine, was reset; at 3s it connects after the resend.
func startL4Lab(t *testing.T) *faultLab {
	t.Helper()
	n := newLab(t)
	srv := startFaultServers(t, n.Server)
	dropSYNs(t, n.Server, portDropSYN)
	obsArgs, obs := observeArgs(t, n.Router)
	d := startDetour(t, n.Router, runOpts{}, append([]string{"--mode", "tproxy", "--listen", "0.0.0.0:15001", "--listen", "[::]:15001",
		"--intercept-port", interceptPorts, "--protocol", "tcp", "--log-level", "debug",
		"--connect-timeout", "3s", "--idle-timeout", "2s"}, obsArgs...)...)
	return &faultLab{net: n, srv: srv, d: d, obs: obs}
}

// echoOnce sends msg to the echo port, half-closes and checks the echo.
func echoOnce(n *ns.NS, dst netip.Addr, msg []byte) error {
	c, err := n.Dialer(&net.Dialer{Timeout: 5 * time.Second})(bgCtx(), "tcp", hostPort(dst, portEcho))
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	go func() {
		c.Write(msg)
		c.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		return fmt.Errorf("echo of %d bytes: %w", len(msg), err)
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("echo: got %d bytes back, want the %d sent", len(got), len(msg))
	}
	return nil
}

// canary runs fn every interval until stopped, counting successes and
// failures: the traffic that must keep flowing while faults are injected.
type canary struct {
	ok, failed atomic.Int64
	stop       chan struct{}
	done       chan struct{}
	mu         sync.Mutex
	firstErr   error
	slowest    time.Duration // the longest exchange: how near the timeouts a loaded machine came
}

func startCanary(interval time.Duration, fn func(i int) error) *canary {
	c := &canary{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		for i := 0; ; i++ {
			start := time.Now()
			err := fn(i)
			c.mu.Lock()
			c.slowest = max(c.slowest, time.Since(start))
			if err != nil && c.firstErr == nil {
				c.firstErr = err
			}
			c.mu.Unlock()
			if err != nil {
				c.failed.Add(1)
			} else {
				c.ok.Add(1)
			}
			select {
			case <-c.stop:
				return
			case <-time.After(interval):
			}
		}
	}()
	return c
}

// finish stops the canary and fails the test unless every call succeeded.
func (c *canary) finish(t *testing.T) {
	t.Helper()
	close(c.stop)
	<-c.done
	t.Logf("canary: %d normal exchanges succeeded, %d failed while faults were injected; the slowest took %v",
		c.ok.Load(), c.failed.Load(), c.slowest.Round(time.Millisecond))
	if c.failed.Load() > 0 || c.ok.Load() == 0 {
		t.Errorf("normal traffic was disturbed by the faults: %d ok, %d failed; first error: %v", c.ok.Load(), c.failed.Load(), c.firstErr)
	}
}

// readErr reads c until it fails or timeout passes, returning the error
// and how many bytes came first.
func readErr(c net.Conn, timeout time.Duration) (int64, error) {
	c.SetReadDeadline(time.Now().Add(timeout))
	n, err := io.Copy(io.Discard, c)
	if err == nil {
		err = io.EOF
	}
	return n, err
}

// dialRead connects and reads until the connection fails. detour accepts
// on the server's behalf and resets the client when the upstream fails; the
// reset may even beat connect's return, so a dial error counts as the
// connection's end.
func dialRead(n *ns.NS, dst netip.Addr, port int, timeout time.Duration) (int64, error) {
	c, err := n.Dialer(&net.Dialer{Timeout: timeout})(bgCtx(), "tcp", hostPort(dst, port))
	if err != nil {
		return 0, err
	}
	defer c.Close()
	return readErr(c, timeout)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestL4Faults injects upstream and client faults into L4 connections
// through one detour, while a canary echo keeps running through it.
func TestL4Faults(t *testing.T) {
	needRoot(t)
	t.Parallel()
	l := startL4Lab(t)
	cli, pid := l.net.Client, l.d.Pid()
	v4, v6 := l.net.ServerIP4, l.net.ServerIP6

	for i := 0; i < 5; i++ { // warm up: the runtime's first splice pipes, timers
		if err := echoOnce(cli, v4, []byte("warm-up")); err != nil {
			t.Fatalf("normal echo through detour before any fault: %v", err)
		}
	}
	time.Sleep(200 * time.Millisecond)
	base := fdsOf(t, pid)
	t.Logf("detour after warm-up: %v, VmRSS %.1f MiB", base, rssMiB(t, pid))

	// flags counts the access log records each fault produced, by flag:
	// the metrics must count at least as many.
	flags := map[string]float64{}
	can := startCanary(100*time.Millisecond, func(i int) error {
		dst := v4
		if i%2 == 1 {
			dst = v6
		}
		return echoOnce(cli, dst, []byte(fmt.Sprintf("canary %d", i)))
	})
	serving := func(t *testing.T) {
		t.Helper()
		for _, dst := range []netip.Addr{v4, v6} {
			if err := echoOnce(cli, dst, []byte("still serving")); err != nil {
				t.Errorf("after the fault, a normal connection to %s failed: %v", dst, err)
			}
		}
	}

	for _, dst := range []netip.Addr{v4, v6} {
		t.Run("refused upstream resets the client/"+dst.String(), func(t *testing.T) {
			mark := l.d.log.len()
			start := time.Now()
			_, err := dialRead(cli, dst, portRefused, 10*time.Second)
			el := time.Since(start)
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("client read ended with %v, want a reset (ECONNRESET)", err)
			}
			if el > 3*time.Second {
				t.Errorf("client reset only after %v, want at once", el)
			}
			l.d.log.waitLog(t, mark, 5*time.Second, "upstream connect failed", `reason="connection refused"`, hostPort(dst, portRefused))
			l.obs.wantCount(t, flags, "kind=tcp", "original_dst="+hostPort(dst, portRefused), "end=connection refused", "flags=UF")
			serving(t)
		})
	}

	t.Run("SYN-dropping upstream resets the client after the connect timeout", func(t *testing.T) {
		mark := l.d.log.len()
		start := time.Now()
		_, err := dialRead(cli, v4, portDropSYN, 15*time.Second)
		el := time.Since(start)
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("client read ended with %v, want a reset (ECONNRESET)", err)
		}
		if el < 2900*time.Millisecond || el > 8*time.Second {
			t.Errorf("client reset after %v, want about the 3s connect timeout", el)
		}
		t.Logf("client reset %v after connecting (--connect-timeout 3s)", el.Round(time.Millisecond))
		l.d.log.waitLog(t, mark, 5*time.Second, "upstream connect failed", `reason="connect timeout"`)
		l.obs.wantCount(t, flags, "kind=tcp", "original_dst="+hostPort(v4, portDropSYN), "end=connect timeout", "flags=UF")
		serving(t)
	})

	t.Run("upstream reset mid-response resets the client", func(t *testing.T) {
		mark := l.d.log.len()
		c := dialTCP(t, cli, v4, portResetMid)
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: fault\r\n\r\n")
		n, err := readErr(c, 10*time.Second)
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("client read ended with %v after %d bytes, want a reset: a clean EOF would pass a truncated response as complete", err, n)
		}
		if n >= resetMidBody {
			t.Errorf("client got %d bytes, more than the server sent before resetting", n)
		}
		t.Logf("client got %d of %d bytes, then %v", n, resetMidBody, err)
		l.d.log.waitLog(t, mark, 5*time.Second, "msg=closed", `end="upstream reset"`)
		l.obs.wantCount(t, flags, "kind=tcp", "original_dst="+hostPort(v4, portResetMid), "end=upstream reset", "flags=UC")
		serving(t)
	})

	t.Run("client half-close still gets the whole reply", func(t *testing.T) {
		mark := l.d.log.len()
		msg := make([]byte, 256<<10)
		rand.Read(msg)
		if err := echoOnce(cli, v4, msg); err != nil {
			t.Fatal(err)
		}
		l.d.log.waitLog(t, mark, 5*time.Second, "msg=half-close", "from=client")
		l.d.log.waitLog(t, mark, 5*time.Second, "msg=closed", "end=closed", "sent=262144", "received=262144")
		l.obs.wantCount(t, flags, "kind=tcp", "original_dst="+hostPort(v4, portEcho), "end=closed", "sent=262144", "received=262144")
	})

	t.Run("client reset mid-response closes the upstream", func(t *testing.T) {
		drain(l.srv.pushed)
		mark := l.d.log.len()
		c := dialTCP(t, cli, v4, portPush)
		if _, err := io.ReadFull(c, make([]byte, 1<<20)); err != nil {
			t.Fatalf("reading the first MiB: %v", err)
		}
		c.SetLinger(0)
		c.Close()
		gone := time.Now()
		o := next(t, l.srv.pushed, 10*time.Second, "client reset mid-response")
		if o.err == nil {
			t.Fatalf("the server wrote all %d bytes to a client that had reset", o.n)
		}
		t.Logf("server's write failed %v after the client's reset, after %d bytes: %v", o.at.Sub(gone).Round(time.Millisecond), o.n, o.err)
		if d := o.at.Sub(gone); d > 5*time.Second {
			t.Errorf("upstream connection closed only %v after the client reset", d)
		}
		l.d.log.waitLog(t, mark, 5*time.Second, "msg=closed", `end="downstream reset"`)
		l.obs.wantCount(t, flags, "kind=tcp", "original_dst="+hostPort(v4, portPush), "end=downstream reset", "flags=DC")
		serving(t)
	})

	t.Run("client that never reads: bounded memory, closed after the idle timeout", func(t *testing.T) {
		drain(l.srv.pushed)
		mark := l.d.log.len()
		base := rssMiB(t, pid)
		start := time.Now()
		c := dialTCP(t, cli, v4, portPush)
		peak := base
		var o outcome
		deadline := time.After(20 * time.Second)
	wait:
		for {
			peak = max(peak, rssMiB(t, pid))
			select {
			case o = <-l.srv.pushed:
				break wait
			case <-deadline:
				t.Fatal("connection of a client that never reads still open after 20s (--idle-timeout 2s)")
			case <-time.After(100 * time.Millisecond):
			}
		}
		el := o.at.Sub(start)
		t.Logf("server pushed %d bytes, then %v after %v; detour VmRSS %.1f MiB before, peak %.1f MiB", o.n, o.err, el.Round(time.Millisecond), base, peak)
		if o.err == nil {
			t.Fatal("the server wrote 1 GiB to a client that never read")
		}
		if el < 1500*time.Millisecond || el > 10*time.Second {
			t.Errorf("closed %v after the client connected, want about the 2s idle timeout", el)
		}
		if peak > base+64 {
			t.Errorf("detour's VmRSS grew from %.1f to %.1f MiB for one stalled client, want under +64 MiB", base, peak)
		}
		if _, err := readErr(c, 5*time.Second); isTimeout(err) {
			t.Errorf("client connection still open after the idle timeout closed the upstream")
		}
		l.d.log.waitLog(t, mark, 5*time.Second, "msg=closed", `end="idle timeout"`)
		l.obs.wantCount(t, flags, "kind=tcp", "original_dst="+hostPort(v4, portPush), "end=idle timeout", "flags=SI")
		serving(t)
	})

	can.finish(t)
	for flag, n := range flags {
		l.obs.wantMetric(t, n, "detour_tcp_connections_total", `flag="`+flag+`"`)
	}
	// Go's splice keeps a pool of pipes, grown to the peak number of
	// concurrent transfers and emptied by garbage collections: pipes are
	// checked against that bound, everything else against the baseline.
	waitFDs(t, pid, base, 8, 15*time.Second, "after the L4 faults")
	if l.d.log.count("WARNING: DATA RACE") > 0 || l.d.log.count("panic:") > 0 {
		t.Error("detour reported a data race or a panic")
	}
}
