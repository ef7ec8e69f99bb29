package linux

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// HostVethPrefix starts the name of every pod veth vnet-cni creates; a
// mode's tables may recognise pod ports by it.
const HostVethPrefix = "vnc"

// HostVethName is the host-side veth name of an attachment: stable, unique
// per (container, interface) and at most 15 characters.
func HostVethName(containerID, ifName string) string {
	sum := sha256.Sum256([]byte(containerID + "/" + ifName))
	return HostVethPrefix + hex.EncodeToString(sum[:6])
}

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

// Veth is a pod's pair as vnet-cni creates it: the host end up (and a port
// of masterIndex unless 0), the pod end (down) directly in the pod
// namespace, both with the MTU. A nil podMAC leaves the pod end's MAC to the
// kernel.
func Veth(hostName, ifName string, masterIndex, mtu int, podNS netns.NsHandle, podMAC net.HardwareAddr) *netlink.Veth {
	attrs := netlink.NewLinkAttrs()
	attrs.Name = hostName
	attrs.MTU = mtu
	attrs.Flags = net.FlagUp
	attrs.MasterIndex = masterIndex
	return &netlink.Veth{
		LinkAttrs:        attrs,
		PeerName:         ifName,
		PeerHardwareAddr: podMAC,
		PeerNamespace:    netlink.NsFd(int(podNS)),
		PeerMTU:          uint32(mtu),
	}
}

// SamePair checks that host and pod are the two ends of one veth made for
// ip (or not yet recorded for any pod).
func SamePair(host, pod netlink.Link, ip netip.Addr) error {
	h, p := host.Attrs(), pod.Attrs()
	if host.Type() != "veth" || pod.Type() != "veth" {
		return fmt.Errorf("%s (%s) and %s (%s) are not a veth pair", h.Name, host.Type(), p.Name, pod.Type())
	}
	if h.ParentIndex != p.Index || p.ParentIndex != h.Index {
		return fmt.Errorf("%s and %s exist but are not peers", h.Name, p.Name)
	}
	// No alias: an earlier ADD stopped right after creating the pair.
	if aip, _, ok := ParsePodAlias(h.Alias); h.Alias != "" && (!ok || aip != ip) {
		return fmt.Errorf("%s exists for another attachment (alias %q)", h.Name, h.Alias)
	}
	return nil
}

// StrayVeths lists vnet-cni's pod veths (named HostVethPrefix…) in the
// namespace whose names keep does not claim: what a failed or interrupted
// ADD left without an address assignment.
func (n *NS) StrayVeths(keep func(hostName string) bool) ([]string, error) {
	links, err := RetryDump(n.Netlink.LinkList)
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

// PodsOfMaster reads the pods (address and MAC) that the aliases of the
// master's ports record, by port name.
func (n *NS) PodsOfMaster(masterIndex int) (map[string]Pod, error) {
	links, err := RetryDump(n.Netlink.LinkList)
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	out := make(map[string]Pod)
	for _, l := range links {
		a := l.Attrs()
		if a.MasterIndex != masterIndex {
			continue
		}
		if ip, mac, ok := ParsePodAlias(a.Alias); ok {
			out[a.Name] = Pod{IP: ip, MAC: mac}
		}
	}
	return out, nil
}

// Pod is a pod's address and the MAC of its interface.
type Pod struct {
	IP  netip.Addr
	MAC net.HardwareAddr
}
