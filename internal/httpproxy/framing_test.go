package httpproxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestHeadScan: the final head's end and its framing conflict, whatever
// the reads' boundaries.
func TestHeadScan(t *testing.T) {
	const body = "3\r\nabc\r\n0\r\n\r\n"
	tests := []struct {
		name, heads string // heads, then bytes that must not be scanned
		conflict    bool
		bodyLen     int64 // to a GET
	}{
		{"Content-Length", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", false, 3},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false, -1},
		{"both", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", true, -1},
		{"both, lower case, other order", "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nX-A: 1\r\ncontent-length:3\r\n\r\n", true, -1},
		{"both, bare LF", "HTTP/1.1 200 OK\nContent-Length: 3\nTransfer-Encoding: chunked\n\n", true, -1},
		{"space before the colon: not the field", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding : chunked\r\n\r\n", false, 3},
		{"names as values", "HTTP/1.1 200 OK\r\nX-A: Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", false, -1},
		{"both in a 1xx only", "HTTP/1.1 103 Early Hints\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", false, 3},
		{"1xx, then both", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", true, -1},
		// http.ReadResponse trims the spaces before the status code.
		{"1xx with spaces before its code, then both", "HTTP/1.1  103 Early Hints\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", true, -1},
		{"204 with spaces before its code", "HTTP/1.1" + strings.Repeat(" ", 40) + "204 No Content\r\nX-A: 1\r\n\r\n", false, 0},
		{"204", "HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n", false, 0},
		{"304 with a length", "HTTP/1.1 304 Not Modified\r\nContent-Length: 3\r\n\r\n", false, 0},
		{"Content-Length 0", "HTTP/1.1 200 OK\r\nContent-Length:  0 \r\n\r\n", false, 0},
		{"Content-Length 00", "HTTP/1.1 200 OK\r\nContent-Length: 00\r\n\r\n", false, 0},
		{"Content-Length 0, long line", "HTTP/1.1 200 OK\r\nContent-Length: 0       1\r\n\r\n", false, -1},
		{"101: the tunnel follows", "HTTP/1.1 101 Switching Protocols\r\nContent-Length: 0\r\n\r\n", false, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stream := tt.heads + body + "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
			for split := 0; split <= len(stream); split++ {
				var s headScan
				end := s.feed([]byte(stream[:split]))
				if end < 0 {
					if e := s.feed([]byte(stream[split:])); e >= 0 {
						end = split + e
					}
				}
				if end != len(tt.heads)-1 || !s.done || s.conflict != tt.conflict || s.bodyLen(false) != tt.bodyLen || s.bodyLen(true) != 0 && s.status != 101 {
					t.Fatalf("split at %d: end %d done %v conflict %v body %d, want end %d conflict %v body %d",
						split, end, s.done, s.conflict, s.bodyLen(false), len(tt.heads)-1, tt.conflict, tt.bodyLen)
				}
			}
		})
	}
}

// TestResponseFramingConflictRefused: a response with both Content-Length
// and Transfer-Encoding is refused as a protocol error on both paths (502
// UPE), its upstream connection closed, the request not sent again — on a
// fresh connection and on a reused one, with a 1xx first, and with the
// head arriving a few bytes at a time.
func TestResponseFramingConflictRefused(t *testing.T) {
	const bad = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
	tests := []struct {
		name  string
		resp  string
		split bool
	}{
		{"in one write", bad, false},
		{"after a 1xx", "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + bad, false},
		{"after a 1xx with two spaces before its code", "HTTP/1.1  103 Early Hints\r\nLink: </a>\r\n\r\n" + bad, false},
		{"a few bytes at a time", bad, true},
	}
	onBothPaths(t, func(t *testing.T, fast bool) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				var conns, bads atomic.Int32
				dst := rawUpstream(t, func(c net.Conn) {
					conns.Add(1)
					br := bufio.NewReader(c)
					for {
						r, err := http.ReadRequest(br)
						if err != nil {
							return
						}
						if r.URL.Path != "/bad" {
							io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
							continue
						}
						bads.Add(1)
						for i := 0; i < len(tt.resp); i += 5 {
							if !tt.split {
								io.WriteString(c, tt.resp)
								break
							}
							io.WriteString(c, tt.resp[i:min(i+5, len(tt.resp))])
							time.Sleep(time.Millisecond) // a read each, most often
						}
					}
				})
				f := newFront(t, Options{DisableFastPath: !fast}, dst)
				c, br := f.raw(t)
				for i, path := range []string{"/ok", "/bad", "/ok", "/bad"} {
					fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: a\r\n\r\n", path)
					res, body := readResponse(t, br, "GET")
					for res.StatusCode < 200 {
						res, body = readResponse(t, br, "GET")
					}
					info := f.info(t)
					if path == "/ok" {
						if res.StatusCode != 200 || body != "ok" {
							t.Fatalf("request %d: %d %q", i, res.StatusCode, body)
						}
						continue
					}
					if res.StatusCode != 502 || !strings.HasSuffix(body, "reset reason: protocol error") || info.Flags != UpstreamProtocolError || info.Status != 502 || info.Details != "protocol error" {
						t.Fatalf("request %d: %d %q, record %d %v %q; want 502 protocol error, 502 UPE", i, res.StatusCode, body, info.Status, info.Flags, info.Details)
					}
				}
				// /ok and /bad on the first connection, then on a second:
				// each refused response closed its connection, and neither
				// was sent twice.
				if n, b := conns.Load(), bads.Load(); n != 2 || b != 2 {
					t.Errorf("upstream connections %d, /bad requests %d; want 2 and 2", n, b)
				}
			})
		}
	})
}

