package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/detour-proxy/detour/internal/logbuf"
	"github.com/detour-proxy/detour/internal/ns"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: the lab creates network namespaces, which needs root (CI runs as root)")
	}
}

// testID is unique per test and per test process, so parallel packages
// and parallel tests never share namespace names.
func testID(short string) string { return fmt.Sprintf("%s%d", short, os.Getpid()) }

func hostLinks(t *testing.T) []string {
	t.Helper()
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range links {
		names = append(names, l.Attrs().Name)
	}
	return names
}

// checkNoLeftovers fails if a namespace dt-ID-* remains or the host
// namespace has a link that was not in before.
func checkNoLeftovers(t *testing.T, id string, before []string) {
	t.Helper()
	left, _ := filepath.Glob(filepath.Join("/var/run/netns", "dt-"+id+"-*"))
	if len(left) > 0 {
		t.Errorf("namespaces left behind: %v", left)
	}
	for _, name := range hostLinks(t) {
		if !slices.Contains(before, name) {
			t.Errorf("new link %q in the host namespace", name)
		}
	}
}

// origin asks httpbin's /ip from inside n who it thinks the client is.
func origin(t *testing.T, n *ns.NS, ip netip.Addr) string {
	t.Helper()
	resp, err := HTTPClient(n).Get("http://" + hostPort(ip) + "/ip")
	if err != nil {
		t.Fatalf("GET /ip from %s to %s: %v", n.Name, ip, err)
	}
	defer resp.Body.Close()
	var body struct{ Origin string }
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("decode /ip: %v", err)
	}
	return body.Origin
}

// routerWithWeb builds the router network with httpbin on the server's
// port 80; the test's cleanup removes both.
func routerWithWeb(t *testing.T, id string) (*TProxyNet, *HTTPBin) {
	t.Helper()
	tn, err := NewTProxyNet(id)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tn.Close() })
	web, err := StartHTTPBin(tn.Server, 80)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { web.Close() })
	return tn, web
}

func TestTProxyNetRoutesWithoutDetour(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	id := testID("tp")
	before := hostLinks(t)
	hostForward, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward")

	tn, web := routerWithWeb(t, id)

	for _, c := range []struct{ server, client netip.Addr }{
		{tn.ServerIP4, tn.ClientIP4},
		{tn.ServerIP6, tn.ClientIP6},
	} {
		if got := origin(t, tn.Client, c.server); got != c.client.String() {
			t.Errorf("GET %s/ip: origin %q, want the client's %s (routed, no NAT)", c.server, got, c.client)
		}
	}
	reqs := web.Requests()
	if len(reqs) != 2 || reqs[0].Peer.Addr() != tn.ClientIP4 || reqs[1].Peer.Addr() != tn.ClientIP6 {
		t.Errorf("server saw %+v, want one request from %s and one from %s", reqs, tn.ClientIP4, tn.ClientIP6)
	}
	if web.Conns() != 2 {
		t.Errorf("server accepted %d connections, want 2", web.Conns())
	}

	// The client reaches the server only through the router: its only
	// routes are the link and the default via the router.
	for key, want := range map[string]string{
		"net.ipv4.ip_forward":             "1",
		"net.ipv6.conf.all.forwarding":    "1",
		"net.ipv4.conf.all.rp_filter":     "0",
		"net.ipv4.conf.to-cli.rp_filter":  "0",
		"net.ipv6.conf.to-cli.accept_dad": "0",
	} {
		if got, err := tn.Router.ReadSysctl(key); err != nil || got != want {
			t.Errorf("router %s = %q, %v; want %s", key, got, err, want)
		}
	}
	if after, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); !bytes.Equal(after, hostForward) {
		t.Errorf("host ip_forward changed from %q to %q", hostForward, after)
	}

	if err := web.Close(); err != nil {
		t.Error(err)
	}
	if err := tn.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tn.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	checkNoLeftovers(t, id, before)
}

