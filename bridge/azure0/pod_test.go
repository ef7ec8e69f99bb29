package azure0

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"

	"github.com/vnet-cni/vnet-cni/bridge/linux"
	"github.com/vnet-cni/vnet-cni/internal/nsnet"
	"github.com/vnet-cni/vnet-cni/internal/nstest"
)

func TestHostVethName(t *testing.T) {
	tests := []struct{ cid, ifName string }{
		{"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "eth0"},
		{"a", "eth0"},
		{"a", "net1"},
	}
	seen := map[string]bool{}
	for _, tc := range tests {
		got := linux.HostVethName(tc.cid, tc.ifName)
		if len(got) > 15 || got != linux.HostVethName(tc.cid, tc.ifName) || seen[got] {
			t.Errorf("linux.HostVethName(%q, %q) = %q: want a stable, unique name of at most 15 characters", tc.cid, tc.ifName, got)
		}
		seen[got] = true
	}
}

// wantPod is what InspectPod must find for a healthy attachment.
func wantPod(res linux.PodResult, mtu int) linux.PodState {
	return linux.PodState{
		HostVeth: &linux.HostVethState{
			Name: res.HostVeth.Name, Index: res.HostVeth.Index, MAC: res.HostVeth.MAC, MTU: mtu, Up: true,
			Bridge: DefaultBridgeName, Hairpin: true, IP: res.IP.Addr(), PodMAC: res.PodIf.MAC,
		},
		PodIf: &linux.PodIfState{
			Name: "eth0", Index: res.PodIf.Index, MAC: res.PodIf.MAC, MTU: mtu, Up: true,
			Addrs: []netip.Prefix{res.IP},
			Routes: []linux.Route{
				{Dst: netip.PrefixFrom(netip.IPv4Unspecified(), 0), Gw: gatewayIP},
				{Dst: subnet},
			},
		},
		RegisteredMAC:  res.PodIf.MAC,
		SNATRegistered: true,
	}
}

var cmpAddrs = []cmp.Option{
	cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
	cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
	cmp.Comparer(func(a, b net.HardwareAddr) bool { return a.String() == b.String() }),
}

// TestAddPodIdempotentAndConflicts re-adds an attachment (same result,
// nothing duplicated), and refuses interfaces that are not its own.
func TestAddPodIdempotentAndConflicts(t *testing.T) {
	podA := netip.MustParseAddr("10.240.0.10")
	f := newFabric(t, map[string][]netip.Addr{"node0": {podA}})
	ctx := context.Background()
	n := openNode(t, f.NodeNSPath("node0"), t.TempDir())
	if _, err := n.EnsureNode(ctx, nodeConfig()); err != nil {
		t.Fatal(err)
	}
	nsA, first := addPod(t, n, f.prefix, "pa", podA, 1400)
	cfg := PodConfig{ContainerID: f.prefix + "-pa", IfName: "eth0", NetNS: nsA, IP: podA, Subnet: subnet, Gateway: gatewayIP, MTU: 1400}
	second, err := n.AddPod(ctx, cfg)
	if err != nil {
		t.Fatalf("re-add: %v", err)
	}
	if d := cmp.Diff(first, second, cmpAddrs...); d != "" {
		t.Errorf("re-add result differs (-first +second):\n%s", d)
	}
	st, err := n.InspectPod(ctx, linux.PodRef{ContainerID: cfg.ContainerID, IfName: "eth0", NetNS: nsA})
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(wantPod(first, 1400), st, cmpAddrs...); d != "" {
		t.Errorf("inspect after re-add (-want +got):\n%s", d)
	}

	t.Run("same attachment with another ip", func(t *testing.T) {
		c := cfg
		c.IP = netip.MustParseAddr("10.240.0.12")
		if _, err := n.AddPod(ctx, c); !errors.Is(err, ErrConflict) {
			t.Errorf("AddPod = %v, want ErrConflict", err)
		}
	})
	t.Run("host name taken by another link", func(t *testing.T) {
		nl := nstest.Netlink(t, f.NodeNSPath("node0"))
		c := cfg
		c.ContainerID, c.NetNS = f.prefix+"-other", nstest.NewNS(t, f.prefix+"-other")
		attrs := netlink.NewLinkAttrs()
		attrs.Name = linux.HostVethName(c.ContainerID, c.IfName)
		if err := nl.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil {
			t.Fatal(err)
		}
		if _, err := n.AddPod(ctx, c); !errors.Is(err, ErrConflict) {
			t.Errorf("AddPod = %v, want ErrConflict", err)
		}
		if _, err := nl.LinkByName(attrs.Name); err != nil {
			t.Errorf("the foreign link was touched: %v", err)
		}
	})
	t.Run("pod interface name taken in the pod", func(t *testing.T) {
		c := cfg
		c.ContainerID, c.NetNS = f.prefix+"-busy", nstest.NewNS(t, f.prefix+"-busy")
		pnl := nstest.Netlink(t, c.NetNS)
		attrs := netlink.NewLinkAttrs()
		attrs.Name = "eth0"
		if err := pnl.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "other"}); err != nil {
			t.Fatal(err)
		}
		if _, err := n.AddPod(ctx, c); !errors.Is(err, ErrConflict) {
			t.Errorf("AddPod = %v, want ErrConflict", err)
		}
		st, err := n.InspectPod(ctx, linux.PodRef{ContainerID: c.ContainerID, IfName: "eth0"})
		if err != nil || st.HostVeth != nil {
			t.Errorf("host veth left behind: %+v, %v", st.HostVeth, err)
		}
	})
}

