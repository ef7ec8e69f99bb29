package arm

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/vnet-cni/vnet-cni/cloud/sim/simadmin"
)

// Server is the simulated ARM network API of one subscription.
type Server struct {
	cfg     Config
	log     *slog.Logger
	tokens  *tokenStore
	limiter *limiter
	stats   simadmin.Counters
	changed chan struct{}

	faultsMu sync.Mutex
	faults   Faults

	mu       sync.Mutex
	closed   bool
	nics     map[string]*nic        // by lower-case name
	tables   map[string]*routeTable // by lower-case name
	ops      map[string]*operation  // every operation not yet pruned, by id
	inflight map[string]*operation  // operations still InProgress, by id
	vnetETag string
	pruned   time.Time
	// subnetTable is the name of the route table associated with the
	// subnet, "" for none: Config.RouteTableName at start.
	subnetTable string
}

// New validates cfg and creates the server with its initial resources.
func New(cfg Config) (*Server, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	s := &Server{
		cfg:      cfg,
		log:      cfg.Logger,
		tokens:   newTokenStore(cfg.StaticToken, cfg.TokenLifetime),
		limiter:  newLimiter(cfg.Throttle),
		changed:  make(chan struct{}, 1),
		faults:   cfg.Faults.clone(now),
		nics:     map[string]*nic{},
		tables:   map[string]*routeTable{},
		ops:      map[string]*operation{},
		inflight: map[string]*operation{},
		vnetETag: newETag(),

		subnetTable: cfg.RouteTableName,
	}
	for _, spec := range cfg.NICs {
		s.nics[strings.ToLower(spec.Name)] = &nic{
			name:     spec.Name,
			vmName:   spec.VMName,
			mac:      slices.Clone(spec.MAC),
			location: cfg.Location,
			etag:     newETag(),
			exists:   true,
			state: nicState{ipConfigs: []ipConfig{{
				name: "ipconfig1", addr: spec.Primary, static: true, primary: true,
			}}},
		}
	}
	// The template's addresses come after every primary: a primary is
	// static and may sit anywhere in the subnet.
	for _, spec := range cfg.NICs {
		n := s.nics[strings.ToLower(spec.Name)]
		taken := s.takenLocked(nil)
		for i, a := range lowestFree(cfg.Subnet, spec.TemplateIPs, func(a netip.Addr) bool { _, ok := taken[a]; return ok }) {
			n.state.ipConfigs = append(n.state.ipConfigs, ipConfig{name: fmt.Sprintf("ipconfig%d", i+2), addr: a})
		}
	}
	s.tables[strings.ToLower(cfg.RouteTableName)] = &routeTable{
		name:     cfg.RouteTableName,
		location: cfg.Location,
		etag:     newETag(),
		exists:   true,
		routes:   map[string]route{},
	}
	return s, nil
}

// Handler returns the ARM API. The caller serves it over TLS.
// It also answers the Entra ID endpoints of its tenant (entra.go).
func (s *Server) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if tenant, rest, ok := isEntraPath(r.URL.Path); ok {
			s.serveEntra(w, r, tenant, rest)
			return
		}
		s.serveARM(w, r)
	})
}

// Changed is signalled (coalesced, never blocking) after every committed
// change.
func (s *Server) Changed() <-chan struct{} { return s.changed }

// IssueToken creates a bearer token for resource (an audience such as
// "https://management.azure.com/") that ARM accepts until expiresOn.
func (s *Server) IssueToken(resource string) (token string, expiresOn time.Time) {
	return s.tokens.issue(resource, false, time.Now())
}

// IssueReadOnlyToken creates a token like IssueToken for an identity that
// may only read (Azure's Reader role): ARM refuses its writes and deletes
// with 403 AuthorizationFailed.
func (s *Server) IssueReadOnlyToken(resource string) (token string, expiresOn time.Time) {
	return s.tokens.issue(resource, true, time.Now())
}

// SetFaults replaces the active faults. A storm's Duration starts now.
// Invalid faults are logged and ignored; AdminHandler validates first.
func (s *Server) SetFaults(f Faults) {
	if err := f.validate(); err != nil {
		s.log.Warn("ignoring invalid faults", "err", err)
		return
	}
	c := f.clone(time.Now())
	s.faultsMu.Lock()
	defer s.faultsMu.Unlock()
	s.faults = c
}

// Faults returns a copy of the active faults.
func (s *Server) Faults() Faults {
	s.faultsMu.Lock()
	defer s.faultsMu.Unlock()
	return s.faults.clone(time.Now())
}

// Stats returns a copy of the request counters.
func (s *Server) Stats() Stats { return s.stats.Snapshot() }

// ResetStats zeroes the request counters.
func (s *Server) ResetStats() { s.stats.Reset() }

// Close stops the operation timers. Pending operations are abandoned: they
// never complete.
func (s *Server) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for _, op := range s.inflight {
		op.timer.Stop()
	}
}

// Snapshot returns the committed state.
func (s *Server) Snapshot() Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.advanceLocked(time.Now())
	snap := Snapshot{
		VNetPrefixes: slices.Clone(s.cfg.VNetPrefixes),
		Subnet:       s.cfg.Subnet,
		NICs:         []NICState{},
		Routes:       []RouteState{},
	}
	for _, n := range s.sortedNICsLocked() {
		st := NICState{Name: n.name, MAC: slices.Clone(n.mac), IPForwarding: n.state.ipForwarding, Secondary: []netip.Addr{}}
		for _, c := range n.state.ipConfigs {
			if c.primary {
				st.Primary = c.addr
			} else {
				st.Secondary = append(st.Secondary, c.addr)
			}
		}
		slices.SortFunc(st.Secondary, netip.Addr.Compare)
		snap.NICs = append(snap.NICs, st)
	}
	if t := s.subnetTableLocked(); t != nil {
		for _, r := range sortedRoutes(t.effective) {
			snap.Routes = append(snap.Routes, RouteState{Name: r.name, Prefix: r.prefix, NextHopType: r.nextHopType, NextHop: r.nextHop})
		}
	}
	return snap
}

// notifyLocked signals Changed without blocking.
func (s *Server) notifyLocked() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// sortedNICsLocked returns the NICs that exist, ordered by name.
func (s *Server) sortedNICsLocked() []*nic {
	var out []*nic
	for _, n := range s.nics {
		if n.exists {
			out = append(out, n)
		}
	}
	slices.SortFunc(out, func(a, b *nic) int { return strings.Compare(a.name, b.name) })
	return out
}

// newETag returns a weak ETag in Azure's W/"<uuid>" form.
func newETag() string { return `W/"` + uuid.NewString() + `"` }

// newMACLocked returns an unused MAC address in Azure's 00:0D:3A range.
func (s *Server) newMACLocked() net.HardwareAddr {
	for {
		id := uuid.New()
		mac := net.HardwareAddr{0x00, 0x0d, 0x3a, id[0], id[1], id[2]}
		used := false
		for _, n := range s.nics {
			used = used || slices.Equal(n.mac, mac)
		}
		if !used {
			return mac
		}
	}
}
