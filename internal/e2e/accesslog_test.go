package e2e

import (
	"encoding/json"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/detour-proxy/detour/internal/lab"
)

// TestAccessLogEnvoyFormat: with an Envoy format string, an HTTP request
// and an L4 connection through detour in the tproxy lab each write one
// line with the operators' values for their kind ("-" where the kind has
// none).
func TestAccessLogEnvoyFormat(t *testing.T) {
	needRoot(t)
	t.Parallel()
	n := tproxyNet(t, "alf")
	startHTTPBin(t, n.Server)
	startServers(t, n.Server)
	logPath := filepath.Join(t.TempDir(), "access.log")
	format := `%REQ(:METHOD)% %REQ(:PATH)% %PROTOCOL% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% ` +
		`%BYTES_RECEIVED% %BYTES_SENT% %UPSTREAM_HOST% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% ` +
		`%REQ(X-REQUEST-ID):4% %CONNECTION_TERMINATION_DETAILS% [%START_TIME(%s.%3f)%] %DURATION%\n`
	d := startDetour(t, n.Router, "--mode", "tproxy", "--listen", "0.0.0.0:15001", "--listen", "[::]:15001",
		"--intercept-port", "80,7002", "--admin", "off", "--access-log", logPath, "--access-log-format", format)

	server := n.ServerIP4.String()
	resp, err := lab.HTTPClient(n.Client).Get("http://" + server + "/get?x=1")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET /get: %s", resp.Status)
	}
	obsFinishBanner(t, obsBanner(t, n)) // 3 bytes from the client, 22+3 to it
	if err := d.Stop(); err != nil {    // flushes the log
		t.Fatal(err)
	}

	b, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	client, q := n.ClientIP4.String(), regexp.QuoteMeta
	want := []*regexp.Regexp{
		regexp.MustCompile(`^GET /get\?x=1 HTTP/1\.1 200 - via_upstream 0 [1-9]\d* ` + q(server) + `:80 ` + q(server) + `:80 ` + q(client) +
			` [0-9a-f-]{4} - \[\d{10}\.\d{3}\] \d+$`),
		regexp.MustCompile(`^- - - - - - 3 25 ` + q(server) + `:7002 ` + q(server) + `:7002 ` + q(client) + ` - closed \[\d{10}\.\d{3}\] \d+$`),
	}
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	if len(lines) != len(want) {
		t.Fatalf("access log has %d lines, want %d:\n%s", len(lines), len(want), b)
	}
	for i, re := range want {
		if !re.MatchString(lines[i]) {
			t.Errorf("line %d:\n%s\ndoes not match\n%s", i+1, lines[i], re)
		}
	}
}

// portPeerAddr is TestAccessLogL4UpstreamLocal's server: it writes the
// address and port it sees the connection come from, then closes.
const portPeerAddr = 7043

// TestAccessLogL4UpstreamLocal: an L4 connection's record has the local
// address of detour's upstream connection, which is the address the
// server saw it come from: with protocol tcp (the loop's raw connect) and
// auto (the connect made while sniffing; the server speaks first), with
// and without spoof_source, in the JSON and an Envoy format.
func TestAccessLogL4UpstreamLocal(t *testing.T) {
	needRoot(t)
	for _, c := range []struct {
		name, protocol string
		spoof          bool
		format         string
	}{
		{"tcp", "tcp", false, "json"},
		{"tcp-spoof", "tcp", true, "%UPSTREAM_LOCAL_ADDRESS%"},
		{"auto", "auto", false, "%UPSTREAM_LOCAL_ADDRESS%"},
		{"auto-spoof", "auto", true, "json"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			n := tproxyNet(t, "ulo")
			stop, err := lab.ServeTCP(n.Server, portPeerAddr, func(conn *net.TCPConn) {
				conn.Write([]byte(conn.RemoteAddr().(*net.TCPAddr).AddrPort().String()))
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(stop)
			logPath := filepath.Join(t.TempDir(), "access.log")
			args := []string{"--mode", "tproxy", "--listen", "0.0.0.0:15001", "--listen", "[::]:15001",
				"--intercept-port", strconv.Itoa(portPeerAddr), "--protocol", c.protocol, "--admin", "off",
				"--access-log", logPath, "--access-log-format", c.format}
			wantIP := n.RouterIP4
			if c.spoof {
				args, wantIP = append(args, "--spoof-source"), n.ClientIP4
			}
			d := startDetour(t, n.Router, args...)

			conn := dial(t, n.Client, n.ServerIP4, portPeerAddr)
			conn.SetDeadline(time.Now().Add(20 * time.Second))
			b, err := io.ReadAll(conn)
			if err != nil {
				t.Fatalf("reading the address the server saw: %v", err)
			}
			seen, err := netip.ParseAddrPort(string(b))
			if err != nil {
				t.Fatalf("the server wrote %q: %v", b, err)
			}
			if seen.Addr().Unmap() != wantIP {
				t.Fatalf("the server saw %s, want an address of %s", seen, wantIP)
			}
			conn.Close()
			if err := d.Stop(); err != nil { // flushes the log
				t.Fatal(err)
			}

			log, err := os.ReadFile(logPath)
			if err != nil {
				t.Fatal(err)
			}
			line := strings.TrimSuffix(string(log), "\n")
			if strings.Contains(line, "\n") {
				t.Fatalf("access log has more than one line:\n%s", log)
			}
			got := line
			if c.format == "json" {
				var rec struct {
					Kind          string `json:"kind"`
					UpstreamLocal string `json:"upstream_local"`
				}
				if err := json.Unmarshal([]byte(line), &rec); err != nil || rec.Kind != "tcp" {
					t.Fatalf("record %s: kind %q, %v; want an L4 record", line, rec.Kind, err)
				}
				got = rec.UpstreamLocal
			}
			if got != seen.String() {
				t.Errorf("recorded upstream local address %q, want %s, the address the server saw\nrecord: %s", got, seen, line)
			}
		})
	}
}
