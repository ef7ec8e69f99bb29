// Package podbench measures pod start-up through kubelet the way
// clusterloader2's node-throughput profile does: pods created at a fixed
// rate on one node, creation→Running per pod (watched, millisecond
// resolution, and from the API's one-second timestamps), and the runtime's
// own histogram of sandbox network set-up (containerd's
// containerd_cri_sandbox_create_network_seconds) read before and after.
package podbench

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/vnet-cni/vnet-cni/integration/k8s/images"
)

// SandboxNetworkMetric is containerd's histogram of a sandbox's network
// set-up (the CNI ADD of the whole conflist, loopback included).
const SandboxNetworkMetric = "containerd_cri_sandbox_create_network_seconds"

// Round is one batch of pods.
type Round struct {
	// Client is an admin client; Namespace exists.
	Client    kubernetes.Interface
	Namespace string
	// Name prefixes the pods' names ("<name>-000", ...).
	Name string
	// Pods are created at Rate per second.
	Pods int
	Rate float64
	// Want is the range every pod's address must be in: a pod outside it
	// was set up by another network than the one measured.
	Want netip.Prefix
	// Metrics is containerd's metrics URL, reached through HTTP.
	Metrics string
	HTTP    *http.Client
	// Timeout bounds the wait for every pod to be Running (default 5 min).
	Timeout time.Duration
}

// Result is what a round measured.
type Result struct {
	// Startup: the create request sent → the pod seen Ready by a watch.
	Startup []time.Duration
	// APIStartup: creationTimestamp → the Ready condition's transition,
	// from the API's timestamps (one-second resolution).
	APIStartup []time.Duration
	// Sandbox is containerd's network set-up histogram over the round.
	Sandbox Histogram
	// Wall is the first create → the last pod Ready.
	Wall time.Duration
	// Slowest are the three slowest pods with their API timeline.
	Slowest []string
}

// PodSpec is the benchmark's pod: the harness's pause image (never
// pulled), no probes, no service account token, no grace period.
func PodSpec() corev1.PodSpec {
	grace := int64(0)
	automount := false
	return corev1.PodSpec{
		TerminationGracePeriodSeconds: &grace,
		AutomountServiceAccountToken:  &automount,
		Containers:                    []corev1.Container{{Name: "pause", Image: images.Pause, ImagePullPolicy: corev1.PullNever}},
	}
}

// Run creates the round's pods at its rate and waits until each is
// Running and Ready; then it deletes them and waits until they are gone.
func (r Round) Run(ctx context.Context) (Result, error) {
	if r.Timeout == 0 {
		r.Timeout = 5 * time.Minute
	}
	before, err := Scrape(ctx, r.HTTP, r.Metrics, SandboxNetworkMetric)
	if err != nil {
		return Result{}, err
	}
	w := newWatcher()
	lw := cache.NewListWatchFromClient(r.Client.CoreV1().RESTClient(), "pods", r.Namespace, fields.Everything())
	inf := cache.NewSharedIndexInformer(lw, &corev1.Pod{}, 0, cache.Indexers{})
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    w.seen,
		UpdateFunc: func(_, obj any) { w.seen(obj) },
	}); err != nil {
		return Result{}, err
	}
	ictx, stop := context.WithCancel(ctx)
	defer stop()
	go inf.Run(ictx.Done())
	if !cache.WaitForCacheSync(ictx.Done(), inf.HasSynced) {
		return Result{}, errors.New("pod informer did not sync")
	}

	ctx, cancel := context.WithTimeout(ctx, r.Timeout)
	defer cancel()
	tick := time.NewTicker(time.Duration(float64(time.Second) / r.Rate))
	defer tick.Stop()
	first := time.Now()
	for i := range r.Pods {
		if i > 0 {
			select {
			case <-ctx.Done():
				return Result{}, ctx.Err()
			case <-tick.C:
			}
		}
		name := fmt.Sprintf("%s-%03d", r.Name, i)
		w.created(name, time.Now())
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: r.Namespace, Labels: map[string]string{"bench": r.Name}}, Spec: PodSpec()}
		if _, err := r.Client.CoreV1().Pods(r.Namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			return Result{}, fmt.Errorf("create pod %s: %w", name, err)
		}
	}
	if err := w.wait(ctx, r.Pods); err != nil {
		return Result{}, err
	}
	res := Result{Wall: w.last().Sub(first)}
	pods, err := r.Client.CoreV1().Pods(r.Namespace).List(ctx, metav1.ListOptions{LabelSelector: "bench=" + r.Name})
	if err != nil {
		return Result{}, fmt.Errorf("list pods: %w", err)
	}
	for _, p := range pods.Items {
		ip, err := netip.ParseAddr(p.Status.PodIP)
		if err != nil || !r.Want.Contains(ip) {
			return Result{}, fmt.Errorf("pod %s has address %q, outside %s: another network set it up", p.Name, p.Status.PodIP, r.Want)
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				res.APIStartup = append(res.APIStartup, c.LastTransitionTime.Sub(p.CreationTimestamp.Time))
			}
		}
	}
	res.Startup = w.durations()
	res.Slowest = w.slowest(pods.Items, 3)
	after, err := Scrape(ctx, r.HTTP, r.Metrics, SandboxNetworkMetric)
	if err != nil {
		return Result{}, err
	}
	if res.Sandbox, err = after.Sub(before); err != nil {
		return Result{}, err
	}
	return res, r.deleteAll(ctx)
}

