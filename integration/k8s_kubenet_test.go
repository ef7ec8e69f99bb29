package integration

// Kubenet mode under Kubernetes: kube-controller-manager allocates the
// Nodes' pod CIDRs, vnet-ipamd runs from manifests/overlays/kubenet, and
// the pods of two workers reach each other only through the VNet's route
// table, which the daemons program and one leader-elected daemon cleans.

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v9"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/vnet-cni/vnet-cni/cloud/azure/routetable"
	"github.com/vnet-cni/vnet-cni/cloud/sim"
	"github.com/vnet-cni/vnet-cni/integration/armops"
	k8scluster "github.com/vnet-cni/vnet-cni/integration/k8s/cluster"
	"github.com/vnet-cni/vnet-cni/integration/k8s/install"
	"github.com/vnet-cni/vnet-cni/integration/k8s/node"
	"github.com/vnet-cni/vnet-cni/integration/k8s/workload"
	"github.com/vnet-cni/vnet-cni/internal/nsnet"
	"github.com/vnet-cni/vnet-cni/ipamd/kube"
	"github.com/vnet-cni/vnet-cni/ipamd/routecontroller"
)

// newK8sKubenetEnv starts a kubenet cluster of two workers (pod CIDRs
// from kube-controller-manager, of kubenetCIDR) and installs vnet-cni
// from manifests/overlays/kubenet; it returns once the DaemonSet and the
// nodes are Ready.
func newK8sKubenetEnv(t *testing.T) *k8sEnv {
	t.Helper()
	e := newK8sEnvWith(t, func(o *k8scluster.Options) { o.IPAMDAsDaemonSet, o.KubenetCIDR = true, kubenetCIDR })
	t.Cleanup(func() {
		if t.Failed() && e.ctx.Err() == nil {
			t.Logf("DaemonSet pods:\n%s", e.daemonSetPodsLog())
		}
	})
	dir := t.TempDir()
	if err := install.KubenetOverlay(dir, "../manifests", e.c.Desc, nil); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if out, err := e.kubectl("apply", "-k", dir); err != nil {
		t.Fatalf("kubectl apply -k: %v\n%s", err, out)
	}
	e.waitDaemonSetReady(3 * time.Minute)
	e.waitNodesReady()
	t.Logf("kubenet DaemonSet and nodes Ready %s after kubectl apply", time.Since(start).Round(time.Millisecond))
	return e
}

// nodePodCIDR is the Node's one pod CIDR (kube-controller-manager's).
func (e *k8sEnv) nodePodCIDR(name string) (netip.Prefix, error) {
	n, err := e.c.Client.CoreV1().Nodes().Get(e.ctx, name, metav1.GetOptions{})
	if err != nil {
		return netip.Prefix{}, err
	}
	if len(n.Spec.PodCIDRs) != 1 {
		return netip.Prefix{}, fmt.Errorf("node %s: pod CIDRs %q", name, n.Spec.PodCIDRs)
	}
	return netip.ParsePrefix(n.Spec.PodCIDRs[0])
}

// routes reads the subnet's route table through ARM: route name to
// "prefix via next hop".
func (e *k8sEnv) routes() (map[string]string, error) {
	tables, err := armops.RouteTables(e.c.Desc, e.c.Sim.ARM())
	if err != nil {
		return nil, err
	}
	rt, err := tables.Get(e.ctx, e.c.Desc.ResourceGroup, sim.RouteTableName, nil)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, r := range rt.Properties.Routes {
		hop := ""
		if r.Properties.NextHopIPAddress != nil {
			hop = *r.Properties.NextHopIPAddress
		}
		out[*r.Name] = *r.Properties.AddressPrefix + " via " + hop
	}
	return out, nil
}

