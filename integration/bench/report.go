package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/vnet-cni/vnet-cni/ipamd/config"
)

// Results is everything a run measured. The flat fields are the headline
// numbers (the largest size, sequential, unless named otherwise); the
// ratios are vnet-cni / reference from the same run.
type Results struct {
	HeadlinePods int     `json:"headline_pods"`
	AddP50       float64 `json:"add_p50_ms"`
	AddP90       float64 `json:"add_p90_ms"`
	AddP99       float64 `json:"add_p99_ms"`
	DelP50       float64 `json:"del_p50_ms"`
	DelP99       float64 `json:"del_p99_ms"`
	RefAddP50    float64 `json:"ref_add_p50_ms"`
	RefAddP90    float64 `json:"ref_add_p90_ms"`
	RefAddP99    float64 `json:"ref_add_p99_ms"`
	RefDelP50    float64 `json:"ref_del_p50_ms"`
	RefDelP99    float64 `json:"ref_del_p99_ms"`
	AddP50Ratio  float64 `json:"add_p50_ratio"`
	AddP99Ratio  float64 `json:"add_p99_ratio"`
	DelP50Ratio  float64 `json:"del_p50_ratio"`
	DelP99Ratio  float64 `json:"del_p99_ratio"`

	Seq250WallMs       float64 `json:"seq250_add_wall_ms"`
	RefSeq250WallMs    float64 `json:"ref_seq250_add_wall_ms"`
	Seq250WallRatio    float64 `json:"seq250_wall_ratio"`
	Burst250WallMs     float64 `json:"burst250_wall_ms"`
	RefBurst250WallMs  float64 `json:"ref_burst250_wall_ms"`
	Burst250WallRatio  float64 `json:"burst250_wall_ratio"`
	Burst250AddP50     float64 `json:"burst250_add_p50_ms"`
	RefBurst250AddP50  float64 `json:"ref_burst250_add_p50_ms"`
	Burst250DelWallRat float64 `json:"burst250_del_wall_ratio"`
	Burst250DelP50     float64 `json:"burst250_del_p50_ms"`
	RefBurst250DelP50  float64 `json:"ref_burst250_del_p50_ms"`
	Burst250DelP50Rat  float64 `json:"burst250_del_p50_ratio"`

	IPAMDRSSMiB250     float64 `json:"ipamd_rss_mib_250"`
	IPAMDRSSPeakMiB250 float64 `json:"ipamd_rss_peak_mib_250"`
	IPAMDRSSIdleMiB    float64 `json:"ipamd_rss_idle_mib"`

	CloudWritesFill250  int `json:"cloud_writes_fill_250"`
	CloudReadsFill250   int `json:"cloud_reads_fill_250"`
	CloudWritesMeasured int `json:"cloud_writes_measured"`
	CloudReadsMeasured  int `json:"cloud_reads_measured"`
	// AllocationsSlow counts Allocate calls that took longer than 250 ms
	// or were refused: the ones that did not come from the warm pool.
	AllocationsSlow int `json:"allocations_not_from_warm_pool"`

	BridgeThroughputRatio    float64 `json:"bridge_throughput_ratio"`
	CrossNodeThroughputRatio float64 `json:"cross_node_throughput_ratio"`
	RefThroughputRatio       float64 `json:"ref_bridge_throughput_ratio"`

	CPUs          int    `json:"cpus"`
	LoadAvgStart  string `json:"loadavg_start"`
	LoadAvgEnd    string `json:"loadavg_end"`
	SharedMachine bool   `json:"shared_machine_loaded"`
	RefIPMasq     bool   `json:"ref_ipmasq"`
	// Mode is vnet-cni's datapath mode, RefName its reference.
	Mode    string `json:"mode"`
	RefName string `json:"reference"`
	// RefSubnet is the reference's host-local range.
	RefSubnet  string  `json:"reference_subnet"`
	Started    string  `json:"started"`
	RunSeconds float64 `json:"run_seconds"`
	Prefix     string  `json:"prefix"`

	Pool        PoolConfig      `json:"pool"`
	FirstAdd    WallPair        `json:"first_add_creates_bridge"`
	ExecFloor   SidePair        `json:"version_exec"`
	Scenarios   []Scenario      `json:"scenarios"`
	RSS         RSSStats        `json:"ipamd_rss"`
	Cloud       CloudStats      `json:"cloud"`
	Allocations AllocationStats `json:"allocations"`
	Throughput  []Throughput    `json:"throughput"`
}

