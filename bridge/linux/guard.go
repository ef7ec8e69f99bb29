package linux

import (
	"net"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The pod guard of the bridged modes (bridge mode's vnet-cni-guard,
// kubenet mode's vnet-cni-kubenet): a bridge-family chain that drops what a
// pod port sends unless it carries the pod's own MAC (Ethernet source and
// ARP sender) and IPv4 address (IP source and ARP sender), and anything
// but IPv4 and ARP, before the bridge learns, forwards or delivers it:
//
//	set ports { type ifname . ether_addr . ipv4_addr }
//	chain prerouting { type filter hook prerouting priority -350
//	  iifname "vnc*" ether type ip iifname . ether saddr . ip saddr != @ports drop
//	  iifname "vnc*" ether type arp arp htype/ptype/hlen/plen != 1/ip/6/4 drop
//	  iifname "vnc*" ether type arp iifname . ether saddr . arp saddr ip != @ports drop
//	  iifname "vnc*" ether type arp iifname . arp saddr ether . arp saddr ip != @ports drop
//	  iifname "vnc*" ether type != { ip, arp } drop
//	  iifname "vnc*" ether type ip ip daddr 169.254.169.254 drop   # unless allowMetadata
//	}
//
// Only vnet-cni's pod ports (named HostVethPrefix…) are guarded: other
// bridges on the node (docker0, cbr0) and their ports are none of
// vnet-cni's business. (Matching the input port's bridge, meta ibrname,
// needs CONFIG_NFT_BRIDGE_META, which kernels may lack.)

// GuardKey is the concatenated key type of a guard's ports set.
var GuardKey = nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeEtherAddr, nftables.TypeIPAddr)

// Registers of the concatenated key, named as the kernel reports them back:
// the interface name fills NFT_REG_1 (32-bit registers 00..03), the padded
// MAC starts NFT_REG_2 (04..05), the address is NFT_REG32_06.
const (
	guardRegKey  = unix.NFT_REG_1
	guardRegMAC  = unix.NFT_REG_2
	guardRegAddr = unix.NFT_REG32_06
)

// ARPEthIPv4 is the fixed start of an Ethernet/IPv4 ARP packet: hardware
// type 1, protocol 0x0800, address lengths 6 and 4.
var ARPEthIPv4 = []byte{0x00, 0x01, 0x08, 0x00, 0x06, 0x04}

// Offsets of the sender's hardware and protocol address in an
// Ethernet/IPv4 ARP packet.
const (
	ARPSHA = 8
	ARPSPA = 14
)

// GuardPort is one element of a guard's set: a pod's host veth with the
// pod's MAC and address.
type GuardPort struct {
	Name string
	MAC  string
	IP   netip.Addr
}

// Key is the port's set key.
func (p GuardPort) Key() []byte {
	k := make([]byte, unix.IFNAMSIZ, GuardKey.Bytes)
	copy(k, p.Name)
	mac, _ := net.ParseMAC(p.MAC)
	k = append(k, mac...)
	k = append(k, 0, 0)
	return append(k, p.IP.AsSlice()...)
}

// ParseGuardKey is the port of a set key; false when k is not one.
func ParseGuardKey(k []byte) (GuardPort, bool) {
	if len(k) != int(GuardKey.Bytes) {
		return GuardPort{}, false
	}
	name := k[:unix.IFNAMSIZ]
	if i := slices.Index(name, 0); i >= 0 {
		name = name[:i]
	}
	ip, _ := netip.AddrFromSlice(k[24:28])
	return GuardPort{Name: string(name), MAC: net.HardwareAddr(k[16:22]).String(), IP: ip}, true
}

// EtherTypeIs matches the Ethernet type t.
func EtherTypeIs(t uint16) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseLLHeader, Offset: 12, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(t)},
	}
}

// GuardChain is the guard's chain in the bridge-family table t, with the
// ports set named setName; allowMetadata leaves out the metadata rule.
func GuardChain(t *nftables.Table, setName string, allowMetadata bool) Chain {
	accept := nftables.ChainPolicyAccept
	c := Chain{Chain: &nftables.Chain{
		Name: "prerouting", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRef(-350), Policy: &accept,
	}}
	fromPod := FromPod()
	notOwn := func(macLoad, addrLoad *expr.Payload) []expr.Any {
		macLoad.DestRegister, addrLoad.DestRegister = guardRegMAC, guardRegAddr
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: guardRegKey},
			macLoad, addrLoad,
			&expr.Lookup{SourceRegister: guardRegKey, SetName: setName, Invert: true},
			&expr.Verdict{Kind: expr.VerdictDrop},
		}
	}
	etherSrc := func() *expr.Payload {
		return &expr.Payload{Base: expr.PayloadBaseLLHeader, Offset: 6, Len: 6}
	}
	c.Add("from a pod: ipv4 only with the pod's own mac and address",
		fromPod, EtherTypeIs(unix.ETH_P_IP), notOwn(etherSrc(), LoadNet(IPSrc, 4)))
	c.Add("from a pod: only ethernet/ipv4 arp",
		fromPod, EtherTypeIs(unix.ETH_P_ARP),
		LoadNet(0, uint32(len(ARPEthIPv4))), &expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ARPEthIPv4},
		&expr.Verdict{Kind: expr.VerdictDrop})
	c.Add("from a pod: arp only from the pod's own mac and address",
		fromPod, EtherTypeIs(unix.ETH_P_ARP), notOwn(etherSrc(), LoadNet(ARPSPA, 4)))
	c.Add("from a pod: arp only announcing the pod's own mac and address",
		fromPod, EtherTypeIs(unix.ETH_P_ARP), notOwn(LoadNet(ARPSHA, 6), LoadNet(ARPSPA, 4)))
	c.Add("from a pod: nothing but ipv4 and arp",
		fromPod,
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseLLHeader, Offset: 12, Len: 2},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0x08, 0x00}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0x08, 0x06}},
		&expr.Verdict{Kind: expr.VerdictDrop})
	if !allowMetadata {
		c.Add("from a pod: nothing to the instance metadata service",
			fromPod, EtherTypeIs(unix.ETH_P_IP),
			LoadNet(IPDst, 4), &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: MetadataAddr.AsSlice()},
			&expr.Verdict{Kind: expr.VerdictDrop})
	}
	return c
}
