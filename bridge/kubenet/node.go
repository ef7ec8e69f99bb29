// Package kubenet is vnet-cni's kubenet datapath mode: pods take addresses
// from the node's pod CIDR on a local Linux bridge (DefaultBridgeName) whose
// address is the pod CIDR's gateway; the node's NIC stays as it is. A pod
// gets its address with the pod CIDR's prefix length and a default route
// via the gateway; the node routes (IPv4 forwarding) between the bridge and
// its NIC, and translates pod traffic leaving the SNAT exclusions to its
// primary address. Traffic between nodes leaves by the node's default route;
// the cloud's route table brings each pod CIDR to its node.
//
// Two nftables tables named TableName: of family bridge, the guard (a pod
// sends only from its own MAC and address, nothing but IPv4 and ARP, and
// not to the instance metadata service), and of family ip, the SNAT.
//
// ADD uses Prepare and an Attachment; DEL, CHECK and GC a Node. The
// namespace handle, the veths, the pod side and the lock are package
// linux's.
package kubenet

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

// DefaultBridgeName is the bridge's name unless the configuration says
// otherwise.
const DefaultBridgeName = "vnetbr0"

// ErrConfig is wrapped by errors about an invalid configuration.
var ErrConfig = errors.New("invalid datapath configuration")

// ErrNotReady is wrapped when the node lacks the mode's bridge (with the
// pod's gateway) or its guard table: EnsureNode must run first.
var ErrNotReady = errors.New("node datapath not initialised")

// ErrPodCIDRChanged is wrapped (beside linux.ErrModeConflict) when the
// bridge holds another pod CIDR's gateway while pods are attached to it:
// the node's pod CIDR changed under running pods.
var ErrPodCIDRChanged = errors.New("the node's pod cidr changed")

// Options tune how a Node is opened.
type Options struct {
	// LockDir holds the lock files serialising plugin processes; default
	// linux.DefaultLockDir.
	LockDir string
}

// Node is the kubenet-mode datapath of one node network namespace. It is
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

// NodeConfig is the whole wanted datapath of a node.
type NodeConfig struct {
	// Bridge is the bridge's name; default DefaultBridgeName.
	Bridge string
	// Gateway is the bridge's address with the pod CIDR's prefix length
	// (10.244.1.1/24 for the pod CIDR 10.244.1.0/24).
	Gateway netip.Prefix
	// VNetPrefixes is the address space of the virtual network and
	// ClusterCIDR the cluster's pod address space.
	VNetPrefixes []netip.Prefix
	ClusterCIDR  netip.Prefix
	// SNATExclusions are the destinations pods reach with their own
	// address; nil means VNetPrefixes and ClusterCIDR. The node's pod CIDR
	// is always excluded. Everything else from a pod is translated to
	// PrimaryIP.
	SNATExclusions []netip.Prefix
	// DisableSNAT leaves pod traffic untranslated.
	DisableSNAT bool
	// PrimaryIP is the SNAT target; invalid means the first address of the
	// main table's default route's interface.
	PrimaryIP netip.Addr
	// AllowMetadata lets pods reach the instance metadata service.
	AllowMetadata bool
	// MTU of the bridge; 0 leaves it to the kernel (its ports' smallest).
	MTU int
	// Sync also repairs every live kubenet pod veth's bridge membership and
	// guard element, and removes the guard elements of veths that are gone:
	// the daemon's keeper sets it, ADD does not.
	Sync bool
}

func (c NodeConfig) bridgeName() string {
	if c.Bridge == "" {
		return DefaultBridgeName
	}
	return c.Bridge
}

// exclusions are the normalised SNAT exclusions, the pod CIDR included;
// empty when none is configured besides it.
func (c NodeConfig) exclusions() []netip.Prefix {
	ex := c.SNATExclusions
	if ex == nil {
		ex = append([]netip.Prefix(nil), c.VNetPrefixes...)
		if c.ClusterCIDR.IsValid() {
			ex = append(ex, c.ClusterCIDR)
		}
	}
	ex = linux.NormalPrefixes(ex)
	if len(ex) == 0 {
		return nil
	}
	return linux.NormalPrefixes(append(ex, c.Gateway.Masked()))
}

// validGateway checks a bridge address: IPv4, a prefix of /8 to /30 and an
// address inside it that is neither its network nor its broadcast address.
func validGateway(gw netip.Prefix) error {
	if !gw.IsValid() || !gw.Addr().Is4() || gw.Bits() < 8 || gw.Bits() > 30 {
		return fmt.Errorf("gateway %s: want an ipv4 address with the pod cidr's length (/8 to /30)", gw)
	}
	if gw.Addr() == gw.Masked().Addr() || gw.Addr() == lastAddr(gw) {
		return fmt.Errorf("gateway %s: the network or broadcast address of the pod cidr", gw)
	}
	return nil
}

// lastAddr is the broadcast address of an IPv4 prefix.
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// NodeInfo is what EnsureNode reached.
type NodeInfo struct {
	// PrimaryIP is the SNAT target.
	PrimaryIP netip.Addr
	// Changes counts what was changed: the bridge's parts, sysctls aside,
	// nftables changes, ports and elements repaired. 0 when everything was
	// in place.
	Changes int
}