func TestRedirectNetRoutes(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	id := testID("rd")
	before := hostLinks(t)

	rn, err := NewRedirectNet(id)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rn.Close() })
	web, err := StartHTTPBin(rn.Server, 80)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { web.Close() })

	for _, c := range []struct{ server, host netip.Addr }{
		{rn.ServerIP4, rn.HostIP4},
		{rn.ServerIP6, rn.HostIP6},
	} {
		if got := origin(t, rn.Host, c.server); got != c.host.String() {
			t.Errorf("GET %s/ip: origin %q, want the host's %s", c.server, got, c.host)
		}
	}
	if err := web.Close(); err != nil {
		t.Error(err)
	}
	if err := rn.Close(); err != nil {
		t.Fatal(err)
	}
	checkNoLeftovers(t, id, before)
}

func TestNewTProxyNetCleansUpHalfBuilt(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	before := hostLinks(t)

	for i, step := range []string{"namespaces", "sysctls", "links", "addresses", "up", "routes"} {
		id := testID(fmt.Sprintf("hb%d-", i))
		boom := errors.New("injected failure")
		tn, err := newTProxyNet(id, func(s string) error {
			if s == step {
				return boom
			}
			return nil
		})
		if !errors.Is(err, boom) {
			if tn != nil {
				tn.Close()
			}
			t.Fatalf("failing after %q: err = %v, want the injected failure", step, err)
		}
		checkNoLeftovers(t, id, before)
	}

	// A duplicate id: the second build fails on the first name it finds
	// taken, removes what it made, and leaves the first network working.
	id := testID("dup")
	first, err := NewTProxyNet(id)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { first.Close() })
	if second, err := NewTProxyNet(id); err == nil {
		second.Close()
		t.Fatal("second NewTProxyNet with the same id succeeded")
	}
	for _, name := range NamespaceNames("tproxy", id) {
		if !ns.Exists(name) {
			t.Errorf("the failed duplicate removed %s, which it did not create", name)
		}
	}
	web, err := StartHTTPBin(first.Server, 80)
	if err != nil {
		t.Fatal(err)
	}
	if got := origin(t, first.Client, first.ServerIP4); got != first.ClientIP4.String() {
		t.Errorf("first network broken after the failed duplicate: origin %q", got)
	}
	web.Close()
	first.Close()

	// Only a later name taken: the earlier ones it made are removed.
	id = testID("dup2-")
	taken, err := ns.New(nsName(id, "srv"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { taken.Close() })
	if tn, err := NewTProxyNet(id); err == nil {
		tn.Close()
		t.Fatal("NewTProxyNet succeeded although its server namespace name was taken")
	}
	for _, suffix := range []string{"cli", "rtr"} {
		if ns.Exists(nsName(id, suffix)) {
			t.Errorf("%s left behind", nsName(id, suffix))
		}
	}
	if !ns.Exists(taken.Name) {
		t.Errorf("%s, not made by NewTProxyNet, was removed", taken.Name)
	}
	taken.Close()
	checkNoLeftovers(t, id, before)

	if _, err := NewTProxyNet("bad/id"); err == nil {
		t.Error(`NewTProxyNet("bad/id") succeeded`)
	}
}