// addRoutes adds routes (name → prefix) with next hop VirtualAppliance
// hop to the route table by hand, as an operator with the portal would.
func (e *k8sEnv) addRoutes(hop string, add map[string]string) error {
	tables, err := armops.RouteTables(e.c.Desc, e.c.Sim.ARM())
	if err != nil {
		return err
	}
	rt, err := tables.Get(e.ctx, e.c.Desc.ResourceGroup, sim.RouteTableName, nil)
	if err != nil {
		return err
	}
	for name, prefix := range add {
		rt.Properties.Routes = append(rt.Properties.Routes, &armnetwork.Route{Name: to.Ptr(name), Properties: &armnetwork.RoutePropertiesFormat{
			AddressPrefix: to.Ptr(prefix), NextHopType: to.Ptr(armnetwork.RouteNextHopTypeVirtualAppliance), NextHopIPAddress: to.Ptr(hop),
		}})
	}
	poller, err := tables.BeginCreateOrUpdate(e.ctx, e.c.Desc.ResourceGroup, sim.RouteTableName, rt.RouteTable, nil)
	if err != nil {
		return err
	}
	_, err = poller.PollUntilDone(e.ctx, nil)
	return err
}

// networkCondition is the Node's NetworkUnavailable condition.
func (e *k8sEnv) networkCondition(name string) (*corev1.NodeCondition, error) {
	n, err := e.c.Client.CoreV1().Nodes().Get(e.ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	for i, c := range n.Status.Conditions {
		if c.Type == corev1.NodeNetworkUnavailable {
			return &n.Status.Conditions[i], nil
		}
	}
	return nil, fmt.Errorf("node %s has no NetworkUnavailable condition", name)
}

// leaseHolder is the holder of the route controller's Lease.
func (e *k8sEnv) leaseHolder() (string, int32, error) {
	l, err := e.c.Client.CoordinationV1().Leases(routecontroller.DefaultLeaseNamespace).Get(e.ctx, routecontroller.DefaultLeaseName, metav1.GetOptions{})
	if err != nil {
		return "", 0, err
	}
	var holder string
	var transitions int32
	if l.Spec.HolderIdentity != nil {
		holder = *l.Spec.HolderIdentity
	}
	if l.Spec.LeaseTransitions != nil {
		transitions = *l.Spec.LeaseTransitions
	}
	return holder, transitions, nil
}

// leading reads the daemon's route_controller_leader gauge from its
// metrics on the node's loopback.
func leading(ctx context.Context, n *node.Node) (bool, error) {
	body, err := workload.Fetch(ctx, nodeHTTP(n), "http://127.0.0.1:10093/metrics")
	if err != nil {
		return false, err
	}
	for _, l := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(l, "vnetcni_ipamd_route_controller_leader "); ok {
			return strings.TrimSpace(v) == "1", nil
		}
	}
	return false, fmt.Errorf("%s: no route_controller_leader metric", n.Name())
}

