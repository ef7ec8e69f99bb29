package routed

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

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
	// IP is the pod's address, given to the pod as a /32.
	IP netip.Addr
	// Uplink is the node interface that holds IP; its ID is recorded on
	// the host veth. A non-primary one (DeviceIndex > 0) gets the pod's
	// policy routing, its rules for RuleDestinations (nil: anywhere).
	Uplink           Uplink
	RuleDestinations []netip.Prefix
	// UplinkWait bounds the wait for a non-primary uplink that the node
	// does not show yet; 0 means DefaultUplinkWait.
	UplinkWait time.Duration
	// NodeIP is the node's primary address, the source of its own traffic
	// to the pod; invalid leaves it to the kernel.
	NodeIP netip.Addr
	// MTU of both veth ends; 0 means the uplink's (the default route's
	// interface for the primary).
	MTU int
	// HostVethName overrides linux.HostVethName(ContainerID, IfName); it must
	// start with linux.HostVethPrefix, which the guard relies on.
	HostVethName string
}

func (c PodConfig) validate() error {
	errs := linux.CheckNames(c.ContainerID, c.IfName, c.NetNS, c.HostVethName)
	if !c.IP.Is4() || c.IP.IsUnspecified() || c.IP == GatewayIP {
		errs = append(errs, fmt.Errorf("pod ip %s: want an ipv4 address", c.IP))
	}
	if c.Uplink.policyRouted() && (len(c.Uplink.MAC) != 6 || !c.Uplink.Gateway.Is4()) {
		errs = append(errs, fmt.Errorf("interface %q (device %d): a non-primary interface needs its mac and gateway", c.Uplink.ID, c.Uplink.DeviceIndex))
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

// AddPod waits (up to cfg.UplinkWait) for a non-primary uplink to appear
// in the node, creates the pod's veth with its pod end directly in the pod
// namespace, gives the pod its /32, a permanent neighbour entry for
// GatewayIP with the host veth's MAC and the default route via it, routes
// the address to the host veth, adds the policy routing of a non-primary
// uplink and registers the pod's guard element. Re-adding an identical
// attachment succeeds; on any failure a veth created by this call is
// removed again (with it go its routes and the pod's side), and the rules
// it added.
func (n *Node) AddPod(ctx context.Context, cfg PodConfig) (res linux.PodResult, err error) {
	if err := cfg.validate(); err != nil {
		return res, err
	}
	hostName := cfg.hostName()
	var up uplinkLink
	if cfg.Uplink.policyRouted() {
		wait := cfg.UplinkWait
		if wait <= 0 {
			wait = DefaultUplinkWait
		}
		if up, err = n.waitUplink(ctx, cfg.Uplink, wait); err != nil {
			return res, err
		}
	}
	mtu, err := n.mtu(cfg.MTU, up)
	if err != nil {
		return res, err
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
		HostName: hostName, IfName: cfg.IfName, MTU: mtu, IP: cfg.IP,
		ContainerID: cfg.ContainerID, Interface: cfg.Uplink.ID, Mode: linux.ModeRouted,
	}, podNS, pnl)
	if err != nil {
		return res, err
	}
	var rules []ruleSpec
	defer func() {
		if err == nil || !created {
			return
		}
		_, derr := n.deleteRules(rules)
		if lerr := n.ns.Netlink.LinkDel(host); lerr != nil && !linux.IsNotFound(lerr) {
			derr = errors.Join(derr, lerr)
		}
		if derr != nil {
			err = errors.Join(err, fmt.Errorf("remove veth %s after failure: %w", hostName, derr))
		}
	}()
	if err := ctx.Err(); err != nil {
		return res, err
	}
	hostMAC := host.Attrs().HardwareAddr
	gw := &netlink.Neigh{LinkIndex: pod.Attrs().Index, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
		IP: GatewayIP.AsSlice(), HardwareAddr: hostMAC}
	if err := pnl.NeighSet(gw); err != nil {
		return res, fmt.Errorf("neighbour %s in pod: %w", GatewayIP, err)
	}
	podIP := netip.PrefixFrom(cfg.IP, 32)
	if err := linux.ConfigurePod(pnl, pod, podIP, GatewayIP, true); err != nil {
		return res, err
	}
	if err := n.ns.Netlink.RouteReplace(hostRoute(cfg.IP, host.Attrs().Index, cfg.NodeIP)); err != nil {
		return res, fmt.Errorf("route to pod %s via %s: %w", cfg.IP, hostName, err)
	}
	if cfg.Uplink.policyRouted() {
		if _, err := n.ensureUplinkTables(map[string]uplinkLink{"": up}); err != nil {
			return res, err
		}
		rules = podRules(cfg.IP, up.Table(), cfg.RuleDestinations)
		if _, err := n.ensureRules(rules, nil); err != nil {
			return res, err
		}
	}
	if err := n.addPort(ctx, port{name: hostName, ip: cfg.IP}); err != nil {
		return res, err
	}
	return linux.PodResult{
		HostVeth: linux.Link{Name: hostName, Index: host.Attrs().Index, MAC: hostMAC},
		PodIf:    linux.Link{Name: cfg.IfName, Index: pod.Attrs().Index, MAC: pod.Attrs().HardwareAddr, NetNS: cfg.NetNS},
		IP:       podIP,
		Gateway:  GatewayIP,
	}, nil
}

// mtu is the veths' MTU: the configured one, else the uplink's, else the
// default route's interface's.
func (n *Node) mtu(configured int, up uplinkLink) (int, error) {
	if configured != 0 {
		return configured, nil
	}
	if up.index != 0 {
		l, err := n.ns.Netlink.LinkByIndex(up.index)
		if err != nil {
			return 0, fmt.Errorf("link of interface %s: %w", up.ID, err)
		}
		return l.Attrs().MTU, nil
	}
	l, err := n.defaultDevice()
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrNotReady, err)
	}
	return l.Attrs().MTU, nil
}

