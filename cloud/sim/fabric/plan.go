package fabric

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
)

// Link names inside the vnet namespace.
const (
	sinkLink = "sink" // carries the gateway address; routes to unassigned VNet addresses end here
	inetLink = "inet" // towards the internet namespace
)

// nodeLink is the name of node i's eth0 peer in the vnet namespace.
func nodeLink(i int) string { return fmt.Sprintf("n%d", i) }

// interfaceLink is the name of the peer of node i's eth<device>.
func interfaceLink(i, device int) string { return fmt.Sprintf("n%de%d", i, device) }

// isInterfaceLink reports whether name is an interfaceLink.
func isInterfaceLink(name string) bool {
	var i, d int
	n, err := fmt.Sscanf(name, "n%de%d", &i, &d)
	return err == nil && n == 2 && name == interfaceLink(i, d)
}

// plan is everything the fabric wants in the vnet namespace for one State.
type plan struct {
	// Links are the interfaces beyond eth0, in topology and device order.
	Links  []linkSpec
	Routes []routeSpec // sorted by Dst
	Neighs []neighSpec
	NFT    nftSpec
}

// linkSpec is one interface beyond eth0: a veth from the node's eth<N>
// (with the interface's MAC) to Dev in the vnet namespace.
type linkSpec struct {
	Dev  string // in the vnet namespace
	Node string // node name
	Name string // in the node: eth<N>
	MAC  net.HardwareAddr
}

// routeSpec is one route of the main table, tagged with routeProtocol.
type routeSpec struct {
	Dst       netip.Prefix
	Blackhole bool
	Dev       string     // link in the vnet namespace; empty for a blackhole
	Via       netip.Addr // next hop; invalid for a directly connected route
	Onlink    bool
}

// neighSpec is one permanent neighbour entry.
type neighSpec struct {
	Dev string
	IP  netip.Addr
	MAC net.HardwareAddr
}

// nftSpec is what the anti-spoofing table enforces.
type nftSpec struct {
	Nodes []nftNode
	// Outbound are the sources allowed out to the internet: the node
	// primaries and the vnet's own address on the internet link.
	Outbound []netip.Addr
}

// nftNode is the ingress policy of one node or interface link.
type nftNode struct {
	Dev          string
	MAC          net.HardwareAddr
	IPs          []netip.Addr // sorted; primary included
	IPForwarding bool
}

// addrs derived from the topology.
func gatewayOf(topo Topology) netip.Addr      { return topo.Subnet.Masked().Addr().Next() }
func inetVNetAddr(topo Topology) netip.Addr   { return topo.Internet.Masked().Addr().Next() }
func internetHostOf(topo Topology) netip.Addr { return nthAddr(topo.Internet.Masked(), 100) }

// nthAddr is the n-th address of p, or the second host address when p is too small.
func nthAddr(p netip.Prefix, n int) netip.Addr {
	a := p.Addr()
	for range n {
		a = a.Next()
	}
	if !p.Contains(a) {
		return p.Addr().Next().Next()
	}
	return a
}

func vnetPrefixes(topo Topology) []netip.Prefix {
	if len(topo.VNetPrefixes) == 0 {
		return []netip.Prefix{topo.Subnet.Masked()}
	}
	out := make([]netip.Prefix, 0, len(topo.VNetPrefixes))
	for _, p := range topo.VNetPrefixes {
		out = append(out, p.Masked())
	}
	return out
}

// nic is one interface of a node as a plan sees it: eth0 from the
// topology, or an Interface of the State.
type nic struct {
	node    string
	dev     string // link in the vnet namespace
	device  int
	mac     net.HardwareAddr
	primary netip.Addr
	ips     []netip.Addr // primary included
	fwd     bool
}

// name is the interface's name in the node.
func (c *nic) name() string { return fmt.Sprintf("eth%d", c.device) }

