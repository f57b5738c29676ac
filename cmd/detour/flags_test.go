package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/detour-proxy/detour/internal/config"
)

// TestIntFlagsOverrideFile checks that --tcp-loops and --nice override the
// file's tcp.loops and nice when given, 0 included, and that a bad number
// is a config error.
func TestIntFlagsOverrideFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "detour.yaml")
	if err := os.WriteFile(file, []byte("tcp: {loops: 2}\nnice: 3\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	loops := func(c *config.Config) int { return c.TCP.Loops }
	niceness := func(c *config.Config) int { return c.Nice }
	tests := []struct {
		name    string
		args    []string
		get     func(*config.Config) int
		want    int
		wantErr string
	}{
		{name: "loops: file only", args: []string{"-c", file}, get: loops, want: 2},
		{name: "loops: flag overrides file", args: []string{"-c", file, "--tcp-loops", "1"}, get: loops, want: 1},
		{name: "loops: flag back to one per CPU", args: []string{"-c", file, "--tcp-loops", "0"}, get: loops, want: 0},
		{name: "loops: no file, no flag", args: nil, get: loops, want: 0},
		{name: "loops: negative", args: []string{"--tcp-loops", "-1"}, wantErr: "tcp.loops: -1"},
		{name: "nice: file only", args: []string{"-c", file}, get: niceness, want: 3},
		{name: "nice: flag overrides file", args: []string{"-c", file, "--nice", "-4"}, get: niceness, want: -4},
		{name: "nice: flag back to as started", args: []string{"-c", file, "--nice", "0"}, get: niceness, want: 0},
		{name: "nice: out of range", args: []string{"--nice", "30"}, wantErr: "nice: 30: want -20"},
		// iptables' --uid-owner takes names; detour says how to get the number.
		{name: "exclude-uid: a user name", args: []string{"--mode", "redirect", "--exclude-uid", "www-data"}, wantErr: "is not a uid: give the number (id -u www-data)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newConfigFlags("run", io.Discard, true)
			if err := f.fs.Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			cfg, err := f.load()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("load: %v, want an error with %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := tt.get(cfg); got != tt.want {
				t.Errorf("got %d, want %d", got, tt.want)
			}
		})
	}
}

// TestBadFlagMessages checks that a bad flag gets one line naming it, with
// the flag meant or the form its value takes, rather than flag's error
// under which the whole usage scrolls it away.
func TestBadFlagMessages(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"run", "--mod", "tproxy"}, "detour run: --mod is not a flag; did you mean --mode? (detour run --help lists the flags)\n"},
		{[]string{"run", "--config", "detour.yaml"}, "detour run: --config is not a flag; did you mean -c? (detour run --help lists the flags)\n"},
		{[]string{"run", "--intercept", "80"}, "detour run: --intercept is not a flag; did you mean --intercept-dst, --intercept-iface or --intercept-port? (detour run --help lists the flags)\n"},
		{[]string{"run", "--keepalive-timeout", "1m"}, "detour run: --keepalive-timeout is not a flag; did you mean --http-idle-timeout? (detour run --help lists the flags)\n"},
		{[]string{"run", "--http-idle-timeout", "5"}, "detour run: --http-idle-timeout: \"5\" is not a duration (like 5s, 100ms, 1m30s) (detour run --help lists the flags)\n"},
		{[]string{"run", "--xyzzy"}, "detour run: --xyzzy is not a flag (detour run --help lists the flags)\n"},
		{[]string{"run", "--connect-timeout", "5"}, "detour run: --connect-timeout: \"5\" is not a duration (like 5s, 100ms, 1m30s) (detour run --help lists the flags)\n"},
		{[]string{"run", "--max-connections", "lots"}, "detour run: --max-connections: \"lots\" is not a whole number (detour run --help lists the flags)\n"},
		{[]string{"run", "--spoof-source=yes"}, "detour run: --spoof-source: \"yes\" is not true or false (--spoof-source alone turns it on) (detour run --help lists the flags)\n"},
		{[]string{"run", "-c"}, "detour run: -c needs a value (detour run --help lists the flags)\n"},
		{[]string{"rules", "show", "--dryrun"}, "detour rules: --dryrun is not a flag; did you mean --dry-run? (detour rules --help lists the flags)\n"},
		{[]string{"check", "--routr"}, "detour check: --routr is not a flag; did you mean --router? (detour check --help lists the flags)\n"},
		{[]string{"lab", "--keep-up"}, "detour lab: --keep-up is not a flag; did you mean --keep? (detour lab --help lists the flags)\n"},
		{[]string{"status", "--interval", "2"}, "detour status: --interval: \"2\" is not a duration (like 5s, 100ms, 1m30s) (detour status --help lists the flags)\n"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var out, errw strings.Builder
			if code := dispatch(tt.args, &out, &errw); code != exitUsage {
				t.Errorf("exit %d, want %d", code, exitUsage)
			}
			if errw.String() != tt.want || out.Len() != 0 {
				t.Errorf("stderr %q, stdout %q; want stderr %q", errw.String(), out.String(), tt.want)
			}
		})
	}
	// Help still goes to stdout, whole.
	var out, errw strings.Builder
	if code := dispatch([]string{"run", "--help"}, &out, &errw); code != exitOK || !strings.Contains(out.String(), "-connect-timeout") || errw.Len() != 0 {
		t.Errorf("run --help: exit %d, stdout %d bytes, stderr %q", code, out.Len(), errw.String())
	}
}

