// Package noderoute keeps one kubenet node reachable in the VNet: its NIC's
// IP forwarding on, its own route (pod CIDR → node, next hop
// VirtualAppliance) in the route table, and the node's pods held back until
// that route is effective in the fabric. ARM answers a route table write
// before the hosts follow it, so "written" is not "working": the agent reads
// the NIC's effective routes and lifts the hold only when the route is
// there and active.
//
// Every round (Interval; sooner while the route is not effective yet) costs
// one NIC read, one route table read, and, only while the route is not
// known effective or after a write, one read of the effective routes. A
// write happens only when something differs: IP forwarding turned off (by
// an operator, a policy), the route missing or wrong.
package noderoute

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vnet-cni/vnet-cni/cloud"
	"github.com/vnet-cni/vnet-cni/cloud/azure/routetable"
)

// Cloud is what the agent needs of the cloud provider.
type Cloud interface {
	// EnsureIPForwarding turns the NIC's IP forwarding on when it is off
	// and reports whether it wrote.
	EnsureIPForwarding(ctx context.Context) (bool, error)
	// RouteEffective reports whether the NIC's effective routes hold an
	// active user route for prefix via nextHop.
	RouteEffective(ctx context.Context, prefix netip.Prefix, nextHop netip.Addr) (bool, error)
}

// Routes writes the node's own route (routetable.Reconciler.Ensure).
type Routes interface {
	Ensure(ctx context.Context, want routetable.Route) (routetable.Result, error)
}

// Holder holds the node's pods back (daemon.Daemon.SetHold).
type Holder interface {
	SetHold(name, reason string)
}

// DefaultSettle is Options.Settle's default.
const DefaultSettle = 10 * time.Second

// HoldName is the name of the agent's hold on the daemon.
const HoldName = "route"

// Reasons of State, as the Node's NetworkUnavailable condition carries
// them (RouteCreated is cloud-provider-azure's, which operators know).
const (
	ReasonRouteCreated      = "RouteCreated"
	ReasonRouteNotEffective = "RouteNotEffective"
	ReasonRouteLimitReached = "RouteLimitReached"
	ReasonPodCIDRRejected   = "PodCIDRRejected"
	ReasonIPForwardingOff   = "IPForwardingNotEnabled"
	ReasonRouteError        = "RouteError"
)

// State is the node's network as the agent last found it.
type State struct {
	// Available is true once the route is effective.
	Available bool
	// Reason is one of the Reason constants; Message says more.
	Reason  string
	Message string
	// Since is when Available last changed.
	Since time.Time
	// PodCIDR and NextHop are the route's: the node's pod CIDR via its
	// address.
	PodCIDR netip.Prefix
	NextHop netip.Addr
}

// Reporter is told every change of State (the Node's condition, Events).
type Reporter interface {
	NetworkState(st State)
}

// Options configure an Agent.
type Options struct {
	// Node is the node's name; PodCIDR and NodeIP its route.
	Node    string
	PodCIDR netip.Prefix
	NodeIP  netip.Addr
	Cloud   Cloud
	Routes  Routes
	Hold    Holder
	// Reporter is optional.
	Reporter Reporter
	// Interval is the period of the checks once the route is effective
	// (default 30s); Poll the period while it is not (default 2s), and
	// MaxBackoff bounds the wait after errors (default 2m).
	Interval   time.Duration
	Poll       time.Duration
	MaxBackoff time.Duration
	// Settle is how long after a write of the route (or of IP forwarding)
	// the node stays held even when the effective routes show the route
	// (default 10s): right after a write they may still show the state
	// before it (a route an operator deleted is still effective until the
	// deletion takes effect), so only a check Settle after the write
	// counts. Set it above the time the VNet takes to follow a change.
	Settle time.Duration
	// Registry, when set, gets the agent's metrics.
	Registry prometheus.Registerer
	Logger   *slog.Logger
}

// Agent keeps the node's route; Run runs it.
type Agent struct {
	opts Options
	log  *slog.Logger

	mu    sync.Mutex
	state State
	// effective is true while the route is known to be effective and
	// nothing was written since; wrote is when the last write was.
	effective bool
	wrote     time.Time
	kick      chan struct{}

	writes    *prometheus.CounterVec
	errs      *prometheus.CounterVec
	avail     prometheus.Gauge
	overLimit prometheus.Gauge
}

