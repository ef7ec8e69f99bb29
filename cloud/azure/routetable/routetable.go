// Package routetable keeps the routes vnet-cni owns in an Azure route table
// (UDR) equal to what the cluster wants: one route per node, its pod CIDR
// via the node's primary address (next hop VirtualAppliance), for kubenet
// mode. Every change of a round goes into one whole-table PUT with If-Match
// on the table's ETag; a 412 re-reads and tries again; nothing is written
// when nothing changed. Routes that are not vnet-cni's (another name, or a
// prefix outside the cluster CIDR) are never changed or removed, and count
// against the table's route limit. Sync (the leader's) makes vnet-cni's
// routes exactly the wanted ones; Ensure (every node's, for itself) adds or
// fixes one node's route and touches nothing else; both share one planner.
package routetable

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v9"

	"github.com/vnet-cni/vnet-cni/cloud"
	"github.com/vnet-cni/vnet-cni/cloud/azure"
)

// NamePrefix starts the name of every route vnet-cni owns.
const NamePrefix = "vnetcni-"

// DefaultMaxRoutes is Azure's default route limit per route table since
// 2026 (400 before, and in older subscriptions).
const DefaultMaxRoutes = 1000

// maxName is Azure's limit on a route's name.
const maxName = 80

// RouteName is the name of node's route: NamePrefix and the node's name,
// or for a name that does not fit or has characters Azure does not allow,
// a readable part of it and a hash of the whole.
func RouteName(node string) string {
	ok := len(NamePrefix)+len(node) <= maxName
	for _, c := range node {
		if !nameChar(c) {
			ok = false
		}
	}
	if ok && node != "" && !strings.HasSuffix(node, ".") && !strings.HasSuffix(node, "-") {
		return NamePrefix + node
	}
	sum := sha256.Sum256([]byte(node))
	keep := make([]byte, 0, 50)
	for _, c := range []byte(node) {
		if len(keep) == cap(keep) {
			break
		}
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' {
			keep = append(keep, c)
		}
	}
	return NamePrefix + string(keep) + "-" + hex.EncodeToString(sum[:6])
}

// nameChar reports whether Azure allows c in a route's name.
func nameChar(c rune) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_'
}

// Route is a route the cluster wants: node's pod CIDR via its address.
type Route struct {
	Node    string
	Prefix  netip.Prefix
	NextHop netip.Addr
}

// TablesClient is the part of armnetwork's RouteTablesClient the
// Reconciler uses.
type TablesClient interface {
	Get(ctx context.Context, resourceGroup, table string, opts *armnetwork.RouteTablesClientGetOptions) (armnetwork.RouteTablesClientGetResponse, error)
	BeginCreateOrUpdate(ctx context.Context, resourceGroup, table string, params armnetwork.RouteTable, opts *armnetwork.RouteTablesClientBeginCreateOrUpdateOptions) (*runtime.Poller[armnetwork.RouteTablesClientCreateOrUpdateResponse], error)
}

// Config configures a Reconciler.
type Config struct {
	Client        TablesClient
	ResourceGroup string
	Table         string
	// ClusterCIDR holds every pod CIDR; only routes inside it can be
	// vnet-cni's.
	ClusterCIDR netip.Prefix
	// MaxRoutes is the table's route limit (default DefaultMaxRoutes).
	MaxRoutes int
	// MaxConflicts bounds the re-reads after a 412 within one Sync
	// (default 5).
	MaxConflicts int
	// PollFrequency is used while a PUT's operation runs (default 1s).
	PollFrequency time.Duration
	Logger        *slog.Logger
}

// Reconciler makes the table hold the wanted routes.
type Reconciler struct {
	cfg Config
}

