package azure

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v9"

	"github.com/vnet-cni/vnet-cni/cloud"
)

// Values of EffectiveRoute's Source and State, as Azure spells them.
const (
	SourceUser    = string(armnetwork.EffectiveRouteSourceUser)
	SourceDefault = string(armnetwork.EffectiveRouteSourceDefault)
	StateActive   = string(armnetwork.EffectiveRouteStateActive)
	StateInvalid  = string(armnetwork.EffectiveRouteStateInvalid)
)

// EffectiveRoute is one route in effect for the node's NIC: what the fabric
// does with its traffic, as opposed to what a route table says.
type EffectiveRoute struct {
	// Name is a user route's name ("" for system routes).
	Name string
	// Source is SourceUser for a route table's routes, SourceDefault for
	// Azure's system routes (also "VirtualNetworkGateway" for BGP).
	Source string
	// State is StateActive, or StateInvalid for a route another one
	// overrides.
	State string
	// NextHopType is an armnetwork.RouteNextHopType: "VnetLocal",
	// "Internet", "VirtualAppliance", "None", ….
	NextHopType string
	Prefixes    []netip.Prefix
	NextHops    []netip.Addr
}

// Carries reports whether r is an active user route of prefix to the
// virtual appliance nextHop: kubenet's podCIDR → node IP route in effect.
// (Azure lists such a route even when nextHop's NIC does not forward, and
// then drops its traffic: IP forwarding is EnsureIPForwarding's.)
func (r EffectiveRoute) Carries(prefix netip.Prefix, nextHop netip.Addr) bool {
	return r.Source == SourceUser && r.State == StateActive &&
		r.NextHopType == string(armnetwork.RouteNextHopTypeVirtualAppliance) &&
		slices.Contains(r.Prefixes, prefix.Masked()) && slices.Contains(r.NextHops, nextHop.Unmap())
}

// EffectiveRoutes reads the effective route table of the node's NIC
// (POST .../effectiveRouteTable, a long-running operation of seconds in
// Azure): the system routes and the user routes the fabric follows. A route
// table's change shows here only once it took effect, some time after ARM
// answered its PUT. Entries whose prefixes or next hops do not parse are
// skipped. The call is bounded by CallTimeout; errors are *cloud.Error
// classified as the provider's other calls. ARM counts the POST against the
// subscription's writes, and Azure's Reader role does not allow it (the
// action Microsoft.Network/networkInterfaces/effectiveRouteTable/action).
func (p *Provider) EffectiveRoutes(ctx context.Context) ([]EffectiveRoute, error) {
	const op = "NetworkInterfaces_GetEffectiveRouteTable"
	ctx, cancel := context.WithTimeout(ctx, p.cfg.CallTimeout)
	defer cancel()
	poller, err := p.nics.BeginGetEffectiveRouteTable(ctx, p.nic.resourceGroup, p.nic.name, nil)
	if err != nil {
		return nil, classify(op, err)
	}
	resp, err := poller.PollUntilDone(ctx, &runtime.PollUntilDoneOptions{Frequency: p.cfg.PollFrequency})
	if err != nil {
		return nil, classify(op, err)
	}
	out := make([]EffectiveRoute, 0, len(resp.Value))
	for _, r := range resp.Value {
		er, err := parseEffectiveRoute(r)
		if err != nil {
			p.log.Debug("skipping an effective route", "nic", p.nic.name, "err", err)
			continue
		}
		out = append(out, er)
	}
	return out, nil
}

// parseEffectiveRoute converts an SDK entry; an entry without a prefix or
// with one that does not parse is an error.
func parseEffectiveRoute(r *armnetwork.EffectiveRoute) (EffectiveRoute, error) {
	if r == nil {
		return EffectiveRoute{}, fmt.Errorf("empty entry")
	}
	er := EffectiveRoute{
		Name:        deref(r.Name),
		Source:      string(deref(r.Source)),
		State:       string(deref(r.State)),
		NextHopType: string(deref(r.NextHopType)),
	}
	for _, s := range r.AddressPrefix {
		pfx, err := netip.ParsePrefix(strings.TrimSpace(deref(s)))
		if err != nil {
			return EffectiveRoute{}, fmt.Errorf("route %q: prefix: %w", er.Name, err)
		}
		er.Prefixes = append(er.Prefixes, pfx.Masked())
	}
	if len(er.Prefixes) == 0 {
		return EffectiveRoute{}, fmt.Errorf("route %q has no address prefix", er.Name)
	}
	for _, s := range r.NextHopIPAddress {
		a, err := netip.ParseAddr(strings.TrimSpace(deref(s)))
		if err != nil {
			return EffectiveRoute{}, fmt.Errorf("route %q: next hop: %w", er.Name, err)
		}
		er.NextHops = append(er.NextHops, a.Unmap())
	}
	return er, nil
}

