package routed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vnet-cni/vnet-cni/bridge/linux"
)

// uplinkLink is a non-primary uplink found in the node.
type uplinkLink struct {
	Uplink
	index int
}

// uplinkLinks finds the non-primary uplinks in the node by their MACs, by
// interface tag (as the pods' aliases record them). An uplink the node does
// not show (yet) is left out. Without non-primary uplinks (Azure) it reads
// nothing.
func (n *Node) uplinkLinks(ups []Uplink) (map[string]uplinkLink, error) {
	out := map[string]uplinkLink{}
	var want []Uplink
	for _, u := range ups {
		if u.policyRouted() {
			want = append(want, u)
		}
	}
	if len(want) == 0 {
		return out, nil
	}
	links, err := linux.RetryDump(n.ns.Netlink.LinkList)
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	for _, u := range want {
		for _, l := range links {
			// Not a pod's veth (the simulated clouds wire NICs as veths)
			// nor a bridge that took a NIC's MAC over.
			if bytes.Equal(l.Attrs().HardwareAddr, u.MAC) && l.Type() != "bridge" &&
				!strings.HasPrefix(l.Attrs().Name, linux.HostVethPrefix) {
				out[linux.InterfaceTag(u.ID)] = uplinkLink{Uplink: u, index: l.Attrs().Index}
				break
			}
		}
	}
	return out, nil
}

// findUplink finds one uplink in the node by its MAC; ok is false when the
// node does not show it.
func (n *Node) findUplink(u Uplink) (uplinkLink, bool, error) {
	links, err := n.uplinkLinks([]Uplink{u})
	if err != nil {
		return uplinkLink{}, false, err
	}
	l, ok := links[linux.InterfaceTag(u.ID)]
	return l, ok, nil
}

// waitUplink finds the uplink in the node, waiting up to wait for it to
// appear: EC2 reports an ENI attached before the instance shows its link,
// and a pod may get one of its addresses in between. It watches the node's
// links (and looks again on every change) rather than polling. It fails
// with ErrUplinkMissing when the wait or ctx ends first.
func (n *Node) waitUplink(ctx context.Context, u Uplink, wait time.Duration) (uplinkLink, error) {
	if l, ok, err := n.findUplink(u); ok || err != nil {
		return l, err
	}
	done := make(chan struct{})
	defer close(done)
	events, err := n.ns.LinkEvents(done)
	if err != nil {
		return uplinkLink{}, err
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		// Subscribed first, then looked again: a link that appeared in
		// between is seen here.
		if l, ok, err := n.findUplink(u); ok || err != nil {
			return l, err
		}
		var cause error
		select {
		case _, open := <-events:
			if open {
				continue
			}
			cause = errors.New("the link watch ended")
		case <-timer.C:
			cause = fmt.Errorf("not within %v", wait)
		case <-ctx.Done():
			cause = ctx.Err()
		}
		if l, ok, err := n.findUplink(u); ok || err != nil {
			return l, err
		}
		return uplinkLink{}, fmt.Errorf("%w: interface %s (mac %s, device %d) holds the pod's address but the node has no link with its mac: %w",
			ErrUplinkMissing, u.ID, u.MAC, u.DeviceIndex, cause)
	}
}

// uplinkDefault is the default route of an uplink's table.
func uplinkDefault(u uplinkLink) *netlink.Route {
	return &netlink.Route{
		LinkIndex: u.index, Table: u.Table(), Gw: u.Gateway.AsSlice(), Flags: int(netlink.FLAG_ONLINK),
		Dst: linux.IPNet(netip.PrefixFrom(netip.IPv4Unspecified(), 0)),
	}
}

// ensureUplinkTables gives each uplink's table its default route via the
// subnet's gateway out of that interface.
func (n *Node) ensureUplinkTables(links map[string]uplinkLink) (int, error) {
	changes := 0
	for _, u := range links {
		ok, err := n.hasUplinkDefault(u)
		if err != nil {
			return changes, err
		}
		if ok {
			continue
		}
		if err := n.ns.Netlink.RouteReplace(uplinkDefault(u)); err != nil {
			return changes, fmt.Errorf("default route of table %d via %s: %w", u.Table(), u.Gateway, err)
		}
		changes++
	}
	return changes, nil
}