// fakeDetour writes a shell script that behaves like `detour run` as far
// as the lab can tell: it logs msg=ready, exits 0 on SIGTERM, and answers
// `rules show`.
func fakeDetour(t *testing.T, body string) string {
	t.Helper()
	if body == "" {
		body = `if [ "$1" = rules ]; then echo "table inet detour { } # fake"; exit 0; fi
echo "fake detour netns=$(readlink /proc/self/ns/net) args=$*"
trap 'echo "level=INFO msg=stopping" >&2; exit 0' TERM
echo 'time=2025-01-01T00:00:00Z level=INFO msg=ready' >&2
while :; do sleep 0.05; done`
	}
	path := filepath.Join(t.TempDir(), "detour")
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestStartDetour(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	n, err := ns.New("dt-" + testID("sd") + "-x")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	var st syscall.Stat_t
	if err := syscall.Stat(n.Path(), &st); err != nil {
		t.Fatal(err)
	}
	bin := fakeDetour(t, "")

	t.Run("ready then Stop", func(t *testing.T) {
		var log logbuf.Buffer
		d, err := StartDetour(t.Context(), n, bin, []string{"--mode", "tproxy"}, &log)
		if err != nil {
			t.Fatal(err)
		}
		if d.Pid() <= 0 {
			t.Errorf("Pid = %d", d.Pid())
		}
		if err := d.Stop(); err != nil {
			t.Fatalf("Stop: %v", err)
		}
		out := log.String()
		for _, want := range []string{
			fmt.Sprintf("netns=net:[%d]", st.Ino), // it ran inside n
			"args=run --mode tproxy",
			"msg=ready",
			"msg=stopping", // it got SIGTERM
		} {
			if !strings.Contains(out, want) {
				t.Errorf("log lacks %q:\n%s", want, out)
			}
		}
		if d.Output() != strings.TrimRight(out, "\n") {
			t.Errorf("Output() = %q, log = %q", d.Output(), out)
		}
		if err := d.Stop(); err != nil {
			t.Errorf("second Stop: %v", err)
		}
	})

	t.Run("exits before ready", func(t *testing.T) {
		bad := fakeDetour(t, `echo "error: cannot install rules: nftables missing" >&2; exit 1`)
		_, err := StartDetour(t.Context(), n, bad, nil, nil)
		if err == nil || !strings.Contains(err.Error(), "cannot install rules") {
			t.Fatalf("err = %v, want one carrying detour's output", err)
		}
	})

	t.Run("Kill", func(t *testing.T) {
		d, err := StartDetour(t.Context(), n, bin, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		d.Kill()
		select {
		case <-d.Done():
		default:
			t.Fatal("Done not closed after Kill")
		}
		if strings.Contains(d.Output(), "msg=stopping") {
			t.Error("SIGKILL ran the TERM trap")
		}
	})

	t.Run("ctx cancel sends SIGTERM", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		d, err := StartDetour(ctx, n, bin, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		cancel()
		select {
		case <-d.Done():
		case <-time.After(5 * time.Second):
			d.Kill()
			t.Fatal("detour still running 5s after ctx was cancelled")
		}
		if !strings.Contains(d.Output(), "msg=stopping") {
			t.Errorf("no graceful stop on cancel:\n%s", d.Output())
		}
	})
}

func TestRunWithFakeDetour(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	bin := fakeDetour(t, "")
	clients := []bool{true} // Go's client
	if _, err := exec.LookPath("curl"); err == nil {
		clients = append(clients, false)
	}
	for _, goClient := range clients {
		id := testID(fmt.Sprintf("rf%v", goClient)[:3])
		before := hostLinks(t)
		var out logbuf.Buffer
		err := Run(t.Context(), Options{Binary: bin, Out: &out, ID: id, GoClient: goClient})
		t.Logf("goClient=%v output:\n%s", goClient, out.String())
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{
			"1. creating namespaces dt-" + id + "-cli (client)",
			"in the server namespace",
			"detour| time=2025-01-01T00:00:00Z level=INFO msg=ready",
			"table inet detour { } # fake", // rules show
			"GET http://198.18.2.2/headers",
			"GET http://[2001:db8:2::2]/headers",
			"the client's own address", // the fake does not intercept
			"GET http://198.18.3.2/headers",
			"cleaning up the tproxy lab",
			"cleaning up the redirect lab",
			"removing namespaces dt-" + id + "-host, dt-" + id + "-web",
			"no X-Forwarded-For arrived", // the fake proxies nothing
		} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("output lacks %q", want)
			}
		}
		// In the redirect lab a bypass and detour's upstream connection
		// come from the same address: nothing may say detour carried it.
		for _, unwanted := range []string{"detour proxied", "detour's upstream connection leaves"} {
			if strings.Contains(out.String(), unwanted) {
				t.Errorf("output says %q, but the fake detour intercepted nothing", unwanted)
			}
		}
		checkNoLeftovers(t, id, before)
	}
}

