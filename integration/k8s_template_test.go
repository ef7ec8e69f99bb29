package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	k8scluster "github.com/vnet-cni/vnet-cni/integration/k8s/cluster"
	"github.com/vnet-cni/vnet-cni/integration/k8s/install"
	"github.com/vnet-cni/vnet-cni/integration/k8s/workload"
	"github.com/vnet-cni/vnet-cni/ipamd/kube"
)

// templateIPs is the cluster template's ipAddressCount in TestK8sTemplateNode.
const templateIPs = 30

// templateInstall writes, into a new directory, a kustomization over
// manifests/overlays/azure-template for this run's sim: the overlay's
// ipamd.json with the sim's ARM endpoint and CA and the pool of a template
// node whose identity may only read (the template's addresses are the
// pool: minIPTarget and ipAddressCount the template's count, no warm
// target beyond it, maxIPs left to the node's maxPods), the CA's
// ConfigMap and its mount. It returns the directory.
func templateInstall(t *testing.T, e *k8sEnv) string {
	t.Helper()
	dir := t.TempDir()
	var maxIPs any
	err := install.Overlay(dir, "../manifests", "azure-template", e.c.Desc, func(cfg map[string]any) {
		maxIPs = cfg["maxIPs"]
		cfg["warmIPTarget"], cfg["minIPTarget"], cfg["ipAddressCount"] = 0, templateIPs, templateIPs
		cfg["cooldown"], cfg["releaseDelay"], cfg["resyncInterval"] = "2s", "30s", "10s"
	})
	if err != nil {
		t.Fatal(err)
	}
	if maxIPs != nil {
		t.Fatalf("the azure-template overlay sets maxIPs %v: a template node's ceiling is its maxPods", maxIPs)
	}
	return dir
}

