package azure0

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/vnet-cni/vnet-cni/bridge/linux"
	"github.com/vnet-cni/vnet-cni/internal/nstest"
)

// TestManagedAttachment is ADD on a node whose datapath vnet-ipamd keeps:
// on a complete node the attachment does not set the node up (no
// EnsureNode), and on a node that lacks its bridge or a table (not set up
// yet, or damaged before the daemon repaired it) it sets the node up itself
// and the pod is guarded like any other.
func TestManagedAttachment(t *testing.T) {
	ips := []netip.Addr{netip.MustParseAddr("10.240.0.10"), netip.MustParseAddr("10.240.0.11"), netip.MustParseAddr("10.240.0.12")}
	f := newFabric(t, map[string][]netip.Addr{"node0": ips})
	ctx := context.Background()
	nodeNS := f.NodeNSPath("node0")
	lockDir := t.TempDir()
	inet := listenPeer(t, f.InternetNSPath(), netip.AddrPortFrom(f.InternetHost(), 8083))

	attach := func(name string, ip netip.Addr) (string, linux.Steps) {
		t.Helper()
		nsPath := nstest.NewNS(t, f.prefix+"-"+name)
		a := Prepare(ctx, nodeNS, Options{LockDir: lockDir}, AttachRequest{
			ContainerID: f.prefix + "-" + name, IfName: "eth0", NetNS: nsPath,
			VNetPrefixes: []netip.Prefix{vnetPrefix}, Managed: true,
		})
		defer func() {
			if err := a.Close(); err != nil {
				t.Errorf("close attachment: %v", err)
			}
		}()
		if _, err := a.Complete(ctx, linux.Address{IP: ip, Subnet: subnet, Gateway: gatewayIP, VNetPrefixes: []netip.Prefix{vnetPrefix}}); err != nil {
			t.Fatalf("managed ADD of %s: %v", name, err)
		}
		if src, err := seenAs(nsPath, inet, 3*time.Second); err != nil || src != node0IP {
			t.Errorf("%s to the internet: seen as %s, %v; want %s", name, src, err, node0IP)
		}
		return nsPath, a.Steps()
	}
	n := openNode(t, nodeNS, lockDir)
	guarded := func() []netip.Addr {
		t.Helper()
		elems, err := n.ns.NFT.GetSetElements(guardSet(guardTable()))
		if err != nil {
			t.Fatalf("guard set: %v", err)
		}
		var out []netip.Addr
		for _, e := range elems {
			if p, ok := linux.ParseGuardKey(e.Key); ok {
				out = append(out, p.IP)
			}
		}
		slices.SortFunc(out, netip.Addr.Compare)
		return out
	}

	// A node nobody set up: the first ADD does.
	if _, s := attach("a", ips[0]); s.EnsureNode == 0 {
		t.Errorf("managed ADD on a node without its bridge did not set the node up")
	}
	// A complete node: nothing but the pod.
	if _, s := attach("b", ips[1]); s.EnsureNode != 0 {
		t.Errorf("managed ADD on a complete node ran EnsureNode (%v)", s.EnsureNode)
	}
	if got := guarded(); !slices.Equal(got, ips[:2]) {
		t.Errorf("guarded pods = %v, want %v", got, ips[:2])
	}
	// The guard table deleted by hand, before the daemon repaired it.
	n.ns.NFT.DelTable(guardTable())
	if err := n.ns.NFT.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, s := attach("c", ips[2]); s.EnsureNode == 0 {
		t.Errorf("managed ADD on a node without its guard table did not set the node up")
	}
	if got := guarded(); !slices.Equal(got, ips) {
		t.Errorf("guarded pods after the guard table was rebuilt = %v, want %v", got, ips)
	}
}
