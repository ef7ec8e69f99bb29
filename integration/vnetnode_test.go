package integration

import (
	"context"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/vnet-cni/vnet-cni/cloud/azure"
	"github.com/vnet-cni/vnet-cni/cloud/sim"
	"github.com/vnet-cni/vnet-cni/cloud/sim/arm"
	"github.com/vnet-cni/vnet-cni/integration/k8s/controlplane"
	"github.com/vnet-cni/vnet-cni/internal/nsnet"
	"github.com/vnet-cni/vnet-cni/internal/nstest"
	"github.com/vnet-cni/vnet-cni/ipamd/api"
	"github.com/vnet-cni/vnet-cni/ipamd/daemon"
	"github.com/vnet-cni/vnet-cni/ipamd/kube"
	"github.com/vnet-cni/vnet-cni/ipamd/pool"
	"github.com/vnet-cni/vnet-cni/ipamd/server"
	"github.com/vnet-cni/vnet-cni/ipamd/store"
)

// vnetIPAMDRules are the only API permissions vnet-ipamd's Kubernetes agent
// (ipamd/kube) needs; TestK8sVNetNode runs it with exactly these, and
// docs/kubernetes.md lists them for the DaemonSet's ClusterRole.
var vnetIPAMDRules = []rbacv1.PolicyRule{
	{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"list", "watch"}},
	{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
	{APIGroups: []string{"vnet-cni.io"}, Resources: []string{"vnetnodes"}, Verbs: []string{"list", "watch", "create"}},
	{APIGroups: []string{"vnet-cni.io"}, Resources: []string{"vnetnodes/status"}, Verbs: []string{"patch"}},
}

