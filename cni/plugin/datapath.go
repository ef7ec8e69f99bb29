package plugin

import (
	"context"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/vnet-cni/vnet-cni/bridge/azure0"
	"github.com/vnet-cni/vnet-cni/bridge/kubenet"
	"github.com/vnet-cni/vnet-cni/bridge/linux"
	"github.com/vnet-cni/vnet-cni/bridge/routed"
	"github.com/vnet-cni/vnet-cni/ipamd/api"
)

// Deadlines of the datapath's work. A lock wait is bounded by them too, so
// a stuck holder fails the call instead of hanging it.
const (
	// datapathTimeout bounds ADD's node and pod set-up (each of the
	// background preparation and the completion).
	datapathTimeout = 10 * time.Second
	// rollbackTimeout bounds undoing a failed ADD.
	rollbackTimeout = 2 * time.Second
)

// attachment is a pod's datapath while ADD runs: prepared before the
// address is known, then completed with it or aborted, and closed.
type attachment interface {
	// Complete waits for the preparation and builds the pod with addr.
	Complete(ctx context.Context, addr linux.Address) (linux.PodResult, error)
	// Abort removes whatever was prepared or built.
	Abort(ctx context.Context) error
	// Steps times the work done, for the log line.
	Steps() linux.Steps
	// Close releases the node's datapath.
	Close() error
}

var (
	_ attachment = (*azure0.Attachment)(nil)
	_ attachment = (*routed.Attachment)(nil)
	_ attachment = (*kubenet.Attachment)(nil)
)

// node is the node's datapath as DEL, CHECK and GC use it.
type node interface {
	// DelPod removes an attachment's datapath; missing parts are success.
	DelPod(ctx context.Context, ref linux.PodRef) error
	// InspectPod reports what exists of an attachment, for CHECK.
	InspectPod(ctx context.Context, ref linux.PodRef) (linux.PodState, error)
	// StrayVeths lists the pod veths that keep does not claim, for GC.
	StrayVeths(keep func(hostName string) bool) ([]string, error)
	Close() error
}

var (
	_ node = (*azure0.Node)(nil)
	_ node = (*routed.Node)(nil)
	_ node = (*kubenet.Node)(nil)
)

// prepare starts the pod's attachment: with the VNet's address space from
// the configuration, the node and the pod's veth are set up while the
// address is on its way.
func (p *Plugin) prepare(ctx context.Context, conf *NetConf, args *skel.CmdArgs) attachment {
	if conf.Mode == api.ModeKubenet {
		// The VNet's prefixes in the conflist include the cluster CIDR
		// (vnet-ipamd adds it): pods reach both without SNAT.
		return kubenet.Prepare(ctx, p.NodeNS, kubenet.Options{LockDir: conf.LockDir}, kubenet.AttachRequest{
			ContainerID: args.ContainerID, IfName: args.IfName, NetNS: args.Netns, MTU: conf.MTU, Bridge: conf.Bridge,
			VNetPrefixes: conf.vnetCIDRs, SNATExclusions: conf.snatExclusions,
			AllowMetadata: conf.AllowMetadata, Managed: conf.ManagedNode,
		})
	}
	if conf.Mode == api.ModeRouted {
		return routed.Prepare(ctx, p.NodeNS, routed.Options{LockDir: conf.LockDir}, routed.AttachRequest{
			ContainerID: args.ContainerID, IfName: args.IfName, NetNS: args.Netns, MTU: conf.MTU,
			VNetPrefixes: conf.vnetCIDRs, SNATExclusions: conf.snatExclusions,
			AllowMetadata: conf.AllowMetadata, Managed: conf.ManagedNode,
		})
	}
	return azure0.Prepare(ctx, p.NodeNS, azure0.Options{LockDir: conf.LockDir}, azure0.AttachRequest{
		ContainerID: args.ContainerID, IfName: args.IfName, NetNS: args.Netns,
		Bridge:         azure0.BridgeConfig{Name: conf.Bridge, Master: conf.Master, MTU: conf.MTU},
		VNetPrefixes:   conf.vnetCIDRs,
		SNATExclusions: conf.snatExclusions,
		AllowMetadata:  conf.AllowMetadata,
		Managed:        conf.ManagedNode,
	})
}

// node opens the node's datapath.
func (p *Plugin) node(conf *NetConf) (node, error) {
	var n node
	var err error
	switch conf.Mode {
	case api.ModeRouted:
		n, err = routed.Open(p.NodeNS, routed.Options{LockDir: conf.LockDir})
	case api.ModeKubenet:
		n, err = kubenet.Open(p.NodeNS, kubenet.Options{LockDir: conf.LockDir})
	default:
		n, err = azure0.Open(p.NodeNS, azure0.Options{LockDir: conf.LockDir})
	}
	if err != nil {
		return nil, types.NewError(types.ErrInternal, "open the node's datapath", err.Error())
	}
	return n, nil
}
