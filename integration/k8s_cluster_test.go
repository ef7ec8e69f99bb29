package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/vnet-cni/vnet-cni/integration/k8s/binaries"
	k8scluster "github.com/vnet-cni/vnet-cni/integration/k8s/cluster"
	"github.com/vnet-cni/vnet-cni/integration/k8s/node"
	"github.com/vnet-cni/vnet-cni/integration/k8s/workload"
	"github.com/vnet-cni/vnet-cni/internal/nsnet"
	"github.com/vnet-cni/vnet-cni/internal/nstest"
	"github.com/vnet-cni/vnet-cni/ipamd/api"
	"github.com/vnet-cni/vnet-cni/ipamd/config"
)

// k8sRuntime returns containerd's and the CNI plugins' builds, building
// them when VNET_K8S=1 and skipping the test otherwise (as k8sBinaries).
func k8sRuntime(t *testing.T) (ctr, plugins binaries.Set) {
	t.Helper()
	mods := []binaries.Module{binaries.Containerd(binaries.ContainerdVersion), binaries.CNIPlugins(binaries.CNIPluginsVersion)}
	sets := make([]binaries.Set, len(mods))
	for i, m := range mods {
		if set, ok := binaries.FindModule(binaries.Options{}, m); ok {
			sets[i] = set
			continue
		}
		if os.Getenv(envK8s) != "1" {
			t.Skipf("%s %s not built in %s: run `make k8s-bins` or set %s=1", m.Path, m.Version, binaries.DefaultModuleDir(m), envK8s)
		}
		set, err := binaries.EnsureModule(context.Background(), binaries.Options{Log: slog.New(slog.NewTextHandler(os.Stderr, nil))}, m)
		if err != nil {
			t.Fatal(err)
		}
		sets[i] = set
	}
	return sets[0], sets[1]
}

// k8sEnv is one cluster on the simulated VNet for a test.
type k8sEnv struct {
	t    *testing.T
	ctx  context.Context
	c    *k8scluster.Cluster
	kctl string
}

// newK8sEnv starts a cluster with two workers (vnet-ipamd deferred when
// deferIPAMD) and registers its teardown, with the checks that nothing of
// it is left: no process, no cgroup root, no mount point, the host's
// sysctls as before.
func newK8sEnv(t *testing.T, deferIPAMD bool, hook func(string, *config.Config)) *k8sEnv {
	t.Helper()
	return newK8sEnvWith(t, func(o *k8scluster.Options) { o.IPAMD, o.DeferIPAMD = hook, deferIPAMD })
}