// PoolConfig is the measured node's pool configuration.
type PoolConfig struct {
	IPAddressCount int    `json:"ipAddressCount"`
	WarmIPTarget   int    `json:"warmIPTarget"`
	BatchSize      int    `json:"batchSize"`
	MaxIPs         int    `json:"maxIPs"`
	Cooldown       string `json:"cooldown"`
	ReleaseDelay   string `json:"releaseDelay"`
}

// SidePair is one measurement of both plugins.
type SidePair struct {
	VNet Summary `json:"vnet_cni"`
	Ref  Summary `json:"reference"`
}

// WallPair is a wall time of both plugins in milliseconds.
type WallPair struct {
	VNetMs float64 `json:"vnet_cni_ms"`
	RefMs  float64 `json:"reference_ms"`
}

// Scenario is one size and concurrency.
type Scenario struct {
	Pods     int `json:"pods"`
	Parallel int `json:"parallel"`
	Rounds   int `json:"rounds"`
	// Chunk is the batch each side runs before the other takes its turn.
	Chunk   int      `json:"chunk"`
	Add     SidePair `json:"add"`
	Del     SidePair `json:"del"`
	AddWall WallPair `json:"add_wall"`
	DelWall WallPair `json:"del_wall"`
	// VNetInside* are the durations vnet-cni logs itself, from its start
	// to its exit: the rest of Add.VNet is exec, Go runtime start and
	// libcni.
	VNetInsideAdd Summary    `json:"vnet_cni_inside_add"`
	VNetInsideDel Summary    `json:"vnet_cni_inside_del"`
	Cloud         CallCounts `json:"cloud_calls"`
}

// RSSStats is vnet-ipamd's memory.
type RSSStats struct {
	IdleMiB float64   `json:"idle_after_fill_mib"`
	Pods    int       `json:"pods"`
	MiB     float64   `json:"rss_mib"`
	PeakMiB float64   `json:"peak_mib"`
	Pool    poolState `json:"pool"`
}

// CloudStats are the ARM calls of the fill and of the measured phases.
type CloudStats struct {
	FillSeconds float64    `json:"fill_seconds"`
	Fill        CallCounts `json:"fill"`
	Measured    CallCounts `json:"measured"`
}

// AllocationStats are vnet-ipamd's own counters after the latency runs.
type AllocationStats struct {
	OK          int `json:"ok"`
	TryAgain    int `json:"try_again"`
	Count       int `json:"timed"`
	Within250ms int `json:"within_250ms"`
	// Inside the daemon (its allocate_duration_seconds histogram): the
	// store's journal write and fdatasync, no client or socket time.
	Within500us int `json:"within_0_5ms"`
	Within1ms   int `json:"within_1ms"`
}

// Throughput is one path's median.
type Throughput struct {
	Path string  `json:"path"`
	Gbps float64 `json:"gbit_per_s"`
	Runs int     `json:"runs"`
	MiB  int     `json:"mib_per_run"`
}

func (r *Results) scenario(pods, par int) *Scenario {
	for i := range r.Scenarios {
		if r.Scenarios[i].Pods == pods && r.Scenarios[i].Parallel == par {
			return &r.Scenarios[i]
		}
	}
	return &Scenario{}
}

