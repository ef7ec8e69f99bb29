package integration

// Kubenet mode end to end: the real binaries on the simulated Azure with
// the daemons in mode kubenet, each node's pod CIDR given in its
// configuration (kubelet's --pod-cidr); the pods of two nodes reach each
// other only through the VNet's route table.

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v9"

	"github.com/vnet-cni/vnet-cni/cloud/azure/routetable"
	"github.com/vnet-cni/vnet-cni/cloud/sim"
	"github.com/vnet-cni/vnet-cni/integration/armops"
	"github.com/vnet-cni/vnet-cni/integration/cluster"
	"github.com/vnet-cni/vnet-cni/integration/probe"
	"github.com/vnet-cni/vnet-cni/internal/nsnet"
	"github.com/vnet-cni/vnet-cni/internal/nstest"
	"github.com/vnet-cni/vnet-cni/ipamd/api"
	"github.com/vnet-cni/vnet-cni/ipamd/config"
)

var kubenetCIDR = netip.MustParsePrefix("10.100.0.0/16")

func newKubenetEnv(t *testing.T, nodes int, hook func(node string, c *config.Config)) *e2eEnv {
	t.Helper()
	return newE2EEnvWith(t, sim.Options{Nodes: nodes}, cluster.Options{KubenetCIDR: kubenetCIDR, IPAMD: hook})
}

// kubenetRoutes reads the subnet's route table through ARM: route name to
// "prefix via next hop".
func kubenetRoutes(t *testing.T, e *e2eEnv) map[string]string {
	t.Helper()
	tables, err := armops.RouteTables(e.desc, e.sim.ARM())
	if err != nil {
		t.Fatal(err)
	}
	rt, err := tables.Get(context.Background(), e.desc.ResourceGroup, sim.RouteTableName, nil)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, r := range rt.Properties.Routes {
		hop := ""
		if r.Properties.NextHopIPAddress != nil {
			hop = *r.Properties.NextHopIPAddress
		}
		out[*r.Name] = *r.Properties.AddressPrefix + " via " + hop
	}
	return out
}

