package azure0

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vnet-cni/vnet-cni/bridge/linux"
	"github.com/vnet-cni/vnet-cni/internal/nstest"
)

var (
	extraAddr  = netip.MustParsePrefix("10.240.0.40/24")
	metricNet  = netip.MustParsePrefix("192.0.2.0/24")
	scopeNet   = netip.MustParsePrefix("198.51.100.0/24")
	wantRoutes = []string{
		"0.0.0.0/0 via 10.240.0.1 metric 0 scope 0",
		"192.0.2.0/24 via 10.240.0.1 metric 50 scope 0",
		"198.51.100.0/24 via invalid IP metric 0 scope 253",
	}
)

// decorateNIC gives eth0 a second address and two more routes (one with a
// metric, one of scope link), so that the move of all of them is visible.
func decorateNIC(t *testing.T, nl *netlink.Handle) {
	t.Helper()
	eth, err := nl.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if err := nl.AddrAdd(eth, &netlink.Addr{IPNet: linux.IPNet(extraAddr)}); err != nil {
		t.Fatal(err)
	}
	idx := eth.Attrs().Index
	for _, r := range []*netlink.Route{
		{LinkIndex: idx, Dst: linux.IPNet(metricNet), Gw: gatewayIP.AsSlice(), Priority: 50},
		{LinkIndex: idx, Dst: linux.IPNet(scopeNet), Scope: netlink.SCOPE_LINK},
	} {
		if err := nl.RouteAdd(r); err != nil {
			t.Fatalf("add route %s: %v", r, err)
		}
	}
}

// routesOf lists the non-kernel IPv4 routes of a link in a comparable form.
func routesOf(t *testing.T, nl *netlink.Handle, name string) []string {
	t.Helper()
	l, err := nl.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := nl.RouteList(l, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range rs {
		if r.Protocol == unix.RTPROT_KERNEL {
			continue
		}
		dst := "0.0.0.0/0"
		if r.Dst != nil {
			dst = r.Dst.String()
		}
		gw, _ := netip.AddrFromSlice(r.Gw.To4())
		out = append(out, fmt.Sprintf("%s via %s metric %d scope %d", dst, gw, r.Priority, r.Scope))
	}
	return out
}

func addrsOf(t *testing.T, nl *netlink.Handle, name string) []netip.Prefix {
	t.Helper()
	l, err := nl.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	as, err := nl.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	var out []netip.Prefix
	for _, a := range as {
		p, _ := linux.PrefixOf(a.IPNet)
		out = append(out, p)
	}
	return out
}

// checkTakenOver verifies the final state of node0 after EnsureBridge.
func checkTakenOver(t *testing.T, nl *netlink.Handle, info BridgeInfo) {
	t.Helper()
	want := BridgeInfo{
		Name: DefaultBridgeName, Index: info.Index, MAC: node0MAC, MTU: 1500,
		Master: "eth0", MasterIndex: info.MasterIndex,
		PrimaryIP: node0IP, Subnet: subnet, Addrs: []netip.Prefix{netip.PrefixFrom(node0IP, 24), extraAddr},
		Gateway: gatewayIP,
	}
	if d := cmp.Diff(want, info, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
		cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); d != "" {
		t.Errorf("bridge info (-want +got):\n%s", d)
	}
	eth, err := nl.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if eth.Attrs().MasterIndex != info.Index {
		t.Errorf("eth0 master index %d, want the bridge's %d", eth.Attrs().MasterIndex, info.Index)
	}
	if got := addrsOf(t, nl, "eth0"); len(got) != 0 {
		t.Errorf("eth0 still has addresses %v", got)
	}
	if got := routesOf(t, nl, "eth0"); len(got) != 0 {
		t.Errorf("eth0 still has routes %v", got)
	}
	if d := cmp.Diff(wantRoutes, routesOf(t, nl, DefaultBridgeName)); d != "" {
		t.Errorf("bridge routes (-want +got):\n%s", d)
	}
}

// prober dials from node1 to node0's primary back to back from two
// goroutines until stopped and counts successes and failures. Each dial
// may take 3 s, so TCP's own retransmission of a SYN lost at the instant
// of the switch (after 1 s) still counts as reachable; the slowest
// connection is logged.
type prober struct {
	ok, failed atomic.Int64
	slow       atomic.Int64 // slowest successful connection, ns
	lastErr    atomic.Value
	stop       chan struct{}
	done       sync.WaitGroup
}

func startProber(f *testFabric, dst netip.AddrPort) *prober {
	p := &prober{stop: make(chan struct{})}
	for range 2 {
		p.start(f, dst)
	}
	return p
}

func (p *prober) start(f *testFabric, dst netip.AddrPort) {
	p.done.Go(func() {
		for {
			select {
			case <-p.stop:
				return
			default:
			}
			t0 := time.Now()
			_, err := seenAs(f.NodeNSPath("node1"), dst, 3*time.Second)
			if d := time.Since(t0); err == nil && d > p.slowest() {
				p.slow.Store(int64(d))
			}
			if err != nil {
				p.failed.Add(1)
				p.lastErr.Store(err.Error())
			} else {
				p.ok.Add(1)
			}
		}
	})
}

func (p *prober) slowest() time.Duration { return time.Duration(p.slow.Load()) }

// waitFirst waits until one connection succeeded, so that "before" is proven.
func (p *prober) waitFirst(t *testing.T) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); p.ok.Load() == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("node0 unreachable before EnsureBridge: %v", p.lastErr.Load())
		}
	}
}

