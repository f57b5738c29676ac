package accesslog

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/detour-proxy/detour/internal/httpproxy"
	"github.com/detour-proxy/detour/internal/logbuf"
	"github.com/detour-proxy/detour/internal/proxy"
)

var (
	start = time.Date(2026, 11, 22, 0, 51, 50, 123456789, time.UTC)
	l4rec = proxy.L4Record{
		ID: "C7", Start: start,
		Client:        netip.MustParseAddrPort("198.18.1.2:40312"),
		OrigDst:       netip.MustParseAddrPort("198.18.2.2:443"),
		UpstreamLocal: netip.MustParseAddrPort("198.18.2.1:51234"),
		Protocol:      "tls", SNI: "example.com", Sent: 517, Received: 4096,
		Duration: 1500 * time.Millisecond, ConnectDuration: 226184 * time.Nanosecond,
		End: "upstream reset", Flags: "UC",
	}
	httpInfo = httpproxy.RequestInfo{
		ConnID: 9,
		Start:  start,
		Client: netip.MustParseAddrPort("[2001:db8:1::2]:40000"), OrigDst: netip.MustParseAddrPort("[2001:db8:2::2]:80"),
		Dst: netip.MustParseAddrPort("[2001:db8:2::2]:80"), Proto: "HTTP/1.1", Method: "GET", Host: "[2001:db8:2::2]",
		Path: "/get", RequestID: "4f3c", Status: 200, Duration: 2 * time.Millisecond,
		UpstreamTime: 1234 * time.Microsecond, Reused: true, BodyBytes: 312, RequestBytes: 1234,
		UpstreamLocal: netip.MustParseAddrPort("[2001:db8:1::1]:51000"),
	}
)

