// Command vnet-bench-k8s measures pod start-up through kubelet on the
// simulated VNet: clusterloader2's node-throughput profile (pods created
// at a fixed rate on one node) with vnet-cni, then with Debian's bridge +
// host-local conflist on the same node, alternating, in one run. It prints
// p50/p90/p99 of creation→Running and of containerd's sandbox network
// set-up, the ratios, and writes them as JSON. `make bench-k8s` runs it.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/vnet-cni/vnet-cni/integration/bench"
	"github.com/vnet-cni/vnet-cni/integration/k8s/binaries"
	k8scluster "github.com/vnet-cni/vnet-cni/integration/k8s/cluster"
	"github.com/vnet-cni/vnet-cni/integration/k8s/podbench"
	"github.com/vnet-cni/vnet-cni/integration/k8s/workload"
	"github.com/vnet-cni/vnet-cni/ipamd/config"
)

const (
	name      = "vnet-bench-k8s"
	namespace = "bench"
	// refConflist sorts before vnet-ipamd's 10-vnet-cni.conflist:
	// containerd loads the first conflist (max_conf_num 1).
	refConflist = "05-ref-bridge.conflist"
	refNetwork  = "ref-bridge"
	debianCNI   = "/usr/lib/cni"
)

// refRange is the reference's pod range, outside the VNet.
var refRange = netip.MustParsePrefix("172.31.0.0/16")

func main() {
	binDir := flag.String("bin", "bin", "directory holding vnet-ipamd and vnet-cni (make build)")
	pods := flag.Int("pods", 100, "pods per round (clusterloader2's node-throughput: 100)")
	rate := flag.Float64("rate", 5, "pods created per second (clusterloader2's node-throughput: 5)")
	rounds := flag.Int("rounds", 2, "rounds per network, alternating")
	out := flag.String("out", "bench-k8s-results.json", "JSON results file")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, name+": needs root; run `sudo make bench-k8s`")
		os.Exit(1)
	}
	if *pods < 1 || *pods > 105 || *rate <= 0 || *rounds < 1 {
		fmt.Fprintln(os.Stderr, name+": -pods 1..105 (kubelet's maxPods is 110), -rate > 0, -rounds >= 1")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, *binDir, *pods, *rate, *rounds, *out)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(1)
	}
}

// Results is the JSON file.
type Results struct {
	Pods           int     `json:"pods"`
	RatePerS       float64 `json:"rate_per_s"`
	RoundsPerNet   int     `json:"rounds_per_network"`
	PodStartupP50  float64 `json:"pod_startup_p50_ms"`
	PodStartupP90  float64 `json:"pod_startup_p90_ms"`
	PodStartupP99  float64 `json:"pod_startup_p99_ms"`
	RefStartupP50  float64 `json:"ref_pod_startup_p50_ms"`
	RefStartupP90  float64 `json:"ref_pod_startup_p90_ms"`
	RefStartupP99  float64 `json:"ref_pod_startup_p99_ms"`
	StartupP50Rat  float64 `json:"pod_startup_p50_ratio"`
	StartupP99Rat  float64 `json:"pod_startup_p99_ratio"`
	APIStartupP99  float64 `json:"api_pod_startup_p99_ms"`
	RefAPIStartup  float64 `json:"ref_api_pod_startup_p99_ms"`
	SandboxP50     float64 `json:"sandbox_network_p50_ms"`
	SandboxP90     float64 `json:"sandbox_network_p90_ms"`
	SandboxP99     float64 `json:"sandbox_network_p99_ms"`
	RefSandboxP50  float64 `json:"ref_sandbox_network_p50_ms"`
	RefSandboxP90  float64 `json:"ref_sandbox_network_p90_ms"`
	RefSandboxP99  float64 `json:"ref_sandbox_network_p99_ms"`
	SandboxP99Rat  float64 `json:"sandbox_network_p99_ratio"`
	SandboxMeanMS  float64 `json:"sandbox_network_mean_ms"`
	RefSandboxMean float64 `json:"ref_sandbox_network_mean_ms"`
	Rounds         []Round `json:"rounds"`
	Note           string  `json:"note"`
}

// Round is one round's figures.
type Round struct {
	Network    string        `json:"network"`
	Startup    bench.Summary `json:"startup"`
	APIStartup bench.Summary `json:"api_startup"`
	SandboxP50 float64       `json:"sandbox_network_p50_ms"`
	SandboxP99 float64       `json:"sandbox_network_p99_ms"`
	Sandboxes  float64       `json:"sandboxes"`
	WallS      float64       `json:"wall_s"`
	Slowest    []string      `json:"slowest"`
}

