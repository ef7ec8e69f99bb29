package arm

import (
	"context"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/vnet-cni/vnet-cni/cloud/sim/simadmin"
)

// resourceKind is what a request path addresses.
type resourceKind int

const (
	kindUnknown resourceKind = iota
	kindNICs
	kindNIC
	kindNICEffectiveRoutes
	kindVNet
	kindSubnets
	kindSubnet
	kindRouteTable
	kindRoutes
	kindRoute
	kindOperation
	kindOperationResult
)

// target is a parsed request.
type target struct {
	kind resourceKind
	// op is the operationId, e.g. "NetworkInterfaces_Get".
	op    string
	class requestClass
	sub   string
	rg    string
	// name is the NIC, VNet or route table name; child the subnet or route
	// name; for operations, name is the operation id.
	name, child string
}

// operationIDs maps a resource kind and method to Azure's operationId.
var operationIDs = map[resourceKind]map[string]string{
	kindNICs: {http.MethodGet: "NetworkInterfaces_List"},
	kindNIC:  {http.MethodGet: "NetworkInterfaces_Get", http.MethodPut: "NetworkInterfaces_CreateOrUpdate"},
	// A POST: ARM counts it against the subscription's writes, and
	// Azure's Reader role does not include its action.
	kindNICEffectiveRoutes: {http.MethodPost: "NetworkInterfaces_GetEffectiveRouteTable"},
	kindVNet:               {http.MethodGet: "VirtualNetworks_Get"},
	kindSubnets:            {http.MethodGet: "Subnets_List"},
	kindSubnet:             {http.MethodGet: "Subnets_Get"},
	kindRouteTable:         {http.MethodGet: "RouteTables_Get", http.MethodPut: "RouteTables_CreateOrUpdate"},
	kindRoutes:             {http.MethodGet: "Routes_List"},
	kindRoute:              {http.MethodGet: "Routes_Get", http.MethodPut: "Routes_CreateOrUpdate", http.MethodDelete: "Routes_Delete"},
	kindOperation:          {http.MethodGet: "AsyncOperations_Get"},
	kindOperationResult:    {http.MethodGet: "OperationResults_Get"},
}

var kindNames = map[resourceKind]string{
	kindNICs: "NetworkInterfaces", kindNIC: "NetworkInterfaces", kindNICEffectiveRoutes: "NetworkInterfaces", kindVNet: "VirtualNetworks",
	kindSubnets: "Subnets", kindSubnet: "Subnets", kindRouteTable: "RouteTables", kindRoutes: "Routes",
	kindRoute: "Routes", kindOperation: "AsyncOperations", kindOperationResult: "OperationResults",
}

// kindActions name the resource types in Azure RBAC actions
// (Microsoft.Network/<type>/write, .../delete, .../action for a POST).
var kindActions = map[resourceKind]string{
	kindNIC: "networkInterfaces", kindRouteTable: "routeTables", kindRoute: "routeTables/routes",
	kindNICEffectiveRoutes: "networkInterfaces/effectiveRouteTable",
}

// parseTarget maps method and path to a target. Literal path segments match
// case-insensitively, as in ARM.
func parseTarget(method, path string) target {
	t := target{op: "Unknown", class: classOf(method)}
	seg := strings.Split(strings.Trim(path, "/"), "/")
	is := func(i int, lit string) bool { return i < len(seg) && strings.EqualFold(seg[i], lit) }
	if len(seg) < 2 || !is(0, "subscriptions") {
		return t
	}
	t.sub = seg[1]
	switch {
	case len(seg) == 8 && is(2, "providers") && is(3, "Microsoft.Network") && is(4, "locations") && is(6, "operations"):
		t.kind, t.name = kindOperation, seg[7]
	case len(seg) == 8 && is(2, "providers") && is(3, "Microsoft.Network") && is(4, "locations") && is(6, "operationResults"):
		t.kind, t.name = kindOperationResult, seg[7]
	case len(seg) >= 7 && is(2, "resourceGroups") && is(4, "providers") && is(5, "Microsoft.Network"):
		t.rg = seg[3]
		t.kind, t.name, t.child = parseNetworkPath(seg[6:])
	}
	if t.kind == kindUnknown {
		return t
	}
	if op, ok := operationIDs[t.kind][method]; ok {
		t.op = op
	} else {
		t.op = kindNames[t.kind] + "_" + method
	}
	if t.kind == kindOperation || t.kind == kindOperationResult {
		t.class = classRead // polls count as reads
	}
	return t
}

