package azure0

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/google/nftables"

	"github.com/vnet-cni/vnet-cni/bridge/linux"
)

// A pod has three nftables entries: in the bridge table's map (address →
// MAC, steering frames from the fabric to the pod), in the ip table's SNAT
// set (address) and in the guard set (port . MAC . address). ADD and DEL
// each change all of them in one transaction under the node's lock.

// addPodEntries registers the pod. Its MAC is derived from its address, so
// the entries are the same whoever held the address before, and adding an
// identical element is no error: nothing is read first. When a table is
// missing (SNAT off, a table deleted by hand) the transaction fails as a
// whole and the entries are changed one table at a time instead, unless
// strict: then the node is incomplete, an ErrNotReady.
func (n *Node) addPodEntries(ctx context.Context, hostName string, ip netip.Addr, mac net.HardwareAddr, strict bool) (err error) {
	unlock, err := n.ns.Lock(ctx)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, unlock()) }()
	bmap, iset, gset := podSets()
	port := linux.GuardPort{Name: hostName, MAC: mac.String(), IP: ip}
	err = errors.Join(
		n.ns.NFT.SetAddElements(bmap, elements(bmap, map[netip.Addr]net.HardwareAddr{ip: mac}, []netip.Addr{ip})),
		n.ns.NFT.SetAddElements(iset, elements(iset, nil, []netip.Addr{ip})),
		n.ns.NFT.SetAddElements(gset, []nftables.SetElement{{Key: port.Key()}}),
	)
	if err == nil {
		err = n.ns.NFT.Flush()
	}
	if err == nil {
		return nil
	}
	if derr := n.ns.DiscardBatch(); derr != nil {
		return errors.Join(err, derr)
	}
	if strict {
		return fmt.Errorf("%w: register pod %s: %w", ErrNotReady, ip, err)
	}
	if err := n.addPodPerTableLocked(ip, mac); err != nil {
		return err
	}
	return n.addGuardLocked(port)
}

// delPodEntries removes the entries of the pod behind hostName. The
// address is ip or, when ip is not valid, the one the guard set records for
// the port. A late DEL (the runtime retrying, a GC) may name an address that
// was released and now belongs to another pod on this node: while another
// port holds it in the guard set, its map and SNAT entries stay.
func (n *Node) delPodEntries(ctx context.Context, hostName string, ip netip.Addr) (err error) {
	unlock, err := n.ns.Lock(ctx)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, unlock()) }()
	bmap, iset, gset := podSets()
	var del []nftables.SetElement
	taken := false
	if elems, ok, err := n.ns.ReadSet(gset); err != nil {
		return err
	} else if ok {
		for _, e := range elems {
			p, ok := linux.ParseGuardKey(e.Key)
			if !ok {
				continue
			}
			if p.Name == hostName {
				del = append(del, nftables.SetElement{Key: e.Key})
				if !ip.IsValid() {
					ip = p.IP
				}
			}
		}
		for _, e := range elems {
			if p, ok := linux.ParseGuardKey(e.Key); ok && p.Name != hostName && p.IP == ip {
				taken = true
			}
		}
	}
	if len(del) > 0 && ip.IsValid() && !taken {
		// The common DEL: the port's guard element names the address, and
		// ADD wrote the other two entries in the same transaction, so all
		// three go in one without reading the other sets. When one of them
		// is missing (a hand edit, a table rebuilt without SNAT) the
		// transaction fails as a whole and the careful path below runs.
		err := errors.Join(
			n.ns.NFT.SetDeleteElements(gset, del),
			n.ns.NFT.SetDeleteElements(bmap, elements(bmap, nil, []netip.Addr{ip})),
			n.ns.NFT.SetDeleteElements(iset, elements(iset, nil, []netip.Addr{ip})),
		)
		if err == nil {
			err = n.ns.NFT.Flush()
		}
		if err == nil {
			return nil
		}
		if derr := n.ns.DiscardBatch(); derr != nil {
			return errors.Join(err, derr)
		}
	}
	var errs []error
	queued := false
	if len(del) > 0 {
		errs = append(errs, n.ns.NFT.SetDeleteElements(gset, del))
		queued = true
	}
	if ip.IsValid() && !taken {
		for _, s := range []*nftables.Set{bmap, iset} {
			have, ok, err := n.readPodSet(s)
			if err != nil {
				return errors.Join(err, n.ns.DiscardBatch())
			}
			if _, present := have[ip]; ok && present {
				errs = append(errs, n.ns.NFT.SetDeleteElements(s, elements(s, nil, []netip.Addr{ip})))
				queued = true
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return errors.Join(err, n.ns.DiscardBatch())
	}
	if !queued {
		return nil
	}
	if err := n.ns.NFT.Flush(); err != nil {
		return fmt.Errorf("remove the nftables entries of %s: %w", hostName, err)
	}
	return nil
}

// podSets are the three sets that hold a pod's entries.
func podSets() (bmap, iset, gset *nftables.Set) {
	bt, it := mainTables()
	return podSet(bt, true), podSet(it, false), guardSet(guardTable())
}
