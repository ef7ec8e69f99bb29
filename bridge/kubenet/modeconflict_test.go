package kubenet

import (
	"context"
	"errors"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/vnet-cni/vnet-cni/bridge/azure0"
	"github.com/vnet-cni/vnet-cni/bridge/linux"
	"github.com/vnet-cni/vnet-cni/bridge/routed"
	"github.com/vnet-cni/vnet-cni/internal/nstest"
)

// fakePodVeth is a pod veth recorded for mode (the other end stays in the
// node): what another mode's ADD leaves on the node.
func fakePodVeth(t *testing.T, nodeNS, mode string) netlink.Link {
	t.Helper()
	nl := nstest.Netlink(t, nodeNS)
	attrs := netlink.NewLinkAttrs()
	attrs.Name = linux.HostVethPrefix + "otherpod"
	if err := nl.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "opeer"}); err != nil {
		t.Fatal(err)
	}
	l, err := nl.LinkByName(attrs.Name)
	if err != nil {
		t.Fatal(err)
	}
	ip := netip.MustParseAddr("10.240.0.30")
	rec := linux.PodRecord{IP: ip, MAC: linux.PodMAC(ip), ContainerID: "c1", IfName: "eth0", Mode: mode}
	if err := nl.LinkSetAlias(l, rec.Alias()); err != nil {
		t.Fatal(err)
	}
	return l
}

// TestKubenetRefusesOtherModes: a routed or bridge-mode pod, or bridge
// mode's takeover bridge, keeps kubenet mode off the node; drained, it
// comes up.
func TestKubenetRefusesOtherModes(t *testing.T) {
	for _, mode := range []string{linux.ModeRouted, ""} {
		t.Run("pod of mode "+mode, func(t *testing.T) {
			tp := newTopo(t)
			l := fakePodVeth(t, tp.node, mode)
			n := openNode(t, tp.node)
			if _, err := n.EnsureNode(context.Background(), nodeConfig()); !errors.Is(err, linux.ErrModeConflict) {
				t.Fatalf("ensure beside the pod: %v, want %v", err, linux.ErrModeConflict)
			}
			nl := nstest.Netlink(t, tp.node)
			if _, err := nl.LinkByName(DefaultBridgeName); err == nil {
				t.Errorf("%s was created beside another mode's pod", DefaultBridgeName)
			}
			if err := nl.LinkDel(l); err != nil {
				t.Fatal(err)
			}
			if _, err := n.EnsureNode(context.Background(), nodeConfig()); err != nil {
				t.Errorf("ensure on the drained node: %v", err)
			}
		})
	}
	t.Run("bridge mode's takeover", func(t *testing.T) {
		tp := newTopo(t)
		nl := nstest.Netlink(t, tp.node)
		attrs := netlink.NewLinkAttrs()
		attrs.Name = "azure0"
		if err := nl.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil {
			t.Fatal(err)
		}
		br, err := nl.LinkByName("azure0")
		if err != nil {
			t.Fatal(err)
		}
		if err := nl.LinkSetAlias(br, linux.Alias("master", "eth0")); err != nil {
			t.Fatal(err)
		}
		n := openNode(t, tp.node)
		if _, err := n.EnsureNode(context.Background(), nodeConfig()); !errors.Is(err, linux.ErrModeConflict) {
			t.Fatalf("ensure beside bridge mode: %v, want %v", err, linux.ErrModeConflict)
		}
	})
}

