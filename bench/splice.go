package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// spliceProxyCmd is the hidden subcommand that runs the "plain Go splice
// proxy" baseline: accept TPROXY'd connections on an IP_TRANSPARENT
// listener, dial the accepted socket's local address (the original
// destination) and io.Copy both ways, which Go turns into splice(2)
// between the two TCP sockets. No sniffing, no pools, no timeouts beyond
// the connect timeout: the floor of what a Go proxy costs. Go's splice
// holds a pipe (two descriptors) while it waits for data, so each idle
// connection costs this proxy six descriptors: the idle workload gives it
// a third of the connections (see README.md).
const spliceProxyCmd = "splice-proxy"

func spliceProxyMain(args []string) int {
	fs := flag.NewFlagSet(spliceProxyCmd, flag.ContinueOnError)
	var addrs multiFlag
	fs.Var(&addrs, "listen", "ip:port to listen on with IP_TRANSPARENT (repeatable)")
	if err := fs.Parse(args); err != nil || len(addrs) == 0 {
		fmt.Fprintln(os.Stderr, "usage: bench splice-proxy -listen ip:port [-listen ...]")
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var lns []net.Listener
	for _, a := range addrs {
		network := "tcp4"
		if strings.HasPrefix(a, "[") {
			network = "tcp6" // Go sets IPV6_V6ONLY for tcp6
		}
		lc := net.ListenConfig{Control: func(network, address string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				if network == "tcp6" {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
				} else {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1)
				}
			})
			if err != nil {
				return err
			}
			return serr
		}}
		ln, err := lc.Listen(ctx, network, a)
		if err != nil {
			fmt.Fprintf(os.Stderr, "splice-proxy: %v\n", err)
			return 1
		}
		lns = append(lns, ln)
	}
	for _, ln := range lns {
		go acceptLoop(ln)
	}
	fmt.Println("splice-proxy ready")
	<-ctx.Done()
	for _, ln := range lns {
		ln.Close()
	}
	return 0
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func acceptLoop(ln net.Listener) {
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE and the like: wait and retry, as net/http does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			fmt.Fprintf(os.Stderr, "splice-proxy: accept: %v; retrying in %s\n", err, backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		go forward(c.(*net.TCPConn))
	}
}

func forward(c *net.TCPConn) {
	defer c.Close()
	dst := c.LocalAddr().(*net.TCPAddr) // TPROXY: the original destination
	u, err := net.DialTimeout("tcp", dst.String(), 5*time.Second)
	if err != nil {
		return
	}
	up := u.(*net.TCPConn)
	defer up.Close()
	var wg sync.WaitGroup
	wg.Add(2)
	go copyHalf(up, c, &wg) // client → server
	copyHalf(c, up, &wg)    // server → client
	wg.Wait()
}

// copyHalf copies src to dst (splice: *net.TCPConn.ReadFrom a *net.TCPConn)
// and then half-closes dst.
func copyHalf(dst, src *net.TCPConn, wg *sync.WaitGroup) {
	defer wg.Done()
	io.Copy(dst, src)
	dst.CloseWrite()
}