// New checks opts and returns an Agent; the node is held back from here
// until the route is effective.
func New(opts Options) (*Agent, error) {
	switch {
	case opts.Node == "":
		return nil, errors.New("noderoute: no node name")
	case !opts.PodCIDR.IsValid() || !opts.NodeIP.Is4():
		return nil, fmt.Errorf("noderoute: pod CIDR %s via %s: want an IPv4 route", opts.PodCIDR, opts.NodeIP)
	case opts.Cloud == nil || opts.Routes == nil || opts.Hold == nil:
		return nil, errors.New("noderoute: cloud, routes and hold are required")
	}
	if opts.Interval <= 0 {
		opts.Interval = 30 * time.Second
	}
	if opts.Poll <= 0 {
		opts.Poll = 2 * time.Second
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 2 * time.Minute
	}
	if opts.Settle < 0 {
		opts.Settle = 0
	} else if opts.Settle == 0 {
		opts.Settle = DefaultSettle
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	a := &Agent{opts: opts, log: opts.Logger, kick: make(chan struct{}, 1),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vnet_ipamd_node_route_writes_total",
			Help: "Writes for the node's own route: what=ip_forwarding|route."}, []string{"what"}),
		errs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vnet_ipamd_node_route_errors_total",
			Help: "Failed checks of the node's route, by reason."}, []string{"reason"}),
		avail: prometheus.NewGauge(prometheus.GaugeOpts{Name: "vnet_ipamd_node_network_available",
			Help: "1 while the node's pod CIDR route is effective in the VNet, 0 while its pods are held back."}),
		overLimit: prometheus.NewGauge(prometheus.GaugeOpts{Name: "vnet_ipamd_node_route_over_limit",
			Help: "1 while the node's route does not fit in the route table's limit."}),
	}
	if opts.Registry != nil {
		if err := errors.Join(opts.Registry.Register(a.writes), opts.Registry.Register(a.errs),
			opts.Registry.Register(a.avail), opts.Registry.Register(a.overLimit)); err != nil {
			return nil, fmt.Errorf("noderoute: metrics: %w", err)
		}
	}
	a.set(State{Reason: ReasonRouteNotEffective, Message: fmt.Sprintf("the route of the pod CIDR %s is not checked yet", opts.PodCIDR)})
	return a, nil
}

// State returns the node's network state now.
func (a *Agent) State() State {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.state
}

// Kick makes the agent check now.
func (a *Agent) Kick() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// Run checks the route until ctx is done.
func (a *Agent) Run(ctx context.Context) error {
	backoff := time.Duration(0)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		case <-a.kick:
		}
		st, err := a.round(ctx)
		if ctx.Err() != nil {
			return nil
		}
		a.set(st)
		var wait time.Duration
		switch {
		case err != nil:
			backoff = min(max(2*backoff, a.opts.Poll), a.opts.MaxBackoff)
			wait = backoff
			if ra := retryAfter(err); ra > wait {
				wait = ra
			}
			a.log.Warn("check of the node's route failed; trying again", "node", a.opts.Node, "podCIDR", a.opts.PodCIDR.String(),
				"reason", st.Reason, "err", err, "retryIn", wait.String())
		case st.Available:
			backoff, wait = 0, a.opts.Interval
		case st.Reason == ReasonRouteLimitReached || st.Reason == ReasonPodCIDRRejected:
			// Nothing changes by asking again soon: an operator must act
			// (or another node's route must go).
			backoff, wait = 0, a.opts.Interval
		default:
			backoff, wait = 0, a.opts.Poll
		}
		resetTimer(timer, wait)
	}
}

func retryAfter(err error) time.Duration {
	var ce *cloud.Error
	if errors.As(err, &ce) && ce.Kind == cloud.Throttled {
		return ce.RetryAfter
	}
	return 0
}

