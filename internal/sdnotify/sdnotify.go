package sdnotify

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The fields of the protocol this package sends.
const (
	Ready     = "READY=1"     // start-up or a reload is complete
	Reloading = "RELOADING=1" // a reload began; send with MonotonicNow (Type=notify-reload)
	Stopping  = "STOPPING=1"  // the stop began
	Watchdog  = "WATCHDOG=1"  // alive, for WatchdogSec=
)

// Status is a STATUS= field: one line that `systemctl status` shows.
func Status(s string) string {
	return "STATUS=" + strings.ReplaceAll(s, "\n", " ")
}

// Errno is the ERRNO= field of a failure that carries a system error
// number (a listener's EADDRINUSE, say), which `systemctl status` shows
// beside the exit code; "" when err carries none.
func Errno(err error) string {
	var no syscall.Errno
	if !errors.As(err, &no) || no == 0 {
		return ""
	}
	return "ERRNO=" + strconv.Itoa(int(no))
}

// MonotonicNow is the MONOTONIC_USEC= field systemd wants with Reloading:
// CLOCK_MONOTONIC in microseconds, which lets it tell this reload's
// messages from those of an earlier one.
func MonotonicNow() string {
	return "MONOTONIC_USEC=" + strconv.FormatUint(monotonicUsec(), 10)
}

// Notifier sends notifications to one socket. The zero value, and a nil
// one, send nothing.
type Notifier struct {
	addr     *net.UnixAddr
	watchdog time.Duration
}

// New returns a notifier for socket: a file system path, or an abstract
// address written with a leading '@'. An empty socket gives a notifier
// that sends nothing. systemd's vsock: addresses are not supported.
func New(socket string) (*Notifier, error) {
	switch {
	case socket == "":
		return &Notifier{}, nil
	case strings.HasPrefix(socket, "/"), strings.HasPrefix(socket, "@") && len(socket) > 1:
		// Go's net maps the leading '@' to the abstract namespace's NUL.
		return &Notifier{addr: &net.UnixAddr{Name: socket, Net: "unixgram"}}, nil
	default:
		return &Notifier{}, fmt.Errorf("NOTIFY_SOCKET=%q: want an absolute path or an @abstract name; not notifying the service manager", socket)
	}
}

// FromEnv returns the notifier NOTIFY_SOCKET names, with the watchdog
// interval of WATCHDOG_USEC when WATCHDOG_PID is unset or this process.
// It unsets the three variables, as sd_notify's unset_environment does,
// so that a process detour starts does not talk to the service manager in
// its name. Without NOTIFY_SOCKET the notifier sends nothing and the
// error is nil.
func FromEnv() (*Notifier, error) {
	socket := os.Getenv("NOTIFY_SOCKET")
	usec, pid := os.Getenv("WATCHDOG_USEC"), os.Getenv("WATCHDOG_PID")
	for _, k := range []string{"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} {
		os.Unsetenv(k)
	}
	n, err := New(socket)
	if err != nil || n.addr == nil {
		return n, err
	}
	n.watchdog = watchdogInterval(usec, pid, os.Getpid())
	return n, nil
}

// watchdogInterval is how often to send Watchdog: half of WATCHDOG_USEC,
// as sd_watchdog_enabled(3) advises, or 0 when the service manager does
// not watch this process.
func watchdogInterval(usec, pid string, self int) time.Duration {
	if pid != "" && pid != strconv.Itoa(self) {
		return 0
	}
	us, err := strconv.ParseUint(usec, 10, 63)
	if err != nil || us == 0 {
		return 0
	}
	return time.Duration(us) * time.Microsecond / 2
}

// Enabled reports whether the notifier sends anything.
func (n *Notifier) Enabled() bool { return n != nil && n.addr != nil }

// WatchdogInterval is how often the service manager wants Watchdog; 0
// when it does not watch.
func (n *Notifier) WatchdogInterval() time.Duration {
	if !n.Enabled() {
		return 0
	}
	return n.watchdog
}

// Send sends fields (NAME=value each) in one datagram.
func (n *Notifier) Send(fields ...string) error {
	if !n.Enabled() {
		return nil
	}
	c, err := net.DialUnix("unixgram", nil, n.addr)
	if err != nil {
		return fmt.Errorf("notify the service manager: %w", err)
	}
	defer c.Close()
	msg := strings.Join(fields, "\n") + "\n"
	if _, err := c.Write([]byte(msg)); err != nil {
		return fmt.Errorf("notify the service manager: %w", err)
	}
	return nil
}
