package arm

import (
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v9"
	"github.com/google/go-cmp/cmp"
)

func applianceRoute(prefix, hop string) armnetwork.Route {
	return armnetwork.Route{Properties: &armnetwork.RoutePropertiesFormat{
		AddressPrefix:    to.Ptr(prefix),
		NextHopType:      to.Ptr(armnetwork.RouteNextHopTypeVirtualAppliance),
		NextHopIPAddress: to.Ptr(hop),
	}}
}

func (e *env) putRoute(t *testing.T, name string, r armnetwork.Route) armnetwork.Route {
	t.Helper()
	ctx := testCtx(t)
	p, err := e.routes.BeginCreateOrUpdate(ctx, testRG, "rt", name, r, nil)
	if err != nil {
		t.Fatalf("put route %s: %v", name, err)
	}
	res, err := p.PollUntilDone(ctx, nil)
	if err != nil {
		t.Fatalf("put route %s: %v", name, err)
	}
	return res.Route
}

// TestRoutesCRUD: routes are created, read, listed, updated and deleted
// through long-running operations and reach the snapshot.
func TestRoutesCRUD(t *testing.T) {
	e := newEnv(t, nil)
	ctx := testCtx(t)

	rt, err := e.tables.Get(ctx, testRG, "rt", nil)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(rt.Properties.Routes); n != 0 {
		t.Errorf("new route table has %d routes", n)
	}
	if got := *rt.Properties.Subnets[0].ID; got != *subnetRef().ID {
		t.Errorf("route table subnet = %s, want %s", got, *subnetRef().ID)
	}

	got := e.putRoute(t, "node-0", applianceRoute("10.244.0.0/24", "10.0.0.4"))
	if *got.Properties.NextHopIPAddress != "10.0.0.4" || *got.Properties.ProvisioningState != armnetwork.ProvisioningStateSucceeded {
		t.Errorf("route = %+v", *got.Properties)
	}
	e.putRoute(t, "node-1", applianceRoute("10.244.1.0/24", "10.0.0.5"))
	e.putRoute(t, "node-0", applianceRoute("10.244.2.0/24", "10.0.0.4")) // update
	want := []RouteState{
		{Name: "node-0", Prefix: netip.MustParsePrefix("10.244.2.0/24"), NextHopType: "VirtualAppliance", NextHop: netip.MustParseAddr("10.0.0.4")},
		{Name: "node-1", Prefix: netip.MustParsePrefix("10.244.1.0/24"), NextHopType: "VirtualAppliance", NextHop: netip.MustParseAddr("10.0.0.5")},
	}
	if diff := cmp.Diff(want, e.s.Snapshot().Routes, netipOpts); diff != "" {
		t.Errorf("Snapshot routes (-want +got):\n%s", diff)
	}

	var listed []string
	for pager := e.routes.NewListPager(testRG, "rt", nil); pager.More(); {
		page, err := pager.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range page.Value {
			listed = append(listed, *r.Name+"="+*r.Properties.AddressPrefix)
		}
	}
	if diff := cmp.Diff([]string{"node-0=10.244.2.0/24", "node-1=10.244.1.0/24"}, listed); diff != "" {
		t.Errorf("List (-want +got):\n%s", diff)
	}

	var initial *http.Response
	p, err := e.routes.BeginDelete(policy.WithCaptureResponse(ctx, &initial), testRG, "rt", "node-1", nil)
	if err != nil {
		t.Fatalf("BeginDelete: %v", err)
	}
	if initial.StatusCode != http.StatusAccepted || initial.Header.Get("Location") == "" || initial.Header.Get("Azure-AsyncOperation") == "" {
		t.Errorf("DELETE answered %d with Location %q and Azure-AsyncOperation %q, want 202 and both",
			initial.StatusCode, initial.Header.Get("Location"), initial.Header.Get("Azure-AsyncOperation"))
	}
	if _, err := p.PollUntilDone(ctx, nil); err != nil {
		t.Fatalf("delete: %v", err)
	}
	_, err = e.routes.Get(ctx, testRG, "rt", "node-1", nil)
	wantAPIError(t, err, http.StatusNotFound, CodeNotFound)

	p, err = e.routes.BeginDelete(policy.WithCaptureResponse(ctx, &initial), testRG, "rt", "node-1", nil)
	if err != nil {
		t.Fatalf("delete of a missing route: %v", err)
	}
	if initial.StatusCode != http.StatusNoContent {
		t.Errorf("delete of a missing route answered %d, want 204", initial.StatusCode)
	}
	if _, err := p.PollUntilDone(ctx, nil); err != nil {
		t.Errorf("delete of a missing route: %v", err)
	}
	if n := len(e.s.Snapshot().Routes); n != 1 {
		t.Errorf("Snapshot has %d routes, want 1", n)
	}
}

// TestRouteValidation: bad routes are refused with 400.
func TestRouteValidation(t *testing.T) {
	e := newEnv(t, nil)
	ctx := noRetry(testCtx(t))
	none := armnetwork.Route{Properties: &armnetwork.RoutePropertiesFormat{
		AddressPrefix: to.Ptr("10.1.0.0/16"), NextHopType: to.Ptr(armnetwork.RouteNextHopTypeNone), NextHopIPAddress: to.Ptr("10.0.0.4"),
	}}
	tests := []struct {
		name  string
		route armnetwork.Route
		code  string
	}{
		{"not a prefix", applianceRoute("10.244.0.0", "10.0.0.4"), CodeInvalidAddressPrefix},
		{"host bits set", applianceRoute("10.244.0.1/24", "10.0.0.4"), CodeInvalidCIDR},
		{"appliance without next hop", applianceRoute("10.244.0.0/24", ""), CodeNextHopRequired},
		{"appliance with a bad next hop", applianceRoute("10.244.0.0/24", "ten"), CodeInvalidNextHop},
		{"next hop on None", none, CodeNextHopNotAllowed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.routes.BeginCreateOrUpdate(ctx, testRG, "rt", "r", tt.route, nil)
			wantAPIError(t, err, http.StatusBadRequest, tt.code)
		})
	}
}