// newK8sEnvWith is newK8sEnv with the cluster's options adjusted by opt.
func newK8sEnvWith(t *testing.T, opt func(*k8scluster.Options)) *k8sEnv {
	t.Helper()
	nstest.RequireRoot(t)
	etcd, err := exec.LookPath("etcd")
	if err != nil {
		t.Skip("no etcd: apt-get install etcd-server")
	}
	if _, err := exec.LookPath("nsenter"); err != nil {
		t.Skip("no nsenter (util-linux)")
	}
	if _, err := os.Stat("/usr/sbin/runc"); err != nil {
		t.Skip("no runc: apt-get install runc")
	}
	set := k8sBinaries(t)
	ctr, plugins := k8sRuntime(t)

	// Ctrl-C ends the context: the cluster tears itself down at once.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	t.Cleanup(stop)
	ctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	t.Cleanup(cancel)

	dir := t.TempDir()
	start := time.Now()
	opts := k8scluster.Options{
		Prefix: nstest.Prefix(t), Dir: dir, BinDir: "../bin",
		Kubernetes: set, Containerd: ctr, CNIPlugins: plugins, Etcd: etcd,
		Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	opt(&opts)
	c, err := k8scluster.Start(ctx, opts)
	if err != nil {
		t.Fatalf("start cluster: %v", err)
	}
	t.Logf("cluster started in %s (sim %s, control plane %s, images %s, nodes %s)", time.Since(start).Round(time.Millisecond),
		c.Timings.Sim.Round(time.Millisecond), c.Timings.ControlPlane.Round(time.Millisecond),
		c.Timings.Images.Round(time.Millisecond), c.Timings.Nodes.Round(time.Millisecond))
	var pids []int
	for _, n := range c.Nodes {
		for _, p := range n.PIDs() {
			pids = append(pids, p)
		}
	}
	for _, p := range c.CP.PIDs() {
		pids = append(pids, p)
	}
	sysctls := c.Sysctls()
	roots := c.CgroupRoots()
	mps := c.CreatedMountPoints()
	t.Cleanup(func() {
		if t.Failed() && ctx.Err() == nil {
			for _, n := range c.Nodes {
				for _, comp := range []string{node.Containerd, node.Kubelet, node.KubeProxy} {
					t.Logf("--- %s %s log ends:\n%s", n.Name(), comp, n.LogTail(comp, 25))
				}
			}
			if c.IPAMD != nil {
				for _, n := range c.IPAMD.Nodes {
					t.Logf("--- %s vnet-ipamd log ends:\n%s", n.Name, tailOf(n.LogPath, 15))
				}
			}
		}
		if err := c.Close(); err != nil {
			t.Errorf("close cluster: %v", err)
		}
		for _, p := range pids {
			if err := syscall.Kill(p, 0); err == nil {
				t.Errorf("pid %d still running after Close", p)
			}
		}
		for _, r := range roots {
			if node.CgroupRootExists(r) {
				t.Errorf("cgroup root %s still there after Close", r)
			}
		}
		for _, m := range mps {
			if _, err := os.Stat(m); err == nil {
				t.Errorf("mount point %s still there after Close", m)
			}
		}
		for k, v := range sysctls {
			if got, _ := os.ReadFile("/proc/sys/" + k); strings.TrimSpace(string(got)) != v {
				t.Errorf("sysctl %s = %q after Close, was %q", k, strings.TrimSpace(string(got)), v)
			}
		}
	})
	return &k8sEnv{t: t, ctx: ctx, c: c, kctl: set.Path("kubectl")}
}

func tailOf(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// with returns a copy of e that fails t (a subtest) instead.
func (e *k8sEnv) with(t *testing.T) *k8sEnv {
	c := *e
	c.t = t
	return &c
}

// readyCondition returns a node's Ready condition (nil if not posted yet).
func (e *k8sEnv) readyCondition(name string) (*corev1.NodeCondition, error) {
	n, err := e.c.Client.CoreV1().Nodes().Get(e.ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	for i := range n.Status.Conditions {
		if n.Status.Conditions[i].Type == corev1.NodeReady {
			return &n.Status.Conditions[i], nil
		}
	}
	return nil, nil
}

// waitFor polls cond every 200 ms until it holds, failing after timeout.
func (e *k8sEnv) waitFor(what string, timeout time.Duration, cond func() (bool, string)) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(e.ctx, timeout)
	defer cancel()
	for {
		ok, why := cond()
		if ok {
			return
		}
		select {
		case <-ctx.Done():
			e.t.Fatalf("%s: %s (%v)", what, why, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// fastRelease makes vnet-ipamd release to exactly the warm target soon
// after the pods are gone.
func fastRelease(_ string, c *config.Config) {
	c.BatchSize = 1
	c.ReleaseDelay = config.Duration(3 * time.Second)
	c.Cooldown = config.Duration(2 * time.Second)
}

// waitNodesReady waits until every node is Ready.
func (e *k8sEnv) waitNodesReady() {
	e.t.Helper()
	for _, n := range e.c.Nodes {
		e.waitFor(n.Name()+" Ready", 2*time.Minute, func() (bool, string) {
			cond, err := e.readyCondition(n.Name())
			if err != nil || cond == nil {
				return false, fmt.Sprint(err)
			}
			return cond.Status == corev1.ConditionTrue, cond.Message
		})
	}
}

// kubectl runs kubectl as the admin inside the control plane's VM.
func (e *k8sEnv) kubectl(args ...string) (string, error) {
	out, err := e.c.CP.Command(e.ctx, e.kctl, append([]string{"--kubeconfig", e.c.CP.AdminKubeconfig}, args...)...).CombinedOutput()
	return string(out), err
}

// TestK8sNodesReadyAfterConflist runs two workers with kubelet and
// containerd v2 before vnet-ipamd: both nodes register and stay NotReady
// with the runtime's network-not-ready reason while /etc/cni/net.d is
// empty; once vnet-ipamd has written its conflist, both become Ready.
func TestK8sNodesReadyAfterConflist(t *testing.T) {
	e := newK8sEnv(t, true, nil)
	for _, n := range e.c.Nodes {
		e.waitFor(n.Name()+" registers NotReady for the network", 2*time.Minute, func() (bool, string) {
			cond, err := e.readyCondition(n.Name())
			if err != nil {
				return false, err.Error()
			}
			if cond == nil {
				return false, "no Ready condition yet"
			}
			if cond.Status == corev1.ConditionTrue {
				e.t.Fatalf("%s Ready before vnet-ipamd wrote a conflist: %+v", n.Name(), cond)
			}
			return strings.Contains(cond.Message, "NetworkReady=false"), fmt.Sprintf("Ready=%s %s: %s", cond.Status, cond.Reason, cond.Message)
		})
	}
	// Some seconds more: still NotReady, still no conflist.
	time.Sleep(5 * time.Second)
	for i, n := range e.c.Nodes {
		cond, err := e.readyCondition(n.Name())
		if err != nil {
			t.Fatal(err)
		}
		if cond.Status == corev1.ConditionTrue {
			t.Fatalf("%s Ready without a conflist", n.Name())
		}
		t.Logf("%s before vnet-ipamd: Ready=%s reason %s: %s", n.Name(), cond.Status, cond.Reason, cond.Message)
		if ents, _ := os.ReadDir(filepath.Dir(e.c.IPAMD.Nodes[i].ConflistPath())); len(ents) != 0 {
			t.Fatalf("%s has CNI configuration before vnet-ipamd ran: %v", n.Name(), ents)
		}
	}

	start := time.Now()
	if err := e.c.StartIPAMD(e.ctx); err != nil {
		t.Fatal(err)
	}
	for i, n := range e.c.Nodes {
		fi, err := os.Stat(e.c.IPAMD.Nodes[i].ConflistPath())
		if err != nil {
			t.Fatal(err)
		}
		e.waitFor(n.Name()+" Ready", 2*time.Minute, func() (bool, string) {
			cond, err := e.readyCondition(n.Name())
			if err != nil {
				return false, err.Error()
			}
			return cond.Status == corev1.ConditionTrue, fmt.Sprintf("Ready=%s %s: %s", cond.Status, cond.Reason, cond.Message)
		})
		cond, err := e.readyCondition(n.Name())
		if err != nil {
			t.Fatal(err)
		}
		// The transition time has a resolution of one second.
		if cond.LastTransitionTime.Time.Before(fi.ModTime().Truncate(time.Second)) {
			t.Errorf("%s Ready at %s, before its conflist was written at %s", n.Name(), cond.LastTransitionTime, fi.ModTime())
		}
		t.Logf("%s Ready %s after vnet-ipamd started (conflist written %s before)", n.Name(),
			time.Since(start).Round(time.Millisecond), time.Since(fi.ModTime()).Round(time.Millisecond))
	}
	if out, err := e.kubectl("get", "nodes", "-o", "wide"); err != nil {
		t.Errorf("kubectl get nodes: %v\n%s", err, out)
	} else {
		t.Logf("kubectl get nodes -o wide:\n%s", out)
	}
}

// k8sTestNS is the namespace of the test workloads.
const k8sTestNS = workload.Namespace

// deployTestServer creates the test server's Deployment and its two
// NodePort Services (policy Cluster and Local).
func (e *k8sEnv) deployTestServer(replicas int32) (cluster, local *corev1.Service) {
	e.t.Helper()
	cluster, local, err := workload.DeployTestServer(e.ctx, e.c.Client, replicas)
	if err != nil {
		e.t.Fatal(err)
	}
	return cluster, local
}

// testPods lists the test server's pods.
func (e *k8sEnv) testPods() []corev1.Pod {
	e.t.Helper()
	pods, err := workload.Pods(e.ctx, e.c.Client)
	if err != nil {
		e.t.Fatal(err)
	}
	return pods
}

// waitRunning waits until exactly n test pods exist, all Running and
// Ready, and returns them.
func (e *k8sEnv) waitRunning(n int, timeout time.Duration) []corev1.Pod {
	e.t.Helper()
	pods, err := workload.WaitRunning(e.ctx, e.c.Client, n, timeout)
	if err != nil {
		e.t.Fatal(err)
	}
	return pods
}

// scale sets the Deployment's replicas.
func (e *k8sEnv) scale(replicas int32) {
	e.t.Helper()
	if err := workload.Scale(e.ctx, e.c.Client, replicas); err != nil {
		e.t.Fatal(err)
	}
}

// nodeHTTP is an HTTP client that connects from inside a node's network
// namespace.
func nodeHTTP(n *node.Node) *http.Client { return workload.HTTPIn(n.NetNS()) }

// viaPod makes pod (on n) GET target and decodes the test server's
// identity answer.
func (e *k8sEnv) viaPod(n *node.Node, pod corev1.Pod, target string) (workload.Identity, error) {
	return workload.ViaPod(e.ctx, n.NetNS(), pod, target)
}

func (e *k8sEnv) nodeByName(name string) (*node.Node, int) {
	for i, n := range e.c.Nodes {
		if n.Name() == name {
			return n, i
		}
	}
	e.t.Fatalf("no node %q", name)
	return nil, 0
}

// nicAddresses reads the node's NIC through armnetwork and returns its
// secondary addresses.
func (e *k8sEnv) nicAddresses(op *e2eOperator, i int) map[string]bool {
	e.t.Helper()
	nic, _ := op.get(e.c.Desc.Nodes[i].NIC)
	addrs := map[string]bool{}
	for _, c := range nic.Properties.IPConfigurations {
		if c.Properties == nil || c.Properties.PrivateIPAddress == nil {
			continue
		}
		if c.Properties.Primary != nil && *c.Properties.Primary {
			continue
		}
		addrs[*c.Properties.PrivateIPAddress] = true
	}
	return addrs
}

// cniCalls counts vnet-cni's per-call log lines by verb and result.
func (e *k8sEnv) cniCalls() map[string]int {
	verbs := map[string]int{}
	for _, c := range e.cniLog() {
		verbs[c.Verb+" "+c.Result]++
	}
	return verbs
}

// cniLog reads vnet-cni's per-call log lines from the nodes' containerd
// logs (the runtime passes the plugins' stderr into its own).
func (e *k8sEnv) cniLog() []cniCall {
	var out []cniCall
	for _, n := range e.c.Nodes {
		b, err := os.ReadFile(n.LogPath(node.Containerd))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			i := strings.Index(line, `{"time"`)
			if i < 0 {
				continue
			}
			var rec struct {
				cniCall
				Msg string
			}
			if json.Unmarshal([]byte(line[i:]), &rec) == nil && strings.HasPrefix(rec.Msg, "cni ") {
				out = append(out, rec.cniCall)
			}
		}
	}
	return out
}

// TestK8sDeployment runs a Deployment of 20 test servers on two workers
// and checks what vnet-cni promises under kubelet: every pod Running with
// an address of its own node's NIC (read through armnetwork), pod to pod
// across nodes without NAT, pod to a ClusterIP Service reaching pods on
// both nodes, a NodePort from the other node, pod to the internet through
// SNAT; then scales to 0 (nothing left: no assignment, no veth, the NIC
// back to the pool's target) and to 20 again.
func TestK8sDeployment(t *testing.T) {
	const replicas = 20
	e := newK8sEnv(t, false, fastRelease)
	e.waitNodesReady()
	op := newE2EOperator(t, &e2eEnv{sim: e.c.Sim, desc: e.c.Desc})
	internet := e2eServe(t, e.c.Desc.InternetNetns, "internet", netip.AddrPortFrom(e2eAddr(e.c.Desc.InternetHost), 80))

	start := time.Now()
	svc, localSvc := e.deployTestServer(replicas)
	pods := e.waitRunning(replicas, 3*time.Minute)
	t.Logf("%d pods Running %s after the Deployment was created", replicas, time.Since(start).Round(time.Millisecond))
	logStartup(t, pods)

	t.Run("addresses", func(t *testing.T) {
		perNode := e.with(t).checkPodAddresses(op, pods)
		t.Logf("pods per node %v", perNode)
	})

	// One pod on each node.
	var a, b corev1.Pod
	for _, p := range pods {
		if p.Spec.NodeName == e.c.Nodes[0].Name() && a.Name == "" {
			a = p
		}
		if p.Spec.NodeName == e.c.Nodes[1].Name() && b.Name == "" {
			b = p
		}
	}
	if a.Name == "" || b.Name == "" {
		t.Fatal("no pod on one of the nodes")
	}
	nA, _ := e.nodeByName(a.Spec.NodeName)
	nB, _ := e.nodeByName(b.Spec.NodeName)

	t.Run("pod to pod across nodes", func(t *testing.T) {
		for _, c := range []struct {
			from, to corev1.Pod
			n        *node.Node
		}{{a, b, nA}, {b, a, nB}} {
			id, err := e.viaPod(c.n, c.from, "http://"+net.JoinHostPort(c.to.Status.PodIP, "8080")+"/")
			if err != nil {
				t.Errorf("%s → %s: %v", c.from.Name, c.to.Name, err)
				continue
			}
			if id.Hostname != c.to.Name || id.PodIP != c.to.Status.PodIP {
				t.Errorf("%s → %s answered by %+v", c.from.Name, c.to.Name, id)
			}
			if id.Client != c.from.Status.PodIP {
				t.Errorf("%s → %s: the server saw %s, want the pod's own %s (no NAT)", c.from.Name, c.to.Name, id.Client, c.from.Status.PodIP)
			}
		}
	})

	nodeOf := map[string]string{}
	for _, p := range pods {
		nodeOf[p.Name] = p.Spec.NodeName
	}
	e.waitFor("the Service's endpoints", time.Minute, func() (bool, string) {
		ready, err := workload.ReadyEndpoints(e.ctx, e.c.Client, workload.Name)
		if err != nil {
			return false, err.Error()
		}
		return ready == replicas, fmt.Sprintf("%d ready endpoints", ready)
	})

	t.Run("pod to ClusterIP Service", func(t *testing.T) {
		target := "http://" + net.JoinHostPort(svc.Spec.ClusterIP, "80") + "/"
		// kube-proxy may still be programming the Service.
		if err := nsnet.Eventually(20*time.Second, func() error { _, err := e.viaPod(nA, a, target); return err }); err != nil {
			t.Fatalf("%s → %s: %v", a.Name, target, err)
		}
		// The API lists every endpoint; kube-proxy on node A may be a
		// sync behind it: a round that misses a node is tried again.
		var hit map[string]int
		err := nsnet.Eventually(30*time.Second, func() error {
			hit = map[string]int{}
			for range 40 {
				id, err := e.viaPod(nA, a, target)
				if err != nil {
					return fmt.Errorf("%s → %s: %w", a.Name, target, err)
				}
				hit[nodeOf[id.Hostname]]++
				if id.Hostname != a.Name && id.Client != a.Status.PodIP {
					return fmt.Errorf("%s → Service → %s: the server saw %s, want the pod's %s", a.Name, id.Hostname, id.Client, a.Status.PodIP)
				}
			}
			if len(hit) != len(e.c.Nodes) || hit[""] != 0 {
				return fmt.Errorf("the Service's answers came from %v, want pods on every node", hit)
			}
			return nil
		})
		if err != nil {
			t.Error(err)
		}
		t.Logf("40 requests from %s through %s answered on %v", a.Name, svc.Spec.ClusterIP, hit)
	})

	t.Run("NodePort with policy Local from outside the cluster", func(t *testing.T) {
		// externalTrafficPolicy Local: node A's own pods answer, and
		// they see the client's address. The client is the sim's
		// internet host: kube-proxy's clusterCIDR is the VNet's prefix,
		// which holds the nodes' addresses too, so kube-proxy takes a
		// request from node B for a pod's and treats it like policy
		// Cluster without masquerading (see docs/kubernetes.md).
		inet := e.c.Desc.InternetNetns
		client := e2eAddr(e.c.Desc.InternetHost).String()
		target := "http://" + net.JoinHostPort(nA.IP().String(), fmt.Sprint(localSvc.Spec.Ports[0].NodePort)) + "/"
		if err := nsnet.Eventually(20*time.Second, func() error { _, err := workload.Fetch(e.ctx, workload.HTTPIn(inet), target); return err }); err != nil {
			t.Fatalf("internet → %s: %v", target, err)
		}
		for range 20 {
			body, err := workload.Fetch(e.ctx, workload.HTTPIn(inet), target)
			if err != nil {
				t.Errorf("internet → %s: %v", target, err)
				continue
			}
			var id workload.Identity
			if err := json.Unmarshal([]byte(body), &id); err != nil || nodeOf[id.Hostname] != nA.Name() {
				t.Errorf("internet → %s answered %q, want a pod of %s", target, body, nA.Name())
				continue
			}
			if id.Client != client {
				t.Errorf("internet → %s: the pod saw %s, want %s (policy Local keeps the source)", target, id.Client, client)
			}
		}
	})

	t.Run("NodePort with policy Cluster to the other node's pods", func(t *testing.T) {
		// Node A translates to any pod; those on node B are reached
		// through node A's eth0 again: with br_netfilter the bridge
		// sends the DNAT-ed frame back out of the port it came in on
		// (hairpin on the NIC's port, only for DNAT-ed frames: see
		// bridge/azure0 and docs/kubernetes.md).
		target := "http://" + net.JoinHostPort(nA.IP().String(), fmt.Sprint(svc.Spec.Ports[0].NodePort)) + "/"
		// Rounds of 20 until pods on both nodes answered (kube-proxy may
		// be a sync behind the API), at most 30 s.
		var hit map[string]int
		failed := 0
		deadline := time.Now().Add(30 * time.Second)
		for {
			hit, failed = map[string]int{}, 0
			for range 20 {
				hc := nodeHTTP(nB)
				hc.Timeout = 2 * time.Second
				body, err := workload.Fetch(e.ctx, hc, target)
				if err != nil {
					failed++
					continue
				}
				var id workload.Identity
				if err := json.Unmarshal([]byte(body), &id); err != nil || nodeOf[id.Hostname] == "" {
					t.Fatalf("%s → %s answered %q", nB.Name(), target, body)
				}
				hit[nodeOf[id.Hostname]]++
			}
			if failed > 0 || hit[nB.Name()] > 0 || time.Now().After(deadline) {
				break
			}
		}
		t.Logf("20 requests from %s to %s: answered on %v, %d failed", nB.Name(), target, hit, failed)
		if hit[nA.Name()] == 0 {
			t.Errorf("no answer from %s's own pods", nA.Name())
		}
		if failed > 0 || hit[nB.Name()] == 0 {
			t.Errorf("answered on %v, %d failed; want every request answered, by pods on both nodes", hit, failed)
		}
	})

	t.Run("pod to internet through SNAT", func(t *testing.T) {
		for _, c := range []struct {
			p corev1.Pod
			n *node.Node
		}{{a, nA}, {b, nB}} {
			body, err := workload.Dial(e.ctx, c.n.NetNS(), c.p, internet.String())
			if err != nil {
				t.Errorf("%s → internet: %v", c.p.Name, err)
				continue
			}
			if want := "internet saw " + c.n.IP().String(); body != want {
				t.Errorf("%s → internet: %q, want %q (SNAT to the node's primary address)", c.p.Name, body, want)
			}
		}
	})

	first := map[string]bool{}
	for _, p := range pods {
		first[p.Status.PodIP] = true
	}
	t.Run("scale to 0 and back", func(t *testing.T) {
		e := e.with(t)
		e.scale(0)
		e.waitDrained(op)
		start := time.Now()
		e.scale(replicas)
		again := e.waitRunning(replicas, 3*time.Minute)
		t.Logf("%d pods Running again %s after the scale-up", replicas, time.Since(start).Round(time.Millisecond))
		reused := 0
		for _, p := range again {
			if first[p.Status.PodIP] {
				reused++
			}
		}
		t.Logf("%d of %d addresses reused from the first round", reused, replicas)
	})
	t.Logf("vnet-cni calls by verb and result (containerd's log): %v", e.cniCalls())
}

// waitDrained waits until no test pod is left and checks that nothing of
// them is: each vnet-ipamd's pool back to exactly its warm target (no
// assignment, nothing cooling or releasing), the NIC with exactly that many
// secondaries (armnetwork), no pod veth and no pod element in vnet-cni's
// nftables sets.
func (e *k8sEnv) waitDrained(op *e2eOperator) {
	e.t.Helper()
	e.waitFor("every test pod gone", 2*time.Minute, func() (bool, string) {
		n := len(e.testPods())
		return n == 0, fmt.Sprintf("%d pods left", n)
	})
	for i, n := range e.c.Nodes {
		want := e.warmTarget(i)
		e.waitFor(n.Name()+" pool back to its target", 2*time.Minute, func() (bool, string) {
			ctx, cancel := context.WithTimeout(e.ctx, 2*time.Second)
			defer cancel()
			st, err := e.ipamdClient(i).Status(ctx, api.StatusRequest{})
			if err != nil {
				return false, err.Error()
			}
			onNIC := len(e.nicAddresses(op, i))
			p := st.Pool
			return p.Assigned == 0 && p.Cooling == 0 && p.Releasing == 0 && p.Free == want && p.Total == want && onNIC == want,
				fmt.Sprintf("pool %+v, %d secondaries on the NIC, want %d free", p, onNIC, want)
		})
		if veths := podVeths(e.t, n.NetNS()); len(veths) != 0 {
			e.t.Errorf("%s: pod veths left after scaling to 0: %v", n.Name(), veths)
		}
		for _, set := range podSets() {
			if elems := setElements(e.t, n.NetNS(), set); len(elems) != 0 {
				e.t.Errorf("%s: %d elements left in nftables set %s %s after scaling to 0", n.Name(), len(elems), set.Table.Name, set.Name)
			}
		}
	}
}

// podSets are vnet-cni's nftables sets with an element per pod (bridge
// mode): the bridge table's pod map, the SNAT table's pod set, the guard's
// ports.
func podSets() []*nftables.Set {
	bt := &nftables.Table{Name: "vnet-cni", Family: nftables.TableFamilyBridge}
	it := &nftables.Table{Name: "vnet-cni", Family: nftables.TableFamilyIPv4}
	gt := &nftables.Table{Name: "vnet-cni-guard", Family: nftables.TableFamilyBridge}
	return []*nftables.Set{{Table: bt, Name: "pods"}, {Table: it, Name: "pods"}, {Table: gt, Name: "ports"}}
}

// setElements reads an nftables set in the namespace.
func setElements(t *testing.T, nsPath string, s *nftables.Set) []nftables.SetElement {
	t.Helper()
	h, err := netns.GetFromPath(nsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(h)))
	if err != nil {
		t.Fatal(err)
	}
	// GetSetElements needs the set's key type; read the set first.
	got, err := c.GetSetByName(s.Table, s.Name)
	if err != nil {
		t.Fatalf("nftables set %s %s: %v", s.Table.Name, s.Name, err)
	}
	elems, err := c.GetSetElements(got)
	if err != nil {
		t.Fatalf("elements of %s %s: %v", s.Table.Name, s.Name, err)
	}
	return elems
}

// logStartup logs creation→Ready of the pods from the API's timestamps
// (one-second resolution).
func logStartup(t *testing.T, pods []corev1.Pod) {
	t.Helper()
	if ds := workload.StartupTimes(pods); len(ds) > 0 {
		t.Logf("pod creation→Ready (API timestamps, 1 s resolution): p50 %s, max %s", ds[len(ds)/2], ds[len(ds)-1])
	}
}

// podVeths lists the veths in a node's namespace (every pod's host end).
func podVeths(t *testing.T, nsPath string) []string {
	t.Helper()
	links, err := nstest.Netlink(t, nsPath).LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range links {
		// eth0 is the VM's NIC (a veth to the fabric in the sim).
		if l.Type() == "veth" && l.Attrs().Name != "eth0" {
			names = append(names, l.Attrs().Name)
		}
	}
	return names
}
