package kubenet

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/vnet-cni/vnet-cni/bridge/linux"
	"github.com/vnet-cni/vnet-cni/integration/probe"
	"github.com/vnet-cni/vnet-cni/internal/nsnet"
	"github.com/vnet-cni/vnet-cni/internal/nstest"
)

var (
	vnetPrefix  = netip.MustParsePrefix("10.240.0.0/16")
	clusterCIDR = netip.MustParsePrefix("10.244.0.0/16")
	gateway     = netip.MustParsePrefix("10.244.1.1/24")
	nodeIP      = netip.MustParseAddr("10.240.0.4")
	routerIP    = netip.MustParseAddr("10.240.0.1")
	internetIP  = netip.MustParseAddr("203.0.113.10")
	remotePod   = netip.MustParseAddr("10.244.2.5") // a pod of another node
)

const tcpPort = 8080

// topo is a node namespace whose NIC eth0 (10.240.0.4/24, default route
// via 10.240.0.1) is a veth to an "out" namespace: the VNet's router, which
// also holds an internet address, another node's pod address and the
// metadata service's, and routes the node's pod CIDR to the node (the cloud
// route table).
type topo struct {
	prefix, node, out string
}

func newTopo(t *testing.T) topo {
	t.Helper()
	nstest.RequireRoot(t)
	prefix := nstest.Prefix(t)
	tp := topo{prefix: prefix, node: nstest.NewNS(t, prefix+"-node"), out: nstest.NewNS(t, prefix+"-out")}
	nl, onl := nstest.Netlink(t, tp.node), nstest.Netlink(t, tp.out)
	outNS, err := netns.GetFromPath(tp.out)
	if err != nil {
		t.Fatal(err)
	}
	defer outNS.Close()
	attrs := netlink.NewLinkAttrs()
	attrs.Name = "eth0"
	attrs.HardwareAddr = net.HardwareAddr{2, 0, 0, 0, 0, 4}
	if err := nl.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "o0", PeerNamespace: netlink.NsFd(int(outNS))}); err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	up := func(h *netlink.Handle, name string, addrs ...netip.Prefix) netlink.Link {
		l, err := h.LinkByName(name)
		must(err)
		for _, a := range addrs {
			must(h.AddrAdd(l, &netlink.Addr{IPNet: linux.IPNet(a)}))
		}
		must(h.LinkSetUp(l))
		return l
	}
	up(nl, "lo")
	eth0 := up(nl, "eth0", netip.PrefixFrom(nodeIP, 24))
	must(nl.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: routerIP.AsSlice()}))
	up(onl, "lo", netip.PrefixFrom(internetIP, 32), netip.PrefixFrom(remotePod, 32), netip.PrefixFrom(linux.MetadataAddr, 32))
	o0 := up(onl, "o0", netip.PrefixFrom(routerIP, 24))
	must(onl.RouteAdd(&netlink.Route{LinkIndex: o0.Attrs().Index, Dst: linux.IPNet(gateway.Masked()), Gw: nodeIP.AsSlice()}))
	serve(t, tp.out, "out")
	serve(t, tp.node, "node")
	return tp
}

