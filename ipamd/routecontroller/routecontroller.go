// Package routecontroller is the cluster-wide half of kubenet mode's route
// programming: one vnet-ipamd of the cluster, elected with a
// coordination.k8s.io/v1 Lease, watches the Nodes and keeps the route
// table's vnet-cni routes equal to them (routetable's SyncWith): it adds
// and fixes routes, and it removes the routes of deleted nodes. Every node's
// daemon adds its own route with routetable's Ensure; the leader never
// removes such a route while its Node may only be missing from the
// informer's cache (see Options.RemoveGrace).
//
// Changes of Nodes are batched (Options.Debounce) into one Sync; a resync
// runs every Options.Interval. A 429 waits for its Retry-After, other
// errors back off exponentially from 1 s to 1 min. Rejected pod CIDRs and
// routes over the table's limit are reported as Warning Events on their
// Nodes and in Prometheus metrics.
package routecontroller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"github.com/vnet-cni/vnet-cni/cloud"
	"github.com/vnet-cni/vnet-cni/cloud/azure/routetable"
	"github.com/vnet-cni/vnet-cni/ipamd/kube"
)

// Defaults of Options.
const (
	DefaultLeaseName      = "vnet-cni-routes"
	DefaultLeaseNamespace = "vnet-cni"
	DefaultLeaseDuration  = 15 * time.Second
	DefaultRenewDeadline  = 10 * time.Second
	DefaultRetryPeriod    = 2 * time.Second
	DefaultInterval       = 30 * time.Second
	DefaultDebounce       = time.Second
	DefaultEventInterval  = 10 * time.Minute
)

// Reasons of the Warning Events on Nodes.
const (
	// ReasonRejected: the node's pod CIDR (or address) cannot be routed;
	// the message says why.
	ReasonRejected = "PodCIDRRejected"
	// ReasonLimitReached: the route table has no room for the node's route.
	ReasonLimitReached = "RouteLimitReached"
)

// Syncer is the part of routetable.Reconciler the controller uses: one
// call per round, with the routes of every Node in the informer's cache.
type Syncer interface {
	SyncWith(ctx context.Context, want []routetable.Route, opts routetable.SyncOptions) (routetable.Result, error)
}

var _ Syncer = (*routetable.Reconciler)(nil)

// Options configure a Controller.
type Options struct {
	// REST is the API server's client configuration; required. Only the
	// typed clients of coordination/v1 (the Lease) and core/v1 (Nodes,
	// Events) are made from it.
	REST *rest.Config
	// Reconciler writes the route table; required.
	Reconciler Syncer
	// NodeName is this daemon's node, its identity in the Lease; required.
	NodeName string
	// LeaseName and LeaseNamespace name the Lease (default
	// DefaultLeaseName in DefaultLeaseNamespace).
	LeaseName, LeaseNamespace string
	// LeaseDuration, RenewDeadline and RetryPeriod are client-go's leader
	// election timings (default 15s, 10s, 2s).
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	// Interval is the time between two resyncs (default 30s).
	Interval time.Duration
	// RemoveGrace is how long a route of vnet-cni whose node is not in the
	// informer's synced cache stays before it is removed (default
	// 2 × Interval): a node's daemon may have added it before the leader
	// saw the Node. The route of a Node the leader saw deleted goes at
	// once.
	RemoveGrace time.Duration
	// Debounce batches the Node changes of this long into one Sync
	// (default 1s).
	Debounce time.Duration
	// EventInterval is the shortest time between two Events of one reason
	// on one Node while the condition lasts (default 10m).
	EventInterval time.Duration
	// Registry gets the controller's metrics; none are registered if nil.
	Registry prometheus.Registerer
	// noRelease keeps the Lease at the end of Run, as a leader that dies
	// does (tests).
	noRelease bool
	Logger    *slog.Logger
}

// Controller is one candidate for the route controller's Lease.
type Controller struct {
	opts    Options
	rec     Syncer
	coord   rest.Interface
	core    rest.Interface
	log     *slog.Logger
	metrics *metrics
}

