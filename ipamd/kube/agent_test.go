package kube

import (
	"net/netip"
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

// The Node's pod CIDRs appearing or changing call OnPodCIDR once per
// change; the same pod CIDRs again, another field changing, or none do
// not.
func TestAgentOnPodCIDR(t *testing.T) {
	f := &fakeDaemon{changes: make(chan struct{})}
	calls := 0
	a, err := New(f, Options{NodeName: "n1", REST: &rest.Config{Host: "https://127.0.0.1:1"}, Base: pool.Targets{WarmIPTarget: 4, BatchSize: 2},
		OnPodCIDR: func() { calls++ }})
	if err != nil {
		t.Fatal(err)
	}
	withCIDRs := func(pods string, cidrs ...string) *corev1.Node {
		n := nodeWithPods(pods)
		n.Spec.PodCIDRs = cidrs
		return n
	}
	cluster := netip.MustParsePrefix("10.100.0.0/16")
	for _, step := range []struct {
		what  string
		node  *corev1.Node
		calls int
		cidr  string // what PodCIDR returns, "" an error
	}{
		{"no pod CIDR", withCIDRs("17"), 0, ""},
		{"the pod CIDR written", withCIDRs("17", "10.100.3.0/24"), 1, "10.100.3.0/24"},
		{"the same again", withCIDRs("17", "10.100.3.0/24"), 1, "10.100.3.0/24"},
		{"allocatable pods changed", withCIDRs("20", "10.100.3.0/24"), 1, "10.100.3.0/24"},
		{"another pod CIDR", withCIDRs("20", "10.100.4.0/24"), 2, "10.100.4.0/24"},
		{"the Node gone", nil, 2, ""},
		{"back with it", withCIDRs("20", "10.100.4.0/24"), 3, "10.100.4.0/24"},
	} {
		a.setNode(step.node)
		if calls != step.calls {
			t.Errorf("%s: OnPodCIDR called %d times in all, want %d", step.what, calls, step.calls)
		}
		p, err := a.PodCIDR(cluster)
		switch {
		case step.cidr == "" && err == nil:
			t.Errorf("%s: pod CIDR %s, want an error", step.what, p)
		case step.cidr != "" && (err != nil || p.String() != step.cidr):
			t.Errorf("%s: pod CIDR %s (%v), want %s", step.what, p, err, step.cidr)
		}
	}
}
