package sniff

import (
	"crypto/tls"
	"errors"
	"flag"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the ClientHello seed files in testdata/")

func TestClassify(t *testing.T) {
	tests := []struct {
		in    string
		want  Protocol
		final bool
	}{
		{"", Unknown, false},
		{"G", Unknown, false},
		{"GE", Unknown, false},
		{"GET", Unknown, false},
		{"GET ", HTTP1, false},
		{"GET /index.html", HTTP1, false},
		{"GET / HTTP/1", HTTP1, false},
		{"GET / HTTP/1.", HTTP1, false},
		{"GET / HTTP/1.1", HTTP1, true},
		{"GET / HTTP/1.1\r\nHost: a\r\n\r\n", HTTP1, true},
		{"HEAD http://a/ HTTP/1.0\r\n", HTTP1, true},
		{"OPTIONS * HTTP/1.1\r\n", HTTP1, true},
		{"CONNECT a:443 HTTP/1.1\r\n", HTTP1, true},
		{"PROPFIND /dav HTTP/1.1\r\n", HTTP1, true}, // a registered method
		{"M-SEARCH * HTTP/1.1\r\n", HTTP1, true},
		{"PROPF", Unknown, false},
		{"x", Unknown, true},                  // begins no method: not HTTP at once
		{"ping", Unknown, true},               // a word, then a wait: no sniffing timeout
		{"PI", Unknown, true},                 // P could be; PI cannot
		{"FOO / HTTP/1.1\r\n", Unknown, true}, // an unknown method goes to L4, as Envoy's inspector sends it
		{"PROPFIND /dav", Unknown, false},     // not known: no guess
		{"GET / HTTP/2.0\r\n", Unknown, true},
		{"GET / http/1.1\r\n", Unknown, true},
		{"GET  / HTTP/1.1\r\n", Unknown, true}, // empty target
		{"GET /\r\n", Unknown, true},           // HTTP/0.9
		{"GET /a\x00b HTTP/1.1", Unknown, true},
		{"get / HTTP/1.1\r\n", Unknown, true}, // methods are case-sensitive
		{"\r\nGET / HTTP/1.1\r\n", Unknown, true},
		{"SSH-2.0-OpenSSH_9.6\r\n", Unknown, true},
		{"AVERYLONGMETHODNAMEINDEEDXX / HTTP/1.1", Unknown, true},
		{"P", Unknown, false},
		{"PRI * HTTP/", Unknown, false},
		{"PRI * HTTP/2", HTTP2, false},
		{"PRI * HTTP/2.0\r\n\r\nSM\r\n", HTTP2, false},
		{H2Preface, HTTP2, true},
		{H2Preface + "\x00\x00\x12\x04", HTTP2, true},
		{"PRI * HTTP/1.1\r\n", HTTP1, true},
		{"\x16", Unknown, false},
		{"\x16\x03\x01\x02\x00", Unknown, false},
		{"\x16\x03\x01\x02\x00\x01", TLS, false},
		{"\x16\x03\x01\x02\x00\x02", Unknown, true}, // ServerHello: not a client
		{"\x16\x03\x05", Unknown, true},
		{"\x16\x02\x00", Unknown, true},
		{"\x80\x2e\x01\x03\x01", Unknown, true}, // SSLv2-style hello
		{"\x00\x00\x00\x00", Unknown, true},
	}
	for _, tt := range tests {
		r, final := Classify([]byte(tt.in))
		if r.Protocol != tt.want || final != tt.final {
			t.Errorf("Classify(%q) = %s, final %v; want %s, final %v", tt.in, r.Protocol, final, tt.want, tt.final)
		}
	}
}

func TestClassifyClientHello(t *testing.T) {
	hello := captureClientHello(t, "example.com", []string{"h2", "http/1.1"})
	for n := 0; n < len(hello); n++ {
		if r, final := Classify(hello[:n]); final && r.Protocol != Unknown || n >= 6 && r.Protocol != TLS {
			t.Fatalf("prefix %d of %d: %s final %v", n, len(hello), r.Protocol, final)
		}
	}
	r, final := Classify(hello)
	if !final || r.Protocol != TLS || r.SNI != "example.com" || !slices.Equal(r.ALPN, []string{"h2", "http/1.1"}) {
		t.Fatalf("got %+v final %v", r, final)
	}
}

// seeds are the ClientHellos kept in testdata/clienthello for the fuzz
// targets; TestSeedFiles checks them and -update rewrites them.
var seeds = []struct {
	file string
	sni  string
	alpn []string
}{
	{"sni-alpn.bin", "example.com", []string{"h2", "http/1.1"}},
	{"sni-only.bin", "www.example.org", nil},
	{"no-sni.bin", "", []string{"http/1.1"}},
}

func TestSeedFiles(t *testing.T) {
	for _, s := range seeds {
		path := filepath.Join("testdata", "clienthello", s.file)
		if *update {
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, captureClientHello(t, s.sni, s.alpn), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		sni, alpn, err := ParseClientHello(b)
		if err != nil || sni != s.sni || !slices.Equal(alpn, s.alpn) {
			t.Errorf("%s: got %q %q %v; want %q %q", s.file, sni, alpn, err, s.sni, s.alpn)
		}
	}
}

func TestParseClientHelloFreshFromCryptoTLS(t *testing.T) {
	for _, s := range seeds {
		sni, alpn, err := ParseClientHello(captureClientHello(t, s.sni, s.alpn))
		if err != nil || sni != s.sni || !slices.Equal(alpn, s.alpn) {
			t.Errorf("got %q %q %v; want %q %q", sni, alpn, err, s.sni, s.alpn)
		}
	}
}

func TestParseClientHelloSplitAcrossRecords(t *testing.T) {
	hello := captureClientHello(t, "split.example", []string{"h2"})
	msg := hello[5:]
	cut := len(msg) / 3
	rec := func(frag []byte) []byte {
		return append([]byte{0x16, 0x03, 0x01, byte(len(frag) >> 8), byte(len(frag))}, frag...)
	}
	two := append(rec(msg[:cut]), rec(msg[cut:])...)
	if _, _, err := ParseClientHello(two[:len(two)-1]); err != ErrIncomplete {
		t.Fatalf("truncated second record: err %v, want ErrIncomplete", err)
	}
	sni, alpn, err := ParseClientHello(append(two, 0x17, 0x03, 0x03)) // trailing bytes ignored
	if err != nil || sni != "split.example" || !slices.Equal(alpn, []string{"h2"}) {
		t.Fatalf("got %q %q %v", sni, alpn, err)
	}
}

func TestParseClientHelloErrors(t *testing.T) {
	hello := captureClientHello(t, "example.com", nil)
	bad := slices.Clone(hello)
	bad[5+4+2+32] = 33 // session id longer than 32
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, ErrIncomplete},
		{"header only", hello[:5], ErrIncomplete},
		{"truncated", hello[:len(hello)-1], ErrIncomplete},
		{"not handshake", []byte{0x17, 0x03, 0x03, 0x00, 0x01, 0x00}, ErrNotClientHello},
		{"server hello", []byte{0x16, 0x03, 0x03, 0x00, 0x04, 0x02, 0, 0, 0}, ErrNotClientHello},
		{"empty record", []byte{0x16, 0x03, 0x01, 0x00, 0x00}, ErrMalformed},
		{"oversized record", []byte{0x16, 0x03, 0x01, 0x40, 0x01}, ErrMalformed},
		{"bad session id", bad, ErrMalformed},
	}
	for _, tt := range tests {
		if _, _, err := ParseClientHello(tt.in); !errors.Is(err, tt.want) {
			t.Errorf("%s: err %v, want %v", tt.name, err, tt.want)
		}
	}
}

