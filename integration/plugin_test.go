package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"

	"github.com/vnet-cni/vnet-cni/bridge/azure0"
	"github.com/vnet-cni/vnet-cni/bridge/linux"
	"github.com/vnet-cni/vnet-cni/cloud/sim"
	"github.com/vnet-cni/vnet-cni/integration/cluster"
	"github.com/vnet-cni/vnet-cni/internal/nsnet"
	"github.com/vnet-cni/vnet-cni/internal/nstest"
	"github.com/vnet-cni/vnet-cni/ipamd/api"
	"github.com/vnet-cni/vnet-cni/ipamd/config"
)

// startCluster runs a simulated cloud with the given number of nodes and a
// vnet-ipamd on each, all removed when the test ends (and checked to be).
func startCluster(t *testing.T, nodes int, tune func(c *config.Config)) (sim.Description, *cluster.Cluster) {
	t.Helper()
	ctx := context.Background()
	prefix := nstest.Prefix(t)
	t.Cleanup(func() {
		left, _ := filepath.Glob(filepath.Join(nsnet.NSDir, prefix+"*"))
		if len(left) > 0 {
			t.Errorf("namespaces left behind: %v", left)
		}
	})
	s, err := sim.Start(ctx, sim.Options{Nodes: nodes, Prefix: prefix, Dir: t.TempDir(),
		OperationDuration: 100 * time.Millisecond, PollInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close sim: %v", err)
		}
	})
	c, err := cluster.New(s.Description(), cluster.Options{Dir: t.TempDir(), BinDir: "../bin",
		IPAMD: func(_ string, cfg *config.Config) {
			cfg.Cooldown = config.Duration(500 * time.Millisecond)
			// These tests are about the plugin's own node set-up (the
			// bridge it creates, the conflists it is given); the e2e
			// tests run the daemon-kept node.
			cfg.NodeSetup = config.NodeSetupPlugin
			if tune != nil {
				tune(cfg)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("close cluster: %v", err)
		}
	})
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return s.Description(), c
}

// addPod creates a pod sandbox on the node and runs ADD through libcni.
func addPod(t *testing.T, n *cluster.Node, name string, ports ...cluster.PortMapping) *cluster.Pod {
	t.Helper()
	p, err := n.NewPod("default", name)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.Add(context.Background(), p, ports...); err != nil {
		t.Fatalf("ADD %s on %s: %v", name, n.Name, err)
	}
	return p
}

// delPod runs DEL through libcni and removes the sandbox.
func delPod(t *testing.T, p *cluster.Pod, ports ...cluster.PortMapping) {
	t.Helper()
	if err := p.Node.Del(context.Background(), p, ports...); err != nil {
		t.Errorf("DEL %s: %v", p.Name, err)
	}
	if err := p.Remove(); err != nil {
		t.Errorf("remove sandbox %s: %v", p.Name, err)
	}
}

