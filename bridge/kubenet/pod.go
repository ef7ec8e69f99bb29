package kubenet

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/vnet-cni/vnet-cni/bridge/linux"
)

// PodConfig describes one pod attachment.
type PodConfig struct {
	ContainerID string
	// IfName is the interface inside the pod, e.g. "eth0".
	IfName string
	// NetNS is the path of the pod's network namespace.
	NetNS string
	// IP is the pod's address with the pod CIDR's prefix length, and
	// Gateway the bridge's address in it.
	IP      netip.Prefix
	Gateway netip.Addr
	// Interface is the cloud's ID of the node interface, recorded on the
	// host veth; empty for none.
	Interface string
	// Bridge is the bridge's name; default DefaultBridgeName.
	Bridge string
	// MTU of both veth ends; 0 means the default route's interface's (the
	// bridge's when the node has no default route).
	MTU int
	// HostVethName overrides linux.HostVethName(ContainerID, IfName); it
	// must start with linux.HostVethPrefix, which the guard relies on.
	HostVethName string
}

func (c PodConfig) validate() error {
	errs := linux.CheckNames(c.ContainerID, c.IfName, c.NetNS, c.HostVethName)
	p := c.IP
	switch {
	case !p.IsValid() || !p.Addr().Is4() || p.Bits() < 8 || p.Bits() > 30:
		errs = append(errs, fmt.Errorf("pod ip %s: want an ipv4 address with the pod cidr's length", p))
	case p.Addr() == p.Masked().Addr() || p.Addr() == lastAddr(p):
		errs = append(errs, fmt.Errorf("pod ip %s: the network or broadcast address of the pod cidr", p))
	case !c.Gateway.Is4() || !p.Contains(c.Gateway) || c.Gateway == p.Addr():
		errs = append(errs, fmt.Errorf("gateway %s: want another address of the pod's %s", c.Gateway, p.Masked()))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrConfig, errors.Join(errs...))
	}
	return nil
}

func (c PodConfig) hostName() string {
	if c.HostVethName != "" {
		return c.HostVethName
	}
	return linux.HostVethName(c.ContainerID, c.IfName)
}

func (c PodConfig) bridgeName() string {
	if c.Bridge == "" {
		return DefaultBridgeName
	}
	return c.Bridge
}

// AddPod creates the pod's veth with its pod end directly in the pod
// namespace and the host end a hairpin port of the bridge, gives the pod
// its address with the pod CIDR's length and the default route via the
// gateway, and registers the pod's guard element. The bridge must hold the
// gateway with the pod's prefix length (else ErrNotReady: EnsureNode
// first). Re-adding an identical attachment succeeds; on any failure a
// veth created by this call is removed again (the pod's side goes with it).
func (n *Node) AddPod(ctx context.Context, cfg PodConfig) (res linux.PodResult, err error) {
	if err := cfg.validate(); err != nil {
		return res, err
	}
	hostName := cfg.hostName()
	br, err := n.readyBridge(cfg.bridgeName(), netip.PrefixFrom(cfg.Gateway, cfg.IP.Bits()))
	if err != nil {
		return res, err
	}
	mtu := cfg.MTU
	if mtu == 0 {
		mtu = br.Attrs().MTU
		if dev, err := n.defaultDevice(); err == nil {
			mtu = dev.Attrs().MTU
		}
	}
	podNS, err := netns.GetFromPath(cfg.NetNS)
	if err != nil {
		return res, fmt.Errorf("open pod netns %s: %w", cfg.NetNS, err)
	}
	defer podNS.Close()
	pnl, err := netlink.NewHandleAt(podNS, unix.NETLINK_ROUTE)
	if err != nil {
		return res, fmt.Errorf("netlink handle in pod netns: %w", err)
	}
	defer pnl.Close()

	host, pod, created, err := n.ns.EnsureVeth(linux.VethSpec{
		HostName: hostName, IfName: cfg.IfName, MasterIndex: br.Attrs().Index, MTU: mtu, IP: cfg.IP.Addr(),
		ContainerID: cfg.ContainerID, Interface: cfg.Interface, Mode: linux.ModeKubenet,
	}, podNS, pnl)
	if err != nil {
		return res, err
	}
	defer func() {
		if err == nil || !created {
			return
		}
		if lerr := n.ns.Netlink.LinkDel(host); lerr != nil && !linux.IsNotFound(lerr) {
			err = errors.Join(err, fmt.Errorf("remove veth %s after failure: %w", hostName, lerr))
		}
	}()
	if err := ctx.Err(); err != nil {
		return res, err
	}
	// A pod reaching itself through a DNAT of the node (its own service
	// address) gets the answer back through its own port.
	if err := n.ns.Netlink.LinkSetHairpin(host, true); err != nil {
		return res, fmt.Errorf("hairpin on %s: %w", hostName, err)
	}
	if err := linux.ConfigurePod(pnl, pod, cfg.IP, cfg.Gateway, false); err != nil {
		return res, err
	}
	if err := n.addPort(ctx, podPort(hostName, cfg.IP.Addr())); err != nil {
		return res, err
	}
	return linux.PodResult{
		HostVeth: linux.Link{Name: hostName, Index: host.Attrs().Index, MAC: host.Attrs().HardwareAddr},
		PodIf:    linux.Link{Name: cfg.IfName, Index: pod.Attrs().Index, MAC: pod.Attrs().HardwareAddr, NetNS: cfg.NetNS},
		IP:       cfg.IP,
		Gateway:  cfg.Gateway,
	}, nil
}

