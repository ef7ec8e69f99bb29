package fabric

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/vnet-cni/vnet-cni/internal/namedns"
)

// nsDir is where named network namespaces are bind-mounted, as by ip netns.
const nsDir = namedns.Dir

// ErrDestroyed is returned by Apply after Destroy.
var ErrDestroyed = errors.New("fabric destroyed")

// Fabric is a running data plane: the vnet, internet and node namespaces and
// the links between them. Its methods are safe for concurrent use.
type Fabric struct {
	topo       Topology
	gateway    netip.Addr
	gatewayMAC net.HardwareAddr
	inetHost   netip.Addr

	// mu serialises reconciles and Destroy; it guards the fields below.
	mu        sync.Mutex
	created   []string // namespace names made by Create, removed by Destroy
	vnetNS    netns.NsHandle
	vnet      *netlink.Handle
	nft       *nftables.Conn
	ifindex   map[string]int // link name -> index in the vnet namespace
	destroyed bool
	changes   uint64
	// nftStale is set when an interface link was (re)created, so that the
	// table is rewritten: older kernels unbind a netdev chain from a
	// device that goes away and do not bind it to a new one of the same
	// name, and the chains as listed do not show their device.
	nftStale bool
}

// Create builds the namespaces and links of topo and applies an empty State
// (primaries only). On error it removes everything it made.
func Create(ctx context.Context, topo Topology) (f *Fabric, err error) {
	if err := validate(topo); err != nil {
		return nil, fmt.Errorf("invalid topology: %w", err)
	}
	f = &Fabric{
		topo:       topo,
		gateway:    gatewayOf(topo),
		gatewayMAC: VirtualMAC,
		inetHost:   internetHostOf(topo),
		vnetNS:     netns.None(),
		ifindex:    make(map[string]int),
	}
	if topo.GatewayMAC != nil {
		f.gatewayMAC = topo.GatewayMAC
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, f.Destroy())
			f = nil
		}
	}()
	if err := f.build(); err != nil {
		return f, err
	}
	if err := f.Apply(ctx, State{}); err != nil {
		return f, fmt.Errorf("initial reconcile: %w", err)
	}
	return f, nil
}

func validate(topo Topology) error {
	var errs []error
	if err := checkName(topo.Prefix); err != nil {
		errs = append(errs, fmt.Errorf("prefix: %w", err))
	}
	if !topo.Subnet.IsValid() || !topo.Subnet.Addr().Is4() || topo.Subnet.Bits() > 29 {
		errs = append(errs, fmt.Errorf("subnet %s: want an ipv4 prefix of /29 or larger", topo.Subnet))
	}
	if !topo.Internet.IsValid() || !topo.Internet.Addr().Is4() || topo.Internet.Bits() > 29 {
		errs = append(errs, fmt.Errorf("internet %s: want an ipv4 prefix of /29 or larger", topo.Internet))
	}
	for _, p := range topo.VNetPrefixes {
		if !p.IsValid() || !p.Addr().Is4() {
			errs = append(errs, fmt.Errorf("vnet prefix %s: want ipv4", p))
		}
	}
	if m := topo.GatewayMAC; m != nil && (len(m) != 6 || m[0]&1 != 0) {
		errs = append(errs, fmt.Errorf("gateway mac %s is not a unicast ethernet address", m))
	}
	names := make(map[string]bool)
	for i, n := range topo.Nodes {
		if err := checkName(n.Name); err != nil {
			errs = append(errs, fmt.Errorf("node %d name: %w", i, err))
		}
		if names[n.Name] {
			errs = append(errs, fmt.Errorf("node %s: duplicate name", n.Name))
		}
		names[n.Name] = true
		if n.Name == "vnet" || n.Name == "inet" {
			errs = append(errs, fmt.Errorf("node %s: name is reserved", n.Name))
		}
		if len(n.MAC) != 6 || n.MAC[0]&1 != 0 {
			errs = append(errs, fmt.Errorf("node %s: mac %s is not a unicast ethernet address", n.Name, n.MAC))
		}
		if !topo.Subnet.Contains(n.Primary) || n.Primary == gatewayOf(topo) {
			errs = append(errs, fmt.Errorf("node %s: primary %s is not a host address of subnet %s", n.Name, n.Primary, topo.Subnet))
		}
	}
	return errors.Join(errs...)
}

