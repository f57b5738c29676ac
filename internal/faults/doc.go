// Package faults is detour's fault-injection suite: it runs the real
// detour binary on the router of the lab's TPROXY network (client, router
// and server namespaces, see internal/lab) and breaks things around it —
// upstreams that refuse, drop SYNs, never answer, reset in the middle of a
// response or close a pooled keep-alive connection just as it is reused;
// clients that vanish mid-request or mid-response, half-close, trickle
// their headers (slowloris) or never read; file descriptors exhausted;
// 10,000 concurrent connections; 10,000 distinct original destinations;
// and (TestL4Chaos) 160 L4 connections, 24 at a time, with half-closes
// from either side, slow readers, client and server resets, servers that
// reset as they accept, and 2 % of segments (a tenth of the FINs) lost at
// random, in protocol tcp and auto.
//
// Every test checks three things: the affected client gets the right
// signal (a reset, a 503 or 504, a truncated body — never a fake complete
// response), detour keeps serving other connections, and detour's log
// names the cause. Resource checks read detour's /proc entries: open file
// descriptors, VmRSS and CPU time.
//
// The package has only tests. They need root (they create network
// namespaces) and skip with a message otherwise; they run with the rest of
// the suite:
//
//	go test -count=1 ./internal/faults
//
// The soak test (about 5 minutes, detour built with -race, mixed L4 and
// HTTP load with faults, every byte checksummed) runs only on request:
//
//	DETOUR_SOAK=1 go test -count=1 -run TestSoak -v -timeout 30m ./internal/faults
//
// DETOUR_SOAK_DURATION (a Go duration, default 5m) changes its length.
// DETOUR_SOAK also makes TestL4Chaos run 4,000 connections per protocol
// instead of 160.
package faults
