package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"github.com/vnet-cni/vnet-cni/ipamd/daemon"
	"github.com/vnet-cni/vnet-cni/ipamd/noderoute"
	"github.com/vnet-cni/vnet-cni/ipamd/pool"
)

// Daemon is what the agent needs of vnet-ipamd's daemon.
type Daemon interface {
	// Report is read after every signal of Changes.
	Report() daemon.Report
	Changes() <-chan struct{}
	// SetTargetsFrom is called when the node, the VNetNode's spec or the
	// configuration's targets change.
	SetTargetsFrom(t pool.Targets, from string) error
}

var _ Daemon = (*daemon.Daemon)(nil)

// Options configure the agent.
type Options struct {
	// NodeName is the Kubernetes node's name; required.
	NodeName string
	// REST is the API server's client configuration; required.
	REST *rest.Config
	// Base are the configuration's pool targets; MaxIPs 0 means the
	// node's allocatable pods.
	Base pool.Targets
	// FallbackMaxIPs is maxIPs while it should come from the node and the
	// node is not known (the API server is unreachable, the node has no
	// allocatable pods); default 30.
	FallbackMaxIPs int
	// StatusInterval is the shortest time between two status writes of
	// the VNetNode (default 5s); a write happens only on a change.
	StatusInterval time.Duration
	// EventInterval is the shortest time between two Events of one reason
	// (default 10m).
	EventInterval time.Duration
	// CallTimeout bounds each create and patch (default 10s).
	CallTimeout time.Duration
	// OnPodCIDR, when set, is called when the Node's pod CIDRs appear or
	// change: kubenet's daemon, waiting for them to connect, connects
	// again at once instead of at the end of its back-off.
	OnPodCIDR func()
	Logger    *slog.Logger
}

// Agent keeps the daemon's targets in line with its Node and VNetNode, and
// reports the pool in the VNetNode's status and in Events on the Node.
type Agent struct {
	opts    Options
	d       Daemon
	core    rest.Interface
	dyn     dynamic.Interface
	log     *slog.Logger
	nodeRef *corev1.ObjectReference
	kickCh  chan struct{}

	// mu guards the fields below.
	mu sync.Mutex
	// recorder is set by Run; Events before it are only logged.
	recorder    record.EventRecorder
	base        pool.Targets
	allocatable int
	nodeUID     types.UID
	// vnn is the VNetNode as the informer last saw it, nil when there is
	// none; overrideErr is why its spec was refused, appliedGen the
	// generation whose overrides the last OverridesApplied Event named.
	vnn         *VNetNode
	overrideErr error
	appliedGen  int64
	// network is what the Node says of the node's network (kubenet);
	// cidrEvents when each pod CIDR Event was last sent; netState the
	// node's route state to write into the Node's condition.
	network    nodeNetwork
	cidrEvents map[string]time.Time
	netState   *noderoute.State
	netKick    chan struct{}
}

// New returns an agent for d; it makes no call before Run.
func New(d Daemon, opts Options) (*Agent, error) {
	if opts.NodeName == "" {
		return nil, errors.New("kubernetes: no node name")
	}
	if opts.REST == nil {
		return nil, errors.New("kubernetes: no client configuration")
	}
	if opts.FallbackMaxIPs <= 0 {
		opts.FallbackMaxIPs = 30
	}
	if opts.StatusInterval <= 0 {
		opts.StatusInterval = 5 * time.Second
	}
	if opts.EventInterval <= 0 {
		opts.EventInterval = 10 * time.Minute
	}
	if opts.CallTimeout <= 0 {
		opts.CallTimeout = 10 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	rc := rest.CopyConfig(opts.REST)
	if rc.UserAgent == "" {
		rc.UserAgent = "vnet-ipamd/" + opts.NodeName
	}
	core, err := CoreClient(rc)
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes dynamic client: %w", err)
	}
	return &Agent{
		opts: opts, d: d, core: core, dyn: dyn, log: opts.Logger, base: opts.Base,
		kickCh: make(chan struct{}, 1), netKick: make(chan struct{}, 1),
		// As kubelet names its Node in Events: the UID is the node's name,
		// which is what kubectl describe node looks for.
		nodeRef: &corev1.ObjectReference{Kind: "Node", Name: opts.NodeName, UID: types.UID(opts.NodeName)},
	}, nil
}

