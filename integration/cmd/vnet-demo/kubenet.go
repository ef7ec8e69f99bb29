package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"syscall"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v9"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/vnet-cni/vnet-cni/cloud/azure/routetable"
	"github.com/vnet-cni/vnet-cni/integration/cluster"
	"github.com/vnet-cni/vnet-cni/integration/probe"
)

// kubenetCIDR is the demo's cluster CIDR (kube-controller-manager's
// --cluster-cidr): node i's pod CIDR is its i-th /24. It lies outside the
// simulated VNet (10.240.0.0/12).
var kubenetCIDR = netip.MustParsePrefix("10.100.0.0/16")

// podCIDR is the pod CIDR of a kubenet node, from its configuration.
func podCIDR(n *cluster.Node) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(n.Config.Kubenet.PodCIDR)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%s's kubenet.podCIDR %q: %w", n.Name, n.Config.Kubenet.PodCIDR, err)
	}
	return p.Masked(), nil
}

// inPodCIDR checks that ip is a pod address of n's pod CIDR: inside it,
// neither its network address nor the bridge's gateway (its first).
func inPodCIDR(n *cluster.Node, ip netip.Addr) error {
	p, err := podCIDR(n)
	if err != nil {
		return err
	}
	if !p.Contains(ip) || ip == p.Addr() || ip == p.Addr().Next() {
		return fmt.Errorf("%s is not a pod address of %s's pod CIDR %s", ip, n.Name, p)
	}
	return nil
}

// withNetlink runs fn with a netlink handle in n's namespace.
func withNetlink(n *cluster.Node, fn func(nl *netlink.Handle) error) error {
	h, err := netns.GetFromPath(n.NSPath)
	if err != nil {
		return err
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		return err
	}
	defer nl.Close()
	return fn(nl)
}

// bridgeAddrs reads the IPv4 addresses of link name in n's namespace.
func bridgeAddrs(n *cluster.Node, name string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	err := withNetlink(n, func(nl *netlink.Handle) error {
		link, err := nl.LinkByName(name)
		if err != nil {
			return fmt.Errorf("link %s in %s: %w", name, n.Name, err)
		}
		addrs, err := nl.AddrList(link, syscall.AF_INET)
		if err != nil {
			return fmt.Errorf("addresses of %s in %s: %w", name, n.Name, err)
		}
		for _, a := range addrs {
			ip, ok := netip.AddrFromSlice(a.IP.To4())
			if !ok {
				continue
			}
			ones, _ := a.Mask.Size()
			out = append(out, netip.PrefixFrom(ip, ones))
		}
		return nil
	})
	return out, err
}

// bridgePorts lists the links enslaved to bridge name in n's namespace.
func bridgePorts(n *cluster.Node, name string) ([]string, error) {
	var out []string
	err := withNetlink(n, func(nl *netlink.Handle) error {
		br, err := nl.LinkByName(name)
		if err != nil {
			return fmt.Errorf("link %s in %s: %w", name, n.Name, err)
		}
		links, err := nl.LinkList()
		if err != nil {
			return fmt.Errorf("links of %s: %w", n.Name, err)
		}
		for _, l := range links {
			if l.Attrs().MasterIndex == br.Attrs().Index {
				out = append(out, l.Attrs().Name)
			}
		}
		return nil
	})
	return out, err
}

// showKubenetNodes shows every node's pod CIDR and its bridge with the
// gateway address (the pod CIDR's first), and checks them.
func (d *demo) showKubenetNodes(ctx context.Context) error {
	r := d.r
	r.Step("kubenet: every node's pod CIDR (kubelet's --pod-cidr) and its local bridge")
	var rows [][]string
	for _, n := range d.c.Nodes {
		if err := ctx.Err(); err != nil {
			return err
		}
		p, err := podCIDR(n)
		if err != nil {
			return err
		}
		br := n.Config.Kubenet.Bridge
		want := netip.PrefixFrom(p.Addr().Next(), p.Bits())
		addrs, err := bridgeAddrs(n, br)
		if err == nil && (len(addrs) != 1 || addrs[0] != want) {
			err = fmt.Errorf("%s has %v, want the gateway %s", br, addrs, want)
		}
		if err == nil && !kubenetCIDR.Contains(p.Addr()) {
			err = fmt.Errorf("pod CIDR %s is outside the cluster CIDR %s", p, kubenetCIDR)
		}
		got := "-"
		if len(addrs) > 0 {
			got = fmt.Sprint(addrs)
		}
		// azure0 is bridge mode's: none in kubenet mode.
		if err == nil {
			if _, aerr := bridgeAddrs(n, "azure0"); aerr == nil {
				err = errors.New("azure0 exists in kubenet mode")
			}
		}
		rows = append(rows, []string{n.Name, p.String(), br, got, n.PrimaryIP, result(r, n.Name+"'s pod CIDR and "+br, err, "")})
	}
	r.Table([]string{"NODE", "POD CIDR", "BRIDGE", "GATEWAY ADDRESS", "NODE IP (eth0)", "RESULT"}, rows)
	return nil
}

