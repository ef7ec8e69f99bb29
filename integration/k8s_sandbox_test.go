package integration

import (
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/vnet-cni/vnet-cni/integration/k8s/workload"
)

// TestK8sKilledSandbox kills the pause process of a running pod's sandbox
// with SIGKILL, as the OOM killer or an operator would. kubelet sees the
// sandbox gone, stops it (containerd calls DEL for it: containerd v2.4
// calls no GC, see docs/kubernetes.md) and starts a new one (ADD). The pod
// must be Running again with an address of its node's NIC, vnet-ipamd must
// hold exactly one assignment per running pod (the dead sandbox's address
// released, never two), and the killed sandbox's DEL must have succeeded.
func TestK8sKilledSandbox(t *testing.T) {
	const replicas = 4
	e := newK8sEnv(t, false, fastRelease)
	e.waitNodesReady()
	op := newE2EOperator(t, &e2eEnv{sim: e.c.Sim, desc: e.c.Desc})
	e.deployTestServer(replicas)
	pods := e.waitRunning(replicas, 2*time.Minute)

	var victim corev1.Pod
	for _, p := range pods {
		if p.Spec.NodeName == e.c.Nodes[0].Name() {
			victim = p
			break
		}
	}
	if victim.Name == "" {
		t.Fatal("no test pod on node0")
	}
	n0 := e.c.Nodes[0]
	ipamd0 := e.c.IPAMD.Nodes[0]

	// The sandbox is the containerd container of the pod with kind
	// sandbox; its task's pid is the pause process.
	out, err := n0.Ctr(e.ctx, "-n", "k8s.io", "containers", "ls", "-q",
		`labels."io.cri-containerd.kind"==sandbox,labels."io.kubernetes.pod.name"==`+victim.Name)
	if err != nil {
		t.Fatalf("ctr containers ls: %v\n%s", err, out)
	}
	ids := containerIDs(out)
	if len(ids) != 1 {
		t.Fatalf("sandboxes of %s: %q, want one", victim.Name, ids)
	}
	sandbox := ids[0]
	out, err = n0.Ctr(e.ctx, "-n", "k8s.io", "tasks", "ls")
	if err != nil {
		t.Fatalf("ctr tasks ls: %v\n%s", err, out)
	}
	pid := 0
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == sandbox {
			pid, _ = strconv.Atoi(f[1])
		}
	}
	if pid <= 0 {
		t.Fatalf("no task for sandbox %s in:\n%s", sandbox, out)
	}
	if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); strings.TrimSpace(string(comm)) != "pause" {
		t.Fatalf("pid %d of sandbox %s is %q, not the pause process", pid, sandbox, strings.TrimSpace(string(comm)))
	}
	killed := time.Now()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	t.Logf("killed the pause process %d of %s (sandbox %.12s, address %s)", pid, victim.Name, sandbox, victim.Status.PodIP)

	// kubelet makes a new sandbox for the pod: a new sandbox id, the pod
	// Running and Ready again.
	var again corev1.Pod
	e.waitFor(victim.Name+" in a new sandbox", 2*time.Minute, func() (bool, string) {
		p, err := e.c.Client.CoreV1().Pods(k8sTestNS).Get(e.ctx, victim.Name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		out, err := n0.Ctr(e.ctx, "-n", "k8s.io", "containers", "ls", "-q",
			`labels."io.cri-containerd.kind"==sandbox,labels."io.kubernetes.pod.name"==`+victim.Name)
		if err != nil {
			return false, err.Error()
		}
		now := containerIDs(out)
		again = *p
		// The dead sandbox stays listed until kubelet's garbage
		// collection removes it.
		fresh := slices.ContainsFunc(now, func(id string) bool { return id != sandbox })
		return fresh && p.Status.Phase == corev1.PodRunning && workload.Ready(*p) && p.Status.PodIP != "",
			fmt.Sprintf("sandboxes %q, phase %s", now, p.Status.Phase)
	})
	t.Logf("%s Running again in a new sandbox %s after the kill, address %s", victim.Name, time.Since(killed).Round(time.Millisecond), again.Status.PodIP)

	pods = e.waitRunning(replicas, time.Minute)
	nic := e.nicAddresses(op, 0)
	seen := map[string]string{}
	onNode0 := 0
	for _, p := range pods {
		if other, dup := seen[p.Status.PodIP]; dup {
			t.Errorf("pods %s and %s share %s", p.Name, other, p.Status.PodIP)
		}
		seen[p.Status.PodIP] = p.Name
		if p.Spec.NodeName == n0.Name() {
			onNode0++
			if !nic[p.Status.PodIP] {
				t.Errorf("%s has %s, not an ipConfiguration of node0's NIC", p.Name, p.Status.PodIP)
			}
		}
	}
	// One assignment per running pod: the dead sandbox's was released.
	e.waitFor("node0's assignments = its running pods", 30*time.Second, func() (bool, string) {
		st, err := ipamd0.Status(e.ctx)
		if err != nil {
			return false, err.Error()
		}
		return st.Pool.Assigned == onNode0, fmt.Sprintf("%d assigned, %d pods running on node0", st.Pool.Assigned, onNode0)
	})
	// The killed sandbox's DEL ran and succeeded.
	var dels []string
	for _, c := range e.cniLog() {
		if c.Verb == "DEL" && c.ContainerID == sandbox {
			dels = append(dels, c.Result)
		}
	}
	if len(dels) == 0 || dels[len(dels)-1] != "ok" {
		t.Errorf("vnet-cni DELs of the killed sandbox %.12s: %v, want the last ok", sandbox, dels)
	}
	t.Logf("DELs of the killed sandbox: %v; vnet-cni calls: %v", dels, e.cniCalls())
}

// containerIDs picks the container IDs out of ctr's output (its stderr,
// with deprecation warnings, is mixed in).
func containerIDs(out []byte) []string {
	var ids []string
	for _, f := range strings.Fields(string(out)) {
		if containerID.MatchString(f) {
			ids = append(ids, f)
		}
	}
	return ids
}

var containerID = regexp.MustCompile(`^[0-9a-f]{64}$`)
