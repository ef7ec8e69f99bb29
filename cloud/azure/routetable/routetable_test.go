package routetable

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	azarm "github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	azcloud "github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v9"

	"github.com/vnet-cni/vnet-cni/cloud"
	"github.com/vnet-cni/vnet-cni/cloud/azure"
	"github.com/vnet-cni/vnet-cni/cloud/sim"
	"github.com/vnet-cni/vnet-cni/cloud/sim/arm"
)

var clusterCIDR = netip.MustParsePrefix("10.244.0.0/16")

type staticToken string

func (s staticToken) GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
	return azcore.AccessToken{Token: string(s), ExpiresOn: time.Now().Add(time.Hour)}, nil
}

type env struct {
	sim    *sim.Sim
	desc   sim.Description
	tables *armnetwork.RouteTablesClient
	routes *armnetwork.RoutesClient
}

// newEnv starts the simulated ARM (no fabric, no root) and returns the real
// SDK's clients of its route tables; the SDK does not retry, so every
// request the sim counts is one Sync made.
func newEnv(t *testing.T, maxRoutes int) *env {
	t.Helper()
	s, err := sim.Start(context.Background(), sim.Options{
		Nodes: 1, Dir: t.TempDir(), NoFabric: true, StaticToken: "tok", MaxRoutes: maxRoutes,
		OperationDuration: 30 * time.Millisecond, PollInterval: 20 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	d := s.Description()
	client, err := azure.NewHTTPClient(d.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	opts := &azarm.ClientOptions{ClientOptions: policy.ClientOptions{
		Cloud: azcloud.Configuration{Services: map[azcloud.ServiceName]azcloud.ServiceConfiguration{
			azcloud.ResourceManager: {Endpoint: d.ARMEndpoint, Audience: d.ARMAudience},
		}},
		Transport: client,
		Retry:     policy.RetryOptions{MaxRetries: -1},
	}}
	f, err := armnetwork.NewClientFactory(d.SubscriptionID, staticToken("tok"), opts)
	if err != nil {
		t.Fatal(err)
	}
	return &env{sim: s, desc: d, tables: f.NewRouteTablesClient(), routes: f.NewRoutesClient()}
}

func (e *env) reconciler(t *testing.T, client TablesClient, maxRoutes int) *Reconciler {
	t.Helper()
	if client == nil {
		client = e.tables
	}
	r, err := New(Config{Client: client, ResourceGroup: e.desc.ResourceGroup, Table: e.desc.RouteTable,
		ClusterCIDR: clusterCIDR, MaxRoutes: maxRoutes, PollFrequency: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// putRoute adds a route by hand, as an operator with the portal would.
func (e *env) putRoute(t *testing.T, name, prefix, hop string) {
	t.Helper()
	ctx := context.Background()
	p, err := e.routes.BeginCreateOrUpdate(ctx, e.desc.ResourceGroup, e.desc.RouteTable, name, armnetwork.Route{Properties: &armnetwork.RoutePropertiesFormat{
		AddressPrefix: to.Ptr(prefix), NextHopType: to.Ptr(armnetwork.RouteNextHopTypeVirtualAppliance), NextHopIPAddress: to.Ptr(hop),
	}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.PollUntilDone(ctx, nil); err != nil {
		t.Fatal(err)
	}
}

// table returns the table's routes as "name prefix>hop", sorted.
func (e *env) table(t *testing.T) []string {
	t.Helper()
	resp, err := e.tables.Get(context.Background(), e.desc.ResourceGroup, e.desc.RouteTable, nil)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range resp.Properties.Routes {
		out = append(out, fmt.Sprintf("%s %s>%s", *r.Name, *r.Properties.AddressPrefix, deref(r.Properties.NextHopIPAddress)))
	}
	slices.Sort(out)
	return out
}

func (e *env) calls(op, status string) int {
	if status == "" {
		n := 0
		for _, c := range e.sim.ARM().Stats().Calls[op] {
			n += c
		}
		return n
	}
	return e.sim.ARM().Stats().Calls[op][status]
}

func node(i int) Route {
	return Route{Node: fmt.Sprintf("node-%02d", i), Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i), 0}), 24),
		NextHop: netip.AddrFrom4([4]byte{10, 240, 0, byte(4 + i)})}
}

func TestRouteName(t *testing.T) {
	long := strings.Repeat("aks-nodepool1-", 10) + "vmss000001"
	for _, tc := range []struct{ node, want string }{
		{"aks-nodepool1-12345678-vmss000000", "vnetcni-aks-nodepool1-12345678-vmss000000"},
		{"node0", "vnetcni-node0"},
	} {
		if got := RouteName(tc.node); got != tc.want {
			t.Errorf("RouteName(%q) = %q, want %q", tc.node, got, tc.want)
		}
	}
	a, b := RouteName(long), RouteName(long+"x")
	if len(a) > maxName || !strings.HasPrefix(a, NamePrefix) || a == b || a != RouteName(long) {
		t.Errorf("long names: %q (%d) and %q: want ≤ %d characters, distinct, stable", a, len(a), b, maxName)
	}
	if got := RouteName("node:1/x"); strings.ContainsAny(got, ":/") || !strings.HasPrefix(got, NamePrefix+"node1x-") {
		t.Errorf("a name Azure does not allow: %q", got)
	}
}

// TestSync: the routes of the cluster's nodes are written in one PUT and
// not again while nothing changes; a changed next hop and a removed node
// are one PUT more; routes that are not vnet-cni's are never touched.
func TestSync(t *testing.T) {
	e := newEnv(t, 0)
	e.putRoute(t, "default-to-firewall", "0.0.0.0/0", "10.240.0.200")
	e.putRoute(t, "vnetcni-outside", "192.168.0.0/24", "10.240.0.201")   // our name, outside the cluster CIDR
	e.putRoute(t, "other-controller", "10.244.200.0/24", "10.240.0.202") // inside it, another name
	foreign := e.table(t)
	r := e.reconciler(t, nil, 0)
	ctx := context.Background()

	want := []Route{node(1), node(2), node(3)}
	res, err := r.Sync(ctx, want)
	if err != nil {
		t.Fatal(err)
	}
	if res.Puts != 1 || len(res.Added) != 3 || res.Foreign != 3 || len(res.Programmed) != 3 {
		t.Errorf("first sync: %+v, want 3 routes added in 1 PUT beside 3 foreign", res)
	}
	got := e.table(t)
	for _, f := range foreign {
		if !slices.Contains(got, f) {
			t.Errorf("foreign route %q gone or changed: %v", f, got)
		}
	}
	if !slices.Contains(got, "vnetcni-node-02 10.244.2.0/24>10.240.0.6") || len(got) != 6 {
		t.Errorf("table %v", got)
	}
	puts := e.calls("RouteTables_CreateOrUpdate", "")
	if res, err := r.Sync(ctx, want); err != nil || res.Puts != 0 {
		t.Errorf("nothing changed: %+v, %v; want no PUT", res, err)
	}
	if n := e.calls("RouteTables_CreateOrUpdate", "") - puts; n != 0 {
		t.Errorf("%d PUTs when nothing changed", n)
	}

	moved := node(2)
	moved.NextHop = netip.MustParseAddr("10.240.0.99")
	res, err = r.Sync(ctx, []Route{node(1), moved})
	if err != nil {
		t.Fatal(err)
	}
	if res.Puts != 1 || !slices.Equal(res.Changed, []string{"vnetcni-node-02"}) || !slices.Equal(res.Removed, []string{"vnetcni-node-03"}) {
		t.Errorf("a moved and a removed node: %+v", res)
	}
	got = e.table(t)
	if !slices.Contains(got, "vnetcni-node-02 10.244.2.0/24>10.240.0.99") || slices.ContainsFunc(got, func(s string) bool { return strings.HasPrefix(s, "vnetcni-node-03") }) {
		t.Errorf("table %v", got)
	}
	for _, f := range foreign {
		if !slices.Contains(got, f) {
			t.Errorf("foreign route %q gone or changed: %v", f, got)
		}
	}
	if res, err := r.Sync(ctx, nil); err != nil || len(res.Removed) != 2 || len(e.table(t)) != 3 {
		t.Errorf("no nodes: %+v, %v, table %v; want only the foreign routes left", res, err, e.table(t))
	}
}

// racingClient lets an operator add a route between Sync's read and its
// write, once.
type racingClient struct {
	*armnetwork.RouteTablesClient
	once sync.Once
	race func()
}

func (c *racingClient) Get(ctx context.Context, rg, name string, o *armnetwork.RouteTablesClientGetOptions) (armnetwork.RouteTablesClientGetResponse, error) {
	resp, err := c.RouteTablesClient.Get(ctx, rg, name, o)
	c.once.Do(c.race)
	return resp, err
}

// TestSyncRereadsOn412: a route added by hand between Sync's read and its
// write makes the write fail its If-Match (412); Sync reads again and
// writes the table with the hand-made route kept.
func TestSyncRereadsOn412(t *testing.T) {
	e := newEnv(t, 0)
	rc := &racingClient{RouteTablesClient: e.tables}
	rc.race = func() { e.putRoute(t, "ops-added", "172.16.0.0/24", "10.240.0.250") }
	r := e.reconciler(t, rc, 0)
	res, err := r.Sync(context.Background(), []Route{node(1), node(2)})
	if err != nil {
		t.Fatal(err)
	}
	if res.Puts != 2 || e.calls("RouteTables_CreateOrUpdate", "412") != 1 {
		t.Errorf("puts %d, 412s %d; want 2 PUTs, the first refused with 412", res.Puts, e.calls("RouteTables_CreateOrUpdate", "412"))
	}
	got := e.table(t)
	if !slices.Contains(got, "ops-added 172.16.0.0/24>10.240.0.250") || len(got) != 3 {
		t.Errorf("table %v, want the hand-made route and both nodes'", got)
	}
}

// TestSyncRouteLimit: with a limit of 3 and a foreign route, two of four
// nodes fit; the others are reported, the routes already there keep their
// place, and ARM never refuses the write.
func TestSyncRouteLimit(t *testing.T) {
	e := newEnv(t, 3)
	e.putRoute(t, "default-to-firewall", "0.0.0.0/0", "10.240.0.200")
	r := e.reconciler(t, nil, 3)
	ctx := context.Background()
	res, err := r.Sync(ctx, []Route{node(3), node(4)})
	if err != nil || len(res.Programmed) != 2 {
		t.Fatalf("two nodes: %+v, %v", res, err)
	}
	res, err = r.Sync(ctx, []Route{node(1), node(2), node(3), node(4)})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.Programmed, []string{"node-03", "node-04"}) || !slices.Equal(res.OverLimit, []string{"node-01", "node-02"}) || res.Puts != 0 {
		t.Errorf("four nodes under a limit of 3: %+v; want node-03 and node-04 kept, node-01 and node-02 over the limit, no write", res)
	}
	if n := e.calls("RouteTables_CreateOrUpdate", "400"); n != 0 {
		t.Errorf("%d writes refused by ARM, want none", n)
	}
	res, err = r.Sync(ctx, []Route{node(1), node(2), node(4)})
	if err != nil || !slices.Equal(res.Programmed, []string{"node-04", "node-01"}) || !slices.Equal(res.OverLimit, []string{"node-02"}) {
		t.Errorf("node-03 gone: %+v, %v; want its room to node-01", res, err)
	}
}

// TestSyncBadInput: a node without a pod CIDR, with one outside the
// cluster CIDR or overlapping another node's is rejected with the reason
// and nothing wrong is programmed; a node whose route exists keeps it when
// its pod CIDR turns bad.
func TestSyncBadInput(t *testing.T) {
	e := newEnv(t, 0)
	r := e.reconciler(t, nil, 0)
	ctx := context.Background()
	if _, err := r.Sync(ctx, []Route{node(1), node(2)}); err != nil {
		t.Fatal(err)
	}
	before := e.table(t)

	bad2 := node(2)
	bad2.Prefix = netip.MustParsePrefix("10.10.0.0/24")
	overlap := Route{Node: "node-00", Prefix: netip.MustParsePrefix("10.244.1.128/25"), NextHop: netip.MustParseAddr("10.240.0.30")}
	newA := Route{Node: "node-50", Prefix: netip.MustParsePrefix("10.244.50.0/24"), NextHop: netip.MustParseAddr("10.240.0.50")}
	newB := Route{Node: "node-51", Prefix: netip.MustParsePrefix("10.244.50.0/23"), NextHop: netip.MustParseAddr("10.240.0.51")}
	res, err := r.Sync(ctx, []Route{node(1), bad2, overlap, newA, newB,
		{Node: "node-60", NextHop: netip.MustParseAddr("10.240.0.60")},
		{Node: "node-61", Prefix: netip.MustParsePrefix("10.244.61.0/24")}})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"node-02": "outside the cluster CIDR",
		"node-00": "overlaps node node-01's", // node-01's route is in the table: it keeps it
		"node-51": "overlaps node node-50's", // both new: the lower name wins
		"node-60": "no pod CIDR",
		"node-61": "no IPv4 address",
	}
	for n, w := range want {
		if !strings.Contains(res.Rejected[n], w) {
			t.Errorf("%s: rejected %q, want %q", n, res.Rejected[n], w)
		}
	}
	if len(res.Rejected) != len(want) || !slices.Equal(res.Added, []string{"vnetcni-node-50"}) || len(res.Removed)+len(res.Changed) != 0 {
		t.Errorf("result %+v", res)
	}
	got := e.table(t)
	for _, b := range before {
		if !slices.Contains(got, b) {
			t.Errorf("route %q changed or gone (node-02's must stay while its pod CIDR is bad): %v", b, got)
		}
	}
	if len(got) != 3 {
		t.Errorf("table %v, want node-01's, node-02's and node-50's", got)
	}
}

// TestSync50Nodes: 50 nodes joining in five waves of ten take five table
// PUTs (one per wave); a 429 storm makes Sync fail Throttled with the
// storm's Retry-After before any write, and the controller's loop that
// waits for it and calls again converges with no extra PUT.
func TestSync50Nodes(t *testing.T) {
	e := newEnv(t, 0)
	r := e.reconciler(t, nil, 0)
	ctx := context.Background()
	var want []Route
	sync := func() (throttled int) {
		t.Helper()
		for {
			_, err := r.Sync(ctx, want)
			var ce *cloud.Error
			if errors.As(err, &ce) && ce.Kind == cloud.Throttled {
				throttled++
				if ce.RetryAfter <= 0 {
					t.Fatalf("throttled without Retry-After: %v", err)
				}
				time.Sleep(ce.RetryAfter)
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			return throttled
		}
	}
	start := time.Now()
	for wave := range 5 {
		for i := range 10 {
			want = append(want, node(wave*10+i+1))
		}
		sync()
	}
	puts := e.calls("RouteTables_CreateOrUpdate", "")
	if puts != 5 || len(e.table(t)) != 50 {
		t.Errorf("50 nodes in 5 waves: %d PUTs, %d routes; want 5 and 50", puts, len(e.table(t)))
	}
	t.Logf("50 nodes in 5 waves: %d table PUTs, %d GETs, %v", puts, e.calls("RouteTables_Get", ""), time.Since(start).Round(time.Millisecond))

	e.sim.ARM().SetFaults(arm.Faults{Storm: &arm.Storm{Duration: arm.Duration(1500 * time.Millisecond), RetryAfterSeconds: 1}})
	for i := range 5 {
		want = append(want, node(51+i))
	}
	throttled := sync()
	if throttled == 0 {
		t.Error("the storm did not throttle the sync")
	}
	if got := e.calls("RouteTables_CreateOrUpdate", ""); got != puts+1 {
		t.Errorf("PUTs after the storm: %d, want %d (one for the five new nodes)", got, puts+1)
	}
	t.Logf("5 more nodes in a 429 storm: throttled %d times, %d PUT", throttled, e.calls("RouteTables_CreateOrUpdate", "")-puts)
	if len(e.table(t)) != 55 {
		t.Errorf("%d routes, want 55", len(e.table(t)))
	}
}

// TestEnsure: a node's own route is added, then fixed, in one PUT each and
// not written again while it is as wanted; no other route, vnet-cni's or
// foreign, is ever removed or changed; a bad or overlapping route is
// rejected and a route that does not fit is reported, both without a write.
func TestEnsure(t *testing.T) {
	e := newEnv(t, 0)
	e.putRoute(t, "default-to-firewall", "0.0.0.0/0", "10.240.0.200")
	e.putRoute(t, "vnetcni-outside", "192.168.0.0/24", "10.240.0.201")
	r := e.reconciler(t, nil, 0)
	ctx := context.Background()
	if _, err := r.Sync(ctx, []Route{node(1), node(2)}); err != nil {
		t.Fatal(err)
	}
	before := e.table(t)
	puts := func() int { return e.calls("RouteTables_CreateOrUpdate", "") }
	p0 := puts()

	res, err := r.Ensure(ctx, node(3))
	if err != nil {
		t.Fatal(err)
	}
	if res.Puts != 1 || !slices.Equal(res.Added, []string{"vnetcni-node-03"}) || len(res.Changed)+len(res.Removed) != 0 ||
		!slices.Equal(res.Programmed, []string{"node-03"}) || puts()-p0 != 1 {
		t.Errorf("ensure a new node: %+v, %d PUTs; want node-03 added in one PUT", res, puts()-p0)
	}
	got := e.table(t)
	for _, b := range before {
		if !slices.Contains(got, b) {
			t.Errorf("route %q changed or gone: %v", b, got)
		}
	}
	if !slices.Contains(got, "vnetcni-node-03 10.244.3.0/24>10.240.0.7") || len(got) != len(before)+1 {
		t.Errorf("table %v", got)
	}

	p1 := puts()
	if res, err := r.Ensure(ctx, node(3)); err != nil || res.Puts != 0 || !slices.Equal(res.Programmed, []string{"node-03"}) {
		t.Errorf("ensure again: %+v, %v; want no write", res, err)
	}
	if puts() != p1 {
		t.Errorf("%d PUTs for a route already as wanted", puts()-p1)
	}

	moved := node(2)
	moved.NextHop = netip.MustParseAddr("10.240.0.99")
	res, err = r.Ensure(ctx, moved)
	if err != nil || res.Puts != 1 || !slices.Equal(res.Changed, []string{"vnetcni-node-02"}) || len(res.Added)+len(res.Removed) != 0 {
		t.Errorf("ensure a moved node: %+v, %v", res, err)
	}
	got = e.table(t)
	if !slices.Contains(got, "vnetcni-node-02 10.244.2.0/24>10.240.0.99") || !slices.Contains(got, "vnetcni-node-01 10.244.1.0/24>10.240.0.5") ||
		!slices.Contains(got, "vnetcni-outside 192.168.0.0/24>10.240.0.201") || len(got) != 5 {
		t.Errorf("table %v", got)
	}

	p2 := puts()
	outside := Route{Node: "node-40", Prefix: netip.MustParsePrefix("10.10.0.0/24"), NextHop: netip.MustParseAddr("10.240.0.40")}
	overlap := Route{Node: "node-41", Prefix: netip.MustParsePrefix("10.244.1.128/25"), NextHop: netip.MustParseAddr("10.240.0.41")}
	for _, tc := range []struct {
		w    Route
		want string
	}{
		{outside, "outside the cluster CIDR"},
		{overlap, "overlaps route vnetcni-node-01"},
		{Route{Node: "node-42", NextHop: netip.MustParseAddr("10.240.0.42")}, "no pod CIDR"},
	} {
		res, err := r.Ensure(ctx, tc.w)
		if err != nil || res.Puts != 0 || !strings.Contains(res.Rejected[tc.w.Node], tc.want) || len(res.Programmed) != 0 {
			t.Errorf("ensure %v: %+v, %v; want rejected %q, no write", tc.w, res, err, tc.want)
		}
	}
	if puts() != p2 || len(e.table(t)) != 5 {
		t.Errorf("bad input wrote %d times; table %v", puts()-p2, e.table(t))
	}
	if _, err := r.Ensure(ctx, Route{Prefix: netip.MustParsePrefix("10.244.9.0/24")}); err == nil {
		t.Error("ensure without a node name: no error")
	}
}

// TestEnsureRouteLimit: under a limit of 3 (one foreign route, two nodes'),
// a third node's absent route is reported and nothing is written, while an
// existing node's route is still fixed in place.
func TestEnsureRouteLimit(t *testing.T) {
	e := newEnv(t, 3)
	e.putRoute(t, "default-to-firewall", "0.0.0.0/0", "10.240.0.200")
	r := e.reconciler(t, nil, 3)
	ctx := context.Background()
	if _, err := r.Sync(ctx, []Route{node(1), node(2)}); err != nil {
		t.Fatal(err)
	}
	p0 := e.calls("RouteTables_CreateOrUpdate", "")
	res, err := r.Ensure(ctx, node(3))
	if err != nil || res.Puts != 0 || !slices.Equal(res.OverLimit, []string{"node-03"}) || len(res.Programmed) != 0 {
		t.Errorf("a third node over the limit: %+v, %v; want reported, no write", res, err)
	}
	if n := e.calls("RouteTables_CreateOrUpdate", "") - p0; n != 0 || len(e.table(t)) != 3 {
		t.Errorf("%d PUTs, table %v", n, e.table(t))
	}
	moved := node(1)
	moved.NextHop = netip.MustParseAddr("10.240.0.77")
	res, err = r.Ensure(ctx, moved)
	if err != nil || !slices.Equal(res.Changed, []string{"vnetcni-node-01"}) || len(res.OverLimit) != 0 {
		t.Errorf("fix an existing route at the limit: %+v, %v", res, err)
	}
	if got := e.table(t); !slices.Contains(got, "vnetcni-node-01 10.244.1.0/24>10.240.0.77") || !slices.Contains(got, "vnetcni-node-02 10.244.2.0/24>10.240.0.6") {
		t.Errorf("table %v", got)
	}
}

// TestEnsureRereadsOn412: a route added by hand between Ensure's read and
// its write costs one 412 and a re-read; both routes end in the table.
func TestEnsureRereadsOn412(t *testing.T) {
	e := newEnv(t, 0)
	rc := &racingClient{RouteTablesClient: e.tables}
	rc.race = func() { e.putRoute(t, "ops-added", "172.16.0.0/24", "10.240.0.250") }
	r := e.reconciler(t, rc, 0)
	res, err := r.Ensure(context.Background(), node(1))
	if err != nil {
		t.Fatal(err)
	}
	if res.Puts != 2 || e.calls("RouteTables_CreateOrUpdate", "412") != 1 {
		t.Errorf("puts %d, 412s %d; want 2 PUTs, the first refused with 412", res.Puts, e.calls("RouteTables_CreateOrUpdate", "412"))
	}
	if got := e.table(t); !slices.Contains(got, "ops-added 172.16.0.0/24>10.240.0.250") || !slices.Contains(got, "vnetcni-node-01 10.244.1.0/24>10.240.0.5") || len(got) != 2 {
		t.Errorf("table %v", got)
	}
}

// TestSyncKeepUnknown: a route whose node is not wanted stays while
// KeepUnknown says so (asked only about such routes), blocks an
// overlapping new route and takes room under the limit; once KeepUnknown
// says no, Sync removes it.
func TestSyncKeepUnknown(t *testing.T) {
	e := newEnv(t, 3)
	r := e.reconciler(t, nil, 3)
	ctx := context.Background()
	if _, err := r.Ensure(ctx, node(2)); err != nil {
		t.Fatal(err)
	}
	var asked []string
	keep := true
	opts := SyncOptions{KeepUnknown: func(name string) bool { asked = append(asked, name); return keep }}
	overlap := Route{Node: "node-07", Prefix: netip.MustParsePrefix("10.244.2.0/23"), NextHop: netip.MustParseAddr("10.240.0.70")}
	res, err := r.SyncWith(ctx, []Route{node(1), overlap, node(3), node(4)}, opts)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(asked, []string{"vnetcni-node-02"}) {
		t.Errorf("KeepUnknown asked about %v, want only vnetcni-node-02", asked)
	}
	if len(res.Removed) != 0 || !strings.Contains(res.Rejected["node-07"], "overlaps route vnetcni-node-02") ||
		!slices.Equal(res.Programmed, []string{"node-01", "node-03"}) || !slices.Equal(res.OverLimit, []string{"node-04"}) {
		t.Errorf("kept unknown route: %+v", res)
	}
	if got := e.table(t); !slices.Contains(got, "vnetcni-node-02 10.244.2.0/24>10.240.0.6") || len(got) != 3 {
		t.Errorf("table %v", got)
	}
	keep = false
	res, err = r.SyncWith(ctx, []Route{node(1), node(3), node(4)}, opts)
	if err != nil || !slices.Equal(res.Removed, []string{"vnetcni-node-02"}) || !slices.Equal(res.Added, []string{"vnetcni-node-04"}) {
		t.Errorf("unknown route no longer kept: %+v, %v; want it removed and node-04 in its room", res, err)
	}
}
