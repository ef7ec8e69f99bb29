package azure0

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/vnet-cni/vnet-cni/bridge/linux"
	"github.com/vnet-cni/vnet-cni/internal/nstest"
)

// TestPrepareVeth creates a pod's pair ahead of its address and checks that
// AddPod completes it into exactly the pod a direct AddPod builds (derived
// MAC, alias, MTU, hairpin, entries) and that the pod then reaches the
// internet through SNAT; that nothing is prepared without a bridge or over
// an existing pair; and that GC's StrayVeths finds a prepared pair that was
// never completed, which DelPod removes.
func TestPrepareVeth(t *testing.T) {
	podA := netip.MustParseAddr("10.240.0.10")
	f := newFabric(t, map[string][]netip.Addr{"node0": {podA}})
	ctx := context.Background()
	nodeNS := f.NodeNSPath("node0")
	n := openNode(t, nodeNS, t.TempDir())
	nsA := nstest.NewNS(t, f.prefix+"-pa")
	req := linux.VethRequest{ContainerID: f.prefix + "-pa", IfName: "eth0", NetNS: nsA, MTU: 1400, Master: DefaultBridgeName}

	if ok, err := linux.PrepareVeth(nodeNS, req); err != nil || ok {
		t.Fatalf("PrepareVeth before the bridge exists = %v, %v; want false, nil", ok, err)
	}
	if _, err := n.EnsureNode(ctx, nodeConfig()); err != nil {
		t.Fatal(err)
	}
	if ok, err := linux.PrepareVeth(nodeNS, req); err != nil || !ok {
		t.Fatalf("PrepareVeth = %v, %v; want true, nil", ok, err)
	}
	if ok, err := linux.PrepareVeth(nodeNS, req); err != nil || ok {
		t.Errorf("PrepareVeth over the prepared pair = %v, %v; want false, nil", ok, err)
	}
	// Before AddPod: a port without a pod (no alias), the pod end down.
	st, err := n.InspectPod(ctx, linux.PodRef{ContainerID: req.ContainerID, IfName: "eth0", NetNS: nsA})
	if err != nil {
		t.Fatal(err)
	}
	if st.HostVeth == nil || st.PodIf == nil || st.PodIf.Up || st.HostVeth.IP.IsValid() || st.HostVeth.Bridge != DefaultBridgeName {
		t.Fatalf("prepared pair = host %+v pod %+v; want an enslaved port without pod and a pod end down", st.HostVeth, st.PodIf)
	}

	res, err := n.AddPod(ctx, PodConfig{ContainerID: req.ContainerID, IfName: "eth0", NetNS: nsA,
		IP: podA, Subnet: subnet, Gateway: gatewayIP, MTU: 1400})
	if err != nil {
		t.Fatalf("AddPod over the prepared pair: %v", err)
	}
	if got, want := res.PodIf.MAC.String(), linux.PodMAC(podA).String(); got != want {
		t.Errorf("pod MAC = %s, want %s", got, want)
	}
	st, err = n.InspectPod(ctx, linux.PodRef{ContainerID: req.ContainerID, IfName: "eth0", NetNS: nsA})
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(wantPod(res, 1400), st, cmpAddrs...); d != "" {
		t.Errorf("pod completed from a prepared pair (-want +got):\n%s", d)
	}
	inet := listenPeer(t, f.InternetNSPath(), netip.AddrPortFrom(f.InternetHost(), 8082))
	if src, err := seenAs(nsA, inet, 3*time.Second); err != nil || src != node0IP {
		t.Errorf("pod to the internet: seen as %s, %v; want %s", src, err, node0IP)
	}

	// A pair prepared for an ADD that never got its address.
	nsB := nstest.NewNS(t, f.prefix+"-pb")
	reqB := linux.VethRequest{ContainerID: f.prefix + "-pb", IfName: "eth0", NetNS: nsB, Master: DefaultBridgeName}
	if ok, err := linux.PrepareVeth(nodeNS, reqB); err != nil || !ok {
		t.Fatalf("PrepareVeth B = %v, %v", ok, err)
	}
	nameA, nameB := linux.HostVethName(req.ContainerID, "eth0"), linux.HostVethName(reqB.ContainerID, "eth0")
	stray, err := n.StrayVeths(func(name string) bool { return name == nameA })
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(stray, []string{nameB}) {
		t.Fatalf("StrayVeths = %v, want [%s]", stray, nameB)
	}
	if err := n.DelPod(ctx, linux.PodRef{HostVethName: nameB}); err != nil {
		t.Fatal(err)
	}
	if stray, err := n.StrayVeths(func(name string) bool { return name == nameA }); err != nil || len(stray) != 0 {
		t.Errorf("StrayVeths after DelPod = %v, %v; want none", stray, err)
	}
	// Pod A was not disturbed.
	if _, err := seenAs(nsA, inet, 3*time.Second); err != nil {
		t.Errorf("pod A after removing B's pair: %v", err)
	}
}

