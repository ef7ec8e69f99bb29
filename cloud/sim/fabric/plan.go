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

// nodeLink is the name of node i's link in the vnet namespace.
func nodeLink(i int) string { return fmt.Sprintf("n%d", i) }

// plan is everything the fabric wants in the vnet namespace for one State.
type plan struct {
	Routes []routeSpec // sorted by Dst
	Neighs []neighSpec
	NFT    nftSpec
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

// nftNode is the ingress policy of one node link.
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

// desired computes the plan for st. Inconsistencies of st (unknown nodes,
// an address claimed by two NICs, a non-IPv4 entry) are returned as an error
// while the rest of the plan stays usable: the first claim wins, bad entries
// are skipped.
func desired(topo Topology, st State) (plan, error) {
	var errs []error
	type nodeInfo struct {
		idx int
		ips []netip.Addr
		fwd bool
	}
	nodes := make(map[string]*nodeInfo, len(topo.Nodes))
	owner := make(map[netip.Addr]int) // address -> node index
	for i, n := range topo.Nodes {
		nodes[n.Name] = &nodeInfo{idx: i, ips: []netip.Addr{n.Primary}}
		owner[n.Primary] = i
	}
	for _, ns := range st.Nodes {
		ni, ok := nodes[ns.Name]
		if !ok {
			errs = append(errs, fmt.Errorf("state names unknown node %q", ns.Name))
			continue
		}
		ni.fwd = ni.fwd || ns.IPForwarding
		for _, ip := range ns.IPs {
			ip = ip.Unmap()
			if !ip.Is4() {
				errs = append(errs, fmt.Errorf("node %s: address %s is not ipv4", ns.Name, ip))
				continue
			}
			if o, ok := owner[ip]; ok {
				if o != ni.idx {
					errs = append(errs, fmt.Errorf("node %s: address %s already belongs to node %s", ns.Name, ip, topo.Nodes[o].Name))
				}
				continue
			}
			owner[ip] = ni.idx
			ni.ips = append(ni.ips, ip)
		}
	}

	routes := make(map[netip.Prefix]routeSpec)
	for _, p := range vnetPrefixes(topo) {
		routes[p] = routeSpec{Dst: p, Dev: sinkLink}
	}
	routes[netip.PrefixFrom(netip.IPv4Unspecified(), 0)] = routeSpec{
		Dst: netip.PrefixFrom(netip.IPv4Unspecified(), 0), Dev: inetLink, Via: internetHostOf(topo),
	}
	var p plan
	for i, n := range topo.Nodes {
		ni := nodes[n.Name]
		dev := nodeLink(i)
		slices.SortFunc(ni.ips, netip.Addr.Compare)
		for _, ip := range ni.ips {
			dst := netip.PrefixFrom(ip, 32)
			if ip == n.Primary {
				routes[dst] = routeSpec{Dst: dst, Dev: dev}
				continue
			}
			routes[dst] = routeSpec{Dst: dst, Dev: dev, Via: n.Primary, Onlink: true}
		}
		p.Neighs = append(p.Neighs, neighSpec{Dev: dev, IP: n.Primary, MAC: n.MAC})
		p.NFT.Nodes = append(p.NFT.Nodes, nftNode{Dev: dev, MAC: n.MAC, IPs: ni.ips, IPForwarding: ni.fwd})
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
		if !ok || !nodes[topo.Nodes[o].Name].fwd {
			// Azure drops traffic to a virtual appliance whose NIC does
			// not forward, or to a next hop that is no NIC at all.
			routes[dst] = routeSpec{Dst: dst, Blackhole: true}
			continue
		}
		routes[dst] = routeSpec{Dst: dst, Dev: nodeLink(o), Via: topo.Nodes[o].Primary, Onlink: true}
	}
	for _, r := range routes {
		p.Routes = append(p.Routes, r)
	}
	sortRoutes(p.Routes)
	return p, errors.Join(errs...)
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