// TestUpConnCutsAtHead: what the Transport's reads return around a head
// that the check acts on. Bytes after the response's end (a 204's body,
// what follows a Content-Length body) are dropped and the read says EOF:
// the Transport then does not pool the connection (it saw EOF), where it
// would have, and a next request could have read them as its response
// (TestPathsAgree's "204 with a body" sometimes did, under -race). After a head with
// conflicting framing, the read stops before the head's last byte and
// the next fails.
func TestUpConnCutsAtHead(t *testing.T) {
	const (
		conflict = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
		no       = "HTTP/1.1 204 No Content\r\n\r\n"
		five     = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
		chunked  = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
		spaced   = "HTTP/1.1   204 No Content\r\n\r\n" // http.ReadResponse trims the spaces
	)
	tests := []struct {
		name, resp string
		head       bool    // a HEAD request
		reads      []int   // the lengths each read returns
		errs       []error // and their errors
	}{
		{"204 and stray bytes", no + "stray", false, []int{len(no), 0}, []error{io.EOF, io.EOF}},
		{"HEAD and stray bytes", five + "stray", true, []int{len(five), 0}, []error{io.EOF, io.EOF}},
		{"200 and its body", five + "hello", false, []int{len(five) + 5}, []error{nil}},
		{"200, its body and more", five + "hello" + "HTTP/1.1 200 OK\r\n", false, []int{len(five) + 5, 0}, []error{io.EOF, io.EOF}},
		{"chunked: not counted", chunked + "0\r\n\r\nmore", false, []int{len(chunked) + 9}, []error{nil}},
		{"204 alone", no, false, []int{len(no)}, []error{nil}},
		{"204, spaces before its code, stray bytes", spaced + "stray", false, []int{len(spaced), 0}, []error{io.EOF, io.EOF}},
		{"conflicting framing", conflict + "3\r\nabc\r\n0\r\n\r\n", false, []int{len(conflict) - 1, 0}, []error{nil, errFramingConflict}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dst := rawUpstream(t, func(c net.Conn) {
				io.WriteString(c, tt.resp)
				io.Copy(io.Discard, c)
			})
			tc, err := net.DialTCP("tcp", nil, net.TCPAddrFromAddrPort(dst))
			if err != nil {
				t.Fatal(err)
			}
			defer tc.Close()
			c := &upConn{TCPConn: tc}
			c.expectHead(tt.head)
			buf := make([]byte, 4096)
			// One small write on loopback: one segment, one read.
			for i, want := range tt.reads {
				n, err := c.Read(buf)
				if n != want || err != tt.errs[i] {
					t.Fatalf("read %d: %d %v, want %d %v", i, n, err, want, tt.errs[i])
				}
			}
		})
	}
}

