// Command vnet-demo-k8s shows vnet-cni under a real Kubernetes cluster on
// the simulated Azure VNet, offline: a control plane on a VM of the VNet,
// two worker VMs with containerd, kubelet and kube-proxy, vnet-cni
// installed from manifests/ (`kubectl apply -k` of the sim overlay: the
// vnet-ipamd DaemonSet from the node image, its per-node VNetNode
// objects), a Deployment of test servers whose pods get addresses of their
// node's NIC from vnet-cni, then traffic checks (pod to pod, Service,
// NodePort, internet) and a scale to 0 that must leave nothing behind.
// With -mode kubenet (make demo-k8s MODE=kubenet) the cluster is a kubenet
// one: kube-controller-manager allocates the Nodes' pod CIDRs, vnet-cni is
// installed from manifests/overlays/kubenet, the pods take addresses of
// their node's pod CIDR, and the demo shows the route table through ARM
// (one vnetcni-<node> route per worker), the Nodes' NetworkUnavailable
// condition and the route controller's Lease. It prints
// tables, marks every check ok or FAIL, ends with "N checks passed, M
// failed", exits non-zero on a failure and removes everything it made,
// also on Ctrl-C. `make demo-k8s` builds what it needs and runs it.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v9"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/vnet-cni/vnet-cni/integration/armops"
	"github.com/vnet-cni/vnet-cni/integration/k8s/binaries"
	k8scluster "github.com/vnet-cni/vnet-cni/integration/k8s/cluster"
	"github.com/vnet-cni/vnet-cni/integration/k8s/node"
	"github.com/vnet-cni/vnet-cni/integration/k8s/workload"
	"github.com/vnet-cni/vnet-cni/integration/probe"
	"github.com/vnet-cni/vnet-cni/integration/report"
)

const name = "vnet-demo-k8s"

func main() {
	binDir := flag.String("bin", "bin", "directory holding vnet-ipamd and vnet-cni (make build)")
	manifests := flag.String("manifests", "manifests", "the repository's manifests directory (kustomize base and overlays)")
	replicas := flag.Int("replicas", 20, "replicas of the test server's Deployment")
	mode := flag.String("mode", "bridge", "vnet-cni's mode: bridge (VNet addresses from the NIC) or kubenet (the Nodes' pod CIDRs and the route table)")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, name+": needs root (network and mount namespaces, cgroups); run `sudo make demo-k8s`")
		os.Exit(1)
	}
	if *replicas < 2 || *replicas > 100 {
		fmt.Fprintln(os.Stderr, name+": -replicas must be 2..100")
		os.Exit(2)
	}
	if *mode != "bridge" && *mode != "kubenet" {
		fmt.Fprintln(os.Stderr, name+": -mode must be bridge or kubenet")
		os.Exit(2)
	}
	os.Exit(run(*binDir, *manifests, int32(*replicas), *mode == "kubenet"))
}

func run(binDir, manifests string, replicas int32, kubenet bool) int {
	r := report.New(name, os.Stdout)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var interrupted atomic.Bool
	sigs := make(chan os.Signal, 2)
	// Signals are caught through the teardown: a second Ctrl-C must not
	// leave processes, mounts or cgroups behind.
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	go func() {
		for s := range sigs {
			if interrupted.Swap(true) {
				fmt.Println("\n" + name + ": still cleaning up, please wait")
				continue
			}
			fmt.Printf("\n%s: %s: stopping, then cleaning up\n", name, s)
			cancel()
		}
	}()

	mode := "bridge mode"
	if kubenet {
		mode = "kubenet mode"
	}
	fmt.Println(name + ": vnet-cni (" + mode + ") under kubelet and containerd on a simulated Azure VNet (offline)")
	d := &demo{r: r, binDir: binDir, manifests: manifests, replicas: replicas, kubenet: kubenet}
	if err := d.run(ctx); err != nil {
		if interrupted.Load() {
			err = fmt.Errorf("interrupted: %w", err)
		}
		r.Step("stopped: %v", err)
		r.Check("the demo ran to its end", err)
	}
	d.teardown()
	r.Summary()
	switch {
	case interrupted.Load():
		return 130
	case !r.OK():
		return 1
	}
	return 0
}

