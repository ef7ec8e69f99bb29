// Package fabric is the simulated cloud's data plane: a "vnet" network
// namespace wired to one namespace per node and to an "internet" namespace,
// enforcing what the software-defined networks of Azure and AWS enforce
// (delivery only to the interface owning the destination IP, anti-spoofing
// of source IP and MAC, ARP answered with one gateway MAC, user-defined
// routes, outbound access only from primary IPs). Every node has eth0 (an
// Azure NIC, EC2's primary ENI); further interfaces (EC2's attached ENIs)
// come and go with the State. It follows a desired State by reconcile.
package fabric

import (
	"net"
	"net/netip"
)

// VirtualMAC is the MAC address with which Azure's host network answers
// every ARP request in a virtual network.
var VirtualMAC = net.HardwareAddr{0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc}

// VPCRouterMAC is the MAC with which the simulated EC2 VPC router (the
// subnet's base address + 1) answers ARP. AWS uses a per-subnet router MAC;
// the simulator uses this fixed one (locally administered; "vpc" in its
// middle bytes).
var VPCRouterMAC = net.HardwareAddr{0x02, 0x76, 0x70, 0x63, 0x00, 0x01}

// IMDSAddr is the address of the instance metadata service inside every node.
var IMDSAddr = netip.MustParseAddr("169.254.169.254")

// Topology is fixed for the lifetime of a fabric: which namespaces and links exist.
type Topology struct {
	// Prefix is prepended to every namespace name, unique per run (e.g. "vs3fa2c1").
	Prefix string
	// VNetPrefixes is the address space of the virtual network.
	VNetPrefixes []netip.Prefix
	// Subnet is the node subnet; its first address is the gateway.
	Subnet netip.Prefix
	// Internet is the documentation range of the internet namespace, e.g. 203.0.113.0/24.
	Internet netip.Prefix
	// GatewayMAC is the MAC with which the fabric answers every ARP
	// request (the gateway's and any other): default VirtualMAC (Azure's);
	// VPCRouterMAC for EC2.
	GatewayMAC net.HardwareAddr
	Nodes      []Node
}

// Node is one VM: its namespace gets eth0 with the NIC's (or primary ENI's)
// MAC and primary IP.
type Node struct {
	Name    string // VM name, e.g. "node0"; the namespace is Prefix+"-"+Name
	MAC     net.HardwareAddr
	Primary netip.Addr
}

// State is the desired forwarding state, derived from the control plane.
type State struct {
	Nodes  []NodeState
	Routes []Route
}

// NodeState is what the control plane says about one node's interfaces.
type NodeState struct {
	Name string
	// IPs are all addresses assigned to eth0's NIC (EC2: the ENI at device
	// index 0), primary included.
	IPs []netip.Addr
	// IPForwarding lets eth0 send from any source: Azure's IP forwarding,
	// EC2's source/destination check turned off.
	IPForwarding bool
	// Interfaces are the node's further interfaces: EC2's ENIs attached at
	// device index 1 and up.
	Interfaces []Interface
}

// MaxDevice is the highest device index of an Interface.
const MaxDevice = 63

// Interface is an interface beyond eth0 (an attached ENI). While it is in
// the State, the node has a link eth<Device> with its MAC, up, wired to the
// vnet namespace; when it leaves the State the link is removed.
type Interface struct {
	// Device is the device index, 1 to MaxDevice; the link in the node is
	// named eth<Device>.
	Device int
	MAC    net.HardwareAddr
	// IPs are the interface's addresses, its primary first. An interface
	// without addresses is refused.
	IPs []netip.Addr
	// IPForwarding lets it send from any source (EC2's source/destination
	// check turned off).
	IPForwarding bool
}

// Route is a user-defined route of the subnet's route table with next hop
// type VirtualAppliance.
type Route struct {
	Prefix  netip.Prefix
	NextHop netip.Addr
}