func (p *prober) finish(t *testing.T) {
	t.Helper()
	close(p.stop)
	p.done.Wait()
	t.Logf("node0 reachability from node1: %d connections, slowest %v", p.ok.Load(), p.slowest())
	if p.failed.Load() > 0 || p.ok.Load() == 0 {
		t.Errorf("node0 reachability from node1: %d ok, %d failed (last: %v)", p.ok.Load(), p.failed.Load(), p.lastErr.Load())
	}
}

// TestEnsureBridgeTakesOverNIC moves addresses, routes and MAC onto the
// bridge while node1 keeps connecting to node0, then checks the result,
// that the MAC stays pinned when a port with a lower MAC joins, and that a
// second call changes nothing.
func TestEnsureBridgeTakesOverNIC(t *testing.T) {
	f := newFabric(t, nil)
	ctx := context.Background()
	nl := nstest.Netlink(t, f.NodeNSPath("node0"))
	decorateNIC(t, nl)
	dst := listenPeer(t, f.NodeNSPath("node0"), netip.AddrPortFrom(node0IP, 8082))
	p := startProber(f, dst)
	p.waitFirst(t)
	n := openNode(t, f.NodeNSPath("node0"), t.TempDir())
	info, err := n.EnsureBridge(ctx, BridgeConfig{})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // after
	p.finish(t)
	checkTakenOver(t, nl, info)

	// A port with a lower MAC does not change the bridge's.
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.HardwareAddr, attrs.MasterIndex = "lowmac", net.HardwareAddr{2, 0, 0, 0, 0, 1}, info.Index
	if err := nl.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "lowmacp"}); err != nil {
		t.Fatal(err)
	}
	again, err := n.EnsureBridge(ctx, BridgeConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(info, again, cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
		cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); d != "" {
		t.Errorf("second EnsureBridge differs (-first +second):\n%s", d)
	}
}

