package kube

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/record"
)

// CoreScheme knows the core group's types only. client-go's typed clients
// and informer factories register every API group of Kubernetes (their
// package inits run in every vnet-ipamd, with the section or without, and
// double the binary); the agent needs Nodes and Events.
var (
	CoreScheme = runtime.NewScheme()
	coreParams = runtime.NewParameterCodec(CoreScheme)
)

func init() {
	utilruntime.Must(corev1.AddToScheme(CoreScheme))
}

// CoreClient is a REST client for the core group (/api/v1) of CoreScheme:
// what vnet-ipamd uses instead of client-go's typed clientset.
func CoreClient(rc *rest.Config) (*rest.RESTClient, error) {
	c := rest.CopyConfig(rc)
	c.APIPath = "/api"
	c.GroupVersion = &corev1.SchemeGroupVersion
	c.NegotiatedSerializer = serializer.NewCodecFactory(CoreScheme).WithoutConversion()
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	cl, err := rest.RESTClientFor(c)
	if err != nil {
		return nil, fmt.Errorf("kubernetes core client: %w", err)
	}
	return cl, nil
}

// ListNodes and WatchNodes are a Node informer's calls.
func ListNodes(ctx context.Context, c rest.Interface, o metav1.ListOptions) (*corev1.NodeList, error) {
	l := &corev1.NodeList{}
	err := c.Get().Resource("nodes").VersionedParams(&o, coreParams).Do(ctx).Into(l)
	return l, err
}

func WatchNodes(ctx context.Context, c rest.Interface, o metav1.ListOptions) (watch.Interface, error) {
	o.Watch = true
	return c.Get().Resource("nodes").VersionedParams(&o, coreParams).Watch(ctx)
}

// EventSink writes an event broadcaster's Events (core/v1) through the
// core client C, each call within Timeout (the sink's interface carries no
// context).
type EventSink struct {
	C       rest.Interface
	Timeout time.Duration
}

var _ record.EventSink = EventSink{}

func (s EventSink) Create(e *corev1.Event) (*corev1.Event, error) {
	ctx, cancel := context.WithTimeout(context.Background(), s.Timeout)
	defer cancel()
	out := &corev1.Event{}
	err := s.C.Post().Namespace(e.Namespace).Resource("events").Body(e).Do(ctx).Into(out)
	return out, err
}

func (s EventSink) Update(e *corev1.Event) (*corev1.Event, error) {
	ctx, cancel := context.WithTimeout(context.Background(), s.Timeout)
	defer cancel()
	out := &corev1.Event{}
	err := s.C.Put().Namespace(e.Namespace).Resource("events").Name(e.Name).Body(e).Do(ctx).Into(out)
	return out, err
}

func (s EventSink) Patch(e *corev1.Event, data []byte) (*corev1.Event, error) {
	ctx, cancel := context.WithTimeout(context.Background(), s.Timeout)
	defer cancel()
	out := &corev1.Event{}
	err := s.C.Patch(types.StrategicMergePatchType).Namespace(e.Namespace).Resource("events").Name(e.Name).Body(data).Do(ctx).Into(out)
	return out, err
}
