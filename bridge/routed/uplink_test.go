package routed

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vnet-cni/vnet-cni/bridge/linux"
	"github.com/vnet-cni/vnet-cni/cloud/sim/fabric"
	"github.com/vnet-cni/vnet-cni/internal/nstest"
)

// TestRoutedUplinkAppearsLate: a pod's address is on a second interface
// (an ENI) that the cloud has attached but the node does not show yet.
// AddPod waits for the link (watching netlink), then routes the pod out of
// it: the simulated fabric's source/destination check drops the pod's
// packets on any other interface, so the connection proves the path. An
// interface that never appears fails the ADD with ErrUplinkMissing after
// the wait, leaving nothing behind.
func TestRoutedUplinkAppearsLate(t *testing.T) {
	f, prefix := newFabric(t, nil)
	ctx := context.Background()
	n0 := openNode(t, f.NodeNSPath("node0"), t.TempDir())
	cfg := NodeConfig{VNetPrefixes: []netip.Prefix{vnetPrefix}}
	if _, err := n0.EnsureNode(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	serve(t, f.NodeNSPath("node1"), "node1", netip.AddrPortFrom(node1IP, 8080))

	eniMAC := net.HardwareAddr{0x0e, 0, 0, 0, 0, 0x21}
	eniPrimary, pod := netip.MustParseAddr("10.240.0.30"), netip.MustParseAddr("10.240.0.31")
	gw := subnet.Addr().Next()
	up := Uplink{ID: "eni-late", MAC: eniMAC, DeviceIndex: 1, Gateway: gw}
	podNS := nstest.NewNS(t, prefix+"-late")
	type result struct {
		name string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		res, err := n0.AddPod(ctx, PodConfig{ContainerID: prefix + "-late", IfName: "eth0", NetNS: podNS, IP: pod, NodeIP: node0IP,
			Uplink: up, RuleDestinations: cfg.RuleDestinations(), UplinkWait: 20 * time.Second})
		done <- result{res.HostVeth.Name, err}
	}()
	// The ADD waits while the node has no link with the ENI's MAC.
	select {
	case r := <-done:
		t.Fatalf("AddPod returned before the interface appeared: %v", r.err)
	case <-time.After(300 * time.Millisecond):
	}
	st := fabric.State{Nodes: []fabric.NodeState{
		{Name: "node0", IPs: []netip.Addr{node0IP}, Interfaces: []fabric.Interface{{Device: 1, MAC: eniMAC, IPs: []netip.Addr{eniPrimary, pod}}}},
		{Name: "node1", IPs: []netip.Addr{node1IP}},
	}}
	if err := f.Apply(ctx, st); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil {
		t.Fatalf("AddPod after the interface appeared: %v", r.err)
	}
	held, err := n0.podRulesHeld()
	if err != nil {
		t.Fatal(err)
	}
	if want := podRules(pod, 2, cfg.RuleDestinations()); len(held[pod]) != len(want) {
		t.Errorf("rules of %s: %v, want %v", pod, held[pod], want)
	}
	if got, err := dial(podNS, netip.Addr{}, netip.AddrPortFrom(node1IP, 8080)); err != nil || got != "node1 saw "+pod.String() {
		t.Errorf("pod on the late interface to node1: %q, %v; want node1 saw %s", got, err, pod)
	}

	// An interface that never appears.
	ghost := Uplink{ID: "eni-ghost", MAC: net.HardwareAddr{0x0e, 0, 0, 0, 0, 0x22}, DeviceIndex: 2, Gateway: gw}
	ghostIP := netip.MustParseAddr("10.240.0.41")
	ghostNS := nstest.NewNS(t, prefix+"-ghost")
	_, err = n0.AddPod(ctx, PodConfig{ContainerID: prefix + "-ghost", IfName: "eth0", NetNS: ghostNS, IP: ghostIP, NodeIP: node0IP,
		Uplink: ghost, RuleDestinations: cfg.RuleDestinations(), UplinkWait: 200 * time.Millisecond})
	if !errors.Is(err, ErrUplinkMissing) {
		t.Fatalf("AddPod on an interface that never appears: %v, want ErrUplinkMissing", err)
	}
	t.Logf("the error: %v", err)
	if left := leftovers(t, n0, f.NodeNSPath("node0"), linux.HostVethName(prefix+"-ghost", "eth0"), ghostIP); len(left) > 0 {
		t.Errorf("the failed ADD left %v", left)
	}
	// ctx ends the wait too.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := n0.AddPod(cctx, PodConfig{ContainerID: prefix + "-ghost", IfName: "eth0", NetNS: ghostNS, IP: ghostIP, NodeIP: node0IP,
		Uplink: ghost, RuleDestinations: cfg.RuleDestinations()}); !errors.Is(err, ErrUplinkMissing) || !errors.Is(err, context.Canceled) {
		t.Errorf("AddPod with a cancelled ctx: %v, want ErrUplinkMissing and context.Canceled", err)
	}
}
