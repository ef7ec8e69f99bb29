package plugin

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/vnet-cni/vnet-cni/bridge/linux"
	"github.com/vnet-cni/vnet-cni/ipamd/api"
)

// drift is the error of a CHECK that found the datapath or the assignment
// different from prevResult.
func drift(format string, args ...any) error {
	return types.NewError(types.ErrInternal, "check: the attachment drifted", fmt.Sprintf(format, args...))
}

// Check compares the pod's interface, address, routes and vnet-ipamd's
// assignment with prevResult.
func (p *Plugin) Check(args *skel.CmdArgs) (err error) {
	c, err := p.begin("CHECK", args)
	if err != nil {
		return err
	}
	defer func() { c.finish(err) }()
	conf := c.conf
	if conf.PrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "invalid network configuration: prevResult", "CHECK needs the result of ADD")
	}
	prev, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "cannot decode prevResult", err.Error())
	}
	want, err := expected(prev, args)
	if err != nil {
		return err
	}
	c.attrs = append(c.attrs, "ip", want.ip.Addr().String())

	ctx, cancel := context.WithTimeout(context.Background(), shortIPAMDTimeout)
	defer cancel()
	chk, err := api.NewClient(conf.IPAMDSocket).Check(ctx, api.CheckRequest{ContainerID: args.ContainerID, IfName: args.IfName})
	if err != nil {
		return ipamdError("check", err)
	}
	if chk.Assignment == nil {
		return drift("vnet-ipamd holds no address for %s/%s", args.ContainerID, args.IfName)
	}
	if chk.Assignment.IP != want.ip.Addr() {
		return drift("vnet-ipamd assigned %s, prevResult says %s", chk.Assignment.IP, want.ip.Addr())
	}

	node, err := p.node(conf)
	if err != nil {
		return err
	}
	defer node.Close()
	st, err := node.InspectPod(ctx, linux.PodRef{ContainerID: args.ContainerID, IfName: args.IfName, NetNS: args.Netns,
		IP: want.ip.Addr(), DeviceIndex: chk.Assignment.DeviceIndex})
	if err != nil {
		return types.NewError(types.ErrInternal, "inspect the pod's datapath", err.Error())
	}
	if err := compare(st, want); err != nil {
		return err
	}
	if conf.Mode == api.ModeRouted || conf.Mode == api.ModeKubenet {
		if len(st.Drift) > 0 {
			return drift("%s", strings.Join(st.Drift, "; "))
		}
		return nil
	}
	return compareBridge(st, want, conf.Bridge)
}

// want is what prevResult promises.
type want struct {
	ip      netip.Prefix
	gateway netip.Addr
	podMAC  string
	hostIf  string
}

func expected(prev *current.Result, args *skel.CmdArgs) (want, error) {
	var w want
	podIdx := -1
	for i, ifc := range prev.Interfaces {
		switch {
		case ifc.Sandbox != "" && ifc.Name == args.IfName:
			podIdx = i
			w.podMAC = ifc.Mac
		case ifc.Sandbox == "":
			w.hostIf = ifc.Name
		}
	}
	if podIdx < 0 {
		return w, types.NewError(types.ErrInvalidNetworkConfig, "invalid network configuration: prevResult",
			fmt.Sprintf("no interface %s in a sandbox", args.IfName))
	}
	for _, ipc := range prev.IPs {
		if ipc.Interface != nil && *ipc.Interface != podIdx {
			continue
		}
		addr, ok := netip.AddrFromSlice(ipc.Address.IP.To4())
		if !ok {
			continue
		}
		ones, _ := ipc.Address.Mask.Size()
		w.ip = netip.PrefixFrom(addr, ones)
		w.gateway, _ = netip.AddrFromSlice(ipc.Gateway.To4())
		break
	}
	if !w.ip.IsValid() {
		return w, types.NewError(types.ErrInvalidNetworkConfig, "invalid network configuration: prevResult", "no IPv4 address for the pod interface")
	}
	return w, nil
}

// compare checks what every mode builds: the pod's interface, address and
// default route, and the host end of its veth.
func compare(st linux.PodState, w want) error {
	if st.PodIf == nil {
		return drift("the pod interface is missing")
	}
	if !st.PodIf.Up {
		return drift("the pod interface %s is down", st.PodIf.Name)
	}
	if w.podMAC != "" && st.PodIf.MAC.String() != w.podMAC {
		return drift("the pod interface has MAC %s, prevResult says %s", st.PodIf.MAC, w.podMAC)
	}
	if !slices.Contains(st.PodIf.Addrs, w.ip) {
		return drift("the pod interface has addresses %v, not %s", st.PodIf.Addrs, w.ip)
	}
	if w.gateway.IsValid() && !slices.ContainsFunc(st.PodIf.Routes, func(r linux.Route) bool {
		return r.Dst.Bits() == 0 && r.Gw == w.gateway
	}) {
		return drift("the pod has no default route via %s (routes %v)", w.gateway, st.PodIf.Routes)
	}
	if st.HostVeth == nil {
		return drift("the host end of the veth is missing")
	}
	if w.hostIf != "" && st.HostVeth.Name != w.hostIf {
		return drift("the host end is %s, prevResult says %s", st.HostVeth.Name, w.hostIf)
	}
	return nil
}

