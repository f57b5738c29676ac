package e2e

import (
	"bufio"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/detour-proxy/detour/internal/ns"
)

// TestLabHangupRemovesEverything: `detour lab --keep` runs until Ctrl-C,
// and a closed terminal or ssh session ends it with SIGHUP instead; it
// used to die of it on the spot and leave its namespaces behind (its
// detour got SIGTERM as its parent died; nothing removed the rest).
func TestLabHangupRemovesEverything(t *testing.T) {
	needRoot(t)
	id := newID("lh")
	names := []string{"dt-" + id + "-host", "dt-" + id + "-web"}
	t.Cleanup(func() { // whatever happens, leave nothing
		for _, name := range names {
			if ns.Exists(name) {
				exec.Command("ip", "netns", "del", name).Run()
			}
		}
	})
	cmd := exec.Command(detourBin, "lab", "redirect", "--keep", "--no-ipv6", "--go-client", "--id", id)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	up := make(chan struct{})
	var out strings.Builder
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			out.WriteString(sc.Text() + "\n")
			if strings.HasPrefix(sc.Text(), "Everything stays up") {
				close(up)
			}
		}
	}()
	select {
	case <-up:
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("the lab did not come up within 60s; its output:\n%s", out.String())
	}
	cmd.Process.Signal(syscall.SIGHUP)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("the lab ended with %v on SIGHUP; want a clean exit", err)
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatal("the lab did not end within 30s of SIGHUP")
	}
	for _, name := range names {
		if ns.Exists(name) {
			t.Errorf("namespace %s left behind after SIGHUP", name)
		}
	}
}