// TestDelPod removes attachments in the ways a runtime does: twice, after
// the pod netns is gone, without an IP, and for an attachment never added;
// nothing may be left behind.
func TestDelPod(t *testing.T) {
	ips := map[string]netip.Addr{
		"twice": netip.MustParseAddr("10.240.0.10"), "gone": netip.MustParseAddr("10.240.0.11"),
		"noip": netip.MustParseAddr("10.240.0.12"), "never": netip.MustParseAddr("10.240.0.13"),
		"hand": netip.MustParseAddr("10.240.0.14"),
	}
	f := newFabric(t, nil)
	ctx := context.Background()
	n := openNode(t, f.NodeNSPath("node0"), t.TempDir())
	if _, err := n.EnsureNode(ctx, nodeConfig()); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		add    bool
		before func(nsPath string)
		ref    func(nsPath string) linux.PodRef
		times  int
	}{
		{"twice", true, nil, func(ns string) linux.PodRef {
			return linux.PodRef{ContainerID: f.prefix + "-twice", IfName: "eth0", NetNS: ns, IP: ips["twice"]}
		}, 2},
		{"gone", true, func(ns string) {
			if err := nsnet.DeleteNamed(f.prefix + "-gone"); err != nil {
				t.Fatal(err)
			}
		}, func(ns string) linux.PodRef {
			return linux.PodRef{ContainerID: f.prefix + "-gone", IfName: "eth0", NetNS: ns, IP: ips["gone"]}
		}, 2},
		{"noip", true, nil, func(string) linux.PodRef { return linux.PodRef{ContainerID: f.prefix + "-noip", IfName: "eth0"} }, 1},
		// hand: one of the three entries gone; DEL's one-transaction path fails
		// as a whole and the careful one removes the other two.
		{"hand", true, func(string) {
			_, iset, _ := podSets()
			ip := ips["hand"]
			if err := errors.Join(n.ns.NFT.SetDeleteElements(iset, elements(iset, nil, []netip.Addr{ip})), n.ns.NFT.Flush()); err != nil {
				t.Fatal(err)
			}
		}, func(ns string) linux.PodRef {
			return linux.PodRef{ContainerID: f.prefix + "-hand", IfName: "eth0", NetNS: ns}
		}, 1},
		{"never", false, nil, func(string) linux.PodRef {
			return linux.PodRef{ContainerID: f.prefix + "-never", IfName: "eth0", NetNS: "/run/netns/" + f.prefix + "-nope", IP: ips["never"]}
		}, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var nsPath string
			if tc.add {
				nsPath, _ = addPod(t, n, f.prefix, tc.name, ips[tc.name], 0)
			}
			if tc.before != nil {
				tc.before(nsPath)
			}
			ref := tc.ref(nsPath)
			for i := range tc.times {
				if err := n.DelPod(ctx, ref); err != nil {
					t.Fatalf("DelPod #%d: %v", i+1, err)
				}
			}
			ref.IP = ips[tc.name]
			st, err := n.InspectPod(ctx, ref)
			if err != nil {
				t.Fatal(err)
			}
			if st.HostVeth != nil || st.PodIf != nil || st.RegisteredMAC != nil || st.SNATRegistered {
				t.Errorf("left behind: %+v", st)
			}
			_, _, gset := podSets()
			elems, _, err := n.ns.ReadSet(gset)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range elems {
				if p, ok := linux.ParseGuardKey(e.Key); ok && p.IP == ips[tc.name] {
					t.Errorf("guard element left behind: %+v", p)
				}
			}
		})
	}
}

