package kubenet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vnet-cni/vnet-cni/bridge/linux"
)

// TableName is the name of kubenet mode's two nftables tables, of family
// bridge (the guard) and of family ip (the SNAT):
//
//	table bridge vnet-cni-kubenet {
//	  set ports { type ifname . ether_addr . ipv4_addr }
//	  chain prerouting { type filter hook prerouting priority -350
//	    iifname "vnc*" ether type ip iifname . ether saddr . ip saddr != @ports drop
//	    iifname "vnc*" ether type arp arp htype/ptype/hlen/plen != 1/ip/6/4 drop
//	    iifname "vnc*" ether type arp iifname . ether saddr . arp saddr ip != @ports drop
//	    iifname "vnc*" ether type arp iifname . arp saddr ether . arp saddr ip != @ports drop
//	    iifname "vnc*" ether type != { ip, arp } drop
//	    iifname "vnc*" ether type ip ip daddr 169.254.169.254 drop   # unless AllowMetadata
//	  }
//	}
//	table ip vnet-cni-kubenet {            # only with SNAT
//	  chain postrouting { type nat hook postrouting priority srcnat
//	    ip saddr <pod cidr> oifname != <bridge> ip daddr != { exclusions } snat to <primary>
//	  }
//	}
//
// Each pod's host veth, a port of the bridge, has one element of ports
// (its name, the pod's MAC and address), added by AddPod and removed by
// DelPod: a pod sends only with its own MAC and address, to the bridge's
// other ports (pod to pod is bridged, no IP hook sees it) as to the node,
// and cannot poison the bridge's forwarding table or the neighbours'
// caches with another pod's identity. The guard runs before the bridge
// learns, forwards or delivers the frame. The metadata rule keeps pods from
// the node's identity. Only vnet-cni's pod ports (named
// linux.HostVethPrefix…) are matched. When the guard is rebuilt its
// elements are recovered from the kubenet veths' records. The SNAT table
// translates what pods send beyond the exclusions (the pod CIDR always
// among them) and leaves pod-to-pod traffic bridged by br_netfilter alone.
// Neither table touches the chained portmap plugin's own tables.
const TableName = "vnet-cni-kubenet"

// ownedTables are the names of the tables of every mode: a kubenet node
// deletes those another mode left on a drained node.
var ownedTables = linux.OwnedTables()

const portsSetName = "ports"

// portKey is the concatenated key type of the ports set.
var portKey = nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeEtherAddr, nftables.TypeIPAddr)

// Registers of the concatenated key, as the kernel reports them back: the
// interface name fills NFT_REG_1 (32-bit registers 00..03), the padded MAC
// starts NFT_REG_2 (04..05), the address is NFT_REG32_06.
const (
	regKey  = unix.NFT_REG_1
	regMAC  = unix.NFT_REG_2
	regAddr = unix.NFT_REG32_06
)

// Ethernet/IPv4 ARP: the fixed start (hardware type 1, protocol 0x0800,
// address lengths 6 and 4) and the sender's hardware and protocol address.
var arpEthIPv4 = []byte{0x00, 0x01, 0x08, 0x00, 0x06, 0x04}

const (
	arpSHA = 8
	arpSPA = 14
)

func guardTable() *nftables.Table {
	return &nftables.Table{Name: TableName, Family: nftables.TableFamilyBridge}
}

func natTable() *nftables.Table {
	return &nftables.Table{Name: TableName, Family: nftables.TableFamilyIPv4}
}

func portsSet() *nftables.Set {
	return &nftables.Set{Table: guardTable(), Name: portsSetName, KeyType: portKey, Concatenation: true}
}

// nftSpec is everything the rules depend on.
type nftSpec struct {
	bridge        string
	podCIDR       netip.Prefix
	snat          bool
	primary       netip.Addr
	exclude       []netip.Prefix // sorted, masked
	allowMetadata bool
}

// port is one element: a pod's host veth with the pod's MAC and address.
type port struct {
	name string
	mac  string
	ip   netip.Addr
}

func podPort(name string, ip netip.Addr) port {
	return port{name: name, mac: linux.PodMAC(ip).String(), ip: ip}
}

func (p port) key() []byte {
	k := make([]byte, unix.IFNAMSIZ, portKey.Bytes)
	copy(k, p.name)
	mac, _ := net.ParseMAC(p.mac)
	k = append(k, mac...)
	k = append(k, 0, 0)
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
	ip, _ := netip.AddrFromSlice(k[24:28])
	return port{name: string(name), mac: net.HardwareAddr(k[16:22]).String(), ip: ip}, true
}

func etherTypeIs(t uint16) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseLLHeader, Offset: 12, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(t >> 8), byte(t)}},
	}
}

