package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/detour-proxy/detour/internal/admin"
	"github.com/detour-proxy/detour/internal/config"
)

// defaultAdmin is `detour run`'s admin endpoint unless ExtraArgs change it.
const defaultAdmin = "127.0.0.1:9901"

// adminAddr is the admin address detour was started with: the last
// --admin in args, "" when it is off.
func adminAddr(args []string) string {
	addr := defaultAdmin
	for i := 0; i < len(args); i++ {
		a := strings.TrimPrefix(strings.TrimPrefix(args[i], "-"), "-")
		if v, ok := strings.CutPrefix(a, "admin="); ok {
			addr = v
		} else if a == "admin" && i+1 < len(args) {
			addr = args[i+1]
			i++
		}
	}
	if addr == "off" {
		return ""
	}
	return addr
}

// showAdmin prints what detour's admin endpoint saw of the walkthrough's
// requests: `detour status`, run where detour runs, once the endpoint
// has counted the requests it sent (want). It never fails the
// walkthrough; a detour without an admin endpoint is only mentioned.
func (w *walk) showAdmin(ctx context.Context, want uint64) {
	addr := adminAddr(w.o.ExtraArgs)
	if w.detourNS == nil || addr == "" {
		return
	}
	name := w.detourNS.Name
	w.stepf("what detour's admin endpoint (%s, inside %s) saw: detour status", addr, name)
	client := HTTPClient(w.detourNS)
	base := "http://" + addr
	// The last request's counters land just after its response: wait
	// for them rather than a fixed while, which a loaded machine outlasts.
	awaitCounted(ctx, client, base, want, adminWait)
	cleanup := "http.cleanup_interval"
	if d, err := adminCleanup(ctx, client, base); err == nil {
		cleanup = d
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := w.detourNS.Command(ctx, w.o.Binary, "status", "--admin", addr).CombinedOutput()
	w.block(string(out))
	if err != nil {
		w.sayf("`detour status` failed (%v); the lab goes on without it.", err)
		return
	}
	w.sayf("one host per original destination ip:port: REQUESTS counts the requests above, REUSES those")
	w.sayf("detour served on a pooled upstream connection. A host unused for %s is removed with its idle connections.", cleanup)
	w.adminTip = []string{
		fmt.Sprintf("ip netns exec %s %s status --watch   # live hosts and counters", name, w.shownBinary()),
		fmt.Sprintf("ip netns exec %s curl -s http://%s/metrics | grep '^detour_'", name, addr),
		fmt.Sprintf("ip netns exec %s curl -s http://%s/clusters", name, addr),
	}
}

// adminWait bounds the wait for the requests' counters: generous, since
// it only ends early a walkthrough whose detour counts fewer than sent.
const adminWait = 5 * time.Second

// awaitCounted waits until the admin endpoint at base has counted want
// HTTP requests, for at most limit or until ctx ends, and reports
// whether it has.
func awaitCounted(ctx context.Context, c *http.Client, base string, want uint64, limit time.Duration) bool {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		var st admin.Status
		if err := adminGet(ctx, c, base+"/status", func(r io.Reader) error { return json.NewDecoder(r).Decode(&st) }); err == nil &&
			st.Connections.Requests >= want {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-tick.C:
		}
	}
}

// adminCleanup reads the cluster's cleanup interval in force from the
// admin endpoint's /config: what --cleanup-interval, the -c file or the
// default made it.
func adminCleanup(ctx context.Context, c *http.Client, base string) (string, error) {
	var cfg *config.Config
	err := adminGet(ctx, c, base+"/config", func(r io.Reader) error {
		b, err := io.ReadAll(io.LimitReader(r, 1<<20))
		if err == nil {
			cfg, err = config.Parse(b)
		}
		return err
	})
	if err != nil {
		return "", err
	}
	if cfg.HTTP.CleanupInterval <= 0 {
		return "", errors.New("/config has no http.cleanup_interval")
	}
	return cfg.HTTP.CleanupInterval.String(), nil
}

// adminGet GETs url and hands a 200's body to read.
func adminGet(ctx context.Context, c *http.Client, url string, read func(io.Reader) error) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return read(resp.Body)
}