// New checks opts, fills in the defaults and registers the metrics.
func New(opts Options) (*Controller, error) {
	switch {
	case opts.REST == nil:
		return nil, errors.New("routecontroller: no API server configuration")
	case opts.Reconciler == nil:
		return nil, errors.New("routecontroller: no route table reconciler")
	case opts.NodeName == "":
		return nil, errors.New("routecontroller: no node name")
	case opts.LeaseDuration < 0 || opts.RenewDeadline < 0 || opts.RetryPeriod < 0 || opts.Interval < 0 ||
		opts.RemoveGrace < 0 || opts.Debounce < 0 || opts.EventInterval < 0:
		return nil, errors.New("routecontroller: negative durations")
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	if opts.LeaseName == "" {
		opts.LeaseName = DefaultLeaseName
	}
	if opts.LeaseNamespace == "" {
		opts.LeaseNamespace = DefaultLeaseNamespace
	}
	def(&opts.LeaseDuration, DefaultLeaseDuration)
	def(&opts.RenewDeadline, DefaultRenewDeadline)
	def(&opts.RetryPeriod, DefaultRetryPeriod)
	def(&opts.Interval, DefaultInterval)
	def(&opts.RemoveGrace, 2*opts.Interval)
	def(&opts.Debounce, DefaultDebounce)
	def(&opts.EventInterval, DefaultEventInterval)
	if opts.RenewDeadline >= opts.LeaseDuration {
		return nil, fmt.Errorf("routecontroller: renew deadline %s must be shorter than the lease duration %s", opts.RenewDeadline, opts.LeaseDuration)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	coord, err := coordClient(opts.REST)
	if err != nil {
		return nil, fmt.Errorf("routecontroller: %w", err)
	}
	core, err := kube.CoreClient(opts.REST)
	if err != nil {
		return nil, fmt.Errorf("routecontroller: %w", err)
	}
	m, err := newMetrics(opts.Registry)
	if err != nil {
		return nil, fmt.Errorf("routecontroller: metrics: %w", err)
	}
	return &Controller{opts: opts, rec: opts.Reconciler, coord: coord, core: core,
		log: opts.Logger.With("component", "route-controller"), metrics: m}, nil
}

// Run campaigns for the Lease until ctx is done; while it holds the Lease
// it keeps the route table in line with the Nodes, and when it loses the
// Lease it stops syncing and campaigns again. On ctx's end it releases the
// Lease if it holds it, and returns nil.
func (c *Controller) Run(ctx context.Context) error {
	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	defer broadcaster.Shutdown()
	broadcaster.StartRecordingToSink(kube.EventSink{C: c.core, Timeout: 10 * time.Second})
	recorder := broadcaster.NewRecorder(kube.CoreScheme, corev1.EventSource{Component: "vnet-ipamd-routes", Host: c.opts.NodeName})

	e := &elector{
		c: c.coord, namespace: c.opts.LeaseNamespace, name: c.opts.LeaseName, identity: c.opts.NodeName,
		leaseDuration: c.opts.LeaseDuration, renewDeadline: c.opts.RenewDeadline, retryPeriod: c.opts.RetryPeriod,
		log: c.log, release: !c.opts.noRelease,
		onNewLeader: func(identity string) {
			c.log.Info("route controller leader", "leader", identity, "self", identity == c.opts.NodeName)
		},
	}
	e.run(ctx, func(ctx context.Context) { c.lead(ctx, recorder) })
	return nil
}

// term is one leadership term's state, shared by the sync loop and the
// informer's handlers.
type term struct {
	kick chan struct{}

	// mu guards the fields below.
	mu sync.Mutex
	// deleted are the route names of Nodes the informer saw deleted.
	deleted map[string]bool
	// unknownSince is when each route without a Node was first seen in a
	// synced round.
	unknownSince map[string]time.Time
}

func (t *term) poke() {
	select {
	case t.kick <- struct{}{}:
	default:
	}
}

// lead is the leader's loop: a Node informer of its own, a round after
// the cache synced, after Node changes and every Interval, until ctx ends.
func (c *Controller) lead(ctx context.Context, recorder record.EventRecorder) {
	if ctx.Err() != nil {
		return
	}
	c.log.Info("leading the route controller", "lease", c.opts.LeaseNamespace+"/"+c.opts.LeaseName)
	c.metrics.leader.Set(1)
	defer c.metrics.leader.Set(0)
	defer c.log.Info("no longer leading the route controller")

	t := &term{kick: make(chan struct{}, 1), deleted: map[string]bool{}, unknownSince: map[string]time.Time{}}
	informer := cache.NewSharedIndexInformer(&cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return kube.ListNodes(ctx, c.core, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return kube.WatchNodes(ctx, c.core, o)
		},
	}, &corev1.Node{}, 0, cache.Indexers{})
	if _, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if n, ok := obj.(*corev1.Node); ok {
				t.mu.Lock()
				delete(t.deleted, routetable.RouteName(n.Name))
				t.mu.Unlock()
			}
			t.poke()
		},
		UpdateFunc: func(oldObj, newObj any) {
			o, ok1 := oldObj.(*corev1.Node)
			n, ok2 := newObj.(*corev1.Node)
			if !ok1 || !ok2 || routeOf(o) != routeOf(n) {
				t.poke()
			}
		},
		DeleteFunc: func(obj any) {
			name := ""
			switch n := obj.(type) {
			case *corev1.Node:
				name = n.Name
			case cache.DeletedFinalStateUnknown:
				if nn, ok := n.Obj.(*corev1.Node); ok {
					name = nn.Name
				}
			}
			if name != "" {
				t.mu.Lock()
				t.deleted[routetable.RouteName(name)] = true
				t.mu.Unlock()
			}
			t.poke()
		},
	}); err != nil {
		c.log.Error("node informer", "err", err)
		return
	}
	var wg sync.WaitGroup
	wg.Go(func() { informer.RunWithContext(ctx) })
	defer wg.Wait()
	if !cache.WaitForCacheSync(ctx.Done(), informer.HasSynced) {
		return
	}
	rep := newReporter(recorder, c.opts.EventInterval)

	next := time.Now() // the first round at once
	backoff := time.Duration(0)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		timer.Reset(time.Until(next))
		select {
		case <-ctx.Done():
			return
		case <-t.kick:
			// A change: a round within Debounce of the first change, unless
			// one is due sooner or the loop backs off.
			if at := time.Now().Add(c.opts.Debounce); backoff == 0 && at.Before(next) {
				next = at
			}
			continue
		case <-timer.C:
		}
		res, err := c.round(ctx, informer, t)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			kind := cloud.KindOf(err)
			c.metrics.syncErrors.WithLabelValues(kind.String()).Inc()
			backoff = nextBackoff(backoff)
			wait := backoff
			if ra := cloud.RetryAfterOf(err); kind == cloud.Throttled && ra > 0 {
				wait = ra
			}
			c.log.Warn("route table sync failed", "kind", kind.String(), "retryIn", wait, "err", err)
			next = time.Now().Add(wait)
			continue
		}
		backoff = 0
		rep.report(time.Now(), informer.GetStore(), res)
		c.metrics.overLimit.Set(float64(len(res.OverLimit)))
		c.metrics.rejected.Set(float64(len(res.Rejected)))
		c.metrics.programmed.Set(float64(len(res.Programmed)))
		next = time.Now().Add(c.opts.Interval)
	}
}

