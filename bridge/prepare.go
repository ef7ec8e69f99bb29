package bridge

import (
	"fmt"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// VethRequest names a pod's veth before its address is known.
type VethRequest struct {
	ContainerID string
	IfName      string
	// NetNS is the path of the pod's network namespace.
	NetNS string
	// MTU of both ends; 0 means the bridge's.
	MTU int
	// Bridge is the bridge's name; default DefaultBridgeName.
	Bridge string
}

// PrepareVeth creates a pod's veth pair ahead of its address, so that the
// kernel's work of creating it (about 0.8 ms here, most of it waiting in the
// kernel) overlaps the allocation: the host end up and enslaved to the
// bridge, the pod end down in the pod namespace (no carrier, so no frame
// passes), without address, alias or final MAC. AddPod then finds the
// pair, gives the pod end its MAC and completes it like the pair an
// interrupted ADD left behind. nodeNS is the node's namespace path ("" is
// the caller's).
//
// It creates nothing and returns false when the bridge does not exist yet
// (the node's first pod) or when the name is taken (a repeated ADD, a
// conflicting interface): AddPod then does all the work and reports any
// conflict. A prepared pair that is not completed is removed by DelPod like
// any pod veth.
func PrepareVeth(nodeNS string, req VethRequest) (bool, error) {
	if req.Bridge == "" {
		req.Bridge = DefaultBridgeName
	}
	h, err := openNodeNS(nodeNS)
	if err != nil {
		return false, err
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		return false, fmt.Errorf("netlink handle in node netns: %w", err)
	}
	defer nl.Close()
	br, err := nl.LinkByName(req.Bridge)
	if err != nil {
		if isNotFound(err) {
			return false, nil
		}
		return false, fmt.Errorf("bridge %s: %w", req.Bridge, err)
	}
	podNS, err := netns.GetFromPath(req.NetNS)
	if err != nil {
		return false, fmt.Errorf("open pod netns %s: %w", req.NetNS, err)
	}
	defer podNS.Close()
	mtu := req.MTU
	if mtu == 0 {
		mtu = br.Attrs().MTU
	}
	if err := nl.LinkAdd(podVeth(HostVethName(req.ContainerID, req.IfName), req.IfName, br.Attrs().Index, mtu, podNS, nil)); err != nil {
		// Whatever the reason, AddPod will meet it again and say what it is.
		return false, nil
	}
	return true, nil
}

// StrayVeths lists vnet-cni's pod veths (named HostVethPrefix…) on the node
// whose names keep does not claim: what a failed or interrupted ADD left
// without an address assignment, for GC to remove with DelPod.
func (n *Node) StrayVeths(keep func(hostName string) bool) ([]string, error) {
	links, err := retryDump(n.nl.LinkList)
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var out []string
	for _, l := range links {
		name := l.Attrs().Name
		if l.Type() == "veth" && strings.HasPrefix(name, HostVethPrefix) && !keep(name) {
			out = append(out, name)
		}
	}
	return out, nil
}