// TestK8sKubenet: two workers in kubenet mode installed from
// manifests/overlays/kubenet, whose ServiceAccount may take its Lease and
// patch Nodes' status, and nothing more than that and the base's rights.
// kube-controller-manager gives each Node a
// /24 of the cluster CIDR; each daemon programs its node's route
// (vnetcni-<node>: the pod CIDR via the node's address, read through ARM)
// and writes NetworkUnavailable False/RouteCreated; a Deployment's pods run
// on both with addresses of their node's pod CIDR and reach each other
// across the nodes without NAT. Exactly one daemon holds the Lease; a
// fake Node with a pod CIDR outside the cluster CIDR gets the
// controller's PodCIDRRejected Event and no route. The leader's node
// dies (kubelet stopped, vnet-ipamd SIGKILLed): the other daemon takes the
// Lease; its Node deleted: the new leader removes its route (and the pods
// of the two nodes no longer reach each other), the surviving node's route
// and two routes added by hand (one outside the cluster CIDR, one not
// named vnetcni-*) stay.
func TestK8sKubenet(t *testing.T) {
	e := newK8sKubenetEnv(t)

	t.Run("kubenet's rights, no more", func(t *testing.T) {
		e := e.with(t)
		const sa = "system:serviceaccount:vnet-cni:vnet-ipamd"
		lease, ns := routecontroller.DefaultLeaseName, routecontroller.DefaultLeaseNamespace
		for _, c := range []struct {
			verb, group, resource, sub, ns, name string
			want                                 bool
		}{
			{"create", "coordination.k8s.io", "leases", "", ns, "", true},
			{"get", "coordination.k8s.io", "leases", "", ns, lease, true},
			{"update", "coordination.k8s.io", "leases", "", ns, lease, true},
			{"get", "coordination.k8s.io", "leases", "", ns, "another", false},
			{"update", "coordination.k8s.io", "leases", "", ns, "another", false},
			{"delete", "coordination.k8s.io", "leases", "", ns, lease, false},
			{"list", "coordination.k8s.io", "leases", "", ns, "", false},
			{"create", "coordination.k8s.io", "leases", "", "kube-system", "", false},
			{"update", "coordination.k8s.io", "leases", "", "kube-node-lease", "node0", false},
			{"patch", "", "nodes", "status", "", "node0", true},
			{"update", "", "nodes", "status", "", "node0", false},
			{"patch", "", "nodes", "", "", "node0", false},
			{"delete", "", "nodes", "", "", "node0", false},
			{"list", "", "nodes", "", "", "", true},
			{"watch", "", "nodes", "", "", "", true},
		} {
			sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
				User:   sa,
				Groups: []string{"system:serviceaccounts", "system:serviceaccounts:vnet-cni", "system:authenticated"},
				ResourceAttributes: &authorizationv1.ResourceAttributes{
					Verb: c.verb, Group: c.group, Resource: c.resource, Subresource: c.sub, Namespace: c.ns, Name: c.name,
				},
			}}
			got, err := e.c.Client.AuthorizationV1().SubjectAccessReviews().Create(e.ctx, sar, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if got.Status.Allowed != c.want {
				t.Errorf("%s %s %s/%s %q (ns %q): allowed %v, want %v (%s)", sa, c.verb, c.group, c.resource+"/"+c.sub, c.name, c.ns,
					got.Status.Allowed, c.want, got.Status.Reason)
			}
		}
	})

	cidrs := map[string]netip.Prefix{}
	t.Run("pod CIDRs from kube-controller-manager", func(t *testing.T) {
		for _, n := range e.c.Nodes {
			p, err := e.nodePodCIDR(n.Name())
			if err != nil {
				t.Fatal(err)
			}
			if p.Bits() != 24 || !kubenetCIDR.Contains(p.Addr()) {
				t.Errorf("%s: pod CIDR %s, want a /24 of %s", n.Name(), p, kubenetCIDR)
			}
			for other, q := range cidrs {
				if q.Overlaps(p) {
					t.Errorf("%s's pod CIDR %s overlaps %s's %s", n.Name(), p, other, q)
				}
			}
			cidrs[n.Name()] = p
		}
		t.Logf("pod CIDRs %v", cidrs)
	})
	if len(cidrs) != len(e.c.Nodes) {
		t.FailNow()
	}
	wantRoute := func(n *node.Node) string { return cidrs[n.Name()].String() + " via " + n.IP().String() }

	t.Run("routes and conditions", func(t *testing.T) {
		e := e.with(t)
		e.waitFor("one vnetcni-<node> route per worker in the route table", time.Minute, func() (bool, string) {
			got, err := e.routes()
			if err != nil {
				return false, err.Error()
			}
			for _, n := range e.c.Nodes {
				if got[routetable.RouteName(n.Name())] != wantRoute(n) {
					return false, fmt.Sprintf("routes %v", got)
				}
			}
			return len(got) == len(e.c.Nodes), fmt.Sprintf("routes %v", got)
		})
		// The daemon writes the condition once its route is effective,
		// beside the pods' hold: wait for it a little.
		e.waitFor("NetworkUnavailable False/RouteCreated on every worker", 30*time.Second, func() (bool, string) {
			for _, n := range e.c.Nodes {
				c, err := e.networkCondition(n.Name())
				if err != nil {
					return false, err.Error()
				}
				if c.Status != corev1.ConditionFalse || c.Reason != "RouteCreated" {
					return false, fmt.Sprintf("%s: NetworkUnavailable %s reason %s (%s)", n.Name(), c.Status, c.Reason, c.Message)
				}
			}
			return true, ""
		})
		// The per-node object says the same: each VNetNode's route.
		e.waitFor("each worker's VNetNode with its route created", 30*time.Second, func() (bool, string) {
			out, err := e.kubectl("get", "vnetnodes", "-o", "json")
			if err != nil {
				return false, out
			}
			var list struct{ Items []kube.VNetNode }
			if err := json.Unmarshal([]byte(out), &list); err != nil {
				return false, err.Error()
			}
			byName := map[string]*kube.RouteStatus{}
			for _, v := range list.Items {
				byName[v.Name] = v.Status.Route
			}
			for _, n := range e.c.Nodes {
				r := byName[n.Name()]
				if r == nil || !r.Available || r.Reason != "RouteCreated" || r.PodCIDR+" via "+r.NextHop != wantRoute(n) {
					return false, fmt.Sprintf("%s: route status %+v, want %s created", n.Name(), r, wantRoute(n))
				}
			}
			return true, ""
		})
		if out, err := e.kubectl("get", "vnn", "-o", "wide"); err != nil {
			t.Errorf("kubectl get vnn -o wide: %v\n%s", err, out)
		} else {
			t.Logf("kubectl get vnn -o wide:\n%s", out)
			if strings.Count(out, "RouteCreated") != len(e.c.Nodes) {
				t.Errorf("the ROUTE column does not say RouteCreated for each of the %d workers", len(e.c.Nodes))
			}
		}
		got, _ := e.routes()
		t.Logf("route table: %v", got)
	})

	var pods []corev1.Pod
	t.Run("pods in their node's pod CIDR", func(t *testing.T) {
		e := e.with(t)
		const replicas = 6
		e.deployTestServer(replicas)
		pods = e.waitRunning(replicas, 3*time.Minute)
		perNode := map[string]int{}
		seen := map[netip.Addr]string{}
		for _, p := range pods {
			ip, err := netip.ParseAddr(p.Status.PodIP)
			if err != nil {
				t.Fatalf("%s: pod IP %q", p.Name, p.Status.PodIP)
			}
			if !cidrs[p.Spec.NodeName].Contains(ip) || ip == cidrs[p.Spec.NodeName].Addr().Next() {
				t.Errorf("%s on %s: %s is not a pod address of the node's pod CIDR %s", p.Name, p.Spec.NodeName, ip, cidrs[p.Spec.NodeName])
			}
			if other, dup := seen[ip]; dup {
				t.Errorf("%s and %s both have %s", p.Name, other, ip)
			}
			seen[ip] = p.Name
			perNode[p.Spec.NodeName]++
		}
		if len(perNode) != len(e.c.Nodes) {
			t.Errorf("pods per node %v, want pods on every worker", perNode)
		}
		t.Logf("%d pods Running: %v per node", len(pods), perNode)
	})
	a, b := podOn(pods, e.c.Nodes[0].Name()), podOn(pods, e.c.Nodes[1].Name())
	if a == nil || b == nil {
		t.Fatal("no pod on one of the workers")
	}

	t.Run("pod to pod across nodes", func(t *testing.T) {
		for _, c := range []struct {
			from, to *corev1.Pod
			n        *node.Node
		}{{a, b, e.c.Nodes[0]}, {b, a, e.c.Nodes[1]}} {
			id, err := e.viaPod(c.n, *c.from, "http://"+net.JoinHostPort(c.to.Status.PodIP, "8080")+"/")
			if err != nil {
				t.Errorf("%s → %s: %v", c.from.Name, c.to.Name, err)
				continue
			}
			if id.Hostname != c.to.Name || id.PodIP != c.to.Status.PodIP || id.Client != c.from.Status.PodIP {
				t.Errorf("%s (%s) → %s (%s) answered by %+v, want the pod seeing the client's own address", c.from.Name, c.from.Status.PodIP,
					c.to.Name, c.to.Status.PodIP, id)
			}
		}
	})

	var leader, other *node.Node
	var transitions int32
	t.Run("one leader", func(t *testing.T) {
		e := e.with(t)
		var holder string
		e.waitFor("a worker holds the Lease, its daemon alone leading", time.Minute, func() (bool, string) {
			var err error
			holder, transitions, err = e.leaseHolder()
			if err != nil {
				return false, err.Error()
			}
			var leaders []string
			for _, n := range e.c.Nodes {
				l, err := leading(e.ctx, n)
				if err != nil {
					return false, err.Error()
				}
				if l {
					leaders = append(leaders, n.Name())
				}
			}
			return len(leaders) == 1 && leaders[0] == holder, fmt.Sprintf("holder %q, daemons leading %v", holder, leaders)
		})
		for _, n := range e.c.Nodes {
			if n.Name() == holder {
				leader = n
			} else {
				other = n
			}
		}
		t.Logf("Lease held by %s (%d transitions)", holder, transitions)
	})
	if leader == nil || other == nil {
		t.FailNow()
	}

	t.Run("a pod CIDR outside the cluster CIDR", func(t *testing.T) {
		e := e.with(t)
		const name = "fake-outside"
		const outside = "10.200.7.0/24"
		fake := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{PodCIDR: outside, PodCIDRs: []string{outside}}}
		if _, err := e.c.Client.CoreV1().Nodes().Create(e.ctx, fake, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := e.c.Client.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
				t.Errorf("delete node %s: %v", name, err)
			}
		})
		// An address, so that the pod CIDR is what is wrong with it.
		// (A merge patch: kube-controller-manager writes the new Node too.)
		addr := []byte(`{"status":{"addresses":[{"type":"InternalIP","address":"10.240.0.250"}]}}`)
		if _, err := e.c.Client.CoreV1().Nodes().Patch(e.ctx, name, types.MergePatchType, addr, metav1.PatchOptions{}, "status"); err != nil {
			t.Fatal(err)
		}
		var ev corev1.Event
		e.waitFor("the route controller's PodCIDRRejected Event on "+name, time.Minute, func() (bool, string) {
			list, err := e.c.Client.CoreV1().Events("").List(e.ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + name})
			if err != nil {
				return false, err.Error()
			}
			var seen []string
			for _, x := range list.Items {
				if x.Reason == routecontroller.ReasonRejected && x.Source.Component == "vnet-ipamd-routes" {
					ev = x
					return true, ""
				}
				seen = append(seen, x.Source.Component+"/"+x.Reason)
			}
			return false, fmt.Sprintf("events %v", seen)
		})
		if ev.Type != corev1.EventTypeWarning || ev.Source.Host != leader.Name() || !strings.Contains(ev.Message, outside) {
			t.Errorf("event %s from %s: %s, want a Warning from the leader %s naming %s", ev.Type, ev.Source.Host, ev.Message, leader.Name(), outside)
		}
		// Two more rounds of the leader (route interval 2 s): still no
		// route for it.
		time.Sleep(5 * time.Second)
		got, err := e.routes()
		if err != nil {
			t.Fatal(err)
		}
		for rn, r := range got {
			if rn == routetable.RouteName(name) || strings.HasPrefix(r, outside) {
				t.Errorf("route %s: %s programmed for the rejected node", rn, r)
			}
		}
		t.Logf("event %s: %s", ev.Reason, ev.Message)
	})

	// Routes of someone else: outside the cluster CIDR though named like
	// vnet-cni's, and inside it under another name.
	foreign := map[string]string{routetable.NamePrefix + "operator-outside": "192.168.77.0/24", "operator-inside": "10.100.250.0/24"}
	hop := e.c.Desc.Nodes[len(e.c.Desc.Nodes)-1].PrimaryIP
	if err := e.addRoutes(hop, foreign); err != nil {
		t.Fatalf("add routes by hand: %v", err)
	}

	t.Run("the leader dies, the other takes the Lease", func(t *testing.T) {
		e := e.with(t)
		// The leader's VM as good as gone: its kubelet stopped (nothing
		// restarts the daemon), then its vnet-ipamd SIGKILLed (no release
		// of the Lease).
		if err := leader.Stop(node.Kubelet, syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		pids := processesInNetNS(t, leader.NetNS(), "vnet-ipamd")
		if len(pids) != 1 {
			t.Fatalf("%s: vnet-ipamd processes %v, want one", leader.Name(), pids)
		}
		if err := syscall.Kill(pids[0], syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		killed := time.Now()
		e.waitFor(other.Name()+" holding the Lease", time.Minute, func() (bool, string) {
			holder, n, err := e.leaseHolder()
			if err != nil {
				return false, err.Error()
			}
			l, err := leading(e.ctx, other)
			if err != nil {
				return false, err.Error()
			}
			return holder == other.Name() && n > transitions && l, fmt.Sprintf("holder %q, %d transitions, %s leading %v", holder, n, other.Name(), l)
		})
		t.Logf("%s took the Lease %s after %s's daemon was killed (lease duration %s)", other.Name(),
			time.Since(killed).Round(100*time.Millisecond), leader.Name(), routecontroller.DefaultLeaseDuration)
	})

	t.Run("a deleted Node's route removed", func(t *testing.T) {
		e := e.with(t)
		dead, live := leader, other
		deadPod, livePod := a, b
		if dead == e.c.Nodes[1] {
			deadPod, livePod = b, a
		}
		if out, err := e.kubectl("delete", "node", dead.Name(), "--wait=true", "--timeout=1m"); err != nil {
			t.Fatalf("kubectl delete node: %v\n%s", err, out)
		}
		deleted := time.Now()
		var got map[string]string
		e.waitFor("the route of "+dead.Name()+" gone", time.Minute, func() (bool, string) {
			var err error
			got, err = e.routes()
			if err != nil {
				return false, err.Error()
			}
			_, there := got[routetable.RouteName(dead.Name())]
			return !there, fmt.Sprintf("routes %v", got)
		})
		t.Logf("%s's route removed %s after kubectl delete node", dead.Name(), time.Since(deleted).Round(100*time.Millisecond))
		// A few more rounds: what is not the dead node's stays.
		time.Sleep(5 * time.Second)
		got, err := e.routes()
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]string{routetable.RouteName(live.Name()): wantRoute(live)}
		for name, prefix := range foreign {
			want[name] = prefix + " via " + hop
		}
		if fmt.Sprint(sortedMap(got)) != fmt.Sprint(sortedMap(want)) {
			t.Errorf("route table %v, want %v", got, want)
		}
		// Without the route the live node's pod no longer reaches the
		// dead node's (still running on its containerd).
		target := "http://" + net.JoinHostPort(deadPod.Status.PodIP, "8080") + "/"
		if err := nsnet.Eventually(30*time.Second, func() error {
			if _, err := e.viaPod(live, *livePod, target); err == nil {
				return fmt.Errorf("%s still reaches %s", livePod.Name, deadPod.Name)
			}
			return nil
		}); err != nil {
			t.Error(err)
		}
		c, err := e.networkCondition(live.Name())
		if err != nil || c.Status != corev1.ConditionFalse || c.Reason != "RouteCreated" {
			t.Errorf("%s: NetworkUnavailable %+v (%v), want False RouteCreated", live.Name(), c, err)
		}
		t.Logf("route table: %v", got)
	})
}

// podOn returns the first pod on the node, nil if none.
func podOn(pods []corev1.Pod, nodeName string) *corev1.Pod {
	for i := range pods {
		if pods[i].Spec.NodeName == nodeName {
			return &pods[i]
		}
	}
	return nil
}

// sortedMap lists the map as sorted "key=value" pairs.
func sortedMap(m map[string]string) []string {
	var out []string
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}
