package arm

import (
	"maps"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v9"
)

func (s *Server) getRouteTable(w http.ResponseWriter, name string) {
	s.mu.Lock()
	s.advanceLocked(time.Now())
	t := s.tables[strings.ToLower(name)]
	if t == nil || !t.exists {
		s.mu.Unlock()
		errResourceNotFound(typeRouteTable, name, s.cfg.ResourceGroup).write(w)
		return
	}
	body := s.renderTableLocked(t, t.routes, t.etag, provisioningState(t.pending != nil))
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, body)
}

// putRouteTable replaces the route table, routes included.
func (s *Server) putRouteTable(w http.ResponseWriter, r *http.Request, name string) {
	var body armnetwork.RouteTable
	if err := decodeBody(r, &body); err != nil {
		err.write(w)
		return
	}
	var reqRoutes []*armnetwork.Route
	if body.Properties != nil {
		reqRoutes = body.Properties.Routes
	}
	target := map[string]route{}
	for i, rr := range reqRoutes {
		if rr == nil || rr.Name == nil || *rr.Name == "" {
			newAPIError(http.StatusBadRequest, CodeInvalidRequestFormat, "Route %d of route table %s has no name.", i, name).write(w)
			return
		}
		rt, err := s.parseRoute(name, *rr.Name, rr.Properties)
		if err != nil {
			err.write(w)
			return
		}
		key := strings.ToLower(rt.name)
		if _, dup := target[key]; dup {
			newAPIError(http.StatusBadRequest, CodeInvalidRequestFormat, "Route table %s has two routes named %s.", name, rt.name).write(w)
			return
		}
		target[key] = rt
	}
	if len(target) > s.cfg.MaxRoutes {
		s.errRouteLimit(name).write(w)
		return
	}

	now := time.Now()
	s.mu.Lock()
	s.advanceLocked(now)
	key := strings.ToLower(name)
	t := s.tables[key]
	exists := t != nil && t.exists
	if err := s.checkTableWriteLocked(r, t, exists, "", now); err != nil {
		s.mu.Unlock()
		err.write(w)
		return
	}
	if err := s.checkLocation(body.Location, exists, typeRouteTable, name); err != nil {
		s.mu.Unlock()
		err.write(w)
		return
	}
	if t == nil {
		t = &routeTable{name: name, location: s.cfg.Location, routes: map[string]route{}}
		s.tables[key] = t
	}
	p := s.startTableOpLocked(t, key, target, http.MethodPut, now)
	resp := s.renderTableLocked(t, target, p.etag, armnetwork.ProvisioningStateUpdating)
	s.mu.Unlock()

	s.acceptLRO(w, r, p.op)
	writeJSON(w, createdOrOK(exists), resp)
}

func (s *Server) listRoutes(w http.ResponseWriter, table string) {
	s.mu.Lock()
	s.advanceLocked(time.Now())
	t := s.tables[strings.ToLower(table)]
	if t == nil || !t.exists {
		s.mu.Unlock()
		errResourceNotFound(typeRouteTable, table, s.cfg.ResourceGroup).write(w)
		return
	}
	list := armnetwork.RouteListResult{Value: []*armnetwork.Route{}}
	ps := provisioningState(t.pending != nil)
	for _, rt := range sortedRoutes(t.routes) {
		v := s.renderRoute(t.name, rt, rt.etag, ps)
		list.Value = append(list.Value, &v)
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, list)
}

func (s *Server) getRoute(w http.ResponseWriter, table, name string) {
	s.mu.Lock()
	s.advanceLocked(time.Now())
	t := s.tables[strings.ToLower(table)]
	if t == nil || !t.exists {
		s.mu.Unlock()
		errResourceNotFound(typeRouteTable, table, s.cfg.ResourceGroup).write(w)
		return
	}
	rt, ok := t.routes[strings.ToLower(name)]
	if !ok {
		s.mu.Unlock()
		errNotFound(s.routeID(t.name, name)).write(w)
		return
	}
	body := s.renderRoute(t.name, rt, rt.etag, provisioningState(t.pending != nil))
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, body)
}