func TestRunKeepUntilCancelled(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	id := testID("kp")
	before := hostLinks(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var out logbuf.Buffer
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Options{Mode: "tproxy", Binary: fakeDetour(t, ""), Out: &out, ID: id, Keep: true, GoClient: true, NoIPv6: true})
	}()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(out.String(), "Press Ctrl-C") {
		select {
		case err := <-done:
			t.Fatalf("Run returned before waiting: %v\n%s", err, out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no Keep prompt after 30s:\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, name := range NamespaceNames("tproxy", id) {
		if !ns.Exists(name) {
			t.Errorf("%s gone while kept", name)
		}
	}
	client, err := ns.Open(nsName(id, "cli"))
	if err != nil {
		t.Fatal(err)
	}
	if got := origin(t, client, netip.MustParseAddr("198.18.2.2")); got != "198.18.1.2" {
		t.Errorf("kept lab: origin %q", got)
	}
	h := client.Handle()
	h.Close() // not client.Close(): that would remove the namespace
	if !strings.Contains(out.String(), "ip netns del dt-"+id+"-cli") {
		t.Errorf("no removal hint:\n%s", out.String())
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run after Ctrl-C: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return 30s after cancel")
	}
	checkNoLeftovers(t, id, before)
}

func TestRunCancelledMidway(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	id := testID("cx")
	before := hostLinks(t)
	// `rules show` hangs, so the walkthrough is mid-way when we cancel.
	bin := fakeDetour(t, `if [ "$1" = rules ]; then exec sleep 30; fi
trap 'exit 0' TERM
echo 'level=INFO msg=ready' >&2
while :; do sleep 0.05; done`)
	cancel, out, done := startRun(t, Options{Binary: bin, ID: id, GoClient: true})
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(out.String(), "the rules detour installed") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	cancelAndWait(t, cancel, done)
	t.Logf("output:\n%s", out.String())
	if !strings.Contains(out.String(), "cleaning up the tproxy lab") {
		t.Error("no cleanup step after cancel")
	}
	if strings.Contains(out.String(), "redirect lab") {
		t.Error("went on to the redirect lab after cancel")
	}
	checkNoLeftovers(t, id, before)
}

// TestRunCancelledInLastStep: a Ctrl-C during a walkthrough's last step
// (`detour status`, which the walkthrough otherwise goes on without) still
// ends the lab as interrupted: an error (exit 1, not 0), and no next lab.
func TestRunCancelledInLastStep(t *testing.T) {
	requireRoot(t)
	for _, mode := range []string{"", "redirect"} {
		t.Run("mode="+mode, func(t *testing.T) {
			t.Parallel()
			id := testID("cs" + mode[:min(len(mode), 1)])
			before := hostLinks(t)
			bin := fakeDetour(t, `if [ "$1" = rules ]; then echo "table inet detour { } # fake"; exit 0; fi
if [ "$1" = status ]; then exec sleep 30; fi
trap 'exit 0' TERM
echo 'level=INFO msg=ready' >&2
while :; do sleep 0.05; done`)
			cancel, out, done := startRun(t, Options{Mode: mode, Binary: bin, ID: id, GoClient: true})
			deadline := time.Now().Add(60 * time.Second)
			for !strings.Contains(out.String(), "what detour's admin endpoint") && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			if !strings.Contains(out.String(), "what detour's admin endpoint") {
				cancel()
				<-done
				t.Fatalf("the walkthrough never reached its admin step:\n%s", out.String())
			}
			cancelAndWait(t, cancel, done)
			t.Logf("output:\n%s", out.String())
			if mode == "" && strings.Contains(out.String(), "redirect lab") {
				t.Error("went on to the redirect lab after cancel")
			}
			checkNoLeftovers(t, id, before)
		})
	}
}

// TestRunWithDetourBinary runs the walkthrough with the real detour, built
// from cmd/detour (or $DETOUR_BINARY).
func TestRunWithDetourBinary(t *testing.T) {
	requireRoot(t)
	bin := os.Getenv("DETOUR_BINARY")
	if bin == "" {
		bin = filepath.Join(t.TempDir(), "detour")
		build := exec.Command("go", "build", "-o", bin, "./cmd/detour")
		build.Dir = "../.."
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("cmd/detour does not build: %v\n%s", err, out)
		}
	}
	id := testID("e2e")
	before := hostLinks(t)
	var out logbuf.Buffer
	err := Run(t.Context(), Options{Binary: bin, Out: &out, ID: id, GoClient: true, ExtraArgs: []string{"--cleanup-interval", "7s"}})
	t.Logf("output:\n%s", out.String())
	if err != nil {
		t.Fatal(err)
	}
	// Each lab's admin step shows its three requests counted, and names
	// the cleanup interval detour runs with (it used to say 5s whatever).
	if n := strings.Count(out.String(), "; 3 HTTP requests"); n != 2 {
		t.Errorf("`detour status` showed 3 HTTP requests counted in %d labs, want 2", n)
	}
	if n := strings.Count(out.String(), "A host unused for 7s is removed"); n != 2 {
		t.Errorf("the admin step named --cleanup-interval 7s in %d labs, want 2", n)
	}
	// Without --spoof-source the server must see the router: proof that
	// the connection went through detour and not straight through.
	if !strings.Contains(out.String(), "from 198.18.2.1:") {
		t.Error("in the tproxy lab the server never saw the router's address: detour did not intercept")
	}
	// In the redirect lab the server sees the host's address either way;
	// only detour's X-Forwarded-For shows that it carried the requests.
	for _, want := range []string{"X-Forwarded-For: 198.18.3.1 arrived", "X-Forwarded-For: 2001:db8:3::1 arrived"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q: the redirect lab's requests did not go through detour's L7", want)
		}
	}
	checkNoLeftovers(t, id, before)
}

