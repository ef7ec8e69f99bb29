package routed

import (
	"context"
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
	// VNetPrefixes, SNATExclusions and AllowMetadata: see NodeConfig.
	// Without VNetPrefixes Complete sets the node up with the address's.
	VNetPrefixes   []netip.Prefix
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
}

// Prepare starts a pod's attachment on the node at nodeNS ("" is the
// caller's namespace): with the VNet's address space in the request, the
// node (unless managed) and the pod's veth pair are set up in the
// background while the address is on its way.
func Prepare(ctx context.Context, nodeNS string, opts Options, req AttachRequest) *Attachment {
	a := &Attachment{req: req}
	a.att = linux.NewAttachment(nodeNS, linux.VethRequest{
		ContainerID: req.ContainerID, IfName: req.IfName, NetNS: req.NetNS, MTU: req.MTU,
	}, req.Managed, func() (*Node, error) { return Open(nodeNS, opts) })
	if len(req.VNetPrefixes) > 0 {
		a.att.Prepare(ctx, func(*Node) linux.EnsureFunc[*Node] { return a.ensure(req.VNetPrefixes) })
	}
	return a
}

func (a *Attachment) nodeConfig(vnet []netip.Prefix) NodeConfig {
	return NodeConfig{VNetPrefixes: vnet, SNATExclusions: a.req.SNATExclusions, AllowMetadata: a.req.AllowMetadata}
}

// ensure sets the node up with the VNet's address space vnet.
func (a *Attachment) ensure(vnet []netip.Prefix) linux.EnsureFunc[*Node] {
	return func(ctx context.Context, n *Node) error {
		_, err := n.EnsureNode(ctx, a.nodeConfig(vnet))
		return err
	}
}

// Complete finishes the pod with its address (see AddPod), setting the node
// up first when Prepare did not or did with another address space.
func (a *Attachment) Complete(ctx context.Context, addr linux.Address) (linux.PodResult, error) {
	p := a.att.Collect()
	ensure := a.ensure(addr.VNetPrefixes)
	if !p.Started || !slices.Equal(a.req.VNetPrefixes, addr.VNetPrefixes) || p.Err != nil && !p.Opened {
		a.att.Reopen()
		a.att.Ensure(ctx, ensure)
	}
	if err := a.att.Ready(); err != nil {
		return linux.PodResult{}, err
	}
	cfg := a.nodeConfig(addr.VNetPrefixes)
	pod := PodConfig{
		ContainerID: a.req.ContainerID, IfName: a.req.IfName, NetNS: a.req.NetNS, IP: addr.IP, NodeIP: addr.PrimaryIP,
		Uplink:           Uplink{ID: addr.Interface, MAC: addr.InterfaceMAC, DeviceIndex: addr.DeviceIndex, Gateway: addr.Gateway},
		RuleDestinations: cfg.RuleDestinations(), MTU: a.req.MTU,
	}
	// Managed: when vnet-ipamd has not repaired the node yet, AddPod does
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