// showKubenetCloud shows ARM's view in kubenet mode: the NICs hold no
// secondary ipConfiguration and forward, the route table holds every pod
// CIDR via its node, and the NICs' effective routes carry them.
func (d *demo) showKubenetCloud(ctx context.Context) error {
	r := d.r
	f, err := d.sim.armFactory()
	if err != nil {
		return err
	}
	nics := f.NewInterfacesClient()
	r.Step("the NICs as the cloud API reports them (armnetwork InterfacesClient.Get): no secondary address, IP forwarding on")
	var rows [][]string
	for _, n := range d.c.Nodes {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		resp, err := nics.Get(cctx, d.sim.desc.ResourceGroup, n.NIC, nil)
		cancel()
		if err != nil {
			return fmt.Errorf("read NIC %s: %w", n.NIC, err)
		}
		var secondary, all []string
		for _, c := range nicConfigs(resp.Interface) {
			all = append(all, c.name+" "+c.ip)
			if !c.primary {
				secondary = append(secondary, c.ip)
			}
		}
		var cerr error
		if len(secondary) > 0 {
			cerr = fmt.Errorf("secondary ipConfigurations %v: kubenet takes no address of the subnet", secondary)
		}
		fwd := resp.Properties != nil && resp.Properties.EnableIPForwarding != nil && *resp.Properties.EnableIPForwarding
		var ferr error
		if !fwd {
			ferr = errors.New("IP forwarding is off: the VNet drops what the route sends to this NIC")
		}
		rows = append(rows, []string{n.NIC, strings.Join(all, ", "), fmt.Sprint(len(secondary)), onOff(fwd),
			result(r, n.NIC+" holds no secondary ipConfiguration", cerr, "") + ", " + result(r, n.NIC+" forwards", ferr, "")})
	}
	r.Table([]string{"NIC", "IPCONFIGURATIONS", "SECONDARY", "IP FORWARDING", "RESULT"}, rows)

	r.Step("the route table %s as ARM reports it (armnetwork RouteTablesClient.Get)", d.sim.desc.RouteTable)
	routes, err := d.routes(ctx)
	if err != nil {
		return err
	}
	rows = nil
	for _, rt := range routes {
		rows = append(rows, []string{rt.name, rt.prefix, rt.hopType, rt.hop, rt.state})
	}
	r.Table([]string{"ROUTE", "PREFIX", "NEXT HOP TYPE", "NEXT HOP", "PROVISIONING"}, rows)
	for _, n := range d.c.Nodes {
		r.CheckLine(fmt.Sprintf("route %s: %s via %s", routetable.RouteName(n.Name), n.Config.Kubenet.PodCIDR, n.PrimaryIP), d.routeOf(routes, n))
	}

	r.Step("the NICs' effective routes (armnetwork InterfacesClient.BeginGetEffectiveRouteTable): what the fabric follows")
	rows = nil
	for _, n := range d.c.Nodes {
		eff, err := d.effectiveRoutes(ctx, nics, n.NIC)
		if err != nil {
			return err
		}
		for _, e := range eff {
			rows = append(rows, []string{n.NIC, e.name, e.source, e.state, strings.Join(e.prefixes, ","), e.hopType, strings.Join(e.hops, ",")})
		}
		for _, m := range d.c.Nodes {
			p, _ := podCIDR(m)
			var err error
			if !carries(eff, p, m.PrimaryIP) {
				err = fmt.Errorf("no active user route %s via %s", p, m.PrimaryIP)
			}
			r.CheckLine(fmt.Sprintf("%s's effective routes carry %s to %s", n.NIC, p, m.Name), err)
		}
	}
	r.Table([]string{"NIC", "NAME", "SOURCE", "STATE", "PREFIX", "NEXT HOP TYPE", "NEXT HOP"}, rows)
	return nil
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// armRoute is one route of the route table as ARM reports it.
type armRoute struct {
	name, prefix, hopType, hop, state string
}

// routes reads the subnet's route table.
func (d *demo) routes(ctx context.Context) ([]armRoute, error) {
	tables, err := d.sim.routeTablesClient()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	rt, err := tables.Get(ctx, d.sim.desc.ResourceGroup, d.sim.desc.RouteTable, nil)
	if err != nil {
		return nil, fmt.Errorf("read route table %s: %w", d.sim.desc.RouteTable, err)
	}
	var out []armRoute
	if rt.Properties == nil {
		return nil, nil
	}
	for _, r := range rt.Properties.Routes {
		if r == nil || r.Properties == nil {
			continue
		}
		a := armRoute{name: deref(r.Name), prefix: deref(r.Properties.AddressPrefix), hop: deref(r.Properties.NextHopIPAddress)}
		if r.Properties.NextHopType != nil {
			a.hopType = string(*r.Properties.NextHopType)
		}
		if r.Properties.ProvisioningState != nil {
			a.state = string(*r.Properties.ProvisioningState)
		}
		out = append(out, a)
	}
	return out, nil
}

// routeOf checks that routes hold n's route: vnetcni-<node>, its pod CIDR
// via its primary address, next hop type VirtualAppliance.
func (d *demo) routeOf(routes []armRoute, n *cluster.Node) error {
	name := routetable.RouteName(n.Name)
	for _, rt := range routes {
		if rt.name != name {
			continue
		}
		if rt.prefix != n.Config.Kubenet.PodCIDR || rt.hop != n.PrimaryIP || rt.hopType != string(armnetwork.RouteNextHopTypeVirtualAppliance) {
			return fmt.Errorf("route %s is %s via %s %s", name, rt.prefix, rt.hopType, rt.hop)
		}
		return nil
	}
	return fmt.Errorf("no route %s in the table", name)
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// effRoute is one effective route of a NIC.
type effRoute struct {
	name, source, state, hopType string
	prefixes, hops               []string
}

// effectiveRoutes reads a NIC's effective route table (a long-running
// POST).
func (d *demo) effectiveRoutes(ctx context.Context, nics *armnetwork.InterfacesClient, nic string) ([]effRoute, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	poller, err := nics.BeginGetEffectiveRouteTable(ctx, d.sim.desc.ResourceGroup, nic, nil)
	if err != nil {
		return nil, fmt.Errorf("effective routes of %s: %w", nic, err)
	}
	resp, err := poller.PollUntilDone(ctx, &runtime.PollUntilDoneOptions{Frequency: time.Second})
	if err != nil {
		return nil, fmt.Errorf("effective routes of %s: %w", nic, err)
	}
	var out []effRoute
	for _, e := range resp.Value {
		if e == nil {
			continue
		}
		er := effRoute{name: deref(e.Name)}
		if e.Source != nil {
			er.source = string(*e.Source)
		}
		if e.State != nil {
			er.state = string(*e.State)
		}
		if e.NextHopType != nil {
			er.hopType = string(*e.NextHopType)
		}
		for _, p := range e.AddressPrefix {
			er.prefixes = append(er.prefixes, deref(p))
		}
		for _, h := range e.NextHopIPAddress {
			er.hops = append(er.hops, deref(h))
		}
		out = append(out, er)
	}
	return out, nil
}

// carries reports whether an active user route sends prefix to the
// virtual appliance hop.
func carries(eff []effRoute, prefix netip.Prefix, hop string) bool {
	for _, e := range eff {
		if e.source != string(armnetwork.EffectiveRouteSourceUser) || e.state != string(armnetwork.EffectiveRouteStateActive) ||
			e.hopType != string(armnetwork.RouteNextHopTypeVirtualAppliance) {
			continue
		}
		hasPrefix, hasHop := false, false
		for _, p := range e.prefixes {
			if q, err := netip.ParsePrefix(p); err == nil && q.Masked() == prefix {
				hasPrefix = true
			}
		}
		for _, h := range e.hops {
			hasHop = hasHop || h == hop
		}
		if hasPrefix && hasHop {
			return true
		}
	}
	return false
}

// podToPodSameNode connects every pod to the next pod of its own node,
// across the bridge: the peer sees the pod's own address.
func (d *demo) podToPodSameNode(ctx context.Context) {
	r := d.r
	r.Step("pod-to-pod on the same node, across %s (TCP; the server reports the source address it saw)", d.c.Nodes[0].Config.Kubenet.Bridge)
	per := d.podsPerNode()
	var rows [][]string
	for i, p := range d.pods {
		base := i / per * per
		q := d.pods[base+(i-base+1)%per]
		a, err := expect(ctx, p.NSPath, podAddr(q), q.Name, p.IP)
		rows = append(rows, []string{
			fmt.Sprintf("%s (%s, %s)", p.Name, p.Node.Name, p.IP),
			fmt.Sprintf("%s (%s, %s)", q.Name, q.Node.Name, podAddr(q)),
			seenText(a), result(r, p.Name+" -> "+q.Name, err, "no NAT"),
		})
	}
	r.Table([]string{"FROM", "TO", "SOURCE SEEN", "RESULT"}, rows)
	r.Note("cross-node traffic below leaves eth0 with the pod's own address: the VNet delivers it only by the route table")
}

// routeHeal breaks the cloud's side of kubenet by hand through ARM, as an
// operator with the portal would: node1's route deleted, then node1's IP
// forwarding turned off. Each time cross-node traffic to node1's pods
// stops, vnet-ipamd on node1 repairs it (holding the node back until the
// route is effective again) and the traffic comes back.
func (d *demo) routeHeal(ctx context.Context) {
	r := d.r
	n1 := d.c.Nodes[1]
	var a, b *cluster.Pod
	for _, p := range d.pods {
		if p.Node == n1 && b == nil {
			b = p
		}
		if p.Node != n1 && a == nil {
			a = p
		}
	}
	if a == nil || b == nil {
		r.CheckLine("a pod on each node for the heal", errors.New("missing"))
		return
	}
	name := routetable.RouteName(n1.Name)
	r.Step("an operator deletes the route %s through ARM: %s -> %s stops, vnet-ipamd on %s writes it again", name, a.Name, b.Name, n1.Name)
	err := d.editRouteTable(ctx, func(rt *armnetwork.RouteTable) {
		var keep []*armnetwork.Route
		for _, x := range rt.Properties.Routes {
			if x != nil && deref(x.Name) != name {
				keep = append(keep, x)
			}
		}
		rt.Properties.Routes = keep
	})
	r.CheckLine("deleted "+name+" (RouteTablesClient.BeginCreateOrUpdate without it)", err)
	if err != nil {
		return
	}
	if routes, err := d.routes(ctx); err == nil {
		var names []string
		for _, x := range routes {
			names = append(names, x.name)
		}
		r.Note("route table now: %v", names)
	}
	d.cut(ctx, a, b)
	routes, err := d.routes(ctx)
	if err == nil {
		err = d.routeOf(routes, n1)
	}
	r.CheckLine(fmt.Sprintf("ARM holds %s again: %s via %s", name, n1.Config.Kubenet.PodCIDR, n1.PrimaryIP), err)

	r.Step("an operator turns IP forwarding off on %s through ARM: %s -> %s stops, vnet-ipamd on %s turns it on again", n1.NIC, a.Name, b.Name, n1.Name)
	err = d.setForwarding(ctx, n1.NIC, false)
	r.CheckLine("IP forwarding of "+n1.NIC+" off (InterfacesClient.BeginCreateOrUpdate)", err)
	if err != nil {
		return
	}
	d.cut(ctx, a, b)
	fwd, err := d.forwarding(ctx, n1.NIC)
	if err == nil && !fwd {
		err = errors.New("still off")
	}
	r.CheckLine("ARM shows IP forwarding on again on "+n1.NIC, err)
}

// cut waits until a cannot reach b, then until it reaches b again with its
// own source address, and reports both times and whether b's node was
// held back (STATUS not ready) meanwhile.
func (d *demo) cut(ctx context.Context, a, b *cluster.Pod) {
	r := d.r
	dst := podAddr(b)
	start := time.Now()
	var stopped time.Duration
	for {
		if ctx.Err() != nil {
			return
		}
		// The failed dial's start is when the traffic stopped (it fails
		// only after its 1s timeout).
		tried := time.Since(start)
		if _, err := quickDial(ctx, a.NSPath, dst); err != nil {
			stopped = tried
			r.CheckLine(fmt.Sprintf("%s -> %s stopped %.1fs after the edit (%v)", a.Name, b.Name, stopped.Seconds(), shortErr(err)), nil)
			break
		}
		if time.Since(start) > 20*time.Second {
			r.CheckLine(fmt.Sprintf("%s -> %s stops", a.Name, b.Name), errors.New("it still answers 20s after the edit"))
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	var held []string
	for {
		if ctx.Err() != nil {
			return
		}
		if st, err := b.Node.Status(ctx); err == nil && !st.Ready && len(held) == 0 {
			held = append(held, st.Reason)
		}
		ans, err := quickDial(ctx, a.NSPath, dst)
		if err == nil && ans.Name == b.Name && ans.Seen == a.IP {
			back := time.Since(start) - stopped
			r.CheckLine(fmt.Sprintf("%s -> %s back %.1fs after it stopped (%.1fs after the edit), source %s", a.Name, b.Name, back.Seconds(), time.Since(start).Seconds(), ans.Seen), nil)
			break
		}
		if time.Since(start) > 90*time.Second {
			if err == nil {
				err = fmt.Errorf("answered by %q with source %s", ans.Name, seenText(ans))
			}
			r.CheckLine(fmt.Sprintf("%s -> %s comes back", a.Name, b.Name), fmt.Errorf("not within 90s: %w", err))
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(held) > 0 {
		r.Note("meanwhile %s was held back: STATUS not ready (%s), so no ADD raced the repair", b.Node.Name, held[0])
	} else {
		r.Note("%s's STATUS was not seen not-ready meanwhile (the repair was quicker than the polling)", b.Node.Name)
	}
}

func quickDial(ctx context.Context, nsPath string, dst netip.AddrPort) (probe.Answer, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	return probe.Dial(ctx, nsPath, dst)
}

func shortErr(err error) string {
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 {
		s = s[i+2:]
	}
	return s
}

// editRouteTable reads the route table, lets edit change it and writes it
// back whole, with If-Match on the ETag it read.
func (d *demo) editRouteTable(ctx context.Context, edit func(*armnetwork.RouteTable)) error {
	tables, err := d.sim.routeTablesClient()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	rt, err := tables.Get(ctx, d.sim.desc.ResourceGroup, d.sim.desc.RouteTable, nil)
	if err != nil {
		return err
	}
	if rt.Properties == nil {
		rt.Properties = &armnetwork.RouteTablePropertiesFormat{}
	}
	edit(&rt.RouteTable)
	poller, err := tables.BeginCreateOrUpdate(ctx, d.sim.desc.ResourceGroup, d.sim.desc.RouteTable, rt.RouteTable, nil)
	if err != nil {
		return err
	}
	_, err = poller.PollUntilDone(ctx, &runtime.PollUntilDoneOptions{Frequency: time.Second})
	return err
}

// setForwarding turns a NIC's IP forwarding on or off (a PUT of the whole
// NIC).
func (d *demo) setForwarding(ctx context.Context, nic string, on bool) error {
	nics, err := d.sim.nicsClient()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := nics.Get(ctx, d.sim.desc.ResourceGroup, nic, nil)
	if err != nil {
		return err
	}
	if resp.Properties == nil {
		return fmt.Errorf("NIC %s has no properties", nic)
	}
	resp.Properties.EnableIPForwarding = to.Ptr(on)
	poller, err := nics.BeginCreateOrUpdate(ctx, d.sim.desc.ResourceGroup, nic, resp.Interface, nil)
	if err != nil {
		return err
	}
	_, err = poller.PollUntilDone(ctx, &runtime.PollUntilDoneOptions{Frequency: time.Second})
	return err
}

// forwarding reads a NIC's IP forwarding.
func (d *demo) forwarding(ctx context.Context, nic string) (bool, error) {
	nics, err := d.sim.nicsClient()
	if err != nil {
		return false, err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := nics.Get(ctx, d.sim.desc.ResourceGroup, nic, nil)
	if err != nil {
		return false, err
	}
	return resp.Properties != nil && resp.Properties.EnableIPForwarding != nil && *resp.Properties.EnableIPForwarding, nil
}