// putRoute creates or replaces one route of a route table.
func (s *Server) putRoute(w http.ResponseWriter, r *http.Request, table, name string) {
	var body armnetwork.Route
	if err := decodeBody(r, &body); err != nil {
		err.write(w)
		return
	}
	rt, err := s.parseRoute(table, name, body.Properties)
	if err != nil {
		err.write(w)
		return
	}
	now := time.Now()
	s.mu.Lock()
	s.advanceLocked(now)
	key := strings.ToLower(table)
	t := s.tables[key]
	if t == nil || !t.exists {
		s.mu.Unlock()
		errResourceNotFound(typeRouteTable, table, s.cfg.ResourceGroup).write(w)
		return
	}
	rkey := strings.ToLower(name)
	old, exists := t.routes[rkey]
	if err := s.checkTableWriteLocked(r, t, exists, old.etag, now); err != nil {
		s.mu.Unlock()
		err.write(w)
		return
	}
	if !exists && len(t.routes) >= s.cfg.MaxRoutes {
		s.mu.Unlock()
		s.errRouteLimit(t.name).write(w)
		return
	}
	target := maps.Clone(t.routes)
	target[rkey] = rt
	p := s.startTableOpLocked(t, key, target, http.MethodPut, now)
	resp := s.renderRoute(t.name, rt, p.target[rkey].etag, armnetwork.ProvisioningStateUpdating)
	s.mu.Unlock()

	s.acceptLRO(w, r, p.op)
	writeJSON(w, createdOrOK(exists), resp)
}

// deleteRoute removes a route: 202 and a long-running operation, or 204
// when there is no such route.
func (s *Server) deleteRoute(w http.ResponseWriter, r *http.Request, table, name string) {
	now := time.Now()
	s.mu.Lock()
	s.advanceLocked(now)
	key := strings.ToLower(table)
	t := s.tables[key]
	if t == nil || !t.exists {
		s.mu.Unlock()
		errResourceNotFound(typeRouteTable, table, s.cfg.ResourceGroup).write(w)
		return
	}
	rkey := strings.ToLower(name)
	old, exists := t.routes[rkey]
	if err := s.checkTableWriteLocked(r, t, exists, old.etag, now); err != nil {
		s.mu.Unlock()
		err.write(w)
		return
	}
	if !exists {
		s.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
		return
	}
	target := maps.Clone(t.routes)
	delete(target, rkey)
	p := s.startTableOpLocked(t, key, target, http.MethodDelete, now)
	s.mu.Unlock()

	s.acceptLRO(w, r, p.op)
	w.WriteHeader(http.StatusAccepted)
}

// checkTableWriteLocked applies the preconditions of a write to table t or
// one of its routes (exists and etag describe the written resource) and
// refuses it while another operation updates the table.
func (s *Server) checkTableWriteLocked(r *http.Request, t *routeTable, exists bool, etag string, now time.Time) *apiError {
	if t != nil && etag == "" {
		etag = t.etag
	}
	if err := checkPreconditions(r, exists, etag); err != nil {
		return err
	}
	if t != nil && t.pending != nil {
		return errAnotherOperation(t.pending.op.id, s.routeTableID(t.name), t.pending.op.doneAt.Sub(now))
	}
	return nil
}

// startTableOpLocked starts the operation that gives table t the routes of
// target. Routes that change get a new ETag; the others keep theirs.
func (s *Server) startTableOpLocked(t *routeTable, key string, target map[string]route, method string, now time.Time) *pendingTable {
	p := &pendingTable{target: target, etag: newETag()}
	for k, rt := range target {
		if old, ok := t.routes[k]; ok && old.sameAs(rt) {
			rt.etag = old.etag
		} else {
			rt.etag = p.etag
		}
		target[k] = rt
	}
	p.op = s.startOpLocked(method, now, func(ok bool) {
		t.pending = nil
		switch {
		case ok:
			t.routes, t.etag, t.exists = p.target, p.etag, true
			s.propagateLocked(t)
		case !t.exists:
			delete(s.tables, key)
		}
	})
	t.pending = p
	return p
}

