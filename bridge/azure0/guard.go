package azure0

import (
	"errors"
	"fmt"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"

	"github.com/vnet-cni/vnet-cni/bridge/linux"
)

// GuardTableName is the bridge-family table that keeps pods from using
// another pod's identity: a frame a pod sends must carry the pod's own MAC
// (Ethernet source and ARP sender) and the pod's own IPv4 address (IP source
// and ARP sender); anything else from a pod port, IPv6 and VLAN tags
// included, is dropped before the bridge learns or forwards it. Without it
// a pod could take over another pod's address on the node (the fabric
// accepts every address of the NIC) and poison the bridge's forwarding
// table with another pod's MAC.
//
//	table bridge vnet-cni-guard {
//	  set ports { type ifname . ether_addr . ipv4_addr }
//	  chain prerouting { type filter hook prerouting priority -350
//	    iifname "vnc*" ether type ip iifname . ether saddr . ip saddr != @ports drop
//	    iifname "vnc*" ether type arp arp htype/ptype/hlen/plen != 1/ip/6/4 drop
//	    iifname "vnc*" ether type arp iifname . ether saddr . arp saddr ip != @ports drop
//	    iifname "vnc*" ether type arp iifname . arp saddr ether . arp saddr ip != @ports drop
//	    iifname "vnc*" ether type != { ip, arp } drop
//	    iifname "vnc*" ip daddr 169.254.169.254 drop   # unless AllowMetadata
//	  }
//	}
//
// Each pod's host veth has one element (its name, the pod's MAC and IP),
// added by AddPod and removed by DelPod. The table is reconciled by
// EnsureNode like the main tables; when it is rebuilt, the elements are
// recovered from the veths' aliases.
//
// The last rule keeps pods away from the instance metadata service: on Azure
// it hands the node's managed-identity token to whoever asks from the node,
// and a pod's packet to it would otherwise be routed by the node (see the
// SNAT rule of the bridge table) and leave with the node's address. The node
// itself and host-network pods do not cross a pod port and are unaffected.
const GuardTableName = "vnet-cni-guard"

// MetadataAddr is the instance metadata service's address on Azure and AWS
// alike.
var MetadataAddr = linux.MetadataAddr

const guardSetName = "ports"

func guardTable() *nftables.Table {
	return &nftables.Table{Name: GuardTableName, Family: nftables.TableFamilyBridge}
}

func guardSet(t *nftables.Table) *nftables.Set {
	return &nftables.Set{Table: t, Name: guardSetName, KeyType: linux.GuardKey, Concatenation: true}
}

// guardWanted is the guard table's wanted state. Its elements are the
// ports', changed by ADD and DEL; when the table is rebuilt without them,
// they are recovered from the aliases of the bridge's veths.
func (n *Node) guardWanted(bridgeIndex int, allowMetadata bool) linux.Table {
	t := guardTable()
	return linux.Table{Table: t, Set: guardSet(t), Chains: []linux.Chain{linux.GuardChain(t, guardSetName, allowMetadata)},
		Recover: func() ([]nftables.SetElement, error) {
			ports, err := n.guardPortsFromVeths(bridgeIndex)
			if err != nil {
				return nil, err
			}
			elems := make([]nftables.SetElement, 0, len(ports))
			for _, p := range ports {
				elems = append(elems, nftables.SetElement{Key: p.Key()})
			}
			return elems, nil
		}}
}

// guardPortsFromVeths lists the pod veths on the bridge with the pod MAC
// and IP their aliases record.
func (n *Node) guardPortsFromVeths(bridgeIndex int) ([]linux.GuardPort, error) {
	ports, err := n.ns.PodsOfMaster(bridgeIndex)
	if err != nil {
		return nil, err
	}
	out := make([]linux.GuardPort, 0, len(ports))
	for name, p := range ports {
		out = append(out, linux.GuardPort{Name: name, MAC: p.MAC.String(), IP: p.IP})
	}
	return out, nil
}

// addGuardLocked replaces the elements of the port's veth name by port, in
// its own transaction. A missing guard table is no error: EnsureNode
// creates it with the veths' elements.
func (n *Node) addGuardLocked(port linux.GuardPort) error {
	s := guardSet(guardTable())
	elems, err := n.ns.NFT.GetSetElements(s)
	if errors.Is(err, unix.ENOENT) {
		// Without its guard a pod could use another pod's identity.
		return fmt.Errorf("%w: no nftables set %s %s", ErrNotReady, GuardTableName, guardSetName)
	}
	if err != nil {
		return fmt.Errorf("list elements of %s %s: %w", GuardTableName, guardSetName, err)
	}
	var del []nftables.SetElement
	have := false
	for _, e := range elems {
		p, ok := linux.ParseGuardKey(e.Key)
		if !ok || p.Name != port.Name {
			continue
		}
		if p == port {
			have = true
			continue
		}
		del = append(del, nftables.SetElement{Key: e.Key})
	}
	if len(del) == 0 && have {
		return nil
	}
	var errs []error
	if len(del) > 0 {
		errs = append(errs, n.ns.NFT.SetDeleteElements(s, del))
	}
	if !have {
		errs = append(errs, n.ns.NFT.SetAddElements(s, []nftables.SetElement{{Key: port.Key()}}))
	}
	if err := errors.Join(errs...); err != nil {
		return errors.Join(err, n.ns.DiscardBatch())
	}
	if err := n.ns.NFT.Flush(); err != nil {
		return fmt.Errorf("update the guard of %s: %w", port.Name, err)
	}
	return nil
}
