package azure0

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/vnet-cni/vnet-cni/bridge/linux"
	"github.com/vnet-cni/vnet-cni/internal/nstest"
)

// reportPercentiles adds p50/p90/p99 of the samples to the benchmark output.
func reportPercentiles(b *testing.B, name string, d []time.Duration) {
	if len(d) == 0 {
		return
	}
	slices.Sort(d)
	at := func(q float64) float64 { return float64(d[int(q*float64(len(d)-1))].Microseconds()) }
	b.ReportMetric(at(0.50), name+"-p50-µs")
	b.ReportMetric(at(0.90), name+"-p90-µs")
	b.ReportMetric(at(0.99), name+"-p99-µs")
}

// BenchmarkAddDelPod attaches and detaches one pod on a node that already
// has 20 pods, the datapath part of a CNI ADD and DEL.
func BenchmarkAddDelPod(b *testing.B) {
	f := newFabric(b, nil)
	ctx := context.Background()
	n := openNode(b, f.NodeNSPath("node0"), b.TempDir())
	if _, err := n.EnsureNode(ctx, nodeConfig()); err != nil {
		b.Fatal(err)
	}
	for i := range 20 {
		addPod(b, n, f.prefix, "bg"+string(rune('a'+i)), netip.AddrFrom4([4]byte{10, 240, 0, byte(100 + i)}), 0)
	}
	nsPath := nstest.NewNS(b, f.prefix+"-bench")
	cfg := PodConfig{ContainerID: f.prefix + "-bench", IfName: "eth0", NetNS: nsPath,
		IP: netip.MustParseAddr("10.240.0.10"), Subnet: subnet, Gateway: gatewayIP}
	ref := linux.PodRef{ContainerID: cfg.ContainerID, IfName: cfg.IfName, NetNS: nsPath, IP: cfg.IP}
	var adds, dels []time.Duration
	b.ResetTimer()
	for b.Loop() {
		t0 := time.Now()
		if _, err := n.AddPod(ctx, cfg); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := n.DelPod(ctx, ref); err != nil {
			b.Fatal(err)
		}
		adds, dels = append(adds, t1.Sub(t0)), append(dels, time.Since(t1))
	}
	reportPercentiles(b, "add", adds)
	reportPercentiles(b, "del", dels)
}

// BenchmarkEnsureNodeNoChange is the cost EnsureNode adds to every ADD once
// the node is set up, with 20 and with 250 pods registered: it must not grow
// with the pods.
func BenchmarkEnsureNodeNoChange(b *testing.B) {
	for _, pods := range []int{20, 250} {
		b.Run(fmt.Sprintf("pods=%d", pods), func(b *testing.B) { benchEnsureNode(b, pods) })
	}
}

func benchEnsureNode(b *testing.B, pods int) {
	f := newFabric(b, nil)
	ctx := context.Background()
	n := openNode(b, f.NodeNSPath("node0"), b.TempDir())
	if _, err := n.EnsureNode(ctx, nodeConfig()); err != nil {
		b.Fatal(err)
	}
	for i := range pods {
		addPod(b, n, f.prefix, fmt.Sprintf("bg%d", i), netip.AddrFrom4([4]byte{10, 240, 0, byte(6 + i)}), 0)
	}
	var ds []time.Duration
	b.ResetTimer()
	for b.Loop() {
		t0 := time.Now()
		info, err := n.EnsureNode(ctx, nodeConfig())
		if err != nil {
			b.Fatal(err)
		}
		if info.NFTChanges != 0 {
			b.Fatalf("%d changes on a settled node", info.NFTChanges)
		}
		ds = append(ds, time.Since(t0))
	}
	reportPercentiles(b, "ensure", ds)
}
