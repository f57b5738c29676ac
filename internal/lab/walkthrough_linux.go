package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/detour-proxy/detour/internal/ns"
)

// Options configure Run, the `detour lab` walkthrough.
type Options struct {
	// Mode is "tproxy", "redirect", or "" for both, tproxy first.
	Mode string
	// Binary is the detour executable run inside the namespaces;
	// "" means this process's own executable.
	Binary string
	// Out receives the narration; nil means os.Stdout.
	Out io.Writer
	// ID names the namespaces dt-ID-ROLE; "" means this process's id.
	ID string
	// Keep leaves the networks, httpbin and detour running after the
	// requests, prints how to explore them, and removes everything only
	// when ctx is done (Ctrl-C). httpbin runs inside this process, so the
	// lab lives exactly as long as Run.
	Keep bool
	// NoIPv6 skips the IPv6 request.
	NoIPv6 bool
	// SpoofSource runs the tproxy lab's detour with --spoof-source, so
	// the server sees the client's address instead of the router's.
	SpoofSource bool
	// GoClient makes the requests with Go's net/http even when curl is
	// installed.
	GoClient bool
	// ExtraArgs are appended to `detour run`'s arguments, e.g.
	// []string{"--log-level", "debug"}.
	ExtraArgs []string
}

// Ports the walkthrough uses.
const (
	labHTTPPort     = 80
	labTProxyPort   = 15001
	labRedirectPort = 4999
)

// Run builds the lab networks, starts httpbin and detour in them, sends
// requests through detour, explains each step on o.Out, and removes
// everything: at the end, on any error, and when ctx is done (Ctrl-C).
func Run(ctx context.Context, o Options) error {
	if o.Out == nil {
		o.Out = os.Stdout
	}
	o.Out = &lockedWriter{w: o.Out} // detour's log lines arrive from another goroutine
	if o.ID == "" {
		o.ID = strconv.Itoa(os.Getpid())
	}
	if err := CheckID(o.ID); err != nil {
		return err
	}
	var modes []string
	switch o.Mode {
	case "":
		modes = []string{"tproxy", "redirect"}
	case "tproxy", "redirect":
		modes = []string{o.Mode}
	default:
		return fmt.Errorf("lab mode %q: use tproxy or redirect (or nothing for both)", o.Mode)
	}
	if os.Geteuid() != 0 {
		return errors.New("the lab creates network namespaces, which needs root: run it with sudo")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return errors.New("the lab needs the ip command from iproute2 (apt install iproute2)")
	}
	if o.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find the detour executable: %w (set the binary explicitly)", err)
		}
		o.Binary = exe
	}
	if _, err := os.Stat(o.Binary); err != nil {
		return fmt.Errorf("detour binary: %w", err)
	}

	var kept []*walk
	defer func() {
		for i := len(kept) - 1; i >= 0; i-- {
			kept[i].cleanup()
		}
	}()
	for _, m := range modes {
		w := &walk{o: o, w: o.Out}
		var err error
		if m == "tproxy" {
			err = w.tproxy(ctx)
		} else {
			err = w.redirect(ctx)
		}
		if err == nil && ctx.Err() != nil {
			// Interrupted in a step that goes on without what it could not
			// show (the admin endpoint's view): still an interruption.
			err = ctx.Err()
		}
		if err != nil {
			if ctx.Err() != nil {
				fmt.Fprintf(o.Out, "\ninterrupted (%v)\n", context.Cause(ctx))
				err = ctx.Err()
			} else {
				fmt.Fprintf(o.Out, "\nerror: %v\n", err)
			}
			w.cleanup()
			return err
		}
		if o.Keep {
			kept = append(kept, w)
			w.explore()
		} else {
			w.cleanup()
		}
		fmt.Fprintln(o.Out)
	}
	if o.Keep {
		fmt.Fprintf(o.Out, "Everything stays up while this command runs. Press Ctrl-C to stop detour and remove the namespaces.\n")
		<-ctx.Done()
		fmt.Fprintf(o.Out, "\n")
	}
	return nil
}

// walk is one mode's walkthrough: its narration and what to undo.
type walk struct {
	o    Options
	w    io.Writer
	step int
	undo []func() // run last first by cleanup

	mode     string
	names    []string // namespaces, for the explore hints
	detour   *Detour
	detourNS *ns.NS   // where detour runs, for its admin endpoint
	adminTip []string // admin commands to suggest with Keep
	explorer []string // commands to suggest with Keep
}