// compareBridge checks bridge mode's part: the host end a port of the
// bridge, the bridge steering the address to the pod's MAC.
func compareBridge(st linux.PodState, w want, bridgeName string) error {
	if st.HostVeth.Bridge != bridgeName {
		return drift("the host end %s is not a port of %s", st.HostVeth.Name, bridgeName)
	}
	if st.RegisteredMAC.String() != st.PodIf.MAC.String() {
		return drift("the bridge forwards %s to %s, the pod's MAC is %s", w.ip.Addr(), st.RegisteredMAC, st.PodIf.MAC)
	}
	return nil
}

// GC releases every assignment not in cni.dev/valid-attachments and removes
// its datapath leftovers.
func (p *Plugin) GC(args *skel.CmdArgs) (err error) {
	// The runtime made its list before it ran GC: an attachment allocated
	// after this stamp is not in it but live, and the daemon keeps it.
	at := api.NewStamp()
	c, err := p.begin("GC", args)
	if err != nil {
		return err
	}
	defer func() { c.finish(err) }()
	conf := c.conf
	valid := make([]api.Attachment, 0, len(conf.ValidAttachments))
	for _, a := range conf.ValidAttachments {
		valid = append(valid, api.Attachment{ContainerID: a.ContainerID, IfName: a.IfName})
	}
	ctx, cancel := context.WithTimeout(context.Background(), conf.ipamdTimeout)
	defer cancel()
	resp, err := api.NewClient(conf.IPAMDSocket).GC(ctx, api.GCRequest{Valid: valid, At: at})
	if err != nil {
		return ipamdError("gc", err)
	}
	node, err := p.node(conf)
	if err != nil {
		return err
	}
	defer node.Close()
	// Each leftover is removed on its own: one that fails does not keep
	// the others.
	var errs []error
	for _, r := range resp.Released {
		if err := node.DelPod(ctx, linux.PodRef{ContainerID: r.ContainerID, IfName: r.IfName, IP: r.IP}); err != nil {
			errs = append(errs, fmt.Errorf("released %s/%s: %w", r.ContainerID, r.IfName, err))
		}
	}
	// Veths without an assignment: an ADD that failed or was killed
	// before (or while) it took its address.
	keep := make(map[string]bool, len(valid))
	for _, a := range valid {
		keep[linux.HostVethName(a.ContainerID, a.IfName)] = true
	}
	stray, err := node.StrayVeths(func(name string) bool { return keep[name] })
	if err != nil {
		errs = append(errs, fmt.Errorf("list stray veths: %w", err))
	}
	for _, name := range stray {
		if err := node.DelPod(ctx, linux.PodRef{HostVethName: name}); err != nil {
			errs = append(errs, fmt.Errorf("stray veth %s: %w", name, err))
		}
	}
	c.attrs = append(c.attrs, "released", len(resp.Released), "strayVeths", len(stray))
	if err := errors.Join(errs...); err != nil {
		return types.NewError(types.ErrInternal, "remove datapath leftovers", err.Error())
	}
	return nil
}

// Status reports whether the node can set pods up: error 50 when
// vnet-ipamd is unreachable, not ready, or has no address at all and may
// get none (its limit is 0, or the cloud refuses it any). A pool at its
// limit with every address held by a pod is a full node, not a broken one:
// STATUS stays ok, because the runtime turns any STATUS error into
// NetworkReady=false, kubelet marks the node NotReady, and the node
// lifecycle controller's not-ready:NoExecute taint would evict every
// running pod after five minutes. ADD beyond the limit answers error 11
// naming it.
func (p *Plugin) Status(args *skel.CmdArgs) (err error) {
	c, err := p.begin("STATUS", args)
	if err != nil {
		return err
	}
	defer func() { c.finish(err) }()
	ctx, cancel := context.WithTimeout(context.Background(), shortIPAMDTimeout)
	defer cancel()
	st, err := api.NewClient(c.conf.IPAMDSocket).Status(ctx, api.StatusRequest{})
	if err != nil {
		return types.NewError(types.ErrPluginNotAvailable, "vnet-ipamd is not reachable", err.Error())
	}
	if !st.Ready {
		return types.NewError(types.ErrPluginNotAvailable, "vnet-ipamd is not ready", st.Reason)
	}
	if st.Pool.Total == 0 && st.LimitReached {
		return types.NewError(types.ErrPluginNotAvailable, "no address available on this node",
			fmt.Sprintf("%d of %d addresses assigned; %s", st.Pool.Assigned, st.Pool.Max, st.LastCloudError))
	}
	return nil
}
