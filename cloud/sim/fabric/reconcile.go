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
// made (or, with dryRun, that would be made). New interface links come
// first, the links no longer wanted go last.
func (f *Fabric) reconcileLocked(p plan, dryRun bool) (int, error) {
	nl, stale, lerr := f.reconcileLinksLocked(p.Links, dryRun)
	nr, rerr := f.reconcileRoutesLocked(p.Routes, dryRun)
	nn, nerr := f.reconcileNeighsLocked(p.Neighs, dryRun)
	nf, ferr := f.reconcileNFTLocked(p.NFT, dryRun)
	nd, derr := f.removeLinksLocked(stale, dryRun)
	return nl + nr + nn + nf + nd, errors.Join(lerr, rerr, nerr, ferr, derr)
}

// reconcileLinksLocked creates the interface links of want that are
// missing or belong to another interface, sets down ones up, and returns
// the interface links that are not wanted.
func (f *Fabric) reconcileLinksLocked(want []linkSpec, dryRun bool) (int, []netlink.Link, error) {
	var cur []netlink.Link
	err := retryDump(func() (err error) {
		cur, err = f.vnet.LinkList()
		return err
	})
	if err != nil {
		return 0, nil, fmt.Errorf("list links: %w", err)
	}
	have := make(map[string]netlink.Link)
	for _, l := range cur {
		if isInterfaceLink(l.Attrs().Name) {
			have[l.Attrs().Name] = l
		}
	}
	var errs []error
	changes := 0
	for _, w := range want {
		h, ok := have[w.Dev]
		delete(have, w.Dev)
		if ok && h.Attrs().Alias == linkAlias(w) {
			f.ifindex[w.Dev] = h.Attrs().Index
			if h.Attrs().Flags&net.FlagUp != 0 {
				continue
			}
			changes++
			if !dryRun {
				if err := f.vnet.LinkSetUp(h); err != nil {
					errs = append(errs, fmt.Errorf("set %s up: %w", w.Dev, err))
				}
			}
			continue
		}
		changes++
		if dryRun {
			continue
		}
		f.nftStale = true
		if ok {
			// Another interface at this device index: replace the pair.
			if err := f.vnet.LinkDel(h); err != nil && !errors.Is(err, unix.ENODEV) {
				errs = append(errs, fmt.Errorf("delete link %s: %w", w.Dev, err))
				continue
			}
		}
		delete(f.ifindex, w.Dev)
		if err := f.addInterfaceLinkLocked(w); err != nil {
			errs = append(errs, fmt.Errorf("%s of node %s: %w", w.Name, w.Node, err))
		}
	}
	stale := make([]netlink.Link, 0, len(have))
	for _, l := range have {
		stale = append(stale, l)
	}
	return changes, stale, errors.Join(errs...)
}

// removeLinksLocked deletes interface links (with their node side).
func (f *Fabric) removeLinksLocked(links []netlink.Link, dryRun bool) (int, error) {
	if dryRun {
		return len(links), nil
	}
	var errs []error
	for _, l := range links {
		delete(f.ifindex, l.Attrs().Name)
		if err := f.vnet.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, fmt.Errorf("delete link %s: %w", l.Attrs().Name, err))
		}
	}
	return len(links), errors.Join(errs...)
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
			if dryRun && isInterfaceLink(w.Dev) {
				changes++ // the link is still to be created
				continue
			}
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
			if dryRun && isInterfaceLink(w.Dev) {
				changes++ // the link is still to be created
				continue
			}
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
	// Permanent entries on node and interface links that nobody wants
	// (added by hand).
	nodeLinks := make(map[int]bool)
	for name, idx := range f.ifindex {
		if name != sinkLink && name != inetLink {
			nodeLinks[idx] = true
		}
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
