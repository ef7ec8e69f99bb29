package integration

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/vnet-cni/vnet-cni/integration/k8s/node"
	"github.com/vnet-cni/vnet-cni/ipamd/api"
)

// TestK8sRestartsDuringScaleUp scales a Deployment from 0 to 20 and, while
// the pods are being set up, kills vnet-ipamd on node0 with SIGKILL (and
// starts it again, as its DaemonSet would), restarts kubelet on node1 and
// containerd on node0. Afterwards every pod is Running, no address is held
// twice (across both nodes), each pod's address is an ipConfiguration of
// its own node's NIC (armnetwork) and is assigned to that pod in its node's
// vnet-ipamd store (and nothing else is), and every ADD that failed was
// followed by a successful ADD for the same pod (kubelet retried it). Then
// the Deployment scales to 0 and nothing is left.
func TestK8sRestartsDuringScaleUp(t *testing.T) {
	const replicas = 20
	e := newK8sEnv(t, false, fastRelease)
	e.waitNodesReady()
	op := newE2EOperator(t, &e2eEnv{sim: e.c.Sim, desc: e.c.Desc})
	e.deployTestServer(0)
	n0, n1 := e.c.Nodes[0], e.c.Nodes[1]
	ipamd0 := e.c.IPAMD.Nodes[0]
	before := map[string]int{"vnet-ipamd node0": ipamd0.PID(), "kubelet node1": n1.PIDs()[node.Kubelet], "containerd node0": n0.PIDs()[node.Containerd]}

	start := time.Now()
	e.scale(replicas)
	running := func() int {
		r := 0
		for _, p := range e.testPods() {
			if p.Status.Phase == corev1.PodRunning {
				r++
			}
		}
		return r
	}
	step := func(what string, do func() error) {
		t.Helper()
		r := running()
		if err := do(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		t.Logf("%s at %s into the scale-up (%d of %d pods Running before)", what, time.Since(start).Round(time.Millisecond), r, replicas)
	}
	// Each restart once the scale-up has got so far (or at the latest
	// after 20 s).
	when := func(n int) {
		for end := time.Now().Add(20 * time.Second); running() < n && time.Now().Before(end); {
			time.Sleep(100 * time.Millisecond)
		}
	}
	// The first ADDs run about a second after the scale; node0's ADDs
	// meet no daemon for 3 s.
	time.Sleep(time.Second)
	step("vnet-ipamd on node0 killed with SIGKILL (started again 3 s later)", func() error {
		if err := ipamd0.StopIPAMD(syscall.SIGKILL); err != nil {
			return err
		}
		time.Sleep(3 * time.Second)
		return ipamd0.StartIPAMD()
	})
	when(5)
	step("kubelet on node1 restarted", func() error {
		if err := n1.Stop(node.Kubelet, syscall.SIGTERM); err != nil {
			return err
		}
		return n1.StartKubelet()
	})
	when(10)
	step("containerd on node0 restarted", func() error {
		if err := n0.Stop(node.Containerd, syscall.SIGTERM); err != nil {
			return err
		}
		return n0.StartContainerd(e.ctx)
	})
	after := map[string]int{"vnet-ipamd node0": ipamd0.PID(), "kubelet node1": n1.PIDs()[node.Kubelet], "containerd node0": n0.PIDs()[node.Containerd]}
	for k, pid := range before {
		if after[k] == pid || after[k] == 0 {
			t.Errorf("%s: pid %d before, %d after: not restarted", k, pid, after[k])
		}
	}
	pods := e.waitRunning(replicas, 4*time.Minute)
	t.Logf("%d pods Running %s after the scale-up began", replicas, time.Since(start).Round(time.Millisecond))
	logStartup(t, pods)

	t.Run("addresses: on the NIC, in the store, none twice", func(t *testing.T) {
		e := e.with(t)
		owner := map[string]string{}
		for _, p := range pods {
			if other, dup := owner[p.Status.PodIP]; dup || p.Status.PodIP == "" {
				t.Errorf("pods %s and %s share address %q", p.Name, other, p.Status.PodIP)
			}
			owner[p.Status.PodIP] = p.Name
		}
		for i, n := range e.c.Nodes {
			nic := e.nicAddresses(op, i)
			want := map[string]string{} // address -> pod, from the API
			for _, p := range pods {
				if p.Spec.NodeName != n.Name() {
					continue
				}
				want[p.Status.PodIP] = k8sTestNS + "/" + p.Name
				if !nic[p.Status.PodIP] {
					t.Errorf("pod %s on %s has %s, not an ipConfiguration of its NIC", p.Name, n.Name(), p.Status.PodIP)
				}
			}
			// A sandbox torn down after a failed ADD may still be on
			// its way out: wait for the store to settle.
			var got map[string]string
			e.waitFor(n.Name()+"'s store assigns exactly the pods' addresses", 30*time.Second, func() (bool, string) {
				l, err := e.c.IPAMD.Nodes[i].Client().List(e.ctx, api.ListRequest{})
				if err != nil {
					return false, err.Error()
				}
				got = map[string]string{}
				for _, a := range l.Addresses {
					if a.State == "assigned" {
						got[a.IP.String()] = a.PodNamespace + "/" + a.PodName
					}
				}
				return fmt.Sprint(got) == fmt.Sprint(want), fmt.Sprintf("store %v, pods %v", got, want)
			})
		}
	})

	t.Run("every failed ADD was retried and succeeded", func(t *testing.T) {
		if len(pods) == 0 {
			t.Fatal("no pods")
		}
		calls := e.cniAdds()
		failed, byPod := 0, map[string][]cniCall{}
		for _, c := range calls {
			byPod[c.Pod] = append(byPod[c.Pod], c)
		}
		running := map[string]bool{}
		for _, p := range pods {
			running[k8sTestNS+"/"+p.Name] = true
		}
		for pod, cs := range byPod {
			if !strings.HasPrefix(pod, k8sTestNS+"/") {
				continue
			}
			for i, c := range cs {
				if c.Result == "ok" {
					continue
				}
				failed++
				t.Logf("failed ADD of %s (container %.12s): %s", pod, c.ContainerID, c.Err)
				if !slices.ContainsFunc(cs[i+1:], func(l cniCall) bool { return l.Result == "ok" }) {
					t.Errorf("%s: ADD failed (%s) and no later ADD succeeded", pod, c.Err)
				}
				if !running[pod] {
					t.Errorf("%s: ADD failed and the pod is not one of the Running ones", pod)
				}
			}
		}
		for _, p := range pods {
			if oks := slices.ContainsFunc(byPod[k8sTestNS+"/"+p.Name], func(l cniCall) bool { return l.Result == "ok" }); !oks {
				t.Errorf("pod %s is Running but no successful ADD is logged for it", p.Name)
			}
		}
		ev, err := e.c.Client.CoreV1().Events(k8sTestNS).List(e.ctx, metav1.ListOptions{FieldSelector: "reason=FailedCreatePodSandBox"})
		if err != nil {
			t.Fatal(err)
		}
		// libcni copies a plugin's stderr to the runtime's only when the
		// plugin succeeds, so a failed ADD (the daemon unreachable: error
		// 11, try again later) has no line in containerd's log: it is
		// in the pod's FailedCreatePodSandBox event, and the pod must be
		// Running now (the check above found its successful ADD).
		sandboxFailures := 0
		reasons := map[string]int{}
		for _, x := range ev.Items {
			sandboxFailures += int(x.Count)
			reasons[sandboxID.ReplaceAllString(x.Message, `sandbox "…"`)] += int(x.Count)
			if pod := k8sTestNS + "/" + x.InvolvedObject.Name; !running[pod] {
				t.Errorf("%s: sandbox creation failed (%s) and the pod is not one of the Running ones", pod, x.Message)
			}
		}
		for msg, n := range reasons {
			t.Logf("FailedCreatePodSandBox ×%d: %s", n, msg)
		}
		t.Logf("%d ADDs logged by vnet-cni (successful ones only, see above), %d failed; %d FailedCreatePodSandBox events; vnet-cni calls by verb and result: %v",
			len(calls), failed, sandboxFailures, e.cniCalls())
	})

	t.Run("scale to 0: nothing left", func(t *testing.T) {
		e := e.with(t)
		e.scale(0)
		e.waitDrained(op)
	})
}

// sandboxID matches a sandbox's ID in the runtime's messages.
var sandboxID = regexp.MustCompile(`sandbox "[0-9a-f]{64}"`)

// cniCall is one call as vnet-cni logged it.
type cniCall struct {
	Verb, Pod, ContainerID, Result, Err string
	Time                                time.Time
}

// cniAdds lists vnet-cni's ADDs, oldest first.
func (e *k8sEnv) cniAdds() []cniCall {
	var out []cniCall
	for _, c := range e.cniLog() {
		if c.Verb == "ADD" {
			out = append(out, c)
		}
	}
	slices.SortStableFunc(out, func(a, b cniCall) int { return a.Time.Compare(b.Time) })
	return out
}
