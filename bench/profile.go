package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// adminAddr is where detour's admin endpoint listens in the router
// namespace when -profile is given (loopback, not intercepted).
const adminAddr = "127.0.0.1:9901"

// profiling reports whether pprof profiles are collected for this config.
func (b *bench) profiling(config string) bool {
	return b.o.profileDir != "" && strings.HasPrefix(config, "detour-")
}

// fetchProfile GETs a pprof endpoint of detour's admin server from inside
// the router namespace and writes it to the profile directory.
func (b *bench) fetchProfile(ctx context.Context, path, file string, timeout time.Duration) error {
	c := &http.Client{
		Timeout:   timeout,
		Transport: &http.Transport{DialContext: b.tn.Router.Dialer(&net.Dialer{Timeout: 5 * time.Second})},
	}
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+adminAddr+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("profile %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("profile %s: %s: %s", path, resp.Status, b)
	}
	if err := os.MkdirAll(b.o.profileDir, 0o755); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(b.o.profileDir, file))
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// cpuProfile starts a CPU profile covering a timed workload; wait returns
// once it is written.
func (b *bench) cpuProfile(ctx context.Context, s *Sample) (wait func()) {
	secs := max(1, int(b.o.duration.Seconds())-1)
	file := fmt.Sprintf("%s-%s-r%d.cpu.pprof", s.Config, s.Workload, s.Round)
	done := make(chan error, 1)
	go func() {
		done <- b.fetchProfile(ctx, fmt.Sprintf("/debug/pprof/profile?seconds=%d", secs), file, time.Duration(secs+20)*time.Second)
	}()
	return func() {
		if err := <-done; err != nil {
			s.Notes = append(s.Notes, err.Error())
		} else {
			s.Notes = append(s.Notes, "cpu profile "+file)
		}
	}
}

// memProfiles saves heap and goroutine profiles (during the idle workload).
func (b *bench) memProfiles(ctx context.Context, s *Sample) {
	for _, p := range []struct{ path, ext string }{
		{"/debug/pprof/heap", "heap.pprof"},
		{"/debug/pprof/goroutine", "goroutine.pprof"},
		{"/debug/pprof/goroutine?debug=1", "goroutine.txt"},
		{"/metrics", "metrics.txt"}, // go_memstats_stack_inuse_bytes and the like
	} {
		file := fmt.Sprintf("%s-%s-r%d.%s", s.Config, s.Workload, s.Round, p.ext)
		if err := b.fetchProfile(ctx, p.path, file, 90*time.Second); err != nil {
			s.Notes = append(s.Notes, err.Error())
		}
	}
}