func (n *Node) hasUplinkDefault(u uplinkLink) (bool, error) {
	routes, err := linux.RetryDump(func() ([]netlink.Route, error) {
		return n.ns.Netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: u.Table()}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return false, fmt.Errorf("routes of table %d: %w", u.Table(), err)
	}
	for _, r := range routes {
		gw, _ := netip.AddrFromSlice(r.Gw.To4())
		if isDefault(r.Dst) && r.LinkIndex == u.index && gw == u.Gateway {
			return true, nil
		}
	}
	return false, nil
}

func isDefault(dst *net.IPNet) bool {
	return dst == nil || (dst.IP.IsUnspecified() && maskBits(dst) == 0)
}

// hostRoute is the node's route to a pod: its /32 on the host veth, with
// the node's primary address (when valid) as the source of the node's own
// traffic to the pod (the host veth has no address of its own, and the
// kernel would otherwise pick any local address, even a link-local one).
func hostRoute(ip netip.Addr, vethIndex int, src netip.Addr) *netlink.Route {
	r := &netlink.Route{LinkIndex: vethIndex, Dst: linux.IPNet(netip.PrefixFrom(ip, 32)), Scope: netlink.SCOPE_LINK, Table: unix.RT_TABLE_MAIN}
	if src.IsValid() {
		r.Src = src.AsSlice()
	}
	return r
}

// ruleSpec is one policy rule of a pod.
type ruleSpec struct {
	priority int
	src, dst netip.Prefix // invalid: any
	table    int
}

// podRules are the rules of a pod on a non-primary uplink: to the pod by
// the main table, from the pod (to dests; nil: anywhere) by the uplink's.
func podRules(ip netip.Addr, table int, dests []netip.Prefix) []ruleSpec {
	pod := netip.PrefixFrom(ip, 32)
	out := []ruleSpec{{priority: PriorityToPod, dst: pod, table: unix.RT_TABLE_MAIN}}
	if len(dests) == 0 {
		return append(out, ruleSpec{priority: PriorityFromPod, src: pod, table: table})
	}
	for _, d := range dests {
		out = append(out, ruleSpec{priority: PriorityFromPod, src: pod, dst: d, table: table})
	}
	return out
}

func (r ruleSpec) rule() *netlink.Rule {
	nr := netlink.NewRule()
	nr.Family = netlink.FAMILY_V4
	nr.Priority = r.priority
	nr.Table = r.table
	if r.src.IsValid() {
		nr.Src = linux.IPNet(r.src)
	}
	if r.dst.IsValid() {
		nr.Dst = linux.IPNet(r.dst)
	}
	return nr
}

// specOf is a kernel rule as a ruleSpec; ok is false for rules that are not
// of a pod (other priorities, other selectors).
func specOf(r netlink.Rule) (ruleSpec, netip.Addr, bool) {
	if r.Priority != PriorityToPod && r.Priority != PriorityFromPod {
		return ruleSpec{}, netip.Addr{}, false
	}
	if r.Mark != 0 || r.IifName != "" || r.OifName != "" || r.Invert {
		return ruleSpec{}, netip.Addr{}, false
	}
	s := ruleSpec{priority: r.Priority, table: r.Table}
	if r.Src != nil {
		s.src, _ = linux.PrefixOf(r.Src)
	}
	if r.Dst != nil {
		s.dst, _ = linux.PrefixOf(r.Dst)
	}
	pod := s.dst
	if r.Priority == PriorityFromPod {
		pod = s.src
	}
	if !pod.IsValid() || pod.Bits() != 32 {
		return ruleSpec{}, netip.Addr{}, false
	}
	return s, pod.Addr(), true
}

