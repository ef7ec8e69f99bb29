package main

import (
	"context"
	"fmt"
	"time"

	"github.com/vnet-cni/vnet-cni/integration/cluster"
	"github.com/vnet-cni/vnet-cni/integration/ec2ops"
	"github.com/vnet-cni/vnet-cni/ipamd/api"
)

// showENIs reads every instance's ENIs through EC2 (the SDK, signed with
// sim.json's static credentials, as an operator's tool would) and checks
// that each pod's address is a private address of an ENI of its own
// instance, the one vnet-ipamd's assignment names (in routed mode the pod's
// traffic leaves through that ENI: the fabric's source/destination check
// drops it on any other).
func (d *demo) showENIs(ctx context.Context) error {
	r := d.r
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	client, err := ec2ops.Client(cctx, d.sim.desc)
	if err != nil {
		return err
	}
	holder := map[string]string{}
	for _, p := range d.pods {
		holder[p.IP.String()] = "pod " + p.Name
	}
	var rows [][]string
	enisOf := map[string][]ec2ops.ENI{} // node -> its ENIs
	for _, n := range d.c.Nodes {
		enis, err := ec2ops.ENIs(cctx, client, n.InstanceID, false)
		if err != nil {
			return err
		}
		enisOf[n.Name] = enis
		states := map[string]string{}
		if l, err := n.Client().List(ctx, api.ListRequest{}); err == nil {
			for _, a := range l.Addresses {
				states[a.IP.String()] = a.State
			}
		}
		for _, e := range enis {
			link := fmt.Sprintf("eth%d", e.Device)
			rows = append(rows, []string{n.Name, e.ID, link, e.Primary.String(), "yes", n.Name + " (the instance itself)"})
			for _, ip := range e.Secondary {
				held := holder[ip.String()]
				if held == "" {
					held = "warm pool (" + states[ip.String()] + ")"
				}
				rows = append(rows, []string{n.Name, e.ID, link, ip.String(), "", held})
			}
		}
	}
	r.Table([]string{"INSTANCE", "ENI", "LINK", "PRIVATE IP", "PRIMARY", "HELD BY"}, rows)
	bad := 0
	for _, p := range d.pods {
		e := ec2ops.Holder(enisOf[p.Node.Name], p.IP)
		err := d.assignedTo(ctx, p, e)
		what := fmt.Sprintf("%s's address %s is on an ENI of %s", p.Name, p.IP, p.Node.InstanceID)
		if e != nil {
			what = fmt.Sprintf("%s's address %s is on %s (eth%d of %s), as its assignment says", p.Name, p.IP, e.ID, e.Device, p.Node.Name)
		}
		if err != nil {
			bad++
		}
		r.Check(what, err)
	}
	if bad == 0 {
		r.Note("ok   every pod address is a private address of an ENI of its own instance, the one vnet-ipamd names")
		r.Note("     (a pod of eth<N> leaves through eth<N>: rule `from <pod> lookup <N+1>`; the fabric's")
		r.Note("     source/destination check drops its packets on any other ENI, so the traffic below proves it)")
	} else {
		r.Note("FAIL %d pod addresses are not where vnet-ipamd says", bad)
	}
	return nil
}

// assignedTo checks that e holds p's address and that vnet-ipamd's
// assignment of p names e.
func (d *demo) assignedTo(ctx context.Context, p *cluster.Pod, e *ec2ops.ENI) error {
	if e == nil {
		return fmt.Errorf("%s is on no ENI of %s", p.IP, p.Node.InstanceID)
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := p.Node.Client().Check(ctx, api.CheckRequest{ContainerID: p.ContainerID, IfName: p.IfName})
	if err != nil {
		return err
	}
	if resp.Assignment == nil || resp.Assignment.Interface != e.ID {
		return fmt.Errorf("vnet-ipamd's assignment %+v does not name %s", resp.Assignment, e.ID)
	}
	return nil
}
