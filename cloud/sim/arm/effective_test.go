package arm

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v9"
	"github.com/google/go-cmp/cmp"
)

// effectiveRoutes reads NIC name's effective routes through the SDK's
// long-running operation, as "source/state/prefix/hoptype/hop[/name]".
func (e *env) effectiveRoutes(t *testing.T, name string) []string {
	t.Helper()
	ctx := testCtx(t)
	p, err := e.nics.BeginGetEffectiveRouteTable(ctx, testRG, name, nil)
	if err != nil {
		t.Fatalf("effective routes of %s: %v", name, err)
	}
	res, err := p.PollUntilDone(ctx, nil)
	if err != nil {
		t.Fatalf("effective routes of %s: %v", name, err)
	}
	out := []string{}
	for _, r := range res.Value {
		var prefixes, hops []string
		for _, p := range r.AddressPrefix {
			prefixes = append(prefixes, *p)
		}
		for _, h := range r.NextHopIPAddress {
			hops = append(hops, *h)
		}
		s := strings.Join([]string{string(*r.Source), string(*r.State), strings.Join(prefixes, ","), string(*r.NextHopType), strings.Join(hops, ",")}, "/")
		if r.Name != nil {
			s += "/" + *r.Name
		}
		out = append(out, s)
	}
	return out
}

// TestEffectiveRoutes: a NIC's effective routes are the VNet's and the
// internet's default routes and the subnet table's user routes once they
// took effect (RouteEffectDelay after the PUT succeeded), not before; a
// deleted route leaves them after the delay too; a user 0.0.0.0/0 makes the
// default one Invalid; a route to a NIC that does not forward is listed.
func TestEffectiveRoutes(t *testing.T) {
	const delay = 400 * time.Millisecond
	e := newEnv(t, func(c *Config) { c.RouteEffectDelay = delay })
	ctx := testCtx(t)
	base := []string{"Default/Active/10.0.0.0/16/VnetLocal/", "Default/Active/0.0.0.0/0/Internet/"}
	if diff := cmp.Diff(base, e.effectiveRoutes(t, "node-0")); diff != "" {
		t.Errorf("effective routes at start (-want +got):\n%s", diff)
	}

	// node-1's NIC does not forward: Azure still lists the route.
	e.putRoute(t, "node-1", applianceRoute("10.244.1.0/24", "10.0.0.5"))
	put := time.Now()
	got := e.effectiveRoutes(t, "node-0")
	if time.Since(put) < delay {
		if diff := cmp.Diff(base, got); diff != "" {
			t.Errorf("effective routes before the route took effect (-want +got):\n%s", diff)
		}
	} else {
		t.Logf("the read took %s, longer than the %s effect delay: not checked", time.Since(put), delay)
	}
	time.Sleep(delay - time.Since(put) + 50*time.Millisecond)
	with := append(append([]string{}, base...), "User/Active/10.244.1.0/24/VirtualAppliance/10.0.0.5/node-1")
	if diff := cmp.Diff(with, e.effectiveRoutes(t, "node-1")); diff != "" {
		t.Errorf("effective routes after the delay (-want +got):\n%s", diff)
	}

	e.putRoute(t, "default", armnetwork.Route{Properties: &armnetwork.RoutePropertiesFormat{
		AddressPrefix: to.Ptr("0.0.0.0/0"), NextHopType: to.Ptr(armnetwork.RouteNextHopTypeNone),
	}})
	time.Sleep(delay + 50*time.Millisecond)
	want := []string{
		"Default/Active/10.0.0.0/16/VnetLocal/", "Default/Invalid/0.0.0.0/0/Internet/",
		"User/Active/0.0.0.0/0/None//default", "User/Active/10.244.1.0/24/VirtualAppliance/10.0.0.5/node-1",
	}
	if diff := cmp.Diff(want, e.effectiveRoutes(t, "node-0")); diff != "" {
		t.Errorf("effective routes with a user default route (-want +got):\n%s", diff)
	}

	for _, name := range []string{"node-1", "default"} {
		p, err := e.routes.BeginDelete(ctx, testRG, "rt", name, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.PollUntilDone(ctx, nil); err != nil {
			t.Fatal(err)
		}
	}
	deleted := time.Now()
	if got := e.effectiveRoutes(t, "node-0"); time.Since(deleted) < delay && len(got) != 4 {
		t.Errorf("deleted routes left the effective routes before the delay: %v", got)
	}
	time.Sleep(delay - time.Since(deleted) + 50*time.Millisecond)
	if diff := cmp.Diff(base, e.effectiveRoutes(t, "node-0")); diff != "" {
		t.Errorf("effective routes after the delete took effect (-want +got):\n%s", diff)
	}
	if got := e.s.Stats().Calls["NetworkInterfaces_GetEffectiveRouteTable"]["202"]; got < 6 {
		t.Errorf("%d effective route reads answered 202, want at least 6", got)
	}
}

// TestEffectiveRoutesLRO: the POST is answered 202 with both poll URLs, the
// Location URL 200 with the routes once done; an unknown NIC is 404; a
// read-only identity is refused the action; faults apply to it.
func TestEffectiveRoutesLRO(t *testing.T) {
	e := newEnv(t, nil)
	path := nicPath("node-0") + "/effectiveRouteTable?api-version=" + apiVersion
	resp, body := e.rawRequest(t, http.MethodPost, path, e.token(), nil)
	if resp.StatusCode != http.StatusAccepted || resp.Header.Get("Azure-AsyncOperation") == "" || resp.Header.Get("Location") == "" {
		t.Fatalf("POST: %d %v %s, want 202 with Azure-AsyncOperation and Location", resp.StatusCode, resp.Header, body)
	}
	loc := strings.TrimPrefix(resp.Header.Get("Location"), e.ts.URL)
	if r, _ := e.rawRequest(t, http.MethodGet, loc, e.token(), nil); r.StatusCode != http.StatusAccepted {
		t.Errorf("Location while in progress: %d, want 202", r.StatusCode)
	}
	time.Sleep(60 * time.Millisecond)
	r, body := e.rawRequest(t, http.MethodGet, loc, e.token(), nil)
	if r.StatusCode != http.StatusOK || !strings.Contains(body, `"nextHopType":"VnetLocal"`) {
		t.Errorf("Location when done: %d %s, want 200 with the routes", r.StatusCode, body)
	}

	_, err := e.nics.BeginGetEffectiveRouteTable(testCtx(t), testRG, "nope", nil)
	wantAPIError(t, err, http.StatusNotFound, CodeResourceNotFound)

	tok, _ := e.s.IssueReadOnlyToken("https://management.azure.com/")
	resp, body = e.rawRequest(t, http.MethodPost, path, tok, nil)
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "Microsoft.Network/networkInterfaces/effectiveRouteTable/action") {
		t.Errorf("read-only identity: %d %s, want 403 naming the action", resp.StatusCode, body)
	}

	e.s.SetFaults(Faults{Errors: map[string]ErrorFault{
		"NetworkInterfaces_GetEffectiveRouteTable": {Rate: 1, Status: http.StatusInternalServerError, Code: "InternalServerError"},
	}})
	_, err = e.nics.BeginGetEffectiveRouteTable(noRetry(testCtx(t)), testRG, "node-0", nil)
	wantAPIError(t, err, http.StatusInternalServerError, "InternalServerError")
}