func serve(t *testing.T, nsPath, name string) {
	t.Helper()
	var s probe.Servers
	if _, err := s.Listen(nsPath, name, netip.AddrPortFrom(netip.IPv4Unspecified(), tcpPort)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
}

// dial connects from nsPath (from src when valid) and returns "<name> saw <ip>".
func dial(nsPath string, src, dst netip.Addr) (string, error) {
	return nsnet.DialTCP(context.Background(), nsPath, src, netip.AddrPortFrom(dst, tcpPort), 2*time.Second)
}

func nodeConfig() NodeConfig {
	return NodeConfig{Gateway: gateway, VNetPrefixes: []netip.Prefix{vnetPrefix}, ClusterCIDR: clusterCIDR}
}

func openNode(t *testing.T, nsPath string) *Node {
	t.Helper()
	n, err := Open(nsPath, Options{LockDir: t.TempDir()})
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

func addPod(t *testing.T, n *Node, tp topo, name string, ip netip.Addr) (string, linux.PodResult) {
	t.Helper()
	ns := nstest.NewNS(t, tp.prefix+"-"+name)
	res, err := n.AddPod(context.Background(), PodConfig{
		ContainerID: tp.prefix + "-" + name, IfName: "eth0", NetNS: ns,
		IP: netip.PrefixFrom(ip, gateway.Bits()), Gateway: gateway.Addr(),
	})
	if err != nil {
		t.Fatalf("add pod %s: %v", name, err)
	}
	serve(t, ns, name)
	return ns, res
}

func ref(tp topo, name, ns string, ip netip.Addr) linux.PodRef {
	return linux.PodRef{ContainerID: tp.prefix + "-" + name, IfName: "eth0", NetNS: ns, IP: ip}
}

// TestKubenetDatapath: two pods on one node's bridge; every reachability
// case is a real TCP connection whose server tells the source it saw.
func TestKubenetDatapath(t *testing.T) {
	tp := newTopo(t)
	ctx := context.Background()
	n := openNode(t, tp.node)
	cfg := nodeConfig()
	info, err := n.EnsureNode(ctx, cfg)
	if err != nil {
		t.Fatalf("ensure node: %v", err)
	}
	if info.PrimaryIP != nodeIP || info.Changes == 0 {
		t.Errorf("ensure: %+v; want primary %s and changes", info, nodeIP)
	}
	if info, err := n.EnsureNode(ctx, cfg); err != nil || info.Changes != 0 {
		t.Fatalf("second ensure: %+v, %v; want no changes", info, err)
	}
	podA, podB := netip.MustParseAddr("10.244.1.10"), netip.MustParseAddr("10.244.1.11")
	nsA, resA := addPod(t, n, tp, "pa", podA)
	nsB, resB := addPod(t, n, tp, "pb", podB)
	if resA.IP != netip.PrefixFrom(podA, 24) || resA.Gateway != gateway.Addr() {
		t.Errorf("result %s via %s, want %s/24 via %s", resA.IP, resA.Gateway, podA, gateway.Addr())
	}
	// A repeated ADD succeeds and changes nothing.
	if _, err := n.AddPod(ctx, PodConfig{ContainerID: tp.prefix + "-pa", IfName: "eth0", NetNS: nsA,
		IP: netip.PrefixFrom(podA, 24), Gateway: gateway.Addr()}); err != nil {
		t.Errorf("repeated add: %v", err)
	}

	for _, tc := range []struct {
		name, from string
		src, to    netip.Addr
		want       string
	}{
		{"pod to pod on the bridge", nsA, netip.Addr{}, podB, "pb saw " + podA.String()},
		{"pod to pod, reverse", nsB, netip.Addr{}, podA, "pa saw " + podB.String()},
		{"pod to its gateway", nsA, netip.Addr{}, gateway.Addr(), "node saw " + podA.String()},
		{"pod to the node's primary ip", nsA, netip.Addr{}, nodeIP, "node saw " + podA.String()},
		{"node to a pod", tp.node, netip.Addr{}, podB, "pb saw " + gateway.Addr().String()},
		{"pod to the internet through snat", nsA, netip.Addr{}, internetIP, "out saw " + nodeIP.String()},
		{"pod to the vnet without snat", nsA, netip.Addr{}, routerIP, "out saw " + podA.String()},
		{"pod to another node's pod without snat", nsB, netip.Addr{}, remotePod, "out saw " + podB.String()},
		{"another node's pod to a pod", tp.out, remotePod, podA, "pa saw " + remotePod.String()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got, err := dial(tc.from, tc.src, tc.to); err != nil || got != tc.want {
				t.Errorf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
	t.Run("the metadata service is refused to pods, not to the node", func(t *testing.T) {
		if got, err := dial(nsA, netip.Addr{}, linux.MetadataAddr); err == nil {
			t.Errorf("pod reached the metadata service: %q", got)
		}
		if _, err := dial(tp.node, netip.Addr{}, linux.MetadataAddr); err != nil {
			t.Errorf("the node cannot reach the metadata service: %v", err)
		}
	})
	spoof := func(t *testing.T) {
		t.Helper()
		// podA takes podB's address and an unused one and sends from them.
		nl := nstest.Netlink(t, nsA)
		l, err := nl.LinkByName("eth0")
		if err != nil {
			t.Fatal(err)
		}
		for _, ip := range []netip.Addr{podB, netip.MustParseAddr("10.244.1.99")} {
			a := &netlink.Addr{IPNet: linux.IPNet(netip.PrefixFrom(ip, 32)), Flags: unix.IFA_F_NODAD}
			if err := nl.AddrAdd(l, a); err != nil {
				t.Fatal(err)
			}
			defer func() {
				if err := nl.AddrDel(l, a); err != nil {
					t.Error(err)
				}
			}()
			for _, to := range []netip.Addr{nodeIP, internetIP, podB, remotePod} {
				if to == ip {
					continue
				}
				if got, err := dial(nsA, ip, to); err == nil {
					t.Errorf("podA as %s reached %s: %q", ip, to, got)
				}
			}
		}
		if _, err := dial(nsA, podA, nodeIP); err != nil {
			t.Errorf("podA from its own address: %v", err)
		}
	}
	t.Run("a spoofed source is dropped", spoof)

	refA := ref(tp, "pa", nsA, podA)
	if st, err := n.InspectPod(ctx, refA); err != nil || st.PodIf == nil || st.HostVeth == nil || len(st.Drift) > 0 {
		t.Fatalf("inspect podA: %+v, %v; want it complete", st, err)
	}
	t.Run("inspect finds a veth taken off the bridge, sync puts it back", func(t *testing.T) {
		nl := nstest.Netlink(t, tp.node)
		l, err := nl.LinkByName(resB.HostVeth.Name)
		if err != nil {
			t.Fatal(err)
		}
		if err := nl.LinkSetNoMaster(l); err != nil {
			t.Fatal(err)
		}
		refB := ref(tp, "pb", nsB, podB)
		got, err := n.InspectPod(ctx, refB)
		if err != nil || len(got.Drift) != 1 || !strings.Contains(got.Drift[0], "not a port of the bridge") {
			t.Errorf("drift %q, %v; want the port missing", got.Drift, err)
		}
		if _, err := dial(nsA, netip.Addr{}, podB); err == nil {
			t.Error("podB is reachable off the bridge")
		}
		sync := cfg
		sync.Sync = true
		if info, err := n.EnsureNode(ctx, sync); err != nil || info.Changes != 1 {
			t.Errorf("sync: %+v, %v; want one change", info, err)
		}
		if got, err := n.InspectPod(ctx, refB); err != nil || len(got.Drift) > 0 {
			t.Errorf("after the repair: %q, %v", got.Drift, err)
		}
		if got, err := dial(nsA, netip.Addr{}, podB); err != nil || got != "pb saw "+podA.String() {
			t.Errorf("podA to podB after the repair: %q, %v", got, err)
		}
	})
	t.Run("inspect finds a wrong address in the pod", func(t *testing.T) {
		nl := nstest.Netlink(t, nsB)
		l, err := nl.LinkByName("eth0")
		if err != nil {
			t.Fatal(err)
		}
		a := &netlink.Addr{IPNet: linux.IPNet(netip.PrefixFrom(podB, 24))}
		if err := nl.AddrDel(l, a); err != nil {
			t.Fatal(err)
		}
		got, err := n.InspectPod(ctx, ref(tp, "pb", nsB, podB))
		if err != nil || len(got.Drift) == 0 || !strings.Contains(got.Drift[0], "not "+netip.PrefixFrom(podB, 24).String()) {
			t.Errorf("drift %q, %v; want the pod's address missing", got.Drift, err)
		}
		// A repeated ADD repairs it.
		if _, err := n.AddPod(ctx, PodConfig{ContainerID: tp.prefix + "-pb", IfName: "eth0", NetNS: nsB,
			IP: netip.PrefixFrom(podB, 24), Gateway: gateway.Addr()}); err != nil {
			t.Fatal(err)
		}
		if got, err := n.InspectPod(ctx, ref(tp, "pb", nsB, podB)); err != nil || len(got.Drift) > 0 {
			t.Errorf("after the re-add: %q, %v", got.Drift, err)
		}
	})
	t.Run("a deleted guard table is rebuilt with its elements", func(t *testing.T) {
		n.ns.NFT.DelTable(guardTable())
		n.ns.NFT.DelTable(natTable())
		if err := n.ns.NFT.Flush(); err != nil {
			t.Fatal(err)
		}
		if got, err := n.InspectPod(ctx, refA); err != nil || len(got.Drift) != 1 || !strings.Contains(got.Drift[0], "guard") {
			t.Errorf("drift without the table %q, %v; want the guard element missing", got.Drift, err)
		}
		if info, err := n.EnsureNode(ctx, cfg); err != nil || info.Changes == 0 {
			t.Fatalf("ensure after the flush: %+v, %v", info, err)
		}
		for _, p := range []linux.GuardPort{podPort(resA.HostVeth.Name, podA), podPort(resB.HostVeth.Name, podB)} {
			if ok, err := n.hasPort(p); err != nil || !ok {
				t.Errorf("port %v after the rebuild: %v, %v", p, ok, err)
			}
		}
		if got, err := dial(nsA, netip.Addr{}, internetIP); err != nil || got != "out saw "+nodeIP.String() {
			t.Errorf("snat after the rebuild: %q, %v", got, err)
		}
		spoof(t)
	})
	t.Run("a flushed ruleset is rebuilt with its elements", func(t *testing.T) {
		n.ns.NFT.FlushRuleset()
		if err := n.ns.NFT.Flush(); err != nil {
			t.Fatal(err)
		}
		if info, err := n.EnsureNode(ctx, cfg); err != nil || info.Changes == 0 {
			t.Fatalf("ensure after the flush: %+v, %v", info, err)
		}
		if ok, err := n.hasPort(podPort(resA.HostVeth.Name, podA)); err != nil || !ok {
			t.Errorf("podA's port after the rebuild: %v, %v", ok, err)
		}
		spoof(t)
	})

	// DEL leaves nothing; a second DEL succeeds.
	for i := range 2 {
		if err := n.DelPod(ctx, refA); err != nil {
			t.Fatalf("del %d: %v", i, err)
		}
	}
	if _, err := nstest.Netlink(t, tp.node).LinkByName(resA.HostVeth.Name); err == nil {
		t.Errorf("DEL left the veth %s", resA.HostVeth.Name)
	}
	elems, _, err := n.ns.ReadSet(portsSet())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range elems {
		if p, ok := linux.ParseGuardKey(e.Key); ok && (p.Name == resA.HostVeth.Name || p.IP == podA) {
			t.Errorf("DEL left the guard element %v", p)
		}
	}
	if got, err := dial(nsB, netip.Addr{}, internetIP); err != nil || got != "out saw "+nodeIP.String() {
		t.Errorf("podB after podA's DEL: %q, %v", got, err)
	}
	// DEL without a netns nor IP (the runtime removed the pod's namespace).
	if err := n.DelPod(ctx, linux.PodRef{ContainerID: tp.prefix + "-pb", IfName: "eth0"}); err != nil {
		t.Fatalf("del podB: %v", err)
	}
	if elems, _, err := n.ns.ReadSet(portsSet()); err != nil || len(elems) != 0 {
		t.Errorf("elements after every DEL: %v, %v", elems, err)
	}
}

// TestKubenetPodCIDRChange: a bridge holding another pod CIDR's gateway is
// refused while a pod is attached, re-addressed once the node is drained.
func TestKubenetPodCIDRChange(t *testing.T) {
	tp := newTopo(t)
	ctx := context.Background()
	n := openNode(t, tp.node)
	if _, err := n.EnsureNode(ctx, nodeConfig()); err != nil {
		t.Fatal(err)
	}
	nsA, _ := addPod(t, n, tp, "pa", netip.MustParseAddr("10.244.1.10"))
	moved := nodeConfig()
	moved.Gateway = netip.MustParsePrefix("10.244.7.1/24")
	_, err := n.EnsureNode(ctx, moved)
	if !errors.Is(err, ErrPodCIDRChanged) || !errors.Is(err, linux.ErrModeConflict) {
		t.Fatalf("ensure with another pod cidr under a pod: %v; want %v and %v", err, ErrPodCIDRChanged, linux.ErrModeConflict)
	}
	if got, err := dial(nsA, netip.Addr{}, gateway.Addr()); err != nil || got != "node saw 10.244.1.10" {
		t.Errorf("the pod after the refusal: %q, %v", got, err)
	}
	if err := n.DelPod(ctx, ref(tp, "pa", nsA, netip.Addr{})); err != nil {
		t.Fatal(err)
	}
	if _, err := n.EnsureNode(ctx, moved); err != nil {
		t.Fatalf("ensure on the drained node: %v", err)
	}
	br, err := n.bridgeLink(DefaultBridgeName)
	if err != nil || br == nil {
		t.Fatal(br, err)
	}
	if addrs, err := n.bridgeAddrs(br); err != nil || !slices.Equal(addrs, []netip.Prefix{moved.Gateway}) {
		t.Errorf("bridge addresses %v, %v; want only %s", addrs, err, moved.Gateway)
	}
	nsB, _ := addPodAt(t, n, tp, "pb", netip.MustParsePrefix("10.244.7.10/24"), moved.Gateway.Addr())
	if got, err := dial(nsB, netip.Addr{}, internetIP); err != nil || got != "out saw "+nodeIP.String() {
		t.Errorf("a pod of the new cidr to the internet: %q, %v", got, err)
	}
}

func addPodAt(t *testing.T, n *Node, tp topo, name string, ip netip.Prefix, gw netip.Addr) (string, linux.PodResult) {
	t.Helper()
	ns := nstest.NewNS(t, tp.prefix+"-"+name)
	res, err := n.AddPod(context.Background(), PodConfig{ContainerID: tp.prefix + "-" + name, IfName: "eth0", NetNS: ns, IP: ip, Gateway: gw})
	if err != nil {
		t.Fatalf("add pod %s: %v", name, err)
	}
	return ns, res
}

// TestAddPodNeedsTheNode: without EnsureNode an ADD fails with ErrNotReady
// and leaves nothing.
func TestAddPodNeedsTheNode(t *testing.T) {
	tp := newTopo(t)
	n := openNode(t, tp.node)
	ns := nstest.NewNS(t, tp.prefix+"-pa")
	cfg := PodConfig{ContainerID: tp.prefix + "-pa", IfName: "eth0", NetNS: ns, IP: netip.MustParsePrefix("10.244.1.10/24"), Gateway: gateway.Addr()}
	if _, err := n.AddPod(context.Background(), cfg); !errors.Is(err, ErrNotReady) {
		t.Fatalf("add before the node: %v, want %v", err, ErrNotReady)
	}
	if _, err := nstest.Netlink(t, tp.node).LinkByName(cfg.hostName()); err == nil {
		t.Error("the failed add left its veth")
	}
	bad := cfg
	bad.Gateway = netip.MustParseAddr("10.244.2.1")
	if _, err := n.AddPod(context.Background(), bad); !errors.Is(err, ErrConfig) {
		t.Errorf("a gateway outside the pod cidr: %v, want %v", err, ErrConfig)
	}
}