func open(t *testing.T, format Format) (*Logger, *logbuf.Buffer) {
	t.Helper()
	var out logbuf.Buffer
	l, err := Open(Options{Path: PathStdout, Format: format, Stdout: &out, FlushInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, &out
}

func TestText(t *testing.T) {
	l, out := open(t, FormatText)
	l.L4(l4rec)
	l.HTTP(&httpInfo)
	l.L4(proxy.L4Record{ID: "C8", Start: start, Client: l4rec.Client, OrigDst: netip.MustParseAddrPort("198.18.1.1:15001"),
		Protocol: "tcp", End: "loop refused", Flags: "LR"})
	want := `time=2026-11-22T00:51:50.123Z kind=tcp id=C7 client=198.18.1.2:40312 original_dst=198.18.2.2:443 upstream_local=198.18.2.1:51234 protocol=tls sni=example.com sent=517 received=4096 duration_ms=1500 connect_ms=0.226 end="upstream reset" flags=UC
time=2026-11-22T00:51:50.123Z kind=http id=C9 request_id=4f3c client=[2001:db8:1::2]:40000 original_dst=[2001:db8:2::2]:80 dst=[2001:db8:2::2]:80 upstream_local=[2001:db8:1::1]:51000 protocol=HTTP/1.1 method=GET authority=[2001:db8:2::2] path=/get status=200 flags=- sent=1234 received=312 duration_ms=2 upstream_ms=1.234 reused=true details=-
time=2026-11-22T00:51:50.123Z kind=tcp id=C8 client=198.18.1.2:40312 original_dst=198.18.1.1:15001 upstream_local=- protocol=tcp sni=- sent=0 received=0 duration_ms=0 connect_ms=0 end="loop refused" flags=LR
`
	if got := out.String(); got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}

func TestJSON(t *testing.T) {
	l, out := open(t, FormatJSON)
	l.L4(l4rec)
	i := httpInfo
	i.Flags = httpproxy.UpstreamConnectFailure | httpproxy.DownstreamClosed
	i.Path = "/a b\"c\\d\n\x00\xff/é"
	i.Status = 503
	i.Details = "connection refused"
	l.HTTP(&i)
	uf := l4rec
	uf.UpstreamLocal, uf.Sent, uf.Received, uf.End, uf.Flags = netip.AddrPort{}, 0, 0, "connection refused", "UF"
	l.L4(uf)
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("%d lines:\n%s", len(lines), out.String())
	}
	for n, want := range map[int]string{
		0: `{"time":"2026-11-22T00:51:50.123Z","kind":"tcp","id":"C7","client":"198.18.1.2:40312","original_dst":"198.18.2.2:443","upstream_local":"198.18.2.1:51234","protocol":"tls","sni":"example.com","sent":517,"received":4096,"duration_ms":1500,"connect_ms":0.226,"end":"upstream reset","flags":"UC"}`,
		2: `{"time":"2026-11-22T00:51:50.123Z","kind":"tcp","id":"C7","client":"198.18.1.2:40312","original_dst":"198.18.2.2:443","upstream_local":"","protocol":"tls","sni":"example.com","sent":0,"received":0,"duration_ms":1500,"connect_ms":0.226,"end":"connection refused","flags":"UF"}`,
	} {
		if lines[n] != want {
			t.Errorf("got  %s\nwant %s", lines[n], want)
		}
	}
	var rec map[string]any
	if err := json.Unmarshal([]byte(lines[1]), &rec); err != nil {
		t.Fatalf("invalid JSON %s: %v", lines[1], err)
	}
	for k, v := range map[string]any{
		"kind": "http", "path": "/a b\"c\\d\n\x00\ufffd/é", "flags": "UF,DC", "status": 503.0,
		"client": "[2001:db8:1::2]:40000", "upstream_ms": 1.234, "reused": true, "upstream_local": "[2001:db8:1::1]:51000", "sent": 1234.0, "received": 312.0,
		"details": "connection refused",
	} {
		if rec[k] != v {
			t.Errorf("%s = %#v, want %#v", k, rec[k], v)
		}
	}
}

func TestTextQuotesUnsafeValues(t *testing.T) {
	l, out := open(t, FormatText)
	i := httpInfo
	i.Path = "/x y=1\n"
	i.Host = ""
	l.HTTP(&i)
	got := out.String()
	if !strings.Contains(got, ` path="/x y=1\n" `) || !strings.Contains(got, " authority=- ") {
		t.Errorf("unsafe values not quoted: %s", got)
	}
	if strings.Count(got, "\n") != 1 {
		t.Errorf("a record spans lines: %q", got)
	}
}

func TestOffAndNil(t *testing.T) {
	for _, p := range []string{"", PathOff} {
		l, err := Open(Options{Path: p})
		if err != nil || l != nil {
			t.Fatalf("Open(%q) = %v, %v; want nil, nil", p, l, err)
		}
		l.L4(l4rec) // no panic
		l.HTTP(&httpInfo)
		if l.Reopen() != nil || l.Close() != nil || l.Path() != PathOff {
			t.Fatal("nil logger methods")
		}
	}
	if _, err := Open(Options{Path: PathStdout, Format: "xml"}); err == nil {
		t.Error("format xml accepted")
	}
	if _, err := Open(Options{Path: filepath.Join(t.TempDir(), "no", "such", "dir", "log")}); err == nil {
		t.Error("unopenable path accepted")
	}
}

// TestFileReopen: after the file is renamed (logrotate), Reopen starts a
// new one; nothing is lost or duplicated.
func TestFileReopen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "access.log")
	l, err := Open(Options{Path: path, Format: FormatJSON})
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o640 {
		t.Fatalf("log file: %v, %v", fi, err)
	}
	l.L4(l4rec)
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	if err := l.Reopen(); err != nil {
		t.Fatal(err)
	}
	l.HTTP(&httpInfo)
	l.HTTP(&httpInfo)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l.HTTP(&httpInfo) // after Close: dropped
	if err := l.Reopen(); err == nil {
		t.Error("Reopen after Close succeeded")
	}
	old, _ := os.ReadFile(path + ".1")
	cur, _ := os.ReadFile(path)
	if bytes.Count(old, []byte("\n")) != 1 || !bytes.Contains(old, []byte(`"kind":"tcp"`)) {
		t.Errorf("rotated file: %q", old)
	}
	if bytes.Count(cur, []byte("\n")) != 2 || bytes.Contains(cur, []byte(`"kind":"tcp"`)) {
		t.Errorf("new file: %q", cur)
	}
}

