package main

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/detour-proxy/detour/internal/config"
	"github.com/detour-proxy/detour/internal/httpproxy"
	"github.com/detour-proxy/detour/internal/upstream"
)

func TestIsSelfCoversAdmin(t *testing.T) {
	ap := netip.MustParseAddrPort
	for _, tt := range []struct {
		admin, dst string
		want       bool
	}{
		{"127.0.0.1:9901", "127.0.0.1:9901", true},
		{"127.0.0.1:9901", "0.0.0.0:9901", true},
		{"127.0.0.1:9901", "[::ffff:127.0.0.1]:9901", true},
		{"127.0.0.1:9901", "127.0.0.1:9902", false},
		{"127.0.0.1:9901", "198.18.2.2:9901", false},
		{"198.18.1.1:9901", "198.18.1.1:9901", true},
		{"198.18.1.1:9901", "198.18.1.2:9901", false},
		{"0.0.0.0:9901", "127.0.0.1:9901", true},
		{"[::]:9901", "[::1]:9901", true},
		{"[::]:9901", "[::]:9901", true},
		{"0.0.0.0:9901", "198.51.100.7:9901", false}, // not a local address
		{"", "127.0.0.1:9901", false},                // admin off
	} {
		var admin netip.AddrPort
		if tt.admin != "" {
			admin = ap(tt.admin)
		}
		d := &daemon{admin: admin} // no listeners: only the admin address counts
		if got := d.isSelf(ap(tt.dst)); got != tt.want {
			t.Errorf("admin %s: isSelf(%s) = %v, want %v", tt.admin, tt.dst, got, tt.want)
		}
	}
}

func TestHTTPTimeoutFlags(t *testing.T) {
	f := newConfigFlags("run", io.Discard, true)
	if err := f.fs.Parse([]string{"--header-timeout", "3s", "--stream-idle-timeout", "90s"}); err != nil {
		t.Fatal(err)
	}
	cfg, err := f.load()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.HTTP.HeaderTimeout != config.Duration(3*time.Second) || cfg.HTTP.StreamIdleTimeout != config.Duration(90*time.Second) {
		t.Errorf("http %+v", cfg.HTTP)
	}
	f = newConfigFlags("run", io.Discard, true)
	if err := f.fs.Parse([]string{"--header-timeout", "-1s"}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.load(); err == nil {
		t.Error("negative --header-timeout accepted")
	}
	for _, v := range []string{"-1s", "5ms"} {
		f = newConfigFlags("run", io.Discard, true)
		if err := f.fs.Parse([]string{"--http-idle-timeout", v}); err != nil {
			t.Fatal(err)
		}
		if _, err := f.load(); err == nil || !strings.Contains(err.Error(), "http.idle_timeout: "+v) {
			t.Errorf("--http-idle-timeout %s: %v, want an error naming http.idle_timeout", v, err)
		}
	}
}

// TestL7SideAfterShutdown: a connection handed to an HTTP side whose
// shutdown began (it loaded the side just before a reload replaced it)
// goes to the side that replaced it, with the connect made for it while
// sniffing; when none did (detour is stopping), both are closed, not
// left open. The retired side used to close the client without a
// response even when a new side was there to serve it.
func TestL7SideAfterShutdown(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") }))
	defer up.Close()
	dst := netip.MustParseAddrPort(up.Listener.Addr().String())
	newSide := func(server string) *httpproxy.Proxy {
		p, err := httpproxy.New(httpproxy.Options{Dialer: upstream.New(upstream.Options{ConnectTimeout: 5 * time.Second}), AllowLoopback: true, ServerHeader: server})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		return p
	}
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, tc := range []struct {
		name     string
		replaced bool
	}{
		{"replaced", true},
		{"stopping", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			old := newSide("old")
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := old.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}
			side := newL7Side(old, nil)
			if tc.replaced {
				side.cur.Store(newSide("new"))
			}
			client, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			client.SetDeadline(time.Now().Add(20 * time.Second))
			c, err := ln.AcceptTCP()
			if err != nil {
				t.Fatal(err)
			}
			pre, err := net.DialTCP("tcp", nil, net.TCPAddrFromAddrPort(dst))
			if err != nil {
				t.Fatal(err)
			}
			defer pre.Close()
			io.WriteString(client, "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
			served := make(chan struct{})
			go func() {
				defer close(served)
				side.ServeConn(c, netip.MustParseAddrPort(client.LocalAddr().String()), dst, upstream.PreDial{Conn: pre})
			}()
			resp, err := http.ReadResponse(bufio.NewReader(client), nil)
			if tc.replaced {
				if err != nil {
					t.Fatalf("no response from the side that replaced the one shut down: %v", err)
				}
				resp.Body.Close()
				if got := resp.Header.Get("Server"); got != "new" {
					t.Errorf("answered with Server %q, want the new side's", got)
				}
			} else if err == nil {
				t.Errorf("a side shut down answered %s", resp.Status)
			}
			select {
			case <-served:
			case <-time.After(20 * time.Second):
				t.Fatal("ServeConn did not return")
			}
			if !tc.replaced {
				if _, err := pre.Write([]byte("x")); err == nil {
					t.Error("the connect made for the connection is still open")
				}
			}
		})
	}
}

