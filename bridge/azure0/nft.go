package azure0

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"

	"github.com/vnet-cni/vnet-cni/bridge/linux"
)

// ownedTables are the names of the nftables tables vnet-cni owns, bridge
// mode's and the other modes': a table with one of them that is not wanted
// (the ip table with SNAT off, a drained node's routed-mode table) is
// deleted.
var ownedTables = linux.OwnedTables()

// reconcileTables brings the three tables to the wanted state with the
// shared reconciler. The pods are added to the registered ones, or are the
// complete list when exact; when the bridge map and the SNAT set are lost
// with their table, the pods are recovered from the veths' aliases. held is
// a fresh read of the kernel. It returns the number of changes (0 when
// everything was in place; then no lock is taken).
func (n *Node) reconcileTables(ctx context.Context, spec nftSpec, held linux.Tables, pods map[netip.Addr]net.HardwareAddr, exact bool, bridgeIndex int) (int, error) {
	want := buildTables(spec)
	ips := sortedAddrs(pods)
	recovered := func(s *nftables.Set) func() ([]nftables.SetElement, error) {
		if exact {
			return nil
		}
		return func() ([]nftables.SetElement, error) {
			found, err := n.podsFromVeths(bridgeIndex)
			if err != nil {
				return nil, err
			}
			return elements(s, found, sortedAddrs(found)), nil
		}
	}
	for i := range want {
		w := &want[i]
		w.Elements = elements(w.Set, pods, ips)
		w.Exact = exact
		w.Recover = recovered(w.Set)
	}
	return n.ns.Reconcile(ctx, ownedTables, append(want, n.guardWanted(bridgeIndex, spec.allowMetadata)), held)
}

// readPodSet reads the pod set's elements; a missing set is not an error.
func (n *Node) readPodSet(s *nftables.Set) (map[netip.Addr]string, bool, error) {
	elems, err := n.ns.NFT.GetSetElements(s)
	if errors.Is(err, unix.ENOENT) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("list elements of %s %s: %w", s.Table.Name, s.Name, err)
	}
	m := make(map[netip.Addr]string, len(elems))
	for _, e := range elems {
		a, ok := netip.AddrFromSlice(e.Key)
		if !ok || !a.Is4() {
			return nil, false, nil
		}
		v := ""
		if s.IsMap {
			if len(e.Val) < 6 {
				return nil, false, nil
			}
			v = net.HardwareAddr(e.Val[:6]).String()
		}
		m[a] = v
	}
	return m, true, nil
}

func elements(s *nftables.Set, pods map[netip.Addr]net.HardwareAddr, ips []netip.Addr) []nftables.SetElement {
	out := make([]nftables.SetElement, 0, len(ips))
	for _, ip := range ips {
		e := nftables.SetElement{Key: ip.AsSlice()}
		if s.IsMap && pods != nil {
			e.Val = pods[ip]
		}
		out = append(out, e)
	}
	return out
}

func sortedAddrs[V any](m map[netip.Addr]V) []netip.Addr {
	out := make([]netip.Addr, 0, len(m))
	for a := range m {
		out = append(out, a)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// podsFromVeths reads the pods from the aliases of the bridge's veth ports.
func (n *Node) podsFromVeths(bridgeIndex int) (map[netip.Addr]net.HardwareAddr, error) {
	ports, err := n.ns.PodsOfMaster(bridgeIndex)
	if err != nil {
		return nil, err
	}
	out := make(map[netip.Addr]net.HardwareAddr, len(ports))
	for _, p := range ports {
		out[p.IP] = p.MAC
	}
	return out, nil
}