// parseNetworkPath parses the segments after providers/Microsoft.Network.
func parseNetworkPath(seg []string) (resourceKind, string, string) {
	is := func(i int, lit string) bool { return i < len(seg) && strings.EqualFold(seg[i], lit) }
	switch {
	case is(0, "networkInterfaces") && len(seg) == 1:
		return kindNICs, "", ""
	case is(0, "networkInterfaces") && len(seg) == 2:
		return kindNIC, seg[1], ""
	case is(0, "networkInterfaces") && is(2, "effectiveRouteTable") && len(seg) == 3:
		return kindNICEffectiveRoutes, seg[1], ""
	case is(0, "virtualNetworks") && len(seg) == 2:
		return kindVNet, seg[1], ""
	case is(0, "virtualNetworks") && is(2, "subnets") && len(seg) == 3:
		return kindSubnets, seg[1], ""
	case is(0, "virtualNetworks") && is(2, "subnets") && len(seg) == 4:
		return kindSubnet, seg[1], seg[3]
	case is(0, "routeTables") && len(seg) == 2:
		return kindRouteTable, seg[1], ""
	case is(0, "routeTables") && is(2, "routes") && len(seg) == 3:
		return kindRoutes, seg[1], ""
	case is(0, "routeTables") && is(2, "routes") && len(seg) == 4:
		return kindRoute, seg[1], seg[3]
	}
	return kindUnknown, "", ""
}

func classOf(method string) requestClass {
	switch method {
	case http.MethodGet, http.MethodHead:
		return classRead
	case http.MethodDelete:
		return classDelete
	default:
		return classWrite
	}
}

// serveARM runs every ARM request through authentication, api-version check,
// faults and throttling, then the API, and counts it.
func (s *Server) serveARM(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rec := &simadmin.StatusRecorder{ResponseWriter: w}
	t := parseTarget(r.Method, r.URL.Path)
	defer func() {
		if rec.Status == 0 {
			rec.Status = simadmin.StatusClientClosed
		}
		s.stats.Add(t.op, rec.Status, rec.Status == http.StatusTooManyRequests)
		s.log.Debug("arm request", "op", t.op, "method", r.Method, "path", r.URL.Path,
			"status", rec.Status, "duration", time.Since(start))
	}()
	h := rec.Header()
	h.Set("x-ms-request-id", uuid.NewString())
	corr := r.Header.Get("x-ms-correlation-request-id")
	if corr == "" {
		corr = uuid.NewString()
	}
	h.Set("x-ms-correlation-request-id", corr)
	if id := r.Header.Get("x-ms-client-request-id"); id != "" {
		h.Set("x-ms-client-request-id", id)
	}

	identity, err := s.tokens.check(r, start)
	if err != nil {
		err.write(rec)
		return
	}
	if err := s.checkScope(r, t); err != nil {
		err.write(rec)
		return
	}
	if class := classOf(r.Method); identity.readOnly && class != classRead {
		verb := "write"
		switch {
		case class == classDelete:
			verb = "delete"
		case r.Method == http.MethodPost:
			verb = "action"
		}
		denied(identity, "Microsoft.Network/"+kindActions[t.kind]+"/"+verb, r.URL.Path).write(rec)
		return
	}
	if err := s.injectFaults(r.Context(), t.op); err != nil {
		err.write(rec)
		return
	}
	if r.Context().Err() != nil {
		return
	}
	remaining, ok, wait := s.limiter.take(strings.ToLower(t.sub), t.class, time.Now())
	if !ok {
		h.Set(t.class.headerName(), "0")
		e := newAPIError(http.StatusTooManyRequests, CodeThrottled,
			"Number of '%s' requests for subscription '%s' actor 'vnet-cni' exceeded. Please try again after '%d' seconds after the last request.",
			t.class, t.sub, ceilSeconds(wait))
		e.retryAfter = wait
		e.write(rec)
		return
	}
	h.Set(t.class.headerName(), strconv.Itoa(remaining))
	s.dispatch(rec, r, t)
}