// TestPlugin drives the real vnet-cni binary, chained with Debian's portmap
// through libcni, against real vnet-ipamd daemons on a two-node simulated
// VNet whose fabric enforces Azure's rules. One cluster serves every subtest.
func TestPlugin(t *testing.T) {
	nstest.RequireRoot(t)
	desc, c := startCluster(t, 2, nil)
	n0, n1 := c.Nodes[0], c.Nodes[1]
	ctx := context.Background()
	subnet := netip.MustParsePrefix(desc.SubnetPrefix)
	gateway := netip.MustParseAddr(desc.Gateway)

	t.Run("connectivity", func(t *testing.T) {
		a := addPod(t, n0, "conn-a")
		b := addPod(t, n0, "conn-b")
		p := addPod(t, n1, "conn-p")
		defer delPod(t, a)
		defer delPod(t, b)
		defer delPod(t, p)
		n0IP, n1IP := netip.MustParseAddr(n0.PrimaryIP), netip.MustParseAddr(n1.PrimaryIP)
		inet := netip.MustParseAddr(desc.InternetHost)
		for _, pod := range []*cluster.Pod{a, b, p} {
			if !subnet.Contains(pod.IP) {
				t.Fatalf("pod %s got %s, outside the subnet %s", pod.Name, pod.IP, subnet)
			}
		}
		toB := listenRemote(t, b.NSPath, netip.AddrPortFrom(b.IP, 80))
		toP := listenRemote(t, p.NSPath, netip.AddrPortFrom(p.IP, 80))
		toA := listenRemote(t, a.NSPath, netip.AddrPortFrom(a.IP, 80))
		toN0 := listenRemote(t, n0.NSPath, netip.AddrPortFrom(n0IP, 8081))
		toN1 := listenRemote(t, n1.NSPath, netip.AddrPortFrom(n1IP, 8081))
		toInet := listenRemote(t, desc.InternetNetns, netip.AddrPortFrom(inet, 8082))
		for _, tc := range []struct {
			name    string
			from    string
			to      netip.AddrPort
			wantSrc netip.Addr
		}{
			{"pod to pod on one node", a.NSPath, toB, a.IP},
			{"pod to pod across nodes", a.NSPath, toP, a.IP},
			{"pod to pod across nodes, back", p.NSPath, toA, p.IP},
			{"pod to its node", a.NSPath, toN0, a.IP},
			{"pod to the other node", a.NSPath, toN1, a.IP},
			{"node to its pod", n0.NSPath, toA, n0IP},
			{"other node to pod", n1.NSPath, toA, n1IP},
			// The fabric lets only primaries out: the SNAT must happen.
			{"pod to internet via snat", a.NSPath, toInet, n0IP},
			{"pod on the other node to internet via snat", p.NSPath, toInet, n1IP},
		} {
			t.Run(tc.name, func(t *testing.T) {
				got, err := seenFrom(ctx, tc.from, tc.to)
				if err != nil {
					t.Fatal(err)
				}
				if got != tc.wantSrc {
					t.Errorf("%s seen from %s, want %s", tc.to, got, tc.wantSrc)
				}
			})
		}
	})

	t.Run("snat exclusions", func(t *testing.T) {
		n0IP := netip.MustParseAddr(n0.PrimaryIP)
		inet := netip.MustParseAddr(desc.InternetHost)
		toInet := listenRemote(t, desc.InternetNetns, netip.AddrPortFrom(inet, 8083))
		a := addPod(t, n0, "snat-a")
		defer delPod(t, a)
		if got, err := seenFrom(ctx, a.NSPath, toInet); err != nil || got != n0IP {
			t.Fatalf("pod to internet: seen as %s, %v; want %s", got, err, n0IP)
		}
		// An ADD whose configuration also excludes the internet range
		// reconciles the node's SNAT: the fabric then drops pod traffic.
		excl := append(slices.Clone(desc.VNetPrefixes), netip.PrefixFrom(inet, 24).Masked().String())
		conf := pluginConf(t, n0, "1.0.0", map[string]any{"snatExclusions": excl})
		b, err := n0.NewPod("default", "snat-b")
		if err != nil {
			t.Fatal(err)
		}
		removeLater(t, b)
		env := execEnv{Command: "ADD", ContainerID: b.ContainerID, Netns: b.NSPath, IfName: "eth0", Args: k8sArgs(b)}
		if _, e := execPlugin(t, n0, env, conf); e != nil {
			t.Fatalf("ADD with exclusions: %v", e)
		}
		if got, err := nsnet.DialTCP(ctx, a.NSPath, netip.Addr{}, toInet, time.Second); err == nil {
			t.Errorf("pod reached the internet with it excluded from snat (%s)", got)
		}
		env.Command = "DEL"
		if _, e := execPlugin(t, n0, env, conf); e != nil {
			t.Fatalf("DEL with exclusions: %v", e)
		}
		// The next ADD with the daemon's configuration restores it.
		c := addPod(t, n0, "snat-c")
		defer delPod(t, c)
		if got, err := seenFrom(ctx, a.NSPath, toInet); err != nil || got != n0IP {
			t.Errorf("pod to internet after the default configuration returned: seen as %s, %v; want %s", got, err, n0IP)
		}
	})

	t.Run("reused address reachable at once", func(t *testing.T) {
		y := addPod(t, n0, "reuse-y")
		defer delPod(t, y)
		// Every address the next ADD can get had an earlier owner on this
		// node, whose MAC the node and pod y still remember. A pod's MAC is
		// derived from its address, so what they remember is the earlier
		// owner's MAC for that address, and stays right for the new pod.
		nl := nodeLinks(t, n0)
		br, err := nl.LinkByName(azure0.DefaultBridgeName)
		if err != nil {
			t.Fatal(err)
		}
		var reusable []netip.Addr
		for _, r := range addresses(t, n0) {
			if r.State == "free" || r.State == "cooling" {
				reusable = append(reusable, r.IP)
			}
		}
		stale := func(nl *netlink.Handle, index int) error {
			for _, ip := range reusable {
				if err := nl.NeighSet(&netlink.Neigh{LinkIndex: index, Family: netlink.FAMILY_V4, State: netlink.NUD_STALE,
					IP: ip.AsSlice(), HardwareAddr: linux.PodMAC(ip)}); err != nil {
					return err
				}
			}
			return nil
		}
		if err := stale(nl, br.Attrs().Index); err != nil {
			t.Fatal(err)
		}
		inPod(t, y, func(nl *netlink.Handle, l netlink.Link) error { return stale(nl, l.Attrs().Index) })

		x := addPod(t, n0, "reuse-x")
		defer delPod(t, x)
		if !slices.Contains(reusable, x.IP) {
			t.Fatalf("%s got %s, not one of the seeded %v", x.Name, x.IP, reusable)
		}
		xl, _, _ := podSide(t, x)
		neighs, err := nl.NeighList(br.Attrs().Index, netlink.FAMILY_V4)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range neighs {
			if n.IP.Equal(x.IP.AsSlice()) && n.HardwareAddr.String() != xl.Attrs().HardwareAddr.String() {
				t.Errorf("the node still maps %s to %s after ADD, the pod's MAC is %s", x.IP, n.HardwareAddr, xl.Attrs().HardwareAddr)
			}
		}
		toX := listenRemote(t, x.NSPath, netip.AddrPortFrom(x.IP, 80))
		if got, err := seenFrom(ctx, n0.NSPath, toX); err != nil || got != netip.MustParseAddr(n0.PrimaryIP) {
			t.Errorf("node -> pod on a reused address: seen as %s, %v", got, err)
		}
		if got, err := seenFrom(ctx, y.NSPath, toX); err != nil || got != y.IP {
			t.Errorf("pod -> pod on a reused address: seen as %s, %v", got, err)
		}
	})

	t.Run("version", func(t *testing.T) {
		pod, err := n0.NewPod("default", "version")
		if err != nil {
			t.Fatal(err)
		}
		removeLater(t, pod)
		out, cerr := execPlugin(t, n0, execEnv{Command: "VERSION"}, nil)
		if cerr != nil {
			t.Fatalf("VERSION: %v", cerr)
		}
		var vi struct {
			Supported []string `json:"supportedVersions"`
		}
		if err := json.Unmarshal(out, &vi); err != nil {
			t.Fatalf("VERSION printed %q: %v", out, err)
		}
		for _, v := range []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
			if !slices.Contains(vi.Supported, v) {
				t.Errorf("VERSION lists %v, without %s", vi.Supported, v)
			}
		}
	})

	for _, v := range []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		t.Run("verbs at "+v, func(t *testing.T) {
			pod, err := n0.NewPod("default", "v"+strings.ReplaceAll(v, ".", ""))
			if err != nil {
				t.Fatal(err)
			}
			removeLater(t, pod)
			list, err := n0.PluginOnlyList(v)
			if err != nil {
				t.Fatal(err)
			}
			rt := pod.RuntimeConf()
			var r types.Result
			if err := n0.InNode(func() error {
				var err error
				r, err = n0.CNI().AddNetworkList(ctx, list, rt)
				return err
			}); err != nil {
				t.Fatalf("ADD: %v", err)
			}
			if r.Version() != v {
				t.Errorf("result version %s, want %s", r.Version(), v)
			}
			raw, err := json.Marshal(r)
			if err != nil {
				t.Fatal(err)
			}
			var head struct {
				CNIVersion string `json:"cniVersion"`
			}
			if err := json.Unmarshal(raw, &head); err != nil || head.CNIVersion != v {
				t.Errorf("printed result %s: cniVersion %q, want %q", raw, head.CNIVersion, v)
			}
			res, err := current.NewResultFromResult(r)
			if err != nil {
				t.Fatal(err)
			}
			a := assignment(t, n0, pod.ContainerID, pod.IfName)
			if a == nil {
				t.Fatal("ipamd holds no address after ADD")
			}

			// The result must describe what the kernel really has.
			hostName := linux.HostVethName(pod.ContainerID, pod.IfName)
			host, err := nodeLinks(t, n0).LinkByName(hostName)
			if err != nil {
				t.Fatalf("host veth: %v", err)
			}
			podLink, addrs, routes := podSide(t, pod)
			idx := 1
			want := &current.Result{
				CNIVersion: current.ImplementedSpecVersion,
				Interfaces: []*current.Interface{
					{Name: hostName, Mac: host.Attrs().HardwareAddr.String()},
					{Name: "eth0", Mac: podLink.Attrs().HardwareAddr.String(), Sandbox: pod.NSPath},
				},
				IPs: []*current.IPConfig{{
					Interface: &idx,
					Address:   net.IPNet{IP: a.IP.AsSlice(), Mask: net.CIDRMask(subnet.Bits(), 32)},
					Gateway:   subnet.Masked().Addr().Next().AsSlice(),
				}},
				Routes: []*types.Route{{Dst: net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, GW: gateway.AsSlice()}},
			}
			if diff := cmp.Diff(want, res); diff != "" {
				t.Errorf("ADD result (-want +got):\n%s", diff)
			}
			if g := subnet.Masked().Addr().Next(); g != gateway {
				t.Errorf("the sim's gateway %s is not the subnet's first address %s", gateway, g)
			}
			if wantAddr := netip.PrefixFrom(a.IP, subnet.Bits()); !slices.Contains(addrs, wantAddr) {
				t.Errorf("pod eth0 has %v, want %s", addrs, wantAddr)
			}
			if !slices.Contains(routes, "0.0.0.0/0 via "+gateway.String()) {
				t.Errorf("pod routes %v, want a default route via %s", routes, gateway)
			}

			if v != "0.3.1" { // CHECK exists since 0.4.0
				if err := n0.InNode(func() error { return n0.CNI().CheckNetworkList(ctx, list, rt) }); err != nil {
					t.Errorf("CHECK after ADD: %v", err)
				}
			}
			if err := n0.InNode(func() error { return n0.CNI().DelNetworkList(ctx, list, rt) }); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			if hostVeth(t, n0, pod.ContainerID, pod.IfName) {
				t.Error("host veth left after DEL")
			}
			if a := assignment(t, n0, pod.ContainerID, pod.IfName); a != nil {
				t.Errorf("ipamd still assigns %s after DEL", a.IP)
			}
		})
	}

	t.Run("check detects drift", func(t *testing.T) {
		for _, tc := range []struct {
			name  string
			drift func(t *testing.T, p *cluster.Pod)
			want  string
		}{
			{"default route deleted", func(t *testing.T, p *cluster.Pod) {
				inPod(t, p, func(nl *netlink.Handle, l netlink.Link) error {
					return nl.RouteDel(&netlink.Route{LinkIndex: l.Attrs().Index,
						Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, Gw: gateway.AsSlice()})
				})
			}, "no default route"},
			{"address deleted", func(t *testing.T, p *cluster.Pod) {
				inPod(t, p, func(nl *netlink.Handle, l netlink.Link) error {
					return nl.AddrDel(l, &netlink.Addr{IPNet: &net.IPNet{IP: p.IP.AsSlice(), Mask: net.CIDRMask(subnet.Bits(), 32)}})
				})
			}, "has addresses"},
			{"released in ipamd", func(t *testing.T, p *cluster.Pod) {
				cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				defer cancel()
				if _, err := p.Node.Client().Release(cctx, api.ReleaseRequest{ContainerID: p.ContainerID, IfName: p.IfName}); err != nil {
					t.Fatal(err)
				}
			}, "holds no address"},
			{"host veth off the bridge", func(t *testing.T, p *cluster.Pod) {
				nl := nodeLinks(t, p.Node)
				l, err := nl.LinkByName(linux.HostVethName(p.ContainerID, p.IfName))
				if err == nil {
					err = nl.LinkSetNoMaster(l)
				}
				if err != nil {
					t.Fatal(err)
				}
			}, "is not a port of azure0"},
			{"pod interface down", func(t *testing.T, p *cluster.Pod) {
				inPod(t, p, func(nl *netlink.Handle, l netlink.Link) error { return nl.LinkSetDown(l) })
			}, "is down"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				p := addPod(t, n0, "chk")
				defer delPod(t, p)
				if err := n0.Check(ctx, p); err != nil {
					t.Fatalf("CHECK right after ADD: %v", err)
				}
				tc.drift(t, p)
				err := n0.Check(ctx, p)
				if err == nil && tc.name == "released in ipamd" {
					// The daemon's witness rule got there first: once the
					// released address cools down, the pod's live veth
					// claims it back (an address a live pod holds is never
					// free), and there is no drift left to report.
					if a := assignment(t, n0, p.ContainerID, p.IfName); a == nil || a.IP != p.IP {
						t.Errorf("CHECK passed after the release but the daemon's assignment is %+v, want %s", a, p.IP)
					}
					return
				}
				e := cniError(t, err)
				if !strings.Contains(e.Msg, "drift") || !strings.Contains(e.Details, tc.want) {
					t.Errorf("CHECK after drift: code %d %q (%q), want a drift error naming %q", e.Code, e.Msg, e.Details, tc.want)
				}
			})
		}
	})

	t.Run("del twice", func(t *testing.T) {
		p := addPod(t, n0, "deltwice")
		removeLater(t, p)
		mac := registeredMAC(t, n0, p.IP)
		if mac == nil {
			t.Fatal("pod not registered in the bridge table after ADD")
		}
		for i := range 2 {
			if err := n0.Del(ctx, p); err != nil {
				t.Fatalf("DEL #%d: %v", i+1, err)
			}
		}
		if hostVeth(t, n0, p.ContainerID, p.IfName) {
			t.Error("host veth left")
		}
		if a := assignment(t, n0, p.ContainerID, p.IfName); a != nil {
			t.Errorf("ipamd still assigns %s", a.IP)
		}
		if mac := registeredMAC(t, n0, p.IP); mac != nil {
			t.Errorf("bridge table still maps %s to %s", p.IP, mac)
		}
		// An attachment that never was, in a sandbox that never was.
		stranger := &cluster.Pod{Node: n0, Namespace: "default", Name: "stranger", IfName: "eth0",
			ContainerID: strings.Repeat("5", 64), NSPath: p.NSPath + "-never"}
		if err := n0.Del(ctx, stranger); err != nil {
			t.Errorf("DEL of an unknown attachment: %v", err)
		}
	})

	t.Run("del without netns", func(t *testing.T) {
		gone := func(p *cluster.Pod) string {
			if err := p.Remove(); err != nil {
				t.Fatal(err)
			}
			// The kernel destroys the veth with the namespace, and with it
			// what the host end recorded: DEL must do without it.
			if err := nsnet.Eventually(5*time.Second, func() error {
				if hostVeth(t, n0, p.ContainerID, p.IfName) {
					return errors.New("host veth still there after the netns was deleted")
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			return p.NSPath
		}
		for _, tc := range []struct {
			name string
			// version selects a vnet-cni-only list at that version; ""
			// is the daemon's chained conflist.
			version string
			netns   func(p *cluster.Pod) string
		}{
			// The sandbox still exists: only DEL can have removed the veth.
			{"empty CNI_NETNS", "", func(*cluster.Pod) string { return "" }},
			{"netns deleted", "", gone},
			// Before 0.4.0 DEL gets no prevResult: the address is known
			// only to ipamd.
			{"netns deleted, 0.3.1 without prevResult", "0.3.1", gone},
		} {
			t.Run(tc.name, func(t *testing.T) {
				list, err := n0.Conflist()
				if tc.version != "" {
					list, err = n0.PluginOnlyList(tc.version)
				}
				if err != nil {
					t.Fatal(err)
				}
				p, err := n0.NewPod("default", "delnons")
				if err != nil {
					t.Fatal(err)
				}
				removeLater(t, p)
				if _, err := n0.AddWithList(ctx, list, p); err != nil {
					t.Fatalf("ADD: %v", err)
				}
				ip := p.IP
				if registeredMAC(t, n0, ip) == nil {
					t.Fatalf("%s not in the bridge table after ADD", ip)
				}
				rt := p.RuntimeConf()
				rt.NetNS = tc.netns(p)
				if err := n0.InNode(func() error { return n0.CNI().DelNetworkList(ctx, list, rt) }); err != nil {
					t.Fatalf("DEL: %v", err)
				}
				if hostVeth(t, n0, p.ContainerID, p.IfName) {
					t.Error("host veth left after DEL")
				}
				if a := assignment(t, n0, p.ContainerID, p.IfName); a != nil {
					t.Errorf("ipamd still assigns %s", a.IP)
				}
				// A stale entry would keep answering ARP for the address on
				// this node after it moved to another one.
				if mac := registeredMAC(t, n0, ip); mac != nil {
					t.Errorf("bridge table still maps %s to %s", ip, mac)
				}
			})
		}
	})

	t.Run("gc", func(t *testing.T) {
		keep := addPod(t, n0, "gc-keep")
		defer delPod(t, keep)
		gone := []*cluster.Pod{addPod(t, n0, "gc-gone1"), addPod(t, n0, "gc-gone2")}
		for _, p := range gone {
			removeLater(t, p)
		}
		// An ADD that was killed after creating its veth pair and before it
		// took an address: a veth without an assignment.
		stray, err := n0.NewPod("default", "gc-stray")
		if err != nil {
			t.Fatal(err)
		}
		removeLater(t, stray)
		if ok, err := linux.PrepareVeth(n0.NSPath, linux.VethRequest{ContainerID: stray.ContainerID, IfName: "eth0", NetNS: stray.NSPath, Master: azure0.DefaultBridgeName}); err != nil || !ok {
			t.Fatalf("prepare a stray veth: %v, %v", ok, err)
		}
		isGone := func(id string) bool {
			return slices.ContainsFunc(gone, func(p *cluster.Pod) bool { return p.ContainerID == id })
		}
		// Every other attachment of the node is valid, as the runtime says.
		var valid []*cluster.Pod
		wantAssigned := map[string]string{}
		for _, r := range addresses(t, n0) {
			if r.State != "assigned" {
				continue
			}
			if !isGone(r.ContainerID) {
				valid = append(valid, &cluster.Pod{ContainerID: r.ContainerID, IfName: r.IfName})
				wantAssigned[r.ContainerID] = r.IP.String()
			}
		}
		if _, ok := wantAssigned[keep.ContainerID]; !ok {
			t.Fatalf("ipamd does not list %s as assigned", keep.Name)
		}
		if err := n0.GC(ctx, valid); err != nil {
			t.Fatalf("GC: %v", err)
		}
		gotAssigned := map[string]string{}
		for _, r := range addresses(t, n0) {
			if r.State == "assigned" {
				gotAssigned[r.ContainerID] = r.IP.String()
			}
		}
		if diff := cmp.Diff(wantAssigned, gotAssigned); diff != "" {
			t.Errorf("assignments after GC (-want +got):\n%s", diff)
		}
		for _, p := range gone {
			if hostVeth(t, n0, p.ContainerID, p.IfName) {
				t.Errorf("GC left the host veth of %s", p.Name)
			}
			if mac := registeredMAC(t, n0, p.IP); mac != nil {
				t.Errorf("GC left %s of %s in the bridge table", p.IP, p.Name)
			}
		}
		if hostVeth(t, n0, stray.ContainerID, "eth0") {
			t.Error("GC left the veth of an attachment without an address")
		}
		if !hostVeth(t, n0, keep.ContainerID, keep.IfName) {
			t.Error("GC removed the host veth of a valid pod")
		}
		if err := n0.Check(ctx, keep); err != nil {
			t.Errorf("CHECK of the valid pod after GC: %v", err)
		}
	})

	t.Run("bad config and environment", func(t *testing.T) {
		pod, err := n0.NewPod("default", "bad")
		if err != nil {
			t.Fatal(err)
		}
		removeLater(t, pod)
		// A sandbox that already has an eth0: ADD fails after the address
		// was taken, and must give it back.
		busy, err := n0.NewPod("default", "busy")
		if err != nil {
			t.Fatal(err)
		}
		removeLater(t, busy)
		inPodNS(t, busy, func(nl *netlink.Handle) error {
			return nl.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}})
		})
		regular := filepath.Join(t.TempDir(), "not-a-netns")
		if err := os.WriteFile(regular, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		good := execEnv{Command: "ADD", ContainerID: pod.ContainerID, Netns: pod.NSPath, IfName: "eth0", Args: k8sArgs(pod)}
		with := func(f func(e *execEnv)) execEnv {
			e := good
			f(&e)
			return e
		}
		conf := func(set map[string]any) []byte { return pluginConf(t, n0, "1.0.0", set) }
		for _, tc := range []struct {
			name     string
			env      execEnv
			stdin    []byte
			wantCode uint
			wantText string // in msg or details
			// rolledBack: the address was taken, then released.
			rolledBack bool
		}{
			{name: "interface exists in the sandbox", env: with(func(e *execEnv) {
				e.ContainerID, e.Netns, e.Args = busy.ContainerID, busy.NSPath, k8sArgs(busy)
			}), stdin: conf(nil), wantCode: types.ErrInternal, wantText: "conflicting interface", rolledBack: true},
			{name: "bridge is not a bridge", env: good, stdin: conf(map[string]any{"bridge": "lo"}),
				wantCode: types.ErrInternal, wantText: "not a bridge", rolledBack: true},
			{"missing CNI_CONTAINERID", with(func(e *execEnv) { e.Unset = []string{"CNI_CONTAINERID"} }), conf(nil), types.ErrInvalidEnvironmentVariables, "CNI_CONTAINERID", false},
			{"missing CNI_NETNS on ADD", with(func(e *execEnv) { e.Unset = []string{"CNI_NETNS"} }), conf(nil), types.ErrInvalidEnvironmentVariables, "CNI_NETNS", false},
			{"CNI_NETNS missing path", with(func(e *execEnv) { e.Netns = pod.NSPath + "-missing" }), conf(nil), types.ErrInvalidEnvironmentVariables, "CNI_NETNS", false},
			{"CNI_NETNS regular file", with(func(e *execEnv) { e.Netns = regular }), conf(nil), types.ErrInvalidEnvironmentVariables, "CNI_NETNS", false},
			{"CNI_IFNAME too long", with(func(e *execEnv) { e.IfName = "eth0123456789abcdef" }), conf(nil), types.ErrInvalidEnvironmentVariables, "interface name", false},
			{"CNI_ARGS malformed", with(func(e *execEnv) { e.Args = "K8S_POD_NAME" }), conf(nil), types.ErrInvalidEnvironmentVariables, "CNI_ARGS", false},
			{"stdin not json", good, []byte(`{"cniVersion": "1.0.0", "name": `), types.ErrDecodingFailure, "unmarshal", false},
			{"field of the wrong type", good, conf(map[string]any{"mtu": "big"}), types.ErrDecodingFailure, "decode", false},
			{"unsupported cniVersion", good, conf(map[string]any{"cniVersion": "9.9.9"}), types.ErrIncompatibleCNIVersion, "9.9.9", false},
			{"missing name", good, conf(map[string]any{"name": nil}), types.ErrInvalidNetworkConfig, "name", false},
			{"mode", good, conf(map[string]any{"mode": "transparent"}), types.ErrInvalidNetworkConfig, "mode", false},
			{"mtu", good, conf(map[string]any{"mtu": 100}), types.ErrInvalidNetworkConfig, "mtu", false},
			{"bridge name", good, conf(map[string]any{"bridge": "a-bridge-name-too-long"}), types.ErrInvalidNetworkConfig, "bridge", false},
			{"master", good, conf(map[string]any{"master": "eth/0"}), types.ErrInvalidNetworkConfig, "master", false},
			{"snatExclusions", good, conf(map[string]any{"snatExclusions": []string{"10.0.0.0/33"}}), types.ErrInvalidNetworkConfig, "snatExclusions", false},
			{"ipamdSocket", good, conf(map[string]any{"ipamdSocket": "ipamd.sock"}), types.ErrInvalidNetworkConfig, "ipamdSocket", false},
			{"ipamdTimeout", good, conf(map[string]any{"ipamdTimeout": "forever"}), types.ErrInvalidNetworkConfig, "ipamdTimeout", false},
			{"logLevel", good, conf(map[string]any{"logLevel": "loud"}), types.ErrInvalidNetworkConfig, "logLevel", false},
			{"releaseSpool", good, conf(map[string]any{"releaseSpool": "spool"}), types.ErrInvalidNetworkConfig, "releaseSpool", false},
		} {
			t.Run(tc.name, func(t *testing.T) {
				before := assignedSet(t, n0)
				veths := vethCount(t, n0)
				_, e := execPlugin(t, n0, tc.env, tc.stdin)
				if e == nil {
					t.Fatal("ADD succeeded")
				}
				if e.Code != tc.wantCode || !strings.Contains(e.Msg+" "+e.Details, tc.wantText) {
					t.Errorf("got code %d %q (%q), want code %d naming %q", e.Code, e.Msg, e.Details, tc.wantCode, tc.wantText)
				}
				if diff := cmp.Diff(before, assignedSet(t, n0)); diff != "" {
					t.Errorf("a failed ADD changed ipamd's assignments (-before +after):\n%s", diff)
				}
				if got := vethCount(t, n0); got != veths {
					t.Errorf("a failed ADD left %d veths, %d before", got, veths)
				}
				if tc.rolledBack {
					st := ""
					for _, r := range addresses(t, n0) {
						if r.ContainerID == tc.env.ContainerID {
							st = r.State
						}
					}
					if st != "cooling" {
						t.Errorf("the address of the failed ADD is %q, want cooling (taken, then released)", st)
					}
				}
			})
		}
	})

	t.Run("one log line per call", func(t *testing.T) {
		p, err := n0.NewPod("default", "logged")
		if err != nil {
			t.Fatal(err)
		}
		removeLater(t, p)
		logFile := filepath.Join(t.TempDir(), "vnet-cni.log")
		conf := pluginConf(t, n0, "1.0.0", map[string]any{"logFile": logFile})
		env := execEnv{Command: "ADD", ContainerID: p.ContainerID, Netns: p.NSPath, IfName: "eth0", Args: k8sArgs(p)}
		out, e := execPlugin(t, n0, env, conf)
		if e != nil {
			t.Fatalf("ADD: %v", e)
		}
		var res current.Result
		if err := json.Unmarshal(out, &res); err != nil || len(res.IPs) == 0 {
			t.Fatalf("ADD printed %q: %v", out, err)
		}
		env.Command = "DEL"
		if _, e := execPlugin(t, n0, env, conf); e != nil {
			t.Fatalf("DEL: %v", e)
		}
		data, err := os.ReadFile(logFile)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(string(data)), "\n")
		if len(lines) != 2 {
			t.Fatalf("%d log lines for ADD and DEL, want 2:\n%s", len(lines), data)
		}
		for i, verb := range []string{"ADD", "DEL"} {
			var l map[string]any
			if err := json.Unmarshal([]byte(lines[i]), &l); err != nil {
				t.Fatalf("log line %q: %v", lines[i], err)
			}
			for k, want := range map[string]any{"verb": verb, "containerID": p.ContainerID, "ip": res.IPs[0].Address.IP.String(), "result": "ok"} {
				if l[k] != want {
					t.Errorf("%s log line: %s=%v, want %v (%s)", verb, k, l[k], want, lines[i])
				}
			}
			if _, ok := l["durationMs"].(float64); !ok {
				t.Errorf("%s log line without durationMs: %s", verb, lines[i])
			}
		}
		var add map[string]any
		_ = json.Unmarshal([]byte(lines[0]), &add)
		if add["pod"] != "default/logged" {
			t.Errorf("ADD log line: pod=%v, want default/logged", add["pod"])
		}
	})

	t.Run("del with ipamd hung", func(t *testing.T) {
		p := addPod(t, n0, "hung")
		removeLater(t, p)
		pid := n0.PID()
		if pid <= 0 {
			t.Fatal("vnet-ipamd of node0 is not running")
		}
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		resumed := false
		resume := func() {
			if !resumed {
				resumed = true
				if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
					t.Error(err)
				}
			}
		}
		defer resume()
		start := time.Now()
		if err := n0.Del(ctx, p); err != nil {
			t.Fatalf("DEL with ipamd hung: %v", err)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("DEL with ipamd hung took %s", d)
		}
		if hostVeth(t, n0, p.ContainerID, p.IfName) {
			t.Error("DEL with ipamd hung left the host veth")
		}
		resume()
		if err := nsnet.Eventually(10*time.Second, func() error {
			if a := assignment(t, n0, p.ContainerID, p.IfName); a != nil {
				return fmt.Errorf("ipamd still assigns %s to the deleted pod", a.IP)
			}
			return nil
		}); err != nil {
			t.Error(err)
		}
	})

	t.Run("portmap chained", func(t *testing.T) {
		n0IP, n1IP := netip.MustParseAddr(n0.PrimaryIP), netip.MustParseAddr(n1.PrimaryIP)
		for _, tc := range []struct {
			name string
			snat bool
			// wantSrc is what the pod sees: with snat, portmap masquerades
			// sources inside the pod's subnet (its hairpin rule), and the
			// pods' subnet is the VNet's, so node1 is masqueraded too.
			// Without, the client's address survives, and the reply, bridged
			// straight to the fabric, must still be un-DNATed by the node.
			wantSrc netip.Addr
		}{
			{"daemon's conflist (snat)", true, n0IP},
			{"without snat", false, n1IP},
		} {
			t.Run(tc.name, func(t *testing.T) {
				list := portmapList(t, n0, tc.snat)
				// A node where br_netfilter is off: ADD must turn it on.
				nfCall := "/proc/sys/net/bridge/bridge-nf-call-iptables"
				if err := n0.InNode(func() error { return os.WriteFile(nfCall, []byte("0"), 0o644) }); err != nil {
					t.Fatalf("br_netfilter needed for this test: %v", err)
				}
				ports := []cluster.PortMapping{{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"}}
				p, err := n0.NewPod("default", "web")
				if err != nil {
					t.Fatal(err)
				}
				removeLater(t, p)
				if _, err := n0.AddWithList(ctx, list, p, ports...); err != nil {
					t.Fatalf("ADD: %v", err)
				}
				ip := p.IP
				var nf []byte
				if err := n0.InNode(func() (err error) { nf, err = os.ReadFile(nfCall); return err }); err != nil || strings.TrimSpace(string(nf)) != "1" {
					t.Errorf("bridge-nf-call-iptables after ADD: %q, %v; want 1", nf, err)
				}
				listenRemote(t, p.NSPath, netip.AddrPortFrom(ip, 80))
				hostPort := netip.AddrPortFrom(n0IP, 8080)
				got, err := seenFrom(ctx, n1.NSPath, hostPort)
				if err != nil {
					t.Errorf("node1 -> node0 hostPort: %v", err)
				} else if got != tc.wantSrc {
					t.Errorf("the pod saw %s, want %s", got, tc.wantSrc)
				}
				if err := n0.InNode(func() error { return n0.CNI().DelNetworkList(ctx, list, p.RuntimeConf(ports...)) }); err != nil {
					t.Fatalf("DEL: %v", err)
				}
				if _, err := seenFrom(ctx, n1.NSPath, hostPort); err == nil {
					t.Error("the hostPort still answers after DEL")
				}
			})
		}
	})

	// Last: it stops and restarts node1's daemon.
	t.Run("ipamd stopped", func(t *testing.T) {
		if err := n1.PluginStatus(ctx); err != nil {
			t.Fatalf("STATUS with ipamd ready: %v", err)
		}
		old := addPod(t, n1, "old")
		removeLater(t, old)
		late, err := n1.NewPod("default", "late")
		if err != nil {
			t.Fatal(err)
		}
		removeLater(t, late)
		if err := n1.StopIPAMD(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		restarted := false
		defer func() {
			if !restarted {
				if err := n1.StartIPAMD(); err != nil {
					t.Error(err)
				}
			}
		}()

		if e := cniError(t, n1.PluginStatus(ctx)); e.Code != types.ErrPluginNotAvailable {
			t.Errorf("STATUS with ipamd stopped: code %d %q, want %d", e.Code, e.Msg, types.ErrPluginNotAvailable)
		}
		_, e := execPlugin(t, n1, execEnv{Command: "ADD", ContainerID: late.ContainerID, Netns: late.NSPath, IfName: "eth0", Args: k8sArgs(late)},
			pluginConf(t, n1, "1.0.0", nil))
		if e == nil || e.Code != types.ErrTryAgainLater {
			t.Errorf("ADD with ipamd stopped: %v, want code %d", e, types.ErrTryAgainLater)
		}
		if hostVeth(t, n1, late.ContainerID, "eth0") {
			t.Error("the failed ADD left a host veth")
		}

		start := time.Now()
		if err := n1.Del(ctx, old); err != nil {
			t.Fatalf("DEL with ipamd stopped: %v", err)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("DEL with ipamd stopped took %s", d)
		}
		if hostVeth(t, n1, old.ContainerID, old.IfName) {
			t.Error("DEL with ipamd stopped left the host veth")
		}
		if mac := registeredMAC(t, n1, old.IP); mac != nil {
			t.Errorf("DEL with ipamd stopped left %s in the bridge table", old.IP)
		}

		if spooled, err := os.ReadDir(n1.Config.ReleaseSpool); err != nil || len(spooled) != 1 {
			t.Errorf("release spool while ipamd is away: %d files, %v; want the DEL's release", len(spooled), err)
		}

		restarted = true
		if err := n1.StartIPAMD(); err != nil {
			t.Fatal(err)
		}
		if err := n1.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
		for _, r := range addresses(t, n1) {
			if r.IP == old.IP && r.State == "assigned" {
				t.Errorf("%s is still assigned to %s/%s after ipamd returned", r.IP, r.ContainerID, r.IfName)
			}
			if r.ContainerID == late.ContainerID {
				t.Errorf("the failed ADD holds %s (%s)", r.IP, r.State)
			}
		}
		if a := assignment(t, n1, old.ContainerID, old.IfName); a != nil {
			t.Errorf("ipamd still assigns %s to the deleted pod", a.IP)
		}
		if left, _ := os.ReadDir(n1.Config.ReleaseSpool); len(left) > 0 {
			t.Errorf("release spool not drained: %d files", len(left))
		}
		if err := n1.PluginStatus(ctx); err != nil {
			t.Errorf("STATUS after ipamd returned: %v", err)
		}
	})
}

// podSide reads the pod's eth0, its IPv4 addresses and its routes ("dst via gw").
func podSide(t *testing.T, p *cluster.Pod) (netlink.Link, []netip.Prefix, []string) {
	t.Helper()
	var link netlink.Link
	var addrs []netip.Prefix
	var routes []string
	inPod(t, p, func(nl *netlink.Handle, l netlink.Link) error {
		link = l
		as, err := nl.AddrList(l, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		for _, a := range as {
			ip, _ := netip.AddrFromSlice(a.IP.To4())
			ones, _ := a.Mask.Size()
			addrs = append(addrs, netip.PrefixFrom(ip, ones))
		}
		rs, err := nl.RouteList(l, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		for _, r := range rs {
			dst := "0.0.0.0/0"
			if r.Dst != nil {
				dst = r.Dst.String()
			}
			if r.Gw != nil {
				dst += " via " + r.Gw.String()
			}
			routes = append(routes, dst)
		}
		return nil
	})
	return link, addrs, routes
}

// inPod calls fn with a netlink handle in the pod's namespace and its eth0.
func inPod(t *testing.T, p *cluster.Pod, fn func(nl *netlink.Handle, l netlink.Link) error) {
	t.Helper()
	nl := nstest.Netlink(t, p.NSPath)
	l, err := nl.LinkByName(p.IfName)
	if err != nil {
		t.Fatalf("pod %s: %v", p.Name, err)
	}
	if err := fn(nl, l); err != nil {
		t.Fatalf("pod %s: %v", p.Name, err)
	}
}

// assignedSet maps the attachments ipamd holds to their addresses.
func assignedSet(t testing.TB, n *cluster.Node) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, r := range addresses(t, n) {
		if r.State == "assigned" {
			m[r.ContainerID+"/"+r.IfName] = r.IP.String()
		}
	}
	return m
}

// portmapList is the daemon's conflist (vnet-cni, then portmap) with
// portmap's snat option set as given.
func portmapList(t *testing.T, n *cluster.Node, snat bool) *libcni.NetworkConfigList {
	t.Helper()
	data, err := os.ReadFile(n.ConflistPath())
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	plugins, _ := doc["plugins"].([]any)
	if len(plugins) != 2 {
		t.Fatalf("conflist has %d plugins, want vnet-cni and portmap", len(plugins))
	}
	pm, _ := plugins[1].(map[string]any)
	if pm["type"] != "portmap" {
		t.Fatalf("second plugin is %v, want portmap", pm["type"])
	}
	pm["snat"] = snat
	out, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	list, err := libcni.ConfListFromBytes(out)
	if err != nil {
		t.Fatal(err)
	}
	return list
}

// inPodNS calls fn with a netlink handle in the pod's namespace.
func inPodNS(t *testing.T, p *cluster.Pod, fn func(nl *netlink.Handle) error) {
	t.Helper()
	nl := nstest.Netlink(t, p.NSPath)
	if err := fn(nl); err != nil {
		t.Fatalf("pod %s: %v", p.Name, err)
	}
}