// Targets returns the targets in effect now and what set them.
func (a *Agent) Targets() (pool.Targets, string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	t, from, _ := Compose(a.base, a.allocatable, a.opts.FallbackMaxIPs, a.overridesLocked())
	return t, from
}

// SetBase replaces the configuration's targets (a SIGHUP reload).
func (a *Agent) SetBase(t pool.Targets) error {
	if err := t.Validate(); err != nil {
		return fmt.Errorf("pool targets: %w", err)
	}
	a.mu.Lock()
	a.base = t
	a.mu.Unlock()
	return a.apply()
}

func (a *Agent) kick() {
	select {
	case a.kickCh <- struct{}{}:
	default:
	}
}

func (a *Agent) overridesLocked() Overrides {
	if a.vnn == nil {
		return Overrides{}
	}
	return a.vnn.Spec
}

// apply composes the targets and hands them to the daemon; a refused
// override is recorded (status, Event) once per change.
func (a *Agent) apply() error {
	a.mu.Lock()
	o := a.overridesLocked()
	t, from, oerr := Compose(a.base, a.allocatable, a.opts.FallbackMaxIPs, o)
	prev := a.overrideErr
	a.overrideErr = oerr
	var gen int64
	if a.vnn != nil {
		gen = a.vnn.Generation
	}
	newlyApplied := oerr == nil && !o.empty() && gen != a.appliedGen
	if oerr == nil && !o.empty() {
		a.appliedGen = gen
	}
	a.mu.Unlock()
	err := a.d.SetTargetsFrom(t, from)
	if err != nil {
		a.log.Error("pool targets from Kubernetes refused by the daemon", "err", err)
	}
	switch {
	case oerr != nil && (prev == nil || prev.Error() != oerr.Error()):
		a.log.Warn("the VNetNode's overrides are refused; the configuration's targets apply", "node", a.opts.NodeName, "err", oerr)
		a.event(corev1.EventTypeWarning, ReasonInvalidOverride, "VNetNode "+a.opts.NodeName+": "+oerr.Error())
	case newlyApplied:
		msg := fmt.Sprintf("VNetNode %s generation %d: warmIPTarget %d, minIPTarget %d, maxIPs %d, batchSize %d",
			a.opts.NodeName, gen, t.WarmIPTarget, t.MinIPTarget, t.MaxIPs, t.BatchSize)
		a.log.Info("applied the VNetNode's overrides", "node", a.opts.NodeName, "generation", gen)
		a.event(corev1.EventTypeNormal, ReasonOverridesApplied, msg)
	}
	a.kick()
	return err
}

func (a *Agent) event(typ, reason, msg string) {
	if len(msg) > maxEventMessage {
		msg = msg[:maxEventMessage]
	}
	a.mu.Lock()
	rec := a.recorder
	a.mu.Unlock()
	if rec != nil {
		rec.Event(a.nodeRef, typ, reason, msg)
	}
}

// maxEventMessage bounds an Event's message (events.k8s.io's limit).
const maxEventMessage = 1024

// byName lists and watches only the object named like the node.
func (a *Agent) byName(o *metav1.ListOptions) {
	o.FieldSelector = fields.OneTermEqualSelector("metadata.name", a.opts.NodeName).String()
}