// fill derives the flat fields.
func (r *Results) fill() {
	n, par := 0, r.burstParallel()
	for _, s := range r.Scenarios {
		n = max(n, s.Pods)
	}
	r.HeadlinePods = n
	seq := r.scenario(n, 1)
	r.AddP50, r.AddP90, r.AddP99 = seq.Add.VNet.P50, seq.Add.VNet.P90, seq.Add.VNet.P99
	r.DelP50, r.DelP99 = seq.Del.VNet.P50, seq.Del.VNet.P99
	r.RefAddP50, r.RefAddP90, r.RefAddP99 = seq.Add.Ref.P50, seq.Add.Ref.P90, seq.Add.Ref.P99
	r.RefDelP50, r.RefDelP99 = seq.Del.Ref.P50, seq.Del.Ref.P99
	r.AddP50Ratio, r.AddP99Ratio = ratio(r.AddP50, r.RefAddP50), ratio(r.AddP99, r.RefAddP99)
	r.DelP50Ratio, r.DelP99Ratio = ratio(r.DelP50, r.RefDelP50), ratio(r.DelP99, r.RefDelP99)
	r.Seq250WallMs, r.RefSeq250WallMs = seq.AddWall.VNetMs, seq.AddWall.RefMs
	r.Seq250WallRatio = ratio(r.Seq250WallMs, r.RefSeq250WallMs)
	burst := r.scenario(n, par)
	r.Burst250WallMs, r.RefBurst250WallMs = burst.AddWall.VNetMs, burst.AddWall.RefMs
	r.Burst250WallRatio = ratio(r.Burst250WallMs, r.RefBurst250WallMs)
	r.Burst250AddP50, r.RefBurst250AddP50 = burst.Add.VNet.P50, burst.Add.Ref.P50
	r.Burst250DelWallRat = ratio(burst.DelWall.VNetMs, burst.DelWall.RefMs)
	r.Burst250DelP50, r.RefBurst250DelP50 = burst.Del.VNet.P50, burst.Del.Ref.P50
	r.Burst250DelP50Rat = ratio(r.Burst250DelP50, r.RefBurst250DelP50)

	r.IPAMDRSSMiB250, r.IPAMDRSSPeakMiB250, r.IPAMDRSSIdleMiB = r.RSS.MiB, r.RSS.PeakMiB, r.RSS.IdleMiB
	r.CloudWritesFill250, r.CloudReadsFill250 = r.Cloud.Fill.Writes, r.Cloud.Fill.Reads
	r.Cloud.Measured = CallCounts{ByOp: map[string]int{}}
	for _, s := range r.Scenarios {
		r.Cloud.Measured.Writes += s.Cloud.Writes
		r.Cloud.Measured.Reads += s.Cloud.Reads
		for op, v := range s.Cloud.ByOp {
			r.Cloud.Measured.ByOp[op] += v
		}
	}
	r.CloudWritesMeasured, r.CloudReadsMeasured = r.Cloud.Measured.Writes, r.Cloud.Measured.Reads
	r.AllocationsSlow = r.Allocations.Count - r.Allocations.Within250ms + r.Allocations.TryAgain

	if len(r.Throughput) == 4 {
		direct := r.Throughput[0].Gbps
		r.BridgeThroughputRatio = ratio(r.Throughput[1].Gbps, direct)
		r.CrossNodeThroughputRatio = ratio(r.Throughput[2].Gbps, direct)
		r.RefThroughputRatio = ratio(r.Throughput[3].Gbps, direct)
	}
	r.CPUs = runtime.NumCPU()
	r.SharedMachine = load1(r.LoadAvgStart) > 0.5*float64(r.CPUs)
}

func load1(s string) float64 {
	f := strings.Fields(s)
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// WriteJSON writes the results to path.
func (r *Results) WriteJSON(path string) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}