func run(ctx context.Context, binDir string, pods int, rate float64, rounds int, outPath string) error {
	set, ok := binaries.Find(binaries.Options{})
	if !ok {
		return errors.New("kubernetes binaries not built: run `make k8s-bins`")
	}
	ctr, ok1 := binaries.FindModule(binaries.Options{}, binaries.Containerd(binaries.ContainerdVersion))
	plugins, ok2 := binaries.FindModule(binaries.Options{}, binaries.CNIPlugins(binaries.CNIPluginsVersion))
	if !ok1 || !ok2 {
		return errors.New("containerd or the CNI plugins not built: run `make k8s-bins`")
	}
	etcd, err := exec.LookPath("etcd")
	if err != nil {
		return errors.New("no etcd: apt-get install etcd-server")
	}
	for _, p := range []string{"bridge", "host-local"} {
		if _, err := os.Stat(filepath.Join(debianCNI, p)); err != nil {
			return fmt.Errorf("no %s/%s: apt-get install containernetworking-plugins", debianCNI, p)
		}
	}
	dir, err := os.MkdirTemp("", name+"-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	logf, err := os.Create(filepath.Join(dir, "harness.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		return err
	}
	fmt.Printf("%s: %d pods at %.0f/s on one node, %d rounds each of vnet-cni and bridge + host-local, alternating\n", name, pods, rate, rounds)
	c, err := k8scluster.Start(ctx, k8scluster.Options{
		Workers: 1, Prefix: "bk8s" + hex.EncodeToString(b[:]), Dir: dir, BinDir: binDir,
		Kubernetes: set, Containerd: ctr, CNIPlugins: plugins, Etcd: etcd,
		ExtraCNIPlugins:   map[string]string{"bridge": filepath.Join(debianCNI, "bridge"), "host-local": filepath.Join(debianCNI, "host-local")},
		ContainerdMetrics: true,
		IPAMD:             poolDefaults,
		Log:               slog.New(slog.NewTextHandler(logf, nil)),
	})
	if err != nil {
		return fmt.Errorf("start cluster: %w", err)
	}
	defer func() { _ = c.Close() }()
	n := c.Nodes[0]
	fmt.Printf("cluster up in %s\n", (c.Timings.Sim + c.Timings.ControlPlane + c.Timings.Images + c.Timings.Nodes).Round(100*time.Millisecond))
	if err := workload.WaitFor(ctx, n.Name()+" Ready", 2*time.Minute, func() (bool, string) {
		k, err := c.Client.CoreV1().Nodes().Get(ctx, n.Name(), metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		for _, cond := range k.Status.Conditions {
			if cond.Type == corev1.NodeReady {
				return cond.Status == corev1.ConditionTrue, cond.Message
			}
		}
		return false, "no Ready condition"
	}); err != nil {
		return err
	}
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{}); err != nil {
		return err
	}
	// Pods need the namespace's default ServiceAccount, which the
	// controller-manager creates.
	if err := workload.WaitFor(ctx, "the bench namespace's default ServiceAccount", time.Minute, func() (bool, string) {
		_, err := c.Client.CoreV1().ServiceAccounts(namespace).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, fmt.Sprint(err)
	}); err != nil {
		return err
	}
	vnetRange, err := netip.ParsePrefix(c.Desc.SubnetPrefix)
	if err != nil {
		return fmt.Errorf("subnet prefix: %w", err)
	}
	ipamd := c.IPAMD.Nodes[0]
	confPath := filepath.Join(ipamd.Config.CNIConfDir, refConflist)
	hostLocalDir := n.HostPath("/var/lib/cni/networks/" + refNetwork)
	hc := workload.HTTPIn(n.NetNS())
	metrics := "http://" + k8scluster.ContainerdMetricsAddr.String() + "/v1/metrics"

	type network struct {
		name    string
		want    netip.Prefix
		use     func() error
		settled func() (bool, string)
	}
	vnet := network{name: "vnet-cni", want: vnetRange,
		use: func() error {
			if err := os.Remove(confPath); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
			return nil
		},
		settled: func() (bool, string) {
			st, err := ipamd.Status(ctx)
			if err != nil {
				return false, err.Error()
			}
			return st.Ready && st.Pool.Assigned == 0, fmt.Sprintf("ready %v, %d assigned", st.Ready, st.Pool.Assigned)
		}}
	ref := network{name: "bridge+host-local", want: refRange,
		use: func() error { return os.WriteFile(confPath, refConf(), 0o644) },
		settled: func() (bool, string) {
			left, err := reservations(hostLocalDir)
			return err == nil && left == 0, fmt.Sprintf("%d host-local reservations left (%v)", left, err)
		}}

	var res Results
	res.Pods, res.RatePerS, res.RoundsPerNet = pods, rate, rounds
	samples := map[string]*struct {
		startup, api []time.Duration
		sandbox      podbench.Histogram
	}{vnet.name: {}, ref.name: {}}
	for i := range 2 * rounds {
		nw := vnet
		if i%2 == 1 {
			nw = ref
		}
		if err := nw.use(); err != nil {
			return err
		}
		if err := switched(ctx, c, nw.want); err != nil {
			return fmt.Errorf("switch to %s: %w", nw.name, err)
		}
		fmt.Printf("round %d: %s ...\n", i+1, nw.name)
		r, err := podbench.Round{Client: c.Client, Namespace: namespace, Name: fmt.Sprintf("r%d", i+1), Pods: pods, Rate: rate,
			Want: nw.want, Metrics: metrics, HTTP: hc}.Run(ctx)
		if err != nil {
			return fmt.Errorf("round %d (%s): %w", i+1, nw.name, err)
		}
		if err := workload.WaitFor(ctx, nw.name+" released every pod", 2*time.Minute, nw.settled); err != nil {
			return err
		}
		s := samples[nw.name]
		s.startup = append(s.startup, r.Startup...)
		s.api = append(s.api, r.APIStartup...)
		if s.sandbox, err = add(s.sandbox, r.Sandbox); err != nil {
			return err
		}
		rr := Round{Network: nw.name, Startup: bench.Summarize(r.Startup), APIStartup: bench.Summarize(r.APIStartup),
			SandboxP50: msOf(r.Sandbox.Quantile(0.5)), SandboxP99: msOf(r.Sandbox.Quantile(0.99)), Sandboxes: r.Sandbox.Count(),
			WallS: r.Wall.Seconds(), Slowest: r.Slowest}
		res.Rounds = append(res.Rounds, rr)
		fmt.Printf("  creation→Running p50 %.0f ms, p99 %.0f ms; sandbox network p50 %.1f ms, p99 %.1f ms (%0.f sandboxes); last pod Running %.1f s after the first create\n",
			rr.Startup.P50, rr.Startup.P99, rr.SandboxP50, rr.SandboxP99, rr.Sandboxes, rr.WallS)
		for _, s := range r.Slowest {
			fmt.Printf("    slowest: %s\n", s)
		}
	}
	v, rf := samples[vnet.name], samples[ref.name]
	vs, rs := bench.Summarize(v.startup), bench.Summarize(rf.startup)
	res.PodStartupP50, res.PodStartupP90, res.PodStartupP99 = vs.P50, vs.P90, vs.P99
	res.RefStartupP50, res.RefStartupP90, res.RefStartupP99 = rs.P50, rs.P90, rs.P99
	res.StartupP50Rat, res.StartupP99Rat = ratio(vs.P50, rs.P50), ratio(vs.P99, rs.P99)
	res.APIStartupP99, res.RefAPIStartup = bench.Summarize(v.api).P99, bench.Summarize(rf.api).P99
	res.SandboxP50, res.SandboxP90, res.SandboxP99 = msOf(v.sandbox.Quantile(0.5)), msOf(v.sandbox.Quantile(0.9)), msOf(v.sandbox.Quantile(0.99))
	res.RefSandboxP50, res.RefSandboxP90, res.RefSandboxP99 = msOf(rf.sandbox.Quantile(0.5)), msOf(rf.sandbox.Quantile(0.9)), msOf(rf.sandbox.Quantile(0.99))
	res.SandboxP99Rat = ratio(res.SandboxP99, res.RefSandboxP99)
	res.SandboxMeanMS, res.RefSandboxMean = msOf(v.sandbox.Mean()), msOf(rf.sandbox.Mean())
	res.Note = "startup: the create request sent → a watch sees the pod Running and Ready (ms); api_*: creationTimestamp → Ready condition (API timestamps, 1 s resolution); " +
		"sandbox_network: containerd_cri_sandbox_create_network_seconds, quantiles interpolated within its buckets (5, 10, 25, 50, 100, 250 ms, ...); ratio = vnet-cni / reference"
	printTable(os.Stdout, res)
	data, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(outPath, append(data, '\n'), 0o644); err != nil {
		return err
	}
	fmt.Printf("wrote %s\n", outPath)
	if err := c.Close(); err != nil {
		return fmt.Errorf("tear down: %w", err)
	}
	return nil
}