// parseRoute validates the properties of route name in table.
func (s *Server) parseRoute(table, name string, p *armnetwork.RoutePropertiesFormat) (route, *apiError) {
	id := s.routeID(table, name)
	if strings.ContainsAny(name, "/?#") {
		return route{}, newAPIError(http.StatusBadRequest, CodeInvalidRequestFormat, "Route name %q is invalid.", name)
	}
	if p == nil || p.AddressPrefix == nil || *p.AddressPrefix == "" {
		return route{}, newAPIError(http.StatusBadRequest, CodeInvalidAddressPrefix, "Route %s has no address prefix.", id)
	}
	prefix, err := netip.ParsePrefix(*p.AddressPrefix)
	if err != nil {
		return route{}, newAPIError(http.StatusBadRequest, CodeInvalidAddressPrefix,
			"Route %s has an invalid address prefix '%s'; a CIDR such as 10.244.1.0/24 is required.", id, *p.AddressPrefix)
	}
	if prefix.Masked() != prefix {
		return route{}, newAPIError(http.StatusBadRequest, CodeInvalidCIDR,
			"The address prefix %s in resource %s has an invalid CIDR notation. For the given prefix length, the address prefix should be %s.",
			prefix, id, prefix.Masked())
	}
	rt := route{name: name, prefix: prefix}
	if p.NextHopType == nil {
		return route{}, newAPIError(http.StatusBadRequest, CodeInvalidRequestFormat, "Route %s has no next hop type.", id)
	}
	for _, v := range armnetwork.PossibleRouteNextHopTypeValues() {
		if strings.EqualFold(string(v), string(*p.NextHopType)) {
			rt.nextHopType = string(v)
		}
	}
	if rt.nextHopType == "" {
		return route{}, newAPIError(http.StatusBadRequest, CodeInvalidRequestFormat,
			"Route %s has an invalid next hop type '%s'.", id, *p.NextHopType)
	}
	hop := ""
	if p.NextHopIPAddress != nil {
		hop = *p.NextHopIPAddress
	}
	switch {
	case rt.nextHopType != string(armnetwork.RouteNextHopTypeVirtualAppliance) && hop != "":
		return route{}, newAPIError(http.StatusBadRequest, CodeNextHopNotAllowed,
			"Route %s has next hop type %s; a next hop IP address is only allowed for VirtualAppliance.", id, rt.nextHopType)
	case rt.nextHopType != string(armnetwork.RouteNextHopTypeVirtualAppliance):
	case hop == "":
		return route{}, newAPIError(http.StatusBadRequest, CodeNextHopRequired,
			"Route %s has next hop type VirtualAppliance but no next hop IP address.", id)
	default:
		a, err := netip.ParseAddr(hop)
		if err != nil {
			return route{}, newAPIError(http.StatusBadRequest, CodeInvalidNextHop,
				"Route %s has an invalid next hop IP address '%s'.", id, hop)
		}
		rt.nextHop = a.Unmap()
	}
	return rt, nil
}

func (s *Server) errRouteLimit(table string) *apiError {
	return newAPIError(http.StatusBadRequest, CodeRouteLimit,
		"Route table %s cannot have more than %d routes.", s.routeTableID(table), s.cfg.MaxRoutes)
}

func createdOrOK(existed bool) int {
	if existed {
		return http.StatusOK
	}
	return http.StatusCreated
}

func (s *Server) renderTableLocked(t *routeTable, routes map[string]route, etag string, ps armnetwork.ProvisioningState) armnetwork.RouteTable {
	props := &armnetwork.RouteTablePropertiesFormat{
		Routes:                     []*armnetwork.Route{},
		DisableBgpRoutePropagation: to.Ptr(false),
		ProvisioningState:          to.Ptr(ps),
	}
	for _, rt := range sortedRoutes(routes) {
		v := s.renderRoute(t.name, rt, rt.etag, ps)
		props.Routes = append(props.Routes, &v)
	}
	if s.subnetTable != "" && strings.EqualFold(t.name, s.subnetTable) {
		props.Subnets = []*armnetwork.Subnet{{ID: to.Ptr(s.subnetID())}}
	}
	return armnetwork.RouteTable{
		ID:         to.Ptr(s.routeTableID(t.name)),
		Name:       to.Ptr(t.name),
		Type:       to.Ptr(typeRouteTable),
		Location:   to.Ptr(t.location),
		Etag:       to.Ptr(etag),
		Properties: props,
	}
}

func (s *Server) renderRoute(table string, rt route, etag string, ps armnetwork.ProvisioningState) armnetwork.Route {
	props := &armnetwork.RoutePropertiesFormat{
		AddressPrefix:     to.Ptr(rt.prefix.String()),
		NextHopType:       to.Ptr(armnetwork.RouteNextHopType(rt.nextHopType)),
		HasBgpOverride:    to.Ptr(false),
		ProvisioningState: to.Ptr(ps),
	}
	if rt.nextHop.IsValid() {
		props.NextHopIPAddress = to.Ptr(rt.nextHop.String())
	}
	return armnetwork.Route{
		ID:         to.Ptr(s.routeID(table, rt.name)),
		Name:       to.Ptr(rt.name),
		Type:       to.Ptr(typeRoute),
		Etag:       to.Ptr(etag),
		Properties: props,
	}
}

// propagateLocked schedules t's routes to take effect in the fabric
// RouteEffectDelay from now.
func (s *Server) propagateLocked(t *routeTable) {
	d := s.cfg.RouteEffectDelay
	if d <= 0 {
		t.effective, t.propagating = t.routes, nil
		return
	}
	t.propagating = append(t.propagating, tableVersion{at: time.Now().Add(d), routes: t.routes})
	time.AfterFunc(d, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.advanceLocked(time.Now())
		s.notifyLocked()
	})
}

// effectLocked brings every table's effective routes up to now.
func (s *Server) effectLocked(now time.Time) {
	for _, t := range s.tables {
		n := 0
		for n < len(t.propagating) && !now.Before(t.propagating[n].at) {
			t.effective = t.propagating[n].routes
			n++
		}
		t.propagating = t.propagating[n:]
	}
}
