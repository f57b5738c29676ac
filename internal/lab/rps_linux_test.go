package lab

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func TestCPUMask(t *testing.T) {
	for _, c := range []struct {
		n    int
		want string
	}{
		{1, "00000001"},
		{2, "00000003"},
		{31, "7fffffff"},
		{32, "ffffffff"},
		{33, "00000001,ffffffff"},
		{70, "0000003f,ffffffff,ffffffff"},
	} {
		if got := cpuMask(c.n); got != c.want {
			t.Errorf("cpuMask(%d) = %q, want %q", c.n, got, c.want)
		}
	}
}

// hostRPS reads every receive queue's RPS mask of the host's links.
func hostRPS(t *testing.T) map[string]string {
	t.Helper()
	paths, _ := filepath.Glob("/sys/class/net/*/queues/rx-*/rps_cpus")
	m := map[string]string{}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err == nil {
			m[p] = string(b)
		}
	}
	return m
}

// TestSteerFlows sets RPS on the lab's four link ends and reads it back
// inside each namespace; the host's links keep theirs, and traffic still
// goes through the router.
func TestSteerFlows(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	id := testID("rps")
	before := hostRPS(t)
	tn, _ := routerWithWeb(t, id)

	ctx := context.Background()
	if err := tn.SteerFlows(ctx); err != nil {
		t.Fatal(err)
	}
	ends := tn.linkEnds()
	if len(ends) != 4 {
		t.Fatalf("%d link ends, want 4", len(ends))
	}
	want := strings.TrimLeft(cpuMask(runtime.NumCPU()), "0,")
	for _, end := range ends {
		out, err := end.n.Command(ctx, "cat", "/sys/class/net/"+end.iface+"/queues/rx-0/rps_cpus").CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v: %s", end.n.Name, end.iface, err, out)
		}
		if got := strings.TrimLeft(strings.TrimSpace(string(out)), "0,"); got != want {
			t.Errorf("%s %s rps_cpus = %q, want %q", end.n.Name, end.iface, got, want)
		}
	}
	if got := origin(t, tn.Client, tn.ServerIP4); got != tn.ClientIP4.String() {
		t.Errorf("GET /ip through the router with RPS: origin %q, want %s", got, tn.ClientIP4)
	}
	after := hostRPS(t)
	for p, v := range before {
		if after[p] != v {
			t.Errorf("host %s changed from %q to %q", p, v, after[p])
		}
	}
}