func (w *walk) stepf(format string, args ...any) {
	w.step++
	fmt.Fprintf(w.w, "%d. %s\n", w.step, fmt.Sprintf(format, args...))
}

func (w *walk) sayf(format string, args ...any) {
	fmt.Fprintln(w.w, indent(fmt.Sprintf(format, args...), "   "))
}

// block prints text indented under the current step.
func (w *walk) block(text string) {
	text = strings.TrimRight(text, "\n")
	if text == "" {
		return
	}
	fmt.Fprintln(w.w, indent(text, "     "))
}

func (w *walk) tproxy(ctx context.Context) error {
	o := w.o
	w.mode = "tproxy"
	w.names = NamespaceNames("tproxy", o.ID)
	fmt.Fprintf(w.w, "== detour lab tproxy: a router intercepts its clients' HTTP with TPROXY, no NAT ==\n")
	fmt.Fprintf(w.w, "A client reaches a web server through a Linux router. detour runs on the router; the\n"+
		"kernel hands it the client's connections to port %d with their original destination intact.\n\n", labHTTPPort)

	w.stepf("creating namespaces %s (client), %s (router), %s (server)", w.names[0], w.names[1], w.names[2])
	w.stepf("linking client ⇄ router ⇄ server (198.18.1.0/24 + 2001:db8:1::/64, 198.18.2.0/24 + 2001:db8:2::/64)")
	w.block(tproxyTopology().describe(o.ID))
	w.sayf("both ends route through the router and nothing is NATed, so the server's replies cross the router too.")
	tn, err := NewTProxyNet(o.ID)
	if err != nil {
		return err
	}
	w.onCleanup(func() {
		w.sayf("removing namespaces %s", strings.Join(w.names, ", "))
		if err := tn.Close(); err != nil {
			w.sayf("warning: %v", err)
		}
	})

	web, err := w.startHTTPBin(tn.Server, tn.ServerIP4, tn.ServerIP6)
	if err != nil {
		return err
	}

	listen4 := netip.AddrPortFrom(netip.IPv4Unspecified(), labTProxyPort).String()
	listen6 := netip.AddrPortFrom(netip.IPv6Unspecified(), labTProxyPort).String()
	intercept := []string{"--intercept-port", strconv.Itoa(labHTTPPort), "--intercept-iface", tn.RouterIfaceIn}
	args := append([]string{"--mode", "tproxy", "--listen", listen4, "--listen", listen6}, intercept...)
	if o.SpoofSource {
		args = append(args, "--spoof-source")
	}
	args = append(args, o.ExtraArgs...)
	w.stepf("starting detour on the router (TCP to port %d arriving on %s goes to its listener on port %d):",
		labHTTPPort, tn.RouterIfaceIn, labTProxyPort)
	if err := w.startDetour(ctx, tn.Router, args); err != nil {
		return err
	}
	if err := w.showRules(ctx, tn.Router, append([]string{"--mode", "tproxy"}, intercept...)); err != nil {
		return err
	}

	direct := "the client's own address: this connection went straight through the router, not through detour"
	upstream := "the router's address: detour's upstream connection (with --spoof-source it would be the client's)"
	if o.SpoofSource {
		direct = "the client's own address: with --spoof-source detour connects upstream from it (full transparency)"
		upstream = "the router's address: detour did not spoof the source"
	}
	seen := map[netip.Addr]string{
		tn.ClientIP4: direct, tn.ClientIP6: direct,
		tn.RouterIP4: upstream, tn.RouterIP6: upstream,
	}
	if err := w.requests(ctx, tn.Client, "client", web, tn.ServerIP4, tn.ServerIP6, seen); err != nil {
		return err
	}
	w.explorer = []string{
		fmt.Sprintf("ip netns exec %s curl -v http://%s/get", w.names[0], tn.ServerIP4),
		fmt.Sprintf("ip netns exec %s curl -v -g 'http://[%s]/get'", w.names[0], tn.ServerIP6),
		fmt.Sprintf("ip netns exec %s nft list ruleset", w.names[1]),
		fmt.Sprintf("ip netns exec %s ip rule show; ip netns exec %s ip -6 rule show", w.names[1], w.names[1]),
		fmt.Sprintf("ip netns exec %s ss -tnp        # detour's connections", w.names[1]),
		fmt.Sprintf("ip netns exec %s ss -tn         # what the server sees", w.names[2]),
	}
	return nil
}

