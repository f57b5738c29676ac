package e2e

import (
	"bufio"
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestOrigDstPrintsRedirectedDestination replaces the tutorial's Python
// SO_ORIGINAL_DST script: with REDIRECT rules in place, `detour origdst`
// prints where each connection was going, for IPv4 and IPv6.
func TestOrigDstPrintsRedirectedDestination(t *testing.T) {
	needRoot(t)
	n := redirectNet(t, "od")
	if out, err := detourCmd(t, n.Host, "rules", "apply", "--mode", "redirect", "--intercept-port", "7001"); err != nil {
		t.Fatalf("rules apply: %v\n%s", err, out)
	}
	t.Cleanup(func() { detourCmd(t, n.Host, "rules", "clean") })

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := n.Host.Command(ctx, detourBin, "origdst", "--listen", "127.0.0.1:4999", "--listen", "[::1]:4999")
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); cmd.Wait() })
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	next := func() string {
		select {
		case l := <-lines:
			return l
		case <-time.After(10 * time.Second):
			t.Fatal("no output from detour origdst")
		}
		return ""
	}
	next() // listening on 127.0.0.1:4999
	next() // listening on [::1]:4999

	for _, tc := range []struct {
		dst netip.Addr
		how string
	}{{n.ServerIP4, "SO_ORIGINAL_DST"}, {n.ServerIP6, "IP6T_SO_ORIGINAL_DST"}} {
		c, err := n.Host.Dialer(nil)(ctx, "tcp", netip.AddrPortFrom(tc.dst, 7001).String())
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		line := next()
		c.Close()
		want := "original destination " + netip.AddrPortFrom(tc.dst, 7001).String() + " (learned by " + tc.how + ")"
		if !strings.Contains(line, want) {
			t.Fatalf("origdst printed %q, want it to contain %q", line, want)
		}
	}
	// A direct connection to the listener was not redirected: said so.
	c, err := n.Host.Dialer(nil)(ctx, "tcp", "127.0.0.1:4999")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if line := next(); !strings.Contains(line, "no original destination") {
		t.Fatalf("direct connection printed %q", line)
	}
}
