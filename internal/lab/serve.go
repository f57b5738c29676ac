package lab

import (
	"net"
	"strconv"

	"github.com/detour-proxy/detour/internal/ns"
)

// ServeTCP runs h for every connection to port on all IPv4 and IPv6
// addresses of n (one listener per family, the IPv6 one v6-only), closing
// each connection when h returns: the test servers behind detour. The
// returned function stops the listeners.
func ServeTCP(n *ns.NS, port int, h func(*net.TCPConn)) (stop func(), err error) {
	var lns []net.Listener
	stop = func() {
		for _, ln := range lns {
			ln.Close()
		}
	}
	for _, a := range []struct{ network, addr string }{{"tcp4", "0.0.0.0"}, {"tcp6", "::"}} {
		ln, err := n.Listen(a.network, net.JoinHostPort(a.addr, strconv.Itoa(port)))
		if err != nil {
			stop()
			return nil, err
		}
		lns = append(lns, ln)
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() { defer c.Close(); h(c.(*net.TCPConn)) }()
			}
		}()
	}
	return stop, nil
}
