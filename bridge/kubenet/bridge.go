package kubenet

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vnet-cni/vnet-cni/bridge/linux"
)

// bridgeAlias marks the bridge as kubenet mode's: the other modes refuse a
// node that has it.
var bridgeAlias = linux.Alias("mode", linux.ModeKubenet)

// isKubenetBridge reports whether a link is kubenet mode's bridge.
func isKubenetBridge(l netlink.Link) bool {
	return l.Type() == "bridge" && linux.AliasField(l.Attrs().Alias, "mode") == linux.ModeKubenet
}

// bridgeMAC is the bridge's MAC, fixed (a bridge otherwise takes its
// smallest port's, changing under the pods' neighbour caches): 0a:58 and
// the gateway's address, like a pod's (linux.PodMAC).
func bridgeMAC(gw netip.Prefix) net.HardwareAddr { return linux.PodMAC(gw.Addr()) }

// ensureBridge makes sure the bridge exists, up, with its MAC, alias, MTU
// and the gateway address, and returns it with the number of changes. It
// only reads, without the lock, when the bridge is complete.
func (n *Node) ensureBridge(ctx context.Context, cfg NodeConfig) (netlink.Link, int, error) {
	if l, ok, err := n.bridgeDone(cfg); err != nil || ok {
		return l, 0, err
	}
	unlock, err := n.ns.Lock(ctx)
	if err != nil {
		return nil, 0, err
	}
	l, changes, err := n.ensureBridgeLocked(cfg)
	return l, changes, errors.Join(err, unlock())
}

// bridgeLink reads the bridge; nil when it does not exist. A link of the
// name that is not a bridge is linux.ErrConflict.
func (n *Node) bridgeLink(name string) (netlink.Link, error) {
	l, err := n.ns.Netlink.LinkByName(name)
	if linux.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("link %s: %w", name, err)
	}
	if l.Type() != "bridge" {
		return nil, fmt.Errorf("%w: %s is a %s, not a bridge", linux.ErrConflict, name, l.Type())
	}
	return l, nil
}

// bridgeAddrs lists the bridge's IPv4 addresses.
func (n *Node) bridgeAddrs(l netlink.Link) ([]netip.Prefix, error) {
	addrs, err := linux.RetryDump(func() ([]netlink.Addr, error) { return n.ns.Netlink.AddrList(l, netlink.FAMILY_V4) })
	if err != nil {
		return nil, fmt.Errorf("addresses of %s: %w", l.Attrs().Name, err)
	}
	out := make([]netip.Prefix, 0, len(addrs))
	for _, a := range addrs {
		if p, ok := linux.PrefixOf(a.IPNet); ok {
			out = append(out, p)
		}
	}
	return out, nil
}

// bridgeDone reports whether the bridge is complete, without changing
// anything.
func (n *Node) bridgeDone(cfg NodeConfig) (netlink.Link, bool, error) {
	l, err := n.bridgeLink(cfg.bridgeName())
	if err != nil || l == nil {
		return nil, false, err
	}
	a := l.Attrs()
	if a.Flags&net.FlagUp == 0 || a.Alias != bridgeAlias || !bytes.Equal(a.HardwareAddr, bridgeMAC(cfg.Gateway)) ||
		(cfg.MTU != 0 && a.MTU != cfg.MTU) {
		return nil, false, nil
	}
	addrs, err := n.bridgeAddrs(l)
	if err != nil {
		return nil, false, err
	}
	for _, p := range addrs {
		if p == cfg.Gateway {
			return l, true, nil
		}
	}
	return nil, false, nil
}

func (n *Node) ensureBridgeLocked(cfg NodeConfig) (netlink.Link, int, error) {
	name, mac := cfg.bridgeName(), bridgeMAC(cfg.Gateway)
	changes := 0
	l, err := n.bridgeLink(name)
	if err != nil {
		return nil, 0, err
	}
	if l == nil {
		attrs := netlink.NewLinkAttrs()
		attrs.Name, attrs.MTU, attrs.HardwareAddr = name, cfg.MTU, mac
		if err := n.ns.Netlink.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, 0, fmt.Errorf("create bridge %s: %w", name, err)
		}
		changes++
		if l, err = n.bridgeLink(name); err != nil || l == nil {
			return nil, changes, errors.Join(fmt.Errorf("read back bridge %s", name), err)
		}
	}
	a := l.Attrs()
	if !bytes.Equal(a.HardwareAddr, mac) {
		if err := n.ns.Netlink.LinkSetHardwareAddr(l, mac); err != nil {
			return nil, changes, fmt.Errorf("set mac of %s: %w", name, err)
		}
		changes++
	}
	if a.Alias != bridgeAlias {
		// The kernel ignores IFLA_IFALIAS when creating a link.
		if err := n.ns.Netlink.LinkSetAlias(l, bridgeAlias); err != nil {
			return nil, changes, fmt.Errorf("record mode on %s: %w", name, err)
		}
		changes++
	}
	if cfg.MTU != 0 && a.MTU != cfg.MTU {
		if err := n.ns.Netlink.LinkSetMTU(l, cfg.MTU); err != nil {
			return nil, changes, fmt.Errorf("set mtu of %s: %w", name, err)
		}
		changes++
	}
	c, err := n.addressBridge(l, cfg.Gateway)
	changes += c
	if err != nil {
		return nil, changes, err
	}
	if a.Flags&net.FlagUp == 0 {
		if err := n.ns.Netlink.LinkSetUp(l); err != nil {
			return nil, changes, fmt.Errorf("set %s up: %w", name, err)
		}
		changes++
	}
	return l, changes, nil
}

// addressBridge gives the bridge the gateway address. A bridge with other
// addresses and without the gateway's is a pod CIDR change: refused while
// a kubenet pod is on the node (its address and route belong to the old
// CIDR), otherwise the old addresses are replaced. Other addresses beside
// the gateway's are left alone.
func (n *Node) addressBridge(l netlink.Link, gw netip.Prefix) (int, error) {
	addrs, err := n.bridgeAddrs(l)
	if err != nil {
		return 0, err
	}
	for _, p := range addrs {
		if p == gw {
			return 0, nil
		}
	}
	name, changes := l.Attrs().Name, 0
	if len(addrs) > 0 {
		veths, err := n.ns.PodVeths()
		if err != nil {
			return 0, err
		}
		for _, v := range veths {
			if v.Record.Mode == linux.ModeKubenet {
				return 0, fmt.Errorf("%w: %w: %s holds %v, not the gateway %s, and pod %s (%s) is on the node; drain the node first",
					linux.ErrModeConflict, ErrPodCIDRChanged, name, addrs, gw, v.Record.IP, v.Name)
			}
		}
		for _, p := range addrs {
			if err := n.ns.Netlink.AddrDel(l, &netlink.Addr{IPNet: linux.IPNet(p)}); err != nil && !linux.IsNotFound(err) && !errors.Is(err, unix.EADDRNOTAVAIL) {
				return changes, fmt.Errorf("remove the old gateway %s from %s: %w", p, name, err)
			}
			changes++
		}
	}
	if err := n.ns.Netlink.AddrAdd(l, &netlink.Addr{IPNet: linux.IPNet(gw)}); err != nil && !errors.Is(err, unix.EEXIST) {
		return changes, fmt.Errorf("add %s to %s: %w", gw, name, err)
	}
	return changes + 1, nil
}