// round makes one check and returns the state it found.
func (a *Agent) round(ctx context.Context) (State, error) {
	o := a.opts
	wrote, err := o.Cloud.EnsureIPForwarding(ctx)
	if err != nil {
		a.errs.WithLabelValues(ReasonIPForwardingOff).Inc()
		return State{Reason: ReasonIPForwardingOff, Message: "cannot make sure of the NIC's IP forwarding (the VNet drops traffic for the pod CIDR without it): " + cloud.Reason(err)}, err
	}
	if wrote {
		a.writes.WithLabelValues("ip_forwarding").Inc()
		a.log.Warn("the NIC's IP forwarding was off: turned it on again", "node", o.Node)
		a.forget()
	}
	res, err := o.Routes.Ensure(ctx, routetable.Route{Node: o.Node, Prefix: o.PodCIDR, NextHop: o.NodeIP})
	if err != nil {
		a.errs.WithLabelValues(ReasonRouteError).Inc()
		return State{Reason: ReasonRouteError, Message: "cannot make sure of the node's route: " + cloud.Reason(err)}, err
	}
	if why, bad := res.Rejected[o.Node]; bad {
		a.errs.WithLabelValues(ReasonPodCIDRRejected).Inc()
		return State{Reason: ReasonPodCIDRRejected, Message: fmt.Sprintf("the route of the pod CIDR %s is refused: %s", o.PodCIDR, why)}, nil
	}
	for _, n := range res.OverLimit {
		if n == o.Node {
			a.overLimit.Set(1)
			a.errs.WithLabelValues(ReasonRouteLimitReached).Inc()
			return State{Reason: ReasonRouteLimitReached, Message: fmt.Sprintf("the route table is at its limit of routes: no room for the route of the pod CIDR %s (raise kubenet.maxRoutes if the subscription's limit is higher, or remove routes)", o.PodCIDR)}, nil
		}
	}
	a.overLimit.Set(0)
	if res.Puts > 0 {
		a.writes.WithLabelValues("route").Inc()
		a.log.Info("wrote the node's route", "node", o.Node, "podCIDR", o.PodCIDR.String(), "nextHop", o.NodeIP.String(),
			"added", strings.Join(res.Added, ","), "changed", strings.Join(res.Changed, ","))
		a.forget()
	}
	a.mu.Lock()
	known, settled := a.effective, time.Since(a.wrote) >= o.Settle
	a.mu.Unlock()
	if !settled {
		return State{Reason: ReasonRouteNotEffective, Message: fmt.Sprintf("the route of the pod CIDR %s via %s or the NIC's IP forwarding was just written; the VNet follows a change within %s", o.PodCIDR, o.NodeIP, o.Settle)}, nil
	}
	if known {
		return State{Available: true, Reason: ReasonRouteCreated, Message: fmt.Sprintf("the route of the pod CIDR %s via %s is effective", o.PodCIDR, o.NodeIP)}, nil
	}
	ok, err := o.Cloud.RouteEffective(ctx, o.PodCIDR, o.NodeIP)
	if err != nil {
		a.errs.WithLabelValues(ReasonRouteNotEffective).Inc()
		return State{Reason: ReasonRouteNotEffective, Message: "cannot read the NIC's effective routes: " + cloud.Reason(err)}, err
	}
	if !ok {
		return State{Reason: ReasonRouteNotEffective, Message: fmt.Sprintf("the route of the pod CIDR %s via %s is written but not effective in the VNet yet", o.PodCIDR, o.NodeIP)}, nil
	}
	a.mu.Lock()
	a.effective = true
	a.mu.Unlock()
	return State{Available: true, Reason: ReasonRouteCreated, Message: fmt.Sprintf("the route of the pod CIDR %s via %s is effective", o.PodCIDR, o.NodeIP)}, nil
}

// forget drops the knowledge that the route is effective: something was
// written, so the fabric follows again later.
func (a *Agent) forget() {
	a.mu.Lock()
	a.effective = false
	a.wrote = time.Now()
	a.mu.Unlock()
}

// set records st, holds or releases the node, and reports a change.
func (a *Agent) set(st State) {
	st.PodCIDR, st.NextHop = a.opts.PodCIDR, a.opts.NodeIP
	a.mu.Lock()
	prev := a.state
	if st.Available != prev.Available || prev.Since.IsZero() {
		st.Since = time.Now()
	} else {
		st.Since = prev.Since
	}
	a.state = st
	a.mu.Unlock()
	if st.Available {
		a.avail.Set(1)
		a.opts.Hold.SetHold(HoldName, "")
	} else {
		a.avail.Set(0)
		a.opts.Hold.SetHold(HoldName, st.Message)
	}
	if st.Available != prev.Available || st.Reason != prev.Reason || prev.Since.IsZero() {
		if st.Available {
			a.log.Info("the node's route is effective: its pods may start", "node", a.opts.Node, "podCIDR", a.opts.PodCIDR.String())
		}
		if a.opts.Reporter != nil {
			a.opts.Reporter.NetworkState(st)
		}
	}
}

func resetTimer(t *time.Timer, d time.Duration) {
	if !t.Stop() {
		select {
		case <-t.C:
		default:
		}
	}
	t.Reset(d)
}