// TestSubnetRouteTableAssociation: the subnet shows its route table and the
// table its subnet; dissociated, neither does, and the effective routes and
// the snapshot lose the table's routes.
func TestSubnetRouteTableAssociation(t *testing.T) {
	e := newEnv(t, nil)
	ctx := testCtx(t)
	e.putRoute(t, "node-1", applianceRoute("10.244.1.0/24", "10.0.0.5"))
	sub, err := e.subnets.Get(ctx, testRG, "vnet", "nodes", nil)
	if err != nil {
		t.Fatal(err)
	}
	want := "/subscriptions/" + testSub + "/resourceGroups/" + testRG + "/providers/Microsoft.Network/routeTables/rt"
	if sub.Properties.RouteTable == nil || *sub.Properties.RouteTable.ID != want {
		t.Fatalf("subnet route table = %+v, want %s", sub.Properties.RouteTable, want)
	}
	if n := len(e.effectiveRoutes(t, "node-0")); n != 3 || len(e.s.Snapshot().Routes) != 1 {
		t.Errorf("%d effective routes, %d in the snapshot; want 3 and 1", n, len(e.s.Snapshot().Routes))
	}

	if err := e.s.SetSubnetRouteTable(""); err != nil {
		t.Fatal(err)
	}
	sub, err = e.subnets.Get(ctx, testRG, "vnet", "nodes", nil)
	if err != nil {
		t.Fatal(err)
	}
	if sub.Properties.RouteTable != nil {
		t.Errorf("dissociated subnet shows route table %+v", sub.Properties.RouteTable)
	}
	rt, err := e.tables.Get(ctx, testRG, "rt", nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(rt.Properties.Subnets) != 0 {
		t.Errorf("dissociated table shows subnets %v", rt.Properties.Subnets)
	}
	if n := len(e.effectiveRoutes(t, "node-0")); n != 2 || len(e.s.Snapshot().Routes) != 0 {
		t.Errorf("%d effective routes, %d in the snapshot; want 2 and 0", n, len(e.s.Snapshot().Routes))
	}
	if err := e.s.SetSubnetRouteTable("missing"); err == nil {
		t.Error("associating a missing table succeeded")
	}
	if err := e.s.SetSubnetRouteTable("RT"); err != nil {
		t.Fatal(err)
	}
	if len(e.s.Snapshot().Routes) != 1 {
		t.Error("re-associated table's routes are not in the snapshot")
	}
}