// TestInterceptFlags: --intercept-port takes ranges and --exclude-dst
// CIDRs, and `rules apply --dry-run` prints the rules they make.
func TestInterceptFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		want    []string // lines of the printed rules
		wantErr string
	}{
		{name: "ranges", args: []string{"--mode", "redirect", "--listen", "127.0.0.1:4999", "--intercept-port", "80,8000-8100", "--intercept-port", "9000-9010"},
			want: []string{"meta nfproto ipv4 tcp dport { 80, 8000-8100, 9000-9010 } redirect to :4999"}},
		{name: "one range", args: []string{"--listen", "0.0.0.0:15001", "--intercept-port", "8000-8100"},
			want: []string{"tcp dport 8000-8100 tproxy ip to :15001 meta mark set 0x00000001 accept"}},
		{name: "excluded destinations", args: []string{"--listen", "0.0.0.0:15001", "--listen", "[::]:15001", "--intercept-port", "80", "--exclude-dst", "10.0.0.0/8,fd00::/8", "--exclude-dst", "198.18.0.1"},
			want: []string{"ip daddr { 10.0.0.0/8, 198.18.0.1 } return", "ip6 daddr { fd00::/8 } return", "tcp dport 80 tproxy ip to :15001 meta mark set 0x00000001 accept"}},
		{name: "backwards", args: []string{"--intercept-port", "80,8100-8000"}, wantErr: `--intercept-port: "8100-8000" is not a port range: it runs backwards; write 8000-8100`},
		{name: "from zero", args: []string{"--intercept-port", "0-5"}, wantErr: `--intercept-port: "0-5" is not a port or port range: ports are 1-65535`},
		{name: "no end", args: []string{"--intercept-port", "80-"}, wantErr: `--intercept-port: "80-" is not a port or port range (like 80 or 8000-8100)`},
		{name: "overlap", args: []string{"--intercept-port", "8000-8100,8050"}, wantErr: "intercept.ports: 8000-8100 and 8050 overlap"},
		{name: "bad excluded", args: []string{"--intercept-port", "80", "--exclude-dst", "10.0.0.1/8"}, wantErr: `intercept.exclude_destinations: "10.0.0.1/8" has host bits set; did you mean 10.0.0.0/8?`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr strings.Builder
			code := cmdRules(append([]string{"apply", "--dry-run"}, tt.args...), &stdout, &stderr)
			if tt.wantErr != "" {
				if code != exitUsage || !strings.Contains(stderr.String(), tt.wantErr) {
					t.Fatalf("exit %d, stderr %q; want exit %d with %q", code, stderr.String(), exitUsage, tt.wantErr)
				}
				return
			}
			if code != exitOK {
				t.Fatalf("exit %d: %s", code, stderr.String())
			}
			lines := map[string]bool{}
			for _, l := range strings.Split(stdout.String(), "\n") {
				lines[strings.TrimSpace(l)] = true
			}
			for _, w := range tt.want {
				if !lines[w] {
					t.Errorf("missing %q in\n%s", w, stdout.String())
				}
			}
		})
	}
}
