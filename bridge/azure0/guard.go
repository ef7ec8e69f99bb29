package azure0

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
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

// guardKey is the concatenated key type of the ports set.
var guardKey = nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeEtherAddr, nftables.TypeIPAddr)

// Registers of the concatenated key, named as the kernel reports them back:
// the interface name fills NFT_REG_1 (32-bit registers 00..03), the padded
// MAC starts NFT_REG_2 (04..05), the address is NFT_REG32_06.
const (
	regKey  = unix.NFT_REG_1
	regMAC  = unix.NFT_REG_2
	regAddr = unix.NFT_REG32_06
)

func guardTable() *nftables.Table {
	return &nftables.Table{Name: GuardTableName, Family: nftables.TableFamilyBridge}
}

func guardSet(t *nftables.Table) *nftables.Set {
	return &nftables.Set{Table: t, Name: guardSetName, KeyType: guardKey, Concatenation: true}
}

// guardPort is one element: a pod's host veth with the pod's MAC and IP.
type guardPort struct {
	name string
	mac  string
	ip   netip.Addr
}

func (p guardPort) key() []byte {
	k := make([]byte, 0, guardKey.Bytes)
	name := make([]byte, unix.IFNAMSIZ)
	copy(name, p.name)
	k = append(k, name...)
	mac, _ := net.ParseMAC(p.mac)
	k = append(k, mac...)
	k = append(k, 0, 0)
	return append(k, p.ip.AsSlice()...)
}

func parseGuardKey(k []byte) (guardPort, bool) {
	if len(k) != int(guardKey.Bytes) {
		return guardPort{}, false
	}
	name := k[:unix.IFNAMSIZ]
	if i := slices.Index(name, 0); i >= 0 {
		name = name[:i]
	}
	ip, _ := netip.AddrFromSlice(k[24:28])
	return guardPort{name: string(name), mac: net.HardwareAddr(k[16:22]).String(), ip: ip}, true
}

// buildGuard is the wanted chain of the guard table. Only vnet-cni's pod
// ports (named linux.HostVethPrefix...) are guarded: other bridges on the node
// (docker0, cbr0) and their ports are none of vnet-cni's business. (Matching
// the input port's bridge, meta ibrname, needs CONFIG_NFT_BRIDGE_META, which
// kernels may lack.)
func buildGuard(allowMetadata bool) linux.Chain {
	accept := nftables.ChainPolicyAccept
	c := linux.Chain{Chain: &nftables.Chain{
		Name: chainPrerouting, Table: guardTable(), Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRef(-350), Policy: &accept,
	}}
	fromPod := linux.FromPod()
	notOwn := func(macLoad, addrLoad *expr.Payload) []expr.Any {
		macLoad.DestRegister, addrLoad.DestRegister = regMAC, regAddr
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: regKey},
			macLoad, addrLoad,
			&expr.Lookup{SourceRegister: regKey, SetName: guardSetName, Invert: true},
			&expr.Verdict{Kind: expr.VerdictDrop},
		}
	}
	etherSrc := func() *expr.Payload {
		return &expr.Payload{Base: expr.PayloadBaseLLHeader, Offset: 6, Len: 6}
	}
	c.Add("from a pod: ipv4 only with the pod's own mac and address",
		fromPod, etherTypeIs(etherTypeIP), notOwn(etherSrc(), linux.LoadNet(ipSrc, 4)))
	c.Add("from a pod: only ethernet/ipv4 arp",
		fromPod, etherTypeIs(etherTypeARP),
		linux.LoadNet(0, uint32(len(arpEthIPv4))), &expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: arpEthIPv4},
		&expr.Verdict{Kind: expr.VerdictDrop})
	c.Add("from a pod: arp only from the pod's own mac and address",
		fromPod, etherTypeIs(etherTypeARP), notOwn(etherSrc(), linux.LoadNet(arpSPA, 4)))
	c.Add("from a pod: arp only announcing the pod's own mac and address",
		fromPod, etherTypeIs(etherTypeARP), notOwn(linux.LoadNet(arpSHA, 6), linux.LoadNet(arpSPA, 4)))
	c.Add("from a pod: nothing but ipv4 and arp",
		fromPod,
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseLLHeader, Offset: 12, Len: 2},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0x08, 0x00}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0x08, 0x06}},
		&expr.Verdict{Kind: expr.VerdictDrop})
	if !allowMetadata {
		c.Add("from a pod: nothing to the instance metadata service",
			fromPod, etherTypeIs(etherTypeIP),
			linux.LoadNet(ipDst, 4), &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: MetadataAddr.AsSlice()},
			&expr.Verdict{Kind: expr.VerdictDrop})
	}
	return c
}

// arpSPA is the offset of the sender protocol address in an Ethernet/IPv4 ARP packet.
const arpSPA = 14

// guardWanted is the guard table's wanted state. Its elements are the
// ports', changed by ADD and DEL; when the table is rebuilt without them,
// they are recovered from the aliases of the bridge's veths.
func (n *Node) guardWanted(bridgeIndex int, allowMetadata bool) linux.Table {
	t := guardTable()
	return linux.Table{Table: t, Set: guardSet(t), Chains: []linux.Chain{buildGuard(allowMetadata)},
		Recover: func() ([]nftables.SetElement, error) {
			ports, err := n.guardPortsFromVeths(bridgeIndex)
			if err != nil {
				return nil, err
			}
			elems := make([]nftables.SetElement, 0, len(ports))
			for _, p := range ports {
				elems = append(elems, nftables.SetElement{Key: p.key()})
			}
			return elems, nil
		}}
}

// guardPortsFromVeths lists the pod veths on the bridge with the pod MAC
// and IP their aliases record.
func (n *Node) guardPortsFromVeths(bridgeIndex int) ([]guardPort, error) {
	ports, err := n.ns.PodsOfMaster(bridgeIndex)
	if err != nil {
		return nil, err
	}
	out := make([]guardPort, 0, len(ports))
	for name, p := range ports {
		out = append(out, guardPort{name: name, mac: p.MAC.String(), ip: p.IP})
	}
	return out, nil
}

// addGuardLocked replaces the elements of the port's veth name by port, in
// its own transaction. A missing guard table is no error: EnsureNode
// creates it with the veths' elements.
func (n *Node) addGuardLocked(port guardPort) error {
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
		p, ok := parseGuardKey(e.Key)
		if !ok || p.name != port.name {
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
		errs = append(errs, n.ns.NFT.SetAddElements(s, []nftables.SetElement{{Key: port.key()}}))
	}
	if err := errors.Join(errs...); err != nil {
		return errors.Join(err, n.ns.DiscardBatch())
	}
	if err := n.ns.NFT.Flush(); err != nil {
		return fmt.Errorf("update the guard of %s: %w", port.name, err)
	}
	return nil
}
