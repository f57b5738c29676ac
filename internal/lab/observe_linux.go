package lab

import (
	"context"
	"fmt"
	"strings"
	"time"
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
// requests: `detour status`, run where detour runs. It never fails the
// walkthrough; a detour without an admin endpoint is only mentioned.
func (w *walk) showAdmin(ctx context.Context) {
	addr := adminAddr(w.o.ExtraArgs)
	if w.detourNS == nil || addr == "" {
		return
	}
	name := w.detourNS.Name
	w.stepf("what detour's admin endpoint (%s, inside %s) saw: detour status", addr, name)
	time.Sleep(100 * time.Millisecond) // the last request's counters land just after its response
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := w.detourNS.Command(ctx, w.o.Binary, "status", "--admin", addr).CombinedOutput()
	w.block(string(out))
	if err != nil {
		w.sayf("`detour status` failed (%v); the lab goes on without it.", err)
		return
	}
	w.sayf("one host per original destination ip:port: REQUESTS counts the requests above, REUSES those")
	w.sayf("detour served on a pooled upstream connection. A host unused for 5s is removed with its idle connections.")
	w.adminTip = []string{
		fmt.Sprintf("ip netns exec %s %s status --watch   # live hosts and counters", name, w.shownBinary()),
		fmt.Sprintf("ip netns exec %s curl -s http://%s/metrics | grep '^detour_'", name, addr),
		fmt.Sprintf("ip netns exec %s curl -s http://%s/clusters", name, addr),
	}
}
