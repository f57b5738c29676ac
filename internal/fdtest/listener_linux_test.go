package fdtest

import (
	"errors"
	"net"
	"syscall"
	"testing"
)

// TestRefusedAddr: while the test runs, no listener can take
// RefusedAddr's address, and a connection to it is refused.
func TestRefusedAddr(t *testing.T) {
	ap := RefusedAddr(t)
	if ln, err := net.Listen("tcp", ap.String()); err == nil {
		ln.Close()
		t.Fatalf("a listener took %v", ap)
	}
	if c, err := net.Dial("tcp", ap.String()); !errors.Is(err, syscall.ECONNREFUSED) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("connect to %v: %v; want connection refused", ap, err)
	}
}
