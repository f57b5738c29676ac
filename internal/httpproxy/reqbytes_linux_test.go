package httpproxy

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/detour-proxy/detour/internal/fdtest"
)

// Requests for TestRecordRequestBytes: a 1234-byte body with
// Content-Length, the same body chunked (1000 and 234 bytes), none.
var (
	bodyOf1234   = strings.Repeat("b", 1234)
	withLength   = "POST /cl HTTP/1.1\r\nHost: a\r\nContent-Length: 1234\r\n\r\n" + bodyOf1234
	withChunks   = "POST /chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n" + bodyOf1234[:1000] + "\r\nea\r\n" + bodyOf1234[1000:] + "\r\n0\r\n\r\n"
	withoutBody  = "GET /none HTTP/1.1\r\nHost: a\r\n\r\n"
	lengthHeadOf = len(withLength) - len(bodyOf1234)
)

// TestRecordRequestBytes checks what a request's record says of its
// request body and its upstream connection: RequestBytes, the body bytes
// read from the client (a chunked body's decoded ones, as Envoy counts
// them), and UpstreamLocal, the address the upstream saw the request
// come from; on the fast path's goroutine (a body that came with its head,
// and one a pump copied), on a loop, on the net/http path after a
// hand-over and with the fast path off.
func TestRecordRequestBytes(t *testing.T) {
	up := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("X-Remote", r.RemoteAddr)
		w.Write([]byte("ok"))
	}))
	type step struct {
		name  string
		parts []string // written one after the other, with a pause between
		want  int64
	}
	pumped := step{"length, body after the head", []string{withLength[:lengthHeadOf], bodyOf1234}, 1234}
	for _, tc := range []struct {
		name    string
		noFast  bool
		steps   []step
		checkAt int    // after this many steps (0: none), loops served onLoop requests whole
		onLoop  uint64 //
	}{
		{"fast path, loop, hand-over", false, []step{
			pumped,
			{"no body", []string{withoutBody}, 0},
			{"length on a loop", []string{withLength}, 1234},
			{"no body on a loop", []string{withoutBody}, 0},
			{"chunked, handed over", []string{withChunks}, 1234},
			{"length after the hand-over", []string{withLength}, 1234},
			{"no body after the hand-over", []string{withoutBody}, 0},
		}, 4, 2},
		{"net/http", true, []step{
			{"length", []string{withLength}, 1234},
			pumped,
			{"chunked", []string{withChunks}, 1234},
			{"no body", []string{withoutBody}, 0},
		}, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFront(t, Options{DisableFastPath: tc.noFast}, up.addrPort())
			c, br := f.raw(t)
			for n, s := range tc.steps {
				if n == loopAfter && !tc.noFast {
					waitOnLoop(t, f.p)
				}
				for i, part := range s.parts {
					if i > 0 {
						time.Sleep(50 * time.Millisecond) // the head goes alone
					}
					if _, err := io.WriteString(c, part); err != nil {
						t.Fatal(err)
					}
				}
				res, body := readResponse(t, br, "POST")
				if res.StatusCode != http.StatusOK || body != "ok" {
					t.Fatalf("%s: status %d, body %q", s.name, res.StatusCode, body)
				}
				i := f.info(t)
				if i.RequestBytes != s.want {
					t.Errorf("%s: RequestBytes = %d, want %d", s.name, i.RequestBytes, s.want)
				}
				if got, want := i.UpstreamLocal.String(), res.Header.Get("X-Remote"); got != want {
					t.Errorf("%s: UpstreamLocal = %s, the upstream saw %s", s.name, got, want)
				}
				if n+1 == tc.checkAt {
					checkServedOnLoop(t, f.p, tc.onLoop)
				}
			}
		})
	}
}

// TestRecordNoUpstreamLocal checks that a request that got no upstream
// connection records no upstream local address.
func TestRecordNoUpstreamLocal(t *testing.T) {
	dst := fdtest.RefusedAddr(t)
	for _, noFast := range []bool{false, true} {
		f := newFront(t, Options{DisableFastPath: noFast}, dst)
		c, br := f.raw(t)
		if _, err := io.WriteString(c, withoutBody); err != nil {
			t.Fatal(err)
		}
		if res, _ := readResponse(t, br, "GET"); res.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("DisableFastPath %v: status %d, want 503", noFast, res.StatusCode)
		}
		if i := f.info(t); i.UpstreamLocal.IsValid() {
			t.Errorf("DisableFastPath %v: UpstreamLocal = %s for a refused connect, want none", noFast, i.UpstreamLocal)
		}
	}
}
