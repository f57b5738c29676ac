// Package sdnotify speaks the service side of systemd's notify protocol
// (sd_notify(3)) without libsystemd: one datagram of NAME=value lines per
// state change, sent to the unix socket NOTIFY_SOCKET names. It is what a
// unit with Type=notify or Type=notify-reload waits for, so that `systemctl
// start` returns once detour serves and `systemctl reload` once a reload is
// applied, rather than when the process merely exists.
//
//	n, err := sdnotify.FromEnv() // no NOTIFY_SOCKET: every call does nothing
//	...
//	n.Send(sdnotify.Ready, sdnotify.Status("serving"))
//
// Each message is sent on a fresh socket, as libsystemd does, so a service
// manager that re-executes itself and recreates its socket still hears
// the next one.
package sdnotify