// podRulesHeld lists the pods' rules in the node, by pod address.
func (n *Node) podRulesHeld() (map[netip.Addr][]ruleSpec, error) {
	rules, err := linux.RetryDump(func() ([]netlink.Rule, error) { return n.ns.Netlink.RuleList(netlink.FAMILY_V4) })
	if err != nil {
		return nil, fmt.Errorf("list rules: %w", err)
	}
	out := map[netip.Addr][]ruleSpec{}
	for _, r := range rules {
		if s, ip, ok := specOf(r); ok {
			out[ip] = append(out[ip], s)
		}
	}
	return out, nil
}

// ensureRules adds the wanted rules that have is missing.
func (n *Node) ensureRules(want, have []ruleSpec) (int, error) {
	changes := 0
	for _, w := range want {
		if containsRule(have, w) {
			continue
		}
		if err := n.ns.Netlink.RuleAdd(w.rule()); err != nil && !errors.Is(err, unix.EEXIST) {
			return changes, fmt.Errorf("add rule %d from %s to %s lookup %d: %w", w.priority, w.src, w.dst, w.table, err)
		}
		changes++
	}
	return changes, nil
}

// deleteRules removes rules; a rule already gone is fine.
func (n *Node) deleteRules(rules []ruleSpec) (int, error) {
	changes := 0
	for _, r := range rules {
		if err := n.ns.Netlink.RuleDel(r.rule()); err != nil && !errors.Is(err, unix.ENOENT) {
			return changes, fmt.Errorf("delete rule %d from %s to %s lookup %d: %w", r.priority, r.src, r.dst, r.table, err)
		}
		changes++
	}
	return changes, nil
}

func containsRule(rs []ruleSpec, r ruleSpec) bool {
	for _, x := range rs {
		if x == r {
			return true
		}
	}
	return false
}

// syncPods repairs the routes and rules of every live routed pod, and
// removes the rules of addresses no pod veth holds. The rules and routes
// are read before the veths: an ADD records its pod on the veth before it
// adds rules, so a rule read here whose pod is missing from the later
// veth list was left behind.
func (n *Node) syncPods(links map[string]uplinkLink, dests []netip.Prefix, nodeIP netip.Addr) (int, error) {
	held, err := n.podRulesHeld()
	if err != nil {
		return 0, err
	}
	routes, err := linux.RetryDump(func() ([]netlink.Route, error) {
		return n.ns.Netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return 0, fmt.Errorf("list routes: %w", err)
	}
	type key struct {
		ip    netip.Addr
		index int
	}
	have := map[key]bool{}
	for _, r := range routes {
		if p, ok := linux.PrefixOf(r.Dst); ok && p.Bits() == 32 {
			have[key{p.Addr(), r.LinkIndex}] = true
		}
	}
	pods, err := n.routedVeths()
	if err != nil {
		return 0, err
	}
	changes := 0
	live := map[netip.Addr]bool{}
	var errs []error
	for _, v := range pods {
		ip := v.Record.IP
		live[ip] = true
		if !have[key{ip, v.Index}] {
			if err := n.ns.Netlink.RouteReplace(hostRoute(ip, v.Index, nodeIP)); err != nil && !linux.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("route to pod %s via %s: %w", ip, v.Name, err))
			} else {
				changes++
			}
		}
		u, known := links[v.Record.Interface]
		if !known {
			// The primary's pods have no rules; a pod of an interface the
			// node does not show (yet) keeps the rules it has.
			continue
		}
		want := podRules(ip, u.Table(), dests)
		c, err := n.ensureRules(want, held[ip])
		changes += c
		errs = append(errs, err)
		var extra []ruleSpec
		for _, h := range held[ip] {
			if !containsRule(want, h) {
				extra = append(extra, h)
			}
		}
		c, err = n.deleteRules(extra)
		changes += c
		errs = append(errs, err)
	}
	for ip, rs := range held {
		if !live[ip] {
			c, err := n.deleteRules(rs)
			changes += c
			errs = append(errs, err)
		}
	}
	return changes, errors.Join(errs...)
}
