package proxy

import (
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// selfAddrs answers "is this destination one of detour's own listeners?".
// A wildcard listener owns its port on every local address, so the host's
// addresses are consulted, but only for destinations on a listener port:
// the common path costs a slice scan.
type selfAddrs struct {
	ports []uint16
	addrs []netip.Addr // listeners' own addresses (may be unspecified)

	mu      sync.Mutex
	local   []netip.Addr
	fetched time.Time
}

func newSelfAddrs(ports []uint16, addrs []netip.Addr) *selfAddrs {
	return &selfAddrs{ports: ports, addrs: addrs}
}

func (s *selfAddrs) contains(dst netip.AddrPort) bool {
	if !slices.Contains(s.ports, dst.Port()) {
		return false
	}
	a := dst.Addr().Unmap()
	if a.IsLoopback() || a.IsUnspecified() || slices.Contains(s.addrs, a) {
		return true
	}
	return slices.Contains(s.localAddrs(), a)
}

// localAddrs lists the host's addresses, refreshed at most once a second.
// A refresh builds a new slice: callers scan the one they got without the
// lock.
func (s *selfAddrs) localAddrs() []netip.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if time.Since(s.fetched) < time.Second {
		return s.local
	}
	var local []netip.Addr
	if ifAddrs, err := net.InterfaceAddrs(); err == nil {
		for _, ia := range ifAddrs {
			if p, err := netip.ParsePrefix(ia.String()); err == nil {
				local = append(local, p.Addr().Unmap())
			}
		}
	}
	s.local, s.fetched = local, time.Now()
	return local
}
