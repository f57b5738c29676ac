package lab

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/detour-proxy/detour/internal/admin"
	"github.com/detour-proxy/detour/internal/config"
	"github.com/detour-proxy/detour/internal/metrics"
)

// fakeAdmin serves /status, whose request count grows by one at each
// read from start, and /config with the given configuration.
func fakeAdmin(t *testing.T, start uint64, cfg *config.Config) (*httptest.Server, *atomic.Uint64) {
	t.Helper()
	var reads atomic.Uint64
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		n := reads.Add(1)
		json.NewEncoder(w).Encode(admin.Status{Connections: metrics.Summary{Requests: start + n - 1}})
	})
	mux.HandleFunc("GET /config", func(w http.ResponseWriter, _ *http.Request) {
		b, err := cfg.Marshal()
		if err != nil {
			t.Error(err)
		}
		w.Write(b)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv, &reads
}

// TestAwaitCounted: the admin step waits until the endpoint has counted
// the walkthrough's requests, however long that takes on a loaded
// machine (it used to wait a fixed 100 ms), and no longer than its bound
// when they never are.
func TestAwaitCounted(t *testing.T) {
	srv, reads := fakeAdmin(t, 0, &config.Config{})
	if !awaitCounted(t.Context(), srv.Client(), srv.URL, 3, time.Minute) {
		t.Fatal("awaitCounted gave up on a count that grows")
	}
	if n := reads.Load(); n != 4 { // counts 0, 1, 2, 3
		t.Errorf("read /status %d times, want 4: until it counted 3 requests", n)
	}
	start := time.Now()
	if awaitCounted(t.Context(), srv.Client(), srv.URL+"/nothing-here", 1, 100*time.Millisecond) {
		t.Error("awaitCounted says an endpoint that answers 404 counted the requests")
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("awaitCounted waited %v past its 100ms bound", d)
	}
}

// TestAdminCleanup: the admin step names the cleanup interval in force,
// as /config says, not the default whatever --cleanup-interval says.
func TestAdminCleanup(t *testing.T) {
	cfg := &config.Config{HTTP: config.HTTP{CleanupInterval: config.Duration(7 * time.Second)}}
	if err := cfg.Finish(); err != nil {
		t.Fatal(err)
	}
	srv, _ := fakeAdmin(t, 0, cfg)
	got, err := adminCleanup(t.Context(), srv.Client(), srv.URL)
	if err != nil || got != "7s" {
		t.Errorf("adminCleanup = %q, %v; want 7s", got, err)
	}
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "not: [yaml") }))
	t.Cleanup(bad.Close)
	if got, err := adminCleanup(t.Context(), bad.Client(), bad.URL); err == nil {
		t.Errorf("adminCleanup of a broken /config = %q, want an error", got)
	}
}
