// Package routed is vnet-cni's routed datapath mode (Azure CNI's
// "transparent" mode, the AWS VPC CNI's datapath): no bridge, the node keeps
// its NICs as they are. A pod gets its address as a /32 with a default
// route via a link-local gateway (GatewayIP) that a permanent neighbour
// entry resolves to its host veth's MAC; the node routes to the pod by a
// /32 route on the host veth. An address on a non-primary interface (an
// AWS ENI) is policy-routed out of that interface: a routing table per
// interface (device index + 1) with a default route via its subnet's
// gateway, and per pod the rules `to <pod> lookup main` (priority 512) and
// `from <pod> lookup <table>` (1536). One nftables table guards the pods'
// source addresses, keeps them from the instance metadata service and
// translates their traffic leaving the virtual network.
//
// ADD uses Prepare and an Attachment; DEL, CHECK and GC a Node. The
// namespace handle, the veths, the pod side and the lock are package
// linux's.
package routed

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vnet-cni/vnet-cni/bridge/linux"
)

// GatewayIP is the pods' default gateway: a link-local address that no
// interface holds, resolved in the pod by a permanent neighbour entry to
// the MAC of the pod's host veth.
var GatewayIP = netip.AddrFrom4([4]byte{169, 254, 1, 1})

// Rule priorities of the policy routing, the AWS VPC CNI's: traffic to a
// pod is routed by the main table before any rule sends a pod's own
// traffic to its interface's table.
const (
	PriorityToPod   = 512
	PriorityFromPod = 1536
)

// ErrConfig is wrapped by errors about an invalid configuration.
var ErrConfig = errors.New("invalid datapath configuration")

// ErrNotReady is wrapped when the node lacks the mode's nftables table:
// EnsureNode must run first.
var ErrNotReady = errors.New("node datapath not initialised")

// ErrUplinkMissing is wrapped when the non-primary interface that holds a
// pod's address does not appear in the node within the pod's UplinkWait:
// the cloud attached it, the node has not shown it (yet). A retry of the
// ADD may succeed.
var ErrUplinkMissing = errors.New("the pod's interface is not in the node")

// DefaultUplinkWait is how long AddPod waits for a pod's non-primary
// interface to appear in the node (the simulated EC2 shows an attached
// ENI's link about 150 ms after the attachment completes).
const DefaultUplinkWait = 3 * time.Second

// Options tune how a Node is opened.
type Options struct {
	// LockDir holds the lock files serialising plugin processes; default
	// linux.DefaultLockDir.
	LockDir string
}

// Node is the routed-mode datapath of one node network namespace. It is
// not safe for concurrent use; goroutines that need parallelism open one
// Node each, serialised by the node lock like separate plugin processes.
type Node struct {
	ns *linux.NS
}

// Open binds a Node to the network namespace at nsPath, or to the calling
// thread's namespace when nsPath is empty. Close releases it.
func Open(nsPath string, opts Options) (*Node, error) {
	ns, err := linux.Open(nsPath, opts.LockDir)
	if err != nil {
		return nil, err
	}
	return &Node{ns: ns}, nil
}

// Close releases the node's sockets and namespace handle.
func (n *Node) Close() error { return n.ns.Close() }

// StrayVeths lists vnet-cni's pod veths on the node whose names keep does
// not claim, for GC to remove with DelPod.
func (n *Node) StrayVeths(keep func(hostName string) bool) ([]string, error) {
	return n.ns.StrayVeths(keep)
}

// Watch reports changes that others make to the node's tables and links
// (see linux.NS.Watch).
func (n *Node) Watch(ctx context.Context) (<-chan struct{}, error) {
	return n.ns.Watch(ctx, ownedTables)
}

// Uplink is a node interface that holds pod addresses, as the cloud
// describes it: found in the node by its MAC.
type Uplink struct {
	// ID is the cloud's ID of the interface (recorded on pods' veths).
	ID  string
	MAC net.HardwareAddr
	// DeviceIndex is its position on the instance, 0 for the primary.
	DeviceIndex int
	// Gateway is its subnet's router.
	Gateway netip.Addr
}

