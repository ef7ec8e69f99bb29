package arm

import (
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v9"
)

// internet is the prefix of Azure's default route to the internet.
var internet = netip.MustParsePrefix("0.0.0.0/0")

// postEffectiveRoutes answers POST .../networkInterfaces/{nic}/effectiveRouteTable
// as Azure does: 202 with Azure-AsyncOperation and Location; the operation
// takes OperationDuration, and the Location URL then answers 200 with the
// routes in effect for the NIC when it ended (an EffectiveRouteListResult).
func (s *Server) postEffectiveRoutes(w http.ResponseWriter, r *http.Request, name string) {
	now := time.Now()
	s.mu.Lock()
	s.advanceLocked(now)
	n := s.nics[strings.ToLower(name)]
	if n == nil || !n.exists {
		s.mu.Unlock()
		errResourceNotFound(typeNIC, name, s.cfg.ResourceGroup).write(w)
		return
	}
	var op *operation
	op = s.startOpLocked(http.MethodPost, now, func(ok bool) {
		if ok {
			s.effectLocked(time.Now())
			op.result = s.effectiveRoutesLocked()
		}
	})
	s.mu.Unlock()

	s.acceptLRO(w, r, op)
	w.WriteHeader(http.StatusAccepted)
}

// effectiveRoutesLocked is the effective route table of a NIC in the
// subnet (every NIC of the simulated subscription is in it): Azure's
// default system routes, a VnetLocal route per VNet prefix and 0.0.0.0/0
// to the internet, then the user routes of the subnet's route table that
// the fabric follows (its effective routes, not the ones ARM accepted but
// has not programmed yet). A default route whose prefix a user route has
// too is listed with State Invalid, as Azure lists it: the user route
// overrides it.
//
// A VirtualAppliance route whose next hop is a NIC without IP forwarding
// (or no NIC at all) is listed as Active, as Azure lists it, but the fabric
// drops the traffic it carries (fabric/plan.go: a blackhole route):
// reading the effective routes proves the route is programmed, not that it
// delivers.
func (s *Server) effectiveRoutesLocked() armnetwork.EffectiveRouteListResult {
	var user []route
	if t := s.subnetTableLocked(); t != nil {
		user = sortedRoutes(t.effective)
	}
	overridden := map[netip.Prefix]bool{}
	for _, r := range user {
		overridden[r.prefix] = true
	}
	list := armnetwork.EffectiveRouteListResult{Value: []*armnetwork.EffectiveRoute{}}
	system := func(p netip.Prefix, hop armnetwork.RouteNextHopType) {
		state := armnetwork.EffectiveRouteStateActive
		if overridden[p] {
			state = armnetwork.EffectiveRouteStateInvalid
		}
		list.Value = append(list.Value, &armnetwork.EffectiveRoute{
			Source:                     to.Ptr(armnetwork.EffectiveRouteSourceDefault),
			State:                      to.Ptr(state),
			AddressPrefix:              []*string{to.Ptr(p.String())},
			NextHopType:                to.Ptr(hop),
			NextHopIPAddress:           []*string{},
			DisableBgpRoutePropagation: to.Ptr(false),
		})
	}
	for _, p := range s.cfg.VNetPrefixes {
		system(p, armnetwork.RouteNextHopTypeVnetLocal)
	}
	system(internet, armnetwork.RouteNextHopTypeInternet)
	for _, r := range user {
		hops := []*string{}
		if r.nextHop.IsValid() {
			hops = append(hops, to.Ptr(r.nextHop.String()))
		}
		list.Value = append(list.Value, &armnetwork.EffectiveRoute{
			Name:                       to.Ptr(r.name),
			Source:                     to.Ptr(armnetwork.EffectiveRouteSourceUser),
			State:                      to.Ptr(armnetwork.EffectiveRouteStateActive),
			AddressPrefix:              []*string{to.Ptr(r.prefix.String())},
			NextHopType:                to.Ptr(armnetwork.RouteNextHopType(r.nextHopType)),
			NextHopIPAddress:           hops,
			DisableBgpRoutePropagation: to.Ptr(false),
		})
	}
	return list
}

// subnetTableLocked returns the route table associated with the subnet, or
// nil when there is none.
func (s *Server) subnetTableLocked() *routeTable {
	if s.subnetTable == "" {
		return nil
	}
	t := s.tables[strings.ToLower(s.subnetTable)]
	if t == nil || !t.exists {
		return nil
	}
	return t
}

// SetSubnetRouteTable associates the route table name with the subnet, or,
// for "", leaves the subnet without a route table, as an operator changing
// the subnet would. The fabric follows at once: the subnet's routes are the
// new table's effective ones.
func (s *Server) SetSubnetRouteTable(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.advanceLocked(time.Now())
	if name != "" {
		t := s.tables[strings.ToLower(name)]
		if t == nil || !t.exists {
			return fmt.Errorf("route table %s does not exist", name)
		}
		name = t.name
	}
	s.subnetTable = name
	s.vnetETag = newETag()
	s.notifyLocked()
	return nil
}
