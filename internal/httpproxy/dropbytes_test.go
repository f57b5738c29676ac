package httpproxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
)

// TestRecordCountsDroppedBody: on the net/http path, an upload answered
// before it ended (a 413 from an upstream that stops reading) has the
// rest of its body, up to 256 KiB, read and dropped after the answer (so
// a client that sends its whole request before it reads the answer does
// not stall). Those bytes were received from the client for the request:
// the record counts them in RequestBytes, as Envoy's %BYTES_RECEIVED%
// counts the request's body bytes received. The client sends 1 KiB with
// the head, reads the answer, then sends the rest.
func TestRecordCountsDroppedBody(t *testing.T) {
	const size = 200 << 10
	first := strings.Repeat("a", 1<<10)
	rest := strings.Repeat("b", size-len(first))
	cases := []struct {
		name  string
		head  string
		parts [2]string // the body's bytes with the head, after the answer
	}{
		{"content-length", fmt.Sprintf("PUT /up HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n", size),
			[2]string{first, rest}},
		{"chunked", "PUT /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
			[2]string{fmt.Sprintf("%x\r\n%s\r\n", len(first), first), fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(rest), rest)}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			release := make(chan struct{})
			up := rawUpstream(t, func(c net.Conn) {
				if _, err := http.ReadRequest(bufio.NewReader(c)); err == nil {
					io.WriteString(c, "HTTP/1.1 413 Content Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big!")
					<-release // reads no more of the body
				}
			})
			t.Cleanup(func() { close(release) }) // before rawUpstream's, which waits for it
			f := newFront(t, Options{DisableFastPath: true}, up)
			c, br := f.raw(t)
			io.WriteString(c, tc.head+tc.parts[0])
			res, body := readResponse(t, br, "PUT")
			if res.StatusCode != 413 || body != "too big!" || !res.Close {
				t.Fatalf("got %d %q (close %v), want 413 with Connection: close", res.StatusCode, body, res.Close)
			}
			if _, err := io.WriteString(c, tc.parts[1]); err != nil {
				t.Fatal(err)
			}
			expectEOF(t, br)
			if i := f.info(t); i.Status != 413 || i.RequestBytes != size {
				t.Errorf("recorded %d with %d request body bytes, want 413 and %d, all read from the client",
					i.Status, i.RequestBytes, size)
			}
		})
	}
}
