package httpproxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// TestPartialInvalidHeadRefusedAtOnce: a client that sends a head already
// invalid — a complete line that is, or an invalid byte in the request
// line or a field line — and then waits, never sending the head's end, gets 400 (with the
// guard's record, flag DPE) at once on every way a connection is served,
// as Envoy's and nginx's parsers answer, not a close without a response
// after HeaderTimeout (flag HT), which the fast path and the loops gave
// such a head while they waited for its end. A head that may still
// become valid is held until HeaderTimeout on every way alike.
func TestPartialInvalidHeadRefusedAtOnce(t *testing.T) {
	const (
		timeout = 10 * time.Second
		bound   = 3 * time.Second // far from timeout
	)
	ways := []struct {
		name  string
		o     Options
		first func(t *testing.T, f *front, c net.Conn, br *bufio.Reader) // the requests before, and their records
	}{
		{"fast path, first request", Options{}, nil},
		{"fast path, later request", Options{DisableLoops: true}, func(t *testing.T, f *front, c net.Conn, br *bufio.Reader) {
			roundTrips(t, c, br, getSmall, "GET", 1)
			f.info(t)
		}},
		{"loop, later request", Options{}, func(t *testing.T, f *front, c net.Conn, br *bufio.Reader) {
			toLoop(t, c, br)
			for range loopAfter {
				f.info(t)
			}
			waitOnLoop(t, f.p)
		}},
		{"net/http, first request", Options{DisableFastPath: true}, nil},
		{"net/http, later request", Options{DisableFastPath: true}, func(t *testing.T, f *front, c net.Conn, br *bufio.Reader) {
			roundTrips(t, c, br, getSmall, "GET", 1)
			f.info(t)
		}},
	}
	const h = "GET / HTTP/1.1\r\nHost: a\r\n"
	cases := []struct{ name, req, details string }{
		{"field line without a colon", h + "Bad Line Without Colon\r\n", "invalid header field name"},
		{"space in a field name", h + "X A: b\r\n", "invalid header field name"},
		{"obs-fold", h + "X-A: a\r\n b\r\n", "obsolete line folding"},
		{"control byte in a field value", h + "X-A: a\x01b\r\n", "invalid header field value"},
		{"second Host", h + "Host: b\r\n", "multiple host fields"},
		{"invalid Content-Length", h + "Content-Length: 1x\r\n", "invalid content-length"},
		{"bare LF", "GET / HTTP/1.1\nHost: a\n", "line not terminated by CRLF"},
		{"invalid request line", "GET / HTTP/1.1 x\r\n", "invalid request line"},
		{"control byte in the method, line complete", "GE\x01T / HTTP/1.1\r\n", "invalid request line"},
		{"control byte in the method", "GE\x01T / HT", "invalid request line"},
		{"control byte in the target", "GET /a\x01", "invalid request target"},
		{"fragment in the target", "GET /a#b", "invalid request target"},
		{"byte over 0x7e in the target", "GET /caf\xc3\xa9", "invalid request target"},
		{"CR inside the request line", "GET /a\rb", "invalid request target"},
		{"bad protocol", "GET / HTTP/x", "invalid request line"},
		{"protocol too long", "GET / HTTP/1.10", "invalid request line"},
		{"empty target", "GET  /", "invalid request line"},
		{"control byte in an unfinished field value", h + "X-A: a\x01", "invalid header field value"},
		{"bare CR in an unfinished field value", h + "X-A: a\rb", "invalid header field value"},
		{"obs-fold, unfinished", h + "X-A: a\r\n b", "obsolete line folding"},
		{"space in an unfinished field name", h + "X A: b", "invalid header field name"},
		{"bare CR in an unfinished field name", h + "X-A\rb", "invalid header field name"},
		// Heads that may still become valid are held: closed without a
		// response after HeaderTimeout (set to 1 s for these).
		{"fast head so far", h + "X-A: b", ""},
		{"field name so far", h + "X-A", ""},
		{"field value with obs-text so far", h + "X-A: caf\xc3\xa9", ""},
		{"a head the fast path declines, so far", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n", ""},
		{"absolute-form target so far", "GET http://a/x HTTP/1.", ""},
		{"HTTP/2.0 so far", "GET / HTTP/2.0", ""},
	}
	for _, w := range ways {
		for _, tc := range cases {
			t.Run(w.name+"/"+tc.name, func(t *testing.T) {
				t.Parallel()
				up := loopUpstream(t)
				o := w.o
				o.HeaderTimeout = timeout
				if tc.details == "" {
					o.HeaderTimeout = time.Second
				}
				f := newFront(t, o, up.addrPort())
				c, br := f.raw(t)
				if w.first != nil {
					w.first(t, f, c, br)
				}
				start := time.Now()
				c.SetDeadline(start.Add(timeout + 5*time.Second))
				if _, err := io.WriteString(c, tc.req); err != nil {
					t.Fatal(err)
				}
				got, err := io.ReadAll(br)
				d := time.Since(start)
				if tc.details == "" {
					if len(got) > 0 || err != nil {
						t.Errorf("read %q, %v; want the close without a response", got, err)
					}
					if i := f.info(t); i.Status != 0 || i.Flags != RequestHeaderTimeout {
						t.Errorf("record %d %v %s, want flag HT", i.Status, i.Flags, i.Details)
					}
					return
				}
				if line, _, _ := strings.Cut(string(got), "\r\n"); line != "HTTP/1.1 400 Bad Request" || err != nil {
					t.Fatalf("after %v: read %q, %v; want a 400 and the close", d.Round(time.Millisecond), got, err)
				}
				if d > bound {
					t.Errorf("400 after %v, want it within %v (HeaderTimeout %v)", d.Round(time.Millisecond), bound, timeout)
				}
				i := f.info(t)
				if rec := fmt.Sprintf("%d %v %s", i.Status, i.Flags, i.Details); rec != "400 DPE "+tc.details {
					t.Errorf("record %q, want %q", rec, "400 DPE "+tc.details)
				}
			})
		}
	}
}
