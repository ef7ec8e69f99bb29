// Package nsnet runs code and sockets inside named network namespaces, for
// the tests, the harness, the demo, the benchmark and the soak: create and
// delete a namespace, run a function in one, listen and dial inside one,
// poll until a condition holds. Every helper returns its errors; it does
// not import testing (package nstest wraps these for tests).
package nsnet

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/vnet-cni/vnet-cni/internal/namedns"
)

// NSDir is where named network namespaces are bind-mounted (as by ip netns).
const NSDir = namedns.Dir

// CreateNamed creates a network namespace bind-mounted at /run/netns/name,
// on a dedicated OS thread so that no goroutine of the caller ever runs in it.
func CreateNamed(name string) error { return namedns.Create(name) }

// DeleteNamed unmounts and removes /run/netns/name; a missing one is no error.
func DeleteNamed(name string) error { return namedns.Delete(name) }

// Do runs fn on a locked OS thread inside the namespace at nsPath. Sockets
// created by fn belong to that namespace and may be used after Do returns.
func Do(nsPath string, fn func() error) error {
	target, err := ns.GetNS(nsPath)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", nsPath, err)
	}
	defer target.Close()
	return target.Do(func(ns.NetNS) error { return fn() })
}

// ListenTCP listens on addr inside the namespace and answers every
// connection with one line "<namespace name> <local address>". It returns
// the bound address and stop, which closes the listener and waits for its
// goroutine.
func ListenTCP(nsPath string, addr netip.AddrPort) (bound netip.AddrPort, stop func(), err error) {
	var ln net.Listener
	err = Do(nsPath, func() error {
		var err error
		ln, err = net.Listen("tcp", addr.String())
		return err
	})
	if err != nil {
		return netip.AddrPort{}, nil, fmt.Errorf("listen tcp %s in %s: %w", addr, nsPath, err)
	}
	name := filepath.Base(nsPath)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.SetDeadline(time.Now().Add(2 * time.Second))
			_, _ = fmt.Fprintf(c, "%s %s\n", name, c.LocalAddr())
			_ = c.Close()
		}
	}()
	stop = func() {
		_ = ln.Close()
		wg.Wait()
	}
	return ln.Addr().(*net.TCPAddr).AddrPort(), stop, nil
}

// DialTCP connects from inside the namespace to dst, from source address src
// when it is valid, and returns the line the peer sends (without newline).
// timeout bounds the whole exchange.
func DialTCP(ctx context.Context, nsPath string, src netip.Addr, dst netip.AddrPort, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	d := net.Dialer{}
	if src.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
	}
	var c net.Conn
	err := Do(nsPath, func() error {
		var err error
		c, err = d.DialContext(ctx, "tcp", dst.String())
		return err
	})
	if err != nil {
		return "", fmt.Errorf("dial %s from %s: %w", dst, filepath.Base(nsPath), err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read from %s: %w", dst, err)
	}
	return strings.TrimSuffix(line, "\n"), nil
}

// ListenUDP listens on addr inside the namespace and reports the source of
// every datagram received on the returned channel (datagrams beyond the
// channel's buffer are dropped). stop closes the socket and waits for its
// goroutine.
func ListenUDP(nsPath string, addr netip.AddrPort) (received <-chan netip.AddrPort, stop func(), err error) {
	var pc *net.UDPConn
	err = Do(nsPath, func() error {
		var err error
		pc, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
		return err
	})
	if err != nil {
		return nil, nil, fmt.Errorf("listen udp %s in %s: %w", addr, nsPath, err)
	}
	ch := make(chan netip.AddrPort, 64)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			_, from, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			select {
			case ch <- netip.AddrPortFrom(from.Addr().Unmap(), from.Port()):
			default:
			}
		}
	}()
	stop = func() {
		_ = pc.Close()
		<-done
	}
	return ch, stop, nil
}

// SendUDP sends one datagram from inside the namespace to dst, from source
// address src when it is valid.
func SendUDP(nsPath string, src netip.Addr, dst netip.AddrPort, payload []byte) error {
	var laddr *net.UDPAddr
	if src.IsValid() {
		laddr = &net.UDPAddr{IP: src.AsSlice()}
	}
	var c *net.UDPConn
	err := Do(nsPath, func() error {
		var err error
		c, err = net.DialUDP("udp", laddr, net.UDPAddrFromAddrPort(dst))
		return err
	})
	if err != nil {
		return fmt.Errorf("udp socket to %s in %s: %w", dst, filepath.Base(nsPath), err)
	}
	defer c.Close()
	if _, err := c.Write(payload); err != nil {
		return fmt.Errorf("send udp to %s: %w", dst, err)
	}
	return nil
}

// UDPReaches sends a datagram from src to dst every 100 ms until one
// arrives on received from source src (true) or timeout passes (false).
// Send errors (e.g. an unresolved neighbour) count as not arrived.
func UDPReaches(nsPath string, src netip.Addr, dst netip.AddrPort, received <-chan netip.AddrPort, timeout time.Duration) bool {
	for drained := false; !drained; {
		select {
		case <-received:
		default:
			drained = true
		}
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		_ = SendUDP(nsPath, src, dst, []byte("probe"))
	wait:
		for {
			select {
			case from := <-received:
				if !src.IsValid() || from.Addr() == src {
					return true
				}
			case <-deadline.C:
				return false
			case <-tick.C:
				break wait
			}
		}
	}
}

// Eventually calls check every 50 ms until it returns nil or timeout passes;
// it returns the last error.
func Eventually(timeout time.Duration, check func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// DialContextIn returns a dial function that creates its sockets inside the
// namespace at nsPath, for an http.Transport talking from a namespace.
func DialContextIn(nsPath string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := Do(nsPath, func() error {
			var d net.Dialer
			var err error
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}
