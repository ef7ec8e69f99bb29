package azure

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v9"

	"github.com/vnet-cni/vnet-cni/cloud"
	"github.com/vnet-cni/vnet-cni/cloud/sim"
	"github.com/vnet-cni/vnet-cni/cloud/sim/arm"
)

// setRoutes writes the whole route table through the provider's
// RouteTablesClient and waits for ARM's success.
func setRoutes(ctx context.Context, t *testing.T, p *Provider, ref RouteTableRef, routes ...*armnetwork.Route) {
	t.Helper()
	c := p.RouteTablesClient()
	table, err := c.Get(ctx, ref.ResourceGroup, ref.Name, nil)
	if err != nil {
		t.Fatal(err)
	}
	table.Properties.Routes = routes
	poller, err := c.BeginCreateOrUpdate(ctx, ref.ResourceGroup, ref.Name, table.RouteTable, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := poller.PollUntilDone(ctx, &runtime.PollUntilDoneOptions{Frequency: 20 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
}

func carried(routes []EffectiveRoute, prefix netip.Prefix, hop netip.Addr) bool {
	for _, r := range routes {
		if r.Carries(prefix, hop) {
			return true
		}
	}
	return false
}

// TestEffectiveRoutes: the real SDK against the simulated ARM over HTTPS.
// The effective routes hold the VNet's prefixes and the internet; a route
// put through RouteTablesClient is absent right after ARM's success and
// present (prefix, next hop, User, Active) RouteEffectDelay later; a
// deleted one stays until the delay has passed, then goes.
func TestEffectiveRoutes(t *testing.T) {
	const delay = 1500 * time.Millisecond
	ctx := context.Background()
	e := newEnv(t, sim.Options{Nodes: 2, RouteEffectDelay: delay})
	p := e.provider(t)

	routes, err := p.EffectiveRoutes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	vnet := netip.MustParsePrefix(e.desc.VNetPrefixes[0])
	var sawVNet, sawInternet bool
	for _, r := range routes {
		switch {
		case r.Source == SourceUser:
			t.Errorf("a user route before any was put: %+v", r)
		case r.NextHopType == "VnetLocal" && len(r.Prefixes) == 1 && r.Prefixes[0] == vnet && r.State == StateActive && r.Source == SourceDefault:
			sawVNet = true
		case r.NextHopType == "Internet" && len(r.Prefixes) == 1 && r.Prefixes[0] == netip.MustParsePrefix("0.0.0.0/0"):
			sawInternet = true
		}
	}
	if !sawVNet || !sawInternet {
		t.Errorf("effective routes %+v, want the VNet %s (VnetLocal) and 0.0.0.0/0 (Internet)", routes, vnet)
	}

	ref, err := p.RouteTable(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pods := netip.MustParsePrefix("10.244.1.0/24")
	hop := netip.MustParseAddr(e.desc.Nodes[1].PrimaryIP)
	route := &armnetwork.Route{Name: to.Ptr("vnetcni-node1"), Properties: &armnetwork.RoutePropertiesFormat{
		AddressPrefix:    to.Ptr(pods.String()),
		NextHopType:      to.Ptr(armnetwork.RouteNextHopTypeVirtualAppliance),
		NextHopIPAddress: to.Ptr(hop.String()),
	}}
	setRoutes(ctx, t, p, ref, route)
	put := time.Now()
	routes, err = p.EffectiveRoutes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if el := time.Since(put); el < delay && carried(routes, pods, hop) {
		t.Errorf("the route is effective %s after ARM's success, before the %s delay", el, delay)
	}
	var reads int
	for !carried(routes, pods, hop) {
		if time.Since(put) > delay+5*time.Second {
			t.Fatalf("the route is not effective %s after ARM's success: %+v", time.Since(put), routes)
		}
		time.Sleep(100 * time.Millisecond)
		if routes, err = p.EffectiveRoutes(ctx); err != nil {
			t.Fatal(err)
		}
		reads++
	}
	el := time.Since(put)
	if el < delay {
		t.Errorf("the route was effective after %s, before the %s delay", el, delay)
	}
	t.Logf("route effective %s after ARM's success (delay %s, %d more reads)", el, delay, reads)
	for _, r := range routes {
		if r.Name == "vnetcni-node1" && (r.Source != SourceUser || r.NextHopType != "VirtualAppliance" || len(r.NextHops) != 1 || r.NextHops[0] != hop) {
			t.Errorf("user route %+v, want User VirtualAppliance via %s", r, hop)
		}
	}

	setRoutes(ctx, t, p, ref)
	deleted := time.Now()
	if routes, err = p.EffectiveRoutes(ctx); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(deleted); el < delay && !carried(routes, pods, hop) {
		t.Errorf("the deleted route left after %s, before the %s delay", el, delay)
	}
	for carried(routes, pods, hop) {
		if time.Since(deleted) > delay+5*time.Second {
			t.Fatalf("the deleted route is still effective %s later", time.Since(deleted))
		}
		time.Sleep(100 * time.Millisecond)
		if routes, err = p.EffectiveRoutes(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if el := time.Since(deleted); el < delay {
		t.Errorf("the deleted route left after %s, before the %s delay", el, delay)
	}
}

// TestRouteTable: RouteTable names the sim's table associated with the
// subnet; the clients reach it; a subnet without a table is Fatal.
func TestRouteTable(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, sim.Options{Nodes: 1})
	p := e.provider(t)
	ref, err := p.RouteTable(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := RouteTableRef{
		ID:             "/subscriptions/" + e.desc.SubscriptionID + "/resourceGroups/" + e.desc.ResourceGroup + "/providers/Microsoft.Network/routeTables/" + e.desc.RouteTable,
		SubscriptionID: e.desc.SubscriptionID, ResourceGroup: e.desc.ResourceGroup, Name: e.desc.RouteTable,
	}
	if ref != want {
		t.Errorf("RouteTable = %+v, want %+v", ref, want)
	}
	c, err := p.RouteTablesClientFor(ref.SubscriptionID)
	if err != nil {
		t.Fatal(err)
	}
	table, err := c.Get(ctx, ref.ResourceGroup, ref.Name, nil)
	if err != nil || !strings.EqualFold(deref(table.ID), ref.ID) {
		t.Errorf("Get through RouteTablesClientFor: %v, id %s", err, deref(table.ID))
	}
	// Another subscription gets its own client; the sim knows only one.
	other, err := p.RouteTablesClientFor("11111111-2222-3333-4444-555555555555")
	if err != nil {
		t.Fatal(err)
	}
	_, err = other.Get(ctx, ref.ResourceGroup, ref.Name, nil)
	var ce *cloud.Error
	if err = classify("RouteTables_Get", err); !errors.As(err, &ce) || ce.Kind != cloud.Fatal || ce.Code != "SubscriptionNotFound" {
		t.Errorf("another subscription: %v, want Fatal SubscriptionNotFound", err)
	}

	if err := e.sim.ARM().SetSubnetRouteTable(""); err != nil {
		t.Fatal(err)
	}
	_, err = p.RouteTable(ctx)
	if !errors.As(err, &ce) || ce.Kind != cloud.Fatal || !strings.Contains(err.Error(), "has no route table") {
		t.Errorf("a subnet without a route table: %v, want Fatal naming it", err)
	}
}

// TestEffectiveRoutesErrors: a throttled read is Throttled with the
// Retry-After, a read-only identity is Denied (the Reader role does not
// include the action), a fault failing the operation is a *cloud.Error with its code.
func TestEffectiveRoutesErrors(t *testing.T) {
	ctx := context.Background()
	t.Run("throttled", func(t *testing.T) {
		e := newEnv(t, sim.Options{Nodes: 1})
		e.cfg.MaxRetries = 1
		p := e.provider(t)
		e.sim.ARM().SetFaults(arm.Faults{Storm: &arm.Storm{Duration: arm.Duration(time.Minute), RetryAfterSeconds: 1}})
		_, err := p.EffectiveRoutes(ctx)
		var ce *cloud.Error
		if !errors.As(err, &ce) || ce.Kind != cloud.Throttled || ce.RetryAfter != time.Second || ce.Op != "NetworkInterfaces_GetEffectiveRouteTable" {
			t.Fatalf("error = %v, want Throttled with retry after 1s", err)
		}
		if got := e.sim.ARM().Stats().Calls["NetworkInterfaces_GetEffectiveRouteTable"]["429"]; got != 2 {
			t.Errorf("the POST was answered 429 %d times, want 2 (one try, one retry)", got)
		}
	})
	t.Run("denied", func(t *testing.T) {
		e := newEnv(t, sim.Options{Nodes: 1})
		tok, _ := e.sim.ARM().IssueReadOnlyToken(sim.Audience)
		ro := filepath.Join(t.TempDir(), "ro")
		if err := os.WriteFile(ro, []byte(tok), 0o600); err != nil {
			t.Fatal(err)
		}
		cred, err := NewTokenFileCredential(ro)
		if err != nil {
			t.Fatal(err)
		}
		e.cfg.Credential = cred
		p := e.provider(t)
		_, err = p.EffectiveRoutes(ctx)
		var ce *cloud.Error
		if !errors.As(err, &ce) || ce.Kind != cloud.Denied || !strings.Contains(ce.Message, "effectiveRouteTable/action") {
			t.Fatalf("error = %v, want Denied naming the action", err)
		}
		if _, err := p.RouteTable(ctx); err != nil {
			t.Errorf("a read-only identity reads the subnet: %v", err)
		}
	})
	t.Run("operation failed", func(t *testing.T) {
		e := newEnv(t, sim.Options{Nodes: 1})
		e.cfg.CallTimeout = 5 * time.Second
		p := e.provider(t)
		e.sim.ARM().SetFaults(arm.Faults{OperationFailure: &arm.OperationFailure{Rate: 1, Code: "InternalServerError"}})
		_, err := p.EffectiveRoutes(ctx)
		var ce *cloud.Error
		if !errors.As(err, &ce) || ce.Code != "InternalServerError" || ce.Op != "NetworkInterfaces_GetEffectiveRouteTable" {
			t.Fatalf("error = %v, want a *cloud.Error with the operation's code", err)
		}
		t.Logf("failed operation: %v (kind %s)", err, ce.Kind)
	})
}

// TestParseEffectiveRoute: entries that do not parse are refused, the
// others converted.
func TestParseEffectiveRoute(t *testing.T) {
	ok := &armnetwork.EffectiveRoute{
		Name: to.Ptr("r"), Source: to.Ptr(armnetwork.EffectiveRouteSourceUser), State: to.Ptr(armnetwork.EffectiveRouteStateActive),
		AddressPrefix: []*string{to.Ptr("10.244.1.0/24")}, NextHopType: to.Ptr(armnetwork.RouteNextHopTypeVirtualAppliance),
		NextHopIPAddress: []*string{to.Ptr("10.0.0.5")},
	}
	r, err := parseEffectiveRoute(ok)
	if err != nil || !r.Carries(netip.MustParsePrefix("10.244.1.0/24"), netip.MustParseAddr("10.0.0.5")) {
		t.Errorf("parse %+v: %+v, %v", ok, r, err)
	}
	for name, bad := range map[string]*armnetwork.EffectiveRoute{
		"nil":         nil,
		"no prefix":   {Name: to.Ptr("r")},
		"bad prefix":  {AddressPrefix: []*string{to.Ptr("10.244.1.0")}},
		"bad hop":     {AddressPrefix: []*string{to.Ptr("10.244.1.0/24")}, NextHopIPAddress: []*string{to.Ptr("")}},
		"nil pointer": {AddressPrefix: []*string{nil}},
	} {
		if _, err := parseEffectiveRoute(bad); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
}
