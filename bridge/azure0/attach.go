package azure0

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
	NetNS  string
	Bridge BridgeConfig
	// VNetPrefixes is the VNet's address space as the configuration has it;
	// with it the node is set up while the address is on its way. Empty:
	// Complete sets the node up with the address's.
	VNetPrefixes []netip.Prefix
	// SNATExclusions and AllowMetadata: see NodeConfig.
	SNATExclusions []netip.Prefix
	AllowMetadata  bool
	// Managed says that vnet-ipamd keeps the node's datapath (sets it up
	// before it declares the node ready and repairs it when it changes):
	// ADD then only opens the node and adds the pod strictly (see
	// PodConfig.Strict), and sets the node up itself only when the pod
	// cannot be added for something the node lacks.
	Managed bool
}

// Attachment is one pod's attachment while ADD runs: Prepare starts it
// before the address is known, Complete finishes it with the address, and
// Abort removes whatever exists of it. Close releases it in every case.
type Attachment struct {
	att *linux.Attachment[*Node]
	req AttachRequest
	// bridge is the bridge's name as EnsureNode last reported it (before:
	// the request's).
	bridge string
}

// Prepare starts a pod's attachment on the node at nodeNS ("" is the
// caller's namespace). When the request has the VNet's address space, the
// node's datapath (bridge and tables) and the pod's veth pair (see
// PrepareVeth) are set up in the background, bounded by ctx, so that the
// kernel's work overlaps the wait for the address; otherwise nothing starts
// until Complete.
func Prepare(ctx context.Context, nodeNS string, opts Options, req AttachRequest) *Attachment {
	a := &Attachment{req: req, bridge: req.Bridge.Name}
	if a.bridge == "" {
		a.bridge = DefaultBridgeName
	}
	a.att = linux.NewAttachment(nodeNS, linux.VethRequest{
		ContainerID: req.ContainerID, IfName: req.IfName, NetNS: req.NetNS, MTU: req.Bridge.MTU, Master: a.bridge,
	}, req.Managed, func() (*Node, error) { return Open(nodeNS, opts) })
	if len(req.VNetPrefixes) > 0 {
		a.att.Prepare(ctx, func(*Node) linux.EnsureFunc[*Node] { return a.ensure(req.VNetPrefixes) })
	}
	return a
}

// ensure makes sure of the bridge and the tables with the VNet's address
// space vnet.
func (a *Attachment) ensure(vnet []netip.Prefix) linux.EnsureFunc[*Node] {
	return func(ctx context.Context, n *Node) error {
		info, err := n.EnsureNode(ctx, a.nodeConfig(vnet))
		if err == nil {
			a.bridge = info.Bridge.Name
		}
		return err
	}
}

// nodeConfig is the node's wanted datapath as the request describes it.
func (a *Attachment) nodeConfig(vnet []netip.Prefix) NodeConfig {
	return NodeConfig{
		Bridge: a.req.Bridge, VNetPrefixes: vnet, SNATExclusions: a.req.SNATExclusions,
		AllowMetadata: a.req.AllowMetadata,
	}
}

// Complete finishes the pod with its address: it waits for the work
// Prepare started, sets the node up again when the address's VNet space
// differs from the request's (or the request had none), and adds the pod
// (see AddPod). A failure leaves the pieces for Abort.
func (a *Attachment) Complete(ctx context.Context, addr linux.Address) (linux.PodResult, error) {
	p := a.att.Collect()
	ensure := a.ensure(addr.VNetPrefixes)
	if !p.Started || !slices.Equal(a.req.VNetPrefixes, addr.VNetPrefixes) {
		a.att.Reopen()
		a.att.Ensure(ctx, ensure)
	}
	if err := a.att.Ready(); err != nil {
		return linux.PodResult{}, err
	}
	pod := PodConfig{
		ContainerID: a.req.ContainerID, IfName: a.req.IfName, NetNS: a.req.NetNS,
		IP: addr.IP, Subnet: addr.Subnet, Gateway: addr.Gateway, Interface: addr.Interface,
		MTU: a.req.Bridge.MTU, Bridge: a.bridge,
		Strict: a.req.Managed,
	}
	// Managed: when the node lacks what vnet-ipamd keeps (it is repairing
	// it, or it has not seen the change yet), AddPod sets it up here, as an
	// unmanaged ADD does, and adds the pod once more, no longer strictly.
	return a.att.AddPod(ctx, addr.IP, ErrNotReady, ensure, func(ctx context.Context, n *Node, again bool) (linux.PodResult, error) {
		if again {
			pod.Bridge, pod.Strict = a.bridge, false
		}
		return n.AddPod(ctx, pod)
	})
}

// Steps reports the timings of the work done so far.
func (a *Attachment) Steps() linux.Steps { return a.att.Steps() }

// Abort removes what exists of the attachment: the prepared veth pair, or
// the pod Complete built (in part or in full) with its entries. It waits for
// the work Prepare started; ctx bounds the removal.
func (a *Attachment) Abort(ctx context.Context) error { return a.att.Abort(ctx) }

// Close releases the node's datapath, waiting for the work Prepare started.
func (a *Attachment) Close() error { return a.att.Close() }
