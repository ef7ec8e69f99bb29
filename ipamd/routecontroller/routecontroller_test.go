package routecontroller

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"github.com/vnet-cni/vnet-cni/cloud/azure/routetable"
)

func TestRouteOf(t *testing.T) {
	addrs := []corev1.NodeAddress{{Type: corev1.NodeHostName, Address: "n"}, {Type: corev1.NodeInternalIP, Address: "fd00::5"},
		{Type: corev1.NodeInternalIP, Address: "10.240.0.5"}}
	for _, tc := range []struct {
		name  string
		spec  corev1.NodeSpec
		addrs []corev1.NodeAddress
		want  routetable.Route
	}{
		{"dual stack: the IPv4 ones", corev1.NodeSpec{PodCIDRs: []string{"fd00:1::/64", "10.244.3.0/24"}}, addrs,
			routetable.Route{Node: "n", Prefix: netip.MustParsePrefix("10.244.3.0/24"), NextHop: netip.MustParseAddr("10.240.0.5")}},
		{"podCIDR only", corev1.NodeSpec{PodCIDR: "10.244.4.0/24"}, addrs,
			routetable.Route{Node: "n", Prefix: netip.MustParsePrefix("10.244.4.0/24"), NextHop: netip.MustParseAddr("10.240.0.5")}},
		{"no pod CIDR, no address", corev1.NodeSpec{}, nil, routetable.Route{Node: "n"}},
		{"garbage", corev1.NodeSpec{PodCIDRs: []string{"10.244.300.0/24"}}, []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "x"}},
			routetable.Route{Node: "n"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n"}, Spec: tc.spec, Status: corev1.NodeStatus{Addresses: tc.addrs}}
			if got := routeOf(n); got != tc.want {
				t.Errorf("routeOf = %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestReporter: an Event when a condition begins or its message changes,
// none while it lasts within the interval, one again after it.
func TestReporter(t *testing.T) {
	store := cache.NewStore(cache.MetaNamespaceKeyFunc)
	for _, n := range []string{"a", "b"} {
		if err := store.Add(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n, UID: types.UID("uid-" + n)}}); err != nil {
			t.Fatal(err)
		}
	}
	fr := record.NewFakeRecorder(100)
	r := newReporter(fr, time.Minute)
	now := time.Unix(1000, 0)
	drain := func() []string {
		var out []string
		for {
			select {
			case e := <-fr.Events:
				out = append(out, e)
			default:
				return out
			}
		}
	}
	over := routetable.Result{OverLimit: []string{"a"}, Rejected: map[string]string{"b": "the node has no pod CIDR", "gone": "x"}}
	r.report(now, store, over)
	got := drain()
	if len(got) != 2 || !strings.Contains(strings.Join(got, "|"), "Warning RouteLimitReached") || !strings.Contains(strings.Join(got, "|"), "Warning PodCIDRRejected the node's route is not programmed: the node has no pod CIDR") {
		t.Errorf("first round: %q", got)
	}
	for i := range 5 {
		r.report(now.Add(time.Duration(i)*time.Second), store, over)
	}
	if got := drain(); len(got) != 0 {
		t.Errorf("rounds within the interval: %q, want none", got)
	}
	changed := routetable.Result{OverLimit: []string{"a"}, Rejected: map[string]string{"b": "pod CIDR 10.10.0.0/24 is outside"}}
	r.report(now.Add(10*time.Second), store, changed)
	if got := drain(); len(got) != 1 || !strings.Contains(got[0], "outside") {
		t.Errorf("a changed reason: %q, want one Event", got)
	}
	r.report(now.Add(65*time.Second), store, changed)
	if got := drain(); len(got) != 1 || !strings.Contains(got[0], "RouteLimitReached") {
		t.Errorf("after the interval: %q, want a RouteLimitReached again", got)
	}
}

func TestNextBackoff(t *testing.T) {
	d := time.Duration(0)
	var seq []time.Duration
	for range 9 {
		d = nextBackoff(d)
		seq = append(seq, d)
	}
	if seq[0] != time.Second || seq[1] != 2*time.Second || seq[6] != time.Minute || seq[8] != time.Minute {
		t.Errorf("back-off %v, want 1s doubling up to 1m", seq)
	}
}

func TestNewDefaults(t *testing.T) {
	var rec noSync
	c, err := New(Options{REST: &rest.Config{Host: "https://127.0.0.1:1"}, Reconciler: rec, NodeName: "n", Interval: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	o := c.opts
	if o.LeaseName != "vnet-cni-routes" || o.LeaseNamespace != "vnet-cni" || o.LeaseDuration != 15*time.Second || o.RenewDeadline != 10*time.Second ||
		o.RetryPeriod != 2*time.Second || o.RemoveGrace != 10*time.Second || o.Debounce != time.Second {
		t.Errorf("defaults %+v", o)
	}
	for _, bad := range []Options{
		{Reconciler: rec, NodeName: "n"},
		{REST: &rest.Config{}, NodeName: "n"},
		{REST: &rest.Config{}, Reconciler: rec},
		{REST: &rest.Config{}, Reconciler: rec, NodeName: "n", LeaseDuration: 5 * time.Second, RenewDeadline: 5 * time.Second},
		{REST: &rest.Config{}, Reconciler: rec, NodeName: "n", Interval: -1},
	} {
		if _, err := New(bad); err == nil {
			t.Errorf("New(%+v): no error", bad)
		}
	}
}

// noSync is a Syncer New's checks never call.
type noSync struct{}

func (noSync) SyncWith(context.Context, []routetable.Route, routetable.SyncOptions) (routetable.Result, error) {
	return routetable.Result{}, nil
}