// demo is one run.
type demo struct {
	r         *report.Report
	binDir    string
	manifests string
	replicas  int32
	// kubenet runs the cluster in kubenet mode.
	kubenet bool

	dir    string
	logf   *os.File
	c      *k8scluster.Cluster
	nics   *armnetwork.InterfacesClient
	srv    probe.Servers
	inet   netip.AddrPort
	kctl   string
	warm   int // the pool's warm target in the installed configuration
	pids   []int
	roots  []string
	mounts []string
	sysctl map[string]string
	// cidrs are the Nodes' pod CIDRs in kubenet mode.
	cidrs map[string]netip.Prefix
}

func (d *demo) run(ctx context.Context) error {
	r := d.r
	set, ctr, plugins, etcd, err := findBinaries()
	if err != nil {
		return err
	}
	d.kctl = set.Path("kubectl")
	if d.dir, err = os.MkdirTemp("", name+"-"); err != nil {
		return err
	}
	if d.logf, err = os.Create(filepath.Join(d.dir, "harness.log")); err != nil {
		return err
	}
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		return err
	}

	r.Step("starting the cluster: a simulated Azure VNet; the control plane (etcd, kube-apiserver, controllers) on VM 3; containerd, kubelet and kube-proxy on VMs 1 and 2, the node image (vnet-ipamd and vnet-cni) imported into their containerd")
	opts := k8scluster.Options{
		Prefix: "dk8s" + hex.EncodeToString(b[:]), Dir: d.dir, BinDir: d.binDir,
		Kubernetes: set, Containerd: ctr, CNIPlugins: plugins, Etcd: etcd,
		IPAMDAsDaemonSet: true,
		Log:              slog.New(slog.NewTextHandler(d.logf, &slog.HandlerOptions{Level: slog.LevelInfo})),
	}
	if d.kubenet {
		opts.KubenetCIDR = kubenetCIDR
		r.Note("kubenet: kube-controller-manager --allocate-node-cidrs --cluster-cidr=%s --node-cidr-mask-size=24 --configure-cloud-routes=false", kubenetCIDR)
	}
	d.c, err = k8scluster.Start(ctx, opts)
	if err != nil {
		return fmt.Errorf("start the cluster: %w", err)
	}
	c := d.c
	d.remember()
	tm := c.Timings
	r.Note("up in %s: sim %s, control plane %s, images %s, nodes %s",
		(tm.Sim + tm.ControlPlane + tm.Images + tm.Nodes).Round(100*time.Millisecond), tm.Sim.Round(10*time.Millisecond),
		tm.ControlPlane.Round(10*time.Millisecond), tm.Images.Round(10*time.Millisecond), tm.Nodes.Round(10*time.Millisecond))
	var rows [][]string
	for i, n := range c.Desc.Nodes {
		role := "worker " + n.Name
		if i == len(c.Desc.Nodes)-1 {
			role = "control plane: " + c.CP.Server
		}
		rows = append(rows, []string{n.Name, n.PrimaryIP, n.NIC, role})
	}
	r.Table([]string{"VM", "ADDRESS", "NIC", "RUNS"}, rows)
	if d.nics, err = armops.Interfaces(c.Desc, c.Sim.ARM()); err != nil {
		return err
	}
	if d.inet, err = d.srv.Listen(c.Desc.InternetNetns, "internet", netip.AddrPortFrom(netip.MustParseAddr(c.Desc.InternetHost), 80)); err != nil {
		return fmt.Errorf("internet server: %w", err)
	}

	if err := d.install(ctx); err != nil {
		return err
	}
	if err := d.nodes(ctx); err != nil {
		return err
	}
	if d.kubenet {
		if err := d.kubenetRoutes(ctx); err != nil {
			return err
		}
	}
	pods, svc, local, err := d.deploy(ctx)
	if err != nil {
		return err
	}
	if err := d.vnetNodes(ctx, pods); err != nil {
		return err
	}
	if err := d.traffic(ctx, pods, svc, local); err != nil {
		return err
	}
	if err := d.scaleDown(ctx); err != nil {
		return err
	}
	return d.scaleUp(ctx, pods)
}

