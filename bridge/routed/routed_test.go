package routed

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/vnet-cni/vnet-cni/bridge/linux"
	"github.com/vnet-cni/vnet-cni/cloud/sim/fabric"
	"github.com/vnet-cni/vnet-cni/integration/probe"
	"github.com/vnet-cni/vnet-cni/internal/nsnet"
	"github.com/vnet-cni/vnet-cni/internal/nstest"
)

var (
	vnetPrefix = netip.MustParsePrefix("10.240.0.0/16")
	subnet     = netip.MustParsePrefix("10.240.0.0/24")
	internet   = netip.MustParsePrefix("203.0.113.0/24")
	node0IP    = netip.MustParseAddr("10.240.0.4")
	node1IP    = netip.MustParseAddr("10.240.0.5")
)

// newFabric is the simulated Azure fabric with node0 and node1 whose NICs
// hold the secondaries: it delivers a packet only to the NIC that owns its
// destination, drops sources the NIC does not own, lets only primaries out
// to the internet.
func newFabric(t *testing.T, secondaries map[string][]netip.Addr) (*fabric.Fabric, string) {
	t.Helper()
	nstest.RequireRoot(t)
	prefix := nstest.Prefix(t)
	ctx := context.Background()
	f, err := fabric.Create(ctx, fabric.Topology{
		Prefix: prefix, VNetPrefixes: []netip.Prefix{vnetPrefix}, Subnet: subnet, Internet: internet,
		Nodes: []fabric.Node{
			{Name: "node0", MAC: net.HardwareAddr{2, 0x0d, 0x3a, 0, 0, 4}, Primary: node0IP},
			{Name: "node1", MAC: net.HardwareAddr{2, 0x0d, 0x3a, 0, 0, 5}, Primary: node1IP},
		},
	})
	if err != nil {
		t.Fatalf("create fabric: %v", err)
	}
	t.Cleanup(func() {
		if err := f.Destroy(); err != nil {
			t.Errorf("destroy fabric: %v", err)
		}
	})
	st := fabric.State{Nodes: []fabric.NodeState{
		{Name: "node0", IPs: append([]netip.Addr{node0IP}, secondaries["node0"]...)},
		{Name: "node1", IPs: append([]netip.Addr{node1IP}, secondaries["node1"]...)},
	}}
	if err := f.Apply(ctx, st); err != nil {
		t.Fatalf("apply fabric state: %v", err)
	}
	return f, prefix
}

func openNode(t *testing.T, nsPath, lockDir string) *Node {
	t.Helper()
	n, err := Open(nsPath, Options{LockDir: lockDir})
	if err != nil {
		t.Fatalf("open node: %v", err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("close node: %v", err)
		}
	})
	return n
}

func addPod(t *testing.T, n *Node, prefix, name string, cfg PodConfig) (string, linux.PodResult) {
	t.Helper()
	ns := nstest.NewNS(t, prefix+"-"+name)
	cfg.ContainerID, cfg.IfName, cfg.NetNS = prefix+"-"+name, "eth0", ns
	res, err := n.AddPod(context.Background(), cfg)
	if err != nil {
		t.Fatalf("add pod %s: %v", name, err)
	}
	return ns, res
}

func serve(t *testing.T, nsPath, name string, addr netip.AddrPort) {
	t.Helper()
	var s probe.Servers
	if _, err := s.Listen(nsPath, name, addr); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
}

// dial connects from nsPath (from src when valid) and returns "<name> saw <ip>".
func dial(nsPath string, src netip.Addr, dst netip.AddrPort) (string, error) {
	return nsnet.DialTCP(context.Background(), nsPath, src, dst, 2*time.Second)
}