// checkScope answers what ARM answers before a resource provider sees the
// request: unknown paths, subscriptions and resource groups, and a missing
// api-version.
func (s *Server) checkScope(r *http.Request, t target) *apiError {
	if t.kind == kindUnknown {
		return newAPIError(http.StatusNotFound, CodeNotFound, "No HTTP resource was found that matches the request URI '%s'.", r.URL.Path)
	}
	if r.URL.Query().Get("api-version") == "" {
		return newAPIError(http.StatusBadRequest, CodeMissingAPIVersion,
			"The api-version query parameter (?api-version=) is required for all requests.")
	}
	if !strings.EqualFold(t.sub, s.cfg.SubscriptionID) {
		return newAPIError(http.StatusNotFound, CodeSubscriptionNotFound, "The subscription '%s' could not be found.", t.sub)
	}
	if t.rg != "" && !strings.EqualFold(t.rg, s.cfg.ResourceGroup) {
		return newAPIError(http.StatusNotFound, CodeResourceGroupNotFound, "Resource group '%s' could not be found.", t.rg)
	}
	if _, ok := operationIDs[t.kind][r.Method]; !ok {
		return newAPIError(http.StatusMethodNotAllowed, CodeMethodNotAllowed,
			"The requested resource does not support http method '%s'.", r.Method)
	}
	return nil
}

// injectFaults applies the active faults to a request of op: a storm, then
// latency, then error injection.
func (s *Server) injectFaults(ctx context.Context, op string) *apiError {
	now := time.Now()
	s.faultsMu.Lock()
	storm := s.faults.Storm
	var stormAfter int
	inStorm := storm != nil && now.Before(storm.Until)
	if inStorm {
		stormAfter = storm.RetryAfterSeconds
	}
	delay := s.faults.latency(op)
	ef, hasErr := s.faults.errorFor(op)
	s.faultsMu.Unlock()

	if inStorm {
		e := newAPIError(http.StatusTooManyRequests, CodeThrottled,
			"Number of requests for subscription '%s' exceeded the limit. Please try again after '%d' seconds.",
			s.cfg.SubscriptionID, max(stormAfter, 1))
		e.retryAfter = time.Duration(max(stormAfter, 1)) * time.Second
		return e
	}
	if delay > 0 {
		timer := time.NewTimer(delay)
		select {
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			return nil
		}
	}
	if hasErr && ef.Rate > 0 && rand.Float64() < ef.Rate {
		msg := ef.Message
		if msg == "" {
			msg = "Injected fault."
		}
		e := newAPIError(ef.Status, ef.Code, "%s", msg)
		if ef.Status == http.StatusTooManyRequests || ef.Status == http.StatusServiceUnavailable {
			e.retryAfter = time.Duration(max(ef.RetryAfterSeconds, 1)) * time.Second
		}
		return e
	}
	return nil
}

// dispatch calls the handler of t.
func (s *Server) dispatch(w http.ResponseWriter, r *http.Request, t target) {
	switch {
	case t.kind == kindOperation:
		s.getOperation(w, t.name)
	case t.kind == kindOperationResult:
		s.getOperationResult(w, r, t.name)
	case t.kind == kindNICs:
		s.listNICs(w)
	case t.kind == kindNIC && r.Method == http.MethodGet:
		s.getNIC(w, t.name)
	case t.kind == kindNIC:
		s.putNIC(w, r, t.name)
	case t.kind == kindNICEffectiveRoutes:
		s.postEffectiveRoutes(w, r, t.name)
	case t.kind == kindVNet:
		s.getVNet(w, t.name)
	case t.kind == kindSubnets:
		s.listSubnets(w, t.name)
	case t.kind == kindSubnet:
		s.getSubnet(w, t.name, t.child)
	case t.kind == kindRouteTable && r.Method == http.MethodGet:
		s.getRouteTable(w, t.name)
	case t.kind == kindRouteTable:
		s.putRouteTable(w, r, t.name)
	case t.kind == kindRoutes:
		s.listRoutes(w, t.name)
	case t.kind == kindRoute && r.Method == http.MethodGet:
		s.getRoute(w, t.name, t.child)
	case t.kind == kindRoute && r.Method == http.MethodPut:
		s.putRoute(w, r, t.name, t.child)
	default:
		s.deleteRoute(w, r, t.name, t.child)
	}
}