// RouteTableRef names a route table.
type RouteTableRef struct {
	// ID is the table's resource ID.
	ID                                  string
	SubscriptionID, ResourceGroup, Name string
}

// RouteTable returns the route table associated with the node's subnet,
// read from the subnet (Subnets_Get; the subnet's own subscription when the
// VNet is in another one). A subnet without a route table is a Fatal
// *cloud.Error: kubenet mode needs one. Bounded by CallTimeout.
func (p *Provider) RouteTable(ctx context.Context) (RouteTableRef, error) {
	const op = "Subnets_Get"
	subnetID := p.base.Interfaces[0].SubnetID
	id, err := arm.ParseResourceID(subnetID)
	if err != nil || id.Parent == nil || !strings.EqualFold(id.ResourceType.String(), "Microsoft.Network/virtualNetworks/subnets") {
		return RouteTableRef{}, &cloud.Error{Kind: cloud.Fatal, Op: op, Err: fmt.Errorf("malformed subnet id %q", subnetID)}
	}
	subnets := p.factory.NewSubnetsClient()
	if !strings.EqualFold(id.SubscriptionID, p.subscription) {
		if subnets, err = armnetwork.NewSubnetsClient(id.SubscriptionID, p.cfg.Credential, p.opts); err != nil {
			return RouteTableRef{}, &cloud.Error{Kind: cloud.Fatal, Op: op, Err: fmt.Errorf("subnets client for subscription %s: %w", id.SubscriptionID, err)}
		}
	}
	ctx, cancel := context.WithTimeout(ctx, p.cfg.CallTimeout)
	defer cancel()
	resp, err := subnets.Get(ctx, id.ResourceGroupName, id.Parent.Name, id.Name, nil)
	if err != nil {
		return RouteTableRef{}, classify(op, err)
	}
	tableID := ""
	if resp.Properties != nil && resp.Properties.RouteTable != nil {
		tableID = deref(resp.Properties.RouteTable.ID)
	}
	if tableID == "" {
		return RouteTableRef{}, &cloud.Error{Kind: cloud.Fatal, Op: op,
			Err: fmt.Errorf("subnet %s has no route table; kubenet mode needs one associated with the nodes' subnet", subnetID)}
	}
	tid, err := arm.ParseResourceID(tableID)
	if err != nil || !strings.EqualFold(tid.ResourceType.String(), "Microsoft.Network/routeTables") {
		return RouteTableRef{}, &cloud.Error{Kind: cloud.Fatal, Op: op, Err: fmt.Errorf("subnet %s: malformed route table id %q", subnetID, tableID)}
	}
	return RouteTableRef{ID: tableID, SubscriptionID: tid.SubscriptionID, ResourceGroup: tid.ResourceGroupName, Name: tid.Name}, nil
}

// RouteTablesClient returns a route tables client of the node's
// subscription, from the provider's client factory (its credential,
// endpoint, CA and retry policy). A route table in another subscription
// needs a client of that subscription: RouteTablesClientFor.
func (p *Provider) RouteTablesClient() *armnetwork.RouteTablesClient {
	return p.factory.NewRouteTablesClient()
}

// RouteTablesClientFor returns a route tables client of subscriptionID
// (RouteTableRef.SubscriptionID): the factory's for the node's
// subscription, else a new one with the same credential and options.
func (p *Provider) RouteTablesClientFor(subscriptionID string) (*armnetwork.RouteTablesClient, error) {
	if subscriptionID == "" || strings.EqualFold(subscriptionID, p.subscription) {
		return p.factory.NewRouteTablesClient(), nil
	}
	c, err := armnetwork.NewRouteTablesClient(subscriptionID, p.cfg.Credential, p.opts)
	if err != nil {
		return nil, fmt.Errorf("azure: route tables client for subscription %s: %w", subscriptionID, err)
	}
	return c, nil
}

// RouteEffective reports whether the NIC's effective routes carry prefix
// via nextHop (Carries): kubenet's test that a node's route works in the
// VNet, not merely that ARM accepted it.
func (p *Provider) RouteEffective(ctx context.Context, prefix netip.Prefix, nextHop netip.Addr) (bool, error) {
	routes, err := p.EffectiveRoutes(ctx)
	if err != nil {
		return false, err
	}
	for _, r := range routes {
		if r.Carries(prefix, nextHop) {
			return true, nil
		}
	}
	return false, nil
}