// Run watches the Node and the VNetNode and reports the pool until ctx is
// done. An API server that does not answer only delays what it reports.
func (a *Agent) Run(ctx context.Context) error {
	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	defer broadcaster.Shutdown()
	broadcaster.StartRecordingToSink(EventSink{C: a.core, Timeout: a.opts.CallTimeout})
	rec := broadcaster.NewRecorder(CoreScheme, corev1.EventSource{Component: "vnet-ipamd", Host: a.opts.NodeName})
	a.mu.Lock()
	a.recorder = rec
	a.mu.Unlock()

	nodeInf := cache.NewSharedIndexInformer(&cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			a.byName(&o)
			return ListNodes(ctx, a.core, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			a.byName(&o)
			return WatchNodes(ctx, a.core, o)
		},
	}, &corev1.Node{}, 0, cache.Indexers{})
	if _, err := nodeInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    a.onNode,
		UpdateFunc: func(_, obj any) { a.onNode(obj) },
		DeleteFunc: func(any) { a.setNode(nil) },
	}); err != nil {
		return fmt.Errorf("node informer: %w", err)
	}
	vnnInf := cache.NewSharedIndexInformer(&cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			a.byName(&o)
			return a.dyn.Resource(VNetNodes).List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			a.byName(&o)
			return a.dyn.Resource(VNetNodes).Watch(ctx, o)
		},
	}, &unstructured.Unstructured{}, 0, cache.Indexers{})
	if _, err := vnnInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    a.onVNetNode,
		UpdateFunc: func(_, obj any) { a.onVNetNode(obj) },
		DeleteFunc: func(any) { a.setVNetNode(nil) },
	}); err != nil {
		return fmt.Errorf("vnetnode informer: %w", err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { nodeInf.RunWithContext(ctx) })
	wg.Go(func() { vnnInf.RunWithContext(ctx) })
	wg.Go(func() { a.reportNetwork(ctx) })
	a.log.Info("watching the Kubernetes node and its VNetNode", "node", a.opts.NodeName, "server", a.opts.REST.Host)
	a.report(ctx, vnnInf)
	return nil
}

func (a *Agent) onNode(obj any) {
	if n, ok := obj.(*corev1.Node); ok && n.Name == a.opts.NodeName {
		a.setNode(n)
	}
}

// setNode takes the node's allocatable pods (nil: the node is gone).
func (a *Agent) setNode(n *corev1.Node) {
	pods := 0
	var uid types.UID
	var nn nodeNetwork
	if n != nil {
		nn = networkOf(n)
		uid = n.UID
		if q, ok := n.Status.Allocatable[corev1.ResourcePods]; ok {
			v := q.Value()
			switch {
			case v < 1:
				a.log.Warn("the node's allocatable pods is not a usable maxIPs; the fallback applies", "node", n.Name, "pods", q.String())
			case v > MaxAddresses:
				a.log.Warn("the node's allocatable pods is above the pool's sanity bound; maxIPs is the bound", "node", n.Name, "pods", v, "bound", MaxAddresses)
				pods = MaxAddresses
			default:
				pods = int(v)
			}
		}
	}
	a.mu.Lock()
	changed := pods != a.allocatable || uid != a.nodeUID
	newCIDRs := len(nn.podCIDRs) > 0 && !slices.Equal(nn.podCIDRs, a.network.podCIDRs)
	a.allocatable, a.nodeUID = pods, uid
	a.network = nn
	a.mu.Unlock()
	if newCIDRs && a.opts.OnPodCIDR != nil {
		a.opts.OnPodCIDR()
	}
	if changed {
		a.log.Info("the Kubernetes node changed", "node", a.opts.NodeName, "allocatablePods", pods, "known", n != nil)
		_ = a.apply()
	}
}

func (a *Agent) onVNetNode(obj any) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok || u.GetName() != a.opts.NodeName {
		return
	}
	var v VNetNode
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &v); err != nil {
		// The CRD's schema makes this unlikely; keep what was there.
		a.log.Error("read the VNetNode", "node", a.opts.NodeName, "err", err)
		return
	}
	a.setVNetNode(&v)
}

func (a *Agent) setVNetNode(v *VNetNode) {
	a.mu.Lock()
	var oldSpec Overrides
	var oldGen int64
	if a.vnn != nil {
		oldSpec, oldGen = a.vnn.Spec, a.vnn.Generation
	}
	a.vnn = v
	changed := v == nil || v.Generation != oldGen || !equalOverrides(v.Spec, oldSpec)
	a.mu.Unlock()
	if changed {
		_ = a.apply()
		return
	}
	a.kick()
}