// buildGuard is the guard table's chain.
func buildGuard(allowMetadata bool) linux.Chain {
	accept := nftables.ChainPolicyAccept
	c := linux.Chain{Chain: &nftables.Chain{
		Name: "prerouting", Table: guardTable(), Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRef(-350), Policy: &accept,
	}}
	fromPod := linux.FromPod()
	notOwn := func(macLoad, addrLoad *expr.Payload) []expr.Any {
		macLoad.DestRegister, addrLoad.DestRegister = regMAC, regAddr
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: regKey},
			macLoad, addrLoad,
			&expr.Lookup{SourceRegister: regKey, SetName: portsSetName, Invert: true},
			&expr.Verdict{Kind: expr.VerdictDrop},
		}
	}
	etherSrc := func() *expr.Payload {
		return &expr.Payload{Base: expr.PayloadBaseLLHeader, Offset: 6, Len: 6}
	}
	c.Add("from a pod: ipv4 only with the pod's own mac and address",
		fromPod, etherTypeIs(unix.ETH_P_IP), notOwn(etherSrc(), linux.LoadNet(linux.IPSrc, 4)))
	c.Add("from a pod: only ethernet/ipv4 arp",
		fromPod, etherTypeIs(unix.ETH_P_ARP),
		linux.LoadNet(0, uint32(len(arpEthIPv4))), &expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: arpEthIPv4},
		&expr.Verdict{Kind: expr.VerdictDrop})
	c.Add("from a pod: arp only from the pod's own mac and address",
		fromPod, etherTypeIs(unix.ETH_P_ARP), notOwn(etherSrc(), linux.LoadNet(arpSPA, 4)))
	c.Add("from a pod: arp only announcing the pod's own mac and address",
		fromPod, etherTypeIs(unix.ETH_P_ARP), notOwn(linux.LoadNet(arpSHA, 6), linux.LoadNet(arpSPA, 4)))
	c.Add("from a pod: nothing but ipv4 and arp",
		fromPod,
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseLLHeader, Offset: 12, Len: 2},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0x08, 0x00}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0x08, 0x06}},
		&expr.Verdict{Kind: expr.VerdictDrop})
	if !allowMetadata {
		c.Add("from a pod: nothing to the instance metadata service",
			fromPod, etherTypeIs(unix.ETH_P_IP),
			linux.LoadNet(linux.IPDst, 4), &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: linux.MetadataAddr.AsSlice()},
			&expr.Verdict{Kind: expr.VerdictDrop})
	}
	return c
}

// buildNAT is the SNAT table's chain.
func buildNAT(s nftSpec) linux.Chain {
	accept := nftables.ChainPolicyAccept
	c := linux.Chain{Chain: &nftables.Chain{
		Name: "postrouting", Table: natTable(), Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept,
	}}
	c.Add("pod to outside the exclusions: snat to the node's primary ip",
		linux.LoadNet(linux.IPSrc, 4),
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: net.CIDRMask(s.podCIDR.Bits(), 32), Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: s.podCIDR.Addr().AsSlice()},
		linux.IfnameIs(expr.MetaKeyOIFNAME, s.bridge, false),
		linux.NotInPrefixes(s.exclude),
		&expr.Immediate{Register: 1, Data: s.primary.AsSlice()},
		&expr.NAT{Type: expr.NATTypeSourceNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegAddrMax: 1})
	return c
}

// wantedTables are the tables' wanted state; a rebuilt guard gets its ports
// back from the kubenet veths' records.
func (n *Node) wantedTables(s nftSpec, bridgeIndex int) []linux.Table {
	guard := linux.Table{Table: guardTable(), Set: portsSet(), Chains: []linux.Chain{buildGuard(s.allowMetadata)},
		Recover: func() ([]nftables.SetElement, error) {
			pods, err := n.kubenetVeths()
			if err != nil {
				return nil, err
			}
			elems := make([]nftables.SetElement, 0, len(pods))
			for _, v := range pods {
				if v.MasterIndex == bridgeIndex {
					elems = append(elems, nftables.SetElement{Key: podPort(v.Name, v.Record.IP).key()})
				}
			}
			return elems, nil
		}}
	if !s.snat {
		return []linux.Table{guard}
	}
	return []linux.Table{guard, {Table: natTable(), Chains: []linux.Chain{buildNAT(s)}}}
}

// kubenetVeths lists the node's kubenet pod veths.
func (n *Node) kubenetVeths() ([]linux.PodVeth, error) {
	veths, err := n.ns.PodVeths()
	if err != nil {
		return nil, err
	}
	out := veths[:0]
	for _, v := range veths {
		if v.Record.Mode == linux.ModeKubenet {
			out = append(out, v)
		}
	}
	return out, nil
}

