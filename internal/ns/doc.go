// Package ns creates, enters and removes named Linux network namespaces.
//
// detour touches the kernel's network state only inside namespaces it made
// itself: the lab and every kernel test build their hosts with this package
// and remove them when done, so the host's own rules, routes and sysctls are
// never changed.
//
//	n, err := ns.New("dt-example-router")
//	if err != nil { ... }
//	defer n.Close()
//	err = n.Do(func() error {
//		ln, err := net.Listen("tcp", ":80") // bound inside the namespace
//		...
//	})
//
// Sockets keep the namespace they were created in, so a listener made inside
// Do can be served from any goroutine afterwards.
package ns
