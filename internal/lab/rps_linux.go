package lab

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"time"

	"github.com/detour-proxy/detour/internal/ns"
)

// SteerFlows turns on receive packet steering (RPS) over every CPU on
// both ends of the router network's two links. A veth link hands a packet
// to the receiving namespace on the CPU that sent it; a TCP sender sends
// from its own CPU and, when an ACK opens its window, from the CPU that
// took the ACK, so one stream's segments join two CPUs' backlogs and
// arrive out of order. RPS queues each flow on the one CPU its hash picks,
// as a NIC's receive-side scaling does, so a stream stays in order. The
// benchmark uses it for single-stream measurements that reflect a real
// link rather than veth's reordering.
func (t *TProxyNet) SteerFlows(ctx context.Context) error {
	mask := cpuMask(runtime.NumCPU())
	for _, end := range t.linkEnds() {
		if err := setRPS(ctx, end.n, end.iface, mask); err != nil {
			return err
		}
	}
	return nil
}

// linkEnd is one end of a veth link: the namespace and the interface.
type linkEnd struct {
	n     *ns.NS
	iface string
}

// linkEnds are both ends of the router network's two links.
func (t *TProxyNet) linkEnds() []linkEnd {
	return []linkEnd{
		{t.Client, ifClientToRouter},
		{t.Router, ifRouterToClient},
		{t.Router, ifRouterToServer},
		{t.Server, ifServerToRouter},
	}
}

// setRPS writes mask to every receive queue of iface in n. /sys shows a
// namespace's own links only in a process that mounted it there, which
// `ip netns exec` (ns.Command) does.
func setRPS(ctx context.Context, n *ns.NS, iface, mask string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	script := `set -e; found=; for q in /sys/class/net/"$1"/queues/rx-*/rps_cpus; do [ -e "$q" ] || continue; echo "$2" > "$q"; found=1; done; [ -n "$found" ] || { echo "no receive queues" >&2; exit 1; }`
	out, err := n.Command(ctx, "sh", "-c", script, "sh", iface, mask).CombinedOutput()
	if err != nil {
		return fmt.Errorf("lab: RPS on %s in %s: %w: %s", iface, n.Name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// cpuMask is the sysfs CPU bitmap of CPUs 0 to n-1: hex words of 32 bits,
// most significant first, separated by commas.
func cpuMask(n int) string {
	var words []string
	for lo := 0; lo < n; lo += 32 {
		bits := min(n-lo, 32)
		words = append(words, fmt.Sprintf("%08x", uint64(1)<<bits-1))
	}
	for i, j := 0, len(words)-1; i < j; i, j = i+1, j-1 {
		words[i], words[j] = words[j], words[i]
	}
	return strings.Join(words, ",")
}
