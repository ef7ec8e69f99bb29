package podcidr

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/vnet-cni/vnet-cni/cloud"
)

// node is the instance the provider reports: what the pod CIDR's
// interface takes from it is checked against these values.
type node struct{ inst cloud.Instance }

func (n node) Instance(context.Context) (cloud.Instance, error) { return n.inst, nil }

var (
	podCIDR = netip.MustParsePrefix("10.244.1.0/28")
	cluster = netip.MustParsePrefix("10.244.0.0/16")
	vnet    = netip.MustParsePrefix("10.0.0.0/16")
	nodeIP  = netip.MustParseAddr("10.0.0.4")
)

func testNode() node {
	return node{cloud.Instance{Provider: "azure", Name: "vm0", NetworkPrefixes: []netip.Prefix{vnet},
		Interfaces: []cloud.Interface{{ID: "/nic/vm0", MAC: "000d3a000001", Primary: true, PrimaryIP: nodeIP,
			Subnet: netip.MustParsePrefix("10.0.0.0/24"), Gateway: netip.MustParseAddr("10.0.0.1"),
			Secondary: []netip.Addr{netip.MustParseAddr("10.0.0.9")}, IPForwarding: true}},
		Limits: cloud.Limits{Interfaces: 1, AddressesPerInterface: 256}}}
}

