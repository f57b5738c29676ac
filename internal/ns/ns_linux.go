package ns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// runDir is where `ip netns` keeps named namespaces, so that
// `ip netns exec NAME ...` works on the namespaces made here.
const runDir = "/var/run/netns"

// NS is a named network namespace made by New.
type NS struct {
	Name   string
	handle netns.NsHandle
}

// New creates the named namespace with its loopback up. The name must be
// unused; callers choose unique names so parallel tests never collide.
func New(name string) (*NS, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("creating a network namespace needs root")
	}
	var n *NS
	err := onLockedThread(func() error {
		orig, err := netns.Get()
		if err != nil {
			return err
		}
		defer orig.Close()
		defer netns.Set(orig)
		h, err := netns.NewNamed(name) // also switches this thread into it
		if err != nil {
			return fmt.Errorf("create namespace %s: %w", name, err)
		}
		n = &NS{Name: name, handle: h}
		lo, err := netlink.LinkByName("lo")
		if err == nil {
			err = netlink.LinkSetUp(lo)
		}
		if err != nil {
			n.Close()
			return fmt.Errorf("namespace %s: bring up lo: %w", name, err)
		}
		return nil
	})
	return n, err
}

// Open returns an existing named namespace (one made by New or `ip netns add`).
func Open(name string) (*NS, error) {
	h, err := netns.GetFromName(name)
	if err != nil {
		return nil, fmt.Errorf("open namespace %s: %w", name, err)
	}
	return &NS{Name: name, handle: h}, nil
}

// Exists reports whether a named namespace is present.
func Exists(name string) bool {
	_, err := os.Stat(filepath.Join(runDir, name))
	return err == nil
}

// Fd is the namespace's file descriptor, for APIs that take one
// (nftables.WithNetNSFd, netlink.NewHandleAt).
func (n *NS) Fd() int { return int(n.handle) }

// Handle is the namespace handle for vishvananda/netlink.
func (n *NS) Handle() netns.NsHandle { return n.handle }

// Path is the namespace's bind-mount path, for nsenter --net=PATH.
func (n *NS) Path() string { return filepath.Join(runDir, n.Name) }

// Do runs fn on an OS thread that is inside the namespace. Sockets fn creates
// belong to the namespace; goroutines fn starts do not.
func (n *NS) Do(fn func() error) error {
	return onLockedThread(func() error {
		orig, err := netns.Get()
		if err != nil {
			return err
		}
		defer orig.Close()
		if err := netns.Set(n.handle); err != nil {
			return fmt.Errorf("enter namespace %s: %w", n.Name, err)
		}
		defer netns.Set(orig)
		return fn()
	})
}

// Dialer returns a dial function that makes its sockets inside the
// namespace, for http.Transport.DialContext and the like.
func (n *NS) Dialer(d *net.Dialer) func(ctx context.Context, network, addr string) (net.Conn, error) {
	if d == nil {
		d = &net.Dialer{}
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := n.Do(func() (err error) {
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// Listen makes a listener inside the namespace.
func (n *NS) Listen(network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := n.Do(func() (err error) {
		ln, err = net.Listen(network, addr)
		return err
	})
	return ln, err
}

// Command prepares a command that runs inside the namespace, through
// `ip netns exec`, which also remounts /sys for it.
func (n *NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// StartPinned starts cmd on a locked OS thread that lives until cmd has
// exited, and returns a channel that gets cmd.Wait's result. The kernel
// sends a Pdeathsig (cmd.SysProcAttr) when the thread that forked the child
// exits, not the process, and Go ends threads that were locked into a
// namespace: started from any other thread, the child could be killed
// while this process still needs it.
func StartPinned(cmd *exec.Cmd) (<-chan error, error) {
	started, done := make(chan error, 1), make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		done <- cmd.Wait()
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return done, nil
}

// Sysctl sets a sysctl such as "net.ipv4.ip_forward" inside the namespace.
// /proc/sys/net follows the network namespace of the thread that opens it.
func (n *NS) Sysctl(key, value string) error {
	path := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
	return n.Do(func() error { return os.WriteFile(path, []byte(value), 0o644) })
}

// ReadSysctl reads a sysctl inside the namespace.
func (n *NS) ReadSysctl(key string) (string, error) {
	path := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
	var v []byte
	err := n.Do(func() (err error) {
		v, err = os.ReadFile(path)
		return err
	})
	return strings.TrimSpace(string(v)), err
}

// Close removes the namespace's name. The kernel frees the namespace, with
// its links, rules and routes, when the last socket or process in it is gone.
func (n *NS) Close() error {
	if n == nil {
		return nil
	}
	n.handle.Close()
	if err := netns.DeleteNamed(n.Name); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove namespace %s: %w", n.Name, err)
	}
	return nil
}

// onLockedThread runs fn on a thread that is thrown away afterwards when fn
// leaves it in a changed state, so no other goroutine inherits a namespace.
func onLockedThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		err := fn()
		// Leaving the goroutine without unlocking makes the runtime retire
		// the thread, which is the safe choice if switching back failed.
		if cur, gerr := netns.Get(); gerr == nil {
			self, serr := netns.GetFromPath(fmt.Sprintf("/proc/%d/ns/net", os.Getpid()))
			if serr == nil && cur.Equal(self) {
				runtime.UnlockOSThread()
			}
			if serr == nil {
				self.Close()
			}
			cur.Close()
		}
		errc <- err
	}()
	return <-errc
}
