package integration

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"

	"github.com/vnet-cni/vnet-cni/bridge/linux"
	"github.com/vnet-cni/vnet-cni/integration/cluster"
	"github.com/vnet-cni/vnet-cni/internal/nstest"
	"github.com/vnet-cni/vnet-cni/ipamd/config"
)

// podDefaultRoutes lists the default routes of the pod's namespace as
// "ifName via gateway".
func podDefaultRoutes(t *testing.T, p *cluster.Pod) []string {
	t.Helper()
	nl := nstest.Netlink(t, p.NSPath)
	routes, err := nl.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range routes {
		if r.Dst != nil && !r.Dst.IP.IsUnspecified() {
			continue
		}
		name := fmt.Sprint(r.LinkIndex)
		if l, err := nl.LinkByIndex(r.LinkIndex); err == nil {
			name = l.Attrs().Name
		}
		out = append(out, name+" via "+r.Gw.String())
	}
	slices.Sort(out)
	return out
}

// TestSecondAttachment gives one pod two attachments (eth0 and eth1, the
// same container) and removes one of them: the other keeps its address,
// its default route and its way out, whichever goes first.
func TestSecondAttachment(t *testing.T) {
	ctx := context.Background()
	e := newE2EEnv(t, 1, nil)
	e.start(t)
	n := e.c.Nodes[0]
	internet := e2eServe(t, e.desc.InternetNetns, "internet", netip.AddrPortFrom(e2eAddr(e.desc.InternetHost), 80))

	for _, first := range []string{"eth1", "eth0"} {
		t.Run("DEL "+first+" first", func(t *testing.T) {
			eth0 := e2eAddPod(t, n, "two-"+first)
			t.Cleanup(func() { _ = eth0.Remove() })
			eth1 := *eth0
			eth1.IfName = "eth1"
			if _, err := n.Add(ctx, &eth1); err != nil {
				t.Fatalf("ADD eth1: %v", err)
			}
			if eth1.IP == eth0.IP {
				t.Fatalf("both attachments got %s", eth0.IP)
			}
			gw := eth0.Result.IPs[0].Gateway.String()
			want := []string{"eth0 via " + gw, "eth1 via " + gw}
			if d := cmp.Diff(want, podDefaultRoutes(t, eth0)); d != "" {
				t.Errorf("default routes with two attachments (-want +got):\n%s", d)
			}
			for _, p := range []*cluster.Pod{eth0, &eth1} {
				if err := n.Check(ctx, p); err != nil {
					t.Errorf("CHECK %s with two attachments: %v", p.IfName, err)
				}
			}

			gone, kept := &eth1, eth0
			if first == "eth0" {
				gone, kept = eth0, &eth1
			}
			if err := n.Del(ctx, gone); err != nil {
				t.Fatalf("DEL %s: %v", gone.IfName, err)
			}
			if d := cmp.Diff([]string{kept.IfName + " via " + gw}, podDefaultRoutes(t, kept)); d != "" {
				t.Errorf("default routes after DEL of %s (-want +got):\n%s", gone.IfName, d)
			}
			if err := n.Check(ctx, kept); err != nil {
				t.Errorf("CHECK %s after DEL of %s: %v", kept.IfName, gone.IfName, err)
			}
			if a := assignment(t, n, kept.ContainerID, kept.IfName); a == nil || a.IP != kept.IP {
				t.Errorf("vnet-ipamd holds %v for %s, want %s", a, kept.IfName, kept.IP)
			}
			// The way out of the VNet is the default route: SNAT to the
			// node's primary address.
			e2eExpect(t, kept.IfName+" -> internet", kept.NSPath, internet, "internet", e2eAddr(n.PrimaryIP))
			if err := n.Del(ctx, kept); err != nil {
				t.Fatalf("DEL %s: %v", kept.IfName, err)
			}
			if left := append(e2eLeftovers(t, eth0), e2eLeftovers(t, &eth1)...); len(left) > 0 {
				t.Errorf("left after both DELs: %v", left)
			}
		})
	}
}

// TestBadNodeLeavesNothing runs ADDs on nodes whose datapath cannot be set
// up: azure0 exists and is not a bridge (node0, whose datapath the plugin
// sets up), and the configured bridge is the node's NIC itself (node1,
// whose datapath vnet-ipamd keeps). Each ADD fails (error 999 naming the
// cause), and leaves neither a veth nor an assignment behind.
func TestBadNodeLeavesNothing(t *testing.T) {
	e := newE2EEnv(t, 2, func(node string, c *config.Config) {
		if node == "node0" {
			// The plugin sets node0 up (its daemon would make azure0
			// before the test could take the name).
			c.NodeSetup = config.NodeSetupPlugin
		}
	})
	e.start(t)
	n0, n1 := e.c.Nodes[0], e.c.Nodes[1]
	// Something else took the name azure0 on node0 before the first pod.
	if err := nstest.Netlink(t, n0.NSPath).LinkAdd(&netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{Name: "azure0"}, PeerName: "azure0-peer"}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		node *cluster.Node
		set  map[string]any
	}{
		{"azure0 is a veth", n0, nil},
		{"bridge is the NIC", n1, map[string]any{"bridge": "eth0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := tc.node
			before := badSnap(t, n)
			conf := pluginConf(t, n, "1.0.0", tc.set)
			for i := range 2 {
				p, err := n.NewPod("default", fmt.Sprintf("bad%d", i))
				if err != nil {
					t.Fatal(err)
				}
				removeLater(t, p)
				env := execEnv{Command: "ADD", ContainerID: p.ContainerID, Netns: p.NSPath, IfName: "eth0", Args: k8sArgs(p)}
				_, ce := execPlugin(t, n, env, conf)
				if ce == nil {
					t.Fatal("ADD succeeded on a bad node")
				}
				t.Logf("code %d: %s (%s)", ce.Code, ce.Msg, ce.Details)
				if ce.Code != types.ErrInternal || !strings.Contains(ce.Msg+" "+ce.Details, "not a bridge") {
					t.Errorf("ADD: code %d %q (%q), want %d naming \"not a bridge\"", ce.Code, ce.Msg, ce.Details, types.ErrInternal)
				}
				if left := e2eLeftovers(t, p); len(left) > 0 {
					t.Errorf("ADD %d left %v", i, left)
				}
			}
			after := badSnap(t, n)
			if d := cmp.Diff(before, after); d != "" {
				t.Errorf("failed ADDs changed the node (-before +after):\n%s", d)
			}
			for _, v := range after.Veths {
				if strings.HasPrefix(v, linux.HostVethPrefix) {
					t.Errorf("pod veth %s on the node", v)
				}
			}
		})
	}
}