// findBinaries returns the built Kubernetes, containerd and plugin
// binaries and etcd, or says how to get them.
func findBinaries() (set, ctr, plugins binaries.Set, etcd string, err error) {
	set, ok := binaries.Find(binaries.Options{})
	if !ok {
		return set, ctr, plugins, "", fmt.Errorf("kubernetes %s binaries not in %s: run `make k8s-bins`", binaries.Version, binaries.DefaultDir(binaries.Version))
	}
	for _, m := range []struct {
		mod binaries.Module
		out *binaries.Set
	}{{binaries.Containerd(binaries.ContainerdVersion), &ctr}, {binaries.CNIPlugins(binaries.CNIPluginsVersion), &plugins}} {
		s, ok := binaries.FindModule(binaries.Options{}, m.mod)
		if !ok {
			return set, ctr, plugins, "", fmt.Errorf("%s %s not built in %s: run `make k8s-bins`", m.mod.Path, m.mod.Version, binaries.DefaultModuleDir(m.mod))
		}
		*m.out = s
	}
	if etcd, err = exec.LookPath("etcd"); err != nil {
		return set, ctr, plugins, "", errors.New("no etcd: apt-get install etcd-server")
	}
	for _, p := range []string{"/usr/sbin/runc", "/usr/bin/nsenter"} {
		if _, err := os.Stat(p); err != nil {
			return set, ctr, plugins, "", fmt.Errorf("no %s: apt-get install runc util-linux", p)
		}
	}
	return set, ctr, plugins, etcd, nil
}

// remember notes what the cluster made on the host, for the final check.
func (d *demo) remember() {
	for _, n := range d.c.Nodes {
		for _, p := range n.PIDs() {
			d.pids = append(d.pids, p)
		}
	}
	for _, p := range d.c.CP.PIDs() {
		d.pids = append(d.pids, p)
	}
	d.roots = d.c.CgroupRoots()
	d.mounts = d.c.CreatedMountPoints()
	d.sysctl = d.c.Sysctls()
}

// nodes waits for both nodes to be Ready and shows them with their pools.
func (d *demo) nodes(ctx context.Context) error {
	r, c := d.r, d.c
	r.Step("waiting for the nodes: kubelet holds a node NotReady until the runtime's network (vnet-cni's STATUS) is ready")
	start := time.Now()
	for _, n := range c.Nodes {
		err := workload.WaitFor(ctx, n.Name()+" Ready", 2*time.Minute, func() (bool, string) {
			k, err := c.Client.CoreV1().Nodes().Get(ctx, n.Name(), metav1.GetOptions{})
			if err != nil {
				return false, err.Error()
			}
			cond := readyCondition(k)
			if cond == nil {
				return false, "no Ready condition yet"
			}
			return cond.Status == corev1.ConditionTrue, cond.Message
		})
		r.CheckLine(fmt.Sprintf("%s Ready (after %s)", n.Name(), time.Since(start).Round(100*time.Millisecond)), err)
		if err != nil {
			return err
		}
	}
	d.kubectl("get", "nodes", "-o", "wide")
	if d.kubenet {
		if err := d.podCIDRs(ctx); err != nil {
			return err
		}
	}
	return d.poolTable(ctx)
}

func readyCondition(n *corev1.Node) *corev1.NodeCondition {
	for i := range n.Status.Conditions {
		if n.Status.Conditions[i].Type == corev1.NodeReady {
			return &n.Status.Conditions[i]
		}
	}
	return nil
}

