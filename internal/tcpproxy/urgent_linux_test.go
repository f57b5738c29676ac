package tcpproxy

import (
	"bytes"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestUrgentDataDoesNotStall: a read or a splice stops short at TCP's
// urgent mark (telnet's Synch, FTP's ABOR) with bytes queued behind it,
// which bring no new event; the loop must not take that short read for an
// emptied socket. Before EPOLLPRI was watched, the bytes after the mark
// stayed in the socket until the client sent something else (an FTP
// client waits for the server's answer to ABOR: a hang). All of the
// client's bytes are queued before the pair starts, so the loop's first
// read meets the mark. The urgent byte itself is not passed on, as with
// any proxy that does not set SO_OOBINLINE.
func TestUrgentDataDoesNotStall(t *testing.T) {
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dst := netip.MustParseAddrPort(ln.Addr().String())
	for _, tc := range []struct {
		name       string
		head, tail []byte
	}{
		{"small burst: a read stops at the mark", []byte("abc"), []byte("ABOR\r\n")},
		{"bulk burst: a splice stops at the mark", bytes.Repeat([]byte("b"), 48<<10), []byte("ABOR\r\n")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client, _, _ := connecting(t, dst, Options{}, func(c *net.TCPConn) {
				if _, err := c.Write(tc.head); err != nil {
					t.Fatal(err)
				}
				rc, err := c.SyscallConn()
				if err != nil {
					t.Fatal(err)
				}
				var serr error
				rc.Control(func(fd uintptr) { serr = unix.Sendto(int(fd), []byte("X"), unix.MSG_OOB, nil) })
				if serr != nil {
					t.Fatalf("send MSG_OOB: %v", serr)
				}
				if _, err := c.Write(tc.tail); err != nil {
					t.Fatal(err)
				}
				time.Sleep(10 * time.Millisecond) // queued at the proxy's socket
			})
			defer client.Close()
			server := acceptOn(t, ln)
			want := append(append([]byte(nil), tc.head...), tc.tail...)
			server.SetReadDeadline(time.Now().Add(2 * time.Second))
			got := make([]byte, len(want))
			if n, err := io.ReadFull(server, got); err != nil {
				t.Fatalf("the server got %d of %d bytes (%q at the end), then %v", n, len(want), got[max(0, n-8):n], err)
			}
			if !bytes.Equal(got, want) {
				t.Fatal("the server got other bytes than were sent")
			}
		})
	}
}
