package azure0

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vnet-cni/vnet-cni/bridge/linux"
)

// DefaultBridgeName is the bridge's name unless BridgeConfig.Name says otherwise.
const DefaultBridgeName = "azure0"

// BridgeConfig says which bridge to build over which NIC.
type BridgeConfig struct {
	// Name of the bridge; default DefaultBridgeName.
	Name string
	// Master is the NIC the bridge takes over. Empty means the interface
	// of the default IPv4 route, or the master recorded on an existing
	// bridge.
	Master string
	// MTU of the bridge; 0 means the master's.
	MTU int
}

// BridgeInfo is the bridge as found after EnsureBridge.
type BridgeInfo struct {
	Name        string
	Index       int
	MAC         net.HardwareAddr
	MTU         int
	Master      string
	MasterIndex int
	// PrimaryIP is the node's primary address, now on the bridge, and
	// Subnet the prefix it belongs to (masked).
	PrimaryIP netip.Addr
	Subnet    netip.Prefix
	// Addrs are all IPv4 addresses of the bridge, primary first.
	Addrs []netip.Prefix
	// Gateway is the next hop of the default route, if any.
	Gateway netip.Addr
}

// EnsureBridge makes sure the bridge exists with the master's MAC, owns the
// master's IPv4 addresses and routes, and has the master as a port. It
// completes a bridge left half-way by an earlier crash, and is cheap when
// nothing needs doing (no lock is taken then).
//
// The steps are ordered so that the node stays reachable: the addresses are
// added to the bridge before the master is enslaved (frames received on a
// port are delivered to the bridge device), each route is replaced onto the
// bridge in one atomic RTM_NEWROUTE with NLM_F_REPLACE, and only then are the
// addresses removed from the master.
func (n *Node) EnsureBridge(ctx context.Context, cfg BridgeConfig) (BridgeInfo, error) {
	info, _, err := n.ensureBridge(ctx, cfg)
	return info, err
}

// ensureBridge is EnsureBridge, telling whether the bridge needed work.
func (n *Node) ensureBridge(ctx context.Context, cfg BridgeConfig) (BridgeInfo, bool, error) {
	if cfg.Name == "" {
		cfg.Name = DefaultBridgeName
	}
	if info, ok, err := n.bridgeDone(cfg); err != nil || ok {
		return info, false, err
	}
	unlock, err := n.ns.Lock(ctx)
	if err != nil {
		return BridgeInfo{}, false, err
	}
	if err := n.refuseRoutedPods(); err != nil {
		return BridgeInfo{}, false, errors.Join(err, unlock())
	}
	info, err := n.ensureBridgeLocked(ctx, cfg)
	return info, true, errors.Join(err, unlock())
}

// refuseRoutedPods fails with linux.ErrModeConflict while pods of routed
// or kubenet mode run on the node, or kubenet mode's bridge exists: taking
// the NIC over under them would cut them off.
func (n *Node) refuseRoutedPods() error {
	veths, err := n.ns.PodVeths()
	if err != nil {
		return err
	}
	for _, v := range veths {
		if v.Record.Mode == linux.ModeRouted || v.Record.Mode == linux.ModeKubenet {
			return fmt.Errorf("%w: %s-mode pod %s (%s) runs on the node; bridge mode needs it drained first", linux.ErrModeConflict, v.Record.Mode, v.Record.IP, v.Name)
		}
	}
	links, err := linux.RetryDump(n.ns.Netlink.LinkList)
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	for _, l := range links {
		if a := l.Attrs(); l.Type() == "bridge" && strings.HasPrefix(a.Alias, linux.AliasPrefix) && linux.AliasField(a.Alias, "mode") == linux.ModeKubenet {
			return fmt.Errorf("%w: kubenet mode's bridge %s exists; bridge mode needs the node drained and the bridge deleted (or a reboot)", linux.ErrModeConflict, a.Name)
		}
	}
	return nil
}

