package integration

// Routed mode end to end: the real binaries on the simulated Azure with
// the daemons' configuration set to mode routed.

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vnet-cni/vnet-cni/bridge/linux"
	"github.com/vnet-cni/vnet-cni/bridge/routed"
	"github.com/vnet-cni/vnet-cni/cloud/sim"
	"github.com/vnet-cni/vnet-cni/integration/cluster"
	"github.com/vnet-cni/vnet-cni/internal/nsnet"
	"github.com/vnet-cni/vnet-cni/internal/nstest"
	"github.com/vnet-cni/vnet-cni/ipamd/config"
)

// routedLeftovers lists what a pod's attachment left on its node in routed
// mode: its veth, any route or policy rule of its address, a permanent
// neighbour entry of it, its guard element.
func routedLeftovers(t *testing.T, p *cluster.Pod) []string {
	t.Helper()
	left := e2eLeftovers(t, p)
	nl := nstest.Netlink(t, p.Node.NSPath)
	pod := netip.PrefixFrom(p.IP, 32)
	routes, err := nl.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if d, ok := linux.PrefixOf(r.Dst); ok && d == pod {
			left = append(left, fmt.Sprintf("route %s table %d", d, r.Table))
		}
	}
	rules, err := nl.RuleList(netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rules {
		s, _ := linux.PrefixOf(r.Src)
		d, _ := linux.PrefixOf(r.Dst)
		if s == pod || d == pod {
			left = append(left, fmt.Sprintf("rule %d %s", r.Priority, r))
		}
	}
	neighs, err := nl.NeighList(0, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, nb := range neighs {
		if a, _ := netip.AddrFromSlice(nb.IP.To4()); a == p.IP && nb.State&netlink.NUD_PERMANENT != 0 {
			left = append(left, "neighbour "+a.String())
		}
	}
	if set := nftIn(t, p.Node, "list", "set", "inet", routed.TableName, "ports"); strings.Contains(set, p.IP.String()) ||
		strings.Contains(set, linux.HostVethName(p.ContainerID, p.IfName)) {
		left = append(left, "guard element in "+set)
	}
	return left
}

// TestE2ERouted: pods on two routed nodes reach each other, the nodes and
// the VNet with their own address and the internet through SNAT; the
// metadata service and a spoofed source are refused; CHECK sees a deleted
// route, which the daemon repairs; DEL leaves nothing. On the simulated
// Azure and on the simulated EC2 (an m5.large: the pods' addresses all on
// the primary ENI; TestE2EAWSENIs covers the others).
func TestE2ERouted(t *testing.T) {
	for _, cloud := range []sim.Cloud{sim.CloudAzure, sim.CloudAWS} {
		t.Run(string(cloud), func(t *testing.T) { testE2ERouted(t, cloud) })
	}
}

func testE2ERouted(t *testing.T, cloud sim.Cloud) {
	e := newE2EEnvOn(t, sim.Options{Nodes: 2, Cloud: cloud, InstanceType: "m5.large"}, func(_ string, c *config.Config) { c.Mode = config.ModeRouted })
	e.start(t)
	ctx := context.Background()
	for _, n := range e.c.Nodes {
		conf, err := os.ReadFile(n.ConflistPath())
		if err != nil || !strings.Contains(string(conf), `"mode": "routed"`) {
			t.Fatalf("conflist of %s: %v\n%s", n.Name, err, conf)
		}
		// No bridge took the NIC over.
		if _, err := nstest.Netlink(t, n.NSPath).LinkByName("azure0"); err == nil {
			t.Errorf("%s has azure0 in routed mode", n.Name)
		}
	}
	var pods []*cluster.Pod
	for _, n := range e.c.Nodes {
		for i := range 2 {
			pods = append(pods, e2eAddPod(t, n, fmt.Sprintf("%s-r%d", n.Name, i)))
		}
	}
	for _, p := range pods {
		if !slices.Contains(e.nicIPs(p.Node), p.IP) {
			t.Errorf("%s: %s is not on %s", p.Name, p.IP, p.Node.NIC)
		}
		if err := p.Node.Check(ctx, p); err != nil {
			t.Errorf("CHECK %s: %v", p.Name, err)
		}
		// The assignment names the NIC that holds the address, by its MAC
		// as the node sees it (protocol 1.3).
		eth0, err := nstest.Netlink(t, p.Node.NSPath).LinkByName("eth0")
		if err != nil {
			t.Fatal(err)
		}
		if a := e2eAssigned(t, p); a == nil || a.InterfaceMAC != strings.ReplaceAll(eth0.Attrs().HardwareAddr.String(), ":", "") || a.DeviceIndex != 0 {
			t.Errorf("%s: assignment %+v, want the interface mac of eth0 %s and device 0", p.Name, a, eth0.Attrs().HardwareAddr)
		}
		e2eServe(t, p.NSPath, p.Name, netip.AddrPortFrom(p.IP, 80))
	}
	for _, n := range e.c.Nodes {
		e2eServe(t, n.NSPath, n.Name, netip.AddrPortFrom(e2eAddr(n.PrimaryIP), 10250))
		if err := n.PluginStatus(ctx); err != nil {
			t.Errorf("STATUS on %s: %v", n.Name, err)
		}
	}
	internet := e2eServe(t, e.desc.InternetNetns, "internet", netip.AddrPortFrom(e2eAddr(e.desc.InternetHost), 80))
	for _, p := range pods {
		for _, q := range pods {
			if q != p {
				e2eExpect(t, p.Name+" -> "+q.Name, p.NSPath, netip.AddrPortFrom(q.IP, 80), q.Name, p.IP)
			}
		}
		for _, n := range e.c.Nodes {
			e2eExpect(t, p.Name+" -> "+n.Name, p.NSPath, netip.AddrPortFrom(e2eAddr(n.PrimaryIP), 10250), n.Name, p.IP)
		}
		e2eExpect(t, p.Name+" -> internet", p.NSPath, internet, "internet", e2eAddr(p.Node.PrimaryIP))
		e2eExpect(t, p.Node.Name+" -> "+p.Name, p.Node.NSPath, netip.AddrPortFrom(p.IP, 80), p.Name, e2eAddr(p.Node.PrimaryIP))
		if code, err := metadataGet(p.NSPath); err == nil {
			t.Errorf("%s reached the metadata service: %d", p.Name, code)
		}
	}
	// The node reaches its metadata service (on EC2 the Azure-style
	// request is refused as IMDSv1, which still proves the path).
	wantCode := 200
	if cloud == sim.CloudAWS {
		wantCode = 401
	}
	if code, err := metadataGet(e.c.Nodes[0].NSPath); err != nil || code != wantCode {
		t.Errorf("the node's metadata service: %d, %v, want %d", code, err, wantCode)
	}

	// A pod sending from its neighbour's address is dropped (the fabric
	// would accept it: both are the NIC's).
	a, b := pods[0], pods[1]
	nl := nstest.Netlink(t, a.NSPath)
	eth, err := nl.LinkByName(a.IfName)
	if err != nil {
		t.Fatal(err)
	}
	if err := nl.AddrAdd(eth, &netlink.Addr{IPNet: linux.IPNet(netip.PrefixFrom(b.IP, 32)), Flags: unix.IFA_F_NODAD}); err != nil {
		t.Fatal(err)
	}
	if line, err := nsnet.DialTCP(ctx, a.NSPath, b.IP, netip.AddrPortFrom(pods[2].IP, 80), 2*time.Second); err == nil {
		t.Errorf("%s as %s reached %s: %q", a.Name, b.IP, pods[2].Name, line)
	}
	if err := nl.AddrDel(eth, &netlink.Addr{IPNet: linux.IPNet(netip.PrefixFrom(b.IP, 32))}); err != nil {
		t.Fatal(err)
	}

	// CHECK finds the node's route to the pod deleted; the daemon puts it
	// back within its check interval.
	host := linux.HostVethName(a.ContainerID, a.IfName)
	nodeNL := nstest.Netlink(t, a.Node.NSPath)
	hv, err := nodeNL.LinkByName(host)
	if err != nil {
		t.Fatal(err)
	}
	if err := nodeNL.RouteDel(&netlink.Route{LinkIndex: hv.Attrs().Index, Dst: linux.IPNet(netip.PrefixFrom(a.IP, 32)), Scope: netlink.SCOPE_LINK, Table: unix.RT_TABLE_MAIN}); err != nil {
		t.Fatal(err)
	}
	if err := a.Node.Check(ctx, a); err == nil || !strings.Contains(err.Error(), "no route to "+a.IP.String()) {
		t.Errorf("CHECK after the route's deletion: %v, want the missing route", err)
	}
	if err := nsnet.Eventually(10*time.Second, func() error { return a.Node.Check(ctx, a) }); err != nil {
		t.Errorf("the daemon did not repair the route: %v", err)
	}
	// An nft flush ruleset: the guard comes back with its elements.
	nftIn(t, a.Node, "flush", "ruleset")
	if err := nsnet.Eventually(10*time.Second, func() error { return a.Node.Check(ctx, a) }); err != nil {
		t.Errorf("the daemon did not repair the table: %v", err)
	}
	e2eExpect(t, a.Name+" -> internet after the flush", a.NSPath, internet, "internet", e2eAddr(a.Node.PrimaryIP))

	for _, p := range pods {
		if err := p.Node.Del(ctx, p); err != nil {
			t.Fatalf("DEL %s: %v", p.Name, err)
		}
		if left := routedLeftovers(t, p); len(left) > 0 {
			t.Errorf("DEL %s left %v", p.Name, left)
		}
		if err := p.Node.Del(ctx, p); err != nil {
			t.Errorf("second DEL %s: %v", p.Name, err)
		}
	}
}

// TestE2ERoutedWitness: the store lost while routed pods run; the daemon
// rebuilds the assignments from the routed veths.
func TestE2ERoutedWitness(t *testing.T) {
	e := newE2EEnv(t, 1, func(_ string, c *config.Config) {
		c.Mode = config.ModeRouted
		c.RecoveryGrace = config.Duration(3 * time.Second)
	})
	e.start(t)
	n := e.c.Nodes[0]
	var pods []*cluster.Pod
	for i := range 3 {
		pods = append(pods, e2eAddPod(t, n, fmt.Sprintf("w%d", i)))
	}
	if err := n.StopIPAMD(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(n.Config.StoreDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, en := range entries {
		if err := os.RemoveAll(filepath.Join(n.Config.StoreDir, en.Name())); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.StartIPAMD(); err != nil {
		t.Fatal(err)
	}
	if err := n.WaitReady(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, p := range pods {
		if a := e2eAssigned(t, p); a == nil || a.IP != p.IP {
			t.Errorf("%s after the store's loss: %+v, want %s rebuilt from its veth", p.Name, a, p.IP)
		}
	}
	// New pods get other addresses.
	q := e2eAddPod(t, n, "after")
	for _, p := range pods {
		if p.IP == q.IP {
			t.Errorf("a new pod got %s, which %s holds", q.IP, p.Name)
		}
	}
}
