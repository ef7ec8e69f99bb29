package azure0

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/vnet-cni/vnet-cni/bridge/linux"
)

// ErrConflict is wrapped by AddPod's error when an interface of the wanted
// name exists and is not this pod's veth.
var ErrConflict = linux.ErrConflict

// ErrNotReady is wrapped when the node has no bridge or no nftables table
// yet: EnsureNode must run first.
var ErrNotReady = errors.New("node datapath not initialised")

// PodConfig describes one pod attachment.
type PodConfig struct {
	ContainerID string
	// IfName is the interface inside the pod, e.g. "eth0".
	IfName string
	// NetNS is the path of the pod's network namespace.
	NetNS string
	// IP is the pod's address; Subnet gives its prefix length.
	IP      netip.Addr
	Subnet  netip.Prefix
	Gateway netip.Addr
	// Interface is the cloud's ID of the interface that holds IP, recorded
	// on the host veth with the attachment (linux.PodRecord); optional.
	Interface string
	// MTU of both veth ends; 0 means the bridge's.
	MTU int
	// Bridge is the bridge's name; default DefaultBridgeName.
	Bridge string
	// HostVethName overrides linux.HostVethName(ContainerID, IfName); it must
	// start with linux.HostVethPrefix, which the guard table relies on.
	HostVethName string
	// Strict expects the node complete, as vnet-ipamd keeps it: a missing
	// table or set fails with ErrNotReady instead of being worked around
	// one table at a time.
	Strict bool
}

func (c PodConfig) validate() error {
	errs := linux.CheckNames(c.ContainerID, c.IfName, c.NetNS, c.HostVethName)
	if !c.IP.Is4() {
		errs = append(errs, fmt.Errorf("pod ip %s: want ipv4", c.IP))
	}
	if !c.Subnet.IsValid() || !c.Subnet.Contains(c.IP) {
		errs = append(errs, fmt.Errorf("subnet %s does not contain the pod ip %s", c.Subnet, c.IP))
	}
	if !c.Subnet.Contains(c.Gateway) || c.Gateway == c.IP {
		errs = append(errs, fmt.Errorf("gateway %s: want another address of subnet %s", c.Gateway, c.Subnet))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrConfig, errors.Join(errs...))
	}
	return nil
}

// AddPod creates the pod's veth with its pod end directly in the pod
// namespace, the host end a hairpin port of the bridge, configures address,
// link and default route inside the pod, and registers the pod's IP and MAC
// in the nftables tables. Re-adding an identical attachment succeeds; on any
// failure a veth created by this call is removed again.
func (n *Node) AddPod(ctx context.Context, cfg PodConfig) (res linux.PodResult, err error) {
	if err := cfg.validate(); err != nil {
		return res, err
	}
	if cfg.Bridge == "" {
		cfg.Bridge = DefaultBridgeName
	}
	hostName := cfg.HostVethName
	if hostName == "" {
		hostName = linux.HostVethName(cfg.ContainerID, cfg.IfName)
	}
	br, err := n.ns.Netlink.LinkByName(cfg.Bridge)
	if err != nil {
		return res, fmt.Errorf("%w: bridge %s: %w", ErrNotReady, cfg.Bridge, err)
	}
	if br.Type() != "bridge" {
		// Before any veth: a port of something that is not a bridge
		// cannot be made, and EnsureNode says why.
		return res, fmt.Errorf("%w: %s is a %s, not a bridge", ErrNotReady, cfg.Bridge, br.Type())
	}
	mtu := cfg.MTU
	if mtu == 0 {
		mtu = br.Attrs().MTU
	}
	podNS, err := netns.GetFromPath(cfg.NetNS)
	if err != nil {
		return res, fmt.Errorf("open pod netns %s: %w", cfg.NetNS, err)
	}
	defer podNS.Close()
	pnl, err := netlink.NewHandleAt(podNS, unix.NETLINK_ROUTE)
	if err != nil {
		return res, fmt.Errorf("netlink handle in pod netns: %w", err)
	}
	defer pnl.Close()

	host, pod, created, err := n.ns.EnsureVeth(linux.VethSpec{
		HostName: hostName, IfName: cfg.IfName, MasterIndex: br.Attrs().Index, MTU: mtu, IP: cfg.IP,
		ContainerID: cfg.ContainerID, Interface: cfg.Interface,
	}, podNS, pnl)
	if err != nil {
		return res, err
	}
	defer func() {
		if err != nil && created {
			if derr := n.ns.Netlink.LinkDel(host); derr != nil && !linux.IsNotFound(derr) {
				err = errors.Join(err, fmt.Errorf("remove veth %s after failure: %w", hostName, derr))
			}
		}
	}()
	if err := ctx.Err(); err != nil {
		return res, err
	}
	if err := n.ns.Netlink.LinkSetHairpin(host, true); err != nil {
		return res, fmt.Errorf("hairpin on %s: %w", hostName, err)
	}
	if err := linux.ConfigurePod(pnl, pod, netip.PrefixFrom(cfg.IP, cfg.Subnet.Bits()), cfg.Gateway, false); err != nil {
		return res, err
	}
	podMAC := pod.Attrs().HardwareAddr
	if err := n.addPodEntries(ctx, hostName, cfg.IP, podMAC, cfg.Strict); err != nil {
		return res, err
	}
	if err := n.refreshNeighbour(br.Attrs().Index, cfg.IP, podMAC); err != nil {
		return res, err
	}
	return linux.PodResult{
		HostVeth: linux.Link{Name: hostName, Index: host.Attrs().Index, MAC: host.Attrs().HardwareAddr},
		PodIf:    linux.Link{Name: cfg.IfName, Index: pod.Attrs().Index, MAC: podMAC, NetNS: cfg.NetNS},
		IP:       netip.PrefixFrom(cfg.IP, cfg.Subnet.Bits()),
		Gateway:  cfg.Gateway,
	}, nil
}