// poolTable shows every node's vnet-ipamd pool next to its NIC.
func (d *demo) poolTable(ctx context.Context) error {
	var rows [][]string
	for i, n := range d.c.Nodes {
		st, err := ipamdStatus(ctx, n)
		if err != nil {
			return fmt.Errorf("%s: vnet-ipamd status: %w", n.Name(), err)
		}
		sec, err := armops.Secondaries(ctx, d.nics, d.c.Desc.ResourceGroup, d.c.Desc.Nodes[i].NIC)
		if err != nil {
			return err
		}
		p := st.Pool
		row := []string{n.Name(), fmt.Sprint(p.Free), fmt.Sprint(p.Assigned), fmt.Sprint(p.Cooling), fmt.Sprint(len(sec)), yesNo(st.Ready)}
		if d.kubenet {
			row = append([]string{n.Name(), d.cidrs[n.Name()].String()}, row[1:]...)
		}
		rows = append(rows, row)
	}
	header := []string{"NODE", "FREE", "ASSIGNED", "COOLING", "SECONDARY IPS ON THE NIC (ARM)", "VNET-IPAMD READY"}
	if d.kubenet {
		header = append([]string{"NODE", "POD CIDR (NODE SPEC)"}, header[1:]...)
	}
	d.r.Table(header, rows)
	return nil
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// kubectlOut runs kubectl as the admin inside the control plane's VM and
// returns its output.
func (d *demo) kubectlOut(args ...string) (string, error) {
	out, err := d.c.CP.Command(context.Background(), d.kctl, append([]string{"--kubeconfig", d.c.CP.AdminKubeconfig}, args...)...).CombinedOutput()
	return string(out), err
}

// kubectl runs kubectl as the admin inside the control plane's VM and
// prints its output under the step.
func (d *demo) kubectl(args ...string) {
	out, err := d.kubectlOut(args...)
	d.r.Note("$ kubectl %s", strings.Join(args, " "))
	for _, l := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		d.r.Note("  %s", l)
	}
	if err != nil {
		d.r.CheckLine("kubectl "+strings.Join(args, " "), err)
	}
}