// desired computes the plan for st. Inconsistencies of st (unknown nodes,
// an address claimed twice, a non-IPv4 entry, a bad interface) are
// returned as an error while the rest of the plan stays usable: the first
// claim wins, bad entries are skipped.
func desired(topo Topology, st State) (plan, error) {
	var errs []error
	nics := make(map[string][]*nic, len(topo.Nodes)) // node name -> eth0 first
	index := make(map[string]int, len(topo.Nodes))
	owner := make(map[netip.Addr]*nic)
	macs := make(map[string]bool)
	for i, n := range topo.Nodes {
		eth0 := &nic{node: n.Name, dev: nodeLink(i), mac: n.MAC, primary: n.Primary, ips: []netip.Addr{n.Primary}}
		nics[n.Name] = []*nic{eth0}
		index[n.Name] = i
		owner[n.Primary] = eth0
		macs[n.MAC.String()] = true
	}
	claim := func(node string, c *nic, ip netip.Addr) bool {
		ip = ip.Unmap()
		if !ip.Is4() {
			errs = append(errs, fmt.Errorf("node %s: address %s is not ipv4", node, ip))
			return false
		}
		if o, ok := owner[ip]; ok {
			if o != c {
				errs = append(errs, fmt.Errorf("node %s: address %s already belongs to %s of node %s", node, ip, o.name(), o.node))
			}
			return false
		}
		owner[ip] = c
		c.ips = append(c.ips, ip)
		return true
	}
	for _, ns := range st.Nodes {
		list, ok := nics[ns.Name]
		if !ok {
			errs = append(errs, fmt.Errorf("state names unknown node %q", ns.Name))
			continue
		}
		eth0 := list[0]
		eth0.fwd = eth0.fwd || ns.IPForwarding
		for _, ip := range ns.IPs {
			claim(ns.Name, eth0, ip)
		}
		for _, ifc := range ns.Interfaces {
			c, err := newInterface(index[ns.Name], ifc, list, macs)
			if err != nil {
				errs = append(errs, fmt.Errorf("node %s: %w", ns.Name, err))
				continue
			}
			if !claim(ns.Name, c, ifc.IPs[0]) {
				errs = append(errs, fmt.Errorf("node %s: eth%d skipped: its primary address is not usable", ns.Name, ifc.Device))
				continue
			}
			c.primary = c.ips[0]
			macs[c.mac.String()] = true
			for _, ip := range ifc.IPs[1:] {
				claim(ns.Name, c, ip)
			}
			list = append(list, c)
		}
		nics[ns.Name] = list
	}

	routes := make(map[netip.Prefix]routeSpec)
	for _, p := range vnetPrefixes(topo) {
		routes[p] = routeSpec{Dst: p, Dev: sinkLink}
	}
	routes[netip.PrefixFrom(netip.IPv4Unspecified(), 0)] = routeSpec{
		Dst: netip.PrefixFrom(netip.IPv4Unspecified(), 0), Dev: inetLink, Via: internetHostOf(topo),
	}
	var p plan
	for _, n := range topo.Nodes {
		list := nics[n.Name]
		slices.SortFunc(list, func(a, b *nic) int { return cmp.Compare(a.device, b.device) })
		for _, c := range list {
			if c.device > 0 {
				p.Links = append(p.Links, linkSpec{Dev: c.dev, Node: n.Name, Name: c.name(), MAC: c.mac})
			}
			slices.SortFunc(c.ips, netip.Addr.Compare)
			for _, ip := range c.ips {
				dst := netip.PrefixFrom(ip, 32)
				if ip == c.primary {
					routes[dst] = routeSpec{Dst: dst, Dev: c.dev}
					continue
				}
				routes[dst] = routeSpec{Dst: dst, Dev: c.dev, Via: c.primary, Onlink: true}
			}
			p.Neighs = append(p.Neighs, neighSpec{Dev: c.dev, IP: c.primary, MAC: c.mac})
			p.NFT.Nodes = append(p.NFT.Nodes, nftNode{Dev: c.dev, MAC: c.mac, IPs: c.ips, IPForwarding: c.fwd})
		}
		// Only the node's primary address has outbound access (Azure's
		// default outbound access, EC2's public IP of the primary ENI).
		p.NFT.Outbound = append(p.NFT.Outbound, n.Primary)
	}
	p.NFT.Outbound = append(p.NFT.Outbound, inetVNetAddr(topo))
	slices.SortFunc(p.NFT.Outbound, netip.Addr.Compare)

	// User-defined routes override system routes of the same prefix, as in Azure.
	for _, r := range st.Routes {
		dst := r.Prefix.Masked()
		if !dst.Addr().Is4() {
			errs = append(errs, fmt.Errorf("route %s: not ipv4", r.Prefix))
			continue
		}
		o, ok := owner[r.NextHop.Unmap()]
		if !ok || !o.fwd {
			// Azure drops traffic to a virtual appliance whose NIC does
			// not forward, or to a next hop that is no NIC at all.
			routes[dst] = routeSpec{Dst: dst, Blackhole: true}
			continue
		}
		routes[dst] = routeSpec{Dst: dst, Dev: o.dev, Via: o.primary, Onlink: true}
	}
	for _, r := range routes {
		p.Routes = append(p.Routes, r)
	}
	sortRoutes(p.Routes)
	return p, errors.Join(errs...)
}

// newInterface checks an Interface of node i against the node's interfaces
// so far and the MACs in use.
func newInterface(i int, ifc Interface, have []*nic, macs map[string]bool) (*nic, error) {
	if ifc.Device < 1 || ifc.Device > MaxDevice {
		return nil, fmt.Errorf("interface device index %d out of range 1..%d", ifc.Device, MaxDevice)
	}
	for _, c := range have {
		if c.device == ifc.Device {
			return nil, fmt.Errorf("eth%d: device index used twice", ifc.Device)
		}
	}
	if len(ifc.MAC) != 6 || ifc.MAC[0]&1 != 0 {
		return nil, fmt.Errorf("eth%d: mac %s is not a unicast ethernet address", ifc.Device, ifc.MAC)
	}
	if macs[ifc.MAC.String()] {
		return nil, fmt.Errorf("eth%d: mac %s is already in use", ifc.Device, ifc.MAC)
	}
	if len(ifc.IPs) == 0 {
		return nil, fmt.Errorf("eth%d: no addresses", ifc.Device)
	}
	return &nic{node: have[0].node, dev: interfaceLink(i, ifc.Device), device: ifc.Device, mac: slices.Clone(ifc.MAC), fwd: ifc.IPForwarding}, nil
}

func sortRoutes(rs []routeSpec) {
	slices.SortFunc(rs, func(a, b routeSpec) int { return comparePrefix(a.Dst, b.Dst) })
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
}