// Table is the routing table of the interface's pods: main for the
// primary, device index + 1 for the others.
func (u Uplink) Table() int {
	if u.DeviceIndex == 0 {
		return unix.RT_TABLE_MAIN
	}
	return u.DeviceIndex + 1
}

// policyRouted reports whether the interface's pods need policy routing.
func (u Uplink) policyRouted() bool { return u.DeviceIndex > 0 }

// NodeConfig is the whole wanted datapath of a node.
type NodeConfig struct {
	// VNetPrefixes is the address space of the virtual network.
	VNetPrefixes []netip.Prefix
	// SNATExclusions are the destinations pods reach with their own
	// address; nil means VNetPrefixes. Everything else from a pod is
	// translated to PrimaryIP.
	SNATExclusions []netip.Prefix
	// DisableSNAT leaves pod traffic untranslated.
	DisableSNAT bool
	// PrimaryIP is the SNAT target and the source of the node's traffic to
	// its pods; invalid means the first address of the
	// main table's default route's interface.
	PrimaryIP netip.Addr
	// AllowMetadata lets pods reach the instance metadata service.
	AllowMetadata bool
	// Uplinks are the node's interfaces that hold pod addresses; each
	// non-primary one present in the node gets its routing table.
	Uplinks []Uplink
	// Sync also repairs every live pod's route and policy rules from the
	// veths (their interface found among Uplinks) and removes the rules of
	// pods that are gone: the daemon's keeper sets it, ADD does not.
	Sync bool
}

// exclusions are the normalised SNAT exclusions.
func (c NodeConfig) exclusions() []netip.Prefix {
	if c.SNATExclusions != nil {
		return linux.NormalPrefixes(c.SNATExclusions)
	}
	return linux.NormalPrefixes(c.VNetPrefixes)
}

// RuleDestinations are the destinations of a policy-routed pod's rule:
// with SNAT, only the exclusions (traffic to the rest is translated to the
// primary address, so it leaves by the main table through the primary
// interface, as with the AWS VPC CNI); without SNAT, everything (nil).
func (c NodeConfig) RuleDestinations() []netip.Prefix {
	if c.DisableSNAT {
		return nil
	}
	return c.exclusions()
}

// NodeInfo is what EnsureNode reached.
type NodeInfo struct {
	// PrimaryIP is the SNAT target.
	PrimaryIP netip.Addr
	// Changes counts what was changed: nftables changes, sysctls, routes
	// and rules added or removed. 0 when everything was in place.
	Changes int
}

// EnsureNode reconciles the node: IPv4 forwarding, the nftables table (a
// rebuilt table gets its elements back from the veths), the routing table
// of every non-primary uplink, and with Sync the routes and rules of every
// live pod. It refuses a node whose NIC bridge mode has taken over. When
// everything is in place it only reads, without taking the lock.
func (n *Node) EnsureNode(ctx context.Context, cfg NodeConfig) (NodeInfo, error) {
	var info NodeInfo
	exclude := cfg.exclusions()
	if !cfg.DisableSNAT && len(exclude) == 0 {
		return info, fmt.Errorf("%w: snat needs the vnet prefixes or explicit exclusions", ErrConfig)
	}
	held, err := n.ns.ReadTables(ownedTables, false)
	if err != nil {
		return info, err
	}
	if cfg.Sync || !held.Has(TableName) {
		// The first set-up of this boot, or the keeper: make sure no
		// other mode runs here.
		if err := n.refuseBridge(); err != nil {
			return info, err
		}
	}
	if err := n.ns.EnsureSysctls(NodeSysctls()...); err != nil {
		return info, err
	}
	info.PrimaryIP = cfg.PrimaryIP
	if !info.PrimaryIP.IsValid() {
		// Without SNAT the address is only the source of the node's own
		// traffic to its pods: the kernel's choice then.
		if info.PrimaryIP, err = n.primaryIP(); err != nil && !cfg.DisableSNAT {
			return info, err
		}
	}
	spec := nftSpec{snat: !cfg.DisableSNAT, primary: info.PrimaryIP, exclude: exclude, allowMetadata: cfg.AllowMetadata}
	changes, err := n.ns.Reconcile(ctx, ownedTables, []linux.Table{n.wantedTable(spec)}, held)
	info.Changes += changes
	if err != nil {
		return info, err
	}
	links, err := n.uplinkLinks(cfg.Uplinks)
	if err != nil {
		return info, err
	}
	changes, err = n.ensureUplinkTables(links)
	info.Changes += changes
	if err != nil || !cfg.Sync {
		return info, err
	}
	changes, err = n.syncPods(links, cfg.RuleDestinations(), info.PrimaryIP)
	info.Changes += changes
	return info, err
}

