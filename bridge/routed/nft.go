package routed

import (
	"context"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/vnet-cni/vnet-cni/bridge/linux"
)

// TableName is routed mode's one nftables table, of family inet:
//
//	table inet vnet-cni-routed {
//	  set ports { type ifname . ipv4_addr }
//	  chain prerouting { type filter hook prerouting priority -300
//	    iifname "vnc*" meta nfproto != ipv4 drop
//	    iifname "vnc*" iifname . ip saddr != @ports drop
//	    iifname "vnc*" ip daddr 169.254.169.254 drop      # unless AllowMetadata
//	  }
//	  chain postrouting { type nat hook postrouting priority srcnat   # with SNAT
//	    iifname "vnc*" meta nfproto ipv4 ip daddr != { exclusions } snat ip to <primary>
//	  }
//	}
//
// Each pod's host veth has one element of ports, its name and the pod's
// address, added by AddPod and removed by DelPod: a pod sends only from its
// own address (the fabric would accept every address of the node's NIC),
// and nothing but IPv4. The guard runs before conntrack, so a spoofed
// packet leaves no connection behind. The metadata rule keeps pods from the
// node's identity (see package azure0's guard). Only vnet-cni's pod veths
// (named linux.HostVethPrefix…) are matched; the node's own traffic and
// other interfaces are untouched.
const TableName = "vnet-cni-routed"

// ownedTables are the names of the tables of every mode: a routed node
// deletes those that bridge mode left on a drained node.
var ownedTables = linux.OwnedTables()

const portsSetName = "ports"

// portKey is the concatenated key type of the ports set.
var portKey = nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeIPAddr)

// Registers of the concatenated key as the kernel reports them back: the
// interface name fills NFT_REG_1 (32-bit registers 00..03), the address
// NFT_REG32_04, reported as NFT_REG_2.
const (
	regKey  = unix.NFT_REG_1
	regAddr = unix.NFT_REG_2
)

func table() *nftables.Table {
	return &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}
}

func portsSet() *nftables.Set {
	return &nftables.Set{Table: table(), Name: portsSetName, KeyType: portKey, Concatenation: true}
}

// nftSpec is everything the rules depend on.
type nftSpec struct {
	snat          bool
	primary       netip.Addr
	exclude       []netip.Prefix // sorted, masked
	allowMetadata bool
}

// port is one element: a pod's host veth and the pod's address.
type port struct {
	name string
	ip   netip.Addr
}

func (p port) key() []byte {
	k := make([]byte, unix.IFNAMSIZ, portKey.Bytes)
	copy(k, p.name)
	return append(k, p.ip.AsSlice()...)
}

func parsePortKey(k []byte) (port, bool) {
	if len(k) != int(portKey.Bytes) {
		return port{}, false
	}
	name := k[:unix.IFNAMSIZ]
	if i := slices.Index(name, 0); i >= 0 {
		name = name[:i]
	}
	ip, _ := netip.AddrFromSlice(k[unix.IFNAMSIZ:])
	return port{name: string(name), ip: ip}, true
}

func isIPv4(eq bool) []expr.Any {
	op := expr.CmpOpEq
	if !eq {
		op = expr.CmpOpNeq
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
	}
}

// buildTable is the wanted table's chains.
func buildTable(s nftSpec) []linux.Chain {
	accept := nftables.ChainPolicyAccept
	t := table()
	pre := linux.Chain{Chain: &nftables.Chain{
		Name: "prerouting", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRef(-300), Policy: &accept,
	}}
	fromPod := linux.FromPod()
	pre.Add("from a pod: nothing but ipv4", fromPod, isIPv4(false), &expr.Verdict{Kind: expr.VerdictDrop})
	pre.Add("from a pod: only the pod's own address",
		fromPod,
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: regKey},
		&expr.Payload{DestRegister: regAddr, Base: expr.PayloadBaseNetworkHeader, Offset: linux.IPSrc, Len: 4},
		&expr.Lookup{SourceRegister: regKey, SetName: portsSetName, Invert: true},
		&expr.Verdict{Kind: expr.VerdictDrop})
	if !s.allowMetadata {
		pre.Add("from a pod: nothing to the instance metadata service",
			fromPod, linux.LoadNet(linux.IPDst, 4),
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: linux.MetadataAddr.AsSlice()},
			&expr.Verdict{Kind: expr.VerdictDrop})
	}
	chains := []linux.Chain{pre}
	if !s.snat {
		return chains
	}
	nat := linux.Chain{Chain: &nftables.Chain{
		Name: "postrouting", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept,
	}}
	nat.Add("pod to outside the vnet: snat to the node's primary ip",
		fromPod, isIPv4(true), linux.NotInPrefixes(s.exclude),
		&expr.Immediate{Register: 1, Data: s.primary.AsSlice()},
		&expr.NAT{Type: expr.NATTypeSourceNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegAddrMax: 1})
	return append(chains, nat)
}

// wantedTable is the table's wanted state; a rebuilt table gets its ports
// back from the routed veths' aliases.
func (n *Node) wantedTable(s nftSpec) linux.Table {
	return linux.Table{Table: table(), Set: portsSet(), Chains: buildTable(s),
		Recover: func() ([]nftables.SetElement, error) {
			pods, err := n.routedVeths()
			if err != nil {
				return nil, err
			}
			elems := make([]nftables.SetElement, 0, len(pods))
			for _, v := range pods {
				elems = append(elems, nftables.SetElement{Key: port{name: v.Name, ip: v.Record.IP}.key()})
			}
			return elems, nil
		}}
}

// routedVeths lists the node's routed-mode pod veths.
func (n *Node) routedVeths() ([]linux.PodVeth, error) {
	veths, err := n.ns.PodVeths()
	if err != nil {
		return nil, err
	}
	out := veths[:0]
	for _, v := range veths {
		if v.Record.Mode == linux.ModeRouted && v.MasterIndex == 0 {
			out = append(out, v)
		}
	}
	return out, nil
}

// addPort registers the pod's port (see linux.NS.AddPort). A missing table
// is ErrNotReady.
func (n *Node) addPort(ctx context.Context, p port) error {
	return n.ns.AddPort(ctx, portsSet(), p.name, p.key(), ErrNotReady)
}

// delPorts removes the elements of the port name and returns the address
// they named (ip when valid) and whether another port holds that address
// (a late DEL of an address a new pod on the node holds now).
func (n *Node) delPorts(ctx context.Context, name string, ip netip.Addr) (netip.Addr, bool, error) {
	return n.ns.DelPorts(ctx, portsSet(), name, ip, func(k []byte) (string, netip.Addr, bool) {
		p, ok := parsePortKey(k)
		return p.name, p.ip, ok
	})
}

// hasPort reports whether the set holds the port.
func (n *Node) hasPort(p port) (bool, error) {
	elems, _, err := n.ns.ReadSet(portsSet())
	if err != nil {
		return false, err
	}
	return slices.ContainsFunc(elems, func(e nftables.SetElement) bool {
		q, ok := parsePortKey(e.Key)
		return ok && q == p
	}), nil
}
