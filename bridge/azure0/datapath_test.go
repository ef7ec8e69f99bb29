package azure0

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/vnet-cni/vnet-cni/bridge/linux"
	"github.com/vnet-cni/vnet-cni/cloud/sim/fabric"
	"github.com/vnet-cni/vnet-cni/internal/nsnet"
)

// TestDatapath builds two nodes with pods on the simulated fabric, which
// accepts frames only with the NIC's MAC, delivers pod traffic to the NIC's
// MAC, answers ARP with the virtual MAC and lets only primaries reach the
// internet. Every reachability case is a real TCP connection.
func TestDatapath(t *testing.T) {
	podA, podB := netip.MustParseAddr("10.240.0.10"), netip.MustParseAddr("10.240.0.11")
	podC := netip.MustParseAddr("10.240.0.20")
	f := newFabric(t, map[string][]netip.Addr{
		"node0": {podA, podB},
		"node1": {podC},
	})
	ctx := context.Background()
	lockDir := t.TempDir()
	n0 := openNode(t, f.NodeNSPath("node0"), lockDir)
	n1 := openNode(t, f.NodeNSPath("node1"), lockDir)
	cfg1 := nodeConfig()
	cfg1.Bridge.MTU = 1450
	for _, c := range []struct {
		n   *Node
		cfg NodeConfig
	}{{n0, nodeConfig()}, {n1, cfg1}} {
		if _, err := c.n.EnsureNode(ctx, c.cfg); err != nil {
			t.Fatalf("ensure node: %v", err)
		}
	}
	nsA, resA := addPod(t, n0, f.prefix, "pa", podA, 0)
	nsB, resB := addPod(t, n0, f.prefix, "pb", podB, 0)
	nsC, resC := addPod(t, n1, f.prefix, "pc", podC, 0)

	port := uint16(8080)
	ends := map[string]struct {
		ns string
		ip netip.Addr
	}{
		"podA":  {nsA, podA},
		"podB":  {nsB, podB},
		"podC":  {nsC, podC},
		"node0": {f.NodeNSPath("node0"), node0IP},
		"node1": {f.NodeNSPath("node1"), node1IP},
		"inet":  {f.InternetNSPath(), f.InternetHost()},
	}
	for _, e := range ends {
		listenPeer(t, e.ns, netip.AddrPortFrom(e.ip, port))
	}

	tests := []struct {
		name, from, to string
		seenAs         netip.Addr // the source the server must see
	}{
		{"pod to pod on one node", "podA", "podB", podA},
		{"pod to pod on one node, reverse", "podB", "podA", podB},
		{"pod to pod across nodes", "podA", "podC", podA},
		{"pod to pod across nodes, reverse", "podC", "podA", podC},
		{"pod to its node", "podA", "node0", podA},
		{"pod to the other node", "podA", "node1", podA},
		{"node to its pod", "node0", "podA", node0IP},
		{"node to a pod of the other node", "node0", "podC", node0IP},
		{"other node to pod", "node1", "podB", node1IP},
		{"pod to internet is masqueraded to the node's primary", "podA", "inet", node0IP},
		{"pod on the other node to internet", "podC", "inet", node1IP},
		{"node to internet", "node0", "inet", node0IP},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := seenAs(ends[tc.from].ns, netip.AddrPortFrom(ends[tc.to].ip, port), 3*time.Second)
			if err != nil {
				t.Fatalf("%s -> %s: %v", tc.from, tc.to, err)
			}
			if got != tc.seenAs {
				t.Errorf("%s -> %s: server saw %s, want %s", tc.from, tc.to, got, tc.seenAs)
			}
		})
	}

	t.Run("arp as the fabric requires", func(t *testing.T) {
		// The gateway was resolved through the fabric (reply rewritten to
		// the pod), the node and the neighbour pod on the bridge.
		want := map[netip.Addr]string{
			gatewayIP: fabric.VirtualMAC.String(),
			node0IP:   node0MAC.String(),
			podB:      resB.PodIf.MAC.String(),
		}
		got := map[netip.Addr]string{}
		for ip := range want {
			got[ip] = neighMAC(t, nsA, ip).String()
		}
		if d := cmp.Diff(want, got); d != "" {
			t.Errorf("pod A's neighbours (-want +got):\n%s", d)
		}
	})

	t.Run("hairpin and mtu", func(t *testing.T) {
		for _, c := range []struct {
			n   *Node
			ns  string
			res linux.PodResult
			mtu int
		}{{n0, nsA, resA, 1500}, {n1, nsC, resC, 1450}} {
			st, err := c.n.InspectPod(ctx, linux.PodRef{ContainerID: f.prefix + "-" + podName(c.ns), IfName: "eth0", NetNS: c.ns})
			if err != nil {
				t.Fatalf("inspect: %v", err)
			}
			if st.HostVeth == nil || st.PodIf == nil {
				t.Fatalf("inspect %s: missing parts %+v", c.ns, st)
			}
			got := []any{st.HostVeth.Hairpin, st.HostVeth.Bridge, st.HostVeth.MTU, st.PodIf.MTU, st.RegisteredMAC.String(), st.SNATRegistered}
			want := []any{true, DefaultBridgeName, c.mtu, c.mtu, c.res.PodIf.MAC.String(), true}
			if d := cmp.Diff(want, got); d != "" {
				t.Errorf("%s: hairpin, bridge, host mtu, pod mtu, registered mac, snat (-want +got):\n%s", c.ns, d)
			}
		}
		info, err := n1.EnsureBridge(ctx, BridgeConfig{MTU: 1450})
		if err != nil {
			t.Fatal(err)
		}
		if info.MTU != 1450 {
			t.Errorf("bridge mtu %d, want 1450", info.MTU)
		}
	})

	t.Run("without snat the fabric drops pod traffic to the internet", func(t *testing.T) {
		cfg := nodeConfig()
		cfg.DisableSNAT = true
		if _, err := n0.EnsureNode(ctx, cfg); err != nil {
			t.Fatal(err)
		}
		if got, err := seenAs(nsA, netip.AddrPortFrom(f.InternetHost(), port), 1500*time.Millisecond); err == nil {
			t.Errorf("pod reached the internet without snat, seen as %s", got)
		}
		if _, err := n0.EnsureNode(ctx, nodeConfig()); err != nil {
			t.Fatal(err)
		}
		got, err := seenAs(nsA, netip.AddrPortFrom(f.InternetHost(), port), 3*time.Second)
		if err != nil || got != node0IP {
			t.Errorf("with snat again: seen as %s, %v; want %s", got, err, node0IP)
		}
	})

	// The redirect to the node's IP stack does not rely on br_netfilter
	// (on by default in new namespaces here): the same paths work with
	// bridged IPv4 kept away from the ip hooks.
	t.Run("without br_netfilter", func(t *testing.T) {
		for _, ns := range []string{f.NodeNSPath("node0"), f.NodeNSPath("node1")} {
			err := nsnet.Do(ns, func() error {
				return os.WriteFile("/proc/sys/net/bridge/bridge-nf-call-iptables", []byte("0"), 0o644)
			})
			if errors.Is(err, os.ErrNotExist) {
				t.Skip("br_netfilter not loaded: already covered above")
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		for _, tc := range tests {
			got, err := seenAs(ends[tc.from].ns, netip.AddrPortFrom(ends[tc.to].ip, port), 3*time.Second)
			if err != nil || got != tc.seenAs {
				t.Errorf("%s: seen as %s, %v; want %s", tc.name, got, err, tc.seenAs)
			}
		}
	})
}

// podName is the pod's name from its namespace path (prefix-name).
func podName(nsPath string) string {
	for i := len(nsPath) - 1; i >= 0; i-- {
		if nsPath[i] == '-' {
			return nsPath[i+1:]
		}
	}
	return nsPath
}
