package kubenet

import (
	"context"
	"fmt"
	"net/netip"
	"slices"

	"github.com/vnet-cni/vnet-cni/bridge/linux"
)

// AttachRequest is a pod's attachment as ADD knows it before its address.
type AttachRequest struct {
	ContainerID string
	IfName      string
	// NetNS is the path of the pod's network namespace.
	NetNS string
	MTU   int
	// Bridge, VNetPrefixes, ClusterCIDR, SNATExclusions and AllowMetadata:
	// see NodeConfig. Without VNetPrefixes Complete sets the node up with
	// the address's.
	Bridge         string
	VNetPrefixes   []netip.Prefix
	ClusterCIDR    netip.Prefix
	SNATExclusions []netip.Prefix
	AllowMetadata  bool
	// Managed says that vnet-ipamd keeps the node's datapath: ADD then sets
	// it up only when the pod cannot be added without it.
	Managed bool
}

// Attachment is one pod's attachment while ADD runs: Prepare starts it
// before the address is known, Complete finishes it, Abort removes what
// exists of it. Close releases it in every case.
type Attachment struct {
	att *linux.Attachment[*Node]
	req AttachRequest
	// gateway is the bridge's address the node was last set up with
	// (invalid: not set up), primary the SNAT target it was set up with.
	gateway netip.Prefix
	primary netip.Addr
}

// Prepare starts a pod's attachment on the node at nodeNS ("" is the
// caller's namespace): the pod's veth pair (a port of the bridge when it
// exists) and, with the VNet's address space in the request and unless
// managed, the node with the pod CIDR its bridge has now, in the background
// while the address is on its way.
func Prepare(ctx context.Context, nodeNS string, opts Options, req AttachRequest) *Attachment {
	a := &Attachment{req: req}
	a.att = linux.NewAttachment(nodeNS, linux.VethRequest{
		ContainerID: req.ContainerID, IfName: req.IfName, NetNS: req.NetNS, MTU: req.MTU, Master: a.bridgeName(),
	}, req.Managed, func() (*Node, error) { return Open(nodeNS, opts) })
	if len(req.VNetPrefixes) > 0 {
		a.att.Prepare(ctx, func(n *Node) linux.EnsureFunc[*Node] {
			gw, ok := n.currentGateway(a.bridgeName())
			if !ok {
				return nil
			}
			return a.ensure(req.VNetPrefixes, gw, netip.Addr{})
		})
	}
	return a
}

func (a *Attachment) bridgeName() string {
	if a.req.Bridge == "" {
		return DefaultBridgeName
	}
	return a.req.Bridge
}

// currentGateway is the one address of an existing kubenet bridge.
func (n *Node) currentGateway(name string) (netip.Prefix, bool) {
	br, err := n.bridgeLink(name)
	if err != nil || br == nil || !isKubenetBridge(br) {
		return netip.Prefix{}, false
	}
	addrs, err := n.bridgeAddrs(br)
	if err != nil || len(addrs) != 1 || validGateway(addrs[0]) != nil {
		return netip.Prefix{}, false
	}
	return addrs[0], true
}

func (a *Attachment) nodeConfig(vnet []netip.Prefix, gw netip.Prefix, primary netip.Addr) NodeConfig {
	return NodeConfig{
		Bridge: a.req.Bridge, Gateway: gw, VNetPrefixes: vnet, ClusterCIDR: a.req.ClusterCIDR,
		SNATExclusions: a.req.SNATExclusions, PrimaryIP: primary, AllowMetadata: a.req.AllowMetadata,
	}
}

// ensure sets the node up with the VNet's address space vnet, the bridge's
// address gw and the SNAT target primary (invalid: the node's), and records
// what it was set up with.
func (a *Attachment) ensure(vnet []netip.Prefix, gw netip.Prefix, primary netip.Addr) linux.EnsureFunc[*Node] {
	return func(ctx context.Context, n *Node) error {
		info, err := n.EnsureNode(ctx, a.nodeConfig(vnet, gw, primary))
		a.gateway, a.primary = gw, info.PrimaryIP
		return err
	}
}

// Complete finishes the pod with its address (see AddPod): addr.Subnet is
// the pod CIDR and addr.Gateway the bridge's address in it. Unless managed
// it sets the node up first when Prepare did not, or did with another
// address space or pod CIDR.
func (a *Attachment) Complete(ctx context.Context, addr linux.Address) (linux.PodResult, error) {
	p := a.att.Collect()
	if !addr.Subnet.IsValid() || !addr.Gateway.Is4() || !addr.Subnet.Contains(addr.Gateway) {
		return linux.PodResult{}, fmt.Errorf("%w: address %s: want the pod cidr and its gateway, have %s and %s", ErrConfig, addr.IP, addr.Subnet, addr.Gateway)
	}
	gw := netip.PrefixFrom(addr.Gateway, addr.Subnet.Bits())
	if !p.Started || p.Err != nil && !p.Opened {
		a.att.Reopen()
	}
	ensure := a.ensure(addr.VNetPrefixes, gw, addr.PrimaryIP)
	if !a.req.Managed && (p.Err != nil || a.gateway != gw || !slices.Equal(a.req.VNetPrefixes, addr.VNetPrefixes) ||
		addr.PrimaryIP.IsValid() && addr.PrimaryIP != a.primary) {
		// Set up with what the address manager says, the truth.
		a.att.Ensure(ctx, ensure)
	}
	if err := a.att.Ready(); err != nil {
		return linux.PodResult{}, err
	}
	pod := PodConfig{
		ContainerID: a.req.ContainerID, IfName: a.req.IfName, NetNS: a.req.NetNS,
		IP: netip.PrefixFrom(addr.IP, addr.Subnet.Bits()), Gateway: addr.Gateway,
		Interface: addr.Interface, Bridge: a.req.Bridge, MTU: a.req.MTU,
	}
	// Managed: when vnet-ipamd has not set the node up (yet), AddPod does
	// it here once.
	return a.att.AddPod(ctx, addr.IP, ErrNotReady, ensure, func(ctx context.Context, n *Node, _ bool) (linux.PodResult, error) {
		return n.AddPod(ctx, pod)
	})
}

// Steps reports the timings of the work done so far.
func (a *Attachment) Steps() linux.Steps { return a.att.Steps() }

// Abort removes what exists of the attachment; ctx bounds the removal.
func (a *Attachment) Abort(ctx context.Context) error { return a.att.Abort(ctx) }

// Close releases the node's datapath, waiting for the work Prepare started.
func (a *Attachment) Close() error { return a.att.Close() }