func checkName(s string) error {
	if s == "" || len(s) > 64 {
		return fmt.Errorf("%q: want 1 to 64 characters", s)
	}
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
		default:
			return fmt.Errorf("%q: only letters, digits, '-', '_' and '.' are allowed", s)
		}
	}
	if s == "." || s == ".." {
		return fmt.Errorf("%q is not a name", s)
	}
	return nil
}

// NodeNSPath is the path of the node's namespace, /run/netns/<prefix>-<node>.
func (f *Fabric) NodeNSPath(node string) string { return filepath.Join(nsDir, f.nsName(node)) }

// VNetNSPath is the path of the vnet (SDN) namespace.
func (f *Fabric) VNetNSPath() string { return filepath.Join(nsDir, f.nsName("vnet")) }

// InternetNSPath is the path of the internet namespace.
func (f *Fabric) InternetNSPath() string { return filepath.Join(nsDir, f.nsName("inet")) }

// InternetHost is the address of the internet namespace, e.g. 203.0.113.100.
func (f *Fabric) InternetHost() netip.Addr { return f.inetHost }

// Gateway is the first address of the subnet; it answers ARP and ping.
func (f *Fabric) Gateway() netip.Addr { return f.gateway }

// GatewayMAC is the MAC with which the fabric answers ARP requests.
func (f *Fabric) GatewayMAC() net.HardwareAddr { return f.gatewayMAC }

// Changes is the number of kernel changes that reconciles have made so far.
func (f *Fabric) Changes() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.changes
}

func (f *Fabric) nsName(suffix string) string { return f.topo.Prefix + "-" + suffix }

// build creates the namespaces and links.
func (f *Fabric) build() error {
	vnetName, inetName := f.nsName("vnet"), f.nsName("inet")
	for _, name := range []string{vnetName, inetName} {
		if err := f.newNS(name); err != nil {
			return err
		}
	}
	for _, n := range f.topo.Nodes {
		if err := f.newNS(f.nsName(n.Name)); err != nil {
			return err
		}
	}
	var err error
	if f.vnetNS, err = netns.GetFromPath(f.VNetNSPath()); err != nil {
		return fmt.Errorf("open vnet netns: %w", err)
	}
	if f.vnet, err = netlink.NewHandleAt(f.vnetNS); err != nil {
		return fmt.Errorf("netlink handle in vnet netns: %w", err)
	}
	if f.nft, err = nftables.New(nftables.WithNetNSFd(int(f.vnetNS))); err != nil {
		return fmt.Errorf("nftables in vnet netns: %w", err)
	}

	// Defaults first, so that every link created afterwards inherits them.
	if err := writeSysctls(f.VNetNSPath(), map[string]string{
		"net/ipv4/ip_forward":                    "1",
		"net/ipv4/conf/all/rp_filter":            "0",
		"net/ipv4/conf/default/rp_filter":        "0",
		"net/ipv4/conf/all/send_redirects":       "0",
		"net/ipv4/conf/default/send_redirects":   "0",
		"net/ipv6/conf/all/disable_ipv6":         "1",
		"net/ipv6/conf/default/disable_ipv6":     "1",
		"net/ipv4/conf/all/accept_redirects":     "0",
		"net/ipv4/conf/default/accept_redirects": "0",
	}); err != nil {
		return fmt.Errorf("vnet sysctls: %w", err)
	}
	if err := writeSysctls(f.InternetNSPath(), map[string]string{
		"net/ipv6/conf/all/disable_ipv6":     "1",
		"net/ipv6/conf/default/disable_ipv6": "1",
	}); err != nil {
		return fmt.Errorf("internet sysctls: %w", err)
	}

	if err := f.buildVNet(); err != nil {
		return err
	}
	if err := f.buildInternet(); err != nil {
		return err
	}
	perLink := make(map[string]string)
	for i, n := range f.topo.Nodes {
		if err := f.buildNode(i, n); err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
		maps.Copy(perLink, peerSysctls(nodeLink(i)))
	}
	if err := writeSysctls(f.VNetNSPath(), perLink); err != nil {
		return fmt.Errorf("vnet link sysctls: %w", err)
	}
	return nil
}