// Print writes the readable report.
func (r *Results) Print(w io.Writer) {
	fmt.Fprintf(w, "\nvnet-cni benchmark, %s mode against %s (%s): %d CPUs, load average %s at start, %s at end (this run included), %.0fs\n",
		r.Mode, r.RefName, r.Started, r.CPUs, r.LoadAvgStart, r.LoadAvgEnd, r.RunSeconds)
	if r.SharedMachine {
		fmt.Fprintln(w, "NOTE: the load average was high when the run started: these numbers are from a shared, busy machine;")
		fmt.Fprintln(w, "      both plugins ran in alternating batches, so the ratios are fairer than the absolute times.")
	}
	fmt.Fprintf(w, "Both plugins are executed by libcni (cniVersion 1.0.0) from inside a simulated node namespace, in alternating batches:\n")
	refFlags := "ipMasq"
	if !r.RefIPMasq {
		refFlags = "no ipMasq"
	}
	ref := strings.TrimSuffix(r.RefName, "+host-local")
	if ref == "bridge" {
		refFlags = "isGateway, " + refFlags
	}
	fmt.Fprintf(w, "vnet-cni alone (no chained plugin) on node0 with vnet-ipamd; the reference, Debian %s (%s) +\n", ref, refFlags)
	refBr := ""
	if ref == "bridge" {
		refBr = refBridge
		if r.Mode == config.ModeKubenet {
			refBr = refKubenetBridge
		}
		refBr = " (bridge " + refBr + ")"
	}
	fmt.Fprintf(w, "host-local %s%s, on a node namespace of its own (so neither sees the other's bridge, rules or chains).\n", r.RefSubnet, refBr)
	fmt.Fprintf(w, "Percentiles are nearest-rank over N calls; ratio = vnet-cni / reference; wall = all pods of the phase.\n\n")

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "pods\tmode\tverb\tN\tvnet p50\tp90\tp99\t\tref p50\tp90\tp99\t\tratio p50\tp99\t\twall vnet\twall ref\tratio\t")
	for _, s := range r.Scenarios {
		mode := "seq"
		if s.Parallel > 1 {
			mode = fmt.Sprintf("%d-way", s.Parallel)
		}
		pods := strconv.Itoa(s.Pods)
		if s.Rounds > 1 {
			pods = fmt.Sprintf("%d x%d", s.Pods, s.Rounds)
		}
		for _, v := range []struct {
			verb string
			p    SidePair
			wall WallPair
		}{{"ADD", s.Add, s.AddWall}, {"DEL", s.Del, s.DelWall}} {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%.2f\t%.2f\t%.2f\t\t%.2f\t%.2f\t%.2f\t\t%.2fx\t%.2fx\t\t%.0f\t%.0f\t%.2fx\t\n",
				pods, mode, v.verb, v.p.VNet.N, v.p.VNet.P50, v.p.VNet.P90, v.p.VNet.P99,
				v.p.Ref.P50, v.p.Ref.P90, v.p.Ref.P99,
				ratio(v.p.VNet.P50, v.p.Ref.P50), ratio(v.p.VNet.P99, v.p.Ref.P99),
				v.wall.VNetMs, v.wall.RefMs, ratio(v.wall.VNetMs, v.wall.RefMs))
		}
	}
	_ = tw.Flush()

	fmt.Fprintf(w, "\nWhere vnet-cni's time goes (ms, p50; %d pods sequential):\n", r.HeadlinePods)
	seq := r.scenario(r.HeadlinePods, 1)
	fmt.Fprintf(w, "  VERSION (exec + Go start-up + libcni), N=%d:  vnet-cni %.2f   reference %.2f\n",
		r.ExecFloor.VNet.N, r.ExecFloor.VNet.P50, r.ExecFloor.Ref.P50)
	fmt.Fprintf(w, "  ADD: libcni %.2f = inside the plugin (its durationMs) %.2f + exec/start-up/libcni %.2f\n",
		seq.Add.VNet.P50, seq.VNetInsideAdd.P50, seq.Add.VNet.P50-seq.VNetInsideAdd.P50)
	fmt.Fprintf(w, "  DEL: libcni %.2f = inside the plugin (its durationMs) %.2f + exec/start-up/libcni %.2f\n",
		seq.Del.VNet.P50, seq.VNetInsideDel.P50, seq.Del.VNet.P50-seq.VNetInsideDel.P50)
	fmt.Fprintf(w, "  first ADD on the node (creates the bridge): vnet-cni %.2f, reference %.2f\n", r.FirstAdd.VNetMs, r.FirstAdd.RefMs)

	fmt.Fprintf(w, "\nvnet-ipamd (pool: ipAddressCount %d, warmIPTarget %d, batchSize %d, maxIPs %d, cooldown %s, releaseDelay %s):\n",
		r.Pool.IPAddressCount, r.Pool.WarmIPTarget, r.Pool.BatchSize, r.Pool.MaxIPs, r.Pool.Cooldown, r.Pool.ReleaseDelay)
	fmt.Fprintf(w, "  RSS %.1f MiB with %d pods (peak %.1f MiB; %.1f MiB idle after the fill); pool then %+v\n",
		r.RSS.MiB, r.RSS.Pods, r.RSS.PeakMiB, r.RSS.IdleMiB, r.RSS.Pool)
	fmt.Fprintf(w, "  fill of %d addresses: %.1fs, %d cloud writes, %d reads %v\n",
		r.Pool.IPAddressCount, r.Cloud.FillSeconds, r.Cloud.Fill.Writes, r.Cloud.Fill.Reads, r.Cloud.Fill.ByOp)
	fmt.Fprintf(w, "  during the ADD/DEL phases (both nodes, background worker and resync): %d writes, %d reads %v\n",
		r.Cloud.Measured.Writes, r.Cloud.Measured.Reads, r.Cloud.Measured.ByOp)
	if r.Mode == config.ModeKubenet {
		nicWrites := r.Cloud.Measured.ByOp["NetworkInterfaces_CreateOrUpdate"]
		verdict := "met"
		if nicWrites != 0 {
			verdict = "NOT met"
		}
		fmt.Fprintf(w, "  kubenet: NIC writes during the ADD/DEL phases: %d (target 0: the pool is the pod CIDR, no address of the subnet)  %s\n", nicWrites, verdict)
	}
	fmt.Fprintf(w, "  Allocate calls: %d ok, %d try-again; %d of %d answered within 250 ms (not from the warm pool: %d)\n",
		r.Allocations.OK, r.Allocations.TryAgain, r.Allocations.Within250ms, r.Allocations.Count, r.AllocationsSlow)
	fmt.Fprintf(w, "  time inside vnet-ipamd per Allocate (its handler, journal write and fdatasync included): %d of %d within 0.5 ms, %d within 1 ms\n",
		r.Allocations.Within500us, r.Allocations.Count, r.Allocations.Within1ms)

	fmt.Fprintln(w, "\nTCP throughput (one connection, median of the runs):")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  path\tGbit/s\tvs direct\truns x MiB")
	for _, t := range r.Throughput {
		direct := r.Throughput[0].Gbps
		fmt.Fprintf(tw, "  %s\t%.2f\t%.2fx\t%d x %d\n", t.Path, t.Gbps, ratio(t.Gbps, direct), t.Runs, t.MiB)
	}
	_ = tw.Flush()

	fmt.Fprintf(w, "\nTargets (DESIGN.md), %d pods sequential:\n", r.HeadlinePods)
	check := func(name string, v, limit float64, unit string) {
		verdict := "met"
		if v > limit {
			verdict = "NOT met"
		}
		fmt.Fprintf(w, "  %-22s %7.2f%s (target <= %.2f%s)  %s\n", name, v, unit, limit, unit, verdict)
	}
	check("ADD p50 ratio", r.AddP50Ratio, 0.5, "x")
	check("ADD p99 ratio", r.AddP99Ratio, 0.7, "x")
	check("DEL p50 ratio", r.DelP50Ratio, 1.0, "x")
	check(fmt.Sprintf("%d-way DEL p50 ratio", r.burstParallel()), r.Burst250DelP50Rat, 1.0, "x")
	check(fmt.Sprintf("%d-way DEL wall ratio", r.burstParallel()), r.Burst250DelWallRat, 1.0, "x")
	check("vnet-ipamd RSS", r.IPAMDRSSMiB250, 40, " MiB")
	if r.BridgeThroughputRatio > 0 {
		verdict := "met"
		if r.BridgeThroughputRatio < 0.95 {
			verdict = "NOT met"
		}
		fmt.Fprintf(w, "  %-22s %7.2fx (target >= 0.95x)  %s\n", "same-node TCP vs veth", r.BridgeThroughputRatio, verdict)
	}
	fmt.Fprintf(w, "  %-22s %7d    (target 0)  %s\n", "slow/refused Allocates", r.AllocationsSlow, map[bool]string{true: "met", false: "NOT met"}[r.AllocationsSlow == 0])
}

// burstParallel is the parallelism of the burst scenarios (1 when none ran).
func (r *Results) burstParallel() int {
	par := 1
	for _, s := range r.Scenarios {
		par = max(par, s.Parallel)
	}
	return par
}
