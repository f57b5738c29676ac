package accesslog

import (
	"bytes"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/detour-proxy/detour/internal/accesslog/envoyfmt"
	"github.com/detour-proxy/detour/internal/httpproxy"
	"github.com/detour-proxy/detour/internal/proxy"
)

// TestEnvoyFormat: each operator's value for an L4 and an HTTP record, as
// the README's table says.
func TestEnvoyFormat(t *testing.T) {
	refused := httpInfo
	refused.Status, refused.Flags, refused.Details = 503, httpproxy.UpstreamConnectFailure, "connection refused"
	refused.UpstreamTime, refused.BodyBytes, refused.RequestBytes, refused.UpstreamLocal = 0, 91, 0, netip.AddrPort{}
	loop := proxy.L4Record{ID: "C8", Start: start, Client: l4rec.Client, OrigDst: netip.MustParseAddrPort("198.18.1.1:15001"),
		Protocol: "tcp", End: "loop refused", Flags: "LR"}
	for _, c := range []struct {
		format, l4, http, refused, loop string
	}{
		{"%START_TIME%", "2026-11-22T00:51:50.123Z", "2026-11-22T00:51:50.123Z", "", ""},
		{"%START_TIME(%s.%3f)%", "1795308710.123", "", "", ""},
		{"%DURATION%", "1500", "2", "", "0"},
		{"%RESPONSE_CODE%", "-", "200", "503", ""},
		{"%RESPONSE_FLAGS%", "UC", "-", "UF", "LR"},
		{"%RESPONSE_CODE_DETAILS%", "-", "via_upstream", "connection refused", ""},
		{"%CONNECTION_TERMINATION_DETAILS%", "upstream reset", "-", "", "loop refused"},
		{"%BYTES_RECEIVED% %BYTES_SENT%", "517 4096", "1234 312", "0 91", "0 0"},
		{"%PROTOCOL%", "-", "HTTP/1.1", "", ""},
		{"%REQ(:METHOD)% %REQ(:PATH)% %REQ(:AUTHORITY)% %REQ(HOST)% %REQ(X-REQUEST-ID)%", "- - - - -", "GET /get [2001:db8:2::2] [2001:db8:2::2] 4f3c", "", ""},
		{"%REQ(USER-AGENT)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %REQ(:PATH?USER-AGENT)%", "- - -", "- /get /get", "", ""},
		{"%REQ(:PATH):2% %REQ(X-REQUEST-ID):10%", "- -", "/g 4f3c", "", ""},
		{"%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% %RESP(x-detour-upstream-service-time)% %RESP(SERVER)%", "- - -", "1 1 -", "- - -", ""},
		{"%UPSTREAM_HOST% %UPSTREAM_REMOTE_ADDRESS%", "198.18.2.2:443 198.18.2.2:443", "[2001:db8:2::2]:80 [2001:db8:2::2]:80", "", "- -"},
		{"%DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %DOWNSTREAM_REMOTE_PORT%",
			"198.18.1.2:40312 198.18.1.2 40312", "[2001:db8:1::2]:40000 2001:db8:1::2 40000", "", ""},
		{"%DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT% %DOWNSTREAM_LOCAL_PORT%",
			"198.18.2.2:443 198.18.2.2 443", "[2001:db8:2::2]:80 2001:db8:2::2 80", "", "198.18.1.1:15001 198.18.1.1 15001"},
		{"%REQUESTED_SERVER_NAME% %CONNECTION_ID%", "example.com 7", "- 9", "- 9", "- 8"},
		{"100%% %DURATION%\\n", "100% 1500", "100% 2", "", ""},
		{"%UPSTREAM_CLUSTER% %UPSTREAM_CLUSTER_RAW%", "original_dst original_dst", "original_dst original_dst", "original_dst original_dst", "- -"},
		{"%UPSTREAM_TRANSPORT_FAILURE_REASON% %UPSTREAM_LOCAL_ADDRESS% %ROUTE_NAME%", "- 198.18.2.1:51234 -", "- [2001:db8:1::1]:51000 -", "connection refused - -", "- - -"},
	} {
		l, out := open(t, Format(c.format))
		for _, rec := range []struct {
			write func()
			want  string
		}{
			{func() { l.L4(l4rec) }, c.l4},
			{func() { l.HTTP(&httpInfo) }, c.http},
			{func() { l.HTTP(&refused) }, c.refused},
			{func() { l.L4(loop) }, c.loop},
		} {
			if rec.want == "" {
				continue
			}
			before := len(out.String())
			rec.write()
			if got := out.String()[before:]; got != rec.want+"\n" {
				t.Errorf("%s: got %q, want %q", c.format, got, rec.want+"\n")
			}
		}
	}
}