// deploy creates the test server's Deployment and Services and checks
// every pod's address against its node's NIC.
func (d *demo) deploy(ctx context.Context) (pods []corev1.Pod, svc, local *corev1.Service, err error) {
	r, c := d.r, d.c
	r.Step("kubectl create deployment testserver --replicas %d, with NodePort Services (policy Cluster and Local)", d.replicas)
	start := time.Now()
	if svc, local, err = workload.DeployTestServer(ctx, c.Client, d.replicas); err != nil {
		return nil, nil, nil, err
	}
	pods, err = workload.WaitRunning(ctx, c.Client, int(d.replicas), 3*time.Minute)
	r.CheckLine(fmt.Sprintf("%d pods Running and Ready (%s after the Deployment was created)", d.replicas, time.Since(start).Round(100*time.Millisecond)), err)
	if err != nil {
		return nil, nil, nil, err
	}
	if ds := workload.StartupTimes(pods); len(ds) > 0 {
		r.Note("creation→Ready from the API's timestamps (1 s resolution): p50 %s, max %s", ds[len(ds)/2], ds[len(ds)-1])
	}
	sort.Slice(pods, func(i, j int) bool {
		if pods[i].Spec.NodeName != pods[j].Spec.NodeName {
			return pods[i].Spec.NodeName < pods[j].Spec.NodeName
		}
		return pods[i].Name < pods[j].Name
	})
	secs := map[string]map[netip.Addr]bool{}
	for _, n := range c.Desc.Nodes[:len(c.Nodes)] {
		if secs[n.Name], err = armops.Secondaries(ctx, d.nics, c.Desc.ResourceGroup, n.NIC); err != nil {
			return nil, nil, nil, err
		}
	}
	nicOf := map[string]string{}
	for _, n := range c.Desc.Nodes {
		nicOf[n.Name] = n.NIC
	}
	seen := map[string]string{}
	var rows [][]string
	var bad, dup []string
	perNode := map[string]int{}
	for _, p := range pods {
		ip, _ := netip.ParseAddr(p.Status.PodIP)
		onNIC := secs[p.Spec.NodeName][ip]
		if d.kubenet {
			// Of the node's pod CIDR, its gateway (the bridge) excepted,
			// and never on the NIC.
			cidr := d.cidrs[p.Spec.NodeName]
			onNIC = cidr.Contains(ip) && ip != cidr.Addr().Next() && !secs[p.Spec.NodeName][ip]
		}
		cell := "yes"
		if !onNIC {
			cell = "NO"
			bad = append(bad, p.Name+" "+p.Status.PodIP)
		}
		if other, ok := seen[p.Status.PodIP]; ok {
			dup = append(dup, p.Name+" and "+other)
		}
		seen[p.Status.PodIP] = p.Name
		perNode[p.Spec.NodeName]++
		rows = append(rows, []string{p.Name, readyText(p), string(p.Status.Phase), p.Status.PodIP, p.Spec.NodeName, nicOf[p.Spec.NodeName], cell})
	}
	if d.kubenet {
		for _, row := range rows {
			row[5] = d.cidrs[row[4]].String()
		}
		r.Table([]string{"NAME", "READY", "STATUS", "IP", "NODE", "POD CIDR", "IN THE NODE'S POD CIDR, NOT ON THE NIC"}, rows)
		r.CheckLine("every pod's IP is of its own node's pod CIDR (none taken from the subnet)", listErr("not of the pod CIDR", bad))
	} else {
		r.Table([]string{"NAME", "READY", "STATUS", "IP", "NODE", "NIC", "IP CONFIGURATION OF THE NIC (ARM)"}, rows)
		r.CheckLine("every pod's IP is a secondary ipConfiguration of its own node's NIC", listErr("not on the NIC", bad))
	}
	r.CheckLine("no two pods share an address", listErr("shared", dup))
	var spread error
	if len(perNode) != len(c.Nodes) {
		spread = fmt.Errorf("pods on %v", perNode)
	}
	r.CheckLine(fmt.Sprintf("pods on both nodes %v", perNode), spread)
	if err := d.poolTable(ctx); err != nil {
		return nil, nil, nil, err
	}
	return pods, svc, local, nil
}

func readyText(p corev1.Pod) string {
	ready := 0
	for _, s := range p.Status.ContainerStatuses {
		if s.Ready {
			ready++
		}
	}
	return fmt.Sprintf("%d/%d", ready, len(p.Spec.Containers))
}

func listErr(what string, items []string) error {
	if len(items) == 0 {
		return nil
	}
	return fmt.Errorf("%s: %s", what, strings.Join(items, ", "))
}