// nextBackoff doubles the back-off from 1 s up to 1 min.
func nextBackoff(d time.Duration) time.Duration {
	if d == 0 {
		return time.Second
	}
	return min(2*d, time.Minute)
}

// round makes one SyncWith with the routes of the Nodes in the cache.
func (c *Controller) round(ctx context.Context, informer cache.SharedIndexInformer, t *term) (routetable.Result, error) {
	start := time.Now()
	var want []routetable.Route
	for _, obj := range informer.GetStore().List() {
		if n, ok := obj.(*corev1.Node); ok {
			want = append(want, routeOf(n))
		}
	}
	synced := informer.HasSynced()
	t.mu.Lock()
	deleted := make(map[string]bool, len(t.deleted))
	for name := range t.deleted {
		deleted[name] = true
	}
	t.mu.Unlock()
	asked := map[string]bool{}
	keep := func(name string) bool {
		asked[name] = true
		switch {
		case !synced:
			return true
		case deleted[name]:
			return false
		}
		t.mu.Lock()
		defer t.mu.Unlock()
		first, ok := t.unknownSince[name]
		if !ok {
			first = start
			t.unknownSince[name] = first
		}
		return start.Sub(first) < c.opts.RemoveGrace
	}
	res, err := c.rec.SyncWith(ctx, want, routetable.SyncOptions{KeepUnknown: keep})
	c.metrics.puts.Add(float64(res.Puts))
	if err != nil {
		return res, err
	}
	// Forget what this round settled: routes gone, or whose node is back.
	t.mu.Lock()
	for name := range t.unknownSince {
		if !asked[name] || slices.Contains(res.Removed, name) {
			delete(t.unknownSince, name)
		}
	}
	for name := range deleted {
		if !asked[name] || slices.Contains(res.Removed, name) {
			delete(t.deleted, name)
		}
	}
	t.mu.Unlock()
	if res.Puts > 0 {
		c.log.Info("route table synced", "nodes", len(want), "puts", res.Puts, "added", res.Added, "changed", res.Changed,
			"removed", res.Removed, "overLimit", res.OverLimit, "rejected", len(res.Rejected), "took", time.Since(start).Round(time.Millisecond))
	}
	return res, nil
}
