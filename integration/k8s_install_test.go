package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/vnet-cni/vnet-cni/integration/k8s/binaries"
	k8scluster "github.com/vnet-cni/vnet-cni/integration/k8s/cluster"
	"github.com/vnet-cni/vnet-cni/integration/k8s/install"
	"github.com/vnet-cni/vnet-cni/internal/nodeimage"
)

// simInstall writes, into a new directory, a kustomization over
// manifests/overlays/sim with this run's sim filled in (package
// integration/k8s/install) and returns the directory.
func simInstall(t *testing.T, e *k8sEnv) string {
	t.Helper()
	dir := t.TempDir()
	if err := install.SimOverlay(dir, "../manifests", e.c.Desc, nil); err != nil {
		t.Fatal(err)
	}
	return dir
}

// waitDaemonSetReady waits until the DaemonSet has an updated, available
// pod on every node.
func (e *k8sEnv) waitDaemonSetReady(timeout time.Duration) *appsv1.DaemonSet {
	e.t.Helper()
	var ds *appsv1.DaemonSet
	e.waitFor("the vnet-ipamd DaemonSet Ready on every node", timeout, func() (bool, string) {
		var err error
		ds, err = e.c.Client.AppsV1().DaemonSets("vnet-cni").Get(e.ctx, "vnet-ipamd", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		s := ds.Status
		ok := ds.Generation == s.ObservedGeneration && s.DesiredNumberScheduled == int32(len(e.c.Nodes)) &&
			s.NumberReady == s.DesiredNumberScheduled && s.UpdatedNumberScheduled == s.DesiredNumberScheduled &&
			s.NumberAvailable == s.DesiredNumberScheduled
		return ok, fmt.Sprintf("desired %d, ready %d, updated %d, available %d", s.DesiredNumberScheduled, s.NumberReady,
			s.UpdatedNumberScheduled, s.NumberAvailable)
	})
	return ds
}

// daemonSetPodsLog returns what kubectl says about the DaemonSet's pods and
// their logs, for a failure.
func (e *k8sEnv) daemonSetPodsLog() string {
	var b strings.Builder
	for _, args := range [][]string{
		{"-n", "vnet-cni", "get", "pods", "-o", "wide"},
		{"-n", "vnet-cni", "describe", "pods"},
		{"-n", "vnet-cni", "logs", "-l", "app.kubernetes.io/component=ipamd", "--all-containers", "--tail", "30", "--prefix"},
	} {
		out, err := e.kubectl(args...)
		fmt.Fprintf(&b, "$ kubectl %s (%v)\n%s\n", strings.Join(args, " "), err, out)
	}
	// kubectl logs needs the node's name in DNS; the container logs are
	// in each node's /var/log/pods.
	for _, n := range e.c.Nodes {
		logs, _ := filepath.Glob(n.HostPath("/var/log/pods/vnet-cni_vnet-ipamd-*/vnet-ipamd/*.log"))
		for _, l := range logs {
			fmt.Fprintf(&b, "--- %s %s:\n%s\n", n.Name(), strings.TrimPrefix(l, n.HostPath("/var/log/pods")+"/"), tailOf(l, 10))
		}
	}
	return b.String()
}

// TestK8sInstall installs vnet-cni the Kubernetes way on a cluster where no
// vnet-ipamd process is started: the node image imported into every
// worker's containerd, `kubectl apply -k` of the sim overlay
// (manifests/overlays/sim with this run's ARM endpoint and CA); the
// DaemonSet becomes Ready on both nodes, its init step installs the plugin
// into each node's /opt/cni/bin, the nodes become Ready, and a
// Deployment's pods run with addresses of their own node's NIC read
// through ARM. The daemon's ServiceAccount is refused what it does not
// need.
func TestK8sInstall(t *testing.T) {
	e := newK8sEnvWith(t, func(o *k8scluster.Options) { o.IPAMDAsDaemonSet = true })
	t.Cleanup(func() {
		if t.Failed() && e.ctx.Err() == nil {
			t.Logf("DaemonSet pods:\n%s", e.daemonSetPodsLog())
		}
	})
	start := time.Now()
	install := simInstall(t, e)
	if out, err := e.kubectl("apply", "-k", install); err != nil {
		t.Fatalf("kubectl apply -k: %v\n%s", err, out)
	}
	e.waitDaemonSetReady(3 * time.Minute)
	t.Logf("DaemonSet Ready on %d nodes %s after kubectl apply", len(e.c.Nodes), time.Since(start).Round(time.Millisecond))
	e.waitNodesReady()
	t.Logf("nodes Ready %s after kubectl apply", time.Since(start).Round(time.Millisecond))

	t.Run("image imported", func(t *testing.T) {
		// Every worker's containerd holds the node image under its
		// reference with the digest `make image` gives these binaries.
		res, err := nodeimage.Build(nodeimage.Options{IPAMD: "../bin/vnet-ipamd", Plugin: "../bin/vnet-cni", CABundle: caBundle()})
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range e.c.Nodes {
			out, err := n.Ctr(e.ctx, "-n", "k8s.io", "images", "ls", "name=="+nodeimage.DefaultRef)
			if err != nil {
				t.Fatalf("%s: ctr images ls: %v: %s", n.Name(), err, out)
			}
			if !strings.Contains(string(out), res.ManifestDigest) {
				t.Errorf("%s: %s not imported with digest %s:\n%s", n.Name(), nodeimage.DefaultRef, res.ManifestDigest, out)
			}
		}
		t.Logf("node image %s: %s, %d bytes", nodeimage.DefaultRef, res.ManifestDigest, len(res.Tarball))
	})

	t.Run("plugin installed", func(t *testing.T) {
		want, err := os.ReadFile("../bin/vnet-cni")
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range e.c.Nodes {
			p := n.HostPath("/opt/cni/bin/vnet-cni")
			st, err := os.Lstat(p)
			if err != nil {
				t.Fatalf("%s: %v", n.Name(), err)
			}
			got, err := os.ReadFile(p)
			if err != nil || !bytes.Equal(got, want) || !st.Mode().IsRegular() || st.Mode().Perm() != 0o755 {
				t.Errorf("%s: /opt/cni/bin/vnet-cni mode %v, same as bin/vnet-cni %v (%v)", n.Name(), st.Mode(), bytes.Equal(got, want), err)
			}
			if _, err := os.Stat(n.HostPath("/etc/cni/net.d/10-vnet-cni.conflist")); err != nil {
				t.Errorf("%s: no conflist: %v", n.Name(), err)
			}
		}
	})

	t.Run("daemon capabilities", func(t *testing.T) {
		// The daemon's process in each node's network namespace has
		// CAP_NET_ADMIN (bit 12) and nothing else, effective and bounding.
		const netAdmin = "0000000000001000"
		for _, n := range e.c.Nodes {
			pids := processesInNetNS(t, n.NetNS(), "vnet-ipamd")
			if len(pids) != 1 {
				t.Fatalf("%s: vnet-ipamd processes %v, want one", n.Name(), pids)
			}
			status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pids[0]))
			if err != nil {
				t.Fatal(err)
			}
			for _, line := range strings.Split(string(status), "\n") {
				k, v, _ := strings.Cut(line, ":")
				if (k == "CapEff" || k == "CapBnd" || k == "CapPrm") && strings.TrimSpace(v) != netAdmin {
					t.Errorf("%s: vnet-ipamd %s %s, want %s (CAP_NET_ADMIN only)", n.Name(), k, strings.TrimSpace(v), netAdmin)
				}
			}
		}
	})

	t.Run("pods with VNet addresses", func(t *testing.T) {
		e := e.with(t)
		const replicas = 10
		op := newE2EOperator(t, &e2eEnv{sim: e.c.Sim, desc: e.c.Desc})
		e.deployTestServer(replicas)
		pods := e.waitRunning(replicas, 3*time.Minute)
		perNode := e.checkPodAddresses(op, pods)
		t.Logf("%d pods Running with VNet addresses: %v per node", len(pods), perNode)
	})

	t.Run("per-node objects", func(t *testing.T) {
		// The base installs the VNetNode CRD; each daemon creates its
		// node's object and writes its pool there. kubectl get vnn shows
		// the columns an operator reads.
		e := e.with(t)
		pods := e.testPods()
		perNode := map[string]int{}
		for _, p := range pods {
			perNode[p.Spec.NodeName]++
		}
		e.waitFor("a VNetNode per node with its pods assigned", time.Minute, func() (bool, string) {
			out, err := e.kubectl("get", "vnetnodes", "-o", "json")
			if err != nil {
				return false, out
			}
			var list struct {
				Items []struct {
					Metadata struct {
						Name            string `json:"name"`
						OwnerReferences []struct {
							Kind string `json:"kind"`
							Name string `json:"name"`
						} `json:"ownerReferences"`
					} `json:"metadata"`
					Status struct {
						Assigned    int    `json:"assigned"`
						Free        int    `json:"free"`
						MaxIPs      int    `json:"maxIPs"`
						TargetsFrom string `json:"targetsFrom"`
					} `json:"status"`
				} `json:"items"`
			}
			if err := json.Unmarshal([]byte(out), &list); err != nil {
				return false, err.Error()
			}
			if len(list.Items) != len(e.c.Nodes) {
				return false, fmt.Sprintf("%d VNetNodes", len(list.Items))
			}
			for _, it := range list.Items {
				st := it.Status
				owned := len(it.Metadata.OwnerReferences) == 1 && it.Metadata.OwnerReferences[0].Kind == "Node" && it.Metadata.OwnerReferences[0].Name == it.Metadata.Name
				if !owned || st.Assigned != perNode[it.Metadata.Name] || st.Free == 0 || st.MaxIPs != 60 {
					return false, fmt.Sprintf("%s: owned by its Node %v, status %+v, %d pods there", it.Metadata.Name, owned, st, perNode[it.Metadata.Name])
				}
			}
			return true, ""
		})
		out, err := e.kubectl("get", "vnn")
		if err != nil {
			t.Fatalf("kubectl get vnn: %v\n%s", err, out)
		}
		for _, col := range []string{"FREE", "ASSIGNED", "COOLING", "LIMIT", "NICS"} {
			if !strings.Contains(out, col) {
				t.Errorf("kubectl get vnn has no %s column:\n%s", col, out)
			}
		}
		t.Logf("kubectl get vnn:\n%s", out)
	})

	t.Run("helm template | kubectl apply -f -", func(t *testing.T) {
		e := e.with(t)
		helmSet, ok := binaries.FindModule(binaries.Options{}, binaries.Helm(binaries.HelmVersion))
		if !ok {
			t.Skipf("helm %s not built: run `make k8s-bins`", binaries.HelmVersion)
		}
		// Remove the kustomize installation (the namespace, its pods, the
		// RBAC objects); the test pods keep running on their datapath.
		if out, err := e.kubectl("delete", "-k", install, "--wait=true", "--timeout=2m"); err != nil {
			t.Fatalf("kubectl delete -k: %v\n%s", err, out)
		}
		e.waitFor("namespace vnet-cni gone", 2*time.Minute, func() (bool, string) {
			_, err := e.c.Client.CoreV1().Namespaces().Get(e.ctx, "vnet-cni", metav1.GetOptions{})
			return apierrors.IsNotFound(err), fmt.Sprint(err)
		})
		// The chart with the sim overlay's settings as values, and the
		// CA's ConfigMap after it.
		chart, err := filepath.Abs("../charts/vnet-cni")
		if err != nil {
			t.Fatal(err)
		}
		rendered, err := exec.CommandContext(e.ctx, helmSet.Path("helm"), "template", "--include-crds", "vnet-cni", chart, "--set", strings.Join([]string{
			"pool.warmIPTarget=5", "pool.maxIPs=60", "pool.ipAddressCount=5", "pool.batchSize=5", "pool.cooldown=2s", "pool.releaseDelay=30s",
			"cloud.azure.resourceManagerEndpoint=" + e.c.Desc.ARMEndpoint, "cloud.azure.caConfigMap=vnet-cni-cloud-ca",
		}, ",")).Output()
		if err != nil {
			t.Fatalf("helm template: %v", err)
		}
		ca, err := os.ReadFile(e.c.Desc.CAFile)
		if err != nil {
			t.Fatal(err)
		}
		caMap, err := json.Marshal(map[string]any{"apiVersion": "v1", "kind": "ConfigMap",
			"metadata": map[string]any{"name": "vnet-cni-cloud-ca", "namespace": "vnet-cni"},
			"data":     map[string]string{"ca.pem": string(ca)}})
		if err != nil {
			t.Fatal(err)
		}
		stream := append(append(rendered, []byte("\n---\n")...), caMap...)
		start := time.Now()
		cmd := e.c.CP.Command(e.ctx, e.kctl, "--kubeconfig", e.c.CP.AdminKubeconfig, "apply", "-f", "-")
		cmd.Stdin = bytes.NewReader(stream)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("helm template | kubectl apply -f -: %v\n%s", err, out)
		}
		e.waitDaemonSetReady(3 * time.Minute)
		e.waitNodesReady()
		t.Logf("DaemonSet from the chart Ready on %d nodes %s after kubectl apply", len(e.c.Nodes), time.Since(start).Round(time.Millisecond))
		// The pods of the first installation kept their addresses, and
		// new ones get theirs from the chart's daemons.
		op := newE2EOperator(t, &e2eEnv{sim: e.c.Sim, desc: e.c.Desc})
		e.scale(14)
		pods := e.waitRunning(14, 3*time.Minute)
		perNode := e.checkPodAddresses(op, pods)
		t.Logf("%d pods Running with VNet addresses after the reinstall: %v per node", len(pods), perNode)
	})

	t.Run("service account least privilege", func(t *testing.T) {
		e := e.with(t)
		const sa = "system:serviceaccount:vnet-cni:vnet-ipamd"
		// SubjectAccessReviews name group, resource and subresource
		// exactly (kubectl auth can-i would need the VNetNode CRD in
		// discovery).
		for _, c := range []struct {
			verb, group, resource, sub, ns string
			want                           bool
		}{
			{"get", "", "nodes", "", "", false}, // the informer lists and watches
			{"list", "", "nodes", "", "", true},
			{"watch", "", "nodes", "", "", true},
			{"create", "", "events", "", "default", true},
			{"patch", "", "events", "", "default", true},
			{"get", "vnet-cni.io", "vnetnodes", "", "", false},
			{"list", "vnet-cni.io", "vnetnodes", "", "", true},
			{"watch", "vnet-cni.io", "vnetnodes", "", "", true},
			{"create", "vnet-cni.io", "vnetnodes", "", "", true},
			{"patch", "vnet-cni.io", "vnetnodes", "status", "", true},
			{"update", "vnet-cni.io", "vnetnodes", "status", "", false}, // a merge patch
			{"update", "", "nodes", "", "", false},
			{"patch", "", "nodes", "status", "", false},
			{"patch", "vnet-cni.io", "vnetnodes", "", "", false},
			{"update", "vnet-cni.io", "vnetnodes", "", "", false},
			{"delete", "vnet-cni.io", "vnetnodes", "", "", false},
			{"delete", "", "events", "", "default", false},
			{"get", "", "secrets", "", "vnet-cni", false},
			{"list", "", "pods", "", "", false},
			{"create", "", "pods", "", "vnet-cni", false},
			{"get", "", "configmaps", "", "kube-system", false},
		} {
			sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
				User:   sa,
				Groups: []string{"system:serviceaccounts", "system:serviceaccounts:vnet-cni", "system:authenticated"},
				ResourceAttributes: &authorizationv1.ResourceAttributes{
					Verb: c.verb, Group: c.group, Resource: c.resource, Subresource: c.sub, Namespace: c.ns,
				},
			}}
			got, err := e.c.Client.AuthorizationV1().SubjectAccessReviews().Create(e.ctx, sar, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if got.Status.Allowed != c.want {
				t.Errorf("%s %s %s/%s (ns %q): allowed %v, want %v (%s)", sa, c.verb, c.group, c.resource+"/"+c.sub, c.ns,
					got.Status.Allowed, c.want, got.Status.Reason)
			}
		}
		// A real request with the ServiceAccount's identity is denied.
		out, err := e.kubectl("--as", sa, "-n", "vnet-cni", "get", "secrets")
		if err == nil || !strings.Contains(out, "Forbidden") {
			t.Errorf("listing secrets as %s: %v, %s; want Forbidden", sa, err, out)
		}
	})
}

