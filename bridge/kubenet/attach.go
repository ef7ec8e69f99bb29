package kubenet

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
	node *Node
	// gateway is the bridge's address the node was set up with (invalid:
	// not set up).
	gateway netip.Prefix
	// primary is the SNAT target it was set up with.
	primary      netip.Addr
	veth         bool
	err          error
	open, ensure time.Duration
}

// Prepare starts a pod's attachment on the node at nodeNS ("" is the
// caller's namespace): the pod's veth pair (a port of the bridge when it
// exists) and, with the VNet's address space in the request and unless
// managed, the node with the pod CIDR its bridge has now, in the background
// while the address is on its way.
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
				ContainerID: req.ContainerID, IfName: req.IfName, NetNS: req.NetNS, MTU: req.MTU, Master: a.bridgeName(),
			})
			vethDone <- ok
		}()
		p := a.open()
		if p.err == nil && !req.Managed {
			if gw, ok := p.node.currentGateway(a.bridgeName()); ok {
				p = a.ensure(ctx, p, req.VNetPrefixes, gw, netip.Addr{})
			}
		}
		p.veth = <-vethDone
		a.ready <- p
	}()
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

func (a *Attachment) open() prepared {
	start := time.Now()
	node, err := Open(a.nodeNS, a.opts)
	if err != nil {
		return prepared{err: fmt.Errorf("%w: %w", linux.ErrNodeSetup, err)}
	}
	return prepared{node: node, open: time.Since(start)}
}

func (a *Attachment) nodeConfig(vnet []netip.Prefix, gw netip.Prefix, primary netip.Addr) NodeConfig {
	return NodeConfig{
		Bridge: a.req.Bridge, Gateway: gw, VNetPrefixes: vnet, ClusterCIDR: a.req.ClusterCIDR,
		SNATExclusions: a.req.SNATExclusions, PrimaryIP: primary, AllowMetadata: a.req.AllowMetadata,
	}
}

// ensure sets up the node p has opened.
func (a *Attachment) ensure(ctx context.Context, p prepared, vnet []netip.Prefix, gw netip.Prefix, primary netip.Addr) prepared {
	start := time.Now()
	info, err := p.node.EnsureNode(ctx, a.nodeConfig(vnet, gw, primary))
	p.ensure = time.Since(start)
	p.gateway, p.primary = gw, info.PrimaryIP
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

// Complete finishes the pod with its address (see AddPod): addr.Subnet is
// the pod CIDR and addr.Gateway the bridge's address in it. Unless managed
// it sets the node up first when Prepare did not, or did with another
// address space or pod CIDR.
func (a *Attachment) Complete(ctx context.Context, addr linux.Address) (linux.PodResult, error) {
	p := a.collect()
	if !addr.Subnet.IsValid() || !addr.Gateway.Is4() || !addr.Subnet.Contains(addr.Gateway) {
		return linux.PodResult{}, fmt.Errorf("%w: address %s: want the pod cidr and its gateway, have %s and %s", ErrConfig, addr.IP, addr.Subnet, addr.Gateway)
	}
	gw := netip.PrefixFrom(addr.Gateway, addr.Subnet.Bits())
	if p.err != nil && a.node == nil || a.ready == nil {
		_ = a.closeNode() // opened again just below
		p = a.open()
		a.node = p.node
	}
	if a.node != nil && !a.req.Managed && (p.err != nil || p.gateway != gw || !slices.Equal(a.req.VNetPrefixes, addr.VNetPrefixes) ||
		addr.PrimaryIP.IsValid() && addr.PrimaryIP != p.primary) {
		// Set up with what the address manager says, the truth.
		p = a.ensure(ctx, prepared{node: a.node, open: p.open}, addr.VNetPrefixes, gw, addr.PrimaryIP)
	}
	a.steps.NodeOpen, a.steps.EnsureNode, a.steps.NodeReady = p.open, p.ensure, time.Now()
	if p.err != nil {
		return linux.PodResult{}, p.err
	}
	a.ip = addr.IP
	start := time.Now()
	pod := PodConfig{
		ContainerID: a.req.ContainerID, IfName: a.req.IfName, NetNS: a.req.NetNS,
		IP: netip.PrefixFrom(addr.IP, addr.Subnet.Bits()), Gateway: addr.Gateway,
		Interface: addr.Interface, Bridge: a.req.Bridge, MTU: a.req.MTU,
	}
	res, err := a.node.AddPod(ctx, pod)
	if errors.Is(err, ErrNotReady) && a.req.Managed {
		// vnet-ipamd has not set the node up (yet): do it here once.
		p = a.ensure(ctx, prepared{node: a.node}, addr.VNetPrefixes, gw, addr.PrimaryIP)
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