// TestOtherModesRefuseKubenet: routed and bridge mode refuse a node with
// kubenet's bridge and pods and leave its tables alone.
func TestOtherModesRefuseKubenet(t *testing.T) {
	tp := newTopo(t)
	ctx := context.Background()
	n := openNode(t, tp.node)
	if _, err := n.EnsureNode(ctx, nodeConfig()); err != nil {
		t.Fatal(err)
	}
	nsA, _ := addPod(t, n, tp, "pa", netip.MustParseAddr("10.244.1.10"))
	lockDir := t.TempDir()

	r, err := routed.Open(tp.node, routed.Options{LockDir: lockDir})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := r.EnsureNode(ctx, routed.NodeConfig{VNetPrefixes: []netip.Prefix{vnetPrefix}}); !errors.Is(err, linux.ErrModeConflict) {
		t.Errorf("routed beside kubenet: %v, want %v", err, linux.ErrModeConflict)
	}
	b, err := azure0.Open(tp.node, azure0.Options{LockDir: lockDir})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := b.EnsureNode(ctx, azure0.NodeConfig{VNetPrefixes: []netip.Prefix{vnetPrefix}}); !errors.Is(err, linux.ErrModeConflict) {
		t.Errorf("bridge mode beside kubenet: %v, want %v", err, linux.ErrModeConflict)
	}
	if _, err := nstest.Netlink(t, tp.node).LinkByName(azure0.DefaultBridgeName); err == nil {
		t.Errorf("bridge mode took the NIC over beside kubenet")
	}
	// Kubenet is intact: its tables, its pod's traffic.
	if info, err := n.EnsureNode(ctx, nodeConfig()); err != nil || info.Changes != 0 {
		t.Errorf("kubenet after the refusals: %+v, %v; want nothing to repair", info, err)
	}
	if got, err := dial(nsA, netip.Addr{}, internetIP); err != nil || got != "out saw "+nodeIP.String() {
		t.Errorf("the pod after the refusals: %q, %v", got, err)
	}
	// The bridge alone (a drained node) still keeps them off.
	if err := n.DelPod(ctx, ref(tp, "pa", nsA, netip.Addr{})); err != nil {
		t.Fatal(err)
	}
	if _, err := r.EnsureNode(ctx, routed.NodeConfig{VNetPrefixes: []netip.Prefix{vnetPrefix}}); !errors.Is(err, linux.ErrModeConflict) {
		t.Errorf("routed beside the kubenet bridge: %v, want %v", err, linux.ErrModeConflict)
	}
}

// TestAttachment: Prepare and Complete set the node up and add the pod with
// the address manager's pod CIDR and gateway; Abort removes the pod.
func TestAttachment(t *testing.T) {
	tp := newTopo(t)
	ctx := context.Background()
	ns := nstest.NewNS(t, tp.prefix+"-pa")
	opts := Options{LockDir: t.TempDir()}
	req := AttachRequest{ContainerID: tp.prefix + "-pa", IfName: "eth0", NetNS: ns,
		VNetPrefixes: []netip.Prefix{vnetPrefix}, ClusterCIDR: clusterCIDR}
	ip := netip.MustParseAddr("10.244.1.10")
	addr := linux.Address{IP: ip, Subnet: gateway.Masked(), Gateway: gateway.Addr(), VNetPrefixes: req.VNetPrefixes}
	for i := range 2 { // the first sets the node up, the second finds it
		a := Prepare(ctx, tp.node, opts, req)
		res, err := a.Complete(ctx, addr)
		if err != nil {
			t.Fatalf("complete %d: %v", i, err)
		}
		if res.IP != netip.PrefixFrom(ip, 24) || res.Gateway != gateway.Addr() {
			t.Errorf("result %s via %s", res.IP, res.Gateway)
		}
		if i == 1 {
			serve(t, ns, "pa")
			if got, err := dial(ns, netip.Addr{}, internetIP); err != nil || got != "out saw "+nodeIP.String() {
				t.Errorf("the attached pod to the internet: %q, %v", got, err)
			}
			if err := a.Abort(ctx); err != nil {
				t.Errorf("abort: %v", err)
			}
		}
		if err := a.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := nstest.Netlink(t, tp.node).LinkByName(linux.HostVethName(req.ContainerID, req.IfName)); err == nil {
		t.Error("abort left the veth")
	}
	// Managed: ADD sets up a node the daemon has not set up yet.
	tp2 := newTopo(t)
	ns2 := nstest.NewNS(t, tp2.prefix+"-pb")
	req2 := AttachRequest{ContainerID: tp2.prefix + "-pb", IfName: "eth0", NetNS: ns2, VNetPrefixes: req.VNetPrefixes, ClusterCIDR: clusterCIDR, Managed: true}
	a := Prepare(ctx, tp2.node, opts, req2)
	defer a.Close()
	if _, err := a.Complete(ctx, addr); err != nil {
		t.Fatalf("managed complete on a bare node: %v", err)
	}
}
