package httpproxy

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// TestH2COptionsStar: an h2c OPTIONS * goes upstream, as on HTTP/1
// (TestConformance), not to net/http's own answer: the h2c server, too,
// disables it.
func TestH2COptionsStar(t *testing.T) {
	up := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.Method+" "+r.RequestURI)
	}), func(s *http.Server) { s.DisableGeneralOptionsHandler = true })
	f := newFront(t, Options{}, up.addrPort())
	h2 := newH2CClient(t, f)
	h2.request(t, 1, "OPTIONS", "*")
	if status, body := h2.response(t, 1); status != "200" || body != "OPTIONS *" {
		t.Errorf("response %s %q; want 200 \"OPTIONS *\" from the upstream", status, body)
	}
}

// h2cClient speaks prior-knowledge HTTP/2 frame by frame, to see the
// GOAWAY a Transport would hide.
type h2cClient struct {
	c      net.Conn
	fr     *http2.Framer
	dec    *hpack.Decoder
	status map[uint32]string
	body   map[uint32]string
	ended  map[uint32]bool
	goAway *http2.GoAwayFrame
}

func newH2CClient(t *testing.T, f *front) *h2cClient {
	t.Helper()
	c, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	h := &h2cClient{c: c, fr: http2.NewFramer(c, c), status: map[uint32]string{}, body: map[uint32]string{}, ended: map[uint32]bool{}}
	h.dec = hpack.NewDecoder(4096, nil)
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	if err := h.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return h
}

// get opens stream id with a GET of path.
func (h *h2cClient) get(t *testing.T, id uint32, path string) {
	t.Helper()
	h.request(t, id, "GET", path)
}

// request opens stream id with a bodiless request.
func (h *h2cClient) request(t *testing.T, id uint32, method, path string) {
	t.Helper()
	var b bytes.Buffer
	enc := hpack.NewEncoder(&b)
	for _, f := range [][2]string{{":method", method}, {":scheme", "http"}, {":authority", "a"}, {":path", path}} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	if err := h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: b.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
}

// next reads and handles one frame; false when the connection ended or
// 20 s passed.
func (h *h2cClient) next(t *testing.T) bool {
	t.Helper()
	h.c.SetReadDeadline(time.Now().Add(20 * time.Second))
	fr, err := h.fr.ReadFrame()
	if err != nil {
		t.Logf("h2c read: %v", err)
		return false
	}
	switch fr := fr.(type) {
	case *http2.SettingsFrame:
		if !fr.IsAck() {
			h.fr.WriteSettingsAck()
		}
	case *http2.PingFrame:
		if !fr.IsAck() {
			h.fr.WritePing(true, fr.Data)
		}
	case *http2.GoAwayFrame:
		h.goAway = fr
	case *http2.HeadersFrame:
		fields, err := h.dec.DecodeFull(fr.HeaderBlockFragment())
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range fields {
			if f.Name == ":status" {
				h.status[fr.StreamID] = f.Value
			}
		}
		h.ended[fr.StreamID] = fr.StreamEnded()
	case *http2.DataFrame:
		h.body[fr.StreamID] += string(fr.Data())
		h.ended[fr.StreamID] = fr.StreamEnded()
	}
	return true
}

// awaitGoAway reads frames until a GOAWAY, and returns its last stream.
func (h *h2cClient) awaitGoAway(t *testing.T) (last uint32, ok bool) {
	t.Helper()
	for h.goAway == nil {
		if !h.next(t) {
			return 0, false
		}
	}
	return h.goAway.LastStreamID, true
}

// response reads frames until stream id ends, and returns its status and
// body.
func (h *h2cClient) response(t *testing.T, id uint32) (status, body string) {
	t.Helper()
	for !h.ended[id] {
		if !h.next(t) {
			break
		}
	}
	return h.status[id], h.body[id]
}