func (w *walk) redirect(ctx context.Context) error {
	o := w.o
	w.mode = "redirect"
	w.names = NamespaceNames("redirect", o.ID)
	fmt.Fprintf(w.w, "== detour lab redirect: detour and the applications share one host, NAT REDIRECT ==\n")
	fmt.Fprintf(w.w, "Applications on a host talk to a web server; the host's nat OUTPUT rules send their\n"+
		"connections to port %d to detour, which asks the kernel for the original destination.\n\n", labHTTPPort)

	w.stepf("creating namespaces %s (host: applications and detour), %s (server)", w.names[0], w.names[1])
	w.stepf("linking host ⇄ server (198.18.3.0/24, 2001:db8:3::/64)")
	w.block(redirectTopology().describe(o.ID))
	rn, err := NewRedirectNet(o.ID)
	if err != nil {
		return err
	}
	w.onCleanup(func() {
		w.sayf("removing namespaces %s", strings.Join(w.names, ", "))
		if err := rn.Close(); err != nil {
			w.sayf("warning: %v", err)
		}
	})

	web, err := w.startHTTPBin(rn.Server, rn.ServerIP4, rn.ServerIP6)
	if err != nil {
		return err
	}

	l4 := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), labRedirectPort).String()
	l6 := netip.AddrPortFrom(netip.IPv6Loopback(), labRedirectPort).String()
	intercept := []string{"--intercept-port", strconv.Itoa(labHTTPPort)}
	args := append([]string{"--mode", "redirect", "--listen", l4, "--listen", l6}, intercept...)
	args = append(args, o.ExtraArgs...)
	w.stepf("starting detour on the host (TCP to port %d from local applications goes to %s and %s):", labHTTPPort, l4, l6)
	w.sayf("detour sets a socket mark (SO_MARK) on its own upstream connections and its rules let marked")
	w.sayf("packets pass, so its connections to the server are not redirected back to itself. Exempting")
	w.sayf("detour's uid instead would not work here: the lab's clients run as root, like detour.")
	if err := w.startDetour(ctx, rn.Host, args); err != nil {
		return err
	}
	if err := w.showRules(ctx, rn.Host, append([]string{"--mode", "redirect"}, intercept...)); err != nil {
		return err
	}

	// The application's own connection and detour's upstream one leave
	// from the same address: only X-Forwarded-For (see explain) tells
	// whether detour carried the request.
	host := "the host's address, which the application's own connections and detour's upstream ones share"
	seen := map[netip.Addr]string{rn.HostIP4: host, rn.HostIP6: host}
	if err := w.requests(ctx, rn.Host, "host", web, rn.ServerIP4, rn.ServerIP6, seen); err != nil {
		return err
	}
	w.explorer = []string{
		fmt.Sprintf("ip netns exec %s curl -v http://%s/get", w.names[0], rn.ServerIP4),
		fmt.Sprintf("ip netns exec %s curl -v -g 'http://[%s]/get'", w.names[0], rn.ServerIP6),
		fmt.Sprintf("ip netns exec %s nft list ruleset", w.names[0]),
		fmt.Sprintf("ip netns exec %s ss -tnp        # applications' and detour's connections", w.names[0]),
	}
	return nil
}

func (w *walk) startHTTPBin(n *ns.NS, ip4, ip6 netip.Addr) (*HTTPBin, error) {
	w.stepf("starting httpbin on %s and %s in the server namespace",
		netip.AddrPortFrom(ip4, labHTTPPort), netip.AddrPortFrom(ip6, labHTTPPort))
	web, err := StartHTTPBin(n, labHTTPPort)
	if err != nil {
		return nil, err
	}
	w.onCleanup(func() {
		w.sayf("stopping httpbin")
		web.Close()
	})
	return web, nil
}

