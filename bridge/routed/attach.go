package routed

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
	nodeNS string
	opts   Options
	req    AttachRequest
	// ready delivers the background work Prepare started; nil when
	// nothing was started.
	ready     chan prepared
	collected bool
	node      *Node
	vethMade  bool
	ip        netip.Addr
	steps     linux.Steps
}

type prepared struct {
	node         *Node
	veth         bool
	err          error
	open, ensure time.Duration
}

// Prepare starts a pod's attachment on the node at nodeNS ("" is the
// caller's namespace): with the VNet's address space in the request, the
// node (unless managed) and the pod's veth pair are set up in the
// background while the address is on its way.
func Prepare(ctx context.Context, nodeNS string, opts Options, req AttachRequest) *Attachment {
	a := &Attachment{nodeNS: nodeNS, opts: opts, req: req}
	if len(req.VNetPrefixes) == 0 {
		return a
	}
	a.ready = make(chan prepared, 1)
	go func() {
		vethDone := make(chan bool, 1)
		go func() {
			ok, _ := linux.PrepareVeth(nodeNS, linux.VethRequest{
				ContainerID: req.ContainerID, IfName: req.IfName, NetNS: req.NetNS, MTU: req.MTU,
			})
			vethDone <- ok
		}()
		p := a.open()
		if p.err == nil && !req.Managed {
			p = a.ensure(ctx, p, req.VNetPrefixes)
		}
		p.veth = <-vethDone
		a.ready <- p
	}()
	return a
}

func (a *Attachment) open() prepared {
	start := time.Now()
	node, err := Open(a.nodeNS, a.opts)
	if err != nil {
		return prepared{err: fmt.Errorf("%w: %w", linux.ErrNodeSetup, err)}
	}
	return prepared{node: node, open: time.Since(start)}
}

func (a *Attachment) nodeConfig(vnet []netip.Prefix) NodeConfig {
	return NodeConfig{VNetPrefixes: vnet, SNATExclusions: a.req.SNATExclusions, AllowMetadata: a.req.AllowMetadata}
}

// ensure sets up the node p has opened.
func (a *Attachment) ensure(ctx context.Context, p prepared, vnet []netip.Prefix) prepared {
	start := time.Now()
	_, err := p.node.EnsureNode(ctx, a.nodeConfig(vnet))
	p.ensure = time.Since(start)
	if err != nil {
		p.err = fmt.Errorf("%w: %w", linux.ErrNodeSetup, err)
	}
	return p
}

func (a *Attachment) collect() prepared {
	a.collected = true
	if a.ready == nil {
		return prepared{}
	}
	p := <-a.ready
	a.node, a.vethMade = p.node, p.veth
	return p
}

// Complete finishes the pod with its address (see AddPod), setting the node
// up first when Prepare did not or did with another address space.
func (a *Attachment) Complete(ctx context.Context, addr linux.Address) (linux.PodResult, error) {
	p := a.collect()
	if a.ready == nil || !slices.Equal(a.req.VNetPrefixes, addr.VNetPrefixes) || p.err != nil && a.node == nil {
		_ = a.closeNode() // opened again just below
		p = a.open()
		a.node = p.node
		if p.err == nil {
			p = a.ensure(ctx, p, addr.VNetPrefixes)
		}
	}
	a.steps.NodeOpen, a.steps.EnsureNode, a.steps.NodeReady = p.open, p.ensure, time.Now()
	if p.err != nil {
		return linux.PodResult{}, p.err
	}
	a.ip = addr.IP
	start := time.Now()
	cfg := a.nodeConfig(addr.VNetPrefixes)
	pod := PodConfig{
		ContainerID: a.req.ContainerID, IfName: a.req.IfName, NetNS: a.req.NetNS, IP: addr.IP, NodeIP: addr.PrimaryIP,
		Uplink:           Uplink{ID: addr.Interface, MAC: addr.InterfaceMAC, DeviceIndex: addr.DeviceIndex, Gateway: addr.Gateway},
		RuleDestinations: cfg.RuleDestinations(), MTU: a.req.MTU,
	}
	res, err := a.node.AddPod(ctx, pod)
	if errors.Is(err, ErrNotReady) && a.req.Managed {
		// vnet-ipamd has not repaired the node yet: do it here once.
		p = a.ensure(ctx, prepared{node: a.node}, addr.VNetPrefixes)
		a.steps.EnsureNode = p.ensure
		if p.err != nil {
			return linux.PodResult{}, p.err
		}
		res, err = a.node.AddPod(ctx, pod)
	}
	a.steps.AddPod = time.Since(start)
	return res, err
}

// Steps reports the timings of the work done so far.
func (a *Attachment) Steps() linux.Steps { return a.steps }

// Abort removes what exists of the attachment; ctx bounds the removal.
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
