// Package azure0 is vnet-cni's bridge mode: the azure0 bridge that takes
// over the node's NIC, the pod veths as its ports, and three nftables tables
// that make pod traffic acceptable to the cloud fabric (a bridge-family
// rewrite of MACs and ARP), masquerade pod traffic leaving the virtual
// network (ip family) and keep pods from using another pod's identity (the
// guard). The namespace handle, the veths, the pod side and the lock are
// package linux's.
//
// ADD uses Prepare and an Attachment; DEL, CHECK and GC a Node.
package azure0

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vnet-cni/vnet-cni/bridge/linux"
)

// Options tune how a Node is opened.
type Options struct {
	// LockDir holds the lock files serialising plugin processes; default
	// linux.DefaultLockDir.
	LockDir string
}

// Node is the bridge-mode datapath of one node network namespace. A Node is
// not safe for concurrent use; goroutines that need parallelism open one
// Node each, and their changes are then serialised by the node lock exactly
// like those of separate plugin processes.
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
// not claim: what a failed or interrupted ADD left without an address
// assignment, for GC to remove with DelPod.
func (n *Node) StrayVeths(keep func(hostName string) bool) ([]string, error) {
	return n.ns.StrayVeths(keep)
}

// NodeConfig is the whole wanted datapath of a node.
type NodeConfig struct {
	Bridge BridgeConfig
	// VNetPrefixes is the address space of the virtual network.
	VNetPrefixes []netip.Prefix
	// SNATExclusions are the destinations that pods reach with their own
	// address; nil means VNetPrefixes. Everything else is masqueraded to
	// the node's primary IP.
	SNATExclusions []netip.Prefix
	// DisableSNAT leaves pod traffic untranslated (and removes the ip table).
	DisableSNAT bool
	// AllowMetadata lets pods reach the instance metadata service
	// (MetadataAddr), which the guard table refuses them by default.
	AllowMetadata bool
	// Pods maps pod addresses to the MACs of their interfaces. Unless
	// SyncPods is set they are added to the pods already registered; with
	// SyncPods they are the complete list and the others are removed.
	Pods     map[netip.Addr]net.HardwareAddr
	SyncPods bool
}

// NodeInfo is what EnsureNode reached.
type NodeInfo struct {
	Bridge BridgeInfo
	// NFTChanges counts the nftables changes made: tables rebuilt and set
	// elements added or removed. 0 when everything was in place.
	NFTChanges int
	// BridgeChanged is true when the bridge was not complete and was set
	// up (created, taken over, repaired).
	BridgeChanged bool
}

// ErrConfig is wrapped by errors about an invalid configuration.
var ErrConfig = errors.New("invalid datapath configuration")

// EnsureNode reconciles the node: the bridge (see EnsureBridge), IPv4
// forwarding when SNAT is on, and the nftables tables, rebuilt in one
// transaction when a chain, rule or set differs from the wanted one and
// otherwise only corrected element by element. When everything is in place
// it only reads, without taking the lock; the plugin calls it on every ADD.
func (n *Node) EnsureNode(ctx context.Context, cfg NodeConfig) (NodeInfo, error) {
	exclude := cfg.SNATExclusions
	if exclude == nil {
		exclude = cfg.VNetPrefixes
	}
	exclude = linux.NormalPrefixes(exclude)
	if !cfg.DisableSNAT && len(exclude) == 0 {
		return NodeInfo{}, fmt.Errorf("%w: snat needs the vnet prefixes or explicit exclusions", ErrConfig)
	}
	for ip, mac := range cfg.Pods {
		if !ip.Is4() || len(mac) != 6 {
			return NodeInfo{}, fmt.Errorf("%w: pod %s with mac %s: want an ipv4 address and an ethernet mac", ErrConfig, ip, mac)
		}
	}
	// The nftables read does not depend on the bridge: overlap the two.
	// The pods' elements only matter when pods are given (or the given
	// ones are the complete list); otherwise an intact set is enough, and
	// a table that needs rebuilding is read again, in full, under the lock.
	var held linux.Tables
	var heldErr error
	fetched := make(chan struct{})
	go func() {
		defer close(fetched)
		held, heldErr = n.ns.ReadTables(ownedTables, len(cfg.Pods) > 0 || cfg.SyncPods)
	}()
	br, changed, err := n.ensureBridge(ctx, cfg.Bridge)
	<-fetched
	if err != nil {
		return NodeInfo{}, err
	}
	if heldErr != nil {
		return NodeInfo{Bridge: br}, heldErr
	}
	info := NodeInfo{Bridge: br, BridgeChanged: changed}
	if !br.PrimaryIP.IsValid() && !cfg.DisableSNAT {
		return info, fmt.Errorf("bridge %s has no primary ipv4 address to masquerade to", br.Name)
	}
	if err := n.ns.EnsureSysctls(NodeSysctls(cfg)...); err != nil {
		return info, err
	}
	spec := nftSpec{
		master:    br.Master,
		masterMAC: br.MAC, // pinned to the master's
		bridgeMAC: br.MAC,
		primary:   br.PrimaryIP,
		snat:      !cfg.DisableSNAT,
		exclude:   exclude,

		allowMetadata: cfg.AllowMetadata,
	}
	for _, p := range br.Addrs {
		spec.nodeIPs = append(spec.nodeIPs, p.Addr())
	}
	info.NFTChanges, err = n.reconcileTables(ctx, spec, held, cfg.Pods, cfg.SyncPods, br.Index)
	return info, err
}

// Watch reports changes that others make to the node's datapath: the
// tables, the bridge, the uplink (see linux.NS.Watch). The watch keeps
// sockets of its own; the Node may be closed after Watch returns.
func (n *Node) Watch(ctx context.Context) (<-chan struct{}, error) {
	return n.ns.Watch(ctx, ownedTables)
}

// NodeSysctls are the kernel settings bridge mode needs in the node's
// network namespace; EnsureNode sets them (vnet-ipamd's prepare step too,
// for a daemon whose /proc/sys is read-only).
func NodeSysctls(cfg NodeConfig) []linux.Sysctl {
	// A pod's reply to a VNet peer is bridged straight to the fabric; when
	// the connection was DNATed by the node (a hostPort of the chained
	// portmap, a service address) only br_netfilter hands the bridged
	// frame to the node's conntrack, which translates the reply back.
	// The setting is per namespace and a node may have it off; without
	// the br_netfilter module it does not exist and is skipped.
	want := []linux.Sysctl{{Key: "net/bridge/bridge-nf-call-iptables", Value: "1", Optional: true}}
	if !cfg.DisableSNAT {
		// Pod traffic leaving the VNet is routed by the node (see the
		// snat rule in buildTables).
		want = append(want, linux.Sysctl{Key: "net/ipv4/ip_forward", Value: "1"})
	}
	return want
}