// TestRoutedDatapath builds two routed nodes on the simulated fabric: every
// reachability case is a real TCP connection, whose server tells the
// source it saw.
func TestRoutedDatapath(t *testing.T) {
	podA, podB, podC := netip.MustParseAddr("10.240.0.10"), netip.MustParseAddr("10.240.0.11"), netip.MustParseAddr("10.240.0.20")
	f, prefix := newFabric(t, map[string][]netip.Addr{"node0": {podA, podB}, "node1": {podC}})
	ctx := context.Background()
	lockDir := t.TempDir()
	n0 := openNode(t, f.NodeNSPath("node0"), lockDir)
	n1 := openNode(t, f.NodeNSPath("node1"), lockDir)
	cfg := NodeConfig{VNetPrefixes: []netip.Prefix{vnetPrefix}}
	for _, n := range []*Node{n0, n1} {
		if _, err := n.EnsureNode(ctx, cfg); err != nil {
			t.Fatalf("ensure node: %v", err)
		}
		// A second run finds everything in place.
		if info, err := n.EnsureNode(ctx, cfg); err != nil || info.Changes != 0 {
			t.Fatalf("second ensure: %+v, %v; want no changes", info, err)
		}
	}
	nsA, resA := addPod(t, n0, prefix, "pa", PodConfig{IP: podA, NodeIP: node0IP})
	nsB, _ := addPod(t, n0, prefix, "pb", PodConfig{IP: podB, NodeIP: node0IP})
	nsC, _ := addPod(t, n1, prefix, "pc", PodConfig{IP: podC, NodeIP: node1IP})
	if resA.IP != netip.PrefixFrom(podA, 32) || resA.Gateway != GatewayIP {
		t.Errorf("result %s via %s, want %s/32 via %s", resA.IP, resA.Gateway, podA, GatewayIP)
	}

	const tcpPort = 8080
	ends := map[string]struct {
		ns string
		ip netip.Addr
	}{
		"podA": {nsA, podA}, "podB": {nsB, podB}, "podC": {nsC, podC},
		"node0": {f.NodeNSPath("node0"), node0IP}, "node1": {f.NodeNSPath("node1"), node1IP},
		"inet": {f.InternetNSPath(), f.InternetHost()},
	}
	for name, e := range ends {
		serve(t, e.ns, name, netip.AddrPortFrom(e.ip, tcpPort))
	}
	serve(t, f.NodeNSPath("node0"), "imds", netip.AddrPortFrom(linux.MetadataAddr, tcpPort))
	for _, tc := range []struct {
		name, from, to string
		seen           netip.Addr
	}{
		{"pod to pod on one node", "podA", "podB", podA},
		{"pod to pod across nodes", "podA", "podC", podA},
		{"pod to pod across nodes, reverse", "podC", "podB", podC},
		{"pod to its node", "podA", "node0", podA},
		{"pod to the other node", "podB", "node1", podB},
		{"node to its pod", "node0", "podA", node0IP},
		{"other node to a pod", "node1", "podB", node1IP},
		{"pod to the internet through snat", "podA", "inet", node0IP},
		{"pod on node1 to the internet", "podC", "inet", node1IP},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := dial(ends[tc.from].ns, netip.Addr{}, netip.AddrPortFrom(ends[tc.to].ip, tcpPort))
			if want := tc.to + " saw " + tc.seen.String(); err != nil || got != want {
				t.Errorf("got %q, %v; want %q", got, err, want)
			}
		})
	}
	t.Run("the metadata service is refused to pods, not to the node", func(t *testing.T) {
		imds := netip.AddrPortFrom(linux.MetadataAddr, tcpPort)
		if got, err := dial(nsA, netip.Addr{}, imds); err == nil {
			t.Errorf("pod reached the metadata service: %q", got)
		}
		if _, err := dial(f.NodeNSPath("node0"), netip.Addr{}, imds); err != nil {
			t.Errorf("the node cannot reach the metadata service: %v", err)
		}
	})
	t.Run("a spoofed source is dropped", func(t *testing.T) {
		// podA takes podB's address too and sends from it.
		nl := nstest.Netlink(t, nsA)
		l, err := nl.LinkByName("eth0")
		if err != nil {
			t.Fatal(err)
		}
		if err := nl.AddrAdd(l, &netlink.Addr{IPNet: linux.IPNet(netip.PrefixFrom(podB, 32)), Flags: unix.IFA_F_NODAD}); err != nil {
			t.Fatal(err)
		}
		for _, to := range []string{"node0", "podC", "inet"} {
			if got, err := dial(nsA, podB, netip.AddrPortFrom(ends[to].ip, tcpPort)); err == nil {
				t.Errorf("podA as %s reached %s: %q", podB, to, got)
			}
		}
		if _, err := dial(nsA, podA, netip.AddrPortFrom(node0IP, tcpPort)); err != nil {
			t.Errorf("podA from its own address: %v", err)
		}
	})

	refA := linux.PodRef{ContainerID: prefix + "-pa", IfName: "eth0", NetNS: nsA, IP: podA}
	st, err := n0.InspectPod(ctx, refA)
	if err != nil || st.PodIf == nil || st.HostVeth == nil || len(st.Drift) > 0 {
		t.Fatalf("inspect podA: %+v, %v; want it complete", st, err)
	}
	t.Run("inspect finds a deleted route, repair puts it back", func(t *testing.T) {
		nl := nstest.Netlink(t, f.NodeNSPath("node0"))
		if err := nl.RouteDel(hostRoute(podA, st.HostVeth.Index, netip.Addr{})); err != nil {
			t.Fatal(err)
		}
		got, err := n0.InspectPod(ctx, refA)
		if err != nil || len(got.Drift) != 1 || !strings.Contains(got.Drift[0], "no route to "+podA.String()) {
			t.Errorf("drift %q, %v; want the missing route", got.Drift, err)
		}
		sync := cfg
		sync.Sync = true
		if info, err := n0.EnsureNode(ctx, sync); err != nil || info.Changes != 1 {
			t.Errorf("sync: %+v, %v; want one change", info, err)
		}
		if got, err := n0.InspectPod(ctx, refA); err != nil || len(got.Drift) > 0 {
			t.Errorf("after the repair: %q, %v", got.Drift, err)
		}
	})
	t.Run("a flushed ruleset gets its guard back from the veths", func(t *testing.T) {
		n0.ns.NFT.FlushRuleset()
		if err := n0.ns.NFT.Flush(); err != nil {
			t.Fatal(err)
		}
		if info, err := n0.EnsureNode(ctx, cfg); err != nil || info.Changes == 0 {
			t.Fatalf("ensure after flush: %+v, %v", info, err)
		}
		for _, p := range []port{{resA.HostVeth.Name, podA}} {
			if ok, err := n0.hasPort(p); err != nil || !ok {
				t.Errorf("port %v after the rebuild: %v, %v", p, ok, err)
			}
		}
		if got, err := dial(nsA, podB, netip.AddrPortFrom(node0IP, tcpPort)); err == nil {
			t.Errorf("spoofing works after the rebuild: %q", got)
		}
	})

	// DEL leaves nothing; a second DEL succeeds.
	for i := range 2 {
		if err := n0.DelPod(ctx, refA); err != nil {
			t.Fatalf("del %d: %v", i, err)
		}
	}
	if left := leftovers(t, n0, f.NodeNSPath("node0"), resA.HostVeth.Name, podA); len(left) > 0 {
		t.Errorf("DEL left %v", left)
	}
	if _, err := dial(nsB, netip.Addr{}, netip.AddrPortFrom(podC, tcpPort)); err != nil {
		t.Errorf("podB after podA's DEL: %v", err)
	}
}

