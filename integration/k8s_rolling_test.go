package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	k8scluster "github.com/vnet-cni/vnet-cni/integration/k8s/cluster"
	"github.com/vnet-cni/vnet-cni/integration/k8s/workload"
	"github.com/vnet-cni/vnet-cni/internal/nodeimage"
	"github.com/vnet-cni/vnet-cni/ipamd/api"
)

// rollingRef is the second tag of the node image that TestK8sRollingUpdate
// rolls the DaemonSet to.
const rollingRef = "vnet-cni.invalid/vnet-cni:rolling"

// TestK8sRollingUpdate installs vnet-cni from manifests/ (the sim overlay,
// as TestK8sInstall) and rolls the DaemonSet to a new image tag (the node
// image built again under another reference and imported into every
// worker's containerd) while a Deployment of test servers scales 0 → 20 →
// 0 twice. Throughout, a prober polls every Ready pod from both nodes: each
// answers as itself from its first answer on (no failure, no address
// answering for another pod), no two live pods share an address and no
// node's store assigns a Ready pod's address to another pod. After each scale-up every node's
// store assigns exactly its pods' addresses (and its VNetNode counts them);
// every pod whose sandbox creation failed was Running later (kubelet's
// retry succeeded); after the last scale to 0 nothing is left (pool and
// NIC back to the warm target through ARM, no veth, no nftables element).
func TestK8sRollingUpdate(t *testing.T) {
	const replicas, cycles = 20, 2
	e := newK8sEnvWith(t, func(o *k8scluster.Options) { o.IPAMDAsDaemonSet = true })
	t.Cleanup(func() {
		if t.Failed() && e.ctx.Err() == nil {
			t.Logf("DaemonSet pods:\n%s", e.daemonSetPodsLog())
		}
	})
	install := simInstall(t, e)
	if out, err := e.kubectl("apply", "-k", install); err != nil {
		t.Fatalf("kubectl apply -k: %v\n%s", err, out)
	}
	e.waitDaemonSetReady(3 * time.Minute)
	e.waitNodesReady()
	op := newE2EOperator(t, &e2eEnv{sim: e.c.Sim, desc: e.c.Desc})
	before := e.daemonPods()

	// The same binaries under a second tag: a new pod template, so the
	// DaemonSet replaces every node's pod.
	res, err := nodeimage.Build(nodeimage.Options{Ref: rollingRef, IPAMD: "../bin/vnet-ipamd", Plugin: "../bin/vnet-cni", CABundle: caBundle()})
	if err != nil {
		t.Fatal(err)
	}
	tarball := filepath.Join(t.TempDir(), "vnet-cni-rolling.tar")
	if err := os.WriteFile(tarball, res.Tarball, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, n := range e.c.Nodes {
		if out, err := n.Ctr(e.ctx, "-n", "k8s.io", "images", "import", tarball); err != nil {
			t.Fatalf("%s: import %s: %v: %s", n.Name(), rollingRef, err, out)
		}
	}

	e.deployTestServer(0)
	p := startProber(e)
	defer p.stop()

	type roll struct {
		start, end time.Time
		out        string
		err        error
	}
	rolled := make(chan roll, 1)
	var rollStart time.Time
	start := time.Now()
	running := map[string]bool{} // every test pod seen Running
	for c := range cycles {
		up := time.Now()
		e.scale(replicas)
		if c == 0 {
			// The roll begins once the first pods run, while the others'
			// ADDs do.
			e.waitFor("the first pods Ready", time.Minute, func() (bool, string) {
				n := 0
				for _, p := range e.testPods() {
					if workload.Ready(p) {
						n++
					}
				}
				return n >= 3, fmt.Sprintf("%d pods Ready", n)
			})
			rollStart = time.Now()
			go func() {
				r := roll{start: rollStart}
				out, err := e.kubectl("-n", "vnet-cni", "set", "image", "daemonset/vnet-ipamd", "prepare="+rollingRef, "vnet-ipamd="+rollingRef)
				if err == nil {
					var more string
					more, err = e.kubectl("-n", "vnet-cni", "rollout", "status", "daemonset/vnet-ipamd", "--timeout=5m")
					out += more
				}
				r.end, r.out, r.err = time.Now(), out, err
				rolled <- r
			}()
		}
		pods := e.waitRunning(replicas, 4*time.Minute)
		for _, p := range pods {
			running[p.Name] = true
		}
		t.Logf("cycle %d: %d pods Running %s after the scale-up (%s into the test)", c+1, replicas,
			time.Since(up).Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
		e.checkStoresMatch(pods)
		// Every pod answers the prober before the scale-down, so that
		// each cycle's pods are probed whatever a round's timing.
		if missing := p.waitServed(pods, time.Minute); len(missing) > 0 {
			t.Errorf("cycle %d: pods that never answered the prober: %v", c+1, missing)
		}
		down := time.Now()
		e.scale(0)
		e.waitFor("every test pod gone", 2*time.Minute, func() (bool, string) {
			n := len(e.testPods())
			return n == 0, fmt.Sprintf("%d pods left", n)
		})
		t.Logf("cycle %d: all pods gone %s after the scale-down", c+1, time.Since(down).Round(time.Millisecond))
	}
	var r roll
	select {
	case r = <-rolled:
	case <-time.After(5 * time.Minute):
		t.Fatal("the roll did not end")
	}
	if r.err != nil {
		t.Fatalf("kubectl set image / rollout status: %v\n%s", r.err, r.out)
	}
	t.Logf("roll: %s (began %s into the test, ended %s into it)", r.end.Sub(r.start).Round(time.Millisecond),
		r.start.Sub(start).Round(time.Millisecond), r.end.Sub(start).Round(time.Millisecond))
	probes := p.stop()

	t.Run("every node's daemon replaced by the new tag", func(t *testing.T) {
		e := e.with(t)
		e.waitDaemonSetReady(time.Minute)
		after := e.daemonPods()
		for nodeName, old := range before {
			now, ok := after[nodeName]
			if !ok || now.UID == old.UID {
				t.Errorf("%s: the daemon's pod %s was not replaced (now %s)", nodeName, old.Name, now.Name)
				continue
			}
			t.Logf("%s: daemon pod %s replaced by %s, created %s into the test (API timestamps, 1 s resolution)",
				nodeName, old.Name, now.Name, now.CreationTimestamp.Sub(start).Round(time.Second))
			for _, c := range append(slices.Clone(now.Spec.InitContainers), now.Spec.Containers...) {
				if c.Image != rollingRef {
					t.Errorf("%s: container %s runs %s, want %s", nodeName, c.Name, c.Image, rollingRef)
				}
			}
		}
	})

	t.Run("every Running pod stayed reachable", func(t *testing.T) {
		for _, f := range probes.failures {
			t.Error(f)
		}
		for _, d := range probes.duplicates {
			t.Error(d)
		}
		t.Logf("%d probes of %d pods in %d rounds, %d failed; not counted: %d failed probes of pods being deleted, %d before a pod's server answered first; %d probes while the pod's node had no vnet-ipamd answering",
			probes.made, len(probes.pods), probes.rounds, len(probes.failures), probes.excused, probes.notYet, probes.daemonDown)
		for _, s := range probes.notYetSeen {
			t.Logf("before the first answer: %s", s)
		}
		for name := range probes.pods {
			if !probes.serving[name] {
				t.Errorf("pod %s was Ready but never answered a probe", name)
			}
		}
		if probes.daemonDown == 0 {
			t.Error("no pod was probed while its node's vnet-ipamd was down: the roll did not overlap Running pods")
		}
		if probes.made == 0 || len(probes.pods) < cycles*replicas {
			t.Errorf("%d probes of %d pods, want every pod of the %d cycles probed", probes.made, len(probes.pods), cycles)
		}
	})

	t.Run("every failed ADD was retried and succeeded", func(t *testing.T) {
		calls := e.cniAdds()
		ok := map[string]bool{}
		failed := 0
		for _, c := range calls {
			if c.Result == "ok" {
				ok[c.Pod] = true
			} else {
				failed++
				t.Logf("failed ADD of %s: %s", c.Pod, c.Err)
			}
		}
		for name := range running {
			if !ok[k8sTestNS+"/"+name] {
				t.Errorf("pod %s was Running but no successful ADD is logged for it", name)
			}
		}
		ev, err := e.c.Client.CoreV1().Events(k8sTestNS).List(e.ctx, metav1.ListOptions{FieldSelector: "reason=FailedCreatePodSandBox"})
		if err != nil {
			t.Fatal(err)
		}
		// A failed ADD (the daemon restarting: error 11, try again
		// later) is only in the pod's event: libcni passes a plugin's
		// stderr on only when it succeeds.
		retried := 0
		reasons := map[string]int{}
		for _, x := range ev.Items {
			retried += int(x.Count)
			reasons[sandboxID.ReplaceAllString(x.Message, `sandbox "…"`)] += int(x.Count)
			if !running[x.InvolvedObject.Name] {
				t.Errorf("%s: sandbox creation failed (%s) and the pod was never Running", x.InvolvedObject.Name, x.Message)
			}
		}
		for msg, n := range reasons {
			t.Logf("FailedCreatePodSandBox ×%d: %s", n, msg)
		}
		t.Logf("%d pods Running over %d cycles; %d successful ADDs logged, %d failed; %d FailedCreatePodSandBox (each retried by kubelet); vnet-cni calls: %v",
			len(running), cycles, len(calls)-failed, failed, retried, e.cniCalls())
	})

	t.Run("scale to 0: nothing left", func(t *testing.T) {
		e := e.with(t)
		e.waitDrained(op)
	})
}

// daemonPods returns the DaemonSet's pods by node.
func (e *k8sEnv) daemonPods() map[string]corev1.Pod {
	e.t.Helper()
	l, err := e.c.Client.CoreV1().Pods("vnet-cni").List(e.ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=ipamd"})
	if err != nil {
		e.t.Fatal(err)
	}
	out := map[string]corev1.Pod{}
	for _, p := range l.Items {
		if p.DeletionTimestamp == nil {
			out[p.Spec.NodeName] = p
		}
	}
	return out
}

// checkStoresMatch checks that every node's vnet-ipamd store assigns
// exactly the addresses of the Running pods on that node, each to its pod,
// that no address is held twice, and that the node's VNetNode counts them.
func (e *k8sEnv) checkStoresMatch(pods []corev1.Pod) {
	e.t.Helper()
	owner := map[string]string{}
	for _, p := range pods {
		if other, dup := owner[p.Status.PodIP]; dup || p.Status.PodIP == "" {
			e.t.Errorf("pods %s and %s share address %q", p.Name, other, p.Status.PodIP)
		}
		owner[p.Status.PodIP] = p.Name
	}
	for i, n := range e.c.Nodes {
		want := map[string]string{}
		for _, p := range pods {
			if p.Spec.NodeName == n.Name() {
				want[p.Status.PodIP] = k8sTestNS + "/" + p.Name
			}
		}
		// A sandbox torn down after a failed ADD may still be on its
		// way out: wait for the store to settle.
		e.waitFor(n.Name()+"'s store assigns exactly the pods' addresses", 30*time.Second, func() (bool, string) {
			ctx, cancel := context.WithTimeout(e.ctx, 2*time.Second)
			defer cancel()
			l, err := e.ipamdClient(i).List(ctx, api.ListRequest{})
			if err != nil {
				return false, err.Error()
			}
			got := map[string]string{}
			for _, a := range l.Addresses {
				if a.State == "assigned" {
					got[a.IP.String()] = a.PodNamespace + "/" + a.PodName
				}
			}
			return fmt.Sprint(got) == fmt.Sprint(want), fmt.Sprintf("store %v, pods %v", got, want)
		})
		if e.c.IPAMD != nil {
			continue
		}
		e.waitFor(n.Name()+"'s VNetNode counts its pods", 30*time.Second, func() (bool, string) {
			out, err := e.kubectl("get", "vnetnode", n.Name(), "-o", "jsonpath={.status.assigned}")
			return err == nil && strings.TrimSpace(out) == fmt.Sprint(len(want)), fmt.Sprintf("status.assigned %q (%v), %d pods", out, err, len(want))
		})
	}
}

// ipamdClient is an rpc client of node i's vnet-ipamd: the harness's
// process, or the DaemonSet's through the socket on the node's hostPath.
func (e *k8sEnv) ipamdClient(i int) *api.Client {
	if e.c.IPAMD != nil {
		return e.c.IPAMD.Nodes[i].Client()
	}
	return api.NewClient(e.c.Nodes[i].HostPath("/run/vnet-cni/ipamd.sock"))
}

// warmTarget is the number of free addresses node i's pool returns to
// without pods: the harness's configuration, or the sim overlay's.
func (e *k8sEnv) warmTarget(i int) int {
	e.t.Helper()
	if e.c.IPAMD != nil {
		c := e.c.IPAMD.Nodes[i].Config
		return max(c.WarmIPTarget, c.MinIPTarget)
	}
	raw, err := os.ReadFile("../manifests/overlays/sim/ipamd.json")
	if err != nil {
		e.t.Fatal(err)
	}
	var c struct{ WarmIPTarget, MinIPTarget int }
	if err := json.Unmarshal(raw, &c); err != nil {
		e.t.Fatal(err)
	}
	return max(c.WarmIPTarget, c.MinIPTarget)
}

// probeResult is what a prober saw.
type probeResult struct {
	rounds, made, excused int
	// notYet counts the failed probes of a pod before its first answer:
	// the test server has no readiness probe, so a pod is Ready once its
	// container started, maybe before the server listens.
	notYet int
	// serving are the pods that answered at least once; every failure
	// after a pod's first answer counts.
	serving    map[string]bool
	notYetSeen []string // the first of them
	// daemonDown counts the probes of a pod whose node's vnet-ipamd did
	// not answer in that round (being replaced).
	daemonDown           int
	pods                 map[string]bool
	failures, duplicates []string
}

// prober polls every Ready test pod, from every node's network namespace,
// until stopped (a pod from its first answer on: see probeResult.notYet);
// each round also asks each node's vnet-ipamd for its
// status, to count the probes made while a daemon was being replaced.
type prober struct {
	e    *k8sEnv
	done chan struct{}
	wg   sync.WaitGroup
	once sync.Once
	res  probeResult

	// served is res.serving for the test's goroutine (waitServed).
	mu     sync.Mutex
	served map[string]bool
}

func startProber(e *k8sEnv) *prober {
	p := &prober{e: e, done: make(chan struct{}), res: probeResult{pods: map[string]bool{}, serving: map[string]bool{}}, served: map[string]bool{}}
	p.wg.Add(1)
	go p.run()
	return p
}

// stop ends the prober and returns what it saw.
func (p *prober) stop() probeResult {
	p.once.Do(func() { close(p.done); p.wg.Wait() })
	return p.res
}

// waitServed waits until each of pods has answered the prober once, and
// returns those that did not within timeout.
func (p *prober) waitServed(pods []corev1.Pod, timeout time.Duration) []string {
	deadline := time.Now().Add(timeout)
	for {
		var missing []string
		p.mu.Lock()
		for _, pod := range pods {
			if !p.served[pod.Name] {
				missing = append(missing, pod.Name)
			}
		}
		p.mu.Unlock()
		if len(missing) == 0 || time.Now().After(deadline) {
			return missing
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// startedAt says when the pod's server container started, for a failure.
func startedAt(p corev1.Pod) string {
	for _, c := range p.Status.ContainerStatuses {
		if c.State.Running != nil {
			return "server started " + c.State.Running.StartedAt.Format("15:04:05")
		}
	}
	return "server not running"
}

// deleted reports whether the test pod is gone or being deleted.
func (p *prober) deleted(name string) bool {
	now, err := p.e.c.Client.CoreV1().Pods(k8sTestNS).Get(p.e.ctx, name, metav1.GetOptions{})
	return apierrors.IsNotFound(err) || (err == nil && now.DeletionTimestamp != nil)
}

func (p *prober) run() {
	defer p.wg.Done()
	e := p.e
	for {
		select {
		case <-p.done:
			return
		case <-time.After(100 * time.Millisecond):
		}
		pods, err := workload.Pods(e.ctx, e.c.Client)
		if err != nil {
			continue
		}
		p.res.rounds++
		// Each node's store: who holds which address (nil while its
		// daemon is down).
		down := map[string]bool{}
		stores := map[string]map[string]string{}
		for i, n := range e.c.Nodes {
			ctx, cancel := context.WithTimeout(e.ctx, time.Second)
			l, err := e.ipamdClient(i).List(ctx, api.ListRequest{})
			cancel()
			down[n.Name()] = err != nil
			if err != nil {
				continue
			}
			held := map[string]string{}
			for _, a := range l.Addresses {
				if a.State != "assigned" {
					continue
				}
				if other, dup := held[a.IP.String()]; dup {
					p.res.duplicates = append(p.res.duplicates, fmt.Sprintf("%s's store assigns %s to %s and %s", n.Name(), a.IP, other, a.PodName))
				}
				held[a.IP.String()] = a.PodName
			}
			stores[n.Name()] = held
		}
		owner := map[string]string{}
		for _, pod := range pods {
			if pod.DeletionTimestamp != nil || pod.Status.PodIP == "" || !workload.Ready(pod) {
				continue
			}
			if other, dup := owner[pod.Status.PodIP]; dup {
				p.res.duplicates = append(p.res.duplicates, fmt.Sprintf("pods %s and %s both Ready with %s", other, pod.Name, pod.Status.PodIP))
			}
			owner[pod.Status.PodIP] = pod.Name
			p.res.pods[pod.Name] = true
			// The pod listing may be older than the store's (a pod
			// deleted since): only a Ready pod's address held by another
			// pod that is not being deleted counts.
			if held, ok := stores[pod.Spec.NodeName]; ok {
				if h := held[pod.Status.PodIP]; h != "" && h != pod.Name && !p.deleted(h) {
					p.res.duplicates = append(p.res.duplicates, fmt.Sprintf("pod %s is Ready with %s, which %s's store assigns to %s", pod.Name, pod.Status.PodIP, pod.Spec.NodeName, h))
				}
			}
			for _, n := range e.c.Nodes {
				hc := workload.HTTPIn(n.NetNS())
				hc.Timeout = 2 * time.Second
				body, err := workload.Fetch(e.ctx, hc, workload.PodURL(pod, "/"))
				p.res.made++
				if down[pod.Spec.NodeName] {
					p.res.daemonDown++
				}
				if err == nil {
					id, perr := workload.ParseIdentity(body)
					if perr == nil && id.Hostname == pod.Name {
						p.res.serving[pod.Name] = true
						p.mu.Lock()
						p.served[pod.Name] = true
						p.mu.Unlock()
						continue
					}
					err = fmt.Errorf("answered %q, not as %s", body, pod.Name)
				} else if !p.res.serving[pod.Name] {
					p.res.notYet++
					if len(p.res.notYetSeen) < 5 {
						p.res.notYetSeen = append(p.res.notYetSeen, fmt.Sprintf("%s: %s (%s, %s) from %s: %v",
							time.Now().Format("15:04:05.000"), pod.Name, pod.Status.PodIP, startedAt(pod), n.Name(), err))
					}
					continue
				}
				// A pod deleted since the listing may stop answering.
				if p.deleted(pod.Name) {
					p.res.excused++
					continue
				}
				p.res.failures = append(p.res.failures, fmt.Sprintf("%s: %s (%s on %s, %s, its vnet-ipamd down %v, the store's holder %q) from %s: %v",
					time.Now().Format("15:04:05.000"), pod.Name, pod.Status.PodIP, pod.Spec.NodeName, startedAt(pod),
					down[pod.Spec.NodeName], stores[pod.Spec.NodeName][pod.Status.PodIP], n.Name(), err))
			}
		}
	}
}