// bridgeDone reports whether the bridge is complete, without changing anything.
func (n *Node) bridgeDone(cfg BridgeConfig) (BridgeInfo, bool, error) {
	l, err := n.ns.Netlink.LinkByName(cfg.Name)
	if linux.IsNotFound(err) {
		return BridgeInfo{}, false, nil
	}
	if err != nil {
		return BridgeInfo{}, false, fmt.Errorf("link %s: %w", cfg.Name, err)
	}
	br, ok := l.(*netlink.Bridge)
	if !ok {
		return BridgeInfo{}, false, fmt.Errorf("link %s exists and is a %s, not a bridge", cfg.Name, l.Type())
	}
	masterName := cfg.Master
	if masterName == "" {
		masterName = linux.AliasField(br.Alias, "master")
	}
	if masterName == "" {
		return BridgeInfo{}, false, nil
	}
	m, err := n.ns.Netlink.LinkByName(masterName)
	if err != nil {
		// The slow path reports a missing master.
		return BridgeInfo{}, false, nil
	}
	ma := m.Attrs()
	wantMTU := cfg.MTU
	if wantMTU == 0 {
		wantMTU = ma.MTU
	}
	a := br.Attrs()
	if ma.MasterIndex != a.Index || a.Flags&net.FlagUp == 0 || ma.Flags&net.FlagUp == 0 ||
		a.HardwareAddr.String() != ma.HardwareAddr.String() || a.MTU != wantMTU ||
		a.Alias != linux.Alias("master", masterName) {
		return BridgeInfo{}, false, nil
	}
	left, err := linux.RetryDump(func() ([]netlink.Addr, error) { return n.ns.Netlink.AddrList(m, netlink.FAMILY_V4) })
	if err != nil {
		return BridgeInfo{}, false, fmt.Errorf("addresses of %s: %w", masterName, err)
	}
	if len(left) > 0 {
		return BridgeInfo{}, false, nil
	}
	routes, err := n.movableRoutes(ma.Index)
	if err != nil {
		return BridgeInfo{}, false, err
	}
	if len(routes) > 0 {
		return BridgeInfo{}, false, nil
	}
	if hairpin, err := n.hairpin(m); err != nil || !hairpin {
		return BridgeInfo{}, false, err
	}
	info, err := n.bridgeInfo(br, m)
	return info, err == nil, err
}

// hairpin tells whether the bridge port m may send a frame back out of
// itself (IFLA_BRPORT_MODE).
//
// The NIC's port needs it: a connection from the fabric that the node
// DNATs to an address behind the fabric (a NodePort or Service whose
// endpoint is a pod of another node) is, with br_netfilter, bridged back
// out of the NIC it came in on, and the bridge drops such a frame unless
// the port is in hairpin mode. The bridge table's forward chain lets only
// those DNAT-ed frames go back and drops every other one (a flood or
// broadcast from the fabric must never be reflected to it); see
// buildTables.
func (n *Node) hairpin(m netlink.Link) (bool, error) {
	pi, err := linux.RetryDump(func() (netlink.Protinfo, error) { return n.ns.Netlink.LinkGetProtinfo(m) })
	if err != nil {
		return false, fmt.Errorf("bridge port settings of %s: %w", m.Attrs().Name, err)
	}
	return pi.Hairpin, nil
}