func (w *walk) startDetour(ctx context.Context, n *ns.NS, args []string) error {
	w.block("ip netns exec " + n.Name + " " + shellJoin(append([]string{w.shownBinary(), "run"}, args...)))
	d, err := StartDetour(ctx, n, w.o.Binary, args, &prefixWriter{w: w.w, prefix: "     detour| "})
	if err != nil {
		return err
	}
	w.detour, w.detourNS = d, n
	w.sayf("detour (pid %d) is ready", d.Pid())
	w.onCleanup(func() {
		w.sayf("stopping detour (SIGTERM): it removes its rules on the way out")
		if err := d.Stop(); err != nil {
			w.sayf("warning: %v", err)
		}
		if _, err := exec.LookPath("nft"); err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			out, err := n.Command(ctx, "nft", "list", "ruleset").CombinedOutput()
			switch {
			case err != nil:
				w.sayf("nft list ruleset: %v", err)
			case len(bytes.TrimSpace(out)) == 0:
				w.sayf("nftables rules left in %s: none", n.Name)
			default:
				w.sayf("nftables rules left in %s:", n.Name)
				w.block(string(out))
			}
		}
	})
	return nil
}

// shownBinary is how the printed commands name detour: its path, or
// "detour" when `go run` built it in a temporary directory that is gone
// once the lab ends.
func (w *walk) shownBinary() string {
	if strings.Contains(w.o.Binary, string(filepath.Separator)+"go-build") {
		return "detour"
	}
	return w.o.Binary
}

// showRules prints what detour installed: `detour rules show` with the
// same interception flags, or, if that fails, what nft and ip rule list.
// It fails only when ctx is done.
func (w *walk) showRules(parent context.Context, n *ns.NS, args []string) error {
	ctx, cancel := context.WithTimeout(parent, 10*time.Second)
	defer cancel()
	show := append([]string{"rules", "show"}, args...)
	w.stepf("the rules detour installed in %s (detour %s):", n.Name, shellJoin(show))
	out, err := n.Command(ctx, w.o.Binary, show...).CombinedOutput()
	if parent.Err() != nil {
		return parent.Err()
	}
	if err == nil {
		w.block(string(out))
		return nil
	}
	w.block(string(out))
	w.sayf("`detour rules show` failed (%v); what the kernel lists instead:", err)
	if _, err := exec.LookPath("nft"); err == nil {
		out, _ := n.Command(ctx, "nft", "list", "ruleset").CombinedOutput()
		w.block("# nft list ruleset\n" + string(out))
	}
	for _, fam := range []string{"-4", "-6"} {
		out, _ := n.Command(ctx, "ip", fam, "rule", "show").CombinedOutput()
		w.block("# ip " + fam + " rule show\n" + string(out))
	}
	return parent.Err()
}

// requests sends the walkthrough's requests from client and reports
// what the server saw. seen explains the peer addresses it expects.
func (w *walk) requests(ctx context.Context, client *ns.NS, who string, web *HTTPBin, ip4, ip6 netip.Addr, seen map[netip.Addr]string) error {
	url4 := "http://" + hostPort(ip4) + "/headers"
	url6 := "http://" + hostPort(ip6) + "/headers"

	w.stepf("%s: GET %s", who, url4)
	first, err := w.get(ctx, client, url4, web)
	if err != nil {
		return err
	}
	w.explain(first, seen)

	if !w.o.NoIPv6 {
		w.stepf("%s: the same over IPv6: GET %s", who, url6)
		r, err := w.get(ctx, client, url6, web)
		if err != nil {
			return err
		}
		w.explain(r, seen)
	}

	url := "http://" + hostPort(ip4) + "/get"
	w.stepf("%s: GET %s, a new client connection to the same server, to show pooling", who, url)
	again, err := w.get(ctx, client, url, web)
	if err != nil {
		return err
	}
	w.explain(again, seen)
	if again.Conn == first.Conn {
		w.sayf("the same server connection (#%d) as request 1: detour kept it in its pool and reused it.", again.Conn)
	} else {
		w.sayf("a new server connection (#%d; request 1 came on #%d): no upstream connection was reused.", again.Conn, first.Conn)
	}
	sent := uint64(2) // request 1 and the pooling one
	if !w.o.NoIPv6 {
		sent++
	}
	w.showAdmin(ctx, sent)
	return nil
}

