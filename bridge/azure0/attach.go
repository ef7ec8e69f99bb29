package azure0

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/vnet-cni/vnet-cni/bridge/linux"
)

// ErrNodeSetup is wrapped by Attachment.Complete's error when the node's
// datapath could not be opened or set up, as opposed to the pod's.
var ErrNodeSetup = errors.New("set up the node's datapath")

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
	// SNATExclusions: see NodeConfig.
	SNATExclusions []netip.Prefix
}

// Address is what the address manager assigned to the pod.
type Address struct {
	IP      netip.Addr
	Subnet  netip.Prefix
	Gateway netip.Addr
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
	steps     Steps
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
	go func() { a.early <- a.ensure(ctx, req.VNetPrefixes) }()
	go func() {
		ok, _ := PrepareVeth(nodeNS, VethRequest{
			ContainerID: req.ContainerID, IfName: req.IfName, NetNS: req.NetNS, MTU: req.Bridge.MTU, Bridge: req.Bridge.Name,
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

// ensure opens the node's datapath and makes sure of the bridge and the
// tables with the VNet's address space vnet.
func (a *Attachment) ensure(ctx context.Context, vnet []netip.Prefix) ensured {
	start := time.Now()
	node, err := Open(a.nodeNS, a.opts)
	if err != nil {
		return ensured{err: fmt.Errorf("%w: %w", ErrNodeSetup, err)}
	}
	opened := time.Now()
	info, err := node.EnsureNode(ctx, NodeConfig{
		Bridge: a.req.Bridge, VNetPrefixes: vnet, SNATExclusions: a.req.SNATExclusions,
	})
	if err != nil {
		return ensured{node: node, err: fmt.Errorf("%w: %w", ErrNodeSetup, err)}
	}
	return ensured{node: node, info: info, open: opened.Sub(start), ensure: time.Since(opened)}
}

// Complete finishes the pod with its address: it waits for the work
// Prepare started, sets the node up again when the address's VNet space
// differs from the request's (or the request had none), and adds the pod
// (see AddPod). A failure leaves the pieces for Abort.
func (a *Attachment) Complete(ctx context.Context, addr Address) (PodResult, error) {
	e := a.collect()
	if a.early == nil || !slices.Equal(a.req.VNetPrefixes, addr.VNetPrefixes) {
		_ = a.closeNode() // opened again just below
		e = a.ensure(ctx, addr.VNetPrefixes)
		a.node = e.node
	}
	a.steps.NodeOpen, a.steps.EnsureNode, a.steps.NodeReady = e.open, e.ensure, time.Now()
	if e.err != nil {
		return PodResult{}, e.err
	}
	a.ip = addr.IP
	start := time.Now()
	res, err := a.node.AddPod(ctx, PodConfig{
		ContainerID: a.req.ContainerID, IfName: a.req.IfName, NetNS: a.req.NetNS,
		IP: addr.IP, Subnet: addr.Subnet, Gateway: addr.Gateway, MTU: a.req.Bridge.MTU, Bridge: e.info.Bridge.Name,
	})
	a.steps.AddPod = time.Since(start)
	return res, err
}

// Steps reports the timings of the work done so far.
func (a *Attachment) Steps() Steps { return a.steps }

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
	return a.node.DelPod(ctx, PodRef{ContainerID: a.req.ContainerID, IfName: a.req.IfName, NetNS: a.req.NetNS, IP: a.ip})
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

// VethRequest names a pod's veth before its address is known.
type VethRequest struct {
	ContainerID string
	IfName      string
	// NetNS is the path of the pod's network namespace.
	NetNS string
	// MTU of both ends; 0 means the bridge's.
	MTU int
	// Bridge is the bridge's name; default DefaultBridgeName.
	Bridge string
}

// PrepareVeth creates a pod's veth pair ahead of its address, so that the
// kernel's work of creating it (mostly waiting in the kernel) overlaps the
// allocation: the host end up and enslaved to the
// bridge, the pod end down in the pod namespace (no carrier, so no frame
// passes), without address, alias or final MAC. AddPod then finds the
// pair, gives the pod end its MAC and completes it like the pair an
// interrupted ADD left behind. nodeNS is the node's namespace path ("" is
// the caller's).
//
// It creates nothing and returns false when the bridge does not exist yet
// (the node's first pod) or when the name is taken (a repeated ADD, a
// conflicting interface): AddPod then does all the work and reports any
// conflict. A prepared pair that is not completed is removed by DelPod like
// any pod veth.
func PrepareVeth(nodeNS string, req VethRequest) (bool, error) {
	if req.Bridge == "" {
		req.Bridge = DefaultBridgeName
	}
	h, err := linux.OpenNS(nodeNS)
	if err != nil {
		return false, err
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		return false, fmt.Errorf("netlink handle in node netns: %w", err)
	}
	defer nl.Close()
	br, err := nl.LinkByName(req.Bridge)
	if err != nil {
		if linux.IsNotFound(err) {
			return false, nil
		}
		return false, fmt.Errorf("bridge %s: %w", req.Bridge, err)
	}
	podNS, err := netns.GetFromPath(req.NetNS)
	if err != nil {
		return false, fmt.Errorf("open pod netns %s: %w", req.NetNS, err)
	}
	defer podNS.Close()
	mtu := req.MTU
	if mtu == 0 {
		mtu = br.Attrs().MTU
	}
	if err := nl.LinkAdd(linux.Veth(linux.HostVethName(req.ContainerID, req.IfName), req.IfName, br.Attrs().Index, mtu, podNS, nil)); err != nil {
		// Whatever the reason, AddPod will meet it again and say what it is.
		return false, nil
	}
	return true, nil
}