// addPodPerTableLocked registers the pod in the bridge map and the SNAT set
// one table at a time, each only when the table exists: the fallback of
// addPodEntries when the one transaction over all tables failed.
func (n *Node) addPodPerTableLocked(ip netip.Addr, mac net.HardwareAddr) error {
	bmap, iset, _ := podSets()
	belems, bok, err := n.readPodSet(bmap)
	if err != nil {
		return err
	}
	ielems, iok, err := n.readPodSet(iset)
	if err != nil {
		return err
	}
	if !bok {
		return fmt.Errorf("%w: no nftables map %s %s", ErrNotReady, TableName, podSetName)
	}
	pods := map[netip.Addr]net.HardwareAddr{ip: mac}
	queued := false
	var errs []error
	if have, ok := belems[ip]; !ok || have != mac.String() {
		if ok {
			errs = append(errs, n.ns.NFT.SetDeleteElements(bmap, elements(bmap, nil, []netip.Addr{ip})))
		}
		errs = append(errs, n.ns.NFT.SetAddElements(bmap, elements(bmap, pods, []netip.Addr{ip})))
		queued = true
	}
	if _, ok := ielems[ip]; iok && !ok {
		errs = append(errs, n.ns.NFT.SetAddElements(iset, elements(iset, nil, []netip.Addr{ip})))
		queued = true
	}
	if err := errors.Join(errs...); err != nil {
		return errors.Join(err, n.ns.DiscardBatch())
	}
	if !queued {
		return nil
	}
	if err := n.ns.NFT.Flush(); err != nil {
		return fmt.Errorf("update pod %s in nftables: %w", ip, err)
	}
	return nil
}

// DelPod removes the attachment's veth (both ends) and its nftables
// entries. Missing netns, link or entries are success, so is a repeated
// DelPod. The IP is taken from ref, from what the veth records or from the
// guard set; an address another pod on the node now holds keeps its entries.
func (n *Node) DelPod(ctx context.Context, ref linux.PodRef) error {
	// The nftables entries go first: removing set elements leaves the
	// kernel an RCU grace period of cleanup, which overlaps with the veth
	// deletion instead of being waited for when the plugin closes its
	// nftables socket. The veth goes even when they fail: the guard set
	// still names the address for the retry, while a failed ADD's rollback
	// must not leave the veth.
	return n.ns.DelPodVeth(ref, func(hostName string, ip netip.Addr) error {
		return n.delPodEntries(ctx, hostName, ip)
	})
}

// InspectPod reports what really exists of an attachment, for CHECK. The
// pod side is read only when ref.NetNS is set; the nftables entries only
// when the IP is known (from ref or the host veth).
func (n *Node) InspectPod(_ context.Context, ref linux.PodRef) (linux.PodState, error) {
	var st linux.PodState
	hv, ip, err := n.ns.InspectPodVeth(ref)
	if err != nil {
		return st, err
	}
	st.HostVeth = hv
	if ref.NetNS != "" {
		pst, err := linux.InspectPodSide(ref.NetNS, ref.IfName)
		if err != nil {
			return st, err
		}
		st.PodIf = pst
	}
	if ip.IsValid() {
		bmap, iset, _ := podSets()
		elems, _, err := n.readPodSet(bmap)
		if err != nil {
			return st, err
		}
		if mac, ok := elems[ip]; ok {
			st.RegisteredMAC, _ = net.ParseMAC(mac)
		}
		ielems, _, err := n.readPodSet(iset)
		if err != nil {
			return st, err
		}
		_, st.SNATRegistered = ielems[ip]
	}
	return st, nil
}

// refreshNeighbour sets the node's neighbour entry for the pod's address to
// the pod's MAC, replacing a FAILED entry left by traffic to the address
// while it was unused, which would otherwise hold the first packets back.
func (n *Node) refreshNeighbour(bridgeIndex int, ip netip.Addr, mac net.HardwareAddr) error {
	neigh := &netlink.Neigh{LinkIndex: bridgeIndex, Family: netlink.FAMILY_V4, State: netlink.NUD_STALE,
		IP: ip.AsSlice(), HardwareAddr: mac}
	if err := n.ns.Netlink.NeighSet(neigh); err != nil {
		return fmt.Errorf("node neighbour entry for %s: %w", ip, err)
	}
	return nil
}
