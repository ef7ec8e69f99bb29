package arm

import (
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// ipConfig is one ipConfiguration of a network interface.
type ipConfig struct {
	name    string
	addr    netip.Addr
	static  bool
	primary bool
}

// nicState is the part of a network interface that a PUT changes.
type nicState struct {
	ipForwarding bool
	ipConfigs    []ipConfig
}

// nic is a network interface. Its state is the committed one; a PUT that
// is still InProgress is in pending.
type nic struct {
	name     string
	vmName   string
	mac      net.HardwareAddr
	location string
	etag     string
	// exists is false while the operation creating the NIC is in progress.
	exists  bool
	state   nicState
	pending *pendingNIC
}

type pendingNIC struct {
	op     *operation
	target nicState
	etag   string // the ETag the NIC gets when op succeeds
}

// route is a user-defined route.
type route struct {
	name        string
	etag        string
	prefix      netip.Prefix
	nextHopType string
	nextHop     netip.Addr
}

// sameAs reports whether r and o route the same way.
func (r route) sameAs(o route) bool {
	return r.name == o.name && r.prefix == o.prefix && r.nextHopType == o.nextHopType && r.nextHop == o.nextHop
}

// routeTable is a route table; routes are keyed by lower-case name.
type routeTable struct {
	name     string
	location string
	etag     string
	exists   bool
	routes   map[string]route
	pending  *pendingTable
	// effective is what the fabric follows: routes, RouteEffectDelay
	// after each change succeeded; propagating are the versions on their
	// way, oldest first.
	effective   map[string]route
	propagating []tableVersion
}

// tableVersion is a route table's routes as of a succeeded change, in
// effect from at.
type tableVersion struct {
	at     time.Time
	routes map[string]route
}

type pendingTable struct {
	op     *operation
	target map[string]route
	etag   string
}

func sortedRoutes(m map[string]route) []route {
	out := make([]route, 0, len(m))
	for _, r := range m {
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b route) int { return strings.Compare(a.name, b.name) })
	return out
}

// takenLocked returns the addresses held by every NIC except skip, committed
// or reserved by a pending operation, with the id of the holding
// ipConfiguration.
func (s *Server) takenLocked(skip *nic) map[netip.Addr]string {
	taken := map[netip.Addr]string{}
	for _, n := range s.nics {
		if n == skip {
			continue
		}
		for _, c := range n.state.ipConfigs {
			taken[c.addr] = s.ipConfigID(n.name, c.name)
		}
		if n.pending != nil {
			for _, c := range n.pending.target.ipConfigs {
				taken[c.addr] = s.ipConfigID(n.name, c.name)
			}
		}
	}
	return taken
}