// poolDefaults gives vnet-ipamd the product's pool defaults (the harness
// sets smaller ones for its tests) and a ceiling at kubelet's maxPods
// (110), as an operator sizes it; the default maxIPs (30) would stop the
// node at 30 pods.
func poolDefaults(_ string, c *config.Config) {
	d := config.Default()
	c.WarmIPTarget, c.MinIPTarget, c.BatchSize, c.IPAddressCount = d.WarmIPTarget, d.MinIPTarget, d.BatchSize, d.IPAddressCount
	c.Cooldown, c.ReleaseDelay, c.AllocateWait = d.Cooldown, d.ReleaseDelay, d.AllocateWait
	c.MaxIPs = 110
}

// refConf is the reference conflist: Debian's bridge with host-local on a
// range of its own, chained with the same portmap as vnet-cni.
func refConf() []byte {
	conf := map[string]any{
		"cniVersion": "1.0.0", "name": refNetwork,
		"plugins": []any{
			map[string]any{"type": "bridge", "bridge": "cni-ref0", "isGateway": true, "ipMasq": false,
				"ipam": map[string]any{"type": "host-local", "ranges": [][]map[string]string{{{"subnet": refRange.String()}}}}},
			map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}},
		},
	}
	b, _ := json.Marshal(conf)
	return b
}