// TestEnsureBridgeCompletesHalfDone builds the states a crash can leave and
// checks that the next call completes each one, with node0 reachable.
func TestEnsureBridgeCompletesHalfDone(t *testing.T) {
	type step func(t *testing.T, nl *netlink.Handle, eth, br netlink.Link)
	addAddrs := func(t *testing.T, nl *netlink.Handle, _, br netlink.Link) {
		for _, p := range []netip.Prefix{netip.PrefixFrom(node0IP, 24), extraAddr} {
			if err := nl.AddrAdd(br, &netlink.Addr{IPNet: linux.IPNet(p)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	enslave := func(t *testing.T, nl *netlink.Handle, eth, br netlink.Link) {
		if err := nl.LinkSetMaster(eth, br); err != nil {
			t.Fatal(err)
		}
	}
	moveRoutes := func(t *testing.T, nl *netlink.Handle, eth, br netlink.Link) {
		rs, err := n0routes(nl, eth)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rs {
			r.LinkIndex = br.Attrs().Index
			if err := nl.RouteReplace(&r); err != nil {
				t.Fatal(err)
			}
		}
	}
	tests := []struct {
		name      string
		bridgeMAC net.HardwareAddr // of the half-made bridge
		steps     []step
	}{
		{"bridge created with another mac, down, nothing else", net.HardwareAddr{2, 0, 0, 0, 0, 9}, nil},
		{"addresses on both, master not enslaved", node0MAC, []step{addAddrs}},
		{"master enslaved, routes still on the master", node0MAC, []step{addAddrs, enslave}},
		{"routes moved, addresses still on the master", node0MAC, []step{addAddrs, enslave, moveRoutes}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFabric(t, nil)
			nl := nstest.Netlink(t, f.NodeNSPath("node0"))
			decorateNIC(t, nl)
			attrs := netlink.NewLinkAttrs()
			attrs.Name, attrs.HardwareAddr = DefaultBridgeName, tc.bridgeMAC
			if err := nl.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil {
				t.Fatal(err)
			}
			br, _ := nl.LinkByName(DefaultBridgeName)
			eth, _ := nl.LinkByName("eth0")
			if len(tc.steps) > 0 {
				if err := nl.LinkSetUp(br); err != nil {
					t.Fatal(err)
				}
			}
			for _, s := range tc.steps {
				s(t, nl, eth, br)
			}
			dst := listenPeer(t, f.NodeNSPath("node0"), netip.AddrPortFrom(node0IP, 8083))
			n := openNode(t, f.NodeNSPath("node0"), t.TempDir())
			// The master is named: a half-made bridge may not record it.
			info, err := n.EnsureBridge(context.Background(), BridgeConfig{Master: "eth0"})
			if err != nil {
				t.Fatal(err)
			}
			checkTakenOver(t, nl, info)
			if _, err := seenAs(f.NodeNSPath("node1"), dst, 3*time.Second); err != nil {
				t.Errorf("node1 to node0 after completion: %v", err)
			}
			// From now on the bridge records its master.
			if _, err := n.EnsureBridge(context.Background(), BridgeConfig{}); err != nil {
				t.Errorf("EnsureBridge without master after completion: %v", err)
			}
		})
	}
}

func n0routes(nl *netlink.Handle, eth netlink.Link) ([]netlink.Route, error) {
	rs, err := nl.RouteList(eth, netlink.FAMILY_V4)
	var out []netlink.Route
	for _, r := range rs {
		if r.Protocol != unix.RTPROT_KERNEL {
			out = append(out, r)
		}
	}
	return out, err
}

// TestEnsureNodeConcurrent races first calls as separate plugin processes
// would (each with its own Node, sockets and lock file description): one
// bridge, one table per family, and the same result for everyone.
func TestEnsureNodeConcurrent(t *testing.T) {
	f := newFabric(t, nil)
	nl := nstest.Netlink(t, f.NodeNSPath("node0"))
	decorateNIC(t, nl)
	lockDir := t.TempDir()
	const workers = 8
	nodes := make([]*Node, workers)
	for i := range nodes {
		nodes[i] = openNode(t, f.NodeNSPath("node0"), lockDir)
	}
	infos := make([]NodeInfo, workers)
	errs := make([]error, workers)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range nodes {
		wg.Go(func() {
			<-start
			infos[i], errs[i] = nodes[i].EnsureNode(context.Background(), nodeConfig())
		})
	}
	close(start)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	for i := range infos {
		if d := cmp.Diff(infos[0].Bridge, infos[i].Bridge, cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
			cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); d != "" {
			t.Errorf("worker %d saw another bridge (-0 +%d):\n%s", i, i, d)
		}
	}
	checkTakenOver(t, nl, infos[0].Bridge)
	links, err := nl.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	bridges := 0
	for _, l := range links {
		if l.Type() == "bridge" {
			bridges++
		}
	}
	if bridges != 1 {
		t.Errorf("%d bridges, want 1", bridges)
	}
	s := summarize(t, nftIn(t, f.NodeNSPath("node0")))
	want := map[string]int{"bridge": 1, "ip": 1}
	if d := cmp.Diff(want, s.Tables); d != "" {
		t.Errorf("tables (-want +got):\n%s", d)
	}
	wantRules := map[string]int{"bridge prerouting": 3, "bridge postrouting": 5, "bridge forward": 2, "ip postrouting": 1}
	if d := cmp.Diff(wantRules, s.Rules); d != "" {
		t.Errorf("rules (-want +got):\n%s", d)
	}
}
