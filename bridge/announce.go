package bridge

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// PodMAC is the MAC of a pod's interface: 0a:58 followed by its IPv4
// address (the convention of kubenet's bridge). Addresses are reused, and
// the node and the pods on the bridge may still remember a pod address's
// earlier owner; with the MAC derived from the address, what they remember
// stays right, so a new pod on a reused address is reachable at once without
// announcing it. Addresses are unique in the VNet, so the MACs are too.
func PodMAC(ip netip.Addr) net.HardwareAddr {
	a := ip.As4()
	return net.HardwareAddr{0x0a, 0x58, a[0], a[1], a[2], a[3]}
}

// refreshNeighbour sets the node's neighbour entry for the pod's address to
// the pod's MAC, replacing a FAILED entry left by traffic to the address
// while it was unused, which would otherwise hold the first packets back.
func (n *Node) refreshNeighbour(bridgeIndex int, ip netip.Addr, mac net.HardwareAddr) error {
	neigh := &netlink.Neigh{LinkIndex: bridgeIndex, Family: netlink.FAMILY_V4, State: netlink.NUD_STALE,
		IP: ip.AsSlice(), HardwareAddr: mac}
	if err := n.nl.NeighSet(neigh); err != nil {
		return fmt.Errorf("node neighbour entry for %s: %w", ip, err)
	}
	return nil
}