func (n *Node) ensureBridgeLocked(ctx context.Context, cfg BridgeConfig) (BridgeInfo, error) {
	existing, err := n.ns.Netlink.LinkByName(cfg.Name)
	if err != nil && !linux.IsNotFound(err) {
		return BridgeInfo{}, fmt.Errorf("link %s: %w", cfg.Name, err)
	}
	masterName := cfg.Master
	if masterName == "" && existing != nil {
		masterName = linux.AliasField(existing.Attrs().Alias, "master")
	}
	if masterName == "" {
		if masterName, err = n.defaultRouteLink(cfg.Name); err != nil {
			return BridgeInfo{}, err
		}
	}
	m, err := n.ns.Netlink.LinkByName(masterName)
	if err != nil {
		return BridgeInfo{}, fmt.Errorf("master %s: %w", masterName, err)
	}
	ma := m.Attrs()
	if ma.MasterIndex != 0 && (existing == nil || ma.MasterIndex != existing.Attrs().Index) {
		return BridgeInfo{}, fmt.Errorf("master %s is already a port of link index %d", masterName, ma.MasterIndex)
	}
	mtu := cfg.MTU
	if mtu == 0 {
		mtu = ma.MTU
	}

	br, err := n.ensureBridgeLink(cfg.Name, masterName, ma.HardwareAddr, mtu, existing)
	if err != nil {
		return BridgeInfo{}, err
	}
	bi := br.Attrs().Index
	if err := ctx.Err(); err != nil {
		return BridgeInfo{}, err
	}

	// 1. Addresses onto the bridge (the master keeps them for now).
	mAddrs, err := linux.RetryDump(func() ([]netlink.Addr, error) { return n.ns.Netlink.AddrList(m, netlink.FAMILY_V4) })
	if err != nil {
		return BridgeInfo{}, fmt.Errorf("addresses of %s: %w", masterName, err)
	}
	for _, a := range mAddrs {
		c := a
		c.Label = "" // labels must start with the device's name
		c.LinkIndex = bi
		if err := n.ns.Netlink.AddrAdd(br, &c); err != nil && !errors.Is(err, unix.EEXIST) {
			return BridgeInfo{}, fmt.Errorf("add %s to %s: %w", a.IPNet, cfg.Name, err)
		}
	}

	// 2. The master becomes a port; frames it receives now reach the
	// bridge, which holds the addresses.
	if m.Attrs().Flags&net.FlagUp == 0 {
		if err := n.ns.Netlink.LinkSetUp(m); err != nil {
			return BridgeInfo{}, fmt.Errorf("set %s up: %w", masterName, err)
		}
	}
	if ma.MasterIndex != bi {
		if err := n.ns.Netlink.LinkSetMasterByIndex(m, bi); err != nil {
			return BridgeInfo{}, fmt.Errorf("enslave %s to %s: %w", masterName, cfg.Name, err)
		}
	}

	// Hairpin on the NIC's port (see hairpin), only after it is a port.
	on, err := n.hairpin(m)
	if err != nil {
		return BridgeInfo{}, err
	}
	if !on {
		if err := n.ns.Netlink.LinkSetHairpin(m, true); err != nil {
			return BridgeInfo{}, fmt.Errorf("set hairpin on %s: %w", masterName, err)
		}
	}

	// An MTU given at creation does not count as set by the user: the
	// bridge follows its ports' minimum until an explicit change, so
	// correct it now that the master is a port.
	if br, err = n.ns.Netlink.LinkByIndex(bi); err != nil {
		return BridgeInfo{}, fmt.Errorf("link %s: %w", cfg.Name, err)
	}
	if br.Attrs().MTU != mtu {
		if err := n.ns.Netlink.LinkSetMTU(br, mtu); err != nil {
			return BridgeInfo{}, fmt.Errorf("set mtu of %s: %w", cfg.Name, err)
		}
	}

	// 3. Routes: replace each in place, so there is no instant without it.
	routes, err := n.movableRoutes(ma.Index)
	if err != nil {
		return BridgeInfo{}, err
	}
	for _, r := range routes {
		moved := r
		moved.LinkIndex = bi
		moved.ILinkIndex = 0
		if len(r.MultiPath) > 0 {
			moved.MultiPath = make([]*netlink.NexthopInfo, 0, len(r.MultiPath))
			for _, nh := range r.MultiPath {
				c := *nh
				if c.LinkIndex == ma.Index {
					c.LinkIndex = bi
				}
				moved.MultiPath = append(moved.MultiPath, &c)
			}
			moved.LinkIndex = 0
		}
		if err := n.ns.Netlink.RouteReplace(&moved); err != nil {
			return BridgeInfo{}, fmt.Errorf("move route %s onto %s: %w", r, cfg.Name, err)
		}
	}

	// 4. Addresses off the master, now that the bridge carries them and the routes.
	for _, a := range mAddrs {
		if err := n.ns.Netlink.AddrDel(m, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return BridgeInfo{}, fmt.Errorf("remove %s from %s: %w", a.IPNet, masterName, err)
		}
	}

	// Read back what was reached.
	if br, err = n.ns.Netlink.LinkByIndex(bi); err != nil {
		return BridgeInfo{}, fmt.Errorf("link %s: %w", cfg.Name, err)
	}
	if m, err = n.ns.Netlink.LinkByIndex(ma.Index); err != nil {
		return BridgeInfo{}, fmt.Errorf("link %s: %w", masterName, err)
	}
	if m.Attrs().MasterIndex != bi {
		return BridgeInfo{}, fmt.Errorf("%s is not a port of %s after enslaving it", masterName, cfg.Name)
	}
	return n.bridgeInfo(br, m)
}

// ensureBridgeLink creates the bridge with the master's MAC (pinned: a MAC
// given at creation is never recomputed when ports join) or corrects an
// existing one.
func (n *Node) ensureBridgeLink(name, master string, mac net.HardwareAddr, mtu int, existing netlink.Link) (netlink.Link, error) {
	if existing == nil {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = name
		attrs.HardwareAddr = mac
		attrs.MTU = mtu
		attrs.Flags = net.FlagUp
		err := n.ns.Netlink.LinkAdd(&netlink.Bridge{LinkAttrs: attrs})
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("create bridge %s: %w", name, err)
		}
		if existing, err = n.ns.Netlink.LinkByName(name); err != nil {
			return nil, fmt.Errorf("link %s: %w", name, err)
		}
	}
	if _, ok := existing.(*netlink.Bridge); !ok {
		return nil, fmt.Errorf("link %s exists and is a %s, not a bridge", name, existing.Type())
	}
	a := existing.Attrs()
	if a.HardwareAddr.String() != mac.String() {
		if err := n.ns.Netlink.LinkSetHardwareAddr(existing, mac); err != nil {
			return nil, fmt.Errorf("set mac of %s: %w", name, err)
		}
	}
	if a.MTU != mtu {
		if err := n.ns.Netlink.LinkSetMTU(existing, mtu); err != nil {
			return nil, fmt.Errorf("set mtu of %s: %w", name, err)
		}
	}
	// The kernel ignores IFLA_IFALIAS at creation, so this also records
	// the master on a new bridge.
	if a.Alias != linux.Alias("master", master) {
		if err := n.ns.Netlink.LinkSetAlias(existing, linux.Alias("master", master)); err != nil {
			return nil, fmt.Errorf("set alias of %s: %w", name, err)
		}
	}
	if a.Flags&net.FlagUp == 0 {
		if err := n.ns.Netlink.LinkSetUp(existing); err != nil {
			return nil, fmt.Errorf("set %s up: %w", name, err)
		}
	}
	return existing, nil
}

