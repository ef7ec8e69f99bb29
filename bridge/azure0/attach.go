package azure0

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

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
	nodeNS string
	opts   Options
	req    AttachRequest
	// early and veth deliver the background work started by Prepare; nil
	// when nothing was started.
	early chan ensured
	veth  chan bool
	// Set once the background work is collected.
	collected bool
	node      *Node
	vethMade  bool
	ip        netip.Addr
	steps     linux.Steps
}

// ensured is the node's datapath after EnsureNode.
type ensured struct {
	node *Node
	info NodeInfo
	err  error
	// open and ensure time the two steps.
	open, ensure time.Duration
}

// Prepare starts a pod's attachment on the node at nodeNS ("" is the
// caller's namespace). When the request has the VNet's address space, the
// node's datapath (bridge and tables) and the pod's veth pair (see
// PrepareVeth) are set up in the background, bounded by ctx, so that the
// kernel's work overlaps the wait for the address; otherwise nothing starts
// until Complete.
func Prepare(ctx context.Context, nodeNS string, opts Options, req AttachRequest) *Attachment {
	a := &Attachment{nodeNS: nodeNS, opts: opts, req: req}
	if len(req.VNetPrefixes) == 0 {
		return a
	}
	a.early = make(chan ensured, 1)
	a.veth = make(chan bool, 1)
	go func() {
		if req.Managed {
			a.early <- a.open()
			return
		}
		a.early <- a.ensure(ctx, req.VNetPrefixes)
	}()
	go func() {
		master := req.Bridge.Name
		if master == "" {
			master = DefaultBridgeName
		}
		ok, _ := linux.PrepareVeth(nodeNS, linux.VethRequest{
			ContainerID: req.ContainerID, IfName: req.IfName, NetNS: req.NetNS, MTU: req.Bridge.MTU, Master: master,
		})
		a.veth <- ok
	}()
	return a
}

// collect waits for the work Prepare started.
func (a *Attachment) collect() ensured {
	a.collected = true
	if a.early == nil {
		return ensured{}
	}
	e := <-a.early
	a.vethMade = <-a.veth
	a.node = e.node
	return e
}

// open opens the node's datapath without setting it up: the managed path.
func (a *Attachment) open() ensured {
	start := time.Now()
	node, err := Open(a.nodeNS, a.opts)
	if err != nil {
		return ensured{err: fmt.Errorf("%w: %w", linux.ErrNodeSetup, err)}
	}
	e := ensured{node: node, open: time.Since(start)}
	e.info.Bridge.Name = a.req.Bridge.Name
	if e.info.Bridge.Name == "" {
		e.info.Bridge.Name = DefaultBridgeName
	}
	return e
}

// ensure opens the node's datapath and makes sure of the bridge and the
// tables with the VNet's address space vnet.
func (a *Attachment) ensure(ctx context.Context, vnet []netip.Prefix) ensured {
	e := a.open()
	if e.err != nil {
		return e
	}
	return a.ensureOpen(ctx, e, vnet)
}

// ensureOpen sets up the node e has opened.
func (a *Attachment) ensureOpen(ctx context.Context, e ensured, vnet []netip.Prefix) ensured {
	start := time.Now()
	info, err := e.node.EnsureNode(ctx, a.nodeConfig(vnet))
	e.ensure = time.Since(start)
	if err != nil {
		e.err = fmt.Errorf("%w: %w", linux.ErrNodeSetup, err)
		return e
	}
	e.info = info
	return e
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
	e := a.collect()
	if a.early == nil || !slices.Equal(a.req.VNetPrefixes, addr.VNetPrefixes) {
		_ = a.closeNode() // opened again just below
		e = a.ensure(ctx, addr.VNetPrefixes)
		a.node = e.node
	}
	a.steps.NodeOpen, a.steps.EnsureNode, a.steps.NodeReady = e.open, e.ensure, time.Now()
	if e.err != nil {
		return linux.PodResult{}, e.err
	}
	a.ip = addr.IP
	start := time.Now()
	pod := PodConfig{
		ContainerID: a.req.ContainerID, IfName: a.req.IfName, NetNS: a.req.NetNS,
		IP: addr.IP, Subnet: addr.Subnet, Gateway: addr.Gateway, Interface: addr.Interface,
		MTU: a.req.Bridge.MTU, Bridge: e.info.Bridge.Name,
		Strict: a.req.Managed,
	}
	res, err := a.node.AddPod(ctx, pod)
	if errors.Is(err, ErrNotReady) && a.req.Managed {
		// The node lacks what vnet-ipamd keeps (it is repairing it, or it
		// has not seen the change yet): set it up here, as an unmanaged
		// ADD does, and try once more.
		e = a.ensureOpen(ctx, ensured{node: a.node}, addr.VNetPrefixes)
		a.steps.EnsureNode = e.ensure
		if e.err != nil {
			return linux.PodResult{}, e.err
		}
		pod.Bridge, pod.Strict = e.info.Bridge.Name, false
		res, err = a.node.AddPod(ctx, pod)
	}
	a.steps.AddPod = time.Since(start)
	return res, err
}

// Steps reports the timings of the work done so far.
func (a *Attachment) Steps() linux.Steps { return a.steps }

// Abort removes what exists of the attachment: the prepared veth pair, or
// the pod Complete built (in part or in full) with its entries. It waits for
// the work Prepare started; ctx bounds the removal.
func (a *Attachment) Abort(ctx context.Context) error {
	if !a.collected {
		a.collect()
	}
	if !a.vethMade && !a.ip.IsValid() {
		return nil
	}
	if a.node == nil {
		n, err := Open(a.nodeNS, a.opts)
		if err != nil {
			return err
		}
		a.node = n
	}
	return a.node.DelPod(ctx, linux.PodRef{ContainerID: a.req.ContainerID, IfName: a.req.IfName, NetNS: a.req.NetNS, IP: a.ip})
}

// Close releases the node's datapath, waiting for the work Prepare started.
func (a *Attachment) Close() error {
	if !a.collected {
		a.collect()
	}
	return a.closeNode()
}

func (a *Attachment) closeNode() error {
	if a.node == nil {
		return nil
	}
	err := a.node.Close()
	a.node = nil
	return err
}