func TestLineLog(t *testing.T) {
	var sink bytes.Buffer
	l := newLineLog(&sink, "msg=ready")
	io.WriteString(l, "a\nlevel=INFO msg=rea")
	select {
	case <-l.ready:
		t.Fatal("ready on a partial line")
	default:
	}
	io.WriteString(l, "dy\ntail")
	select {
	case <-l.ready:
	default:
		t.Fatal("not ready after the ready line")
	}
	l.flush()
	if got, want := sink.String(), "a\nlevel=INFO msg=ready\ntail\n"; got != want {
		t.Errorf("copied %q, want %q", got, want)
	}
	if got := shellJoin([]string{"run", "--listen", "[::]:15001"}); got != "run --listen '[::]:15001'" {
		t.Errorf("shellJoin = %q", got)
	}
}

// TestShownBinary: the printed commands name a `go run` build "detour",
// not the temporary path that is gone once the lab ends.
func TestShownBinary(t *testing.T) {
	for _, tc := range []struct{ bin, want string }{
		{"/tmp/go-build1234/b001/exe/detour", "detour"},
		{"/usr/local/bin/detour", "/usr/local/bin/detour"},
		{"./detour", "./detour"},
	} {
		if got := (&walk{o: Options{Binary: tc.bin}}).shownBinary(); got != tc.want {
			t.Errorf("shownBinary(%q) = %q, want %q", tc.bin, got, tc.want)
		}
	}
}

// startRun runs the lab with o in the background, its output in out;
// done gets Run's result.
func startRun(t *testing.T, o Options) (cancel context.CancelFunc, out *logbuf.Buffer, done <-chan error) {
	ctx, cancel := context.WithCancel(t.Context())
	t.Cleanup(cancel)
	out = &logbuf.Buffer{}
	o.Out = out
	ch := make(chan error, 1)
	go func() { ch <- Run(ctx, o) }()
	return cancel, out, ch
}

// cancelAndWait cancels a Run and waits for it to return
// context.Canceled.
func cancelAndWait(t *testing.T, cancel context.CancelFunc, done <-chan error) {
	t.Helper()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Run = %v, want context.Canceled", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return 30s after cancel")
	}
}
