// Package fabric is the simulated cloud's data plane: a "vnet" network
// namespace wired to one namespace per node and to an "internet" namespace,
// enforcing what Azure's software-defined network enforces (delivery only to
// the NIC owning the destination IP, anti-spoofing of source IP and MAC,
// ARP answered with Azure's virtual MAC, user-defined routes, outbound access
// only from primary IPs). It follows a desired State by reconcile.
package fabric

import (
	"net"
	"net/netip"
)

// VirtualMAC is the MAC address with which Azure's host network answers
// every ARP request in a virtual network.
var VirtualMAC = net.HardwareAddr{0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc}

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
	Nodes    []Node
}

// Node is one VM: its namespace gets eth0 with the NIC's MAC and primary IP.
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

// NodeState is what the control plane says about one node's NIC.
type NodeState struct {
	Name string
	// IPs are all addresses assigned to the NIC, primary included.
	IPs          []netip.Addr
	IPForwarding bool
}

// Route is a user-defined route of the subnet's route table with next hop
// type VirtualAppliance.
type Route struct {
	Prefix  netip.Prefix
	NextHop netip.Addr
}