// peerSysctls are the settings of a node's or interface's peer in the vnet
// namespace: answer every ARP request (even for an address behind the same
// link) at once with the gateway MAC, no reverse-path filter, no redirects.
func peerSysctls(dev string) map[string]string {
	return map[string]string{
		"net/ipv4/conf/" + dev + "/proxy_arp":       "1",
		"net/ipv4/conf/" + dev + "/proxy_arp_pvlan": "1",
		"net/ipv4/conf/" + dev + "/rp_filter":       "0",
		"net/ipv4/conf/" + dev + "/send_redirects":  "0",
		"net/ipv4/neigh/" + dev + "/proxy_delay":    "0",
	}
}

// buildVNet creates the sink link with the gateway address. The kernel of
// this project has no dummy driver, so the sink is a bridge without ports
// and without ARP: everything routed to it is dropped silently.
func (f *Fabric) buildVNet() error {
	h := f.vnet
	if err := linkUp(h, "lo"); err != nil {
		return err
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name = sinkLink
	attrs.Flags = net.FlagUp
	if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil {
		return fmt.Errorf("add link %s: %w", sinkLink, err)
	}
	sink, err := h.LinkByName(sinkLink)
	if err != nil {
		return fmt.Errorf("link %s: %w", sinkLink, err)
	}
	if err := h.LinkSetARPOff(sink); err != nil {
		return fmt.Errorf("arp off on %s: %w", sinkLink, err)
	}
	if err := h.AddrAdd(sink, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(f.gateway, 32))}); err != nil {
		return fmt.Errorf("add gateway address: %w", err)
	}
	if err := h.LinkSetUp(sink); err != nil {
		return fmt.Errorf("set %s up: %w", sinkLink, err)
	}
	f.ifindex[sinkLink] = sink.Attrs().Index
	return nil
}

// buildInternet wires the internet namespace to the vnet.
func (f *Fabric) buildInternet() error {
	inetNS, err := netns.GetFromPath(f.InternetNSPath())
	if err != nil {
		return fmt.Errorf("open internet netns: %w", err)
	}
	defer inetNS.Close()
	ih, err := netlink.NewHandleAt(inetNS)
	if err != nil {
		return fmt.Errorf("netlink handle in internet netns: %w", err)
	}
	defer ih.Close()

	bits := f.topo.Internet.Bits()
	attrs := netlink.NewLinkAttrs()
	attrs.Name = inetLink
	attrs.MTU = 1500
	veth := &netlink.Veth{LinkAttrs: attrs, PeerName: "eth0", PeerNamespace: netlink.NsFd(inetNS)}
	if err := f.vnet.LinkAdd(veth); err != nil {
		return fmt.Errorf("add link %s: %w", inetLink, err)
	}
	l, err := f.vnet.LinkByName(inetLink)
	if err != nil {
		return fmt.Errorf("link %s: %w", inetLink, err)
	}
	if err := f.vnet.AddrAdd(l, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(inetVNetAddr(f.topo), bits))}); err != nil {
		return fmt.Errorf("address on %s: %w", inetLink, err)
	}
	if err := f.vnet.LinkSetUp(l); err != nil {
		return fmt.Errorf("set %s up: %w", inetLink, err)
	}
	f.ifindex[inetLink] = l.Attrs().Index

	if err := linkUp(ih, "lo"); err != nil {
		return err
	}
	eth, err := ih.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("internet eth0: %w", err)
	}
	if err := ih.AddrAdd(eth, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(f.inetHost, bits))}); err != nil {
		return fmt.Errorf("address on internet eth0: %w", err)
	}
	if err := ih.LinkSetUp(eth); err != nil {
		return fmt.Errorf("set internet eth0 up: %w", err)
	}
	def := &netlink.Route{LinkIndex: eth.Attrs().Index, Gw: inetVNetAddr(f.topo).AsSlice()}
	if err := ih.RouteAdd(def); err != nil {
		return fmt.Errorf("internet default route: %w", err)
	}
	return nil
}

