// Package arm is the simulated Azure Resource Manager network API: network
// interfaces, virtual networks and subnets, route tables and routes, with
// Azure's semantics (long-running PUTs, ETags, validation errors, throttling,
// bearer-token auth) and run-time fault injection.
package arm

import (
	"net"
	"net/netip"
)

// Snapshot is the committed control-plane state that the data plane follows.
// Only the effects of succeeded operations are in it: a NIC update whose
// long-running operation is still InProgress is not.
type Snapshot struct {
	// VNetPrefixes is the address space of the virtual network.
	VNetPrefixes []netip.Prefix
	// Subnet is the prefix of the one subnet the nodes live in.
	Subnet netip.Prefix
	// NICs lists every network interface, ordered by name.
	NICs []NICState
	// Routes lists the effective routes of the route table associated with
	// the subnet (RouteEffectDelay after the change that made them),
	// ordered by name.
	Routes []RouteState
}

// NICState is one network interface as the fabric needs it.
type NICState struct {
	Name string
	MAC  net.HardwareAddr
	// Primary is the private IP of the primary ipConfiguration.
	Primary netip.Addr
	// Secondary holds the private IPs of all other ipConfigurations, sorted.
	Secondary    []netip.Addr
	IPForwarding bool
}

// RouteState is one user-defined route.
type RouteState struct {
	Name   string
	Prefix netip.Prefix
	// NextHopType is Azure's next hop type, e.g. "VirtualAppliance", "None".
	NextHopType string
	// NextHop is the next hop IP for VirtualAppliance routes.
	NextHop netip.Addr
}
