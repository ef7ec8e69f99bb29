package routecontroller

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/rest"
)

// The Lease election is our own, over a REST client whose scheme holds the
// coordination.k8s.io/v1 types only: client-go's leaderelection package
// links its typed clientset and with it every API group of Kubernetes,
// which made vnet-ipamd 40 % larger. It writes the Lease as client-go does
// (holderIdentity, leaseDurationSeconds, acquireTime, renewTime,
// leaseTransitions), so that kubectl shows it and client-go candidates
// would interoperate, and it judges a Lease expired by the local time at
// which this candidate last saw the record change, never by comparing the
// holder's renewTime with its own clock.

var coordScheme = runtime.NewScheme()

func init() {
	utilruntime.Must(coordinationv1.AddToScheme(coordScheme))
}

// coordClient is a REST client for coordination.k8s.io/v1.
func coordClient(rc *rest.Config) (*rest.RESTClient, error) {
	c := rest.CopyConfig(rc)
	c.APIPath = "/apis"
	c.GroupVersion = &coordinationv1.SchemeGroupVersion
	c.NegotiatedSerializer = serializer.NewCodecFactory(coordScheme).WithoutConversion()
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	cl, err := rest.RESTClientFor(c)
	if err != nil {
		return nil, fmt.Errorf("coordination client: %w", err)
	}
	return cl, nil
}

// elector campaigns for one Lease.
type elector struct {
	c                                         rest.Interface
	namespace, name, identity                 string
	leaseDuration, renewDeadline, retryPeriod time.Duration
	log                                       *slog.Logger
	// onNewLeader is told each holder this candidate sees, once.
	onNewLeader func(identity string)
	// release is false only in tests of a leader that dies.
	release bool

	// observed is the record as last seen and observedAt when it was
	// first seen so (local clock).
	observed   coordinationv1.LeaseSpec
	observedRV string
	observedAt time.Time
	seenLeader string
}

// run campaigns until ctx is done; while it holds the Lease, lead runs
// with a context that ends when the Lease is lost (or ctx ends), and run
// waits for lead to return before it campaigns again. At ctx's end a held
// Lease is released, so another candidate takes it at once.
func (e *elector) run(ctx context.Context, lead func(context.Context)) {
	for {
		if !e.acquire(ctx) {
			return
		}
		leadCtx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			lead(leadCtx)
		}()
		e.renew(leadCtx)
		cancel()
		<-done
		if ctx.Err() != nil {
			if e.release {
				e.giveUp()
			}
			return
		}
		e.log.Warn("lost the route controller's Lease", "lease", e.namespace+"/"+e.name)
	}
}

// acquire tries every retryPeriod until it holds the Lease; false when ctx
// ended first.
func (e *elector) acquire(ctx context.Context) bool {
	t := time.NewTicker(e.retryPeriod)
	defer t.Stop()
	for {
		if e.try(ctx) {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
}

// renew renews every retryPeriod until a renewal has failed for
// renewDeadline, another candidate holds the Lease, or ctx is done.
func (e *elector) renew(ctx context.Context) {
	t := time.NewTicker(e.retryPeriod)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if e.try(ctx) {
			last = time.Now()
			continue
		}
		if h := e.observed.HolderIdentity; h != nil && *h != "" && *h != e.identity {
			return
		}
		if time.Since(last) > e.renewDeadline {
			return
		}
	}
}

// try reads the Lease and takes or renews it when it is free, expired or
// ours; false when another candidate holds it or a call failed.
func (e *elector) try(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, e.retryPeriod)
	defer cancel()
	seconds := int32(e.leaseDuration / time.Second)
	lease := &coordinationv1.Lease{}
	err := e.c.Get().Namespace(e.namespace).Resource("leases").Name(e.name).Do(ctx).Into(lease)
	// After the read: an acquisition is stamped no earlier than the moment
	// the holder's record was seen unchanged for its duration.
	now := metav1.NewMicroTime(time.Now())
	switch {
	case apierrors.IsNotFound(err):
		lease = &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: e.name, Namespace: e.namespace},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: &e.identity, LeaseDurationSeconds: &seconds,
				AcquireTime: &now, RenewTime: &now, LeaseTransitions: new(int32)},
		}
		out := &coordinationv1.Lease{}
		if err := e.c.Post().Namespace(e.namespace).Resource("leases").Body(lease).Do(ctx).Into(out); err != nil {
			e.log.Debug("create the Lease", "err", err)
			return false
		}
		e.observe(out)
		return true
	case err != nil:
		e.log.Debug("read the Lease", "err", err)
		return false
	}
	e.observe(lease)
	holder := deref(lease.Spec.HolderIdentity)
	held := holder != "" && holder != e.identity
	if held && time.Since(e.observedAt) < e.leaseDurationOf(lease) {
		return false
	}
	spec := lease.Spec
	spec.LeaseDurationSeconds, spec.RenewTime = &seconds, &now
	if holder != e.identity {
		transitions := deref(spec.LeaseTransitions)
		if holder != "" {
			transitions++
		}
		spec.HolderIdentity, spec.AcquireTime, spec.LeaseTransitions = &e.identity, &now, &transitions
	}
	lease.Spec = spec
	out := &coordinationv1.Lease{}
	// The update carries the resourceVersion read: a candidate that wrote
	// in between makes it a 409, and this one lost the round.
	if err := e.c.Put().Namespace(e.namespace).Resource("leases").Name(e.name).Body(lease).Do(ctx).Into(out); err != nil {
		e.log.Debug("update the Lease", "err", err)
		return false
	}
	e.observe(out)
	return true
}

// leaseDurationOf is the holder's lease duration, ours when it has none.
func (e *elector) leaseDurationOf(l *coordinationv1.Lease) time.Duration {
	if s := deref(l.Spec.LeaseDurationSeconds); s > 0 {
		return time.Duration(s) * time.Second
	}
	return e.leaseDuration
}

// observe records the Lease as seen; a changed record restarts its clock.
func (e *elector) observe(l *coordinationv1.Lease) {
	if l.ResourceVersion != e.observedRV {
		e.observed, e.observedRV, e.observedAt = l.Spec, l.ResourceVersion, time.Now()
	}
	if h := deref(l.Spec.HolderIdentity); h != e.seenLeader {
		e.seenLeader = h
		if e.onNewLeader != nil && h != "" {
			e.onNewLeader(h)
		}
	}
}

// giveUp releases a Lease this candidate holds: no holder, a one-second
// duration, so another candidate takes it at its next try.
func (e *elector) giveUp() {
	ctx, cancel := context.WithTimeout(context.Background(), e.retryPeriod)
	defer cancel()
	lease := &coordinationv1.Lease{}
	if err := e.c.Get().Namespace(e.namespace).Resource("leases").Name(e.name).Do(ctx).Into(lease); err != nil {
		e.log.Warn("release the Lease", "err", err)
		return
	}
	if deref(lease.Spec.HolderIdentity) != e.identity {
		return
	}
	now := metav1.NewMicroTime(time.Now())
	one, empty := int32(1), ""
	lease.Spec.HolderIdentity, lease.Spec.LeaseDurationSeconds, lease.Spec.RenewTime = &empty, &one, &now
	if err := e.c.Put().Namespace(e.namespace).Resource("leases").Name(e.name).Body(lease).Do(ctx).Error(); err != nil {
		e.log.Warn("release the Lease", "err", err)
		return
	}
	e.log.Info("released the route controller's Lease", "lease", e.namespace+"/"+e.name)
}

func deref[T any](p *T) T {
	if p == nil {
		var zero T
		return zero
	}
	return *p
}
