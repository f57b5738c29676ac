package main

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/detour-proxy/detour/internal/fdtest"
	"github.com/detour-proxy/detour/internal/listen"
)

// TestOrigDstOutOfDescriptors (in a process of its own: it fills the
// descriptor table): an accept that fails for want of descriptors is told,
// and the listener goes on printing once they are back; it used to stop
// without a word.
func TestOrigDstOutOfDescriptors(t *testing.T) {
	if !fdtest.InOwnProcess(t) {
		return
	}
	l, err := listen.Listen(listen.Options{Mode: listen.ModeRedirect, Addr: netip.MustParseAddrPort("127.0.0.1:0")})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("tcp", l.Addr().String()) // queued before the table fills
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	release := fdtest.Exhaust(t)
	lines := make(chan string, 16)
	go printOrigDst(l, lines)
	next := func() string {
		select {
		case s := <-lines:
			return s
		case <-time.After(10 * time.Second):
			release()
			t.Fatal("no line from printOrigDst")
		}
		return ""
	}
	if s := next(); !strings.Contains(s, "accept on "+l.Addr().String()+" failed: ") || !strings.Contains(s, "too many open files") {
		release()
		t.Fatalf("first line %q, want the accept's failure", s)
	}
	release()
	for {
		s := next()
		if strings.Contains(s, "failed") {
			continue // tried again before the release
		}
		// The client dialed the listener itself: no NAT entry.
		if want := "client " + c.LocalAddr().String() + " -> no original destination"; !strings.HasPrefix(s, want) {
			t.Fatalf("line %q, want %q", s, want)
		}
		return
	}
}