// TestK8sTemplateNode: nodes made by a cluster template (the sim creates
// 30 ipConfigurations on every NIC, as ipAddressCount 30 does, and writes
// each node's /etc/kubernetes/azure.json) whose managed identity may only
// read, with vnet-cni installed from manifests/overlays/azure-template. A
// Deployment pinned to one node runs 30 pods on the template's addresses
// with no cloud write; the 31st stays ContainerCreating with kubelet's
// FailedCreatePodSandBox naming CNI error 11's exhaustion
// (AuthorizationFailed), the Node has vnet-ipamd's CloudWriteDenied Event,
// the refused write is made once, not in a loop, and the node stays Ready.
// Back at 30 a pod deleted gives its address to its replacement after the
// cooldown, still without a cloud write.
func TestK8sTemplateNode(t *testing.T) {
	e := newK8sEnvWith(t, func(o *k8scluster.Options) {
		o.IPAMDAsDaemonSet, o.TemplateIPs, o.ReadOnlyIdentity, o.CloudConfig = true, templateIPs, true, true
	})
	t.Cleanup(func() {
		if t.Failed() && e.ctx.Err() == nil {
			t.Logf("DaemonSet pods:\n%s", e.daemonSetPodsLog())
		}
	})
	writes := func() map[string]int { return e.c.Sim.ARM().Stats().Calls["NetworkInterfaces_CreateOrUpdate"] }
	if out, err := e.kubectl("apply", "-k", templateInstall(t, e)); err != nil {
		t.Fatalf("kubectl apply -k: %v\n%s", err, out)
	}
	e.waitDaemonSetReady(3 * time.Minute)
	e.waitNodesReady()

	op := newE2EOperator(t, &e2eEnv{sim: e.c.Sim, desc: e.c.Desc})
	node := e.c.Nodes[0]
	template := e.nicAddresses(op, 0)
	if len(template) != templateIPs {
		t.Fatalf("%s's NIC has %d secondary addresses, want the template's %d", node.Name(), len(template), templateIPs)
	}
	if w := writes(); len(w) != 0 {
		t.Errorf("NIC writes by the daemons at start: %v, want none (the template's addresses are the pool)", w)
	}

	// The test server's Deployment on the first node only.
	e.deployTestServer(0)
	// A merge patch, not a read and an update: the Deployment controller
	// writes the object meanwhile, and an update of what was read would be
	// refused as a conflict.
	pin, err := json.Marshal(map[string]any{"spec": map[string]any{"template": map[string]any{"spec": map[string]any{
		"nodeSelector": map[string]string{"kubernetes.io/hostname": node.Name()}, "topologySpreadConstraints": nil}}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.Client.AppsV1().Deployments(k8sTestNS).Patch(e.ctx, workload.Name, types.MergePatchType, pin, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	e.scale(templateIPs)
	pods := e.waitRunning(templateIPs, 4*time.Minute)
	t.Logf("%d pods Running on %s %s after the scale-up", len(pods), node.Name(), time.Since(start).Round(time.Millisecond))
	checkOnTemplate := func(pods []corev1.Pod) map[string]string {
		t.Helper()
		byIP := map[string]string{}
		for _, p := range pods {
			if p.Spec.NodeName != node.Name() || !template[p.Status.PodIP] {
				t.Errorf("pod %s on %s has %s, want one of %s's template addresses", p.Name, p.Spec.NodeName, p.Status.PodIP, node.Name())
			}
			if other, dup := byIP[p.Status.PodIP]; dup {
				t.Errorf("pods %s and %s share %s", p.Name, other, p.Status.PodIP)
			}
			byIP[p.Status.PodIP] = p.Name
		}
		return byIP
	}
	checkOnTemplate(pods)
	if w := writes(); len(w) != 0 {
		t.Errorf("NIC writes while the template's %d addresses lasted: %v, want none", templateIPs, w)
	}
	ready, err := e.readyCondition(node.Name())
	if err != nil || ready == nil {
		t.Fatalf("%s's Ready condition: %v", node.Name(), err)
	}

	// The 31st pod.
	running := map[string]bool{}
	for _, p := range pods {
		running[p.Name] = true
	}
	e.scale(templateIPs + 1)
	var extra corev1.Pod
	e.waitFor("the 31st pod", time.Minute, func() (bool, string) {
		for _, p := range e.testPods() {
			if !running[p.Name] {
				extra = p
				return true, ""
			}
		}
		return false, "not created yet"
	})
	firstDenied := time.Now()
	// CNI error 11's message (cni/plugin's "try again later"), with the
	// daemon's why; the runtime passes on the text, not the code.
	exhausted := func(msg string) bool {
		return strings.Contains(msg, "vnet-ipamd allocate: try again later") &&
			strings.Contains(msg, "the pool is exhausted") && strings.Contains(msg, "AuthorizationFailed")
	}
	var sandboxMsg string
	e.waitFor(extra.Name+"'s FailedCreatePodSandBox naming the exhaustion", 2*time.Minute, func() (bool, string) {
		n, msg, other := e.sandboxFailures(extra.Name)
		sandboxMsg = msg
		return n > 0 && exhausted(msg), fmt.Sprintf("%d failures (%q), other events %v", n, msg, other)
	})
	t.Logf("%s: FailedCreatePodSandBox: %s", extra.Name, sandboxMsg)

	var nodeEvent corev1.Event
	e.waitFor(node.Name()+"'s Event from vnet-ipamd", time.Minute, func() (bool, string) {
		evs, err := e.c.Client.CoreV1().Events(metav1.NamespaceDefault).List(e.ctx, metav1.ListOptions{
			FieldSelector: "involvedObject.kind=Node,involvedObject.name=" + node.Name() + ",source=vnet-ipamd"})
		if err != nil {
			return false, err.Error()
		}
		var seen []string
		for _, ev := range evs.Items {
			if ev.Reason == kube.ReasonWriteDenied {
				nodeEvent = ev
				return true, ""
			}
			seen = append(seen, ev.Reason+": "+ev.Message)
		}
		return false, fmt.Sprintf("events %v", seen)
	})
	// Why, in the cloud's words and not the SDK's dump of the response.
	if m := nodeEvent.Message; nodeEvent.Type != corev1.EventTypeWarning || !strings.Contains(m, fmt.Sprintf("holds only its %d addresses", templateIPs)) ||
		!strings.Contains(m, "NetworkInterfaces_CreateOrUpdate: denied (AuthorizationFailed): ") || strings.Contains(m, "RESPONSE 403") {
		t.Errorf("%s's %s Event: %s %q, want a Warning saying the pool holds only its %d addresses because of AuthorizationFailed",
			node.Name(), nodeEvent.Reason, nodeEvent.Type, m, templateIPs)
	}
	t.Logf("%s: Event %s from %s: %s", node.Name(), nodeEvent.Reason, nodeEvent.Source.Component, nodeEvent.Message)

	// The VNetNode says so too.
	e.waitFor(node.Name()+"'s VNetNode with the refused write", time.Minute, func() (bool, string) {
		out, err := e.kubectl("get", "vnetnode", node.Name(), "-o", "json")
		if err != nil {
			return false, out
		}
		var vnn kube.VNetNode
		if err := json.Unmarshal([]byte(out), &vnn); err != nil {
			return false, err.Error()
		}
		st := vnn.Status
		le := st.LastCloudError
		return st.Assigned == templateIPs && st.Free == 0 && le != nil && le.Active && strings.Contains(le.Reason+le.Message, "AuthorizationFailed"),
			fmt.Sprintf("status %+v, last cloud error %+v", st, le)
	})
	if out, err := e.kubectl("get", "vnn", "-o", "wide"); err == nil {
		t.Logf("kubectl get vnn -o wide:\n%s", out)
	}

	// Kubelet tries the sandbox again: no further write, the pod waits,
	// the node stays Ready (STATUS ok at the limit).
	e.waitFor(extra.Name+"'s sandbox tried again", 2*time.Minute, func() (bool, string) {
		n, msg, _ := e.sandboxFailures(extra.Name)
		return n >= 2 && exhausted(msg), fmt.Sprintf("%d failures, the last %q", n, msg)
	})
	if w := writes(); w["403"] != 1 || len(w) != 1 {
		t.Errorf("NIC writes = %v, want exactly the one refused with 403", w)
	}
	p, err := e.c.Client.CoreV1().Pods(k8sTestNS).Get(e.ctx, extra.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Status.PodIP != "" || workload.Why(*p) == "" {
		t.Errorf("%s: phase %s, address %q, %s; want waiting without an address", p.Name, p.Status.Phase, p.Status.PodIP, workload.Why(*p))
	}
	t.Logf("%s waits: %s %s", p.Name, p.Status.Phase, workload.Why(*p))
	checkReady := func() {
		t.Helper()
		cond, err := e.readyCondition(node.Name())
		if err != nil || cond == nil || cond.Status != corev1.ConditionTrue || !cond.LastTransitionTime.Equal(&ready.LastTransitionTime) {
			t.Errorf("%s's Ready condition %+v (%v), want True since %s", node.Name(), cond, err, ready.LastTransitionTime)
		}
	}
	checkReady()

	// Back to 30; a pod deleted gives its address to its replacement.
	e.scale(templateIPs)
	pods = e.waitRunning(templateIPs, 2*time.Minute)
	byIP := checkOnTemplate(pods)
	victim := pods[0]
	if err := e.c.Client.CoreV1().Pods(k8sTestNS).Delete(context.WithoutCancel(e.ctx), victim.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	e.waitFor(victim.Name+" replaced", 2*time.Minute, func() (bool, string) {
		ps := e.testPods()
		var names []string
		for _, p := range ps {
			names = append(names, p.Name)
			if p.Name == victim.Name {
				return false, "still there"
			}
		}
		return len(ps) == templateIPs, fmt.Sprintf("pods %v", names)
	})
	pods = e.waitRunning(templateIPs, 2*time.Minute)
	again := checkOnTemplate(pods)
	if name := again[victim.Status.PodIP]; name == "" || byIP[victim.Status.PodIP] != victim.Name {
		t.Errorf("%s's address %s not reused by its replacement: %v", victim.Name, victim.Status.PodIP, again)
	} else {
		t.Logf("%s's address %s reused by %s %s after the delete", victim.Name, victim.Status.PodIP, name, time.Since(start).Round(time.Millisecond))
	}
	// The daemon asks again after 5 minutes, then 10, ...: at most one
	// more refused write when the run took that long.
	w := writes()
	allowed := 1
	if time.Since(firstDenied) >= 5*time.Minute {
		allowed = 2
	}
	if w["403"] < 1 || w["403"] > allowed || len(w) != 1 {
		t.Errorf("NIC writes at the end = %v, want none but %d refused with 403", w, allowed)
	}
	checkReady()
	t.Logf("NIC writes (NetworkInterfaces_CreateOrUpdate by status): %v; vnet-cni calls: %v", w, e.cniCalls())
}

// sandboxFailures counts kubelet's FailedCreatePodSandBox Events of a test
// pod (a repeated one counted as often as it happened) and returns the
// latest one's message and the reasons of the pod's other Events.
func (e *k8sEnv) sandboxFailures(pod string) (n int, last string, other []string) {
	e.t.Helper()
	evs, err := e.c.Client.CoreV1().Events(k8sTestNS).List(e.ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + pod})
	if err != nil {
		e.t.Fatal(err)
	}
	var at time.Time
	for _, ev := range evs.Items {
		if ev.Reason != "FailedCreatePodSandBox" {
			other = append(other, ev.Reason)
			continue
		}
		n += int(max(ev.Count, 1))
		if t := ev.LastTimestamp.Time; !t.Before(at) {
			at, last = t, ev.Message
		}
	}
	return n, last, other
}