// processesInNetNS lists the processes named comm whose network namespace
// is the one at nsPath.
func processesInNetNS(t *testing.T, nsPath, comm string) []int {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(nsPath, &st); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("net:[%d]", st.Ino)
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		c, err := os.ReadFile("/proc/" + e.Name() + "/comm")
		if err != nil || strings.TrimSpace(string(c)) != comm {
			continue
		}
		if l, err := os.Readlink("/proc/" + e.Name() + "/ns/net"); err == nil && l == want {
			pids = append(pids, pid)
		}
	}
	return pids
}

// checkPodAddresses checks that every pod has an address of its own node's
// NIC (read through ARM), none twice, and pods on every node; it returns
// the pods per node.
func (e *k8sEnv) checkPodAddresses(op *e2eOperator, pods []corev1.Pod) map[string]int {
	t := e.t
	t.Helper()
	seen := map[string]string{}
	perNode := map[string]int{}
	nics := map[string]map[string]bool{}
	for _, p := range pods {
		_, i := e.nodeByName(p.Spec.NodeName)
		if nics[p.Spec.NodeName] == nil {
			nics[p.Spec.NodeName] = e.nicAddresses(op, i)
		}
		if !nics[p.Spec.NodeName][p.Status.PodIP] {
			t.Errorf("pod %s on %s has %s, not an ipConfiguration of its NIC %s", p.Name, p.Spec.NodeName, p.Status.PodIP, e.c.Desc.Nodes[i].NIC)
		}
		if other, dup := seen[p.Status.PodIP]; dup {
			t.Errorf("pods %s and %s share %s", p.Name, other, p.Status.PodIP)
		}
		seen[p.Status.PodIP] = p.Name
		perNode[p.Spec.NodeName]++
	}
	if len(perNode) != len(e.c.Nodes) {
		t.Errorf("pods on %v, want every node", perNode)
	}
	return perNode
}

// caBundle is the CA bundle the harness puts into the node image.
func caBundle() string {
	if _, err := os.Stat(nodeimage.DefaultCABundle); err == nil {
		return nodeimage.DefaultCABundle
	}
	return ""
}