func equalOverrides(a, b Overrides) bool {
	eq := func(x, y *int) bool { return (x == nil) == (y == nil) && (x == nil || *x == *y) }
	return eq(a.WarmIPTarget, b.WarmIPTarget) && eq(a.MinIPTarget, b.MinIPTarget) &&
		eq(a.MaxIPs, b.MaxIPs) && eq(a.BatchSize, b.BatchSize)
}

// report turns the daemon's changes into Events and VNetNode status
// writes, until ctx is done: a write only when the status changed, at
// most one per StatusInterval; the object is created when the informer has
// synced without it and the Node is known (it is owned by the Node, and
// goes when the Node goes).
func (a *Agent) report(ctx context.Context, vnnInf cache.SharedIndexInformer) {
	dd := newDedupe(a.opts.EventInterval)
	var lastWrite time.Time
	var written []byte
	var writtenUID types.UID
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.d.Changes():
		case <-a.kickCh:
		case <-timer.C:
		}
		r := a.d.Report()
		now := time.Now()
		if reason, msg := conditionOf(r); reason != "" || dd.current != "" {
			if ev, ok := dd.observe(now, reason, msg); ok {
				a.log.Info("event on the node", "reason", ev.reason, "message", ev.message)
				a.event(corev1.EventTypeWarning, ev.reason, ev.message)
			}
		}

		a.mu.Lock()
		vnn, nodeUID, oerr, route := a.vnn, a.nodeUID, a.overrideErr, a.netState
		a.mu.Unlock()
		if vnn == nil {
			// The informer's sync and the Node's arrival may come without
			// a signal of their own: look again a second later.
			wait := time.Second
			if vnnInf.HasSynced() && nodeUID != "" && !a.create(ctx, nodeUID) {
				wait = a.opts.StatusInterval
			}
			resetTimer(timer, wait)
			continue
		}
		st := statusOf(r, vnn.Generation, oerr)
		if route != nil {
			st.Route = routeStatusOf(*route)
		}
		data, err := json.Marshal(map[string]any{"status": st})
		if err != nil {
			a.log.Error("encode the VNetNode status", "err", err)
			continue
		}
		if vnn.UID == writtenUID && string(data) == string(written) {
			continue
		}
		if wait := a.opts.StatusInterval - now.Sub(lastWrite); wait > 0 {
			resetTimer(timer, wait)
			continue
		}
		lastWrite = now
		if err := a.patchStatus(ctx, data); err != nil {
			a.log.Warn("write the VNetNode status; trying again at the next change or interval", "node", a.opts.NodeName, "err", err)
			resetTimer(timer, a.opts.StatusInterval)
			continue
		}
		written, writtenUID = data, vnn.UID
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

// create creates the VNetNode and reports whether it exists now.
func (a *Agent) create(ctx context.Context, nodeUID types.UID) bool {
	ctx, cancel := context.WithTimeout(ctx, a.opts.CallTimeout)
	defer cancel()
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": APIVersion,
		"kind":       Kind,
		"metadata": map[string]any{
			"name": a.opts.NodeName,
			"ownerReferences": []any{map[string]any{
				"apiVersion": "v1", "kind": "Node", "name": a.opts.NodeName, "uid": string(nodeUID),
			}},
		},
		"spec": map[string]any{},
	}}
	_, err := a.dyn.Resource(VNetNodes).Create(ctx, obj, metav1.CreateOptions{FieldManager: "vnet-ipamd"})
	switch {
	case err == nil:
		a.log.Info("created the VNetNode", "node", a.opts.NodeName)
	case apierrors.IsAlreadyExists(err):
	default:
		a.log.Warn("create the VNetNode; trying again later", "node", a.opts.NodeName, "err", err)
		return false
	}
	return true
}

func (a *Agent) patchStatus(ctx context.Context, data []byte) error {
	ctx, cancel := context.WithTimeout(ctx, a.opts.CallTimeout)
	defer cancel()
	_, err := a.dyn.Resource(VNetNodes).Patch(ctx, a.opts.NodeName, types.MergePatchType, data,
		metav1.PatchOptions{FieldManager: "vnet-ipamd"}, "status")
	if err != nil {
		return fmt.Errorf("patch vnetnode %s status: %w", a.opts.NodeName, err)
	}
	return nil
}