// TestStrayBytesAfterChunkedBodyNotAResponse: bytes an upstream sends
// after a chunked body, in the same write, are never read as the next
// request's response, on either path. On net/http, the Transport's read
// loop pools the connection before it peeks at its buffer and closes the
// connection for what is left there; a request that took the connection
// in between was sent, and the stray bytes read as its answer
// (awaitReader). The window is narrow: many clients in parallel, one
// host, each client's second request sent with its first. Without the
// wait, a few in a thousand exchanges got "STRAY".
func TestStrayBytesAfterChunkedBodyNotAResponse(t *testing.T) {
	const (
		chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
		stray   = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nSTRAY"
		clients = 8
		rounds  = 250
	)
	onBothPaths(t, func(t *testing.T, fast bool) {
		dst := rawUpstream(t, func(c net.Conn) {
			br := bufio.NewReader(c)
			for {
				r, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				if r.URL.Path == "/chunked" {
					io.WriteString(c, chunked+stray)
					continue
				}
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext")
			}
		})
		f := newFront(t, Options{DisableFastPath: !fast}, dst)
		var wrong atomic.Int32
		var wg sync.WaitGroup
		for range clients {
			wg.Go(func() {
				for range rounds {
					if err := twoRequests(f.addr); err != nil {
						wrong.Add(1)
						t.Log(err)
					}
				}
			})
		}
		wg.Wait()
		if n := wrong.Load(); n > 0 {
			t.Errorf("%d of %d exchanges went wrong", n, clients*rounds)
		}
	})
}

// twoRequests sends GET /chunked and GET /next at once on a new
// connection to addr and checks their answers.
func twoRequests(addr string) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	io.WriteString(c, "GET /chunked HTTP/1.1\r\nHost: a\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n")
	br := bufio.NewReader(c)
	for _, want := range []string{"abc", "next"} {
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			return err
		}
		b, err := io.ReadAll(res.Body)
		if err != nil {
			return err
		}
		if string(b) != want {
			return fmt.Errorf("got %q, want %q: stray bytes read as a response", b, want)
		}
	}
	return nil
}

// TestUpstreamFailureClassified: an upstream's failure after the connect
// is a close or reset (503 UC) or a protocol error (502 UPE), as Envoy's
// router tells them; the errors are the ones http.ReadResponse, its body
// readers, the Transport and the kernel return.
func TestUpstreamFailureClassified(t *testing.T) {
	readErr := func(resp string) error {
		res, err := http.ReadResponse(bufio.NewReader(strings.NewReader(resp)), nil)
		if err == nil {
			_, err = io.ReadAll(res.Body)
		}
		if err == nil {
			t.Fatalf("%q read without an error", resp)
		}
		return err
	}
	reset := &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}
	tests := []struct {
		name   string
		err    error
		flag   Flags
		code   int
		reason string
	}{
		{"EOF before the head", readErr(""), UpstreamClosed, 503, "connection termination"},
		{"reset", fmt.Errorf("net/http: HTTP/1.x transport connection broken: %w", reset), UpstreamClosed, 503, "connection reset"},
		{"closed locally", net.ErrClosed, UpstreamClosed, 503, "connection termination"},
		{"pooled connection closed by the server", errors.New("http: server closed idle connection"), UpstreamClosed, 503, "connection termination"},
		{"head cut by a close", headCut(io.EOF, readErr("HTTP/1.1 200 OK\r\nContent-Len")), UpstreamClosed, 503, "connection termination"},
		{"head cut by a reset", headCut(reset, readErr("HTTP/1.1 200 OK\r\nContent-Len")), UpstreamClosed, 503, "connection reset"},
		{"malformed status line", readErr("HTTP/1.1 2000 OK\r\n\r\n"), UpstreamProtocolError, 502, "protocol error"},
		{"malformed field line", readErr("HTTP/1.1 200 OK\r\nNo colon\r\n\r\n"), UpstreamProtocolError, 502, "protocol error"},
		{"invalid Content-Length", readErr("HTTP/1.1 200 OK\r\nContent-Length: 2x\r\n\r\nok"), UpstreamProtocolError, 502, "protocol error"},
		{"Content-Length and Transfer-Encoding", errFramingConflict, UpstreamProtocolError, 502, "protocol error"},
		{"head too large", errResponseHeadTooLarge, UpstreamProtocolError, 502, "protocol error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			flag, code, reason := upstreamReset(tt.err)
			if flag != tt.flag || code != tt.code || reason != tt.reason {
				t.Errorf("upstreamReset(%v) = %v %d %q, want %v %d %q", tt.err, flag, code, reason, tt.flag, tt.code, tt.reason)
			}
		})
	}
	// In a body: a cut is UC, broken chunking UPE.
	for _, tt := range []struct {
		resp string
		want Flags
	}{
		{"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", UpstreamClosed},
		{"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab", UpstreamClosed},
		{"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", UpstreamProtocolError},
		{"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n", UpstreamProtocolError},
	} {
		if err := readErr(tt.resp); upstreamCut(err) != tt.want {
			t.Errorf("body %q: %v, want %v (%v)", tt.resp, upstreamCut(err), tt.want, err)
		}
	}
}
