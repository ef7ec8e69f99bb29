package azure0

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/vnet-cni/vnet-cni/internal/nsnet"
	"github.com/vnet-cni/vnet-cni/internal/nstest"
)

// TestOtherBridgeUntouched: another bridge on the node (docker0, cbr0) and
// its ports keep working with vnet-cni's tables in place, pods included.
func TestOtherBridgeUntouched(t *testing.T) {
	f := newFabric(t, nil)
	ctx := context.Background()
	nodeNS := f.NodeNSPath("node0")
	n := openNode(t, nodeNS, t.TempDir())
	if _, err := n.EnsureNode(ctx, nodeConfig()); err != nil {
		t.Fatal(err)
	}
	addPod(t, n, f.prefix, "pod", netip.MustParseAddr("10.240.0.10"), 0)

	// A docker0-like bridge with one container behind a veth "xhost".
	other := nstest.NewNS(t, f.prefix+"-ctr")
	otherHandle, err := netns.GetFromPath(other)
	if err != nil {
		t.Fatal(err)
	}
	defer otherHandle.Close()
	if err := nsnet.Do(nodeNS, func() error {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "cbr0"}}
		if err := netlink.LinkAdd(br); err != nil {
			return err
		}
		if err := netlink.AddrAdd(br, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(10, 99, 0, 1), Mask: net.CIDRMask(24, 32)}}); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(br); err != nil {
			return err
		}
		attrs := netlink.NewLinkAttrs()
		attrs.Name, attrs.MasterIndex, attrs.Flags = "xhost", br.Attrs().Index, net.FlagUp
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(otherHandle))})
	}); err != nil {
		t.Fatal(err)
	}
	if err := nsnet.Do(other, func() error {
		ctrIf, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(ctrIf, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(10, 99, 0, 2), Mask: net.CIDRMask(24, 32)}}); err != nil {
			return err
		}
		return netlink.LinkSetUp(ctrIf)
	}); err != nil {
		t.Fatal(err)
	}
	dst := nstest.ListenTCP(t, nodeNS, netip.MustParseAddrPort("10.99.0.1:7000"))
	if err := nsnet.Eventually(3*time.Second, func() error {
		_, err := nsnet.DialTCP(ctx, other, netip.Addr{}, dst, 500*time.Millisecond)
		return err
	}); err != nil {
		t.Fatalf("a container on another bridge cannot reach its node: %v", err)
	}
}
