package fabric

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// routeProtocol tags the fabric's routes (rtm_protocol) so that reconcile
// touches only its own. 176 is not named in iproute2's rt_protos.
const routeProtocol = netlink.RouteProtocol(176)

// resyncInterval is how often Run reconciles without a signal.
const resyncInterval = 500 * time.Millisecond

// Apply reconciles the kernel with st once: it computes the wanted routes,
// neighbours and nftables state, diffs them against the kernel, adds or
// replaces before it deletes, and returns every error it met. An
// inconsistent st (e.g. an unknown node) is reported while the rest is
// still applied.
func (f *Fabric) Apply(ctx context.Context, st State) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.destroyed {
		return ErrDestroyed
	}
	p, perr := desired(f.topo, st)
	n, err := f.reconcileLocked(p, false)
	f.changes += uint64(n)
	return errors.Join(perr, err)
}

// inSync reports, without changing anything, whether the kernel matches st.
func (f *Fabric) inSync(st State) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.destroyed {
		return false, ErrDestroyed
	}
	p, _ := desired(f.topo, st)
	n, err := f.reconcileLocked(p, true)
	return n == 0 && err == nil, err
}

// reconcileLocked brings the kernel to p and returns the number of changes
// made (or, with dryRun, that would be made).
func (f *Fabric) reconcileLocked(p plan, dryRun bool) (int, error) {
	nr, rerr := f.reconcileRoutesLocked(p.Routes, dryRun)
	nn, nerr := f.reconcileNeighsLocked(p.Neighs, dryRun)
	nf, ferr := f.reconcileNFTLocked(p.NFT, dryRun)
	return nr + nn + nf, errors.Join(rerr, nerr, ferr)
}

// Run reconciles with desired() on every signal of changed and at least
// every 500 ms, until ctx is done or the fabric is destroyed. Errors are
// logged when they differ from the previous one.
func (f *Fabric) Run(ctx context.Context, desired func() State, changed <-chan struct{}) {
	t := time.NewTicker(resyncInterval)
	defer t.Stop()
	var lastErr string
	for {
		err := f.Apply(ctx, desired())
		switch {
		case ctx.Err() != nil, errors.Is(err, ErrDestroyed):
			return
		case err != nil && err.Error() != lastErr:
			slog.Warn("fabric reconcile", "prefix", f.topo.Prefix, "err", err)
			lastErr = err.Error()
		case err == nil && lastErr != "":
			slog.Info("fabric reconcile recovered", "prefix", f.topo.Prefix)
			lastErr = ""
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-t.C:
		}
	}
}

func (f *Fabric) reconcileRoutesLocked(want []routeSpec, dryRun bool) (int, error) {
	var cur []netlink.Route
	err := retryDump(func() (err error) {
		cur, err = f.vnet.RouteListFiltered(netlink.FAMILY_V4,
			&netlink.Route{Table: unix.RT_TABLE_MAIN, Protocol: routeProtocol},
			netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("list routes: %w", err)
	}
	have := make(map[netip.Prefix]netlink.Route, len(cur))
	var stale []netlink.Route
	for _, r := range cur {
		dst, ok := prefixOf(r.Dst)
		if !ok || r.Priority != 0 || r.Tos != 0 {
			stale = append(stale, r)
			continue
		}
		have[dst] = r
	}
	var errs []error
	changes := 0
	wanted := make(map[netip.Prefix]bool, len(want))
	for _, w := range want {
		wanted[w.Dst] = true
		nr, err := f.route(w)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if h, ok := have[w.Dst]; ok && sameRoute(h, nr) {
			continue
		}
		changes++
		if dryRun {
			continue
		}
		if err := f.vnet.RouteReplace(nr); err != nil {
			errs = append(errs, fmt.Errorf("replace route %s: %w", w.Dst, err))
		}
	}
	for dst, r := range have {
		if !wanted[dst] {
			stale = append(stale, r)
		}
	}
	for _, r := range stale {
		changes++
		if dryRun {
			continue
		}
		if err := f.vnet.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("delete route %s: %w", r.Dst, err))
		}
	}
	return changes, errors.Join(errs...)
}

