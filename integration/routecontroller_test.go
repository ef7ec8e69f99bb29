package integration

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	azarm "github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	azcloud "github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v9"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/vnet-cni/vnet-cni/cloud/azure"
	"github.com/vnet-cni/vnet-cni/cloud/azure/routetable"
	"github.com/vnet-cni/vnet-cni/cloud/sim"
	"github.com/vnet-cni/vnet-cni/cloud/sim/arm"
	"github.com/vnet-cni/vnet-cni/integration/k8s/controlplane"
	"github.com/vnet-cni/vnet-cni/internal/nstest"
	"github.com/vnet-cni/vnet-cni/ipamd/routecontroller"
)

// routeControllerRules are the API permissions the route controller needs
// (on top of vnetIPAMDRules' nodes list/watch and events create/patch);
// TestRouteController runs it with exactly these.
var routeControllerRules = []rbacv1.PolicyRule{
	{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"list", "watch"}},
	{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create", "patch", "update"}},
	{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"get", "create", "update"}},
}

var rcClusterCIDR = netip.MustParsePrefix("10.244.0.0/16")

type rcToken string

func (s rcToken) GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
	return azcore.AccessToken{Token: string(s), ExpiresOn: time.Now().Add(time.Hour)}, nil
}

// rcCloud is a simulated ARM (control plane only) with the real SDK's
// route table clients; the SDK does not retry, so the sim counts every
// request the controller made.
type rcCloud struct {
	sim    *sim.Sim
	desc   sim.Description
	tables *armnetwork.RouteTablesClient
	routes *armnetwork.RoutesClient
}

