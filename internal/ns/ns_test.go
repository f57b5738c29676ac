package ns

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestNamespaceIsolatesSockets(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: creating network namespaces needs root (CI runs as root)")
	}
	name := fmt.Sprintf("dt-nstest-%d", os.Getpid())
	n, err := New(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	if !Exists(name) {
		t.Fatalf("namespace %s not visible under %s", name, runDir)
	}
	ln, err := n.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Write([]byte("x"))
			c.Close()
		}
	}()
	// From the host namespace the listener's port is not reachable.
	if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		c.Close()
		t.Fatalf("listener inside namespace reachable from the host namespace")
	}
	c, err := n.Dialer(nil)(t.Context(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("dial inside namespace: %v", err)
	}
	buf := make([]byte, 1)
	if _, err := c.Read(buf); err != nil || buf[0] != 'x' {
		t.Fatalf("read = %q, %v", buf, err)
	}
	c.Close()
	if err := n.Sysctl("net.ipv4.ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	if v, _ := n.ReadSysctl("net.ipv4.ip_forward"); v != "1" {
		t.Fatalf("ip_forward inside = %q", v)
	}
	if v, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); string(v) == "1\n" && hostForward != "1" {
		t.Fatalf("sysctl leaked into the host namespace")
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if Exists(name) {
		t.Fatalf("namespace still present after Close")
	}
}

var hostForward = func() string {
	v, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if len(v) > 0 {
		return string(v[:1])
	}
	return ""
}()

// TestStartPinnedOutlivesLockedThreads: a child started with StartPinned
// and a Pdeathsig survives goroutines that lock OS threads and exit locked
// (Go ends those threads, as it does after a namespace switch), and its
// exit reaches the returned channel.
func TestStartPinnedOutlivesLockedThreads(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	done, err := StartPinned(cmd)
	if err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		}()
	}
	wg.Wait()
	time.Sleep(100 * time.Millisecond)
	if err := cmd.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("child gone after other threads exited: %v", err)
	}
	select {
	case err := <-done:
		t.Fatalf("child exited early: %v", err)
	default:
	}
	cmd.Process.Kill()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Wait of a killed child returned no error")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the child's exit did not reach the channel")
	}
}