// TestRouteTablePutAndDefaultLimit: a route table PUT replaces its routes;
// 400 routes is Azure's default limit.
func TestRouteTablePutAndDefaultLimit(t *testing.T) {
	e := newEnv(t, nil)
	ctx := testCtx(t)
	build := func(n int) armnetwork.RouteTable {
		rt := armnetwork.RouteTable{Location: to.Ptr(testLocation), Properties: &armnetwork.RouteTablePropertiesFormat{}}
		for i := range n {
			r := applianceRoute(fmt.Sprintf("10.%d.%d.0/24", 100+i/256, i%256), "10.0.0.4")
			r.Name = to.Ptr(fmt.Sprintf("r%d", i))
			rt.Properties.Routes = append(rt.Properties.Routes, &r)
		}
		return rt
	}
	_, err := e.tables.BeginCreateOrUpdate(noRetry(ctx), testRG, "rt", build(DefaultMaxRoutes+1), nil)
	wantAPIError(t, err, http.StatusBadRequest, CodeRouteLimit)

	p, err := e.tables.BeginCreateOrUpdate(ctx, testRG, "rt", build(DefaultMaxRoutes), nil)
	if err != nil {
		t.Fatalf("PUT with %d routes: %v", DefaultMaxRoutes, err)
	}
	res, err := p.PollUntilDone(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(res.Properties.Routes); n != DefaultMaxRoutes {
		t.Errorf("route table has %d routes, want %d", n, DefaultMaxRoutes)
	}
	_, err = e.routes.BeginCreateOrUpdate(noRetry(ctx), testRG, "rt", "one-more", applianceRoute("10.200.0.0/24", "10.0.0.4"), nil)
	wantAPIError(t, err, http.StatusBadRequest, CodeRouteLimit)

	p, err = e.tables.BeginCreateOrUpdate(ctx, testRG, "rt", build(1), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.PollUntilDone(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if n := len(e.s.Snapshot().Routes); n != 1 {
		t.Errorf("after replacing with one route the snapshot has %d", n)
	}
}

// TestRouteLimitConfigurable: MaxRoutes caps single route PUTs.
func TestRouteLimitConfigurable(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxRoutes = 2 })
	e.putRoute(t, "a", applianceRoute("10.244.0.0/24", "10.0.0.4"))
	e.putRoute(t, "b", applianceRoute("10.244.1.0/24", "10.0.0.4"))
	e.putRoute(t, "a", applianceRoute("10.244.2.0/24", "10.0.0.4")) // updates do not count
	_, err := e.routes.BeginCreateOrUpdate(noRetry(testCtx(t)), testRG, "rt", "c", applianceRoute("10.244.3.0/24", "10.0.0.4"), nil)
	wantAPIError(t, err, http.StatusBadRequest, CodeRouteLimit)
}

// TestRouteEffectDelay: a route table change reaches the snapshot (what the
// fabric follows) RouteEffectDelay after its operation succeeded, while ARM
// already shows it; versions take effect in order, a delete too, and
// Changed is signalled when one does.
func TestRouteEffectDelay(t *testing.T) {
	const delay = 300 * time.Millisecond
	e := newEnv(t, func(c *Config) { c.RouteEffectDelay = delay })
	effective := func() []string {
		var names []string
		for _, r := range e.s.Snapshot().Routes {
			names = append(names, r.Name+"="+r.Prefix.String())
		}
		return names
	}
	drain := func() {
		for {
			select {
			case <-e.s.Changed():
			default:
				return
			}
		}
	}
	e.putRoute(t, "a", applianceRoute("10.244.0.0/24", "10.0.0.4"))
	drain()
	if got := effective(); len(got) != 0 {
		t.Errorf("right after the PUT succeeded the fabric follows %v, want nothing yet", got)
	}
	if got, err := e.routes.Get(testCtx(t), testRG, "rt", "a", nil); err != nil || *got.Properties.ProvisioningState != armnetwork.ProvisioningStateSucceeded {
		t.Errorf("ARM's view of the route: %v, %v; want it there, Succeeded", got, err)
	}
	e.putRoute(t, "a", applianceRoute("10.244.9.0/24", "10.0.0.4"))
	select {
	case <-e.s.Changed():
	case <-time.After(5 * delay):
		t.Fatal("no Changed signal when the first version took effect")
	}
	deadline := time.Now().Add(10 * delay)
	for !slices.Equal(effective(), []string{"a=10.244.9.0/24"}) && time.Now().Before(deadline) {
		time.Sleep(delay / 10)
	}
	if got := effective(); !slices.Equal(got, []string{"a=10.244.9.0/24"}) {
		t.Fatalf("effective routes %v, want the second version", got)
	}
	p, err := e.routes.BeginDelete(testCtx(t), testRG, "rt", "a", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.PollUntilDone(testCtx(t), nil); err != nil {
		t.Fatal(err)
	}
	if got := effective(); len(got) != 1 {
		t.Errorf("right after the DELETE succeeded the fabric follows %v, want the route still", got)
	}
	time.Sleep(2 * delay)
	if got := effective(); len(got) != 0 {
		t.Errorf("after the delay the deleted route is still followed: %v", got)
	}
}
