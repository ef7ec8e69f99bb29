package fabric

import (
	"net"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var (
	mac0 = net.HardwareAddr{0x00, 0x0d, 0x3a, 0x00, 0x00, 0x01}
	mac1 = net.HardwareAddr{0x00, 0x0d, 0x3a, 0x00, 0x00, 0x02}
)

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func ip(s string) netip.Addr    { return netip.MustParseAddr(s) }

func TestDesired(t *testing.T) {
	topo := Topology{
		Prefix:       "x",
		VNetPrefixes: []netip.Prefix{pfx("10.240.0.0/16")},
		Subnet:       pfx("10.240.0.0/16"),
		Internet:     pfx("203.0.113.0/24"),
		Nodes: []Node{
			{Name: "node0", MAC: mac0, Primary: ip("10.240.0.4")},
			{Name: "node1", MAC: mac1, Primary: ip("10.240.0.5")},
		},
	}
	system := []routeSpec{
		{Dst: pfx("0.0.0.0/0"), Dev: inetLink, Via: ip("203.0.113.100")},
		{Dst: pfx("10.240.0.0/16"), Dev: sinkLink},
		{Dst: pfx("10.240.0.4/32"), Dev: "n0"},
		{Dst: pfx("10.240.0.5/32"), Dev: "n1"},
	}
	neighs := []neighSpec{
		{Dev: "n0", IP: ip("10.240.0.4"), MAC: mac0},
		{Dev: "n1", IP: ip("10.240.0.5"), MAC: mac1},
	}
	outbound := []netip.Addr{ip("10.240.0.4"), ip("10.240.0.5"), ip("203.0.113.1")}
	nft := func(ips0, ips1 []netip.Addr, fwd0, fwd1 bool) nftSpec {
		return nftSpec{
			Nodes: []nftNode{
				{Dev: "n0", MAC: mac0, IPs: ips0, IPForwarding: fwd0},
				{Dev: "n1", MAC: mac1, IPs: ips1, IPForwarding: fwd1},
			},
			Outbound: outbound,
		}
	}
	with := func(extra ...routeSpec) []routeSpec {
		out := append([]routeSpec(nil), system...)
		for _, e := range extra {
			replaced := false
			for i := range out {
				if out[i].Dst == e.Dst {
					out[i], replaced = e, true
				}
			}
			if !replaced {
				out = append(out, e)
			}
		}
		sortRoutes(out)
		return out
	}

	tests := []struct {
		name    string
		st      State
		want    plan
		wantErr bool
	}{{
		name: "empty state: primaries only",
		want: plan{Routes: with(), Neighs: neighs, NFT: nft([]netip.Addr{ip("10.240.0.4")}, []netip.Addr{ip("10.240.0.5")}, false, false)},
	}, {
		name: "secondaries routed via the primary, primary listed again is harmless",
		st: State{Nodes: []NodeState{
			{Name: "node1", IPs: []netip.Addr{ip("10.240.0.21"), ip("10.240.0.5"), ip("10.240.0.20")}},
		}},
		want: plan{
			Routes: with(
				routeSpec{Dst: pfx("10.240.0.20/32"), Dev: "n1", Via: ip("10.240.0.5"), Onlink: true},
				routeSpec{Dst: pfx("10.240.0.21/32"), Dev: "n1", Via: ip("10.240.0.5"), Onlink: true},
			),
			Neighs: neighs,
			NFT:    nft([]netip.Addr{ip("10.240.0.4")}, []netip.Addr{ip("10.240.0.5"), ip("10.240.0.20"), ip("10.240.0.21")}, false, false),
		},
	}, {
		name: "route to a forwarding appliance",
		st: State{
			Nodes:  []NodeState{{Name: "node1", IPForwarding: true}},
			Routes: []Route{{Prefix: pfx("10.244.1.0/24"), NextHop: ip("10.240.0.5")}},
		},
		want: plan{
			Routes: with(routeSpec{Dst: pfx("10.244.1.0/24"), Dev: "n1", Via: ip("10.240.0.5"), Onlink: true}),
			Neighs: neighs,
			NFT:    nft([]netip.Addr{ip("10.240.0.4")}, []netip.Addr{ip("10.240.0.5")}, false, true),
		},
	}, {
		name: "route via a secondary address goes to that nic's primary",
		st: State{
			Nodes:  []NodeState{{Name: "node0", IPs: []netip.Addr{ip("10.240.0.30")}, IPForwarding: true}},
			Routes: []Route{{Prefix: pfx("10.244.0.0/24"), NextHop: ip("10.240.0.30")}},
		},
		want: plan{
			Routes: with(
				routeSpec{Dst: pfx("10.240.0.30/32"), Dev: "n0", Via: ip("10.240.0.4"), Onlink: true},
				routeSpec{Dst: pfx("10.244.0.0/24"), Dev: "n0", Via: ip("10.240.0.4"), Onlink: true},
			),
			Neighs: neighs,
			NFT:    nft([]netip.Addr{ip("10.240.0.4"), ip("10.240.0.30")}, []netip.Addr{ip("10.240.0.5")}, true, false),
		},
	}, {
		name: "route to an appliance without ip forwarding is a blackhole",
		st:   State{Routes: []Route{{Prefix: pfx("10.244.1.0/24"), NextHop: ip("10.240.0.5")}}},
		want: plan{
			Routes: with(routeSpec{Dst: pfx("10.244.1.0/24"), Blackhole: true}),
			Neighs: neighs,
			NFT:    nft([]netip.Addr{ip("10.240.0.4")}, []netip.Addr{ip("10.240.0.5")}, false, false),
		},
	}, {
		name: "route to no nic is a blackhole; unmasked prefix is masked; udr overrides system route",
		st: State{Routes: []Route{
			{Prefix: pfx("10.244.2.7/24"), NextHop: ip("10.240.0.99")},
			{Prefix: pfx("0.0.0.0/0"), NextHop: ip("10.240.0.98")},
		}},
		want: plan{
			Routes: with(
				routeSpec{Dst: pfx("10.244.2.0/24"), Blackhole: true},
				routeSpec{Dst: pfx("0.0.0.0/0"), Blackhole: true},
			),
			Neighs: neighs,
			NFT:    nft([]netip.Addr{ip("10.240.0.4")}, []netip.Addr{ip("10.240.0.5")}, false, false),
		},
	}, {
		name: "unknown node and double claim are errors, first claim wins",
		st: State{Nodes: []NodeState{
			{Name: "ghost", IPs: []netip.Addr{ip("10.240.0.50")}},
			{Name: "node0", IPs: []netip.Addr{ip("10.240.0.60")}},
			{Name: "node1", IPs: []netip.Addr{ip("10.240.0.60"), ip("10.240.0.4"), ip("fd00::1")}},
		}},
		want: plan{
			Routes: with(routeSpec{Dst: pfx("10.240.0.60/32"), Dev: "n0", Via: ip("10.240.0.4"), Onlink: true}),
			Neighs: neighs,
			NFT:    nft([]netip.Addr{ip("10.240.0.4"), ip("10.240.0.60")}, []netip.Addr{ip("10.240.0.5")}, false, false),
		},
		wantErr: true,
	}}
	mac2 := net.HardwareAddr{0x0e, 0, 0, 0, 0, 0x02}
	mac3 := net.HardwareAddr{0x0e, 0, 0, 0, 0, 0x03}
	eniNFT := func(eth1, eth2 nftNode) nftSpec {
		return nftSpec{
			Nodes: []nftNode{
				{Dev: "n0", MAC: mac0, IPs: []netip.Addr{ip("10.240.0.4")}},
				eth1, eth2,
				{Dev: "n1", MAC: mac1, IPs: []netip.Addr{ip("10.240.0.5")}},
			},
			Outbound: outbound,
		}
	}
	tests = append(tests, []struct {
		name    string
		st      State
		want    plan
		wantErr bool
	}{{
		name: "interfaces: a link each, delivery via their own primary, own policy, no outbound",
		st: State{Nodes: []NodeState{{Name: "node0", Interfaces: []Interface{
			{Device: 2, MAC: mac3, IPs: []netip.Addr{ip("10.240.0.40")}, IPForwarding: true},
			{Device: 1, MAC: mac2, IPs: []netip.Addr{ip("10.240.0.30"), ip("10.240.0.32"), ip("10.240.0.31")}},
		}}}},
		want: plan{
			Links: []linkSpec{
				{Dev: "n0e1", Node: "node0", Name: "eth1", MAC: mac2},
				{Dev: "n0e2", Node: "node0", Name: "eth2", MAC: mac3},
			},
			Routes: with(
				routeSpec{Dst: pfx("10.240.0.30/32"), Dev: "n0e1"},
				routeSpec{Dst: pfx("10.240.0.31/32"), Dev: "n0e1", Via: ip("10.240.0.30"), Onlink: true},
				routeSpec{Dst: pfx("10.240.0.32/32"), Dev: "n0e1", Via: ip("10.240.0.30"), Onlink: true},
				routeSpec{Dst: pfx("10.240.0.40/32"), Dev: "n0e2"},
			),
			Neighs: []neighSpec{
				{Dev: "n0", IP: ip("10.240.0.4"), MAC: mac0},
				{Dev: "n0e1", IP: ip("10.240.0.30"), MAC: mac2},
				{Dev: "n0e2", IP: ip("10.240.0.40"), MAC: mac3},
				{Dev: "n1", IP: ip("10.240.0.5"), MAC: mac1},
			},
			NFT: eniNFT(
				nftNode{Dev: "n0e1", MAC: mac2, IPs: []netip.Addr{ip("10.240.0.30"), ip("10.240.0.31"), ip("10.240.0.32")}},
				nftNode{Dev: "n0e2", MAC: mac3, IPs: []netip.Addr{ip("10.240.0.40")}, IPForwarding: true},
			),
		},
	}, {
		name: "bad interfaces are skipped: device 0, device twice, mac in use, no address, primary taken",
		st: State{Nodes: []NodeState{{Name: "node0", Interfaces: []Interface{
			{Device: 0, MAC: mac2, IPs: []netip.Addr{ip("10.240.0.30")}},
			{Device: 1, MAC: mac2, IPs: []netip.Addr{ip("10.240.0.30")}},
			{Device: 1, MAC: mac3, IPs: []netip.Addr{ip("10.240.0.31")}},
			{Device: 2, MAC: mac1, IPs: []netip.Addr{ip("10.240.0.32")}},
			{Device: 3, MAC: mac3},
			{Device: 4, MAC: mac3, IPs: []netip.Addr{ip("10.240.0.5")}},
			{Device: MaxDevice + 1, MAC: mac3, IPs: []netip.Addr{ip("10.240.0.33")}},
		}}}},
		want: plan{
			Links:  []linkSpec{{Dev: "n0e1", Node: "node0", Name: "eth1", MAC: mac2}},
			Routes: with(routeSpec{Dst: pfx("10.240.0.30/32"), Dev: "n0e1"}),
			Neighs: []neighSpec{
				{Dev: "n0", IP: ip("10.240.0.4"), MAC: mac0},
				{Dev: "n0e1", IP: ip("10.240.0.30"), MAC: mac2},
				{Dev: "n1", IP: ip("10.240.0.5"), MAC: mac1},
			},
			NFT: nftSpec{
				Nodes: []nftNode{
					{Dev: "n0", MAC: mac0, IPs: []netip.Addr{ip("10.240.0.4")}},
					{Dev: "n0e1", MAC: mac2, IPs: []netip.Addr{ip("10.240.0.30")}},
					{Dev: "n1", MAC: mac1, IPs: []netip.Addr{ip("10.240.0.5")}},
				},
				Outbound: outbound,
			},
		},
		wantErr: true,
	}, {
		name: "a route via an interface's address goes to that interface when it forwards",
		st: State{
			Nodes: []NodeState{{Name: "node1", Interfaces: []Interface{
				{Device: 1, MAC: mac2, IPs: []netip.Addr{ip("10.240.0.30")}, IPForwarding: true},
			}}},
			Routes: []Route{{Prefix: pfx("10.244.1.0/24"), NextHop: ip("10.240.0.30")}},
		},
		want: plan{
			Links: []linkSpec{{Dev: "n1e1", Node: "node1", Name: "eth1", MAC: mac2}},
			Routes: with(
				routeSpec{Dst: pfx("10.240.0.30/32"), Dev: "n1e1"},
				routeSpec{Dst: pfx("10.244.1.0/24"), Dev: "n1e1", Via: ip("10.240.0.30"), Onlink: true},
			),
			Neighs: []neighSpec{
				{Dev: "n0", IP: ip("10.240.0.4"), MAC: mac0},
				{Dev: "n1", IP: ip("10.240.0.5"), MAC: mac1},
				{Dev: "n1e1", IP: ip("10.240.0.30"), MAC: mac2},
			},
			NFT: nftSpec{
				Nodes: []nftNode{
					{Dev: "n0", MAC: mac0, IPs: []netip.Addr{ip("10.240.0.4")}},
					{Dev: "n1", MAC: mac1, IPs: []netip.Addr{ip("10.240.0.5")}},
					{Dev: "n1e1", MAC: mac2, IPs: []netip.Addr{ip("10.240.0.30")}, IPForwarding: true},
				},
				Outbound: outbound,
			},
		},
	}}...)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := desired(topo, tt.st)
			if (err != nil) != tt.wantErr {
				t.Fatalf("desired() error = %v, want error %v", err, tt.wantErr)
			}
			if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
				cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
				t.Errorf("desired() mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestIsInterfaceLink(t *testing.T) {
	for name, want := range map[string]bool{
		"n0e1": true, "n199e63": true, "n0": false, "n0e": false, "n01e1": false, "n0e1x": false, "sink": false, "inet": false,
	} {
		if got := isInterfaceLink(name); got != want {
			t.Errorf("isInterfaceLink(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestValidate(t *testing.T) {
	good := Topology{
		Prefix:   "t1",
		Subnet:   pfx("10.240.0.0/16"),
		Internet: pfx("203.0.113.0/24"),
		Nodes:    []Node{{Name: "node0", MAC: mac0, Primary: ip("10.240.0.4")}},
	}
	tests := []struct {
		name   string
		mutate func(*Topology)
		ok     bool
	}{
		{"good", func(*Topology) {}, true},
		{"empty prefix", func(t *Topology) { t.Prefix = "" }, false},
		{"slash in prefix", func(t *Topology) { t.Prefix = "a/b" }, false},
		{"node named vnet", func(t *Topology) { t.Nodes[0].Name = "vnet" }, false},
		{"duplicate node", func(t *Topology) { t.Nodes = append(t.Nodes, t.Nodes[0]) }, false},
		{"multicast mac", func(t *Topology) { t.Nodes[0].MAC = net.HardwareAddr{1, 0, 0, 0, 0, 1} }, false},
		{"primary outside subnet", func(t *Topology) { t.Nodes[0].Primary = ip("10.1.0.4") }, false},
		{"primary is gateway", func(t *Topology) { t.Nodes[0].Primary = ip("10.240.0.1") }, false},
		{"ipv6 subnet", func(t *Topology) { t.Subnet = pfx("fd00::/64") }, false},
		{"gateway mac", func(t *Topology) { t.GatewayMAC = VPCRouterMAC }, true},
		{"multicast gateway mac", func(t *Topology) { t.GatewayMAC = net.HardwareAddr{1, 0, 0, 0, 0, 1} }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			topo := good
			topo.Nodes = append([]Node(nil), good.Nodes...)
			tt.mutate(&topo)
			if err := validate(topo); (err == nil) != tt.ok {
				t.Errorf("validate() = %v, want ok %v", err, tt.ok)
			}
		})
	}
}