func (w *walk) explain(r Request, seen map[netip.Addr]string) {
	what, ok := seen[r.Peer.Addr()]
	if !ok {
		what = "an address this lab did not expect"
	}
	w.sayf("server: %s %s from %s on connection #%d: %s.", r.Method, r.URI, r.Peer, r.Conn, what)
	if r.XFF != "" {
		w.sayf("X-Forwarded-For: %s arrived: detour proxied the request at L7 (HTTP) and named the client.", r.XFF)
	} else {
		w.sayf("no X-Forwarded-For arrived: the request was not proxied at L7 (detour adds one at L7; at L4, or when the connection bypasses detour, there is none).")
	}
}

// get fetches url from inside n with curl -v (or Go's client), prints the
// exchange, and returns the request the server recorded for it.
func (w *walk) get(ctx context.Context, n *ns.NS, url string, web *HTTPBin) (Request, error) {
	before := len(web.Requests())
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if _, err := exec.LookPath("curl"); err == nil && !w.o.GoClient {
		out, err := n.Command(ctx, "curl", "-sS", "-v", "-g", "--noproxy", "*", "--max-time", "10", url).CombinedOutput()
		w.block(string(out))
		if err != nil {
			return Request{}, fmt.Errorf("curl %s in %s: %w", url, n.Name, err)
		}
	} else if err := w.goGet(ctx, n, url); err != nil {
		return Request{}, err
	}
	reqs := web.Requests()
	if len(reqs) <= before {
		return Request{}, fmt.Errorf("GET %s: the server received no request", url)
	}
	return reqs[len(reqs)-1], nil
}

// goGet prints a GET made with net/http the way curl -v would.
func (w *walk) goGet(ctx context.Context, n *ns.NS, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", "detour-lab")
	if dump, err := httputil.DumpRequestOut(req, false); err == nil {
		w.block(prefixLines(string(dump), "> "))
	}
	resp, err := HTTPClient(n).Do(req)
	if err != nil {
		return fmt.Errorf("GET %s in %s: %w", url, n.Name, err)
	}
	defer resp.Body.Close()
	if dump, err := httputil.DumpResponse(resp, false); err == nil {
		w.block(prefixLines(string(dump), "< "))
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	w.block(string(body))
	if err != nil {
		return fmt.Errorf("GET %s in %s: reading the body: %w", url, n.Name, err)
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("GET %s in %s: %s", url, n.Name, resp.Status)
	}
	return nil
}

func (w *walk) onCleanup(f func()) { w.undo = append(w.undo, f) }

// cleanup undoes everything, last first. It runs once.
func (w *walk) cleanup() {
	if len(w.undo) == 0 {
		return
	}
	w.stepf("cleaning up the %s lab", w.mode)
	for i := len(w.undo) - 1; i >= 0; i-- {
		w.undo[i]()
	}
	w.undo = nil
}

// explore tells how to look around a lab kept up with Options.Keep.
func (w *walk) explore() {
	fmt.Fprintf(w.w, "\nThe %s lab stays up. From another terminal, as root:\n", w.mode)
	for _, c := range append(w.explorer, w.adminTip...) {
		fmt.Fprintf(w.w, "  %s\n", c)
	}
	fmt.Fprintf(w.w, "If this command is killed before it cleans up, remove everything with:\n  ")
	if w.detour != nil {
		fmt.Fprintf(w.w, "kill %d; ", w.detour.Pid())
	}
	for i, n := range w.names {
		if i > 0 {
			fmt.Fprintf(w.w, "; ")
		}
		fmt.Fprintf(w.w, "ip netns del %s", n)
	}
	fmt.Fprintln(w.w)
}

func hostPort(a netip.Addr) string {
	if a.Is6() {
		return "[" + a.String() + "]"
	}
	return a.String()
}

func prefixLines(s, prefix string) string {
	s = strings.TrimRight(strings.ReplaceAll(s, "\r\n", "\n"), "\n")
	return prefix + strings.ReplaceAll(s, "\n", "\n"+prefix)
}

// shellJoin quotes args that a shell would otherwise split or expand.
func shellJoin(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\n'\"\\$`*?[]{}()<>|&;#~") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		q[i] = a
	}
	return strings.Join(q, " ")
}

// lockedWriter serialises writes from the narration and from detour's log.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// prefixWriter prefixes each Write, which lineLog makes one line long.
type prefixWriter struct {
	w      io.Writer
	prefix string
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	if _, err := p.w.Write(append([]byte(p.prefix), b...)); err != nil {
		return 0, err
	}
	return len(b), nil
}
