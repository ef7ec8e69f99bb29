package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/vnet-cni/vnet-cni/internal/nstest"
)

// servers are the demo's TCP servers inside namespaces. Each answers a
// connection with "<name> saw <source ip>", so the client learns which
// source address arrived: its own (no NAT) or a translated one.
type servers struct {
	mu  sync.Mutex // guards lns
	lns []net.Listener
	wg  sync.WaitGroup
}

// listen starts a server on addr inside the namespace at nsPath.
func (s *servers) listen(nsPath, name string, addr netip.AddrPort) error {
	var ln net.Listener
	if err := nstest.Do(nsPath, func() error {
		var err error
		ln, err = net.Listen("tcp4", addr.String())
		return err
	}); err != nil {
		return fmt.Errorf("listen on %s in %s: %w", addr, filepath.Base(nsPath), err)
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
	return nil
}

// close stops every server.
func (s *servers) close() {
	s.mu.Lock()
	for _, ln := range s.lns {
		_ = ln.Close()
	}
	s.lns = nil
	s.mu.Unlock()
	s.wg.Wait()
}

// answer is what a server said.
type answer struct {
	name string
	seen netip.Addr
}

// dial connects from inside the namespace at nsPath to dst and returns the
// answer.
func dial(ctx context.Context, nsPath string, dst netip.AddrPort) (answer, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	var c net.Conn
	if err := nstest.Do(nsPath, func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, "tcp4", dst.String())
		return err
	}); err != nil {
		return answer{}, fmt.Errorf("connect to %s: %w", dst, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return answer{}, fmt.Errorf("read from %s: %w", dst, err)
	}
	name, seen, ok := strings.Cut(strings.TrimSpace(line), " saw ")
	if !ok {
		return answer{}, fmt.Errorf("unexpected answer %q from %s", line, dst)
	}
	ip, err := netip.ParseAddr(seen)
	return answer{name: name, seen: ip}, err
}

// expect dials and checks who answered and which source address it saw
// (any of wantSeen).
func expect(ctx context.Context, nsPath string, dst netip.AddrPort, wantName string, wantSeen ...netip.Addr) (answer, error) {
	a, err := dial(ctx, nsPath, dst)
	if err != nil {
		return a, err
	}
	if a.name != wantName {
		return a, fmt.Errorf("answered by %s, want %s", a.name, wantName)
	}
	for _, w := range wantSeen {
		if a.seen == w {
			return a, nil
		}
	}
	return a, errors.New("source " + a.seen.String() + " arrived, want " + joinAddrs(wantSeen, " or "))
}

func joinAddrs(as []netip.Addr, sep string) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, sep)
}