// readyBridge finds the bridge holding gw; ErrNotReady when it is missing,
// not kubenet mode's or without gw.
func (n *Node) readyBridge(name string, gw netip.Prefix) (netlink.Link, error) {
	br, err := n.bridgeLink(name)
	if err != nil {
		return nil, err
	}
	if br == nil || !isKubenetBridge(br) {
		return nil, fmt.Errorf("%w: no kubenet bridge %s", ErrNotReady, name)
	}
	addrs, err := n.bridgeAddrs(br)
	if err != nil {
		return nil, err
	}
	if !slices.Contains(addrs, gw) {
		return nil, fmt.Errorf("%w: bridge %s holds %v, not the pod's gateway %s", ErrNotReady, name, addrs, gw)
	}
	return br, nil
}

// DelPod removes the attachment's guard element and veth (both ends; the
// pod's side goes with it). Missing netns, link or element are success, so
// is a repeated DelPod.
func (n *Node) DelPod(ctx context.Context, ref linux.PodRef) error {
	// The veth goes even when the element fails: a Sync removes the
	// element of a veth that is gone.
	return n.ns.DelPodVeth(ref, func(hostName string, ip netip.Addr) error {
		_, err := n.delPorts(ctx, hostName, ip)
		return err
	})
}

// InspectPod reports what exists of an attachment, for CHECK: the veth's
// two ends (the pod side when ref.NetNS is set) and in Drift what differs
// from what AddPod builds: the host end not a hairpin port of the kubenet
// bridge or down, the pod without its address (with the bridge's prefix
// length) or its default route via the gateway, the guard element missing.
func (n *Node) InspectPod(_ context.Context, ref linux.PodRef) (linux.PodState, error) {
	var st linux.PodState
	hv, ip, err := n.ns.InspectPodVeth(ref)
	if err != nil || hv == nil {
		return st, err
	}
	st.HostVeth = hv
	if !hv.Up {
		st.Drift = append(st.Drift, fmt.Sprintf("the host end %s is down", hv.Name))
	}
	// The gateway is the bridge's address: of the bridge the veth is a
	// port of, else of the default one.
	brName := hv.Bridge
	if brName == "" {
		st.Drift = append(st.Drift, fmt.Sprintf("the host end %s is not a port of the bridge", hv.Name))
		brName = DefaultBridgeName
	}
	var gw netip.Prefix
	br, err := n.bridgeLink(brName)
	if err != nil {
		return st, err
	}
	switch {
	case br == nil:
		st.Drift = append(st.Drift, fmt.Sprintf("the bridge %s does not exist", brName))
	case !isKubenetBridge(br):
		st.Drift = append(st.Drift, fmt.Sprintf("the host end %s is a port of %s, not of a kubenet bridge", hv.Name, brName))
	default:
		addrs, err := n.bridgeAddrs(br)
		if err != nil {
			return st, err
		}
		for _, p := range addrs {
			if ip.IsValid() && p.Contains(ip) {
				gw = p
			}
		}
		if !gw.IsValid() {
			st.Drift = append(st.Drift, fmt.Sprintf("the bridge %s holds %v, no gateway of %s", brName, addrs, ip))
		}
	}
	if hv.Bridge != "" && !hv.Hairpin {
		st.Drift = append(st.Drift, fmt.Sprintf("the port %s is not in hairpin mode", hv.Name))
	}
	if ref.NetNS != "" {
		if st.PodIf, err = linux.InspectPodSide(ref.NetNS, ref.IfName); err != nil {
			return st, err
		}
		if st.PodIf != nil && gw.IsValid() {
			if want := netip.PrefixFrom(ip, gw.Bits()); !slices.Contains(st.PodIf.Addrs, want) {
				st.Drift = append(st.Drift, fmt.Sprintf("the pod has %v, not %s", st.PodIf.Addrs, want))
			}
			def := linux.Route{Dst: netip.PrefixFrom(netip.IPv4Unspecified(), 0), Gw: gw.Addr()}
			if !slices.Contains(st.PodIf.Routes, def) {
				st.Drift = append(st.Drift, fmt.Sprintf("the pod has no default route via %s (%v)", gw.Addr(), st.PodIf.Routes))
			}
		}
	}
	if !ip.IsValid() {
		return st, nil
	}
	ok, err := n.hasPort(podPort(hv.Name, ip))
	if err != nil {
		return st, err
	}
	if !ok {
		st.Drift = append(st.Drift, fmt.Sprintf("the guard does not let %s send from %s", hv.Name, ip))
	}
	return st, nil
}