// leftovers lists what a deleted pod left on the node.
func leftovers(t *testing.T, n *Node, nodeNS, hostVeth string, ip netip.Addr) []string {
	t.Helper()
	var left []string
	nl := nstest.Netlink(t, nodeNS)
	if _, err := nl.LinkByName(hostVeth); err == nil {
		left = append(left, "veth "+hostVeth)
	}
	routes, err := nl.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if p, ok := linux.PrefixOf(r.Dst); ok && p == netip.PrefixFrom(ip, 32) {
			left = append(left, fmt.Sprintf("route %s table %d", p, r.Table))
		}
	}
	held, err := n.podRulesHeld()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range held[ip] {
		left = append(left, fmt.Sprintf("rule %+v", r))
	}
	neighs, err := nl.NeighList(0, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, nb := range neighs {
		if a, _ := netip.AddrFromSlice(nb.IP.To4()); a == ip && nb.State&netlink.NUD_PERMANENT != 0 {
			left = append(left, "neighbour "+a.String())
		}
	}
	elems, _, err := n.ns.ReadSet(portsSet())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range elems {
		if p, ok := parsePortKey(e.Key); ok && (p.name == hostVeth || p.ip == ip) {
			left = append(left, fmt.Sprintf("guard element %v", p))
		}
	}
	return left
}