// movableRoutes lists the IPv4 routes through the link that are not made by
// the kernel for an address (those follow the address), in every table but
// the local one.
func (n *Node) movableRoutes(linkIndex int) ([]netlink.Route, error) {
	all, err := linux.RetryDump(func() ([]netlink.Route, error) {
		return n.ns.Netlink.RouteListFiltered(netlink.FAMILY_V4,
			&netlink.Route{LinkIndex: linkIndex, Table: unix.RT_TABLE_UNSPEC},
			netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return nil, fmt.Errorf("routes of link %d: %w", linkIndex, err)
	}
	var out []netlink.Route
	for _, r := range all {
		if r.Table == unix.RT_TABLE_LOCAL || r.Protocol == unix.RTPROT_KERNEL || r.Type != unix.RTN_UNICAST {
			continue
		}
		out = append(out, r)
	}
	return out, nil
}

// defaultRouteLink names the link of the main table's IPv4 default route.
func (n *Node) defaultRouteLink(bridge string) (string, error) {
	routes, err := linux.RetryDump(func() ([]netlink.Route, error) {
		return n.ns.Netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return "", fmt.Errorf("list routes: %w", err)
	}
	for _, r := range routes {
		if r.Dst != nil && !isDefault(r.Dst) {
			continue
		}
		idx := r.LinkIndex
		if idx == 0 && len(r.MultiPath) > 0 {
			idx = r.MultiPath[0].LinkIndex
		}
		l, err := n.ns.Netlink.LinkByIndex(idx)
		if err != nil {
			return "", fmt.Errorf("link of the default route: %w", err)
		}
		if l.Attrs().Name == bridge {
			return "", fmt.Errorf("bridge %s holds the default route but records no master; set the master explicitly", bridge)
		}
		return l.Attrs().Name, nil
	}
	return "", errors.New("no ipv4 default route to find the master interface; set the master explicitly")
}

func isDefault(dst *net.IPNet) bool {
	ones, _ := dst.Mask.Size()
	return ones == 0
}

// bridgeInfo reads the bridge's addresses and default gateway.
func (n *Node) bridgeInfo(br, master netlink.Link) (BridgeInfo, error) {
	a := br.Attrs()
	info := BridgeInfo{
		Name: a.Name, Index: a.Index, MAC: a.HardwareAddr, MTU: a.MTU,
		Master: master.Attrs().Name, MasterIndex: master.Attrs().Index,
	}
	addrs, err := linux.RetryDump(func() ([]netlink.Addr, error) { return n.ns.Netlink.AddrList(br, netlink.FAMILY_V4) })
	if err != nil {
		return info, fmt.Errorf("addresses of %s: %w", a.Name, err)
	}
	for _, ad := range addrs {
		p, ok := linux.PrefixOf(ad.IPNet)
		if !ok {
			continue
		}
		if ad.Flags&unix.IFA_F_SECONDARY == 0 && !info.PrimaryIP.IsValid() && ad.Scope == unix.RT_SCOPE_UNIVERSE {
			info.PrimaryIP = p.Addr()
			info.Subnet = p.Masked()
			info.Addrs = append([]netip.Prefix{p}, info.Addrs...)
			continue
		}
		info.Addrs = append(info.Addrs, p)
	}
	routes, err := linux.RetryDump(func() ([]netlink.Route, error) {
		return n.ns.Netlink.RouteListFiltered(netlink.FAMILY_V4,
			&netlink.Route{LinkIndex: a.Index, Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return info, fmt.Errorf("routes of %s: %w", a.Name, err)
	}
	for _, r := range routes {
		if (r.Dst == nil || isDefault(r.Dst)) && r.Gw != nil {
			info.Gateway, _ = netip.AddrFromSlice(r.Gw.To4())
			break
		}
	}
	return info, nil
}