// traffic checks pod to pod, the Services, the NodePorts and SNAT.
func (d *demo) traffic(ctx context.Context, pods []corev1.Pod, svc, local *corev1.Service) error {
	r, c := d.r, d.c
	r.Step("traffic: from inside the pods (the test server fetches on request), from the other node and from the internet")
	nodeOf := map[string]string{}
	first := map[string]corev1.Pod{}
	for _, p := range pods {
		nodeOf[p.Name] = p.Spec.NodeName
		if _, ok := first[p.Spec.NodeName]; !ok {
			first[p.Spec.NodeName] = p
		}
	}
	nA, nB := c.Nodes[0], c.Nodes[1]
	a, b := first[nA.Name()], first[nB.Name()]
	if a.Name == "" || b.Name == "" {
		return errors.New("no pod on one of the nodes")
	}
	ns := map[string]string{nA.Name(): nA.NetNS(), nB.Name(): nB.NetNS()}

	var rows [][]string
	row := func(from, to, answered, saw string, err error, what string) {
		res := r.Check(what, err)
		if err != nil {
			saw = err.Error()
		}
		rows = append(rows, []string{from, to, answered, saw, res})
	}
	for _, pair := range [][2]corev1.Pod{{a, b}, {b, a}} {
		from, to := pair[0], pair[1]
		id, err := workload.ViaPod(ctx, ns[from.Spec.NodeName], from, "http://"+net.JoinHostPort(to.Status.PodIP, fmt.Sprint(workload.Port))+"/")
		if err == nil && (id.Hostname != to.Name || id.Client != from.Status.PodIP) {
			err = fmt.Errorf("answered by %s seeing %s, want %s seeing %s (no NAT)", id.Hostname, id.Client, to.Name, from.Status.PodIP)
		}
		row(from.Name+" ("+from.Spec.NodeName+")", to.Status.PodIP+":8080 ("+to.Spec.NodeName+")", id.Hostname, id.Client,
			err, "pod to pod across nodes keeps the pod's address")
	}

	if err := workload.WaitFor(ctx, "the Service's endpoints", time.Minute, func() (bool, string) {
		n, err := workload.ReadyEndpoints(ctx, c.Client, workload.Name)
		if err != nil {
			return false, err.Error()
		}
		return n == int(d.replicas), fmt.Sprintf("%d ready endpoints", n)
	}); err != nil {
		return err
	}
	// kube-proxy may be a sync behind the API: a round that misses a
	// node is tried again, for at most 30 s.
	target := "http://" + net.JoinHostPort(svc.Spec.ClusterIP, "80") + "/"
	var hit map[string]int
	err := retry(ctx, 30*time.Second, func() error {
		hit = map[string]int{}
		for range 20 {
			id, err := workload.ViaPod(ctx, nA.NetNS(), a, target)
			if err != nil {
				return err
			}
			hit[nodeOf[id.Hostname]]++
		}
		if len(hit) != len(c.Nodes) || hit[""] > 0 {
			return fmt.Errorf("answers from %v, want pods on both nodes", hit)
		}
		return nil
	})
	row(a.Name, "ClusterIP "+svc.Spec.ClusterIP+":80 (20 requests)", fmt.Sprint(hit), "", err, "pod to ClusterIP Service reaches pods on both nodes")

	port := fmt.Sprint(svc.Spec.Ports[0].NodePort)
	target = "http://" + net.JoinHostPort(nA.IP().String(), port) + "/"
	err = retry(ctx, 30*time.Second, func() error {
		hit = map[string]int{}
		for range 20 {
			body, err := workload.Fetch(ctx, workload.HTTPIn(nB.NetNS()), target)
			if err != nil {
				return err
			}
			id, err := workload.ParseIdentity(body)
			if err != nil {
				return err
			}
			hit[nodeOf[id.Hostname]]++
		}
		if hit[nA.Name()] == 0 || hit[nB.Name()] == 0 {
			return fmt.Errorf("answers from %v, want pods on both nodes", hit)
		}
		return nil
	})
	row(nB.Name()+" (the node)", "NodePort "+nA.IP().String()+":"+port+" (Cluster)", fmt.Sprint(hit), "", err, "NodePort (policy Cluster) from the other node reaches pods on both nodes")

	port = fmt.Sprint(local.Spec.Ports[0].NodePort)
	target = "http://" + net.JoinHostPort(nA.IP().String(), port) + "/"
	client := c.Desc.InternetHost
	var id workload.Identity
	err = retry(ctx, 30*time.Second, func() error {
		body, err := workload.Fetch(ctx, workload.HTTPIn(c.Desc.InternetNetns), target)
		if err != nil {
			return err
		}
		if id, err = workload.ParseIdentity(body); err != nil {
			return err
		}
		if nodeOf[id.Hostname] != nA.Name() || id.Client != client {
			return fmt.Errorf("answered by %s seeing %s, want a pod of %s seeing %s", id.Hostname, id.Client, nA.Name(), client)
		}
		return nil
	})
	row("internet host "+client, "NodePort "+nA.IP().String()+":"+port+" (Local)", id.Hostname, id.Client, err, "NodePort (policy Local) from the internet keeps the client's address")

	for _, p := range []corev1.Pod{a, b} {
		body, err := workload.Dial(ctx, ns[p.Spec.NodeName], p, d.inet.String())
		n, _ := nodeByName(c, p.Spec.NodeName)
		want := "internet saw " + n.IP().String()
		if err == nil && body != want {
			err = fmt.Errorf("%q, want %q", body, want)
		}
		row(p.Name+" ("+p.Spec.NodeName+")", "internet "+d.inet.String(), "internet", strings.TrimPrefix(body, "internet saw "), err, "pod to the internet is SNAT-ed to its node's address")
	}
	r.Table([]string{"FROM", "TO", "ANSWERED BY", "SOURCE SEEN", "RESULT"}, rows)
	return nil
}