// captureClientHello returns the first TLS record crypto/tls writes as a
// client with this server name and ALPN list.
func captureClientHello(t testing.TB, sni string, alpn []string) []byte {
	t.Helper()
	c, s := net.Pipe()
	defer s.Close()
	go func() {
		defer c.Close()
		tls.Client(c, &tls.Config{ServerName: sni, NextProtos: alpn, InsecureSkipVerify: true}).Handshake()
	}()
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(s, hdr); err != nil {
		t.Fatal(err)
	}
	body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
	if _, err := io.ReadFull(s, body); err != nil {
		t.Fatal(err)
	}
	return append(hdr, body...)
}

func loadSeeds(f *testing.F) [][]byte {
	var out [][]byte
	for _, s := range seeds {
		b, err := os.ReadFile(filepath.Join("testdata", "clienthello", s.file))
		if err != nil {
			f.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

func FuzzClassify(f *testing.F) {
	for _, b := range loadSeeds(f) {
		f.Add(b)
	}
	for _, s := range []string{"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "POST /x HTTP/1.0\r\n", H2Preface, "PRI * HTTP/1.1\r\n", "SSH-2.0-x\r\n", "\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		whole, wholeFinal := Classify(b)
		// A final answer on a prefix must survive any continuation.
		step := max(1, len(b)/64)
		for n := 0; n < len(b); n++ {
			if n > 32 && n%step != 0 {
				continue
			}
			r, final := Classify(b[:n])
			if !final {
				continue
			}
			if r.Protocol != whole.Protocol || r.SNI != whole.SNI || !wholeFinal {
				t.Fatalf("prefix %d final %+v, whole %+v final %v", n, r, whole, wholeFinal)
			}
		}
	})
}

func FuzzParseClientHello(f *testing.F) {
	for _, b := range loadSeeds(f) {
		f.Add(b)
	}
	f.Add([]byte{0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0x00, 0x00, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		sni, alpn, err := ParseClientHello(b)
		if err != nil {
			return
		}
		for _, c := range []byte(sni) {
			if c <= 0x20 || c >= 0x7f {
				t.Fatalf("unprintable SNI %q", sni)
			}
		}
		// Bytes after a complete ClientHello must not change the answer.
		sni2, alpn2, err2 := ParseClientHello(append(slices.Clip(b), 0x16, 0x03))
		if err2 != nil || sni2 != sni || !slices.Equal(alpn, alpn2) {
			t.Fatalf("trailing bytes changed %q %q to %q %q %v", sni, alpn, sni2, alpn2, err2)
		}
	})
}

func BenchmarkClassify(b *testing.B) {
	inputs := map[string][]byte{
		"http1":       []byte("GET /some/path?q=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8\r\n\r\n"),
		"clienthello": captureClientHello(b, "example.com", []string{"h2", "http/1.1"}),
		"h2c":         []byte(H2Preface),
	}
	for name, in := range inputs {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(in)))
			for b.Loop() {
				Classify(in)
			}
		})
	}
}
