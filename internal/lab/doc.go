// Package lab rebuilds the networks of detour's two deployments inside
// network namespaces on one machine, for `detour lab` and for end-to-end
// tests.
//
// TProxyNet is the router deployment: client ⇄ router ⇄ server, routed
// without NAT, with forwarding on in the router. RedirectNet is the
// same-host deployment: host ⇄ server, where applications and detour share
// the host namespace. Both only ever touch namespaces they create (named
// dt-ID-ROLE, veth pairs created inside them, addresses from 198.18.0.0/15
// and 2001:db8::/32) and Close removes them. See README.md for diagrams.
//
//	net, err := lab.NewTProxyNet("42") // dt-42-cli, dt-42-rtr, dt-42-srv
//	if err != nil { ... }
//	defer net.Close()
//	web, err := lab.StartHTTPBin(net.Server, 80)
//	if err != nil { ... }
//	defer web.Close()
//	d, err := lab.StartDetour(ctx, net.Router, "/usr/local/bin/detour",
//		[]string{"--mode", "tproxy", "--listen", "0.0.0.0:15001", "--intercept-port", "80"}, os.Stderr)
//	if err != nil { ... }
//	defer d.Stop()
//	resp, err := lab.HTTPClient(net.Client).Get("http://198.18.2.2/ip")
//
// Run is the narrated walkthrough behind `detour lab`.
package lab