// reservations counts host-local's address files (the lock and last
// reserved index files are not reservations).
func reservations(dir string) (int, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	n := 0
	for _, e := range ents {
		if _, err := netip.ParseAddr(e.Name()); err == nil {
			n++
		}
	}
	return n, nil
}

// switched waits until containerd sets pods up with the network whose
// range is want: a probe pod is started (and deleted) until its address is
// in it.
func switched(ctx context.Context, c *k8scluster.Cluster, want netip.Prefix) error {
	zero := int64(0)
	for i := 0; ; i++ {
		name := fmt.Sprintf("switch-%s-%d", strings.NewReplacer(".", "-", "/", "-").Replace(want.String()), i)
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace}, Spec: podbench.PodSpec()}
		if _, err := c.Client.CoreV1().Pods(namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			return err
		}
		var ip netip.Addr
		err := workload.WaitFor(ctx, name+" Running", time.Minute, func() (bool, string) {
			p, err := c.Client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false, err.Error()
			}
			ip, _ = netip.ParseAddr(p.Status.PodIP)
			return p.Status.Phase == corev1.PodRunning && ip.IsValid(), string(p.Status.Phase) + " " + workload.Why(*p)
		})
		if err != nil {
			return err
		}
		if err := c.Client.CoreV1().Pods(namespace).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
			return err
		}
		if err := workload.WaitFor(ctx, name+" gone", time.Minute, func() (bool, string) {
			_, err := c.Client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
			return err != nil, "still there"
		}); err != nil {
			return err
		}
		if want.Contains(ip) {
			return nil
		}
		if i == 20 {
			return fmt.Errorf("probe pods still get addresses outside %s (last %s)", want, ip)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func add(a, b podbench.Histogram) (podbench.Histogram, error) {
	if len(a.Bounds) == 0 {
		return b, nil
	}
	if len(a.Bounds) != len(b.Bounds) {
		return a, errors.New("histogram buckets differ between rounds")
	}
	s := podbench.Histogram{Bounds: a.Bounds, Counts: make([]float64, len(a.Counts)), Sum: a.Sum + b.Sum}
	for i := range a.Counts {
		s.Counts[i] = a.Counts[i] + b.Counts[i]
	}
	return s, nil
}

func msOf(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return float64(int(a/b*1000+0.5)) / 1000
}

func printTable(w io.Writer, r Results) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "\n\tp50 ms\tp90 ms\tp99 ms\t\n")
	fmt.Fprintf(tw, "creation→Running, vnet-cni\t%.0f\t%.0f\t%.0f\t\n", r.PodStartupP50, r.PodStartupP90, r.PodStartupP99)
	fmt.Fprintf(tw, "creation→Running, bridge+host-local\t%.0f\t%.0f\t%.0f\t\n", r.RefStartupP50, r.RefStartupP90, r.RefStartupP99)
	fmt.Fprintf(tw, "ratio\t%.2f\t\t%.2f\t\n", r.StartupP50Rat, r.StartupP99Rat)
	fmt.Fprintf(tw, "sandbox network set-up, vnet-cni\t%.1f\t%.1f\t%.1f\t\n", r.SandboxP50, r.SandboxP90, r.SandboxP99)
	fmt.Fprintf(tw, "sandbox network set-up, bridge+host-local\t%.1f\t%.1f\t%.1f\t\n", r.RefSandboxP50, r.RefSandboxP90, r.RefSandboxP99)
	fmt.Fprintf(tw, "ratio\t\t\t%.2f\t\n", r.SandboxP99Rat)
	_ = tw.Flush()
	fmt.Fprintf(w, "%d pods per round at %.0f/s, %d rounds per network; the Kubernetes SLO is pod start-up p99 ≤ 5000 ms\n", r.Pods, r.RatePerS, r.RoundsPerNet)
}