// TestEnvoyDefault: "envoy" is Envoy's default format; values that
// carry control bytes are escaped, so a record stays one line.
func TestEnvoyDefault(t *testing.T) {
	l, out := open(t, FormatEnvoy)
	l.HTTP(&httpInfo)
	i := httpInfo
	i.Path = "/a\nb"
	l.HTTP(&i)
	l.L4(l4rec)
	want := `[2026-11-22T00:51:50.123Z] "GET /get HTTP/1.1" 200 - 1234 312 2 1 "-" "-" "4f3c" "[2001:db8:2::2]" "[2001:db8:2::2]:80"
[2026-11-22T00:51:50.123Z] "GET /a\x0ab HTTP/1.1" 200 - 1234 312 2 1 "-" "-" "4f3c" "[2001:db8:2::2]" "[2001:db8:2::2]:80"
[2026-11-22T00:51:50.123Z] "- - -" - UC 517 4096 1500 - "-" "-" "-" "-" "198.18.2.2:443"
`
	if got := out.String(); got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}

// TestIstioDefault: "istio" is Istio's default format, and the format as
// older Istio releases wrote it (%UPSTREAM_CLUSTER%) works the same: every
// operator is known, with detour's value or "-".
func TestIstioDefault(t *testing.T) {
	refused := httpInfo
	refused.Status, refused.Flags, refused.Details = 503, httpproxy.UpstreamConnectFailure, "connection refused"
	refused.UpstreamTime, refused.BodyBytes, refused.RequestBytes, refused.UpstreamLocal = 0, 91, 0, netip.AddrPort{}
	l4uf := l4rec
	l4uf.Protocol, l4uf.SNI, l4uf.Sent, l4uf.Received, l4uf.End, l4uf.Flags = "tcp", "", 0, 0, "connect timeout", "UF"
	l4uf.UpstreamLocal = netip.AddrPort{}
	loop := proxy.L4Record{ID: "C8", Start: start, Client: l4rec.Client, OrigDst: netip.MustParseAddrPort("198.18.1.1:15001"),
		Protocol: "tcp", End: "loop refused", Flags: "LR"}
	older := Format(strings.Replace(string(envoyfmt.Istio), "%UPSTREAM_CLUSTER_RAW%", "%UPSTREAM_CLUSTER%", 1))
	for _, c := range []struct {
		name  string
		write func(*Logger)
		want  string
	}{
		{"http", func(l *Logger) { l.HTTP(&httpInfo) },
			`[2026-11-22T00:51:50.123Z] "GET /get HTTP/1.1" 200 - via_upstream - "-" 1234 312 2 1 "-" "-" "4f3c" "[2001:db8:2::2]" "[2001:db8:2::2]:80" original_dst [2001:db8:1::1]:51000 [2001:db8:2::2]:80 [2001:db8:1::2]:40000 - -`},
		{"http UF", func(l *Logger) { l.HTTP(&refused) },
			`[2026-11-22T00:51:50.123Z] "GET /get HTTP/1.1" 503 UF connection refused - "connection refused" 0 91 2 - "-" "-" "4f3c" "[2001:db8:2::2]" "[2001:db8:2::2]:80" original_dst - [2001:db8:2::2]:80 [2001:db8:1::2]:40000 - -`},
		{"l4", func(l *Logger) { l.L4(l4rec) },
			`[2026-11-22T00:51:50.123Z] "- - -" - UC - upstream reset "-" 517 4096 1500 - "-" "-" "-" "-" "198.18.2.2:443" original_dst 198.18.2.1:51234 198.18.2.2:443 198.18.1.2:40312 example.com -`},
		{"l4 UF", func(l *Logger) { l.L4(l4uf) },
			`[2026-11-22T00:51:50.123Z] "- - -" - UF - connect timeout "connect timeout" 0 0 1500 - "-" "-" "-" "-" "198.18.2.2:443" original_dst - 198.18.2.2:443 198.18.1.2:40312 - -`},
		{"l4 LR", func(l *Logger) { l.L4(loop) },
			`[2026-11-22T00:51:50.123Z] "- - -" - LR - loop refused "-" 0 0 0 - "-" "-" "-" "-" "-" - - 198.18.1.1:15001 198.18.1.2:40312 - -`},
	} {
		for _, f := range []Format{FormatIstio, older} {
			l, out := open(t, f)
			c.write(l)
			if got := out.String(); got != c.want+"\n" {
				t.Errorf("%s, %.40q...:\ngot  %q\nwant %q", c.name, f, got, c.want+"\n")
			}
		}
	}
}

// TestEnvoyMaxLen: %REQ(H):N% keeps at most N bytes, as Envoy's, and
// never half a UTF-8 character: a character the cut would split goes
// whole. Bytes that are not UTF-8 are cut where N says.
func TestEnvoyMaxLen(t *testing.T) {
	for _, c := range []struct {
		path string
		n    int
		want string
	}{
		{"/get", 2, "/g"},
		{"/get", 4, "/get"},
		{"/get", 9, "/get"},
		{"/h\u00e9llo", 3, "/h"},            // é is bytes 2-3
		{"/h\u00e9llo", 4, "/h\u00e9"},      // whole
		{"\u65e5\u672c\u8a9e", 5, "\u65e5"}, // 3 bytes each
		{"\u65e5\u672c\u8a9e", 6, "\u65e5\u672c"},
		{"\u65e5\u672c\u8a9e", 2, ""},
		{"/\U0001F600x", 4, "/"}, // a 4-byte character
		{"/\U0001F600x", 5, "/\U0001F600"},
		{"a\xff\xfeb", 2, "a\xff"}, // not UTF-8: cut at N
		{"a\xe6\x97b", 2, "a\xe6"}, // a truncated sequence is no character
		{"a\n\u00e9", 3, "a\\x0a"}, // the cut comes before the escape
	} {
		l, out := open(t, Format(fmt.Sprintf("%%REQ(:PATH):%d%%", c.n)))
		i := httpInfo
		i.Path = c.path
		l.HTTP(&i)
		if got := out.String(); got != c.want+"\n" {
			t.Errorf("%q cut to %d: got %q, want %q", c.path, c.n, got, c.want+"\n")
		}
	}
}