func open(t *testing.T, dir string, p netip.Prefix) *Cloud {
	t.Helper()
	c, err := New(Config{Inner: testNode(), PodCIDR: p, ClusterCIDR: cluster, StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddr(s)
	}
	return out
}

// fresh returns a Cloud over an allocation file with nothing taken (a new
// node's file is missing, which takes everything: see TestMissingFile).
func fresh(t *testing.T) (*Cloud, string) {
	t.Helper()
	dir := t.TempDir()
	writeAllocation(t, dir, allocation{PodCIDR: podCIDR, Addresses: []netip.Addr{}})
	return open(t, dir, podCIDR), dir
}

func writeAllocation(t *testing.T, dir string, a allocation) {
	t.Helper()
	data, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, fileName), data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestInstance(t *testing.T) {
	ctx := context.Background()
	c, _ := fresh(t)
	inst, err := c.Instance(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(inst.Interfaces) != 1 {
		t.Fatalf("interfaces %+v, want the pod CIDR alone", inst.Interfaces)
	}
	ifc := inst.Interfaces[0]
	if ifc.ID != "podcidr/10.244.1.0/28" || !ifc.Primary || ifc.MAC != "000d3a000001" || ifc.PrimaryIP != nodeIP ||
		ifc.Subnet != podCIDR || ifc.Gateway != netip.MustParseAddr("10.244.1.1") || len(ifc.Secondary) != 0 || !ifc.IPForwarding {
		t.Errorf("interface %+v", ifc)
	}
	if !slices.Equal(inst.NetworkPrefixes, []netip.Prefix{vnet, cluster}) {
		t.Errorf("network prefixes %v, want the vnet and the cluster CIDR", inst.NetworkPrefixes)
	}
	// A /28: 16 addresses minus the network, the gateway, the broadcast.
	if inst.Limits.Secondaries(1) != 13 {
		t.Errorf("limits %+v: %d secondaries, want 13", inst.Limits, inst.Limits.Secondaries(1))
	}
}

func TestAddRemoveRestore(t *testing.T) {
	ctx := context.Background()
	c, dir := fresh(t)
	id := InterfaceID(podCIDR)
	got, err := c.AddAddresses(ctx, id, 3)
	if err != nil {
		t.Fatal(err)
	}
	if want := addrs("10.244.1.2", "10.244.1.3", "10.244.1.4"); !slices.Equal(got, want) {
		t.Errorf("added %v, want %v (the gateway .1 is never handed out)", got, want)
	}
	if err := c.RemoveAddresses(ctx, id, addrs("10.244.1.3", "10.244.1.99")); err != nil {
		t.Fatal(err)
	}
	// Another process reads what this one wrote: the file is the witness.
	c2 := open(t, dir, podCIDR)
	inst, err := c2.Instance(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := addrs("10.244.1.2", "10.244.1.4"); !slices.Equal(inst.Interfaces[0].Secondary, want) {
		t.Errorf("after a reopen: %v, want %v", inst.Interfaces[0].Secondary, want)
	}
	got, err = c2.AddAddresses(ctx, id, 20)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 11 || got[0] != netip.MustParseAddr("10.244.1.3") || got[10] != netip.MustParseAddr("10.244.1.14") {
		t.Errorf("the rest of the /28: %v (want .3 and .5-.14: not the broadcast .15)", got)
	}
	if _, err := c2.AddAddresses(ctx, id, 1); cloud.KindOf(err) != cloud.SubnetFull {
		t.Errorf("a full pod CIDR: %v, want subnet_full", err)
	}
	if err := c2.RestoreAddresses(ctx, id, addrs("10.244.1.3", "10.244.2.5")); cloud.KindOf(err) != cloud.Fatal {
		t.Errorf("restore of an address of another pod CIDR: %v, want fatal", err)
	}
	if err := c2.RemoveAddresses(ctx, id, addrs("10.244.1.7")); err != nil {
		t.Fatal(err)
	}
	if err := c2.RestoreAddresses(ctx, id, addrs("10.244.1.7")); err != nil || c2.Taken() != 13 {
		t.Errorf("restore: %v, %d taken, want 13", err, c2.Taken())
	}
	if _, err := c2.AddAddresses(ctx, "/nic/vm0", 1); cloud.KindOf(err) != cloud.Fatal {
		t.Errorf("add on the NIC: %v, want fatal", err)
	}
}

func TestMissingOrDamagedFile(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, dir string)
		aside bool
	}{
		{"missing", func(*testing.T, string) {}, false},
		{"damaged", func(t *testing.T, dir string) {
			if err := os.WriteFile(filepath.Join(dir, fileName), []byte(`{"podCIDR": "10.244.1.0/28", "addr`), 0o600); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"another pod CIDR", func(t *testing.T, dir string) {
			writeAllocation(t, dir, allocation{PodCIDR: netip.MustParsePrefix("10.244.9.0/28"), Addresses: addrs("10.244.9.2")})
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			tc.setup(t, dir)
			c := open(t, dir, podCIDR)
			inst, err := c.Instance(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if n := len(inst.Interfaces[0].Secondary); n != 13 {
				t.Errorf("%d addresses taken, want all 13: what the file lost may be held", n)
			}
			if _, err := os.Stat(filepath.Join(dir, fileName+".damaged")); (err == nil) != tc.aside {
				t.Errorf("damaged file moved aside: %v, want %v", err == nil, tc.aside)
			}
			if c2 := open(t, dir, podCIDR); c2.Taken() != 13 {
				t.Errorf("the rewritten file holds %d addresses, want 13", c2.Taken())
			}
		})
	}
}

// TestFreshNode: on a new node (nothing can hold a pod address) a missing
// file takes nothing; a damaged one still takes everything.
func TestFreshNode(t *testing.T) {
	dir := t.TempDir()
	c, err := New(Config{Inner: testNode(), PodCIDR: podCIDR, ClusterCIDR: cluster, StateDir: dir, Fresh: true})
	if err != nil || c.Taken() != 0 {
		t.Fatalf("a new node: %d taken, %v; want none", c.Taken(), err)
	}
	if err := os.WriteFile(filepath.Join(dir, fileName), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err = New(Config{Inner: testNode(), PodCIDR: podCIDR, ClusterCIDR: cluster, StateDir: dir, Fresh: true})
	if err != nil || c.Taken() != 13 {
		t.Errorf("a damaged file on a fresh node: %d taken, %v; want all 13", c.Taken(), err)
	}
}

func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	for _, p := range []string{"10.245.0.0/24", "10.244.1.0/30", "10.244.1.5/24", "10.0.0.0/7"} {
		if _, err := New(Config{Inner: testNode(), PodCIDR: netip.MustParsePrefix(p), ClusterCIDR: cluster, StateDir: dir}); err == nil {
			t.Errorf("pod CIDR %s accepted", p)
		}
	}
	n := testNode()
	n.inst.NetworkPrefixes = append(n.inst.NetworkPrefixes, netip.MustParsePrefix("10.244.128.0/17"))
	c, err := New(Config{Inner: n, PodCIDR: podCIDR, ClusterCIDR: cluster, StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Instance(context.Background()); cloud.KindOf(err) != cloud.Fatal {
		t.Errorf("a cluster CIDR overlapping the VNet: %v, want fatal", err)
	}
}