// setRoutes replaces the route table's routes by hand, as an operator
// with the portal would.
func setRoutes(t *testing.T, e *e2eEnv, keep func(name string) bool) {
	t.Helper()
	ctx := context.Background()
	tables, err := armops.RouteTables(e.desc, e.sim.ARM())
	if err != nil {
		t.Fatal(err)
	}
	rt, err := tables.Get(ctx, e.desc.ResourceGroup, sim.RouteTableName, nil)
	if err != nil {
		t.Fatal(err)
	}
	var routes []*armnetwork.Route
	for _, r := range rt.Properties.Routes {
		if keep(*r.Name) {
			routes = append(routes, r)
		}
	}
	rt.Properties.Routes = routes
	poller, err := tables.BeginCreateOrUpdate(ctx, e.desc.ResourceGroup, sim.RouteTableName, rt.RouteTable, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := poller.PollUntilDone(ctx, nil); err != nil {
		t.Fatal(err)
	}
}

// setForwarding turns the NIC's IP forwarding on or off by hand.
func setForwarding(t *testing.T, e *e2eEnv, n *cluster.Node, on bool) {
	t.Helper()
	ctx := context.Background()
	nics, err := armops.Interfaces(e.desc, e.sim.ARM())
	if err != nil {
		t.Fatal(err)
	}
	nic, err := nics.Get(ctx, e.desc.ResourceGroup, n.NIC, nil)
	if err != nil {
		t.Fatal(err)
	}
	nic.Properties.EnableIPForwarding = to.Ptr(on)
	poller, err := nics.BeginCreateOrUpdate(ctx, e.desc.ResourceGroup, n.NIC, nic.Interface, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := poller.PollUntilDone(ctx, nil); err != nil {
		t.Fatal(err)
	}
}

// cut waits until a cannot reach b (the route or the forwarding is gone
// from the fabric), then until it reaches b again (vnet-ipamd repaired
// it), and says how long each took; it also watches b's node: held back
// (STATUS not ready) at some point in between.
func cut(t *testing.T, what string, a, b *cluster.Pod) {
	t.Helper()
	ctx := context.Background()
	dst := netip.AddrPortFrom(b.IP, 80)
	start := time.Now()
	if err := nsnet.Eventually(15*time.Second, func() error {
		if _, _, err := e2eDialQuick(a.NSPath, dst); err == nil {
			return fmt.Errorf("%s still reaches %s", a.Name, b.Name)
		}
		return nil
	}); err != nil {
		t.Fatalf("%s: traffic did not stop: %v", what, err)
	}
	stopped := time.Since(start)
	held := false
	if err := nsnet.Eventually(40*time.Second, func() error {
		if st, err := b.Node.Status(ctx); err == nil && !st.Ready && strings.Contains(st.Reason, "route") {
			held = true
		}
		name, src, err := e2eDialQuick(a.NSPath, dst)
		if err != nil {
			return fmt.Errorf("%s -> %s: %w", a.Name, b.Name, err)
		}
		if name != b.Name || src != a.IP {
			return fmt.Errorf("%s -> %s: %q answered, seeing %s", a.Name, b.Name, name, src)
		}
		return nil
	}); err != nil {
		t.Fatalf("%s: traffic did not come back: %v", what, err)
	}
	t.Logf("%s: cross-node traffic stopped after %s, back %s later; node held back meanwhile: %v",
		what, stopped.Round(100*time.Millisecond), (time.Since(start) - stopped).Round(100*time.Millisecond), held)
}

// e2eDialQuick is e2eDial with a short timeout.
func e2eDialQuick(nsPath string, dst netip.AddrPort) (string, netip.Addr, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	a, err := probe.Dial(ctx, nsPath, dst)
	return a.Name, a.Seen, err
}

// TestE2EKubenet: two kubenet nodes; pods take addresses of their node's
// pod CIDR on the local bridge, the NICs hold no secondary address, the
// route table holds each pod CIDR via its node. Pods reach each other with
// their own address, the nodes, and the internet through SNAT. A route
// deleted by hand through ARM stops cross-node traffic until vnet-ipamd
// writes it again; IP forwarding turned off by hand, the same. DEL leaves
// nothing.
func TestE2EKubenet(t *testing.T) {
	e := newKubenetEnv(t, 2, nil)
	e.start(t)
	ctx := context.Background()
	for i, n := range e.c.Nodes {
		conf, err := os.ReadFile(n.ConflistPath())
		if err != nil || !strings.Contains(string(conf), `"mode": "kubenet"`) || !strings.Contains(string(conf), kubenetCIDR.String()) {
			t.Fatalf("conflist of %s: %v\n%s", n.Name, err, conf)
		}
		br, err := nstest.Netlink(t, n.NSPath).LinkByName("vnetbr0")
		if err != nil {
			t.Fatalf("%s has no vnetbr0: %v", n.Name, err)
		}
		addrs, err := nstest.Netlink(t, n.NSPath).AddrList(br, syscall.AF_INET)
		want := cluster.KubenetPodCIDR(kubenetCIDR, i)
		if err != nil || len(addrs) != 1 || addrs[0].IPNet.String() != netip.PrefixFrom(want.Addr().Next(), 24).String() {
			t.Errorf("%s: vnetbr0 addresses %v, want %s's gateway", n.Name, addrs, want)
		}
		if _, err := nstest.Netlink(t, n.NSPath).LinkByName("azure0"); err == nil {
			t.Errorf("%s has azure0 in kubenet mode", n.Name)
		}
	}
	routes := kubenetRoutes(t, e)
	for i, n := range e.c.Nodes {
		want := cluster.KubenetPodCIDR(kubenetCIDR, i).String() + " via " + n.PrimaryIP
		if got := routes[routetable.RouteName(n.Name)]; got != want {
			t.Errorf("route of %s: %q, want %q (table %v)", n.Name, got, want, routes)
		}
	}
	var pods []*cluster.Pod
	for i, n := range e.c.Nodes {
		for j := range 2 {
			p := e2eAddPod(t, n, fmt.Sprintf("%s-k%d", n.Name, j))
			if !cluster.KubenetPodCIDR(kubenetCIDR, i).Contains(p.IP) {
				t.Errorf("%s: %s is not in %s's pod CIDR", p.Name, p.IP, n.Name)
			}
			pods = append(pods, p)
		}
	}
	for _, n := range e.c.Nodes {
		if ips := e.nicIPs(n); len(ips) != 0 {
			t.Errorf("%s's NIC holds %v: kubenet takes no address of the subnet", n.Name, ips)
		}
		if err := n.PluginStatus(ctx); err != nil {
			t.Errorf("STATUS on %s: %v", n.Name, err)
		}
		e2eServe(t, n.NSPath, n.Name, netip.AddrPortFrom(e2eAddr(n.PrimaryIP), 10250))
	}
	for _, p := range pods {
		if err := p.Node.Check(ctx, p); err != nil {
			t.Errorf("CHECK %s: %v", p.Name, err)
		}
		e2eServe(t, p.NSPath, p.Name, netip.AddrPortFrom(p.IP, 80))
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
		if code, err := metadataGet(p.NSPath); err == nil {
			t.Errorf("%s reached the metadata service: %d", p.Name, code)
		}
	}

	// The route of node1 deleted by hand: node0's pods lose node1's, until
	// node1's daemon writes its route again and it is effective.
	a, b := pods[0], pods[2]
	setRoutes(t, e, func(name string) bool { return name != routetable.RouteName(b.Node.Name) })
	cut(t, "route deleted by hand", a, b)
	if got := kubenetRoutes(t, e)[routetable.RouteName(b.Node.Name)]; !strings.HasPrefix(got, cluster.KubenetPodCIDR(kubenetCIDR, 1).String()) {
		t.Errorf("node1's route after the repair: %q", got)
	}
	// node1's IP forwarding turned off by hand: the VNet drops what the
	// route sends to it, until its daemon turns it on again.
	setForwarding(t, e, b.Node, false)
	cut(t, "IP forwarding turned off by hand", a, b)

	for _, p := range pods {
		if err := p.Node.Del(ctx, p); err != nil {
			t.Fatalf("DEL %s: %v", p.Name, err)
		}
		if left := e2eLeftovers(t, p); len(left) > 0 {
			t.Errorf("DEL %s left %v", p.Name, left)
		}
		if err := p.Node.Del(ctx, p); err != nil {
			t.Errorf("second DEL %s: %v", p.Name, err)
		}
	}
}

// TestE2EKubenetRouteLimit: a route table limit of 3 with 4 nodes. The
// first three nodes' routes fit and their pods run; the 4th node is held
// back (STATUS not ready naming the limit, ADD refused with "try again"),
// and its route is never written.
func TestE2EKubenetRouteLimit(t *testing.T) {
	e := newKubenetEnv(t, 4, func(_ string, c *config.Config) { c.Kubenet.MaxRoutes = 3 })
	ctx := context.Background()
	for _, n := range e.c.Nodes[:3] {
		if err := n.StartIPAMD(); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range e.c.Nodes[:3] {
		if err := n.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
	}
	fourth := e.c.Nodes[3]
	if err := fourth.StartIPAMD(); err != nil {
		t.Fatal(err)
	}
	var st api.StatusResponse
	if err := nsnet.Eventually(30*time.Second, func() error {
		var err error
		if st, err = fourth.Status(ctx); err != nil {
			return err
		}
		if st.Ready || !strings.Contains(st.Reason, "limit") {
			return fmt.Errorf("status ready %v: %s", st.Ready, st.Reason)
		}
		return nil
	}); err != nil {
		t.Fatalf("the 4th node is not held back at the route limit: %v", err)
	}
	t.Logf("the 4th node: %s", st.Reason)
	if err := fourth.PluginStatus(ctx); e2eCode(err) != 50 {
		t.Errorf("STATUS on the 4th node: %v, want code 50", err)
	}
	p, err := fourth.NewPod("default", "held")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fourth.Add(ctx, p); e2eCode(err) != 11 {
		t.Errorf("ADD on the 4th node: %v, want code 11", err)
	}
	routes := kubenetRoutes(t, e)
	if len(routes) != 3 || routes[routetable.RouteName(fourth.Name)] != "" {
		t.Errorf("routes %v: want the first three nodes' only", routes)
	}
	// The other three work: a pod on each reaches the others.
	var pods []*cluster.Pod
	for _, n := range e.c.Nodes[:3] {
		q := e2eAddPod(t, n, n.Name+"-ok")
		e2eServe(t, q.NSPath, q.Name, netip.AddrPortFrom(q.IP, 80))
		pods = append(pods, q)
	}
	for _, q := range pods {
		for _, r := range pods {
			if q != r {
				e2eExpect(t, q.Name+" -> "+r.Name, q.NSPath, netip.AddrPortFrom(r.IP, 80), r.Name, q.IP)
			}
		}
	}
}

// TestE2EKubenetStateLost: kill -9 of a kubenet daemon, then an operator
// deletes its address store and the pod CIDR's allocation file, the two
// witnesses of what the pool handed out. The daemon comes back from the
// pods' veths: their assignments are rebuilt, every other address of the
// pod CIDR is quarantined for the recovery grace (among them that of an
// ADD in flight, which had no veth yet: without the quarantine a new pod
// gets it), and the pods started after it get addresses no live pod holds. Then the allocation file alone
// is deleted: the store knows every assignment and nothing is handed out
// twice either.
func TestE2EKubenetStateLost(t *testing.T) {
	e := newKubenetEnv(t, 1, func(_ string, c *config.Config) { c.RecoveryGrace = config.Duration(6 * time.Second) })
	e.start(t)
	ctx := context.Background()
	n := e.c.Nodes[0]
	var pods []*cluster.Pod
	for i := range 3 {
		pods = append(pods, e2eAddPod(t, n, fmt.Sprintf("s%d", i)))
	}
	held := func() map[netip.Addr]string {
		m := map[netip.Addr]string{}
		for _, p := range pods {
			m[p.IP] = p.Name
		}
		return m
	}
	wipe := func(dir string) {
		t.Helper()
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, en := range entries {
			if err := os.RemoveAll(filepath.Join(dir, en.Name())); err != nil {
				t.Fatal(err)
			}
		}
	}
	// An ADD in flight: its address is handed out, its veth not yet made.
	// Only the allocation file knew it; with the file and the store gone,
	// the quarantine of every address keeps it from a new pod.
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	inflight, err := n.Client().Allocate(actx, api.AllocateRequest{ContainerID: "inflight", IfName: "eth0", PodNamespace: "default", PodName: "inflight"})
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	a := inflight.Assignment.IP
	if err := n.StopIPAMD(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	wipe(n.Config.StoreDir)
	wipe(n.Config.Kubenet.StateDir)
	if err := n.StartIPAMD(); err != nil {
		t.Fatal(err)
	}
	// Until the grace ends: a is quarantined, and new pods' allocations
	// wait or get an address nobody holds. An allocation judged is one
	// that returned while the recovery still held (after it, a is free
	// again: the ADD in flight had the grace to record its pod).
	recovering := func() bool {
		c, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		st, err := n.Client().Status(c, api.StatusRequest{})
		return err != nil || strings.Contains(st.Reason, "recovering the address store")
	}
	quarantined, tries, refused := false, 0, 0
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); tries++ {
		c, cancel := context.WithTimeout(ctx, 5*time.Second)
		l, lerr := n.Client().List(c, api.ListRequest{})
		cancel()
		for _, rec := range l.Addresses {
			if lerr == nil && rec.IP == a && rec.State == "quarantined" {
				quarantined = true
			}
		}
		c, cancel = context.WithTimeout(ctx, 20*time.Second)
		r, aerr := n.Client().Allocate(c, api.AllocateRequest{ContainerID: fmt.Sprintf("probe%d", tries), IfName: "eth0", PodNamespace: "default", PodName: "probe"})
		cancel()
		if !recovering() {
			break
		}
		switch {
		case aerr == nil && r.Assignment.IP == a:
			t.Fatalf("during the recovery a new pod got %s, which the ADD in flight holds", a)
		case aerr == nil && held()[r.Assignment.IP] != "":
			t.Fatalf("during the recovery a new pod got %s, which %s holds", r.Assignment.IP, held()[r.Assignment.IP])
		case api.IsUnreachable(aerr):
			// Not listening yet.
		case aerr != nil && !api.IsTryAgain(aerr) && !api.IsNotReady(aerr):
			t.Fatalf("allocate during the recovery: %v", aerr)
		case aerr != nil:
			refused++
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !quarantined {
		t.Errorf("the address %s of the ADD in flight was never quarantined in the recovery", a)
	}
	t.Logf("recovery: %s of the ADD in flight quarantined: %v; %d allocations asked for during it, %d told to try again", a, quarantined, tries, refused)
	if err := n.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	for _, p := range pods {
		if a := e2eAssigned(t, p); a == nil || a.IP != p.IP {
			t.Errorf("%s after the loss: %+v, want %s rebuilt from its veth", p.Name, a, p.IP)
		}
	}
	for i := range 5 {
		q := e2eAddPod(t, n, fmt.Sprintf("after%d", i))
		if who := held()[q.IP]; who != "" {
			t.Fatalf("a new pod got %s, which %s holds", q.IP, who)
		}
		pods = append(pods, q)
	}

	// The allocation file alone.
	if err := n.StopIPAMD(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	wipe(n.Config.Kubenet.StateDir)
	if err := n.StartIPAMD(); err != nil {
		t.Fatal(err)
	}
	if err := n.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		q := e2eAddPod(t, n, fmt.Sprintf("again%d", i))
		if who := held()[q.IP]; who != "" {
			t.Fatalf("a new pod got %s, which %s holds", q.IP, who)
		}
		pods = append(pods, q)
	}
	// Every live pod still answers with its own address.
	for _, p := range pods {
		e2eServe(t, p.NSPath, p.Name, netip.AddrPortFrom(p.IP, 80))
	}
	for _, p := range pods[1:] {
		e2eExpect(t, pods[0].Name+" -> "+p.Name, pods[0].NSPath, netip.AddrPortFrom(p.IP, 80), p.Name, pods[0].IP)
	}
}
