// Package probe checks connectivity between network namespaces and shows
// which source address arrived: a TCP server inside a namespace answers each
// connection with "<name> saw <source ip>", so the client learns who
// answered and whether the path translated its address. The demo and the
// end-to-end tests use it.
package probe

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

	"github.com/vnet-cni/vnet-cni/internal/nsnet"
)

// Servers are probe servers inside namespaces; the zero value is ready.
type Servers struct {
	mu  sync.Mutex // guards lns
	lns []net.Listener
	wg  sync.WaitGroup
}

// Listen starts a server named name on addr inside the namespace at nsPath
// and returns the address it listens on.
func (s *Servers) Listen(nsPath, name string, addr netip.AddrPort) (netip.AddrPort, error) {
	var ln net.Listener
	if err := nsnet.Do(nsPath, func() error {
		var err error
		ln, err = net.Listen("tcp4", addr.String())
		return err
	}); err != nil {
		return netip.AddrPort{}, fmt.Errorf("listen on %s in %s: %w", addr, filepath.Base(nsPath), err)
	}
	s.mu.Lock()
	s.lns = append(s.lns, ln)
	s.mu.Unlock()
	s.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			src := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
			_ = c.SetDeadline(time.Now().Add(2 * time.Second))
			_, _ = fmt.Fprintf(c, "%s saw %s\n", name, src)
			_ = c.Close()
		}
	})
	return ln.Addr().(*net.TCPAddr).AddrPort(), nil
}

// Close stops every server and waits for them.
func (s *Servers) Close() {
	s.mu.Lock()
	for _, ln := range s.lns {
		_ = ln.Close()
	}
	s.lns = nil
	s.mu.Unlock()
	s.wg.Wait()
}

// Answer is what a server said.
type Answer struct {
	// Name is the server's name.
	Name string
	// Seen is the source address the server saw.
	Seen netip.Addr
}

// Timeout bounds a Dial whose context has no earlier deadline.
const Timeout = 3 * time.Second

// Dial connects from inside the namespace at nsPath to dst and returns the
// answer.
func Dial(ctx context.Context, nsPath string, dst netip.AddrPort) (Answer, error) {
	ctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	var c net.Conn
	if err := nsnet.Do(nsPath, func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, "tcp4", dst.String())
		return err
	}); err != nil {
		return Answer{}, fmt.Errorf("connect from %s to %s: %w", filepath.Base(nsPath), dst, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return Answer{}, fmt.Errorf("read from %s: %w", dst, err)
	}
	name, seen, ok := strings.Cut(strings.TrimSpace(line), " saw ")
	if !ok {
		return Answer{}, fmt.Errorf("unexpected answer %q from %s", line, dst)
	}
	ip, err := netip.ParseAddr(seen)
	if err != nil {
		return Answer{}, fmt.Errorf("answer %q from %s: %w", line, dst, err)
	}
	return Answer{Name: name, Seen: ip}, nil
}