// addPort registers the pod's port under the node's lock (a rebuild of the
// table in between would lose it). A missing table is ErrNotReady.
func (n *Node) addPort(ctx context.Context, p port) (err error) {
	unlock, err := n.ns.Lock(ctx)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, unlock()) }()
	if err := n.ns.NFT.SetAddElements(portsSet(), []nftables.SetElement{{Key: p.key()}}); err != nil {
		return errors.Join(fmt.Errorf("add the guard of %s: %w", p.name, err), n.ns.DiscardBatch())
	}
	if err := n.ns.NFT.Flush(); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("%w: no nftables set %s %s", ErrNotReady, TableName, portsSetName)
		}
		return fmt.Errorf("add the guard of %s: %w", p.name, err)
	}
	return nil
}

// delPorts removes the elements of the port name and returns the address
// they named (ip when valid).
func (n *Node) delPorts(ctx context.Context, name string, ip netip.Addr) (_ netip.Addr, err error) {
	unlock, err := n.ns.Lock(ctx)
	if err != nil {
		return ip, err
	}
	defer func() { err = errors.Join(err, unlock()) }()
	elems, ok, err := n.ns.ReadSet(portsSet())
	if err != nil || !ok {
		return ip, err
	}
	var del []nftables.SetElement
	for _, e := range elems {
		if p, ok := parsePortKey(e.Key); ok && p.name == name {
			del = append(del, nftables.SetElement{Key: e.Key})
			if !ip.IsValid() {
				ip = p.ip
			}
		}
	}
	if len(del) == 0 {
		return ip, nil
	}
	if err := n.ns.NFT.SetDeleteElements(portsSet(), del); err != nil {
		return ip, errors.Join(err, n.ns.DiscardBatch())
	}
	if err := n.ns.NFT.Flush(); err != nil {
		return ip, fmt.Errorf("remove the guard of %s: %w", name, err)
	}
	return ip, nil
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

// syncPods, under the node's lock, makes every kubenet pod veth a hairpin
// port of the bridge with its guard element, and removes the elements that
// no such veth (of that name and address) has. Under the lock no ADD is
// between recording its veth and adding its element, and a DEL removes the
// element before the veth, so what it removes is stale.
func (n *Node) syncPods(ctx context.Context, br netlink.Link) (changes int, err error) {
	unlock, err := n.ns.Lock(ctx)
	if err != nil {
		return 0, err
	}
	defer func() { err = errors.Join(err, unlock()) }()
	pods, err := n.kubenetVeths()
	if err != nil {
		return 0, err
	}
	elems, _, err := n.ns.ReadSet(portsSet())
	if err != nil {
		return 0, err
	}
	have := map[port]bool{}
	for _, e := range elems {
		if p, ok := parsePortKey(e.Key); ok {
			have[p] = true
		}
	}
	var errs []error
	want := map[port]bool{}
	var add []nftables.SetElement
	for _, v := range pods {
		p := podPort(v.Name, v.Record.IP)
		want[p] = true
		if !have[p] {
			add = append(add, nftables.SetElement{Key: p.key()})
		}
		if v.MasterIndex == br.Attrs().Index {
			continue
		}
		l, err := n.ns.Netlink.LinkByIndex(v.Index)
		if err != nil {
			errs = append(errs, fmt.Errorf("link %s: %w", v.Name, err))
			continue
		}
		if err := n.ns.Netlink.LinkSetMasterByIndex(l, br.Attrs().Index); err != nil {
			errs = append(errs, fmt.Errorf("make %s a port of %s: %w", v.Name, br.Attrs().Name, err))
			continue
		}
		if err := n.ns.Netlink.LinkSetHairpin(l, true); err != nil {
			errs = append(errs, fmt.Errorf("hairpin on %s: %w", v.Name, err))
		}
		changes++
	}
	var del []nftables.SetElement
	for _, e := range elems {
		if p, ok := parsePortKey(e.Key); !ok || !want[p] {
			del = append(del, nftables.SetElement{Key: e.Key})
		}
	}
	if len(add)+len(del) == 0 {
		return changes, errors.Join(errs...)
	}
	var nftErrs []error
	if len(del) > 0 {
		nftErrs = append(nftErrs, n.ns.NFT.SetDeleteElements(portsSet(), del))
	}
	if len(add) > 0 {
		nftErrs = append(nftErrs, n.ns.NFT.SetAddElements(portsSet(), add))
	}
	if err := errors.Join(nftErrs...); err != nil {
		return changes, errors.Join(append(errs, err, n.ns.DiscardBatch())...)
	}
	if err := n.ns.NFT.Flush(); err != nil {
		return changes, errors.Join(append(errs, fmt.Errorf("sync the guard's ports: %w", err))...)
	}
	return changes + len(add) + len(del), errors.Join(errs...)
}
