package azure0

import (
	"net"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/vnet-cni/vnet-cni/bridge/linux"
)

// TableName is the name of both tables owned by vnet-cni: one of family
// bridge (MAC and ARP handling towards the fabric) and one of family ip
// (SNAT).
const TableName = "vnet-cni"

// podSetName is the name of the set of pod addresses in both tables: a map
// ipv4_addr : ether_addr in the bridge table, a plain set in the ip table.
const podSetName = "pods"

// Chain names.
const (
	chainPrerouting  = "prerouting"
	chainPostrouting = "postrouting"
	chainForward     = "forward"
)

// nftSpec is everything the rules depend on, except the pods (which are
// set elements, changed without touching the rules).
type nftSpec struct {
	master    string
	masterMAC net.HardwareAddr
	bridgeMAC net.HardwareAddr
	nodeIPs   []netip.Addr // the bridge's addresses
	primary   netip.Addr   // SNAT target
	snat      bool
	exclude   []netip.Prefix // destinations never masqueraded; sorted, masked
	// allowMetadata lets pods reach the instance metadata service
	// (MetadataAddr); by default the guard drops their packets to it.
	allowMetadata bool
}

// podSet is a table's set of pod addresses: a map to the pods' MACs in the
// bridge table (isMap), a plain set in the ip table.
func podSet(t *nftables.Table, isMap bool) *nftables.Set {
	s := &nftables.Set{Table: t, Name: podSetName, KeyType: nftables.TypeIPAddr}
	if isMap {
		s.IsMap = true
		s.DataType = nftables.TypeEtherAddr
	}
	return s
}

// mainTables are the bridge and the ip tables named TableName.
func mainTables() (bt, it *nftables.Table) {
	return &nftables.Table{Name: TableName, Family: nftables.TableFamilyBridge},
		&nftables.Table{Name: TableName, Family: nftables.TableFamilyIPv4}
}

// Protocol numbers and offsets used below.
const (
	etherTypeIP  = unix.ETH_P_IP
	etherTypeARP = unix.ETH_P_ARP

	arpRequest = 1
	arpReply   = 2

	// Offsets in an Ethernet/IPv4 ARP packet.
	arpSHA = linux.ARPSHA
	arpTHA = 18
	arpTPA = 24

	ipSrc = linux.IPSrc
	ipDst = linux.IPDst
)

// arpEthIPv4 is the fixed start of an Ethernet/IPv4 ARP packet.
var arpEthIPv4 = linux.ARPEthIPv4