// TestHTTPIdleTimeoutReachesL7: --http-idle-timeout and http.idle_timeout
// reach the HTTP side, on each way it serves a keep-alive connection
// between requests (its goroutine, an L4 loop from the third request,
// net/http), and /config shows the value in force. A client that idles
// past it finds the connection closed; before, the option could not be
// set and a client idled 5 minutes.
func TestHTTPIdleTimeoutReachesL7(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") }))
	defer up.Close()
	dst := netip.MustParseAddrPort(up.Listener.Addr().String())
	file := filepath.Join(t.TempDir(), "detour.yaml")
	if err := os.WriteFile(file, []byte("admin: off\nhttp: {idle_timeout: 400ms, disable_fast_path: true}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		args     []string
		requests int
		shown    string
	}{
		{"flag, goroutine", []string{"--admin", "off", "--http-idle-timeout", "300ms"}, 1, "idle_timeout: 300ms"},
		{"flag, loop", []string{"--admin", "off", "--http-idle-timeout", "300ms"}, 3, "idle_timeout: 300ms"},
		{"file, net/http", []string{"-c", file}, 3, "idle_timeout: 400ms"},
		{"flag over file, net/http", []string{"-c", file, "--http-idle-timeout", "300ms"}, 3, "idle_timeout: 300ms"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newConfigFlags("run", io.Discard, true)
			if err := f.fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			cfg, err := f.load()
			if err != nil {
				t.Fatal(err)
			}
			cfg, o, log := quietObservability(t, cfg)
			o.setConfig(cfg) // what /config renders, with the admin endpoint on
			if shown := string(o.config()); !strings.Contains(shown, tc.shown) {
				t.Errorf("/config does not say %q:\n%s", tc.shown, shown)
			}
			p, err := newL7(cfg, newDialer(cfg), log, func(netip.AddrPort) bool { return false }, o)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { p.Close() })
			c, err := net.Dial("tcp", serveOne(t, p, dst))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(20 * time.Second))
			br := bufio.NewReader(c)
			for range tc.requests {
				io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
				res, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatal(err)
				}
				if b, err := io.ReadAll(res.Body); err != nil || string(b) != "ok" {
					t.Fatalf("response %q, %v", b, err)
				}
			}
			start := time.Now()
			c.SetReadDeadline(start.Add(10 * time.Second))
			if b, err := br.ReadByte(); err != io.EOF || time.Since(start) > 5*time.Second {
				t.Fatalf("read %q, %v after %v idle; want EOF within a few seconds", b, err, time.Since(start))
			}
		})
	}
}