// refuseBridge fails with linux.ErrModeConflict when a bridge of bridge
// mode (a bridge with vnet-cni's alias naming its master) exists: routed
// mode cannot run beside the NIC's takeover, and undoing it under running
// pods would cut them off. So it does when kubenet mode's bridge or a
// kubenet pod is on the node (routed mode would delete its table).
func (n *Node) refuseBridge() error {
	links, err := linux.RetryDump(n.ns.Netlink.LinkList)
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	for _, l := range links {
		a := l.Attrs()
		if l.Type() == "bridge" && strings.HasPrefix(a.Alias, linux.AliasPrefix) && linux.AliasField(a.Alias, "master") != "" {
			return fmt.Errorf("%w: bridge mode's %s has taken over %s; routed mode needs a node that has not run bridge mode since its boot (drain and reboot it)",
				linux.ErrModeConflict, a.Name, linux.AliasField(a.Alias, "master"))
		}
		if l.Type() == "bridge" && strings.HasPrefix(a.Alias, linux.AliasPrefix) && linux.AliasField(a.Alias, "mode") == linux.ModeKubenet {
			return fmt.Errorf("%w: kubenet mode's bridge %s exists; routed mode needs the node drained and the bridge deleted (or a reboot)",
				linux.ErrModeConflict, a.Name)
		}
		if r, ok := linux.ParsePodRecord(a.Alias); ok && r.Mode == linux.ModeKubenet && l.Type() == "veth" {
			return fmt.Errorf("%w: kubenet-mode pod %s (%s) runs on the node; routed mode needs it drained first", linux.ErrModeConflict, r.IP, a.Name)
		}
	}
	return nil
}

// primaryIP is the first IPv4 address of the interface of the main
// table's default route: the node's primary address.
func (n *Node) primaryIP() (netip.Addr, error) {
	dev, err := n.defaultDevice()
	if err != nil {
		return netip.Addr{}, err
	}
	addrs, err := linux.RetryDump(func() ([]netlink.Addr, error) { return n.ns.Netlink.AddrList(dev, netlink.FAMILY_V4) })
	if err != nil {
		return netip.Addr{}, fmt.Errorf("addresses of %s: %w", dev.Attrs().Name, err)
	}
	for _, a := range addrs {
		if p, ok := linux.PrefixOf(a.IPNet); ok && a.Flags&unix.IFA_F_SECONDARY == 0 {
			return p.Addr(), nil
		}
	}
	return netip.Addr{}, fmt.Errorf("%s has no ipv4 address to masquerade pods to", dev.Attrs().Name)
}

// defaultDevice is the interface of the main table's IPv4 default route.
func (n *Node) defaultDevice() (netlink.Link, error) {
	routes, err := linux.RetryDump(func() ([]netlink.Route, error) {
		return n.ns.Netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	for _, r := range routes {
		if (r.Dst == nil || (r.Dst.IP.IsUnspecified() && maskBits(r.Dst) == 0)) && r.LinkIndex > 0 {
			l, err := n.ns.Netlink.LinkByIndex(r.LinkIndex)
			if err != nil {
				return nil, fmt.Errorf("link of the default route: %w", err)
			}
			return l, nil
		}
	}
	return nil, errors.New("the node has no ipv4 default route: no primary interface")
}

func maskBits(n *net.IPNet) int {
	ones, _ := n.Mask.Size()
	return ones
}

// NodeSysctls are the kernel settings routed mode needs in the node's
// network namespace; EnsureNode sets them (vnet-ipamd's prepare step too).
func NodeSysctls() []linux.Sysctl {
	return []linux.Sysctl{{Key: "net/ipv4/ip_forward", Value: "1"}}
}
