package kube

import (
	"strings"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/vnet-cni/vnet-cni/ipamd/daemon"
	"github.com/vnet-cni/vnet-cni/ipamd/pool"
)

// fakeDaemon records the targets the agent sets.
type fakeDaemon struct {
	mu      sync.Mutex
	targets pool.Targets
	from    string
	changes chan struct{}
}

func (f *fakeDaemon) Report() daemon.Report    { return daemon.Report{} }
func (f *fakeDaemon) Changes() <-chan struct{} { return f.changes }
func (f *fakeDaemon) SetTargetsFrom(t pool.Targets, from string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.targets, f.from = t, from
	return nil
}

func (f *fakeDaemon) get() (pool.Targets, string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.targets, f.from
}

func nodeWithPods(pods string) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", UID: "uid-1"},
		Status: corev1.NodeStatus{Allocatable: corev1.ResourceList{corev1.ResourcePods: resource.MustParse(pods)}}}
}

// The agent's inputs (the configuration after a SIGHUP, the Node, the
// VNetNode's spec) reach the daemon composed, without an API server.
func TestAgentComposes(t *testing.T) {
	f := &fakeDaemon{changes: make(chan struct{})}
	base := pool.Targets{WarmIPTarget: 4, BatchSize: 2}
	a, err := New(f, Options{NodeName: "n1", REST: &rest.Config{Host: "https://127.0.0.1:1"}, Base: base})
	if err != nil {
		t.Fatal(err)
	}
	check := func(step string, want pool.Targets, from string) {
		t.Helper()
		if got, gotFrom := f.get(); got != want || gotFrom != from {
			t.Errorf("%s: daemon has %+v from %q, want %+v from %q", step, got, gotFrom, want, from)
		}
	}
	a.setNode(nodeWithPods("17"))
	check("node with 17 pods", pool.Targets{WarmIPTarget: 4, MaxIPs: 17, BatchSize: 2}, FromNode)
	if err := a.SetBase(pool.Targets{WarmIPTarget: 6, BatchSize: 2}); err != nil {
		t.Fatal(err)
	}
	check("reload", pool.Targets{WarmIPTarget: 6, MaxIPs: 17, BatchSize: 2}, FromNode)
	a.setVNetNode(&VNetNode{ObjectMeta: metav1.ObjectMeta{Name: "n1", Generation: 2}, Spec: Overrides{MaxIPs: ptr(9)}})
	check("override", pool.Targets{WarmIPTarget: 6, MaxIPs: 9, BatchSize: 2}, FromVNetNode)
	a.setVNetNode(&VNetNode{ObjectMeta: metav1.ObjectMeta{Name: "n1", Generation: 3}, Spec: Overrides{MaxIPs: ptr(5)}})
	check("refused override", pool.Targets{WarmIPTarget: 6, MaxIPs: 17, BatchSize: 2}, FromNode)
	a.mu.Lock()
	oerr := a.overrideErr
	a.mu.Unlock()
	if oerr == nil || !strings.Contains(oerr.Error(), "warmIPTarget 6 out of range 0..5") {
		t.Errorf("override error %v", oerr)
	}
	a.setVNetNode(nil)
	check("VNetNode gone", pool.Targets{WarmIPTarget: 6, MaxIPs: 17, BatchSize: 2}, FromNode)
	a.setNode(nodeWithPods("0"))
	check("no allocatable pods", pool.Targets{WarmIPTarget: 6, MaxIPs: 30, BatchSize: 2}, FromDefault)
	a.setNode(nil)
	check("node gone", pool.Targets{WarmIPTarget: 6, MaxIPs: 30, BatchSize: 2}, FromDefault)
	if err := a.SetBase(pool.Targets{BatchSize: 0}); err == nil {
		t.Error("SetBase accepted batchSize 0")
	}
}