func TestEnvoyFormatErrors(t *testing.T) {
	for _, c := range []struct{ format, want string }{
		{"xml", `"xml" is not a format: use text, json, envoy, istio or an Envoy format string`},
		{"%NOPE%", "unknown operator %NOPE% (detour knows START_TIME,"},
		{"%REQ%", "needs a header name"},
	} {
		_, err := Open(Options{Path: PathStdout, Format: Format(c.format)})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want an error containing %q", c.format, err, c.want)
		}
		if err2 := CheckFormat(Format(c.format)); err2 == nil {
			t.Errorf("CheckFormat(%q) passed", c.format)
		}
	}
	for _, f := range []Format{"", FormatText, FormatJSON, FormatEnvoy, FormatIstio, "%DURATION%"} {
		if err := CheckFormat(f); err != nil {
			t.Errorf("CheckFormat(%q): %v", f, err)
		}
	}
}

func TestEnvoyNoAllocationsPerRecord(t *testing.T) {
	if raceEnabled {
		t.Skip("skipping: the race detector makes sync.Pool allocate")
	}
	l, err := Open(Options{Path: PathStdout, Format: FormatEnvoy, Stdout: discard{}, FlushInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	l.HTTP(&httpInfo)
	if n := testing.AllocsPerRun(200, func() { l.HTTP(&httpInfo); l.L4(l4rec) }); n != 0 {
		t.Errorf("%v allocations per record pair, want 0", n)
	}
}

// FuzzEnvoyFormat: any string either is refused with an error or compiles,
// the same way each time, into a format that renders an L4, an HTTP and a
// refused record without panicking, the same way each time, and as valid
// UTF-8 when the string and the records' values are (a :N cut never
// splits a character). The records' values hold multi-byte characters
// so that the cuts meet them.
func FuzzEnvoyFormat(f *testing.F) {
	for _, s := range []string{
		string(FormatEnvoy), string(FormatIstio), envoyfmt.Default, envoyfmt.Istio,
		// README, "Access log and response flags".
		`[%START_TIME%] "%REQ(:METHOD)% %REQ(:PATH)% %PROTOCOL%" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %UPSTREAM_HOST%\n`,
		"%START_TIME(%s.%3f)%", "%START_TIME(%Y %y %m %d %e %j %H %I %M %S %p %a %A %b %B %z %Z %T %F %D %R)%",
		"%START_TIME(%f %9f %E3S %E*S %n%t%%)%", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %REQ(:PATH):5% %REQ(:AUTHORITY):2%",
		"%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% %REQ(X-REQUEST-ID):1%", "100%% %DURATION%\\t\\n",
		"%UPSTREAM_CLUSTER% %UPSTREAM_CLUSTER_RAW% %CONNECTION_ID% %REQUESTED_SERVER_NAME%",
		// Errors.
		"text", "json", "", "%", "%NOPE%", "%REQ%", "%REQ(:PATH", "%REQ(:PATH):0%", "%DURATION:3%", "%START_TIME(%Q)%",
	} {
		f.Add(s)
	}
	l4 := l4rec
	l4.SNI = "b\u00fccher.example"
	h := httpInfo
	h.Path, h.Host, h.RequestID = "/h\u00e9llo/\u65e5\u672c\U0001F600?q=\u00e9", "b\u00fccher.example", "\u2713\u2713"
	refused := h
	refused.Status, refused.Flags, refused.Details = 503, httpproxy.UpstreamConnectFailure, "connection refused"
	views := []view{l4View(&l4), httpView(&h), httpView(&refused)}
	f.Fuzz(func(t *testing.T, s string) {
		ef, err := compileFormat(Format(s))
		ef2, err2 := compileFormat(Format(s))
		if (err == nil) != (err2 == nil) || !reflect.DeepEqual(ef, ef2) {
			t.Fatalf("%q compiles two ways: %v, %v", s, err, err2)
		}
		if err != nil || ef == nil {
			return // refused, or text or json
		}
		for i := range views {
			b := ef.append(nil, &views[i])
			if again := ef.append(nil, &views[i]); !bytes.Equal(b, again) {
				t.Fatalf("%q renders record %d two ways: %q, %q", s, i, b, again)
			}
			if utf8.ValidString(s) && !utf8.Valid(b) {
				t.Fatalf("%q renders record %d as invalid UTF-8: %q", s, i, b)
			}
		}
	})
}