func newRCCloud(t *testing.T, maxRoutes int) *rcCloud {
	t.Helper()
	s, err := sim.Start(context.Background(), sim.Options{
		Nodes: 1, Dir: t.TempDir(), NoFabric: true, StaticToken: "tok", MaxRoutes: maxRoutes,
		OperationDuration: 30 * time.Millisecond, PollInterval: 20 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	d := s.Description()
	client, err := azure.NewHTTPClient(d.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	f, err := armnetwork.NewClientFactory(d.SubscriptionID, rcToken("tok"), &azarm.ClientOptions{ClientOptions: policy.ClientOptions{
		Cloud: azcloud.Configuration{Services: map[azcloud.ServiceName]azcloud.ServiceConfiguration{
			azcloud.ResourceManager: {Endpoint: d.ARMEndpoint, Audience: d.ARMAudience},
		}},
		Transport: client,
		Retry:     policy.RetryOptions{MaxRetries: -1},
	}})
	if err != nil {
		t.Fatal(err)
	}
	return &rcCloud{sim: s, desc: d, tables: f.NewRouteTablesClient(), routes: f.NewRoutesClient()}
}

func (c *rcCloud) reconciler(t *testing.T, maxRoutes int) *routetable.Reconciler {
	t.Helper()
	r, err := routetable.New(routetable.Config{Client: c.tables, ResourceGroup: c.desc.ResourceGroup, Table: c.desc.RouteTable,
		ClusterCIDR: rcClusterCIDR, MaxRoutes: maxRoutes, PollFrequency: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func (c *rcCloud) putRoute(t *testing.T, name, prefix, hop string) {
	t.Helper()
	ctx := context.Background()
	p, err := c.routes.BeginCreateOrUpdate(ctx, c.desc.ResourceGroup, c.desc.RouteTable, name, armnetwork.Route{Properties: &armnetwork.RoutePropertiesFormat{
		AddressPrefix: to.Ptr(prefix), NextHopType: to.Ptr(armnetwork.RouteNextHopTypeVirtualAppliance), NextHopIPAddress: to.Ptr(hop),
	}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.PollUntilDone(ctx, nil); err != nil {
		t.Fatal(err)
	}
}

// table is the route table as "name prefix>hop", sorted.
func (c *rcCloud) table(t *testing.T) []string {
	t.Helper()
	resp, err := c.tables.Get(context.Background(), c.desc.ResourceGroup, c.desc.RouteTable, nil)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range resp.Properties.Routes {
		hop := ""
		if r.Properties.NextHopIPAddress != nil {
			hop = *r.Properties.NextHopIPAddress
		}
		out = append(out, fmt.Sprintf("%s %s>%s", *r.Name, *r.Properties.AddressPrefix, hop))
	}
	slices.Sort(out)
	return out
}

func (c *rcCloud) calls(op, status string) int {
	n := 0
	for s, k := range c.sim.ARM().Stats().Calls[op] {
		if status == "" || s == status {
			n += k
		}
	}
	return n
}

func (c *rcCloud) ownRoutes(t *testing.T) []string {
	t.Helper()
	var own []string
	for _, r := range c.table(t) {
		if strings.HasPrefix(r, routetable.NamePrefix) && !strings.HasPrefix(r, "vnetcni-x ") {
			own = append(own, r)
		}
	}
	return own
}

// rcEnv is the control plane shared by TestRouteController's cases.
type rcEnv struct {
	ctx   context.Context
	admin kubernetes.Interface
	rc    *rest.Config // the controller's identity: routeControllerRules only
	log   *slog.Logger
}

// rcNode is a Node as kubelet would register it and
// kube-controller-manager would give it a pod CIDR.
func (e *rcEnv) createNode(t *testing.T, name, podCIDR, ip string) {
	t.Helper()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if podCIDR != "" {
		n.Spec.PodCIDR = podCIDR
		n.Spec.PodCIDRs = []string{podCIDR}
	}
	n, err := e.admin.CoreV1().Nodes().Create(e.ctx, n, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// A patch: kube-controller-manager may have changed the Node already.
	patch := fmt.Sprintf(`{"status":{"addresses":[{"type":"Hostname","address":%q},{"type":"InternalIP","address":%q}]}}`, name, ip)
	if _, err := e.admin.CoreV1().Nodes().Patch(e.ctx, n.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}, "status"); err != nil {
		t.Fatal(err)
	}
}

func (e *rcEnv) deleteNode(t *testing.T, name string) {
	t.Helper()
	if err := e.admin.CoreV1().Nodes().Delete(e.ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
}

// deleteAllNodes leaves the cluster without Nodes for the next case.
func (e *rcEnv) deleteAllNodes(t *testing.T) {
	t.Helper()
	if err := e.admin.CoreV1().Nodes().DeleteCollection(context.Background(), metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
		t.Errorf("delete nodes: %v", err)
	}
}

// events are the Events of reason on the Node named node.
func (e *rcEnv) events(t *testing.T, node, reason string) []corev1.Event {
	t.Helper()
	l, err := e.admin.CoreV1().Events(metav1.NamespaceDefault).List(e.ctx, metav1.ListOptions{FieldSelector: fields.Set{
		"involvedObject.kind": "Node", "involvedObject.name": node, "reason": reason,
	}.String()})
	if err != nil {
		t.Fatal(err)
	}
	return l.Items
}

// controller is one running route controller.
type controller struct {
	name   string
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

func (c *controller) leader() float64 {
	mfs, err := c.reg.Gather()
	if err != nil {
		return -1
	}
	for _, mf := range mfs {
		if mf.GetName() == "vnetcni_ipamd_route_controller_leader" {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	return -1
}

func (c *controller) stop(t *testing.T) {
	t.Helper()
	c.once.Do(func() { c.stopOnce(t) })
}

func (c *controller) stopOnce(t *testing.T) {
	t.Helper()
	c.cancel()
	select {
	case err := <-c.done:
		if err != nil {
			t.Errorf("controller %s: Run: %v", c.name, err)
		}
	case <-time.After(30 * time.Second):
		t.Errorf("controller %s: Run did not return 30 s after its context ended", c.name)
	}
}

func (e *rcEnv) start(t *testing.T, name string, opts routecontroller.Options) *controller {
	t.Helper()
	reg := prometheus.NewRegistry()
	opts.REST = e.rc
	opts.NodeName = name
	opts.Registry = reg
	opts.Logger = e.log.With("controller", name)
	if opts.LeaseDuration == 0 {
		opts.LeaseDuration, opts.RenewDeadline, opts.RetryPeriod = 4*time.Second, 3*time.Second, 500*time.Millisecond
	}
	c, err := routecontroller.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(e.ctx)
	rc := &controller{name: name, reg: reg, cancel: cancel, done: make(chan error, 1)}
	go func() { rc.done <- c.Run(ctx) }()
	t.Cleanup(func() { rc.stop(t) })
	return rc
}

func (e *rcEnv) holder(t *testing.T, lease string) string {
	t.Helper()
	l, err := e.admin.CoordinationV1().Leases("vnet-cni").Get(e.ctx, lease, metav1.GetOptions{})
	if err != nil || l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}

func rcMetric(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := true
			for i := 0; i+1 < len(labels); i += 2 {
				ok := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						ok = true
					}
				}
				match = match && ok
			}
			if !match {
				continue
			}
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			}
		}
	}
	return sum
}

// TestRouteController runs the route controller (ipamd/routecontroller)
// against a real kube-apiserver (a control plane without workers; Nodes
// created through the API with their pod CIDR and InternalIP) and the
// simulated ARM through the real SDK, as an identity holding only
// routeControllerRules:
//   - leader: of three instances exactly one leads; the Nodes' routes
//     appear; a foreign route and a vnetcni- route outside the cluster
//     CIDR are never touched; a deleted Node's route is removed; the
//     leader cancelled in the middle of a slow write hands over, and the
//     next leader removes a second deleted Node's route;
//   - 50 nodes: their routes converge in a bounded number of PUTs, also
//     10 more under a 429 storm, honouring Retry-After;
//   - limit: MaxRoutes 3 with 4 nodes: three routes in, one
//     RouteLimitReached Event on the 4th Node (not one per round);
//   - bad input: no pod CIDR, one outside the cluster CIDR, two
//     overlapping: PodCIDRRejected Events, nothing programmed wrongly;
//   - race: a route a node's daemon added with Ensure before its Node
//     exists survives the leader's rounds; a route without a Node ever is
//     removed after RemoveGrace.
func TestRouteController(t *testing.T) {
	nstest.RequireRoot(t)
	etcd, err := exec.LookPath("etcd")
	if err != nil {
		t.Skip("no etcd: apt-get install etcd-server")
	}
	set := k8sBinaries(t)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	t.Cleanup(stop)
	ctx, cancel := context.WithTimeout(ctx, 8*time.Minute)
	t.Cleanup(cancel)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))

	nsPath, addr := controlPlaneNS(t)
	cp, err := controlplane.Start(ctx, controlplane.Config{Bin: set, Etcd: etcd, NetNS: nsPath, Addr: addr, Log: log})
	if err != nil {
		t.Fatalf("start control plane: %v", err)
	}
	t.Cleanup(func() {
		if err := cp.Stop(); err != nil {
			t.Errorf("stop control plane: %v", err)
		}
	})
	adminRC, err := cp.RESTConfig()
	if err != nil {
		t.Fatal(err)
	}
	admin := kubernetes.NewForConfigOrDie(adminRC)
	if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "vnet-cni"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	const user = "vnet-ipamd:routes"
	if _, err := admin.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "vnet-ipamd-routes-test"}, Rules: routeControllerRules,
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "vnet-ipamd-routes-test"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "vnet-ipamd-routes-test"},
		Subjects:   []rbacv1.Subject{{APIGroup: "rbac.authorization.k8s.io", Kind: "User", Name: user}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	kp, err := cp.SignClient(user)
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig := t.TempDir() + "/routes.kubeconfig"
	if err := cp.WriteKubeconfig(kubeconfig, user, kp); err != nil {
		t.Fatal(err)
	}
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	base, _ := cp.RESTConfig()
	rc.Dial = base.Dial
	e := &rcEnv{ctx: ctx, admin: admin, rc: rc, log: log}

	t.Run("leader", func(t *testing.T) { testRCLeader(t, e) })
	t.Run("50nodes", func(t *testing.T) { testRC50Nodes(t, e) })
	t.Run("limit", func(t *testing.T) { testRCLimit(t, e) })
	t.Run("badinput", func(t *testing.T) { testRCBadInput(t, e) })
	t.Run("race", func(t *testing.T) { testRCRace(t, e) })
	t.Run("cut", func(t *testing.T) { testRCLeaderCut(t, e) })
}

// cutTransport fails every request while cut is set: a leader whose node
// lost the API server, which can neither renew nor release its Lease.
type cutTransport struct {
	rt  http.RoundTripper
	cut *atomic.Bool
}

func (c cutTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if c.cut.Load() {
		return nil, errors.New("cut off from the API server")
	}
	return c.rt.RoundTrip(r)
}

// testRCLeaderCut: the leader is cut off from the API server. It stops
// leading once it could not renew for RenewDeadline; the other candidate
// takes the Lease only once it saw the record unchanged for
// LeaseDuration, so the two never lead at once.
func testRCLeaderCut(t *testing.T, e *rcEnv) {
	c := newRCCloud(t, 0)
	const lease = "routes-cut"
	opts := routecontroller.Options{Reconciler: c.reconciler(t, 0), LeaseName: lease, Interval: 2 * time.Second,
		LeaseDuration: 4 * time.Second, RenewDeadline: 3 * time.Second, RetryPeriod: 500 * time.Millisecond}
	var cut atomic.Bool
	wrapped := rest.CopyConfig(e.rc)
	wrapped.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { return cutTransport{rt: rt, cut: &cut} }
	a := (&rcEnv{ctx: e.ctx, admin: e.admin, rc: wrapped, log: e.log}).start(t, "cut-a", opts)
	waitFor(e.ctx, t, "cut-a leading", func() (bool, string) { return a.leader() == 1, "not leading" })
	b := e.start(t, "cut-b", opts)
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		if b.leader() == 1 {
			t.Fatal("cut-b leads while cut-a holds the Lease")
		}
		time.Sleep(50 * time.Millisecond)
	}
	cut.Store(true)
	start := time.Now()
	var aStopped, bLeads time.Duration
	var lastRenew *metav1.MicroTime
	for aStopped == 0 || bLeads == 0 {
		al, bl := a.leader(), b.leader()
		if al == 1 && bl == 1 {
			t.Fatalf("both lead %s after the cut", time.Since(start))
		}
		if al == 0 && aStopped == 0 {
			aStopped = time.Since(start)
		}
		if bl == 1 && bLeads == 0 {
			bLeads = time.Since(start)
		}
		// cut-a's last renewal, once a request it had on the way when the
		// cut came has ended (each try is bounded by RetryPeriod).
		if lastRenew == nil && time.Since(start) > opts.RetryPeriod+200*time.Millisecond {
			l, err := e.admin.CoordinationV1().Leases("vnet-cni").Get(e.ctx, lease, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if h := ptr.Deref(l.Spec.HolderIdentity, ""); h != "cut-a" || l.Spec.RenewTime == nil {
				t.Fatalf("%s after the cut the Lease is held by %q (renewed %v), want still cut-a", time.Since(start), h, l.Spec.RenewTime)
			}
			lastRenew = l.Spec.RenewTime
		}
		if time.Since(start) > 20*time.Second {
			t.Fatalf("after the cut: cut-a stopped after %s, cut-b leads after %s (0: not yet)", aStopped, bLeads)
		}
		time.Sleep(20 * time.Millisecond)
	}
	l, err := e.admin.CoordinationV1().Leases("vnet-cni").Get(e.ctx, lease, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if h := ptr.Deref(l.Spec.HolderIdentity, ""); h != "cut-b" {
		t.Errorf("the Lease's holder %q, want cut-b", h)
	}
	if l.Spec.LeaseTransitions == nil || *l.Spec.LeaseTransitions != 1 {
		t.Errorf("lease transitions %v, want 1", l.Spec.LeaseTransitions)
	}
	// Both stamps come from this machine's clock: cut-b acquired no
	// earlier than a lease duration after cut-a's last renewal.
	if lastRenew == nil || l.Spec.AcquireTime == nil {
		t.Errorf("cut-a's last renewal %v, cut-b's acquisition %v: want both", lastRenew, l.Spec.AcquireTime)
	} else if gap := l.Spec.AcquireTime.Sub(lastRenew.Time); gap < opts.LeaseDuration {
		t.Errorf("cut-b acquired the Lease %s after cut-a's last renewal, before it expired (%s)", gap, opts.LeaseDuration)
	} else {
		t.Logf("cut-b acquired the Lease %s after cut-a's last renewal (lease %s)", gap.Round(time.Millisecond), opts.LeaseDuration)
	}
	t.Logf("cut off: the leader stopped leading after %s, the other took over after %s (lease %s, renew deadline %s)",
		aStopped.Round(10*time.Millisecond), bLeads.Round(10*time.Millisecond), opts.LeaseDuration, opts.RenewDeadline)
	cut.Store(false)
}

func nodeCIDR(i int) string { return fmt.Sprintf("10.244.%d.0/24", i) }
func nodeIP(i int) string   { return fmt.Sprintf("10.240.%d.%d", 1+i/200, 4+i%200) }

func testRCLeader(t *testing.T, e *rcEnv) {
	defer e.deleteAllNodes(t)
	c := newRCCloud(t, 0)
	c.putRoute(t, "other-controller", "10.244.200.0/24", "10.240.0.202") // inside the cluster CIDR, another name
	c.putRoute(t, "vnetcni-x", "192.168.0.0/24", "10.240.0.201")         // vnet-cni's name, outside it
	foreign := c.table(t)
	const lease = "routes-leader"
	opts := routecontroller.Options{Reconciler: c.reconciler(t, 0), LeaseName: lease,
		Interval: 2 * time.Second, RemoveGrace: 3 * time.Second}
	ctrls := map[string]*controller{}
	for _, n := range []string{"cp-a", "cp-b", "cp-c"} {
		ctrls[n] = e.start(t, n, opts)
	}
	for i := 1; i <= 3; i++ {
		e.createNode(t, fmt.Sprintf("n%d", i), nodeCIDR(i), nodeIP(i))
	}
	waitFor(e.ctx, t, "three routes", func() (bool, string) {
		own := c.ownRoutes(t)
		return len(own) == 3, fmt.Sprint(c.table(t))
	})
	if got := c.table(t); !slices.Contains(got, "vnetcni-n2 10.244.2.0/24>10.240.1.6") {
		t.Errorf("table %v", got)
	}
	leaderOf := func() string {
		var leaders []string
		for n, ctl := range ctrls {
			if ctl.leader() == 1 {
				leaders = append(leaders, n)
			}
		}
		if len(leaders) != 1 {
			t.Errorf("leaders by the metric: %v, want exactly one", leaders)
			return ""
		}
		if h := e.holder(t, lease); h != leaders[0] {
			t.Errorf("the Lease's holder %q, the leader by the metric %q", h, leaders[0])
		}
		return leaders[0]
	}
	for range 5 {
		leaderOf()
		time.Sleep(300 * time.Millisecond)
	}
	first := leaderOf()

	e.deleteNode(t, "n1")
	waitFor(e.ctx, t, "n1's route removed", func() (bool, string) {
		return !slices.ContainsFunc(c.table(t), func(r string) bool { return strings.HasPrefix(r, "vnetcni-n1 ") }), fmt.Sprint(c.table(t))
	})

	// Cancel the leader while its next write is slow (2 s in ARM).
	c.sim.ARM().SetFaults(arm.Faults{Latency: map[string]arm.Duration{"RouteTables_CreateOrUpdate": arm.Duration(2 * time.Second)}})
	putsBefore := c.calls("RouteTables_CreateOrUpdate", "")
	e.deleteNode(t, "n2")
	waitFor(e.ctx, t, "the leader's write for n2", func() (bool, string) {
		return c.calls("RouteTables_CreateOrUpdate", "") > putsBefore, "no PUT yet"
	})
	ctrls[first].stop(t)
	c.sim.ARM().SetFaults(arm.Faults{})
	delete(ctrls, first)
	// The Lease names the new holder a moment before its controller
	// starts leading (and sets the metric): wait for both.
	waitFor(e.ctx, t, "a new leader", func() (bool, string) {
		h := e.holder(t, lease)
		ctl, ok := ctrls[h]
		return ok && ctl.leader() == 1, "holder " + h
	})
	second := leaderOf()
	waitFor(e.ctx, t, "n2's route removed", func() (bool, string) {
		return !slices.ContainsFunc(c.table(t), func(r string) bool { return strings.HasPrefix(r, "vnetcni-n2 ") }), fmt.Sprint(c.table(t))
	})
	got := c.table(t)
	for _, f := range foreign {
		if !slices.Contains(got, f) {
			t.Errorf("foreign route %q gone or changed: %v", f, got)
		}
	}
	if !slices.Contains(got, "vnetcni-n3 10.244.3.0/24>10.240.1.7") || len(got) != 3 {
		t.Errorf("table %v, want n3's and the two foreign routes", got)
	}
	t.Logf("leader %s cancelled mid-write, %s took over; table PUTs %d, GETs %d", first, second,
		c.calls("RouteTables_CreateOrUpdate", ""), c.calls("RouteTables_Get", ""))
}

func testRC50Nodes(t *testing.T, e *rcEnv) {
	defer e.deleteAllNodes(t)
	c := newRCCloud(t, 0)
	ctl := e.start(t, "cp-a", routecontroller.Options{Reconciler: c.reconciler(t, 0), LeaseName: "routes-50",
		Interval: 5 * time.Second})
	waitFor(e.ctx, t, "leading", func() (bool, string) { return ctl.leader() == 1, "not leading" })
	create := func(from, to int) {
		var wg sync.WaitGroup
		for w := range 5 {
			wg.Go(func() {
				for i := from + w; i < to; i += 5 {
					e.createNode(t, fmt.Sprintf("n%02d", i), nodeCIDR(i), nodeIP(i))
				}
			})
		}
		wg.Wait()
	}
	start := time.Now()
	create(0, 50)
	waitFor(e.ctx, t, "50 routes", func() (bool, string) {
		n := len(c.ownRoutes(t))
		return n == 50, fmt.Sprintf("%d routes", n)
	})
	took := time.Since(start)
	puts := c.calls("RouteTables_CreateOrUpdate", "")
	// Batched: at most one PUT per debounce window (1 s) while the Nodes
	// come in, and one more, however many Nodes each window brings.
	if bound := int(took/time.Second) + 2; puts > bound || puts > 25 {
		t.Errorf("50 nodes in %s took %d table PUTs, want at most %d (one per second of arrivals) and at most 25", took, puts, bound)
	}
	t.Logf("50 nodes: %d table PUTs, %d GETs, converged %s after the first Node was created", puts, c.calls("RouteTables_Get", ""), took.Round(time.Millisecond))

	c.sim.ARM().SetFaults(arm.Faults{Storm: &arm.Storm{Duration: arm.Duration(3 * time.Second), RetryAfterSeconds: 1}})
	stormStart := time.Now()
	create(50, 60)
	// The test's own reads would be throttled too: they wait for the end.
	time.Sleep(time.Until(stormStart.Add(3*time.Second + 100*time.Millisecond)))
	waitFor(e.ctx, t, "60 routes after the storm", func() (bool, string) {
		n := len(c.ownRoutes(t))
		return n == 60, fmt.Sprintf("%d routes", n)
	})
	throttled := c.calls("RouteTables_Get", "429") + c.calls("RouteTables_CreateOrUpdate", "429")
	stormPuts := c.calls("RouteTables_CreateOrUpdate", "") - puts
	if errs := rcMetric(t, ctl.reg, "vnetcni_ipamd_route_sync_errors_total", "kind", "throttled"); errs == 0 || throttled == 0 {
		t.Errorf("the storm throttled %d requests, the metric counts %v; want both > 0", throttled, errs)
	}
	// Retry-After 1 s over a 3 s storm: about three tries, never a hammer.
	if throttled > 6 {
		t.Errorf("%d requests during a 3 s storm with Retry-After 1 s, want at most 6", throttled)
	}
	if stormPuts > 4 {
		t.Errorf("%d PUTs for 10 nodes after the storm, want at most 4", stormPuts)
	}
	if m := rcMetric(t, ctl.reg, "vnetcni_ipamd_route_table_puts_total"); int(m) != c.calls("RouteTables_CreateOrUpdate", "") {
		t.Errorf("route_table_puts_total %v, the sim counted %d", m, c.calls("RouteTables_CreateOrUpdate", ""))
	}
	t.Logf("10 more nodes in a 3 s 429 storm: %d requests throttled, %d PUTs (429s included), converged %s after the storm began",
		throttled, stormPuts, time.Since(stormStart).Round(time.Millisecond))
}

func testRCLimit(t *testing.T, e *rcEnv) {
	defer e.deleteAllNodes(t)
	c := newRCCloud(t, 3)
	ctl := e.start(t, "cp-a", routecontroller.Options{Reconciler: c.reconciler(t, 3), LeaseName: "routes-limit",
		Interval: time.Second})
	for i := 1; i <= 4; i++ {
		e.createNode(t, fmt.Sprintf("l%d", i), nodeCIDR(i), nodeIP(i))
	}
	waitFor(e.ctx, t, "three routes and the event", func() (bool, string) {
		return len(c.ownRoutes(t)) == 3 && len(e.events(t, "l4", routecontroller.ReasonLimitReached)) > 0, fmt.Sprint(c.table(t))
	})
	time.Sleep(4 * time.Second) // four more rounds
	if got := c.ownRoutes(t); len(got) != 3 || slices.ContainsFunc(got, func(r string) bool { return strings.HasPrefix(r, "vnetcni-l4 ") }) {
		t.Errorf("table %v, want l1..l3's routes", got)
	}
	ev := e.events(t, "l4", routecontroller.ReasonLimitReached)
	if len(ev) != 1 || ev[0].Count > 1 || ev[0].Type != corev1.EventTypeWarning {
		t.Errorf("RouteLimitReached events on l4: %+v; want one Warning, sent once", ev)
	} else {
		t.Logf("l4: %s %s: %s", ev[0].Type, ev[0].Reason, ev[0].Message)
	}
	for _, n := range []string{"l1", "l2", "l3"} {
		if ev := e.events(t, n, routecontroller.ReasonLimitReached); len(ev) != 0 {
			t.Errorf("%s has a RouteLimitReached event: %v", n, ev[0].Message)
		}
	}
	if v := rcMetric(t, ctl.reg, "vnetcni_ipamd_routes_over_limit"); v != 1 {
		t.Errorf("routes_over_limit %v, want 1", v)
	}
	if n := c.calls("RouteTables_CreateOrUpdate", "400"); n != 0 {
		t.Errorf("%d writes refused by ARM", n)
	}
}

func testRCBadInput(t *testing.T, e *rcEnv) {
	defer e.deleteAllNodes(t)
	c := newRCCloud(t, 0)
	ctl := e.start(t, "cp-a", routecontroller.Options{Reconciler: c.reconciler(t, 0), LeaseName: "routes-bad",
		Interval: time.Second})
	e.createNode(t, "good", nodeCIDR(1), nodeIP(1))
	e.createNode(t, "nocidr", "", nodeIP(2))
	e.createNode(t, "outside", "10.10.0.0/24", nodeIP(3))
	e.createNode(t, "ov-a", nodeCIDR(4), nodeIP(4))
	e.createNode(t, "ov-b", "10.244.4.128/25", nodeIP(5))
	want := map[string]string{
		"nocidr":  "no pod CIDR",
		"outside": "outside the cluster CIDR",
		"ov-b":    "overlaps node ov-a's",
	}
	waitFor(e.ctx, t, "PodCIDRRejected events", func() (bool, string) {
		for n := range want {
			if len(e.events(t, n, routecontroller.ReasonRejected)) == 0 {
				return false, "none on " + n
			}
		}
		return true, ""
	})
	for n, w := range want {
		ev := e.events(t, n, routecontroller.ReasonRejected)
		if len(ev) != 1 || !strings.Contains(ev[0].Message, w) || ev[0].Type != corev1.EventTypeWarning {
			t.Errorf("%s: events %+v, want one Warning saying %q", n, ev, w)
		} else {
			t.Logf("%s: %s", n, ev[0].Message)
		}
	}
	for _, n := range []string{"good", "ov-a"} {
		if ev := e.events(t, n, routecontroller.ReasonRejected); len(ev) != 0 {
			t.Errorf("%s: unexpected event %s", n, ev[0].Message)
		}
	}
	got := c.table(t)
	if !slices.Equal(got, []string{"vnetcni-good 10.244.1.0/24>10.240.1.5", "vnetcni-ov-a 10.244.4.0/24>10.240.1.8"}) {
		t.Errorf("table %v, want only good's and ov-a's routes", got)
	}
	if v := rcMetric(t, ctl.reg, "vnetcni_ipamd_routes_rejected"); v != 3 {
		t.Errorf("routes_rejected %v, want 3", v)
	}
}

func testRCRace(t *testing.T, e *rcEnv) {
	defer e.deleteAllNodes(t)
	c := newRCCloud(t, 0)
	rec := c.reconciler(t, 0)
	const grace = 5 * time.Second
	ctl := e.start(t, "cp-a", routecontroller.Options{Reconciler: rec, LeaseName: "routes-race",
		Interval: time.Second, RemoveGrace: grace})
	waitFor(e.ctx, t, "leading", func() (bool, string) { return ctl.leader() == 1, "not leading" })
	e.createNode(t, "known", nodeCIDR(1), nodeIP(1))
	waitFor(e.ctx, t, "known's route", func() (bool, string) { return len(c.ownRoutes(t)) == 1, fmt.Sprint(c.table(t)) })

	// Two node daemons add their own routes before their Nodes exist; one
	// of them never registers.
	for _, r := range []routetable.Route{
		{Node: "late", Prefix: netip.MustParsePrefix(nodeCIDR(2)), NextHop: netip.MustParseAddr(nodeIP(2))},
		{Node: "ghost", Prefix: netip.MustParsePrefix(nodeCIDR(3)), NextHop: netip.MustParseAddr(nodeIP(3))},
	} {
		if res, err := rec.Ensure(e.ctx, r); err != nil || len(res.Programmed) != 1 {
			t.Fatalf("ensure %s: %+v, %v", r.Node, res, err)
		}
	}
	ensured := time.Now()
	gets := c.calls("RouteTables_Get", "")
	time.Sleep(grace / 2)
	if n := c.calls("RouteTables_Get", "") - gets; n < 2 {
		t.Fatalf("%d leader rounds in %s, want at least 2", n, grace/2)
	}
	if got := c.ownRoutes(t); len(got) != 3 {
		t.Fatalf("routes %v: the leader removed an Ensure'd route within the grace", got)
	}
	e.createNode(t, "late", nodeCIDR(2), nodeIP(2))
	waitFor(e.ctx, t, "ghost's route removed after the grace", func() (bool, string) {
		return !slices.ContainsFunc(c.table(t), func(r string) bool { return strings.HasPrefix(r, "vnetcni-ghost ") }), fmt.Sprint(c.table(t))
	})
	if d := time.Since(ensured); d < grace {
		t.Errorf("ghost's route removed %s after it was added, before the grace of %s", d, grace)
	}
	time.Sleep(2 * time.Second)
	if got := c.ownRoutes(t); !slices.Equal(got, []string{"vnetcni-known 10.244.1.0/24>10.240.1.5", "vnetcni-late 10.244.2.0/24>10.240.1.6"}) {
		t.Errorf("routes %v, want known's and late's", got)
	}
}
