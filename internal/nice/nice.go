// Package nice sets the scheduling priority (nice value) of the whole
// detour process, as HAProxy's `nice` and nginx's `worker_priority` do.
// Where detour shares its CPUs with busy applications (NAT REDIRECT on
// the applications' own host), a lower value lets its threads run sooner
// when a socket wakes them, and every connection a waiting thread carries
// waits with it.
package nice

// Min and Max bound a nice value, as setpriority(2) does.
const (
	Min = -20
	Max = 19
)
