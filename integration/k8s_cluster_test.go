package integration

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/vnet-cni/vnet-cni/integration/k8s/binaries"
	k8scluster "github.com/vnet-cni/vnet-cni/integration/k8s/cluster"
	"github.com/vnet-cni/vnet-cni/integration/k8s/node"
	"github.com/vnet-cni/vnet-cni/internal/nstest"
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
	t   *testing.T
	ctx context.Context
	c   *k8scluster.Cluster
	kctl string
}

// newK8sEnv starts a cluster with two workers (vnet-ipamd deferred when
// deferIPAMD) and registers its teardown, with the checks that nothing of
// it is left: no process, no cgroup root, no mount point, the host's
// sysctls as before.
func newK8sEnv(t *testing.T, deferIPAMD bool, hook func(string, *config.Config)) *k8sEnv {
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
	c, err := k8scluster.Start(ctx, k8scluster.Options{
		Prefix: nstest.Prefix(t), Dir: dir, BinDir: "../bin",
		Kubernetes: set, Containerd: ctr, CNIPlugins: plugins, Etcd: etcd,
		IPAMD: hook, DeferIPAMD: deferIPAMD,
		Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
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
			for _, n := range c.IPAMD.Nodes {
				t.Logf("--- %s vnet-ipamd log ends:\n%s", n.Name, tailOf(n.LogPath, 15))
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
