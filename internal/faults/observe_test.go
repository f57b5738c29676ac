package faults

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/detour-proxy/detour/internal/ns"
)

// adminAddr is where detour's admin endpoint listens, on the router's
// loopback, when the binary has one.
const adminAddr = "127.0.0.1:9901"

var (
	featuresOnce sync.Once
	hasObserve   bool // --access-log and --admin with /metrics
)

// observable reports whether the detour under test has an access log and
// an admin endpoint (older builds have neither; the tests then rely on the
// debug log alone).
func observable() bool {
	featuresOnce.Do(func() {
		out, _ := exec.Command(detourBin, "run", "--help").CombinedOutput()
		hasObserve = bytes.Contains(out, []byte("-access-log")) && bytes.Contains(out, []byte("-admin"))
	})
	return hasObserve
}

// observer reads one detour's access log (JSON lines) and admin endpoint.
type observer struct {
	path   string
	router *ns.NS
}

// observeArgs returns the flags that turn on the access log and the admin
// endpoint, or "--admin off" when a prebuilt binary (DETOUR_BIN) lacks
// them; o is nil then.
func observeArgs(t *testing.T, router *ns.NS) ([]string, *observer) {
	t.Helper()
	if !observable() {
		if os.Getenv("DETOUR_BIN") == "" {
			// The tree's own build has both: a help text that no longer
			// names them must fail, not turn every access-log and
			// metrics assertion of these tests into a silent no-op.
			t.Fatalf("%s run --help names no --access-log or --admin; the tests of the access log and metrics need them (only an older build given as DETOUR_BIN may lack them)", detourBin)
		}
		return []string{"--admin", "off"}, nil
	}
	o := &observer{path: filepath.Join(t.TempDir(), "access.log"), router: router}
	return []string{"--admin", adminAddr, "--access-log", o.path, "--access-log-format", "json"}, o
}

// wantCount is want, also adding the record's flags (each of a
// comma-separated list) to counts.
func (o *observer) wantCount(t *testing.T, counts map[string]float64, kv ...string) record {
	t.Helper()
	r := o.want(t, kv...)
	if r != nil {
		for _, f := range strings.Split(r.str("flags"), ",") {
			counts[f]++
		}
	}
	return r
}

// record is one access log record.
type record map[string]any

func (r record) str(k string) string {
	switch v := r[k].(type) {
	case string:
		return v
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64)
	case nil:
		return ""
	default:
		return fmt.Sprint(v)
	}
}

func (r record) String() string {
	b, _ := json.Marshal(map[string]any(r))
	return string(b)
}

// records parses the access log written so far.
func (o *observer) records() []record {
	b, err := os.ReadFile(o.path)
	if err != nil {
		return nil
	}
	var out []record
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var r record
		if json.Unmarshal(sc.Bytes(), &r) == nil {
			out = append(out, r)
		}
	}
	return out
}

// want waits (the log is flushed every second) for a record whose fields
// equal every key=value in kv, and fails the test otherwise. A value
// ending in "*" matches as a prefix, one starting with "~" as a substring.
// It does nothing when the binary has no access log.
func (o *observer) want(t *testing.T, kv ...string) record {
	t.Helper()
	if o == nil {
		return nil
	}
	var found record
	ok := waitUntil(10*time.Second, func() bool {
		for _, r := range o.records() {
			if r.matches(kv) {
				found = r
				return true
			}
		}
		return false
	})
	if !ok {
		recs := o.records()
		var last []string
		for _, r := range recs[max(0, len(recs)-5):] {
			last = append(last, r.String())
		}
		t.Errorf("access log has no record with %v within 10s; last records:\n%s", kv, strings.Join(last, "\n"))
	}
	return found
}

func (r record) matches(kv []string) bool {
	for _, p := range kv {
		k, v, _ := strings.Cut(p, "=")
		got := r.str(k)
		switch {
		case strings.HasSuffix(v, "*"):
			if !strings.HasPrefix(got, strings.TrimSuffix(v, "*")) {
				return false
			}
		case strings.HasPrefix(v, "~"):
			if !strings.Contains(got, v[1:]) {
				return false
			}
		case got != v:
			return false
		}
	}
	return true
}

// get fetches a path of the admin endpoint from inside the router.
func (o *observer) get(path string) (string, error) {
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: o.router.Dialer(&net.Dialer{Timeout: 5 * time.Second}), DisableKeepAlives: true,
	}}
	resp, err := c.Get("http://" + adminAddr + path)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return string(b), fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return string(b), err
}

// metric sums the samples of a metric whose labels include every given
// label="value" pair (Prometheus text format).
func (o *observer) metric(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	body, err := o.get("/metrics")
	if err != nil {
		t.Fatalf("admin /metrics: %v", err)
	}
	var sum float64
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		if !containsAll(line, labels) {
			continue
		}
		f := strings.Fields(line)
		v, _ := strconv.ParseFloat(f[len(f)-1], 64)
		sum += v
	}
	return sum
}

// wantMetric fails the test unless the metric's matching samples add up
// to at least min. It does nothing when the binary has no admin endpoint.
func (o *observer) wantMetric(t *testing.T, min float64, name string, labels ...string) {
	t.Helper()
	if o == nil {
		return
	}
	if got := o.metric(t, name, labels...); got < min {
		t.Errorf("metric %s%v = %v, want at least %v", name, labels, got, min)
	}
}

// metricSum sums the samples of a Prometheus counter or gauge (every
// label set) on detour's /metrics; -1 without an observer.
func (o *observer) metricSum(t *testing.T, name string) float64 {
	t.Helper()
	body, ok := o.fetch(t, "/metrics")
	if !ok {
		return -1
	}
	var sum float64
	for _, line := range strings.Split(body, "\n") {
		if rest, ok := strings.CutPrefix(line, name); ok && (strings.HasPrefix(rest, "{") || strings.HasPrefix(rest, " ")) {
			var v float64
			fmt.Sscan(rest[strings.LastIndexByte(rest, ' ')+1:], &v)
			sum += v
		}
	}
	return sum
}

// goroutines is detour's goroutine count from /debug/pprof, or -1 when the
// binary has no admin endpoint.
func (o *observer) goroutines(t *testing.T) int {
	t.Helper()
	body, ok := o.fetch(t, "/debug/pprof/goroutine?debug=1")
	if !ok {
		return -1
	}
	// "goroutine profile: total N"
	var n int
	if i := strings.Index(body, "total "); i >= 0 {
		fmt.Sscan(body[i+len("total "):], &n)
	}
	return n
}

// fetch gets path from the admin endpoint; false without an observer or
// on an error (logged).
func (o *observer) fetch(t *testing.T, path string) (string, bool) {
	t.Helper()
	if o == nil {
		return "", false
	}
	body, err := o.get(path)
	if err != nil {
		t.Logf("%s: %v", path, err)
		return "", false
	}
	return body, true
}