// deleteAll deletes the round's pods and waits until none is left.
func (r Round) deleteAll(ctx context.Context) error {
	zero := int64(0)
	sel := metav1.ListOptions{LabelSelector: "bench=" + r.Name}
	if err := r.Client.CoreV1().Pods(r.Namespace).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: &zero}, sel); err != nil {
		return fmt.Errorf("delete pods: %w", err)
	}
	for {
		l, err := r.Client.CoreV1().Pods(r.Namespace).List(ctx, sel)
		if err != nil {
			return fmt.Errorf("list pods: %w", err)
		}
		if len(l.Items) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d pods of %s still there: %w", len(l.Items), r.Name, ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// watcher records when each pod was created and first seen Ready.
type watcher struct {
	mu      sync.Mutex
	start   map[string]time.Time
	ready   map[string]time.Time
	changed chan struct{}
}

func newWatcher() *watcher {
	return &watcher{start: map[string]time.Time{}, ready: map[string]time.Time{}, changed: make(chan struct{}, 1)}
}

func (w *watcher) created(name string, at time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.start[name] = at
}

func (w *watcher) seen(obj any) {
	p, ok := obj.(*corev1.Pod)
	if !ok || p.Status.Phase != corev1.PodRunning {
		return
	}
	for _, c := range p.Status.Conditions {
		if c.Type != corev1.PodReady || c.Status != corev1.ConditionTrue {
			continue
		}
		now := time.Now()
		w.mu.Lock()
		if _, done := w.ready[p.Name]; !done {
			w.ready[p.Name] = now
		}
		w.mu.Unlock()
		select {
		case w.changed <- struct{}{}:
		default:
		}
	}
}

func (w *watcher) wait(ctx context.Context, n int) error {
	for {
		w.mu.Lock()
		got := len(w.ready)
		w.mu.Unlock()
		if got >= n {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d of %d pods Ready: %w", got, n, ctx.Err())
		case <-w.changed:
		case <-time.After(time.Second):
		}
	}
}

func (w *watcher) durations() []time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	var ds []time.Duration
	for name, at := range w.ready {
		if s, ok := w.start[name]; ok {
			ds = append(ds, at.Sub(s))
		}
	}
	return ds
}

// slowest describes the n slowest pods: their start-up and what the API
// says of them (scheduled, container started, Ready; one-second
// resolution, relative to the creation timestamp).
func (w *watcher) slowest(pods []corev1.Pod, n int) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	type slow struct {
		d time.Duration
		p corev1.Pod
	}
	var all []slow
	for _, p := range pods {
		all = append(all, slow{w.ready[p.Name].Sub(w.start[p.Name]), p})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].d > all[j].d })
	var out []string
	for _, s := range all[:min(n, len(all))] {
		at := func(t metav1.Time) string {
			if t.IsZero() {
				return "-"
			}
			return t.Sub(s.p.CreationTimestamp.Time).String()
		}
		var sched, ready metav1.Time
		for _, c := range s.p.Status.Conditions {
			switch c.Type {
			case corev1.PodScheduled:
				sched = c.LastTransitionTime
			case corev1.PodReady:
				ready = c.LastTransitionTime
			}
		}
		var started metav1.Time
		for _, c := range s.p.Status.ContainerStatuses {
			if c.State.Running != nil {
				started = c.State.Running.StartedAt
			}
		}
		out = append(out, fmt.Sprintf("%s %s (scheduled +%s, container started +%s, Ready +%s, restarts %d)",
			s.p.Name, s.d.Round(time.Millisecond), at(sched), at(started), at(ready), restarts(s.p)))
	}
	return out
}

func restarts(p corev1.Pod) int32 {
	var n int32
	for _, c := range p.Status.ContainerStatuses {
		n += c.RestartCount
	}
	return n
}

func (w *watcher) last() time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	var t time.Time
	for _, at := range w.ready {
		if at.After(t) {
			t = at
		}
	}
	return t
}