// TestK8sVNetNode runs vnet-ipamd's daemon (in this process, on the
// simulated Azure, with the real Azure provider and rpc socket) with its
// Kubernetes agent against a real kube-apiserver (a control plane without
// workers), as a user that holds only vnetIPAMDRules:
//   - a Node with allocatable pods 17 makes the pool's maxIPs 17;
//   - the CRD of manifests/crds, applied after the daemon started, gives the
//     node's VNetNode, created by the daemon and owned by the Node, with the
//     daemon's counts in its status, also after assignments;
//   - an override in its spec changes the pool within seconds, with the
//     cloud writes counted by the sim; overrides the CRD's validation
//     refuses never reach the daemon; one the daemon refuses (maxIPs below
//     the configuration's warm target) is reported in status and an Event;
//   - with kube-apiserver stopped (SIGSTOP), allocations and releases go on
//     and the daemon stays ready; the status catches up after SIGCONT;
//   - the pool at its limit gives exactly one PoolLimitReached Event, also
//     when the limit comes back.
func TestK8sVNetNode(t *testing.T) {
	nstest.RequireRoot(t)
	etcd, err := exec.LookPath("etcd")
	if err != nil {
		t.Skip("no etcd: apt-get install etcd-server")
	}
	set := k8sBinaries(t)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	t.Cleanup(stop)
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	t.Cleanup(cancel)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))

	nsPath, addr := controlPlaneNS(t)
	cp, err := controlplane.Start(ctx, controlplane.Config{Bin: set, Etcd: etcd, NetNS: nsPath, Addr: addr, Log: log})
	if err != nil {
		t.Fatalf("start control plane: %v", err)
	}
	apiPID := cp.PIDs()[controlplane.APIServer]
	t.Cleanup(func() {
		// Never leave it stopped, whatever failed.
		_ = syscall.Kill(apiPID, syscall.SIGCONT)
		if t.Failed() && ctx.Err() == nil {
			t.Logf("kube-apiserver log ends:\n%s", cp.LogTail(controlplane.APIServer, 30))
		}
		if err := cp.Stop(); err != nil {
			t.Errorf("stop control plane: %v", err)
		}
	})
	adminRC, err := cp.RESTConfig()
	if err != nil {
		t.Fatal(err)
	}
	admin := kubernetes.NewForConfigOrDie(adminRC)
	adminDyn := dynamic.NewForConfigOrDie(adminRC)

	// The Node, as kubelet would have registered it.
	const nodeName = "node0"
	node, err := admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pods := resource.MustParse("17")
	node.Status.Capacity = corev1.ResourceList{corev1.ResourcePods: pods}
	node.Status.Allocatable = corev1.ResourceList{corev1.ResourcePods: pods}
	if node, err = admin.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	// The daemon's identity, with the rules it needs and nothing more.
	const user = "vnet-ipamd:node0"
	if _, err := admin.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "vnet-ipamd-test"}, Rules: vnetIPAMDRules,
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "vnet-ipamd-test"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "vnet-ipamd-test"},
		Subjects:   []rbacv1.Subject{{APIGroup: "rbac.authorization.k8s.io", Kind: "User", Name: user}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	kp, err := cp.SignClient(user)
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig := filepath.Join(t.TempDir(), "vnet-ipamd.kubeconfig")
	if err := cp.WriteKubeconfig(kubeconfig, user, kp); err != nil {
		t.Fatal(err)
	}
	daemonRC, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	daemonRC.Dial = nsnet.DialContextIn(nsPath)

	// The simulated Azure and the daemon on its node0.
	s, err := sim.Start(ctx, sim.Options{Dir: t.TempDir(), NoFabric: true, StaticToken: "vnetnode-test", Nodes: 1,
		OperationDuration: 30 * time.Millisecond, PollInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	imdsHandler, _ := s.IMDSHandler("node0")
	imds := httptest.NewServer(imdsHandler)
	t.Cleanup(imds.Close)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("vnetnode-test"), 0o600); err != nil {
		t.Fatal(err)
	}
	cred, err := azure.NewTokenFileCredential(tokenFile)
	if err != nil {
		t.Fatal(err)
	}
	desc := s.Description()
	azCfg := azure.Config{ResourceManagerEndpoint: desc.ARMEndpoint, Audience: desc.ARMAudience, CAFile: desc.CAFile,
		IMDSEndpoint: imds.URL, Credential: cred, CallTimeout: 10 * time.Second, PollFrequency: 20 * time.Millisecond, MaxRetries: 1}
	st, err := store.Open(t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	// The configuration leaves maxIPs to the node.
	base := pool.Targets{WarmIPTarget: 4, BatchSize: 2}
	targets, from, _ := kube.Compose(base, 0, 30, kube.Overrides{})
	d, err := daemon.New(st, func(ctx context.Context) (daemon.Cloud, error) { return azure.New(ctx, azCfg) }, daemon.Options{
		Targets: targets, TargetsFrom: from, NodeName: nodeName,
		Cooldown: 2 * time.Second, AllocateWait: 200 * time.Millisecond, ResyncInterval: 2 * time.Second, MinWriteInterval: 10 * time.Millisecond,
		Logger: log.With("component", "daemon"),
	})
	if err != nil {
		t.Fatal(err)
	}
	agent, err := kube.New(d, kube.Options{NodeName: nodeName, REST: daemonRC, Base: base, FallbackMaxIPs: 30,
		StatusInterval: time.Second, CallTimeout: 3 * time.Second, Logger: log.With("component", "kube")})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "ipamd.sock")
	srv, err := server.New(sock, d, server.WithAllowedUIDs(uint32(os.Getuid())))
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stopRun := context.WithCancel(ctx)
	done := make(chan struct{}, 3)
	go func() { _ = srv.Serve(runCtx); done <- struct{}{} }()
	go func() { _ = d.Run(runCtx); done <- struct{}{} }()
	go func() { _ = agent.Run(runCtx); done <- struct{}{} }()
	t.Cleanup(func() {
		stopRun()
		_ = srv.Shutdown(context.Background())
		for range 3 {
			<-done
		}
	})
	client := api.NewClient(sock)
	status := func() api.StatusResponse {
		t.Helper()
		c, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		s, err := client.Status(c, api.StatusRequest{})
		if err != nil {
			t.Fatalf("status: %v", err)
		}
		return s
	}
	waitFor(ctx, t, "maxIPs 17 from the node", func() (bool, string) {
		s := status()
		return s.Ready && s.Pool.Max == 17 && s.Pool.MaxFrom == kube.FromNode, fmt.Sprintf("%+v", s.Pool)
	})

	// The CRD, applied as an operator would, after the daemon started.
	crd := filepath.Join("..", "manifests", "crds", "vnetnodes.vnet-cni.io.yaml")
	kubectl := func(args ...string) (string, error) {
		out, err := cp.Command(ctx, set.Path("kubectl"), append([]string{"--kubeconfig", cp.AdminKubeconfig}, args...)...).CombinedOutput()
		return string(out), err
	}
	if out, err := kubectl("apply", "-f", crd); err != nil {
		t.Fatalf("kubectl apply the CRD: %v\n%s", err, out)
	}
	if out, err := kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/vnetnodes.vnet-cni.io"); err != nil {
		t.Fatalf("CRD not established: %v\n%s", err, out)
	}
	vnn := adminDyn.Resource(kube.VNetNodes)
	get := func() (kube.VNetNode, error) {
		var v kube.VNetNode
		u, err := vnn.Get(ctx, nodeName, metav1.GetOptions{})
		if err != nil {
			return v, err
		}
		return v, runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &v)
	}
	// matches waits until the VNetNode's status shows the daemon's counts
	// and cond holds.
	matches := func(what string, cond func(kube.VNetNode) bool) kube.VNetNode {
		t.Helper()
		var v kube.VNetNode
		waitFor(ctx, t, what, func() (bool, string) {
			var err error
			if v, err = get(); err != nil {
				return false, err.Error()
			}
			p := status().Pool
			s := v.Status
			ok := s.Free == p.Free && s.Assigned == p.Assigned && s.Cooling == p.Cooling && s.MaxIPs == p.Max && s.TargetsFrom == p.MaxFrom
			return ok && (cond == nil || cond(v)), fmt.Sprintf("vnetnode %+v, daemon %+v", s, p)
		})
		return v
	}
	start := time.Now()
	v := matches("the VNetNode with the daemon's counts", func(v kube.VNetNode) bool { return v.Status.Ready && v.Status.NICs != "" })
	t.Logf("VNetNode with its status %s after the CRD was established: %+v", time.Since(start).Round(time.Millisecond), v.Status)
	if v.Status.MaxIPs != 17 || v.Status.TargetsFrom != kube.FromNode || v.Status.WarmIPTarget != 4 {
		t.Errorf("status %+v: want maxIPs 17 from the node, warmIPTarget 4", v.Status)
	}
	if refs := v.OwnerReferences; len(refs) != 1 || refs[0].Kind != "Node" || refs[0].UID != node.UID {
		t.Errorf("owner references %+v, want the Node %s", refs, node.UID)
	}
	if out, err := kubectl("get", "vnn", "-o", "wide"); err != nil {
		t.Errorf("kubectl get vnn: %v\n%s", err, out)
	} else {
		t.Logf("kubectl get vnn -o wide:\n%s", out)
		header := strings.Fields(strings.SplitN(out, "\n", 2)[0])
		if got, want := strings.Join(header, " "), "NAME FREE ASSIGNED COOLING LIMIT FROM NICS LAST ERROR ERROR TIME READY ROUTE AGE"; got != want {
			t.Errorf("columns %q, want %q", got, want)
		}
	}

	// Assignments show in the status.
	ids := 0
	allocate := func() (api.AllocateResponse, error) {
		ids++
		c, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		return client.Allocate(c, api.AllocateRequest{ContainerID: fmt.Sprintf("c%03d", ids), IfName: "eth0", PodNamespace: "default", PodName: fmt.Sprintf("p%d", ids)})
	}
	release := func(id int) {
		t.Helper()
		c, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if _, err := client.Release(c, api.ReleaseRequest{ContainerID: fmt.Sprintf("c%03d", id), IfName: "eth0"}); err != nil {
			t.Fatalf("release c%03d: %v", id, err)
		}
	}
	for range 3 {
		if _, err := allocate(); err != nil {
			t.Fatal(err)
		}
	}
	matches("3 assigned in the status", func(v kube.VNetNode) bool { return v.Status.Assigned == 3 })

	// An override changes the pool within seconds.
	writes := func() int {
		n := 0
		for _, c := range s.ARM().Stats().Calls["NetworkInterfaces_CreateOrUpdate"] {
			n += c
		}
		return n
	}
	patchSpec := func(spec string) error {
		_, err := vnn.Patch(ctx, nodeName, types.MergePatchType, []byte(`{"spec":`+spec+`}`), metav1.PatchOptions{})
		return err
	}
	before := writes()
	start = time.Now()
	if err := patchSpec(`{"warmIPTarget": 8}`); err != nil {
		t.Fatal(err)
	}
	v = matches("warmIPTarget 8 in effect", func(v kube.VNetNode) bool {
		return v.Status.TargetsFrom == kube.FromVNetNode && v.Status.WarmIPTarget == 8 &&
			v.Status.ObservedGeneration == v.Generation && v.Status.Free >= 8
	})
	t.Logf("override warmIPTarget 4 → 8: pool %d free, %d assigned after %s, %d NIC writes",
		v.Status.Free, v.Status.Assigned, time.Since(start).Round(time.Millisecond), writes()-before)
	if n := writes() - before; n < 1 || n > 2 {
		t.Errorf("%d NIC writes for the override, want 1 or 2 (one batched update, another after a conflict at most)", n)
	}

	// Overrides the CRD refuses: nothing reaches the daemon.
	for _, tc := range []struct{ spec, msg string }{
		{`{"warmIPTarget": 20, "maxIPs": 10}`, "warmIPTarget must not exceed maxIPs"},
		{`{"maxIPs": 0}`, "should be greater than or equal to 1"},
		{`{"batchSize": 2000}`, "should be less than or equal to 1024"},
		{`{"warmIPTarget": "many"}`, "spec.warmIPTarget"},
	} {
		err := patchSpec(tc.spec)
		if !apierrors.IsInvalid(err) && !apierrors.IsBadRequest(err) || err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("spec %s: error %v, want Invalid with %q", tc.spec, err, tc.msg)
		}
	}
	if p := status().Pool; p.MaxFrom != kube.FromVNetNode || p.Max != 17 {
		t.Errorf("after refused overrides: pool %+v, want maxIPs 17 from the vnetnode", p)
	}

	// An override the daemon refuses: maxIPs below the configuration's warm
	// target, valid for the CRD on its own.
	if err := patchSpec(`{"warmIPTarget": null, "maxIPs": 3}`); err != nil {
		t.Fatal(err)
	}
	v = matches("the override refused in status", func(v kube.VNetNode) bool {
		return v.Status.ObservedGeneration == v.Generation && v.Status.OverrideError != nil
	})
	if !strings.Contains(*v.Status.OverrideError, "warmIPTarget 4 out of range 0..3") || v.Status.TargetsFrom != kube.FromNode || v.Status.MaxIPs != 17 {
		t.Errorf("status %+v (override error %q): want the node's targets and the refusal", v.Status, *v.Status.OverrideError)
	}
	events := func(reason string) []corev1.Event {
		t.Helper()
		l, err := admin.CoreV1().Events(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{
			FieldSelector: fields.Set{"involvedObject.kind": "Node", "involvedObject.name": nodeName, "reason": reason}.String()})
		if err != nil {
			t.Fatal(err)
		}
		return l.Items
	}
	waitFor(ctx, t, "an InvalidOverride Event", func() (bool, string) {
		e := events(kube.ReasonInvalidOverride)
		return len(e) == 1, fmt.Sprintf("%d events", len(e))
	})
	if err := patchSpec(`{"maxIPs": null}`); err != nil {
		t.Fatal(err)
	}
	v = matches("the override cleared", func(v kube.VNetNode) bool {
		return v.Status.ObservedGeneration == v.Generation && v.Status.OverrideError == nil && v.Status.TargetsFrom == kube.FromNode
	})

	// Nothing changes, nothing is written: the resync rounds (every 2 s)
	// signal the agent, which finds the status unchanged. First the pool
	// settles: the warm target back at 4 from 8 releases what is in excess.
	v = matches("the pool settled at the warm target", func(v kube.VNetNode) bool {
		s := v.Status
		return s.Free >= 4 && s.Free <= 4+2-1 && s.Cooling == 0 && s.Releasing == 0
	})
	rv := v.ResourceVersion
	time.Sleep(3 * time.Second)
	if v, err := get(); err != nil || v.ResourceVersion != rv {
		t.Errorf("the VNetNode was written without a change: resourceVersion %s → %s (%v)", rv, v.ResourceVersion, err)
	}

	// kube-apiserver stopped: ADD and DEL go on, the daemon stays ready.
	if err := syscall.Kill(apiPID, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stoppedAt := time.Now()
	for i := range 3 {
		if _, err := allocate(); err != nil {
			t.Errorf("allocate %d with kube-apiserver stopped: %v", i, err)
		}
	}
	release(1)
	release(2)
	if s := status(); !s.Ready || s.Pool.Assigned != 4 {
		t.Errorf("with kube-apiserver stopped: ready %v (%s), %d assigned; want ready, 4", s.Ready, s.Reason, s.Pool.Assigned)
	}
	t.Logf("3 allocations, 2 releases and a status with kube-apiserver stopped: %s", time.Since(stoppedAt).Round(time.Millisecond))
	// Long enough for the agent's writes to time out at least once.
	time.Sleep(4 * time.Second)
	if s := status(); !s.Ready {
		t.Errorf("not ready after 4 s with kube-apiserver stopped: %s", s.Reason)
	}
	if err := syscall.Kill(apiPID, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	matches("the status caught up after SIGCONT", func(v kube.VNetNode) bool { return v.Status.Assigned == 4 })
	t.Logf("status caught up %s after kube-apiserver continued", time.Since(start).Round(time.Millisecond))

	// The pool at its limit: one Event, also when the limit comes back.
	for status().Pool.Assigned < 17 {
		if _, err := allocate(); err != nil && !api.IsTryAgain(err) {
			t.Fatal(err)
		}
	}
	if _, err := allocate(); !api.IsTryAgain(err) {
		t.Fatalf("allocation beyond the limit: %v, want try again", err)
	}
	waitFor(ctx, t, "a PoolLimitReached Event", func() (bool, string) {
		e := events(kube.ReasonLimitReached)
		return len(e) == 1, fmt.Sprintf("%d events", len(e))
	})
	// Room for the warm target, then the node's limit again.
	if err := patchSpec(`{"maxIPs": 30}`); err != nil {
		t.Fatal(err)
	}
	matches("room above the limit", func(v kube.VNetNode) bool {
		return v.Status.ObservedGeneration == v.Generation && !v.Status.LimitReached && v.Status.MaxIPs == 30
	})
	if err := patchSpec(`{"maxIPs": null}`); err != nil {
		t.Fatal(err)
	}
	matches("the limit back", func(v kube.VNetNode) bool {
		return v.Status.ObservedGeneration == v.Generation && v.Status.LimitReached && v.Status.MaxIPs == 17
	})
	// A later Event as a barrier: what was recorded before it has reached
	// the API server when it has.
	if err := patchSpec(`{"minIPTarget": 1}`); err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, "the OverridesApplied Event of the last override", func() (bool, string) {
		for _, e := range events(kube.ReasonOverridesApplied) {
			if strings.Contains(e.Message, "minIPTarget 1") {
				return true, ""
			}
		}
		return false, "not yet"
	})
	if e := events(kube.ReasonLimitReached); len(e) != 1 || e[0].Count != 1 || e[0].Type != corev1.EventTypeWarning {
		t.Errorf("PoolLimitReached events %+v, want one of count 1", e)
	} else {
		t.Logf("the Event: %s %s: %s (count %d, from %s)", e[0].Type, e[0].Reason, e[0].Message, e[0].Count, e[0].Source.Component)
	}

	// The subnet full: the Event says so, and the status's last error.
	s.ARM().SetFaults(arm.Faults{Errors: map[string]arm.ErrorFault{"NetworkInterfaces_CreateOrUpdate": {
		Rate: 1, Status: 400, Code: "SubnetIsFull", Message: "Subnet vnet-sim-subnet has no free address"}}})
	if err := patchSpec(`{"maxIPs": 30}`); err != nil {
		t.Fatal(err)
	}
	v = matches("the subnet full in the status", func(v kube.VNetNode) bool {
		e := v.Status.LastCloudError
		return e != nil && e.Active && e.Reason == "SubnetFull" && v.Status.MaxIPs == 30
	})
	waitFor(ctx, t, "a SubnetFull Event", func() (bool, string) {
		e := events(kube.ReasonSubnetFull)
		return len(e) == 1 && strings.Contains(e[0].Message, "no free address"), fmt.Sprintf("%d events", len(e))
	})
	if out, err := kubectl("get", "vnn"); err != nil {
		t.Errorf("kubectl get vnn: %v\n%s", err, out)
	} else {
		t.Logf("kubectl get vnn:\n%s", out)
		if !strings.Contains(out, "SubnetFull") {
			t.Errorf("kubectl get vnn does not show the last error SubnetFull")
		}
	}
}