// twoNICs is a node with two interfaces in separate subnets (an instance
// with a second ENI) behind a router namespace with strict reverse-path
// filtering: a packet from a pod whose address is on eth1 arrives only when
// it left through eth1. The router reaches the pods' addresses through the
// interface that owns them (static neighbours, as a cloud fabric delivers
// to the NIC), and a peer behind it serves.
type twoNICs struct {
	node, router, peer string
	eth0MAC, eth1MAC   net.HardwareAddr
}

var (
	sub0, sub1 = netip.MustParsePrefix("10.1.0.0/24"), netip.MustParsePrefix("10.2.0.0/24")
	gw0, gw1   = netip.MustParseAddr("10.1.0.1"), netip.MustParseAddr("10.2.0.1")
	nodeIP0    = netip.MustParseAddr("10.1.0.4")
	nodeIP1    = netip.MustParseAddr("10.2.0.4")
	peerIP     = netip.MustParseAddr("10.3.0.10")
)

func newTwoNICs(t *testing.T, pods map[netip.Addr]int) twoNICs {
	t.Helper()
	nstest.RequireRoot(t)
	prefix := nstest.Prefix(t)
	tn := twoNICs{
		node: nstest.NewNS(t, prefix+"-node"), router: nstest.NewNS(t, prefix+"-rt"), peer: nstest.NewNS(t, prefix+"-peer"),
		eth0MAC: net.HardwareAddr{2, 0, 0, 0, 0, 0x10}, eth1MAC: net.HardwareAddr{2, 0, 0, 0, 0, 0x11},
	}
	for ns, kv := range map[string][][2]string{
		tn.router: {{"net/ipv4/ip_forward", "1"}, {"net/ipv4/conf/all/rp_filter", "1"}, {"net/ipv4/conf/default/rp_filter", "1"}},
		tn.node:   {{"net/ipv4/conf/all/rp_filter", "1"}, {"net/ipv4/conf/default/rp_filter", "1"}},
	} {
		if err := setSysctls(ns, kv); err != nil {
			t.Fatal(err)
		}
	}
	nodeNL, rtNL, peerNL := nstest.Netlink(t, tn.node), nstest.Netlink(t, tn.router), nstest.Netlink(t, tn.peer)
	rtNS, err := netnsFd(tn.router)
	if err != nil {
		t.Fatal(err)
	}
	defer rtNS.Close()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	for i, c := range []struct {
		name, peer string
		mac        net.HardwareAddr
		ip, gw     netip.Addr
		sub        netip.Prefix
	}{{"eth0", "r0", tn.eth0MAC, nodeIP0, gw0, sub0}, {"eth1", "r1", tn.eth1MAC, nodeIP1, gw1, sub1}} {
		attrs := netlink.NewLinkAttrs()
		attrs.Name, attrs.HardwareAddr = c.name, c.mac
		must(nodeNL.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: c.peer, PeerNamespace: netlink.NsFd(int(rtNS))}))
		l, err := nodeNL.LinkByName(c.name)
		must(err)
		must(nodeNL.AddrAdd(l, &netlink.Addr{IPNet: linux.IPNet(netip.PrefixFrom(c.ip, c.sub.Bits()))}))
		must(nodeNL.LinkSetUp(l))
		if i == 0 {
			must(nodeNL.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: c.gw.AsSlice()}))
		}
		r, err := rtNL.LinkByName(c.peer)
		must(err)
		must(rtNL.AddrAdd(r, &netlink.Addr{IPNet: linux.IPNet(netip.PrefixFrom(c.gw, c.sub.Bits()))}))
		must(rtNL.LinkSetUp(r))
		for ip, dev := range pods {
			if dev == i {
				must(rtNL.NeighAdd(&netlink.Neigh{LinkIndex: r.Attrs().Index, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT, IP: ip.AsSlice(), HardwareAddr: c.mac}))
			}
		}
	}
	peerNS, err := netnsFd(tn.peer)
	if err != nil {
		t.Fatal(err)
	}
	defer peerNS.Close()
	attrs := netlink.NewLinkAttrs()
	attrs.Name = "rp"
	must(rtNL.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(peerNS))}))
	rp, err := rtNL.LinkByName("rp")
	must(err)
	must(rtNL.AddrAdd(rp, &netlink.Addr{IPNet: linux.IPNet(netip.MustParsePrefix("10.3.0.1/24"))}))
	must(rtNL.LinkSetUp(rp))
	pe, err := peerNL.LinkByName("eth0")
	must(err)
	must(peerNL.AddrAdd(pe, &netlink.Addr{IPNet: linux.IPNet(netip.PrefixFrom(peerIP, 24))}))
	must(peerNL.LinkSetUp(pe))
	must(peerNL.RouteAdd(&netlink.Route{LinkIndex: pe.Attrs().Index, Gw: net.IPv4(10, 3, 0, 1)}))
	lo, err := peerNL.LinkByName("lo")
	must(err)
	must(peerNL.LinkSetUp(lo))
	return tn
}

