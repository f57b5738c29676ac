package e2e

import (
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

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
