package azure0

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"

	"github.com/vnet-cni/vnet-cni/bridge/linux"
)

// nftIn returns a google/nftables connection in the namespace, for the test
// to inspect and to vandalise the tables as an administrator would.
func nftIn(t *testing.T, nsPath string) *nftables.Conn {
	t.Helper()
	h, err := netns.GetFromPath(nsPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	c, err := nftables.New(nftables.WithNetNSFd(int(h)))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// tableSummary counts, per family, the tables named vnet-cni and the rules
// of each chain, and lists the pod set's elements.
type tableSummary struct {
	Tables map[string]int
	Rules  map[string]int
	Pods   map[string]string
	// Guard lists the guard table's rules (count) and its ports.
	GuardRules int
	Guard      []string
}

func summarize(t *testing.T, c *nftables.Conn) tableSummary {
	t.Helper()
	s := tableSummary{Tables: map[string]int{}, Rules: map[string]int{}, Pods: map[string]string{}}
	fams := map[nftables.TableFamily]string{nftables.TableFamilyBridge: "bridge", nftables.TableFamilyIPv4: "ip"}
	tables, err := c.ListTables()
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range tables {
		if tb.Name == GuardTableName {
			rules, err := c.GetRules(guardTable(), &nftables.Chain{Name: chainPrerouting, Table: guardTable()})
			if err == nil {
				s.GuardRules = len(rules)
			}
			elems, _ := c.GetSetElements(guardSet(guardTable()))
			for _, e := range elems {
				if p, ok := linux.ParseGuardKey(e.Key); ok {
					s.Guard = append(s.Guard, p.Name+" "+p.MAC+" "+p.IP.String())
				}
			}
			slices.Sort(s.Guard)
		}
		if tb.Name != TableName {
			continue
		}
		fam := fams[tb.Family]
		s.Tables[fam]++
		chains, err := c.ListChainsOfTableFamily(tb.Family)
		if err != nil {
			t.Fatal(err)
		}
		for _, ch := range chains {
			if ch.Table.Name != TableName {
				continue
			}
			rules, err := c.GetRules(tb, ch)
			if err != nil {
				t.Fatal(err)
			}
			s.Rules[fam+" "+ch.Name] = len(rules)
		}
		set := podSet(tb, tb.Family == nftables.TableFamilyBridge)
		elems, err := c.GetSetElements(set)
		if err != nil {
			continue
		}
		for _, e := range elems {
			a, _ := netip.AddrFromSlice(e.Key)
			v := "-"
			if set.IsMap {
				v = net.HardwareAddr(e.Val).String()
			}
			s.Pods[fam+" "+a.String()] = v
		}
	}
	return s
}

// TestReconcileRestoresTables edits the tables by hand in every way an
// administrator or another tool might and checks that the next EnsureNode
// restores exactly the wanted state, never duplicates anything, and that the
// datapath works again afterwards.
func TestReconcileRestoresTables(t *testing.T) {
	podA, podB := netip.MustParseAddr("10.240.0.10"), netip.MustParseAddr("10.240.0.11")
	f := newFabric(t, map[string][]netip.Addr{"node0": {podA, podB}})
	ctx := context.Background()
	n0 := openNode(t, f.NodeNSPath("node0"), t.TempDir())
	if _, err := n0.EnsureNode(ctx, nodeConfig()); err != nil {
		t.Fatal(err)
	}
	nsA, resA := addPod(t, n0, f.prefix, "pa", podA, 0)
	_, resB := addPod(t, n0, f.prefix, "pb", podB, 0)
	port := uint16(8081)
	inet := listenPeer(t, f.InternetNSPath(), netip.AddrPortFrom(f.InternetHost(), port))
	n1 := listenPeer(t, f.NodeNSPath("node1"), netip.AddrPortFrom(node1IP, port))

	c := nftIn(t, f.NodeNSPath("node0"))
	want := summarize(t, c)
	wantShape := tableSummary{
		Tables: map[string]int{"bridge": 1, "ip": 1},
		Rules:  map[string]int{"bridge prerouting": 3, "bridge postrouting": 4, "bridge forward": 2, "ip postrouting": 1},
		Pods: map[string]string{
			"bridge " + podA.String(): resA.PodIf.MAC.String(), "bridge " + podB.String(): resB.PodIf.MAC.String(),
			"ip " + podA.String(): "-", "ip " + podB.String(): "-",
		},
		GuardRules: 6, // the last one keeps pods from the metadata service
		Guard: []string{
			resA.HostVeth.Name + " " + resA.PodIf.MAC.String() + " " + podA.String(),
			resB.HostVeth.Name + " " + resB.PodIf.MAC.String() + " " + podB.String(),
		},
	}
	slices.Sort(wantShape.Guard)
	if d := cmp.Diff(wantShape, want); d != "" {
		t.Fatalf("tables after setup (-want +got):\n%s", d)
	}
	bt := &nftables.Table{Name: TableName, Family: nftables.TableFamilyBridge}
	it := &nftables.Table{Name: TableName, Family: nftables.TableFamilyIPv4}
	bmap := podSet(bt, true)

	tests := []struct {
		name   string
		vandal func(t *testing.T)
		cfg    func(*NodeConfig)
	}{
		{"nothing changed", func(*testing.T) {}, nil},
		{"source mac rule deleted", func(t *testing.T) {
			rules, err := c.GetRules(bt, &nftables.Chain{Name: chainPostrouting, Table: bt})
			if err != nil {
				t.Fatal(err)
			}
			if err := c.DelRule(rules[1]); err != nil {
				t.Fatal(err)
			}
		}, nil},
		{"foreign rule appended to a chain", func(t *testing.T) {
			c.AddRule(&nftables.Rule{Table: bt, Chain: &nftables.Chain{Name: chainPrerouting, Table: bt},
				Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}}})
		}, nil},
		{"snat rule edited to another address", func(t *testing.T) {
			rules, err := c.GetRules(it, &nftables.Chain{Name: chainPostrouting, Table: it})
			if err != nil {
				t.Fatal(err)
			}
			r := rules[0]
			for i, e := range r.Exprs {
				if imm, ok := e.(*expr.Immediate); ok {
					r.Exprs[i] = &expr.Immediate{Register: imm.Register, Data: node1IP.AsSlice()}
				}
			}
			c.ReplaceRule(r)
		}, nil},
		{"whole bridge table deleted: pods recovered from the veths", func(*testing.T) {
			c.DelTable(bt)
		}, nil},
		{"both tables deleted", func(*testing.T) {
			c.DelTable(bt)
			c.DelTable(it)
		}, nil},
		{"pod entry with a wrong mac, pods synced", func(t *testing.T) {
			if err := c.SetDeleteElements(bmap, []nftables.SetElement{{Key: podA.AsSlice()}}); err != nil {
				t.Fatal(err)
			}
			if err := c.SetAddElements(bmap, []nftables.SetElement{{Key: podA.AsSlice(), Val: node1MAC}}); err != nil {
				t.Fatal(err)
			}
		}, func(cfg *NodeConfig) {
			cfg.Pods = map[netip.Addr]net.HardwareAddr{podA: resA.PodIf.MAC, podB: resB.PodIf.MAC}
			cfg.SyncPods = true
		}},
		{"stale pod entry, pods synced", func(t *testing.T) {
			if err := c.SetAddElements(bmap, []nftables.SetElement{{Key: netip.MustParseAddr("10.240.0.99").AsSlice(), Val: node1MAC}}); err != nil {
				t.Fatal(err)
			}
		}, func(cfg *NodeConfig) {
			cfg.Pods = map[netip.Addr]net.HardwareAddr{podA: resA.PodIf.MAC, podB: resB.PodIf.MAC}
			cfg.SyncPods = true
		}},
		{"guard table deleted: ports recovered from the veths", func(*testing.T) {
			c.DelTable(guardTable())
		}, nil},
		{"guard rule deleted", func(t *testing.T) {
			rules, err := c.GetRules(guardTable(), &nftables.Chain{Name: chainPrerouting, Table: guardTable()})
			if err != nil {
				t.Fatal(err)
			}
			if err := c.DelRule(rules[0]); err != nil {
				t.Fatal(err)
			}
		}, nil},
		{"every table deleted", func(*testing.T) {
			c.DelTable(bt)
			c.DelTable(it)
			c.DelTable(guardTable())
		}, nil},
		{"chain deleted", func(*testing.T) {
			rules, _ := c.GetRules(bt, &nftables.Chain{Name: chainPostrouting, Table: bt})
			for _, r := range rules {
				_ = c.DelRule(r)
			}
			c.DelChain(&nftables.Chain{Name: chainPostrouting, Table: bt})
		}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.vandal(t)
			if err := c.Flush(); err != nil {
				t.Fatalf("edit tables: %v", err)
			}
			cfg := nodeConfig()
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			info, err := n0.EnsureNode(ctx, cfg)
			if err != nil {
				t.Fatalf("ensure node: %v", err)
			}
			if tc.name == "nothing changed" && info.NFTChanges != 0 {
				t.Errorf("nothing changed but EnsureNode made %d changes", info.NFTChanges)
			}
			if tc.name != "nothing changed" && info.NFTChanges == 0 {
				t.Errorf("EnsureNode made no change after the edit")
			}
			if d := cmp.Diff(want, summarize(t, c)); d != "" {
				t.Errorf("tables after reconcile (-want +got):\n%s", d)
			}
			again, err := n0.EnsureNode(ctx, cfg)
			if err != nil || again.NFTChanges != 0 {
				t.Errorf("second EnsureNode: %d changes, %v; want 0, nil", again.NFTChanges, err)
			}
			for _, dst := range []netip.AddrPort{inet, n1} {
				if _, err := seenAs(nsA, dst, 3*time.Second); err != nil {
					t.Errorf("pod A to %s after reconcile: %v", dst, err)
				}
			}
		})
	}
}