func nodeByName(c *k8scluster.Cluster, name string) (*node.Node, int) {
	for i, n := range c.Nodes {
		if n.Name() == name {
			return n, i
		}
	}
	return nil, -1
}

// retry runs f until it succeeds or timeout passes, returning its last
// error.
func retry(ctx context.Context, timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// scaleDown scales to 0 and checks that nothing of the pods is left.
func (d *demo) scaleDown(ctx context.Context) error {
	r, c := d.r, d.c
	if d.kubenet {
		r.Step("kubectl scale deployment testserver --replicas 0: kubelet deletes the sandboxes, vnet-cni releases the addresses into the pod CIDR's pool")
	} else {
		r.Step("kubectl scale deployment testserver --replicas 0: kubelet deletes the sandboxes, vnet-cni releases the addresses, vnet-ipamd gives the surplus back to the NIC")
	}
	start := time.Now()
	if err := workload.Scale(ctx, c.Client, 0); err != nil {
		return err
	}
	err := workload.WaitGone(ctx, c.Client, 2*time.Minute)
	r.CheckLine(fmt.Sprintf("every pod gone (%s)", time.Since(start).Round(100*time.Millisecond)), err)
	if err != nil {
		return err
	}
	for i, n := range c.Nodes {
		want := d.warm
		var last string
		err := workload.WaitFor(ctx, n.Name()+" back to its warm pool", time.Minute, func() (bool, string) {
			st, err := ipamdStatus(ctx, n)
			if err != nil {
				return false, err.Error()
			}
			sec, err := armops.Secondaries(ctx, d.nics, c.Desc.ResourceGroup, c.Desc.Nodes[i].NIC)
			if err != nil {
				return false, err.Error()
			}
			p := st.Pool
			last = fmt.Sprintf("free %d, assigned %d, cooling %d, releasing %d, %d on the NIC", p.Free, p.Assigned, p.Cooling, p.Releasing, len(sec))
			if d.kubenet {
				// The pool is the pod CIDR's: nothing goes back to the NIC,
				// which never had any.
				return p.Assigned == 0 && p.Cooling == 0 && p.Releasing == 0 && len(sec) == 0, last
			}
			return p.Assigned == 0 && p.Cooling == 0 && p.Releasing == 0 && p.Free == want && len(sec) == want, last
		})
		if d.kubenet {
			r.CheckLine(fmt.Sprintf("%s: no assignment left, no secondary IP on the NIC (%s)", n.Name(), last), err)
			continue
		}
		r.CheckLine(fmt.Sprintf("%s: no assignment left, pool and NIC back to the warm target %d (%s)", n.Name(), want, last), err)
	}
	for _, n := range c.Nodes {
		veths, err := podVeths(n.NetNS())
		if err == nil && len(veths) > 0 {
			err = fmt.Errorf("left: %v", veths)
		}
		r.CheckLine(n.Name()+": no pod veth left", err)
	}
	return d.poolTable(ctx)
}

// scaleUp scales to the replicas again: the addresses come back from the
// warm pool and the NIC, and many are ones the first pods had.
func (d *demo) scaleUp(ctx context.Context, before []corev1.Pod) error {
	r, c := d.r, d.c
	r.Step("kubectl scale deployment testserver --replicas %d: the pool grows again", d.replicas)
	start := time.Now()
	if err := workload.Scale(ctx, c.Client, d.replicas); err != nil {
		return err
	}
	pods, err := workload.WaitRunning(ctx, c.Client, int(d.replicas), 3*time.Minute)
	r.CheckLine(fmt.Sprintf("%d pods Running again (%s after the scale)", d.replicas, time.Since(start).Round(100*time.Millisecond)), err)
	if err != nil {
		return err
	}
	old := map[string]bool{}
	for _, p := range before {
		old[p.Status.PodIP] = true
	}
	seen := map[string]bool{}
	reused := 0
	var dup []string
	for _, p := range pods {
		if seen[p.Status.PodIP] {
			dup = append(dup, p.Status.PodIP)
		}
		seen[p.Status.PodIP] = true
		if old[p.Status.PodIP] {
			reused++
		}
	}
	r.CheckLine("no two pods share an address", listErr("shared", dup))
	r.Note("%d of %d addresses are ones the first pods had (released, cooled down, given out again)", reused, d.replicas)
	return d.poolTable(ctx)
}

// teardown stops the cluster and checks that nothing of it is left.
func (d *demo) teardown() {
	r := d.r
	r.Step("tearing down: workers (kube-proxy, kubelet, containerd with the vnet-ipamd pods), control plane (kube-apiserver before etcd), the simulated cloud")
	d.srv.Close()
	if !r.OK() {
		d.printLogs()
	}
	var errs []error
	if d.c != nil {
		errs = append(errs, d.c.Close())
		for _, p := range d.pids {
			if syscall.Kill(p, 0) == nil {
				errs = append(errs, fmt.Errorf("pid %d still runs", p))
			}
		}
		for _, root := range d.roots {
			if node.CgroupRootExists(root) {
				errs = append(errs, fmt.Errorf("cgroup root %s left", root))
			}
		}
		for _, m := range d.mounts {
			if _, err := os.Stat(m); err == nil {
				errs = append(errs, fmt.Errorf("mount point %s left", m))
			}
		}
		for k, v := range d.sysctl {
			if got, _ := os.ReadFile("/proc/sys/" + k); strings.TrimSpace(string(got)) != v {
				errs = append(errs, fmt.Errorf("sysctl %s = %q, was %q", k, strings.TrimSpace(string(got)), v))
			}
		}
		for _, n := range d.c.Desc.Nodes {
			if _, err := os.Stat(n.Netns); err == nil {
				errs = append(errs, fmt.Errorf("namespace %s left", n.Netns))
			}
		}
	}
	if d.logf != nil {
		_ = d.logf.Close()
	}
	if d.dir != "" {
		errs = append(errs, os.RemoveAll(d.dir))
	}
	r.CheckLine("nothing left behind (processes, namespaces, mounts, cgroups, sysctls, files)", errors.Join(errs...))
}

// printLogs prints the end of every component's log.
func (d *demo) printLogs() {
	show := func(title, text string) {
		if strings.TrimSpace(text) != "" {
			fmt.Printf("\n--- %s\n%s\n", title, text)
		}
	}
	if d.logf != nil {
		show("harness log", tail(d.logf.Name(), 15))
	}
	if d.c == nil {
		return
	}
	for _, n := range d.c.Nodes {
		for _, comp := range []string{node.Containerd, node.Kubelet} {
			show(n.Name()+" "+comp, n.LogTail(comp, 15))
		}
	}
	if out, err := d.kubectlOut("-n", "vnet-cni", "logs", "-l", "app.kubernetes.io/component=ipamd", "--all-containers", "--tail", "15", "--prefix"); err == nil {
		show("vnet-ipamd (kubectl logs)", out)
	}
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
