package azure0

import (
	"context"
	"errors"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/vnet-cni/vnet-cni/bridge/linux"
	"github.com/vnet-cni/vnet-cni/internal/nstest"
)

// TestEnsureNodeRefusesRoutedPods: while a routed-mode pod runs on the node,
// bridge mode does not take the NIC over (it would cut the pod off).
func TestEnsureNodeRefusesRoutedPods(t *testing.T) {
	f := newFabric(t, nil)
	nsPath := f.NodeNSPath("node0")
	nl := nstest.Netlink(t, nsPath)
	attrs := netlink.NewLinkAttrs()
	attrs.Name = linux.HostVethPrefix + "routedpod"
	if err := nl.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "rpeer"}); err != nil {
		t.Fatal(err)
	}
	l, err := nl.LinkByName(attrs.Name)
	if err != nil {
		t.Fatal(err)
	}
	ip := netip.MustParseAddr("10.240.0.30")
	rec := linux.PodRecord{IP: ip, MAC: linux.PodMAC(ip), ContainerID: "c1", IfName: "eth0", Mode: linux.ModeRouted}
	if err := nl.LinkSetAlias(l, rec.Alias()); err != nil {
		t.Fatal(err)
	}
	n := openNode(t, nsPath, t.TempDir())
	if _, err := n.EnsureNode(context.Background(), nodeConfig()); !errors.Is(err, linux.ErrModeConflict) {
		t.Fatalf("EnsureNode with a routed pod: %v, want %v", err, linux.ErrModeConflict)
	}
	if _, err := nl.LinkByName(DefaultBridgeName); err == nil {
		t.Errorf("%s exists: the NIC was taken over under a routed pod", DefaultBridgeName)
	}
	// Drained, the node can change its mode.
	if err := nl.LinkDel(l); err != nil {
		t.Fatal(err)
	}
	if _, err := n.EnsureNode(context.Background(), nodeConfig()); err != nil {
		t.Errorf("EnsureNode on the drained node: %v", err)
	}
}