// TestRoutedPolicyRouting is the AWS layout: a pod whose address is on the
// second interface gets its table (device index + 1) and rules, and its
// traffic leaves through that interface (the router's strict reverse-path
// filter drops it otherwise); a pod on the primary uses the main table.
func TestRoutedPolicyRouting(t *testing.T) {
	podP, podQ := netip.MustParseAddr("10.2.0.50"), netip.MustParseAddr("10.1.0.60")
	tn := newTwoNICs(t, map[netip.Addr]int{podP: 1, podQ: 0})
	ctx := context.Background()
	n := openNode(t, tn.node, t.TempDir())
	eth1 := Uplink{ID: "eni-1", MAC: tn.eth1MAC, DeviceIndex: 1, Gateway: gw1}
	primary := Uplink{ID: "eni-0", MAC: tn.eth0MAC, DeviceIndex: 0, Gateway: gw0}
	cfg := NodeConfig{VNetPrefixes: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, Uplinks: []Uplink{primary, eth1}, Sync: true}
	if _, err := n.EnsureNode(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	prefix := nstest.Prefix(t)
	nsP, resP := addPod(t, n, prefix, "pp", PodConfig{IP: podP, Uplink: eth1, RuleDestinations: cfg.RuleDestinations()})
	nsQ, _ := addPod(t, n, prefix, "pq", PodConfig{IP: podQ, Uplink: primary})
	serve(t, tn.peer, "peer", netip.AddrPortFrom(peerIP, 80))

	held, err := n.podRulesHeld()
	if err != nil {
		t.Fatal(err)
	}
	wantP := []ruleSpec{
		{priority: PriorityToPod, dst: netip.PrefixFrom(podP, 32), table: unix.RT_TABLE_MAIN},
		{priority: PriorityFromPod, src: netip.PrefixFrom(podP, 32), dst: netip.MustParsePrefix("10.0.0.0/8"), table: 2},
	}
	if fmt.Sprint(held[podP]) != fmt.Sprint(wantP) || len(held[podQ]) != 0 {
		t.Errorf("rules %v; want %v for %s and none for %s", held, wantP, podP, podQ)
	}
	for _, c := range []struct {
		ns  string
		pod netip.Addr
	}{{nsP, podP}, {nsQ, podQ}} {
		got, err := dial(c.ns, netip.Addr{}, netip.AddrPortFrom(peerIP, 80))
		if want := "peer saw " + c.pod.String(); err != nil || got != want {
			t.Errorf("pod %s to the peer: %q, %v; want %q", c.pod, got, err, want)
		}
	}
	ref := linux.PodRef{ContainerID: prefix + "-pp", IfName: "eth0", NetNS: nsP, IP: podP, DeviceIndex: 1}
	if st, err := n.InspectPod(ctx, ref); err != nil || len(st.Drift) > 0 {
		t.Errorf("inspect: %q, %v", st.Drift, err)
	}

	// Without its rules, the pod's traffic leaves through eth0 and the
	// router drops it: the path really is the policy routing's.
	nl := nstest.Netlink(t, tn.node)
	if err := nl.RuleDel(wantP[1].rule()); err != nil {
		t.Fatal(err)
	}
	if got, err := dial(nsP, netip.Addr{}, netip.AddrPortFrom(peerIP, 80)); err == nil {
		t.Errorf("pod %s reached the peer without its rule: %q", podP, got)
	}
	if st, err := n.InspectPod(ctx, ref); err != nil || len(st.Drift) != 1 {
		t.Errorf("inspect without the rule: %q, %v; want one drift", st.Drift, err)
	}
	// A stale rule of a gone pod; the keeper's sync removes it and puts
	// the pod's back.
	stale := podRules(netip.MustParseAddr("10.2.0.99"), 2, nil)
	if _, err := n.ensureRules(stale, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := n.EnsureNode(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if held, err = n.podRulesHeld(); err != nil || fmt.Sprint(held[podP]) != fmt.Sprint(wantP) || len(held) != 1 {
		t.Errorf("after the sync: %v, %v; want only %v", held, err, wantP)
	}
	if got, err := dial(nsP, netip.Addr{}, netip.AddrPortFrom(peerIP, 80)); err != nil || !strings.HasSuffix(got, podP.String()) {
		t.Errorf("after the sync: %q, %v", got, err)
	}
	// The table's default route is repaired too.
	if err := nl.RouteDel(&netlink.Route{Table: 2, Dst: linux.IPNet(netip.MustParsePrefix("0.0.0.0/0"))}); err != nil {
		t.Fatal(err)
	}
	if info, err := n.EnsureNode(ctx, cfg); err != nil || info.Changes != 1 {
		t.Errorf("repair of table 2: %+v, %v", info, err)
	}

	if err := n.DelPod(ctx, ref); err != nil {
		t.Fatal(err)
	}
	if left := leftovers(t, n, tn.node, resP.HostVeth.Name, podP); len(left) > 0 {
		t.Errorf("DEL left %v", left)
	}
}

// TestRoutedRefusesBridgeNode: a node whose NIC bridge mode took over is
// not set up in routed mode.
func TestRoutedRefusesBridgeNode(t *testing.T) {
	nstest.RequireRoot(t)
	ns := nstest.NewNS(t, nstest.Prefix(t)+"-n")
	nl := nstest.Netlink(t, ns)
	attrs := netlink.NewLinkAttrs()
	attrs.Name = "azure0"
	if err := nl.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil {
		t.Fatal(err)
	}
	br, err := nl.LinkByName("azure0")
	if err != nil {
		t.Fatal(err)
	}
	if err := nl.LinkSetAlias(br, linux.Alias("master", "eth0")); err != nil {
		t.Fatal(err)
	}
	n := openNode(t, ns, t.TempDir())
	_, err = n.EnsureNode(context.Background(), NodeConfig{VNetPrefixes: []netip.Prefix{vnetPrefix}, DisableSNAT: true})
	if !errors.Is(err, linux.ErrModeConflict) {
		t.Errorf("EnsureNode on a bridge-mode node: %v, want %v", err, linux.ErrModeConflict)
	}
}

func setSysctls(nsPath string, kv [][2]string) error {
	return nsnet.Do(nsPath, func() error {
		for _, s := range kv {
			if err := os.WriteFile("/proc/sys/"+s[0], []byte(s[1]), 0o644); err != nil {
				return err
			}
		}
		return nil
	})
}

func netnsFd(nsPath string) (netns.NsHandle, error) { return netns.GetFromPath(nsPath) }