// New checks cfg and returns a Reconciler.
func New(cfg Config) (*Reconciler, error) {
	switch {
	case cfg.Client == nil:
		return nil, errors.New("routetable: no client")
	case cfg.ResourceGroup == "" || cfg.Table == "":
		return nil, errors.New("routetable: resource group and table are required")
	case !cfg.ClusterCIDR.IsValid() || !cfg.ClusterCIDR.Addr().Is4() || cfg.ClusterCIDR.Masked() != cfg.ClusterCIDR:
		return nil, fmt.Errorf("routetable: cluster CIDR %s is not an IPv4 network", cfg.ClusterCIDR)
	case cfg.MaxRoutes < 0 || cfg.MaxConflicts < 0:
		return nil, errors.New("routetable: negative limits")
	}
	if cfg.MaxRoutes == 0 {
		cfg.MaxRoutes = DefaultMaxRoutes
	}
	if cfg.MaxConflicts == 0 {
		cfg.MaxConflicts = 5
	}
	if cfg.PollFrequency == 0 {
		cfg.PollFrequency = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Reconciler{cfg: cfg}, nil
}

// Result is what a Sync did and found.
type Result struct {
	// Puts counts the table PUTs made (a 412 included).
	Puts int
	// Added, Changed and Removed name the routes written.
	Added, Changed, Removed []string
	// Programmed are the nodes whose route is in the table as wanted.
	Programmed []string
	// OverLimit are the nodes whose route did not fit under MaxRoutes.
	OverLimit []string
	// Rejected are the nodes whose route is not programmed because it is
	// wrong, with the reason; an existing route of such a node is left as
	// it is rather than removed or changed to something wrong.
	Rejected map[string]string
	// Foreign is the number of routes in the table that are not vnet-cni's.
	Foreign int
}

// SyncOptions adjust one SyncWith.
type SyncOptions struct {
	// KeepUnknown is asked about every route vnet-cni owns whose node is
	// not in want: true keeps the route as it is (it then counts against
	// the limit, and a wanted route overlapping it is rejected), false
	// removes it. Nil removes them all. The route controller keeps the
	// route of a node its informer has not seen yet, which the node's own
	// daemon may have added with Ensure.
	KeepUnknown func(routeName string) bool
}

// Sync is SyncWith without options: the routes vnet-cni owns become
// exactly want.
func (r *Reconciler) Sync(ctx context.Context, want []Route) (Result, error) {
	return r.SyncWith(ctx, want, SyncOptions{})
}

// SyncWith reads the table once and, when the routes vnet-cni owns differ
// from want, writes the whole table once with If-Match; on 412 it reads
// again, at most MaxConflicts times. Errors are classified cloud.Errors (a
// 429 is cloud.Throttled with its RetryAfter): the caller backs off and
// calls SyncWith again.
func (r *Reconciler) SyncWith(ctx context.Context, want []Route, opts SyncOptions) (Result, error) {
	return r.apply(ctx, want, planOptions{keep: opts.KeepUnknown})
}

// Ensure puts one node's route into the table, as every node's daemon does
// for itself: it adds the route, or fixes it, and never removes or changes
// any other route. An absent route that does not fit under MaxRoutes is
// reported in OverLimit and nothing is written; a route outside the
// cluster CIDR or overlapping another node's route in the table is
// reported in Rejected (the node's existing route, if any, stays as it
// is). Nothing is written when the route is already as wanted; the write
// uses If-Match and a 412 reads again, as in Sync.
func (r *Reconciler) Ensure(ctx context.Context, want Route) (Result, error) {
	if want.Node == "" {
		return Result{}, errors.New("routetable: ensure a route without a node name")
	}
	return r.apply(ctx, []Route{want}, planOptions{keep: func(string) bool { return true }, keepOverLimit: true})
}

// apply is the read, plan, write loop of SyncWith and Ensure.
func (r *Reconciler) apply(ctx context.Context, want []Route, opts planOptions) (Result, error) {
	var res Result
	for range r.cfg.MaxConflicts + 1 {
		table, etag, err := r.read(ctx)
		if err != nil {
			return res, err
		}
		plan := r.plan(table, want, opts)
		res.Added, res.Changed, res.Removed = plan.added, plan.changed, plan.removed
		res.Programmed, res.OverLimit, res.Rejected, res.Foreign = plan.programmed, plan.overLimit, plan.rejected, plan.foreign
		if len(plan.added)+len(plan.changed)+len(plan.removed) == 0 {
			return res, nil
		}
		table.Properties.Routes = plan.routes
		res.Puts++
		err = r.put(ctx, table, etag)
		if err == nil {
			r.cfg.Logger.Info("route table written", "table", r.cfg.Table, "added", plan.added,
				"changed", plan.changed, "removed", plan.removed, "overLimit", len(plan.overLimit))
			return res, nil
		}
		var re *azcore.ResponseError
		if errors.As(err, &re) && re.StatusCode == http.StatusPreconditionFailed {
			r.cfg.Logger.Info("route table changed since it was read; reading it again", "table", r.cfg.Table)
			continue
		}
		return res, err
	}
	return res, &cloud.Error{Kind: cloud.Conflict, Op: "RouteTables_CreateOrUpdate",
		Err: fmt.Errorf("route table %s changed under every one of %d writes", r.cfg.Table, r.cfg.MaxConflicts+1)}
}

func (r *Reconciler) read(ctx context.Context) (armnetwork.RouteTable, string, error) {
	resp, err := r.cfg.Client.Get(ctx, r.cfg.ResourceGroup, r.cfg.Table, nil)
	if err != nil {
		return armnetwork.RouteTable{}, "", azure.Classify("RouteTables_Get", err)
	}
	t := resp.RouteTable
	if t.Properties == nil {
		t.Properties = &armnetwork.RouteTablePropertiesFormat{}
	}
	etag := ""
	if t.Etag != nil {
		etag = *t.Etag
	}
	return t, etag, nil
}

func (r *Reconciler) put(ctx context.Context, table armnetwork.RouteTable, etag string) error {
	const op = "RouteTables_CreateOrUpdate"
	putCtx := ctx
	if etag != "" {
		putCtx = policy.WithHTTPHeader(ctx, http.Header{"If-Match": []string{etag}})
	}
	// Read-only parts of the table are not sent back.
	body := armnetwork.RouteTable{Location: table.Location, Tags: table.Tags, Properties: &armnetwork.RouteTablePropertiesFormat{
		Routes:                     table.Properties.Routes,
		DisableBgpRoutePropagation: table.Properties.DisableBgpRoutePropagation,
	}}
	poller, err := r.cfg.Client.BeginCreateOrUpdate(putCtx, r.cfg.ResourceGroup, r.cfg.Table, body, nil)
	if err != nil {
		return azure.Classify(op, err)
	}
	if _, err := poller.PollUntilDone(ctx, &runtime.PollUntilDoneOptions{Frequency: r.cfg.PollFrequency}); err != nil {
		return azure.Classify(op, err)
	}
	return nil
}

// planOptions make plan serve both SyncWith and Ensure.
type planOptions struct {
	// keep says whether an owned route whose node is not in want stays as
	// it is (nil: none stays).
	keep func(name string) bool
	// keepOverLimit leaves a wanted node's existing route as it is when
	// there is no room for it, instead of removing it.
	keepOverLimit bool
}

type plan struct {
	routes                  []*armnetwork.Route
	added, changed, removed []string
	programmed, overLimit   []string
	rejected                map[string]string
	foreign                 int
}

// owned reports whether rt is vnet-cni's: named by the convention, a
// prefix inside the cluster CIDR.
func (r *Reconciler) owned(rt *armnetwork.Route) (netip.Prefix, bool) {
	if rt == nil || rt.Name == nil || !strings.HasPrefix(*rt.Name, NamePrefix) || rt.Properties == nil || rt.Properties.AddressPrefix == nil {
		return netip.Prefix{}, false
	}
	p, err := netip.ParsePrefix(*rt.Properties.AddressPrefix)
	if err != nil || !p.Addr().Is4() || p.Bits() < r.cfg.ClusterCIDR.Bits() || !r.cfg.ClusterCIDR.Contains(p.Addr()) {
		return netip.Prefix{}, false
	}
	return p, true
}

func sameRoute(rt *armnetwork.Route, w Route) bool {
	p := rt.Properties
	return p != nil && p.AddressPrefix != nil && *p.AddressPrefix == w.Prefix.String() &&
		p.NextHopType != nil && *p.NextHopType == armnetwork.RouteNextHopTypeVirtualAppliance &&
		p.NextHopIPAddress != nil && *p.NextHopIPAddress == w.NextHop.String()
}

// plan computes the table's routes: the foreign ones as they are, the
// owned ones opts keep as they are, then the valid wanted ones that fit,
// routes already in the table first.
func (r *Reconciler) plan(table armnetwork.RouteTable, want []Route, opts planOptions) plan {
	pl := plan{rejected: map[string]string{}}
	existing := map[string]*armnetwork.Route{} // owned, by name
	var foreign []*armnetwork.Route
	for _, rt := range table.Properties.Routes {
		if _, ok := r.owned(rt); ok {
			existing[*rt.Name] = rt
			continue
		}
		if rt != nil {
			foreign = append(foreign, rt)
		}
	}
	pl.foreign = len(foreign)

	// Validate, then resolve overlaps: a route already in the table keeps
	// its place, otherwise the lower node name wins.
	sorted := slices.Clone(want)
	slices.SortFunc(sorted, func(a, b Route) int { return strings.Compare(a.Node, b.Node) })
	valid := sorted[:0]
	seen := map[string]bool{}
	for _, w := range sorted {
		switch {
		case w.Node == "":
			continue
		case seen[w.Node]:
			pl.rejected[w.Node] = "the node is listed twice"
			continue
		case !w.Prefix.IsValid():
			pl.rejected[w.Node] = "the node has no pod CIDR"
		case !w.Prefix.Addr().Is4() || w.Prefix.Masked() != w.Prefix:
			pl.rejected[w.Node] = fmt.Sprintf("pod CIDR %s is not an IPv4 network", w.Prefix)
		case w.Prefix.Bits() < r.cfg.ClusterCIDR.Bits() || !r.cfg.ClusterCIDR.Contains(w.Prefix.Addr()):
			pl.rejected[w.Node] = fmt.Sprintf("pod CIDR %s is outside the cluster CIDR %s", w.Prefix, r.cfg.ClusterCIDR)
		case !w.NextHop.IsValid() || !w.NextHop.Is4():
			pl.rejected[w.Node] = "the node has no IPv4 address for the next hop"
		default:
			valid = append(valid, w)
		}
		seen[w.Node] = true
	}
	// Owned routes of nodes not in want that stay as they are.
	var kept []*armnetwork.Route
	if opts.keep != nil {
		names := map[string]bool{}
		for n := range seen {
			names[RouteName(n)] = true
		}
		for _, name := range slices.Sorted(maps.Keys(existing)) {
			if !names[name] && opts.keep(name) {
				kept = append(kept, existing[name])
			}
		}
	}
	inTable := func(w Route) bool {
		rt, ok := existing[RouteName(w.Node)]
		return ok && sameRoute(rt, w)
	}
	var fit []Route
	for i, w := range valid {
		lose := ""
		for _, k := range kept {
			if p, _ := r.owned(k); p.Overlaps(w.Prefix) {
				lose = "route " + *k.Name
				break
			}
		}
		for j, o := range valid {
			if lose != "" {
				break
			}
			if i == j || !w.Prefix.Overlaps(o.Prefix) {
				continue
			}
			wi, oi := inTable(w), inTable(o)
			if oi && !wi || oi == wi && o.Node < w.Node {
				lose = "node " + o.Node + "'s"
				break
			}
		}
		if lose != "" {
			pl.rejected[w.Node] = fmt.Sprintf("pod CIDR %s overlaps %s", w.Prefix, lose)
			continue
		}
		fit = append(fit, w)
	}

	// Room under the limit: routes already there first, then by name.
	slices.SortStableFunc(fit, func(a, b Route) int {
		_, ea := existing[RouteName(a.Node)]
		_, eb := existing[RouteName(b.Node)]
		switch {
		case ea && !eb:
			return -1
		case eb && !ea:
			return 1
		}
		return strings.Compare(a.Node, b.Node)
	})
	routes := slices.Clone(foreign)
	wanted := map[string]bool{}
	for _, k := range kept {
		routes = append(routes, k)
		wanted[*k.Name] = true
	}
	// A rejected node's existing route stays as it is: removing it would
	// black-hole pods that still run there because of a bad update.
	for node := range pl.rejected {
		name := RouteName(node)
		if rt, ok := existing[name]; ok {
			routes = append(routes, rt)
			wanted[name] = true
		}
	}
	room := r.cfg.MaxRoutes - len(routes)
	for _, w := range fit {
		name := RouteName(w.Node)
		if room <= 0 {
			pl.overLimit = append(pl.overLimit, w.Node)
			if rt, ok := existing[name]; ok && opts.keepOverLimit {
				routes = append(routes, rt)
				wanted[name] = true
			}
			continue
		}
		room--
		wanted[name] = true
		rt, ok := existing[name]
		switch {
		case ok && sameRoute(rt, w):
			routes = append(routes, rt)
		default:
			routes = append(routes, &armnetwork.Route{Name: to.Ptr(name), Properties: &armnetwork.RoutePropertiesFormat{
				AddressPrefix:    to.Ptr(w.Prefix.String()),
				NextHopType:      to.Ptr(armnetwork.RouteNextHopTypeVirtualAppliance),
				NextHopIPAddress: to.Ptr(w.NextHop.String()),
			}})
			if ok {
				pl.changed = append(pl.changed, name)
			} else {
				pl.added = append(pl.added, name)
			}
		}
		pl.programmed = append(pl.programmed, w.Node)
	}
	for name := range existing {
		if !wanted[name] {
			pl.removed = append(pl.removed, name)
		}
	}
	slices.Sort(pl.removed)
	slices.SortFunc(routes, func(a, b *armnetwork.Route) int { return strings.Compare(deref(a.Name), deref(b.Name)) })
	pl.routes = routes
	return pl
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