// TestBuildTables checks the rule sets for configurations, without root.
func TestBuildTables(t *testing.T) {
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	base := nftSpec{master: "eth0", masterMAC: mac, bridgeMAC: mac, primary: node0IP,
		nodeIPs: []netip.Addr{node0IP}, exclude: []netip.Prefix{vnetPrefix}}
	tests := []struct {
		name string
		mod  func(*nftSpec)
		want map[string]int // family/chain -> rules
	}{
		{"bridge only without snat", func(s *nftSpec) {}, map[string]int{"7/prerouting": 2, "7/postrouting": 4, "7/forward": 2}},
		{"snat adds a redirect and the ip table", func(s *nftSpec) { s.snat = true },
			map[string]int{"7/prerouting": 3, "7/postrouting": 4, "7/forward": 2, "2/postrouting": 1}},
		{"one arp rule per node address", func(s *nftSpec) {
			s.nodeIPs = append(s.nodeIPs, netip.MustParseAddr("10.240.0.6"))
		}, map[string]int{"7/prerouting": 2, "7/postrouting": 5, "7/forward": 2}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := base
			tc.mod(&s)
			got := map[string]int{}
			for _, w := range buildTables(s) {
				for _, c := range w.Chains {
					got[fmtFam(w.Table.Family)+"/"+c.Chain.Name] = len(c.Rules)
					for _, r := range c.Rules {
						if _, err := linux.RuleKey(w.Table.Family, r); err != nil {
							t.Errorf("rule %q does not marshal: %v", r.Note, err)
						}
					}
				}
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("rules per chain (-want +got):\n%s", d)
			}
		})
	}
}

func fmtFam(f nftables.TableFamily) string { return string(rune('0' + int(f))) }

func TestNormalPrefixes(t *testing.T) {
	in := []netip.Prefix{
		netip.MustParsePrefix("10.240.3.4/16"), netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("10.240.0.0/16"), netip.MustParsePrefix("fd00::/8"), {},
	}
	want := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("10.240.0.0/16")}
	if d := cmp.Diff(want, linux.NormalPrefixes(in), cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); d != "" {
		t.Errorf("normalPrefixes (-want +got):\n%s", d)
	}
}
