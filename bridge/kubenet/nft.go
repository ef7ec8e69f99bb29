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

func guardTable() *nftables.Table {
	return &nftables.Table{Name: TableName, Family: nftables.TableFamilyBridge}
}

func natTable() *nftables.Table {
	return &nftables.Table{Name: TableName, Family: nftables.TableFamilyIPv4}
}

func portsSet() *nftables.Set {
	return &nftables.Set{Table: guardTable(), Name: portsSetName, KeyType: linux.GuardKey, Concatenation: true}
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

// podPort is the guard element of the pod ip behind the host veth name.
func podPort(name string, ip netip.Addr) linux.GuardPort {
	return linux.GuardPort{Name: name, MAC: linux.PodMAC(ip).String(), IP: ip}
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
	guard := linux.Table{Table: guardTable(), Set: portsSet(), Chains: []linux.Chain{linux.GuardChain(guardTable(), portsSetName, s.allowMetadata)},
		Recover: func() ([]nftables.SetElement, error) {
			pods, err := n.kubenetVeths()
			if err != nil {
				return nil, err
			}
			elems := make([]nftables.SetElement, 0, len(pods))
			for _, v := range pods {
				if v.MasterIndex == bridgeIndex {
					elems = append(elems, nftables.SetElement{Key: podPort(v.Name, v.Record.IP).Key()})
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

// addPort registers the pod's port (see linux.NS.AddPort). A missing table
// is ErrNotReady.
func (n *Node) addPort(ctx context.Context, p linux.GuardPort) error {
	return n.ns.AddPort(ctx, portsSet(), p.Name, p.Key(), ErrNotReady)
}

// delPorts removes the elements of the port name and returns the address
// they named (ip when valid).
func (n *Node) delPorts(ctx context.Context, name string, ip netip.Addr) (netip.Addr, error) {
	ip, _, err := n.ns.DelPorts(ctx, portsSet(), name, ip, func(k []byte) (string, netip.Addr, bool) {
		p, ok := linux.ParseGuardKey(k)
		return p.Name, p.IP, ok
	})
	return ip, err
}

// hasPort reports whether the set holds the port.
func (n *Node) hasPort(p linux.GuardPort) (bool, error) {
	elems, _, err := n.ns.ReadSet(portsSet())
	if err != nil {
		return false, err
	}
	return slices.ContainsFunc(elems, func(e nftables.SetElement) bool {
		q, ok := linux.ParseGuardKey(e.Key)
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
	have := map[linux.GuardPort]bool{}
	for _, e := range elems {
		if p, ok := linux.ParseGuardKey(e.Key); ok {
			have[p] = true
		}
	}
	var errs []error
	want := map[linux.GuardPort]bool{}
	var add []nftables.SetElement
	for _, v := range pods {
		p := podPort(v.Name, v.Record.IP)
		want[p] = true
		if !have[p] {
			add = append(add, nftables.SetElement{Key: p.Key()})
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
		if p, ok := linux.ParseGuardKey(e.Key); !ok || !want[p] {
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