// route turns a spec into a netlink route.
func (f *Fabric) route(w routeSpec) (*netlink.Route, error) {
	r := &netlink.Route{
		Dst:      ipNet(w.Dst),
		Table:    unix.RT_TABLE_MAIN,
		Protocol: routeProtocol,
		Type:     unix.RTN_UNICAST,
		Scope:    netlink.SCOPE_UNIVERSE,
	}
	if w.Blackhole {
		r.Type = unix.RTN_BLACKHOLE
		return r, nil
	}
	idx, ok := f.ifindex[w.Dev]
	if !ok {
		return nil, fmt.Errorf("route %s: unknown link %s", w.Dst, w.Dev)
	}
	r.LinkIndex = idx
	if !w.Via.IsValid() {
		r.Scope = netlink.SCOPE_LINK
		return r, nil
	}
	r.Gw = w.Via.AsSlice()
	if w.Onlink {
		r.Flags = int(netlink.FLAG_ONLINK)
	}
	return r, nil
}

func sameRoute(have netlink.Route, want *netlink.Route) bool {
	return have.Type == want.Type &&
		have.LinkIndex == want.LinkIndex &&
		have.Scope == want.Scope &&
		have.Gw.Equal(want.Gw) &&
		have.Flags&int(netlink.FLAG_ONLINK) == want.Flags&int(netlink.FLAG_ONLINK) &&
		len(have.MultiPath) == 0
}

func (f *Fabric) reconcileNeighsLocked(want []neighSpec, dryRun bool) (int, error) {
	var cur []netlink.Neigh
	err := retryDump(func() (err error) {
		cur, err = f.vnet.NeighList(0, netlink.FAMILY_V4)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("list neighbours: %w", err)
	}
	type key struct {
		link int
		ip   netip.Addr
	}
	have := make(map[key]netlink.Neigh)
	for _, n := range cur {
		ip, ok := netip.AddrFromSlice(n.IP)
		if !ok || n.State&netlink.NUD_PERMANENT == 0 {
			continue
		}
		have[key{n.LinkIndex, ip.Unmap()}] = n
	}
	var errs []error
	changes := 0
	wanted := make(map[key]bool)
	for _, w := range want {
		idx, ok := f.ifindex[w.Dev]
		if !ok {
			errs = append(errs, fmt.Errorf("neighbour %s: unknown link %s", w.IP, w.Dev))
			continue
		}
		k := key{idx, w.IP}
		wanted[k] = true
		if h, ok := have[k]; ok && bytes.Equal(h.HardwareAddr, w.MAC) {
			continue
		}
		changes++
		if dryRun {
			continue
		}
		n := &netlink.Neigh{
			LinkIndex:    idx,
			Family:       netlink.FAMILY_V4,
			State:        netlink.NUD_PERMANENT,
			IP:           w.IP.AsSlice(),
			HardwareAddr: w.MAC,
		}
		if err := f.vnet.NeighSet(n); err != nil {
			errs = append(errs, fmt.Errorf("set neighbour %s on %s: %w", w.IP, w.Dev, err))
		}
	}
	// Permanent entries on node links that nobody wants (added by hand).
	nodeLinks := make(map[int]bool)
	for i := range f.topo.Nodes {
		nodeLinks[f.ifindex[nodeLink(i)]] = true
	}
	for k, n := range have {
		if wanted[k] || !nodeLinks[k.link] {
			continue
		}
		changes++
		if dryRun {
			continue
		}
		if err := f.vnet.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete neighbour %s: %w", k.ip, err))
		}
	}
	return changes, errors.Join(errs...)
}

// retryDump repeats a netlink dump that was interrupted by a concurrent change.
func retryDump(dump func() error) error {
	var err error
	for range 5 {
		if err = dump(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			return err
		}
	}
	return err
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	bits, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), bits), true
}