// buildNode creates node i's eth0 with its peer directly in the vnet namespace.
func (f *Fabric) buildNode(i int, n Node) error {
	nodeNS, err := netns.GetFromPath(f.NodeNSPath(n.Name))
	if err != nil {
		return fmt.Errorf("open netns: %w", err)
	}
	defer nodeNS.Close()
	h, err := netlink.NewHandleAt(nodeNS)
	if err != nil {
		return fmt.Errorf("netlink handle: %w", err)
	}
	defer h.Close()

	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("lo: %w", err)
	}
	if err := h.AddrAdd(lo, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(IMDSAddr, 32))}); err != nil {
		return fmt.Errorf("imds address: %w", err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set lo up: %w", err)
	}

	dev := nodeLink(i)
	attrs := netlink.NewLinkAttrs()
	attrs.Name = "eth0"
	attrs.MTU = 1500
	attrs.HardwareAddr = n.MAC
	veth := &netlink.Veth{
		LinkAttrs:        attrs,
		PeerName:         dev,
		PeerHardwareAddr: f.gatewayMAC,
		PeerNamespace:    netlink.NsFd(f.vnetNS),
	}
	if err := h.LinkAdd(veth); err != nil {
		return fmt.Errorf("add veth eth0/%s: %w", dev, err)
	}
	eth, err := h.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("eth0: %w", err)
	}
	if err := h.AddrAdd(eth, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(n.Primary, f.topo.Subnet.Bits()))}); err != nil {
		return fmt.Errorf("primary address: %w", err)
	}
	if err := h.LinkSetUp(eth); err != nil {
		return fmt.Errorf("set eth0 up: %w", err)
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: f.gateway.AsSlice()}); err != nil {
		return fmt.Errorf("default route: %w", err)
	}

	peer, err := f.vnet.LinkByName(dev)
	if err != nil {
		return fmt.Errorf("link %s: %w", dev, err)
	}
	if err := f.vnet.LinkSetUp(peer); err != nil {
		return fmt.Errorf("set %s up: %w", dev, err)
	}
	f.ifindex[dev] = peer.Attrs().Index
	return nil
}

// linkAlias marks an interface link in the vnet namespace with what its
// node side is, so that a reconcile sees when another interface (a new MAC)
// took the device index.
func linkAlias(w linkSpec) string { return "fabric " + w.Name + " " + w.MAC.String() }

