package main

import (
	"context"
	"encoding/hex"
	"errors"
	"net/netip"

	"github.com/vnet-cni/vnet-cni/bridge/azure0"
	"github.com/vnet-cni/vnet-cni/bridge/routed"
	"github.com/vnet-cni/vnet-cni/cloud"
	"github.com/vnet-cni/vnet-cni/ipamd/daemon"
)

// bridgeDatapath is bridge mode's node datapath as the daemon keeps it: the
// same EnsureNode the plugin runs, with the configuration the daemon writes
// into the conflist, so the two never disagree about the wanted state. The
// daemon runs inside the node's network namespace and takes the plugins'
// node lock (lockDir) for every change.
type bridgeDatapath struct {
	lockDir       string
	allowMetadata bool
	// snatExclusions are the configuration's (nil: the VNet's space), as
	// the plugin gets them from the conflist.
	snatExclusions []netip.Prefix
	// node is opened on first use and again after an error; the daemon's
	// keeper is its only user.
	node *azure0.Node
}

var _ daemon.Datapath = (*bridgeDatapath)(nil)

func (b *bridgeDatapath) open() (*azure0.Node, error) {
	if b.node != nil {
		return b.node, nil
	}
	n, err := azure0.Open("", azure0.Options{LockDir: b.lockDir})
	if err != nil {
		return nil, err
	}
	b.node = n
	return n, nil
}

// Ensure sets up or repairs the bridge and the tables for the instance's
// address space.
func (b *bridgeDatapath) Ensure(ctx context.Context, inst cloud.Instance) (int, error) {
	n, err := b.open()
	if err != nil {
		return 0, err
	}
	info, err := n.EnsureNode(ctx, azure0.NodeConfig{
		VNetPrefixes: inst.NetworkPrefixes, SNATExclusions: b.snatExclusions, AllowMetadata: b.allowMetadata,
	})
	if err != nil {
		// Sockets may be what broke: start afresh next time.
		err = errors.Join(err, n.Close())
		b.node = nil
		return 0, err
	}
	changes := info.NFTChanges
	if info.BridgeChanged {
		changes++
	}
	return changes, nil
}

// Watch reports changes to the bridge, the uplink and the tables.
func (b *bridgeDatapath) Watch(ctx context.Context) (<-chan struct{}, error) {
	n, err := azure0.Open("", azure0.Options{LockDir: b.lockDir})
	if err != nil {
		return nil, err
	}
	// The watch keeps its own sockets; the handle is not needed after.
	ch, err := n.Watch(ctx)
	return ch, errors.Join(err, n.Close())
}

// routedDatapath is routed mode's node datapath as the daemon keeps it:
// the routed EnsureNode with the conflist's settings and the instance's
// interfaces, in Sync mode (every live pod's route and policy rules
// repaired, the rules of pods that are gone removed).
type routedDatapath struct {
	lockDir        string
	allowMetadata  bool
	snatExclusions []netip.Prefix
	node           *routed.Node
}

var _ daemon.Datapath = (*routedDatapath)(nil)

// Ensure sets up or repairs the node for the instance's network.
func (r *routedDatapath) Ensure(ctx context.Context, inst cloud.Instance) (int, error) {
	if r.node == nil {
		n, err := routed.Open("", routed.Options{LockDir: r.lockDir})
		if err != nil {
			return 0, err
		}
		r.node = n
	}
	cfg := routed.NodeConfig{
		VNetPrefixes: inst.NetworkPrefixes, SNATExclusions: r.snatExclusions, AllowMetadata: r.allowMetadata, Sync: true,
	}
	for _, ifc := range inst.Interfaces {
		mac, err := hex.DecodeString(ifc.MAC)
		if err != nil || len(mac) != 6 {
			continue
		}
		if ifc.Primary {
			cfg.PrimaryIP = ifc.PrimaryIP
		}
		cfg.Uplinks = append(cfg.Uplinks, routed.Uplink{ID: ifc.ID, MAC: mac, DeviceIndex: ifc.DeviceIndex, Gateway: ifc.Gateway})
	}
	info, err := r.node.EnsureNode(ctx, cfg)
	if err != nil {
		err = errors.Join(err, r.node.Close())
		r.node = nil
		return 0, err
	}
	return info.Changes, nil
}

// Watch reports changes to the links and the table.
func (r *routedDatapath) Watch(ctx context.Context) (<-chan struct{}, error) {
	n, err := routed.Open("", routed.Options{LockDir: r.lockDir})
	if err != nil {
		return nil, err
	}
	ch, err := n.Watch(ctx)
	return ch, errors.Join(err, n.Close())
}