// EnsureNode reconciles the node: the bridge (created, up, with its fixed
// MAC and the gateway address; re-addressed when the pod CIDR changed and
// no pod is attached), IPv4 forwarding, the nftables tables (a rebuilt
// guard gets its elements back from the veths) and with Sync every live
// pod's bridge port and guard element. It refuses a node that runs bridge
// mode (the NIC taken over) or routed mode's pods. When everything is in
// place it only reads, without taking the lock.
func (n *Node) EnsureNode(ctx context.Context, cfg NodeConfig) (NodeInfo, error) {
	var info NodeInfo
	if err := validGateway(cfg.Gateway); err != nil {
		return info, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	exclude := cfg.exclusions()
	if !cfg.DisableSNAT && len(exclude) == 0 {
		return info, fmt.Errorf("%w: snat needs the vnet prefixes, the cluster cidr or explicit exclusions", ErrConfig)
	}
	held, err := n.ns.ReadTables(ownedTables, false)
	if err != nil {
		return info, err
	}
	if cfg.Sync || !held.Has(TableName) {
		// The first set-up of this boot, or the keeper: make sure no other
		// mode runs here.
		if err := n.refuseOthers(); err != nil {
			return info, err
		}
	}
	br, changes, err := n.ensureBridge(ctx, cfg)
	info.Changes += changes
	if err != nil {
		return info, err
	}
	if err := n.ns.EnsureSysctls(NodeSysctls()...); err != nil {
		return info, err
	}
	info.PrimaryIP = cfg.PrimaryIP
	if !info.PrimaryIP.IsValid() && !cfg.DisableSNAT {
		if info.PrimaryIP, err = n.primaryIP(); err != nil {
			return info, err
		}
	}
	spec := nftSpec{
		bridge: cfg.bridgeName(), podCIDR: cfg.Gateway.Masked(), snat: !cfg.DisableSNAT,
		primary: info.PrimaryIP, exclude: exclude, allowMetadata: cfg.AllowMetadata,
	}
	changes, err = n.ns.Reconcile(ctx, ownedTables, n.wantedTables(spec, br.Attrs().Index), held)
	info.Changes += changes
	if err != nil || !cfg.Sync {
		return info, err
	}
	changes, err = n.syncPods(ctx, br)
	info.Changes += changes
	return info, err
}

// refuseOthers fails with linux.ErrModeConflict when bridge mode's bridge
// (a bridge with vnet-cni's alias naming its master) or a pod of another
// mode (bridge mode's record no mode) is on the node.
func (n *Node) refuseOthers() error {
	links, err := linux.RetryDump(n.ns.Netlink.LinkList)
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	for _, l := range links {
		a := l.Attrs()
		if !strings.HasPrefix(a.Alias, linux.AliasPrefix) {
			continue
		}
		if l.Type() == "bridge" && linux.AliasField(a.Alias, "master") != "" {
			return fmt.Errorf("%w: bridge mode's %s has taken over %s; kubenet mode needs a node that has not run bridge mode since its boot (drain and reboot it)",
				linux.ErrModeConflict, a.Name, linux.AliasField(a.Alias, "master"))
		}
		if l.Type() != "veth" || !strings.HasPrefix(a.Name, linux.HostVethPrefix) {
			continue
		}
		if r, ok := linux.ParsePodRecord(a.Alias); ok && r.Mode != linux.ModeKubenet {
			mode := r.Mode
			if mode == "" {
				mode = "bridge"
			}
			return fmt.Errorf("%w: %s-mode pod %s (%s) runs on the node; kubenet mode needs it drained first", linux.ErrModeConflict, mode, r.IP, a.Name)
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
		if isDefault(r.Dst) && r.LinkIndex > 0 {
			l, err := n.ns.Netlink.LinkByIndex(r.LinkIndex)
			if err != nil {
				return nil, fmt.Errorf("link of the default route: %w", err)
			}
			return l, nil
		}
	}
	return nil, errors.New("the node has no ipv4 default route: no primary interface")
}

func isDefault(dst *net.IPNet) bool {
	if dst == nil {
		return true
	}
	ones, _ := dst.Mask.Size()
	return dst.IP.IsUnspecified() && ones == 0
}

// NodeSysctls are the kernel settings kubenet mode needs in the node's
// network namespace; EnsureNode sets them (vnet-ipamd's prepare step too).
func NodeSysctls() []linux.Sysctl {
	return []linux.Sysctl{
		// The node routes between the bridge and its NIC.
		{Key: "net/ipv4/ip_forward", Value: "1"},
		// A pod's reply to a pod on the bridge whose connection the node
		// DNATed (a service address, a hostPort of the chained portmap) is
		// bridged; only br_netfilter hands it to the node's conntrack to be
		// translated back. Without the module it does not exist.
		{Key: "net/bridge/bridge-nf-call-iptables", Value: "1", Optional: true},
	}
}