// addInterfaceLinkLocked creates w: eth<N> in the node with the
// interface's MAC, up, and its peer in the vnet namespace with the gateway
// MAC, the peer sysctls, its alias, up. On error it removes what it made.
func (f *Fabric) addInterfaceLinkLocked(w linkSpec) (err error) {
	nodeNS, err := netns.GetFromPath(f.NodeNSPath(w.Node))
	if err != nil {
		return fmt.Errorf("open netns of %s: %w", w.Node, err)
	}
	defer nodeNS.Close()
	h, err := netlink.NewHandleAt(nodeNS)
	if err != nil {
		return fmt.Errorf("netlink handle in %s: %w", w.Node, err)
	}
	defer h.Close()
	attrs := netlink.NewLinkAttrs()
	attrs.Name = w.Name
	attrs.MTU = 1500
	attrs.HardwareAddr = w.MAC
	veth := &netlink.Veth{
		LinkAttrs:        attrs,
		PeerName:         w.Dev,
		PeerHardwareAddr: f.gatewayMAC,
		PeerNamespace:    netlink.NsFd(f.vnetNS),
	}
	if err := h.LinkAdd(veth); err != nil {
		return fmt.Errorf("add veth %s/%s in %s: %w", w.Name, w.Dev, w.Node, err)
	}
	defer func() {
		if err != nil {
			if l, lerr := f.vnet.LinkByName(w.Dev); lerr == nil {
				err = errors.Join(err, f.vnet.LinkDel(l))
			}
		}
	}()
	l, err := h.LinkByName(w.Name)
	if err != nil {
		return fmt.Errorf("link %s in %s: %w", w.Name, w.Node, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("set %s up in %s: %w", w.Name, w.Node, err)
	}
	peer, err := f.vnet.LinkByName(w.Dev)
	if err != nil {
		return fmt.Errorf("link %s: %w", w.Dev, err)
	}
	if err := f.vnet.LinkSetAlias(peer, linkAlias(w)); err != nil {
		return fmt.Errorf("alias of %s: %w", w.Dev, err)
	}
	if err := writeSysctls(f.VNetNSPath(), peerSysctls(w.Dev)); err != nil {
		return fmt.Errorf("sysctls of %s: %w", w.Dev, err)
	}
	if err := f.vnet.LinkSetUp(peer); err != nil {
		return fmt.Errorf("set %s up: %w", w.Dev, err)
	}
	f.ifindex[w.Dev] = peer.Attrs().Index
	return nil
}

// newNS creates a named namespace and records it for Destroy.
func (f *Fabric) newNS(name string) error {
	if err := namedns.Create(name); err != nil {
		return fmt.Errorf("create netns %s: %w", name, err)
	}
	f.created = append(f.created, name)
	return nil
}

// Destroy removes every namespace of the fabric (and with them all links,
// routes and tables). It is idempotent.
func (f *Fabric) Destroy() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.destroyed {
		return nil
	}
	f.destroyed = true
	var errs []error
	if f.vnet != nil {
		f.vnet.Close()
	}
	if f.vnetNS.IsOpen() {
		errs = append(errs, f.vnetNS.Close())
	}
	for _, name := range f.created {
		errs = append(errs, namedns.Delete(name))
	}
	f.created = nil
	return errors.Join(errs...)
}

// Cleanup removes every namespace named prefix-*, e.g. what a crashed
// process left behind.
func Cleanup(prefix string) error {
	if err := checkName(prefix); err != nil {
		return fmt.Errorf("prefix: %w", err)
	}
	entries, err := os.ReadDir(nsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list %s: %w", nsDir, err)
	}
	var errs []error
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix+"-") {
			errs = append(errs, namedns.Delete(e.Name()))
		}
	}
	return errors.Join(errs...)
}

// writeSysctls writes /proc/sys/<key> = value inside the namespace.
func writeSysctls(nsPath string, kv map[string]string) error {
	target, err := ns.GetNS(nsPath)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", nsPath, err)
	}
	defer target.Close()
	return target.Do(func(ns.NetNS) error {
		var errs []error
		for k, v := range kv {
			err := os.WriteFile(filepath.Join("/proc/sys", k), []byte(v), 0o644)
			if errors.Is(err, os.ErrNotExist) && strings.HasPrefix(k, "net/ipv6/") {
				continue // kernel without ipv6: nothing to disable
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("sysctl %s: %w", k, err))
			}
		}
		return errors.Join(errs...)
	})
}

func linkUp(h *netlink.Handle, name string) error {
	l, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("link %s: %w", name, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	return nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