// TestAttachment drives ADD's handle: Prepare then Abort leaves nothing
// behind (the pair prepared while the address was on its way is removed);
// Prepare then Complete builds the same pod as AddPod, also when the
// address's VNet space differs from the request's; Abort after Complete
// removes the pod's veth and entries.
func TestAttachment(t *testing.T) {
	podA := netip.MustParseAddr("10.240.0.10")
	f := newFabric(t, map[string][]netip.Addr{"node0": {podA}})
	ctx := context.Background()
	nodeNS := f.NodeNSPath("node0")
	lockDir := t.TempDir()
	n := openNode(t, nodeNS, lockDir)
	opts := Options{LockDir: lockDir}
	nsA := nstest.NewNS(t, f.prefix+"-pa")
	req := AttachRequest{ContainerID: f.prefix + "-pa", IfName: "eth0", NetNS: nsA, VNetPrefixes: []netip.Prefix{vnetPrefix}}
	addr := linux.Address{IP: podA, Subnet: subnet, Gateway: gatewayIP, VNetPrefixes: []netip.Prefix{vnetPrefix}}
	ref := linux.PodRef{ContainerID: req.ContainerID, IfName: "eth0", NetNS: nsA, IP: podA}

	// The first ADD builds the bridge; this one finds it and prepares the pair.
	if _, err := n.EnsureNode(ctx, nodeConfig()); err != nil {
		t.Fatal(err)
	}
	a := Prepare(ctx, nodeNS, opts, req)
	if err := a.Abort(ctx); err != nil {
		t.Fatalf("Abort a prepared attachment: %v", err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if st, err := n.InspectPod(ctx, ref); err != nil || st.HostVeth != nil || st.PodIf != nil {
		t.Fatalf("after Abort: host %+v pod %+v (%v); want nothing", st.HostVeth, st.PodIf, err)
	}

	for _, tc := range []struct {
		name string
		vnet []netip.Prefix
	}{
		{"prepared", []netip.Prefix{vnetPrefix}},
		{"vnet changed", []netip.Prefix{netip.MustParsePrefix("10.240.0.0/12")}},
		{"no vnet in the request", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := req
			r.VNetPrefixes = tc.vnet
			a := Prepare(ctx, nodeNS, opts, r)
			defer a.Close()
			res, err := a.Complete(ctx, addr)
			if err != nil {
				t.Fatalf("Complete: %v", err)
			}
			if s := a.Steps(); s.NodeReady.IsZero() || s.AddPod <= 0 {
				t.Errorf("steps %+v: want the node's readiness and AddPod timed", s)
			}
			st, err := n.InspectPod(ctx, ref)
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(wantPod(res, 1500), st, cmpAddrs...); d != "" {
				t.Errorf("completed pod (-want +got):\n%s", d)
			}
			if err := a.Abort(ctx); err != nil {
				t.Fatalf("Abort a completed attachment: %v", err)
			}
			st, err = n.InspectPod(ctx, ref)
			if err != nil || st.HostVeth != nil || st.PodIf != nil || st.RegisteredMAC != nil || st.SNATRegistered {
				t.Errorf("after Abort: %+v (%v); want nothing", st, err)
			}
		})
	}
}
