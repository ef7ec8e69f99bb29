package integration

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/vnet-cni/vnet-cni/integration/k8s/binaries"
	"github.com/vnet-cni/vnet-cni/integration/k8s/controlplane"
	"github.com/vnet-cni/vnet-cni/internal/nstest"
)

// envK8s makes the Kubernetes tests build the binaries when they are not
// in the cache (a cold build takes a quarter of an hour on two cores).
const envK8s = "VNET_K8S"

// k8sBinaries returns the cached Kubernetes binaries, builds them when
// VNET_K8S=1, and skips the test otherwise.
func k8sBinaries(t *testing.T) binaries.Set {
	t.Helper()
	if set, ok := binaries.Find(binaries.Options{}); ok {
		return set
	}
	if os.Getenv(envK8s) != "1" {
		t.Skipf("kubernetes %s binaries not built in %s: run `make k8s-bins` or set %s=1 to build them here (many minutes cold)",
			binaries.Version, binaries.DefaultDir(binaries.Version), envK8s)
	}
	start := time.Now()
	set, err := binaries.Ensure(context.Background(), binaries.Options{Log: slog.New(slog.NewTextHandler(os.Stderr, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("built kubernetes %s in %s", set.Version, time.Since(start).Round(time.Second))
	return set
}

// TestK8sControlPlane brings up etcd, kube-apiserver, kube-controller-manager
// and kube-scheduler in a network namespace of their own, listening on a
// non-loopback address as on a VM (kube-apiserver's kubernetes Service endpoints
// refuse a loopback address); uses the API through client-go and kubectl,
// checks RBAC, /readyz, the controllers' leader leases and their work, and
// that Stop leaves no process and no file behind.
func TestK8sControlPlane(t *testing.T) {
	nstest.RequireRoot(t)
	etcd, err := exec.LookPath("etcd")
	if err != nil {
		t.Skip("no etcd: apt-get install etcd-server")
	}
	set := k8sBinaries(t)

	// Ctrl-C ends the context: the control plane stops itself, the test
	// fails on the cancelled calls and its cleanup finds nothing to do.
	// Cleanups, not defers: they run after the control plane's cleanup
	// below, which tells a Ctrl-C by the context.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	t.Cleanup(stop)
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	t.Cleanup(cancel)

	nsPath, addr := controlPlaneNS(t)
	start := time.Now()
	cp, err := controlplane.Start(ctx, controlplane.Config{
		Bin: set, Etcd: etcd, NetNS: nsPath, Addr: addr,
		Log: slog.New(slog.NewTextHandler(os.Stderr, nil)),
	})
	if err != nil {
		t.Fatalf("start control plane: %v", err)
	}
	up := time.Since(start)
	pids := cp.PIDs()
	dir := cp.Dir
	stopped := false
	t.Cleanup(func() {
		if stopped {
			return
		}
		// After a Ctrl-C the control plane has stopped itself and
		// removed its logs.
		if t.Failed() && ctx.Err() == nil {
			for _, c := range []string{controlplane.Etcd, controlplane.APIServer, controlplane.ControllerManager, controlplane.Scheduler} {
				t.Logf("%s log ends:\n%s", c, cp.LogTail(c, 30))
			}
		}
		if err := cp.Stop(); err != nil {
			t.Errorf("stop control plane: %v", err)
		}
	})
	t.Logf("control plane up in %s: %s", up.Round(time.Millisecond), cp.Server)

	if got := cp.Running(); strings.Join(got, ",") != "etcd,kube-apiserver,kube-controller-manager,kube-scheduler" {
		t.Fatalf("running components %q", got)
	}
	readyz, err := cp.Get(ctx, "/readyz?verbose")
	if err != nil {
		t.Fatal(err)
	}
	for _, check := range []string{"[+]etcd ok", "[+]poststarthook/rbac/bootstrap-roles ok", "readyz check passed"} {
		if !strings.Contains(readyz, check) {
			t.Errorf("/readyz lacks %q:\n%s", check, readyz)
		}
	}

	rc, err := cp.RESTConfig()
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	v, err := cs.Discovery().ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	if v.GitVersion != set.Version {
		t.Errorf("server version %q, want %q", v.GitVersion, set.Version)
	}

	const ns = "vnet-k8s-test"
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"vnet": "cni", "addresses": "10.0.1.4,10.0.1.5"}
	if _, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "probe"}, Data: want}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	gotNS, err := cs.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if gotNS.Status.Phase != corev1.NamespaceActive {
		t.Errorf("namespace %s phase %q", ns, gotNS.Status.Phase)
	}
	cm, err := cs.CoreV1().ConfigMaps(ns).Get(ctx, "probe", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(cm.Data) != len(want) || cm.Data["vnet"] != want["vnet"] || cm.Data["addresses"] != want["addresses"] {
		t.Errorf("configmap data %v, want %v", cm.Data, want)
	}
	if _, err := cs.CoreV1().ConfigMaps(ns).Get(ctx, "absent", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("get of an absent configmap: %v, want not found", err)
	}

	// RBAC is on: the scheduler's identity may not write ConfigMaps.
	sched, err := cp.SignClient("system:kube-scheduler")
	if err != nil {
		t.Fatal(err)
	}
	schedCfg := t.TempDir() + "/scheduler.kubeconfig"
	if err := cp.WriteKubeconfig(schedCfg, "system:kube-scheduler", sched); err != nil {
		t.Fatal(err)
	}
	out, err := cp.Command(ctx, set.Path("kubectl"), "--kubeconfig", schedCfg, "auth", "can-i", "create", "configmaps", "-n", ns).CombinedOutput()
	if got := strings.TrimSpace(string(out)); err == nil || got != "no" {
		t.Errorf("kubectl auth can-i as the scheduler: %q, %v; want no", got, err)
	}

	// The apiserver advertises itself in the kubernetes Service.
	waitFor(ctx, t, "the kubernetes Service's endpoints", func() (bool, string) {
		ep, err := cs.DiscoveryV1().EndpointSlices(metav1.NamespaceDefault).Get(ctx, "kubernetes", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		if len(ep.Endpoints) != 1 || len(ep.Endpoints[0].Addresses) != 1 || ep.Endpoints[0].Addresses[0] != addr.String() {
			return false, fmt.Sprintf("endpoints %+v", ep.Endpoints)
		}
		return true, ""
	})
	svc, err := cs.CoreV1().Services(metav1.NamespaceDefault).Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if svc.Spec.ClusterIP != "10.96.0.1" {
		t.Errorf("kubernetes Service ClusterIP %s, want 10.96.0.1", svc.Spec.ClusterIP)
	}

	// The controllers' leader leases, and the controllers at work: the
	// namespace got its kube-root-ca.crt ConfigMap and default
	// ServiceAccount from kube-controller-manager.
	for _, name := range []string{"kube-controller-manager", "kube-scheduler"} {
		waitFor(ctx, t, name+" holds its lease", func() (bool, string) {
			l, err := cs.CoordinationV1().Leases("kube-system").Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false, err.Error()
			}
			if l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity == "" || l.Spec.RenewTime == nil {
				return false, "no holder"
			}
			if age := time.Since(l.Spec.RenewTime.Time); age > 30*time.Second {
				return false, "renewed " + age.String() + " ago"
			}
			return true, ""
		})
	}
	waitFor(ctx, t, "kube-root-ca.crt in "+ns, func() (bool, string) {
		cm, err := cs.CoreV1().ConfigMaps(ns).Get(ctx, "kube-root-ca.crt", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		return cm.Data["ca.crt"] == string(cp.CAPEM), "ca.crt differs from the cluster CA"
	})
	waitFor(ctx, t, "default ServiceAccount in "+ns, func() (bool, string) {
		_, err := cs.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		return true, ""
	})

	// kubectl built with the version ldflags parses its version.
	out, err = cp.Command(ctx, set.Path("kubectl"), "--kubeconfig", cp.AdminKubeconfig, "version", "-o", "json").CombinedOutput()
	if err != nil {
		t.Errorf("kubectl version: %v\n%s", err, out)
	} else if n := strings.Count(string(out), `"gitVersion": "`+set.Version+`"`); n != 2 {
		t.Errorf("kubectl version reports %s %d times, want client and server:\n%s", set.Version, n, out)
	}
	out, err = cp.Command(ctx, set.Path("kubectl"), "--kubeconfig", cp.AdminKubeconfig, "get", "configmap", "probe", "-n", ns, "-o", "jsonpath={.data.vnet}").CombinedOutput()
	if err != nil || string(out) != "cni" {
		t.Errorf("kubectl get configmap: %q, %v", out, err)
	}

	start = time.Now()
	if err := cp.Stop(); err != nil {
		t.Errorf("stop control plane: %v", err)
	}
	stopped = true
	t.Logf("control plane stopped in %s", time.Since(start).Round(time.Millisecond))
	for name, pid := range pids {
		if err := syscall.Kill(pid, 0); err == nil {
			t.Errorf("%s (pid %d) still running after Stop", name, pid)
		}
	}
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("control plane dir %s still there after Stop: %v", dir, err)
	}
}

// controlPlaneNS makes a network namespace for the control plane, with
// loopback up and holding a non-loopback address it listens on (this
// kernel has no dummy links; the cluster harness will give the control
// plane a NIC of the simulated VNet instead).
func controlPlaneNS(t *testing.T) (string, netip.Addr) {
	t.Helper()
	nsPath := nstest.NewNS(t, nstest.Prefix(t)+"-cp")
	nl := nstest.Netlink(t, nsPath)
	lo, err := nl.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := nl.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddr("10.240.0.10")
	if err := nl.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
		t.Fatal(err)
	}
	return nsPath, addr
}

// waitFor polls cond every 200 ms until it holds, failing the test when ctx
// ends or after a minute.
func waitFor(ctx context.Context, t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		ok, why := cond()
		if ok {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: %s (%v)", what, why, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}