// TestReopenAfterFailedFlush: when the records buffered at a reopen cannot
// be written (a full disk: /dev/full), the file is reopened all the same,
// so Reopen succeeds and the lost records are reported as a failed write.
// It used to return the write error, which detour logged as "reopening
// the access log failed; still writing to the old file": neither was true.
func TestReopenAfterFailedFlush(t *testing.T) {
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Skip("no /dev/full")
	}
	var logged logbuf.Buffer
	l, err := Open(Options{Path: "/dev/full", FlushInterval: time.Hour, Logger: slog.New(slog.NewTextHandler(&logged, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	l.L4(l4rec)
	if err := l.Reopen(); err != nil {
		t.Errorf("Reopen: %v; want nil, the file was reopened", err)
	}
	if !strings.Contains(logged.String(), "access log write failed") {
		t.Errorf("the lost record was not reported: %q", logged.String())
	}
}

// TestFlushInterval: buffered records reach the writer within the
// interval, without Close.
func TestFlushInterval(t *testing.T) {
	var out logbuf.Buffer
	l, err := Open(Options{Path: PathStdout, Stdout: &out, FlushInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	l.L4(l4rec)
	if out.String() != "" {
		t.Fatal("record written before the flush")
	}
	deadline := time.Now().Add(5 * time.Second)
	for out.String() == "" && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if !strings.Contains(out.String(), "kind=tcp") {
		t.Fatal("record not flushed within 5s")
	}
}

func TestConcurrentRecordsStayWhole(t *testing.T) {
	var out logbuf.Buffer
	l, err := Open(Options{Path: PathStdout, Format: FormatJSON, Stdout: &out, FlushInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				r := httpInfo
				r.RequestID = strconv.Itoa(g*1000 + i)
				l.HTTP(&r)
			}
		}()
	}
	wg.Wait()
	l.Close()
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	seen := map[string]bool{}
	for _, ln := range lines {
		var rec struct {
			RequestID string `json:"request_id"`
		}
		if err := json.Unmarshal([]byte(ln), &rec); err != nil {
			t.Fatalf("torn record %q: %v", ln, err)
		}
		seen[rec.RequestID] = true
	}
	if len(lines) != 1600 || len(seen) != 1600 {
		t.Fatalf("%d lines, %d distinct ids; want 1600", len(lines), len(seen))
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

func TestNoAllocationsPerRecord(t *testing.T) {
	if raceEnabled {
		t.Skip("skipping: the race detector makes sync.Pool allocate")
	}
	for _, f := range []Format{FormatText, FormatJSON} {
		l, err := Open(Options{Path: PathStdout, Format: f, Stdout: discard{}, FlushInterval: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		l.HTTP(&httpInfo)
		if n := testing.AllocsPerRun(200, func() { l.HTTP(&httpInfo); l.L4(l4rec) }); n != 0 {
			t.Errorf("%s: %v allocations per record pair, want 0", f, n)
		}
		l.Close()
	}
}

func FuzzJSONString(f *testing.F) {
	for _, s := range []string{"", "plain", "a\"b\\c", "\x00\x1f\x7f", "é✓𝄞", "\xff\xfe", "\xe2\x82", "\u2028"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b := appendJSONString(nil, s)
		var got string
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("%q -> invalid JSON %s: %v", s, b, err)
		}
		if utf8.ValidString(s) && got != s {
			t.Fatalf("%q -> %s -> %q", s, b, got)
		}
	})
}

func BenchmarkL4Record(b *testing.B) {
	benchmarkRecord(b, func(l *Logger) { l.L4(l4rec) })
}

func BenchmarkHTTPRecord(b *testing.B) {
	benchmarkRecord(b, func(l *Logger) { l.HTTP(&httpInfo) })
}

// benchmarkRecord measures write, one record, in each format.
func benchmarkRecord(b *testing.B, write func(*Logger)) {
	for _, f := range []Format{FormatText, FormatJSON, FormatEnvoy} {
		b.Run(string(f), func(b *testing.B) {
			l, err := Open(Options{Path: PathStdout, Format: f, Stdout: discard{}, FlushInterval: time.Hour})
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			b.ReportAllocs()
			for b.Loop() {
				write(l)
			}
		})
	}
}
