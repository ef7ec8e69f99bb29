package noderoute

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v9"

	"github.com/vnet-cni/vnet-cni/cloud/azure"
	"github.com/vnet-cni/vnet-cni/cloud/azure/routetable"
	"github.com/vnet-cni/vnet-cni/cloud/sim"
	"github.com/vnet-cni/vnet-cni/integration/armops"
	"github.com/vnet-cni/vnet-cni/internal/azuretest"
)

// holds records the agent's holds on the node, as the daemon takes them.
type holds struct {
	mu      sync.Mutex
	reason  string
	history []string
}

func (h *holds) SetHold(_, reason string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.history) == 0 || h.history[len(h.history)-1] != reason {
		h.history = append(h.history, reason)
	}
	h.reason = reason
}

func (h *holds) held() (bool, string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.reason != "", h.reason
}

type env struct {
	s      *sim.Sim
	p      *azure.Provider
	tables *armnetwork.RouteTablesClient
	ref    azure.RouteTableRef
}

func newEnv(t *testing.T, delay time.Duration) *env {
	t.Helper()
	s := azuretest.Start(t, sim.Options{Nodes: 1, RouteEffectDelay: delay})
	p := azuretest.Provider(t, s, "node0")
	ref, err := p.RouteTable(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	tables, err := p.RouteTablesClientFor(ref.SubscriptionID)
	if err != nil {
		t.Fatal(err)
	}
	return &env{s: s, p: p, tables: tables, ref: ref}
}

func (e *env) agent(t *testing.T, h *holds, maxRoutes int, settle time.Duration) (*Agent, netip.Addr) {
	t.Helper()
	rec, err := routetable.New(routetable.Config{Client: e.tables, ResourceGroup: e.ref.ResourceGroup, Table: e.ref.Name,
		ClusterCIDR: netip.MustParsePrefix("10.100.0.0/16"), MaxRoutes: maxRoutes, PollFrequency: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	nodeIP := netip.MustParseAddr(e.s.Description().Nodes[0].PrimaryIP)
	a, err := New(Options{Node: "node0", PodCIDR: netip.MustParsePrefix("10.100.0.0/24"), NodeIP: nodeIP,
		Cloud: e.p, Routes: rec, Hold: h, Interval: 300 * time.Millisecond, Poll: 100 * time.Millisecond, Settle: settle})
	if err != nil {
		t.Fatal(err)
	}
	return a, nodeIP
}

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > timeout {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start)
}

// TestRouteHeldUntilEffective: the node is held back from the start, its
// route and its NIC's IP forwarding are written, and the hold is lifted only
// once the route is effective, the sim's effect delay after the write. A
// route deleted by hand is written again and the node held until it is
// effective again; IP forwarding turned off by hand is turned on again.
func TestRouteHeldUntilEffective(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const delay = 800 * time.Millisecond
	e := newEnv(t, delay)
	h := &holds{}
	a, nodeIP := e.agent(t, h, 0, 2*delay)
	if held, why := h.held(); !held || why == "" {
		t.Fatal("the node is not held back before its route is checked")
	}
	go func() { _ = a.Run(ctx) }()
	took := waitFor(t, "the route to become effective", 10*time.Second, func() bool { held, _ := h.held(); return !held })
	if took < 2*delay {
		t.Errorf("the hold was lifted %s after the start, before the route could have settled (%s)", took, 2*delay)
	}
	if st := a.State(); !st.Available || st.Reason != ReasonRouteCreated {
		t.Errorf("state %+v, want available, RouteCreated", st)
	}
	rt, err := e.tables.Get(ctx, e.ref.ResourceGroup, e.ref.Name, nil)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, r := range rt.Properties.Routes {
		if *r.Name == routetable.RouteName("node0") && *r.Properties.AddressPrefix == "10.100.0.0/24" &&
			*r.Properties.NextHopIPAddress == nodeIP.String() && *r.Properties.NextHopType == armnetwork.RouteNextHopTypeVirtualAppliance {
			found = true
		}
	}
	if !found {
		t.Errorf("routes %+v: no vnetcni-node0 10.100.0.0/24 via %s", rt.Properties.Routes, nodeIP)
	}
	nic, err := e.p.Instance(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if prim, _ := nic.Primary(); !prim.IPForwarding {
		t.Error("the NIC's IP forwarding is off")
	}

	// An operator deletes the route through ARM.
	poller, err := e.tables.BeginCreateOrUpdate(ctx, e.ref.ResourceGroup, e.ref.Name, armnetwork.RouteTable{
		Location: rt.Location, Properties: &armnetwork.RouteTablePropertiesFormat{Routes: []*armnetwork.Route{}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := poller.PollUntilDone(ctx, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the node to be held back again", 5*time.Second, func() bool { held, _ := h.held(); return held })
	waitFor(t, "the rewritten route to become effective", 10*time.Second, func() bool { held, _ := h.held(); return !held })

	// An operator turns IP forwarding off.
	desc := e.s.Description()
	nics, err := armops.Interfaces(desc, e.s.ARM())
	if err != nil {
		t.Fatal(err)
	}
	got, err := nics.Get(ctx, desc.ResourceGroup, desc.Nodes[0].NIC, nil)
	if err != nil {
		t.Fatal(err)
	}
	got.Properties.EnableIPForwarding = to.Ptr(false)
	np, err := nics.BeginCreateOrUpdate(ctx, desc.ResourceGroup, desc.Nodes[0].NIC, got.Interface, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := np.PollUntilDone(ctx, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "IP forwarding on again", 5*time.Second, func() bool {
		inst, err := e.p.Instance(ctx)
		prim, _ := inst.Primary()
		return err == nil && prim.IPForwarding
	})
	waitFor(t, "the node available again", 5*time.Second, func() bool { held, _ := h.held(); return !held })
}

// TestRouteLimitHoldsTheNode: a table at its limit (one foreign route,
// limit 1) has no room for the node's route: the node is held back with
// RouteLimitReached and nothing is written.
func TestRouteLimitHoldsTheNode(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e := newEnv(t, 100*time.Millisecond)
	poller, err := e.tables.BeginCreateOrUpdate(ctx, e.ref.ResourceGroup, e.ref.Name, armnetwork.RouteTable{
		Location: to.Ptr(e.s.Description().Location), Properties: &armnetwork.RouteTablePropertiesFormat{Routes: []*armnetwork.Route{{
			Name: to.Ptr("firewall-default"), Properties: &armnetwork.RoutePropertiesFormat{AddressPrefix: to.Ptr("0.0.0.0/0"),
				NextHopType: to.Ptr(armnetwork.RouteNextHopTypeVirtualAppliance), NextHopIPAddress: to.Ptr("10.240.0.200")}}}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := poller.PollUntilDone(ctx, nil); err != nil {
		t.Fatal(err)
	}
	h := &holds{}
	a, _ := e.agent(t, h, 1, 0)
	go func() { _ = a.Run(ctx) }()
	waitFor(t, "RouteLimitReached", 5*time.Second, func() bool { return a.State().Reason == ReasonRouteLimitReached })
	if held, why := h.held(); !held || why == "" {
		t.Errorf("over the limit and not held back (%q)", why)
	}
	rt, err := e.tables.Get(ctx, e.ref.ResourceGroup, e.ref.Name, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(rt.Properties.Routes) != 1 || *rt.Properties.Routes[0].Name != "firewall-default" {
		t.Errorf("routes %v: want the foreign route alone", rt.Properties.Routes)
	}
}

// TestHoldWaitsForTheEffectiveRoutes: with a settle time shorter than the
// VNet's delay, the hold still lasts until the NIC's effective routes show
// the route: ARM's success is not enough.
func TestHoldWaitsForTheEffectiveRoutes(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const delay = time.Second
	e := newEnv(t, delay)
	h := &holds{}
	a, _ := e.agent(t, h, 0, 50*time.Millisecond)
	go func() { _ = a.Run(ctx) }()
	took := waitFor(t, "the route to become effective", 10*time.Second, func() bool { held, _ := h.held(); return !held })
	if took < delay {
		t.Errorf("the hold was lifted %s after the start, before the VNet followed the route (%s)", took, delay)
	}
	t.Logf("held %s (the VNet's delay %s)", took.Round(time.Millisecond), delay)
}