// buildTables computes the wanted tables. In nft syntax, with eth0 as the
// master and 02:00:00:00:00:01 as its (and the bridge's) MAC:
//
//	table bridge vnet-cni {
//	  map pods { type ipv4_addr : ether_addr }
//	  chain prerouting { type filter hook prerouting priority -300
//	    # fabric -> pod: the fabric sends pod traffic to the NIC's MAC
//	    iifname eth0 ether type ip ether daddr set ip daddr map @pods meta pkttype set other-host
//	    # ARP replies to a pod's request (asked with the NIC's MAC) go to that pod
//	    iifname eth0 arp operation reply ether daddr set arp daddr ip map @pods arp daddr ether set (same) meta pkttype set other-host
//	    # with SNAT: pod traffic leaving the VNet is handed to the node's IP stack
//	    iifname != eth0 ether type ip ether daddr & 01:.. == 0 ip saddr @pods ip daddr != { exclusions } ether daddr set 02:00:00:00:00:01 meta pkttype set host
//	  }
//	  chain postrouting { type filter hook postrouting priority 300
//	    # pods asking for the node's own address: the node answers, the fabric need not
//	    oifname eth0 ether saddr != 02:00:00:00:00:01 arp operation request arp daddr ip <node ip> drop
//	    # ARP for a pod of this node is answered on the bridge
//	    oifname eth0 arp operation request arp daddr ip @pods drop
//	    # the fabric accepts only the NIC's MAC
//	    oifname eth0 ether saddr set 02:00:00:00:00:01
//	    oifname eth0 arp saddr ether set 02:00:00:00:00:01
//	  }
//	  chain forward { type filter hook forward priority 0
//	    # eth0 is in hairpin mode (see Node.hairpin): back to the fabric
//	    # only what the fabric sent to the node itself and br_netfilter
//	    # bridged on after a DNAT to an address behind the fabric
//	    iifname eth0 oifname eth0 meta pkttype host accept
//	    iifname eth0 oifname eth0 drop
//	  }
//	}
//	table ip vnet-cni {            # only with SNAT
//	  set pods { type ipv4_addr }
//	  chain postrouting { type nat hook postrouting priority 100
//	    ip saddr @pods ip daddr != { exclusions } snat to <primary>
//	  }
//	}
func buildTables(s nftSpec) []linux.Table {
	accept := nftables.ChainPolicyAccept
	bt, it := mainTables()
	fromMaster := linux.IfnameIs(expr.MetaKeyIIFNAME, s.master, true)
	toMaster := linux.IfnameIs(expr.MetaKeyOIFNAME, s.master, true)

	pre := linux.Chain{Chain: &nftables.Chain{
		Name: chainPrerouting, Table: bt, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRef(-300), Policy: &accept,
	}}
	pre.Add("fabric to pod: destination mac of the pod owning the ip",
		fromMaster, linux.EtherTypeIs(etherTypeIP),
		linux.LoadNet(ipDst, 4), lookupMAC(),
		writeLL(0), setPktType(unix.PACKET_OTHERHOST))
	pre.Add("arp reply from the fabric to the asking pod",
		fromMaster, arpOp(arpReply),
		linux.LoadNet(arpTPA, 4), lookupMAC(),
		writeLL(0), writeNet(arpTHA, 6), setPktType(unix.PACKET_OTHERHOST))
	if s.snat {
		pre.Add("pod to outside the vnet: route through the node for snat",
			linux.IfnameIs(expr.MetaKeyIIFNAME, s.master, false), linux.EtherTypeIs(etherTypeIP),
			// unicast destinations only
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseLLHeader, Offset: 0, Len: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{0x01}, Xor: []byte{0x00}},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0x00}},
			linux.LoadNet(ipSrc, 4), &expr.Lookup{SourceRegister: 1, SetName: podSetName},
			linux.NotInPrefixes(s.exclude),
			&expr.Immediate{Register: 1, Data: s.bridgeMAC}, writeLL(0),
			setPktType(unix.PACKET_HOST))
	}

	post := linux.Chain{Chain: &nftables.Chain{
		Name: chainPostrouting, Table: bt, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityRef(300), Policy: &accept,
	}}
	// The bridge postrouting hook has no input interface, so pods' frames
	// are told from the node's own by their source MAC (the node's is the
	// NIC's, rewritten only by the rules below).
	for _, ip := range s.nodeIPs {
		post.Add("arp from pods for the node's address "+ip.String()+" is answered by the node",
			toMaster,
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseLLHeader, Offset: 6, Len: 6},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: s.masterMAC},
			arpOp(arpRequest),
			linux.LoadNet(arpTPA, 4), &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ip.AsSlice()},
			&expr.Verdict{Kind: expr.VerdictDrop})
	}
	post.Add("arp for a pod of this node is answered on the bridge",
		toMaster, arpOp(arpRequest),
		linux.LoadNet(arpTPA, 4), &expr.Lookup{SourceRegister: 1, SetName: podSetName},
		&expr.Verdict{Kind: expr.VerdictDrop})
	post.Add("to the fabric: source mac of the nic",
		toMaster, &expr.Immediate{Register: 1, Data: s.masterMAC}, writeLL(6))
	post.Add("to the fabric: arp sender mac of the nic",
		toMaster, isARP(), &expr.Immediate{Register: 1, Data: s.masterMAC}, writeNet(arpSHA, 6))

	// With br_netfilter, a connection from the fabric that the node DNATs
	// to an address behind the fabric (kube-proxy: a NodePort whose
	// endpoint is another node's pod; and its replies, de-masqueraded)
	// is bridged back out of eth0 ("bridged DNAT"); the rules above still
	// give it the NIC's source MAC. Such a frame came addressed to the
	// NIC's MAC and keeps packet type host, which no frame the bridge
	// forwards otherwise has: floods, broadcasts and unknown unicast are
	// dropped. (Conntrack's dnat status would say the same, but ct in the
	// bridge family needs nf_conntrack_bridge, which kernels may lack.)
	fwd := linux.Chain{Chain: &nftables.Chain{
		Name: chainForward, Table: bt, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityRef(0), Policy: &accept,
	}}
	fwd.Add("back to the fabric: what came to the node and was dnat-ed to an address behind the fabric",
		fromMaster, toMaster,
		&expr.Meta{Key: expr.MetaKeyPKTTYPE, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.PACKET_HOST}},
		&expr.Verdict{Kind: expr.VerdictAccept})
	fwd.Add("back to the fabric: nothing else is reflected",
		fromMaster, toMaster, &expr.Verdict{Kind: expr.VerdictDrop})

	tables := []linux.Table{{Table: bt, Set: podSet(bt, true), Chains: []linux.Chain{pre, post, fwd}}}
	if !s.snat {
		return tables
	}

	nat := linux.Chain{Chain: &nftables.Chain{
		Name: chainPostrouting, Table: it, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept,
	}}
	nat.Add("pod to outside the vnet: snat to the node's primary ip",
		linux.LoadNet(ipSrc, 4), &expr.Lookup{SourceRegister: 1, SetName: podSetName},
		linux.NotInPrefixes(s.exclude),
		&expr.Immediate{Register: 1, Data: s.primary.AsSlice()},
		&expr.NAT{Type: expr.NATTypeSourceNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegAddrMax: 1})
	return append(tables, linux.Table{Table: it, Set: podSet(it, false), Chains: []linux.Chain{nat}})
}

// lookupMAC replaces the address in register 1 by the pod's MAC; no match
// ends the rule.
func lookupMAC() expr.Any {
	return &expr.Lookup{SourceRegister: 1, DestRegister: 1, IsDestRegSet: true, SetName: podSetName}
}

// isARP matches Ethernet/IPv4 ARP.
func isARP() []expr.Any {
	return linux.Flatten([]any{linux.EtherTypeIs(etherTypeARP),
		linux.LoadNet(0, uint32(len(arpEthIPv4))),
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: arpEthIPv4}})
}

func arpOp(op uint16) []expr.Any {
	return linux.Flatten([]any{isARP(),
		linux.LoadNet(6, 2),
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(op)}})
}

func writeLL(off uint32) *expr.Payload {
	return &expr.Payload{OperationType: expr.PayloadWrite, SourceRegister: 1, Base: expr.PayloadBaseLLHeader, Offset: off, Len: 6}
}

func writeNet(off, n uint32) *expr.Payload {
	return &expr.Payload{OperationType: expr.PayloadWrite, SourceRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n}
}

func setPktType(t uint8) []expr.Any {
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: []byte{t}},
		&expr.Meta{Key: expr.MetaKeyPKTTYPE, SourceRegister: true, Register: 1},
	}
}
