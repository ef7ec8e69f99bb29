package integration

// The AWS end to end: the real binaries on the simulated EC2 (IMDSv2, the
// instance role, ENIs that appear in the node as eth<N>, the fabric's
// source/destination check), in routed mode.

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/vnet-cni/vnet-cni/bridge/linux"
	"github.com/vnet-cni/vnet-cni/bridge/routed"
	"github.com/vnet-cni/vnet-cni/cloud/sim"
	"github.com/vnet-cni/vnet-cni/integration/cluster"
	"github.com/vnet-cni/vnet-cni/integration/ec2ops"
	"github.com/vnet-cni/vnet-cni/internal/nsnet"
	"github.com/vnet-cni/vnet-cni/internal/nstest"
	"github.com/vnet-cni/vnet-cni/ipamd/config"
)

// linkTX is the number of packets the node's link name has sent.
func linkTX(t *testing.T, n *cluster.Node, name string) uint64 {
	t.Helper()
	l, err := nstest.Netlink(t, n.NSPath).LinkByName(name)
	if err != nil {
		t.Fatalf("link %s of %s: %v", name, n.Name, err)
	}
	return l.Attrs().Statistics.TxPackets
}

// TestE2EAWSENIs: two m5.large instances (3 ENIs × 10 addresses). 27 pods
// start on node0 through libcni with the real binaries; their addresses
// are spread over its three ENIs as EC2 reports them; pods on the second
// and third ENI reach a pod on node1 with their own address through their
// own ENI (the fabric's source/destination check drops them on any other:
// without its policy rule a pod is cut off), and the internet through
// SNAT to the primary; the 28th pod gets CNI error 11 naming the limit.
// Scaled down, the addresses go back and the ENIs the daemon added,
// empty beyond the targets, are detached and deleted, as EC2 reports.
func TestE2EAWSENIs(t *testing.T) {
	e := newE2EEnvOn(t, sim.Options{Nodes: 2, Cloud: sim.CloudAWS, InstanceType: "m5.large"}, func(_ string, c *config.Config) {
		c.ReleaseDelay = config.Duration(2 * time.Second)
		c.Cooldown = config.Duration(time.Second)
	})
	e.start(t)
	ctx := context.Background()
	ec2c, err := ec2ops.Client(ctx, e.desc)
	if err != nil {
		t.Fatal(err)
	}
	n0, n1 := e.c.Nodes[0], e.c.Nodes[1]
	enis, err := ec2ops.ENIs(ctx, ec2c, n0.InstanceID, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(enis) != 1 || enis[0].ID != n0.NIC {
		t.Fatalf("ENIs of %s at start: %+v, want the primary %s only", n0.InstanceID, enis, n0.NIC)
	}

	peer := e2eAddPod(t, n1, "peer")
	e2eServe(t, peer.NSPath, "peer", netip.AddrPortFrom(peer.IP, 80))
	internet := e2eServe(t, e.desc.InternetNetns, "internet", netip.AddrPortFrom(e2eAddr(e.desc.InternetHost), 80))

	var pods []*cluster.Pod
	for i := range 27 {
		pods = append(pods, e2eAddPod(t, n0, fmt.Sprintf("p%02d", i)))
	}
	enis, err = ec2ops.ENIs(ctx, ec2c, n0.InstanceID, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(enis) != 3 {
		t.Fatalf("ENIs of %s with 27 pods: %d, want 3", n0.InstanceID, len(enis))
	}
	perENI := map[string]int{}
	byDevice := map[int][]*cluster.Pod{}
	for _, p := range pods {
		holder := ec2ops.Holder(enis, p.IP)
		if holder == nil {
			t.Errorf("%s: no ENI of %s holds %s", p.Name, n0.InstanceID, p.IP)
			continue
		}
		perENI[holder.ID]++
		a := e2eAssigned(t, p)
		if a == nil || a.Interface != holder.ID || a.DeviceIndex != holder.Device ||
			a.InterfaceMAC != strings.ReplaceAll(holder.MAC, ":", "") {
			t.Errorf("%s: assignment %+v, want ENI %s (device %d, mac %s) that holds %s", p.Name, a, holder.ID, holder.Device, holder.MAC, p.IP)
		}
		byDevice[holder.Device] = append(byDevice[holder.Device], p)
	}
	for _, eni := range enis {
		t.Logf("ENI %s device %d mac %s: %d secondaries, %d pods", eni.ID, eni.Device, eni.MAC, len(eni.Secondary), perENI[eni.ID])
		if perENI[eni.ID] != 9 || len(eni.Secondary) != 9 {
			t.Errorf("ENI %s (device %d): %d pods, %d secondaries, want 9 and 9", eni.ID, eni.Device, perENI[eni.ID], len(eni.Secondary))
		}
		if eni.Device > 0 && (eni.Tags["vnet-cni/cluster"] != e.desc.Prefix || eni.Tags["vnet-cni/instance-id"] != n0.InstanceID) {
			t.Errorf("ENI %s: tags %v", eni.ID, eni.Tags)
		}
	}

	// The 28th pod: error 11 naming the limit.
	p28, err := n0.NewPod("default", "p27")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n0.Add(ctx, p28); e2eCode(err) != 11 || !strings.Contains(err.Error(), "limit") {
		t.Errorf("the 28th ADD: %v (code %d), want 11 naming the limit", err, e2eCode(err))
	} else {
		t.Logf("the 28th ADD: %v", err)
	}
	if err := n0.Del(ctx, p28); err != nil {
		t.Errorf("DEL of the refused pod: %v", err)
	}

	// Pods on the second and third ENI: to the peer with their own address,
	// through their own ENI; to the internet translated to the primary.
	nl := nstest.Netlink(t, n0.NSPath)
	for dev := 1; dev <= 2; dev++ {
		if len(byDevice[dev]) == 0 {
			t.Errorf("no pod on device %d", dev)
			continue
		}
		p := byDevice[dev][0]
		link := fmt.Sprintf("eth%d", dev)
		table := dev + 1
		rules, err := nl.RuleList(netlink.FAMILY_V4)
		if err != nil {
			t.Fatal(err)
		}
		var from *netlink.Rule
		for i, r := range rules {
			if s, ok := linux.PrefixOf(r.Src); ok && s == netip.PrefixFrom(p.IP, 32) && r.Priority == routed.PriorityFromPod {
				from = &rules[i]
			}
		}
		if from == nil || from.Table != table {
			t.Errorf("%s (%s on %s): from-rule %v, want priority %d lookup %d", p.Name, p.IP, link, from, routed.PriorityFromPod, table)
		}
		routes, err := nl.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: table}, netlink.RT_FILTER_TABLE)
		if err != nil {
			t.Fatal(err)
		}
		up, err := nl.LinkByName(link)
		if err != nil {
			t.Fatalf("%s has no %s: %v", n0.Name, link, err)
		}
		if len(routes) != 1 || routes[0].LinkIndex != up.Attrs().Index || routes[0].Gw.String() != e.desc.Gateway {
			t.Errorf("table %d: %v, want default via %s dev %s", table, routes, e.desc.Gateway, link)
		}
		e2eServe(t, p.NSPath, p.Name, netip.AddrPortFrom(p.IP, 80))
		before := linkTX(t, n0, link)
		e2eExpect(t, p.Name+" ("+link+") -> peer", p.NSPath, netip.AddrPortFrom(peer.IP, 80), "peer", p.IP)
		e2eExpect(t, "peer -> "+p.Name, peer.NSPath, netip.AddrPortFrom(p.IP, 80), p.Name, peer.IP)
		after := linkTX(t, n0, link)
		t.Logf("%s (%s, %s): %s sent %d packets for the connection", p.Name, p.IP, p.Node.Name, link, after-before)
		if after <= before {
			t.Errorf("%s: %s sent nothing (%d -> %d packets) while the pod talked to the peer", p.Name, link, before, after)
		}
		e2eExpect(t, p.Name+" -> internet", p.NSPath, internet, "internet", e2eAddr(n0.PrimaryIP))
		if from != nil && dev == 2 {
			// The two ENIs attached for the pods were set up as new
			// interfaces, not logged and counted as hand edits.
			logData, err := os.ReadFile(n0.LogPath)
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Count(string(logData), "set up the datapath of the node's interfaces as they are now"); got != 2 {
				t.Errorf("%d datapath set-ups for new interfaces in the daemon's log, want 2 (one per attached ENI)", got)
			}
			before := metricValue(t, e2eMetrics(t, n0), "vnetcni_ipamd_datapath_repairs_total")
			// Without its rule the pod's packets leave through eth0, whose
			// ENI does not own the address: the fabric drops them. The
			// daemon is stopped meanwhile (its keeper would put the rule
			// back within seconds, while TCP retransmits), then repairs it.
			pid := n0.PID()
			if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
			cont := func() { _ = syscall.Kill(pid, syscall.SIGCONT) }
			t.Cleanup(cont)
			if err := nl.RuleDel(from); err != nil {
				cont()
				t.Fatal(err)
			}
			name, src, err := e2eDial(p.NSPath, netip.AddrPortFrom(peer.IP, 80))
			cont()
			if err == nil {
				t.Errorf("%s reached the peer without its rule (answered by %s seeing %s)", p.Name, name, src)
			}
			if err := nsnet.Eventually(10*time.Second, func() error {
				_, _, err := e2eDial(p.NSPath, netip.AddrPortFrom(peer.IP, 80))
				return err
			}); err != nil {
				t.Errorf("%s after the keeper's repair: %v", p.Name, err)
			}
			if v := metricValue(t, e2eMetrics(t, n0), "vnetcni_ipamd_datapath_repairs_total"); v < before+1 {
				t.Errorf("datapath repairs after the rule was deleted by hand: %v (before %v), want one more", v, before)
			}
		}
	}
	// Every pod on node0 reaches the peer (one connection each).
	for _, p := range pods {
		if _, src, err := e2eDial(p.NSPath, netip.AddrPortFrom(peer.IP, 80)); err != nil || src != p.IP {
			t.Errorf("%s -> peer: seen as %s, %v; want %s", p.Name, src, err, p.IP)
		}
	}

	// Scale down: every address back, the two added ENIs detached and
	// deleted.
	for _, p := range pods {
		if err := n0.Del(ctx, p); err != nil {
			t.Fatalf("DEL %s: %v", p.Name, err)
		}
		if left := routedLeftovers(t, p); len(left) > 0 {
			t.Errorf("DEL %s left %v", p.Name, left)
		}
	}
	added := map[string]bool{}
	for _, eni := range enis {
		if eni.Device > 0 {
			added[eni.ID] = true
		}
	}
	err = nsnet.Eventually(60*time.Second, func() error {
		now, err := ec2ops.ENIs(ctx, ec2c, n0.InstanceID, false)
		if err != nil {
			return err
		}
		tagged, err := ec2ops.ENIs(ctx, ec2c, n0.InstanceID, true)
		if err != nil {
			return err
		}
		if len(now) != 1 || now[0].ID != n0.NIC || len(tagged) != 0 {
			return fmt.Errorf("attached %+v, tagged for the instance %+v; want the primary only and none", now, tagged)
		}
		if n := len(now[0].Secondary); n > 9 {
			return fmt.Errorf("the primary holds %d secondaries", n)
		}
		return nil
	})
	if err != nil {
		t.Errorf("scale down: %v", err)
	}
	calls := e.sim.EC2().Stats().Calls
	t.Logf("EC2 calls: attach %v, detach %v, delete %v, assign %v, unassign %v", calls["AttachNetworkInterface"], calls["DetachNetworkInterface"],
		calls["DeleteNetworkInterface"], calls["AssignPrivateIpAddresses"], calls["UnassignPrivateIpAddresses"])
	if got := calls["DeleteNetworkInterface"]["200"]; got != len(added) {
		t.Errorf("%d ENIs deleted, want the %d the daemon added", got, len(added))
	}
	// The node no longer shows the ENIs' links.
	if err := nsnet.Eventually(10*time.Second, func() error {
		for dev := 1; dev <= 2; dev++ {
			if _, err := nl.LinkByName(fmt.Sprintf("eth%d", dev)); err == nil {
				return fmt.Errorf("%s still shows eth%d", n0.Name, dev)
			}
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	// node1's pod still reaches the internet; nothing else changed there.
	e2eExpect(t, "peer -> internet", peer.NSPath, internet, "internet", e2eAddr(n1.PrimaryIP))
}
