package main

import (
	"context"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/vnet-cni/vnet-cni/cloud/azure/routetable"
	"github.com/vnet-cni/vnet-cni/cloud/sim"
	"github.com/vnet-cni/vnet-cni/integration/armops"
	"github.com/vnet-cni/vnet-cni/integration/k8s/workload"
	"github.com/vnet-cni/vnet-cni/ipamd/routecontroller"
)

// kubenetCIDR is the kubenet cluster's cluster CIDR, outside the sim's
// VNet (10.240.0.0/12); manifests/overlays/kubenet carries it.
var kubenetCIDR = netip.MustParsePrefix("10.100.0.0/16")

// podCIDRs reads the pod CIDR kube-controller-manager gave each worker's
// Node and checks that each is a /24 of the cluster CIDR, none shared.
func (d *demo) podCIDRs(ctx context.Context) error {
	d.cidrs = map[string]netip.Prefix{}
	var problems []string
	for _, n := range d.c.Nodes {
		k, err := d.c.Client.CoreV1().Nodes().Get(ctx, n.Name(), metav1.GetOptions{})
		if err != nil {
			return err
		}
		if len(k.Spec.PodCIDRs) != 1 {
			problems = append(problems, fmt.Sprintf("%s: pod CIDRs %q", n.Name(), k.Spec.PodCIDRs))
			continue
		}
		p, err := netip.ParsePrefix(k.Spec.PodCIDRs[0])
		if err != nil || p.Bits() != 24 || !kubenetCIDR.Contains(p.Addr()) {
			problems = append(problems, fmt.Sprintf("%s: pod CIDR %q, want a /24 of %s", n.Name(), k.Spec.PodCIDRs[0], kubenetCIDR))
			continue
		}
		for other, q := range d.cidrs {
			if q.Overlaps(p) {
				problems = append(problems, fmt.Sprintf("%s's %s overlaps %s's %s", n.Name(), p, other, q))
			}
		}
		d.cidrs[n.Name()] = p
	}
	d.r.CheckLine(fmt.Sprintf("kube-controller-manager gave every Node a /24 of %s, none shared", kubenetCIDR), listErr("pod CIDRs", problems))
	if len(problems) > 0 {
		return fmt.Errorf("pod CIDRs: %s", strings.Join(problems, "; "))
	}
	return nil
}

// kubenetRoutes shows and checks what kubenet mode programs: the route
// table as ARM reports it (one vnetcni-<node> route per worker: its pod
// CIDR via its address), IP forwarding on every worker's NIC, each Node's
// NetworkUnavailable condition and the route controller's Lease.
func (d *demo) kubenetRoutes(ctx context.Context) error {
	r, c := d.r, d.c
	r.Step("kubenet: each vnet-ipamd programs its node's route (pod CIDR → node) in the subnet's route table and enables IP forwarding on its NIC; one daemon, holding the Lease, removes the routes of deleted Nodes")
	tables, err := armops.RouteTables(c.Desc, c.Sim.ARM())
	if err != nil {
		return err
	}
	want := map[string]string{}
	for _, n := range c.Nodes {
		want[routetable.RouteName(n.Name())] = d.cidrs[n.Name()].String() + " via " + n.IP().String()
	}
	var rows [][]string
	err = workload.WaitFor(ctx, "one vnetcni-<node> route per worker", time.Minute, func() (bool, string) {
		rt, err := tables.Get(ctx, c.Desc.ResourceGroup, sim.RouteTableName, nil)
		if err != nil {
			return false, err.Error()
		}
		rows = nil
		got := map[string]string{}
		for _, rr := range rt.Properties.Routes {
			hop, typ := "", ""
			if rr.Properties.NextHopIPAddress != nil {
				hop = *rr.Properties.NextHopIPAddress
			}
			if rr.Properties.NextHopType != nil {
				typ = string(*rr.Properties.NextHopType)
			}
			got[*rr.Name] = *rr.Properties.AddressPrefix + " via " + hop
			rows = append(rows, []string{*rr.Name, *rr.Properties.AddressPrefix, typ, hop})
		}
		sort.Slice(rows, func(i, j int) bool { return rows[i][0] < rows[j][0] })
		return fmt.Sprint(got) == fmt.Sprint(want), fmt.Sprintf("routes %v, want %v", got, want)
	})
	r.Note("route table %s (ARM):", sim.RouteTableName)
	r.Table([]string{"ROUTE", "ADDRESS PREFIX", "NEXT HOP TYPE", "NEXT HOP"}, rows)
	r.CheckLine("the route table holds one vnetcni-<node> route per worker, its pod CIDR via its address, and nothing else", err)
	if err != nil {
		return err
	}

	var fwd []string
	for i, n := range c.Nodes {
		nic, err := d.nics.Get(ctx, c.Desc.ResourceGroup, c.Desc.Nodes[i].NIC, nil)
		if err != nil {
			return err
		}
		if nic.Properties.EnableIPForwarding == nil || !*nic.Properties.EnableIPForwarding {
			fwd = append(fwd, n.Name())
		}
	}
	r.CheckLine("IP forwarding enabled on every worker's NIC (ARM)", listErr("not enabled", fwd))

	rows = nil
	var problems []string
	err = workload.WaitFor(ctx, "NetworkUnavailable False on every worker", time.Minute, func() (bool, string) {
		rows, problems = nil, nil
		for _, n := range c.Nodes {
			k, err := c.Client.CoreV1().Nodes().Get(ctx, n.Name(), metav1.GetOptions{})
			if err != nil {
				return false, err.Error()
			}
			var cond *corev1.NodeCondition
			for i := range k.Status.Conditions {
				if k.Status.Conditions[i].Type == corev1.NodeNetworkUnavailable {
					cond = &k.Status.Conditions[i]
				}
			}
			if cond == nil {
				problems = append(problems, n.Name()+": no NetworkUnavailable condition")
				continue
			}
			rows = append(rows, []string{n.Name(), string(cond.Status), cond.Reason, cond.Message})
			if cond.Status != corev1.ConditionFalse || cond.Reason != "RouteCreated" {
				problems = append(problems, fmt.Sprintf("%s: %s %s", n.Name(), cond.Status, cond.Reason))
			}
		}
		return len(problems) == 0, strings.Join(problems, "; ")
	})
	r.Table([]string{"NODE", "NETWORKUNAVAILABLE", "REASON", "MESSAGE"}, rows)
	r.CheckLine("NetworkUnavailable False, reason RouteCreated, on every worker", err)
	if err != nil {
		return err
	}

	var holder string
	err = workload.WaitFor(ctx, "a worker holding the Lease", time.Minute, func() (bool, string) {
		l, err := c.Client.CoordinationV1().Leases(routecontroller.DefaultLeaseNamespace).Get(ctx, routecontroller.DefaultLeaseName, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		holder = ""
		if l.Spec.HolderIdentity != nil {
			holder = *l.Spec.HolderIdentity
		}
		_, i := nodeByName(c, holder)
		return i >= 0, "holder " + holder
	})
	r.CheckLine(fmt.Sprintf("the route controller's Lease %s/%s held by a worker (%s)", routecontroller.DefaultLeaseNamespace, routecontroller.DefaultLeaseName, holder), err)
	return err
}