// DelPod removes the attachment's guard element, policy rules and veth
// (both ends; the routes on it and the pod's side go with it). Missing
// netns, link or entries are success, so is a repeated DelPod. The IP is
// taken from ref, from the veth's record or from the guard set; an address
// another pod on the node now holds keeps its rules.
func (n *Node) DelPod(ctx context.Context, ref linux.PodRef) error {
	// The veth goes even when the entries fail: the guard set still names
	// the address for the retry.
	return n.ns.DelPodVeth(ref, func(hostName string, ip netip.Addr) error {
		ip, taken, err := n.delPorts(ctx, hostName, ip)
		if ip.IsValid() && !taken && err == nil {
			err = n.delRulesOf(ip)
		}
		return err
	})
}

// delRulesOf removes the policy rules of the pod address ip.
func (n *Node) delRulesOf(ip netip.Addr) error {
	held, err := n.podRulesHeld()
	if err != nil {
		return err
	}
	_, err = n.deleteRules(held[ip])
	return err
}

// InspectPod reports what exists of an attachment, for CHECK: the veth's
// two ends (the pod side when ref.NetNS is set) and in Drift what differs
// from what AddPod builds: the pod's gateway neighbour, the node's route to
// the pod, its guard element and, for ref.DeviceIndex > 0, its rules to
// the main table and to the interface's table.
func (n *Node) InspectPod(_ context.Context, ref linux.PodRef) (linux.PodState, error) {
	var st linux.PodState
	hv, ip, err := n.ns.InspectPodVeth(ref)
	if err != nil || hv == nil {
		return st, err
	}
	st.HostVeth = hv
	if ref.NetNS != "" {
		if st.PodIf, err = linux.InspectPodSide(ref.NetNS, ref.IfName); err != nil {
			return st, err
		}
		if st.PodIf != nil && !slices.ContainsFunc(st.PodIf.Neighbours, func(nb linux.Neighbour) bool {
			return nb.IP == GatewayIP && nb.MAC.String() == hv.MAC.String()
		}) {
			st.Drift = append(st.Drift, fmt.Sprintf("the pod has no permanent neighbour %s at %s (%v)", GatewayIP, hv.MAC, st.PodIf.Neighbours))
		}
	}
	if hv.Bridge != "" {
		st.Drift = append(st.Drift, fmt.Sprintf("the host end %s is a port of %s", hv.Name, hv.Bridge))
	}
	if !ip.IsValid() {
		return st, nil
	}
	routes, err := linux.RetryDump(func() ([]netlink.Route, error) {
		return n.ns.Netlink.RouteListFiltered(netlink.FAMILY_V4, hostRoute(ip, hv.Index, netip.Addr{}), netlink.RT_FILTER_TABLE|netlink.RT_FILTER_DST|netlink.RT_FILTER_OIF)
	})
	if err != nil {
		return st, fmt.Errorf("routes to %s: %w", ip, err)
	}
	if len(routes) == 0 {
		st.Drift = append(st.Drift, fmt.Sprintf("the node has no route to %s via %s", ip, hv.Name))
	}
	ok, err := n.hasPort(port{name: hv.Name, ip: ip})
	if err != nil {
		return st, err
	}
	if !ok {
		st.Drift = append(st.Drift, fmt.Sprintf("the guard does not let %s send from %s", hv.Name, ip))
	}
	held, err := n.podRulesHeld()
	if err != nil {
		return st, err
	}
	rules := held[ip]
	if ref.DeviceIndex > 0 {
		table := Uplink{DeviceIndex: ref.DeviceIndex}.Table()
		if !containsRule(rules, ruleSpec{priority: PriorityToPod, dst: netip.PrefixFrom(ip, 32), table: unix.RT_TABLE_MAIN}) {
			st.Drift = append(st.Drift, fmt.Sprintf("no rule %d to %s lookup main", PriorityToPod, ip))
		}
		if !slices.ContainsFunc(rules, func(r ruleSpec) bool { return r.priority == PriorityFromPod && r.table == table }) {
			st.Drift = append(st.Drift, fmt.Sprintf("no rule %d from %s lookup %d", PriorityFromPod, ip, table))
		}
	} else if len(rules) > 0 {
		st.Drift = append(st.Drift, fmt.Sprintf("%s is on the primary interface but has policy rules %v", ip, rules))
	}
	return st, nil
}
