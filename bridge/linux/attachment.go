package linux

import (
	"errors"
	"fmt"
	"strings"

	"net"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
)

// The attachment as every mode's verbs see it: what ADD is given and
// returns, what DEL and CHECK name and find.

// ErrNodeSetup is wrapped by a mode's error when the node's datapath could
// not be opened or set up, as opposed to the pod's.
var ErrNodeSetup = errors.New("set up the node's datapath")

// PodRef names an attachment for DelPod and InspectPod. NetNS and IP are
// optional: without them DelPod relies on what the host veth records.
type PodRef struct {
	ContainerID  string
	IfName       string
	NetNS        string
	IP           netip.Addr
	HostVethName string
	// DeviceIndex is the device index of the node interface that holds IP
	// (0: the primary); routed mode's CHECK expects the policy routing of
	// another one.
	DeviceIndex int
}

// Link is one end of a pod's veth.
type Link struct {
	Name  string
	Index int
	MAC   net.HardwareAddr
	// NetNS is the namespace path for the pod end, empty for the host end.
	NetNS string
}

// PodResult is what AddPod built.
type PodResult struct {
	HostVeth Link
	PodIf    Link
	// IP is the pod's address with the subnet's prefix length.
	IP      netip.Prefix
	Gateway netip.Addr
}

// PodState is what InspectPod found; nil parts are missing.
type PodState struct {
	HostVeth *HostVethState
	PodIf    *PodIfState
	// RegisteredMAC is the MAC the mode's tables steer the IP to (nil:
	// none); SNATRegistered says whether the mode masquerades the IP.
	RegisteredMAC  net.HardwareAddr
	SNATRegistered bool
	// Drift lists what a mode found different on the node from what it
	// builds for the attachment, for CHECK (routed mode: the route to the
	// pod, its policy rules, its guard element); bridge mode reports
	// through the fields above.
	Drift []string
}

// Address is what the address manager assigned to the pod.
type Address struct {
	IP      netip.Addr
	Subnet  netip.Prefix
	Gateway netip.Addr
	// Interface is the cloud's ID of the interface that holds IP; the pod's
	// host veth records it.
	Interface string
	// InterfaceMAC and DeviceIndex find that interface in the node (0:
	// the primary); routed mode policy-routes the addresses of the others.
	InterfaceMAC net.HardwareAddr
	DeviceIndex  int
	// PrimaryIP is the node's primary address.
	PrimaryIP netip.Addr
	// VNetPrefixes is the VNet's address space as the address manager
	// knows it: the truth when it differs from the request's.
	VNetPrefixes []netip.Prefix
}

// Steps times an attachment's work, for the plugin's log line.
type Steps struct {
	// NodeOpen and EnsureNode time opening the node and EnsureNode (the
	// last run of each, when the node was set up again in Complete).
	NodeOpen, EnsureNode time.Duration
	// NodeReady is when the node was set up and the veth prepared.
	NodeReady time.Time
	// AddPod times completing the pod.
	AddPod time.Duration
}

// CheckNames checks what names an attachment in every mode: the container
// ID, the pod's interface name, the pod's namespace path and, when set, an
// overriding host veth name (it must start with HostVethPrefix, which the
// modes' tables rely on). It returns every problem.
func CheckNames(containerID, ifName, netNS, hostVethName string) []error {
	var errs []error
	if containerID == "" {
		errs = append(errs, errors.New("container id is empty"))
	}
	if hostVethName != "" && (!strings.HasPrefix(hostVethName, HostVethPrefix) || len(hostVethName) > unix.IFNAMSIZ-1) {
		errs = append(errs, fmt.Errorf("host veth name %q: want %s followed by up to %d characters", hostVethName, HostVethPrefix, unix.IFNAMSIZ-1-len(HostVethPrefix)))
	}
	if ifName == "" || len(ifName) > unix.IFNAMSIZ-1 {
		errs = append(errs, fmt.Errorf("interface name %q: want 1 to 15 characters", ifName))
	}
	if netNS == "" {
		errs = append(errs, errors.New("pod netns is empty"))
	}
	return errs
}
