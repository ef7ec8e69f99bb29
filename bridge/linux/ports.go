package linux

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// A mode's guard set holds one element per pod port, keyed by the host
// veth's name and the pod's address (and more, by mode). ADD adds it and
// DEL removes it under the node's lock: a rebuild of the table in between
// would lose it.

// PortKeyParser reads a guard element's key: the host veth's name and the
// pod's address; false when the key is not one.
type PortKeyParser func(key []byte) (name string, ip netip.Addr, ok bool)

// AddPort adds the element key of the port of host veth name to the set s
// under the node's lock. A missing table is notReady.
func (n *NS) AddPort(ctx context.Context, s *nftables.Set, name string, key []byte, notReady error) (err error) {
	unlock, err := n.Lock(ctx)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, unlock()) }()
	if err := n.NFT.SetAddElements(s, []nftables.SetElement{{Key: key}}); err != nil {
		return errors.Join(fmt.Errorf("add the guard of %s: %w", name, err), n.DiscardBatch())
	}
	if err := n.NFT.Flush(); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("%w: no nftables set %s %s", notReady, s.Table.Name, s.Name)
		}
		return fmt.Errorf("add the guard of %s: %w", name, err)
	}
	return nil
}

// DelPorts removes the elements of the port of host veth name from the set
// s under the node's lock, and returns the address they named (ip when
// valid) and whether another port holds that address (a late DEL of an
// address a new pod on the node holds now). A missing set is no error.
func (n *NS) DelPorts(ctx context.Context, s *nftables.Set, name string, ip netip.Addr, parse PortKeyParser) (_ netip.Addr, taken bool, err error) {
	unlock, err := n.Lock(ctx)
	if err != nil {
		return ip, false, err
	}
	defer func() { err = errors.Join(err, unlock()) }()
	elems, ok, err := n.ReadSet(s)
	if err != nil || !ok {
		return ip, false, err
	}
	var del []nftables.SetElement
	for _, e := range elems {
		if pname, pip, ok := parse(e.Key); ok && pname == name {
			del = append(del, nftables.SetElement{Key: e.Key})
			if !ip.IsValid() {
				ip = pip
			}
		}
	}
	for _, e := range elems {
		if pname, pip, ok := parse(e.Key); ok && pname != name && pip == ip {
			taken = true
		}
	}
	if len(del) == 0 {
		return ip, taken, nil
	}
	if err := n.NFT.SetDeleteElements(s, del); err != nil {
		return ip, taken, errors.Join(err, n.DiscardBatch())
	}
	if err := n.NFT.Flush(); err != nil {
		return ip, taken, fmt.Errorf("remove the guard of %s: %w", name, err)
	}
	return ip, taken, nil
}