// TestDelPodKeepsReassignedIP: a late DEL of an old attachment must not
// unregister an address that now belongs to another pod.
func TestDelPodKeepsReassignedIP(t *testing.T) {
	ip := netip.MustParseAddr("10.240.0.10")
	f := newFabric(t, nil)
	ctx := context.Background()
	n := openNode(t, f.NodeNSPath("node0"), t.TempDir())
	if _, err := n.EnsureNode(ctx, nodeConfig()); err != nil {
		t.Fatal(err)
	}
	_, old := addPod(t, n, f.prefix, "old", ip, 0)
	oldRef := linux.PodRef{ContainerID: f.prefix + "-old", IfName: "eth0"}
	// The old pod's veth vanishes with its netns; the new pod gets the IP.
	if err := nsnet.DeleteNamed(f.prefix + "-old"); err != nil {
		t.Fatal(err)
	}
	_, cur := addPod(t, n, f.prefix, "new", ip, 0)
	// The MAC follows the address, so what the node and other pods
	// remember of the old pod stays right for the new one.
	if want := linux.PodMAC(ip).String(); old.PodIf.MAC.String() != want || cur.PodIf.MAC.String() != want {
		t.Fatalf("pod macs %s and %s, want both %s", old.PodIf.MAC, cur.PodIf.MAC, want)
	}
	// A late DEL of the old attachment, without and with the address (the
	// runtime passes prevResult), must leave the new pod's entries alone.
	for _, ref := range []linux.PodRef{oldRef, {ContainerID: oldRef.ContainerID, IfName: "eth0", IP: ip}} {
		if err := n.DelPod(ctx, ref); err != nil {
			t.Fatal(err)
		}
		st, err := n.InspectPod(ctx, linux.PodRef{ContainerID: f.prefix + "-new", IfName: "eth0"})
		if err != nil {
			t.Fatal(err)
		}
		if st.RegisteredMAC.String() != cur.PodIf.MAC.String() || !st.SNATRegistered {
			t.Errorf("after a late DEL (ip %v): new pod's entry mac %s snat %v, want %s true", ref.IP, st.RegisteredMAC, st.SNATRegistered, cur.PodIf.MAC)
		}
	}
	// The new pod's own DEL removes them.
	if err := n.DelPod(ctx, linux.PodRef{ContainerID: f.prefix + "-new", IfName: "eth0", IP: ip}); err != nil {
		t.Fatal(err)
	}
	st, err := n.InspectPod(ctx, linux.PodRef{ContainerID: f.prefix + "-new", IfName: "eth0", IP: ip})
	if err != nil {
		t.Fatal(err)
	}
	if st.RegisteredMAC != nil || st.SNATRegistered {
		t.Errorf("after the owner's DEL: mac %s snat %v, want none", st.RegisteredMAC, st.SNATRegistered)
	}
}

// TestAddPodRecordsAttachment: the host veth records the whole attachment
// (linux.PodRecord), and a re-added pod whose veth an earlier plugin made
// (address and MAC only) gets the complete record.
func TestAddPodRecordsAttachment(t *testing.T) {
	podA := netip.MustParseAddr("10.240.0.10")
	f := newFabric(t, map[string][]netip.Addr{"node0": {podA}})
	ctx := context.Background()
	nodeNS := f.NodeNSPath("node0")
	n := openNode(t, nodeNS, t.TempDir())
	if _, err := n.EnsureNode(ctx, nodeConfig()); err != nil {
		t.Fatal(err)
	}
	const nic = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/networkInterfaces/node0-nic"
	cfg := PodConfig{
		ContainerID: f.prefix + "-pa", IfName: "eth0", NetNS: nstest.NewNS(t, f.prefix+"-pa"),
		IP: podA, Subnet: subnet, Gateway: gatewayIP, Interface: nic,
	}
	res, err := n.AddPod(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	want := linux.WitnessPod{HostVeth: res.HostVeth.Name, Record: linux.PodRecord{
		IP: podA, MAC: res.PodIf.MAC, ContainerID: cfg.ContainerID, IfName: "eth0", Interface: linux.InterfaceTag(nic),
	}}
	check := func(when string) {
		t.Helper()
		w, err := linux.ReadWitness(nodeNS)
		if err != nil {
			t.Fatal(err)
		}
		if d := cmp.Diff([]linux.WitnessPod{want}, w.Pods, cmpAddrs...); d != "" {
			t.Errorf("witness %s (-want +got):\n%s", when, d)
		}
	}
	check("after ADD")

	nl := nstest.Netlink(t, nodeNS)
	host, err := nl.LinkByName(res.HostVeth.Name)
	if err != nil {
		t.Fatal(err)
	}
	if err := nl.LinkSetAlias(host, linux.PodAlias(podA, res.PodIf.MAC)); err != nil {
		t.Fatal(err)
	}
	if _, err := n.AddPod(ctx, cfg); err != nil {
		t.Fatalf("re-add over an earlier plugin's veth: %v", err)
	}
	check("after re-adding over an earlier plugin's veth")
}
