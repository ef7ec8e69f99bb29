// Package bench measures vnet-cni against Debian's reference plugins on the
// simulated cloud, each mode against its like-for-like reference (bridge
// mode against bridge + host-local, routed mode against ptp + host-local,
// kubenet mode against bridge + host-local on the node's pod CIDR, the
// datapath of AKS's kubenet): ADD and DEL latency, wall time
// of a burst, vnet-ipamd's memory and cloud calls, and pod-to-pod
// throughput. Both plugins are executed by libcni from inside the same node
// namespace, in alternating batches so that a loaded machine slows both
// alike; every ratio compares numbers of the same run.
package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/vnet-cni/vnet-cni/cloud/sim"
	"github.com/vnet-cni/vnet-cni/integration/cluster"
	"github.com/vnet-cni/vnet-cni/internal/nsnet"
	"github.com/vnet-cni/vnet-cni/ipamd/config"
)

// Options configure a run. Zero values take the defaults in brackets.
type Options struct {
	// Dir receives every file of the run; it is the caller's to remove.
	Dir string
	// BinDir holds vnet-ipamd and vnet-cni [bin].
	BinDir string
	// RefPluginDir holds Debian's bridge and host-local [/usr/lib/cni].
	RefPluginDir string
	// Prefix names the run's namespaces [random].
	Prefix string
	// Mode is vnet-cni's datapath mode [bridge]: "bridge" is measured
	// against Debian's bridge + host-local, "routed" against ptp +
	// host-local, "kubenet" against bridge (cbr0, the pod CIDR's gateway)
	// + host-local on the measured node's pod CIDR.
	Mode string
	// RefIPMasq runs the reference with ipMasq, masquerading as
	// vnet-cni does, at the cost of iptables calls per pod. Without it the
	// reference is the plain bridge + host-local of DESIGN.md's figures,
	// the stricter comparison.
	RefIPMasq bool
	// Sizes are the pod counts measured [1 50 250]; the largest must fit
	// the pool (at most PoolSize).
	Sizes []int
	// Parallel is the concurrency of the parallel runs [8].
	Parallel int
	// SingleRounds is how many times the one-pod case is repeated [20].
	SingleRounds int
	// PoolSize is vnet-ipamd's first fill, ipAddressCount [250].
	PoolSize int
	// ThroughputBytes is what each throughput run moves [256 MiB];
	// ThroughputRounds how many runs per path, the median counts [3].
	ThroughputBytes  int64
	ThroughputRounds int
	// Progress receives one line per step [discarded].
	Progress io.Writer
	// PluginLog, when set, receives a copy of vnet-cni's log lines (one
	// JSON line per call) at the end of the run.
	PluginLog string
}

func (o *Options) setDefaults() {
	if o.BinDir == "" {
		o.BinDir = "bin"
	}
	if o.Mode == "" {
		o.Mode = config.ModeBridge
	}
	if o.RefPluginDir == "" {
		o.RefPluginDir = "/usr/lib/cni"
	}
	if len(o.Sizes) == 0 {
		o.Sizes = []int{1, 50, 250}
	}
	if o.Parallel <= 0 {
		o.Parallel = 8
	}
	if o.SingleRounds <= 0 {
		o.SingleRounds = 20
	}
	if o.PoolSize <= 0 {
		o.PoolSize = 250
	}
	if o.ThroughputBytes <= 0 {
		o.ThroughputBytes = 256 << 20
	}
	if o.ThroughputRounds <= 0 {
		o.ThroughputRounds = 3
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
}

// Pool settings of the measured node: the first fill holds every pod of
// the largest run, the warm target and batch refill the rest in the
// background up to the NIC's 255 secondary addresses, and the release
// delay keeps the excess on the NIC for the whole run (the pool shrinks
// only when the run is over).
const (
	poolWarm         = 10
	poolBatch        = 50
	poolMax          = 255
	poolCooldown     = time.Second
	poolReleaseDelay = time.Hour
)

// The reference network: a cni0-style bridge in the node namespace and
// host-local on a range that does not overlap the VNet (10.240.0.0/12).
// In kubenet mode the bridge is kubenet's cbr0 and host-local takes the
// measured node's pod CIDR (the reference runs in a node namespace of its
// own, so the same range does not clash).
const (
	refBridge        = "cni0"
	refSubnet        = "10.88.0.0/16"
	refKubenetBridge = "cbr0"
)

// kubenetCIDR is the cluster CIDR of kubenet mode: node i's pod CIDR is
// its i-th /24 (a /24 holds the 250 pods of the largest run).
var kubenetCIDR = netip.MustParsePrefix("10.100.0.0/16")

// side is one plugin under test, executed by libcni inside a node
// namespace.
type side struct {
	name string
	// nsPath is the node namespace libcni runs in (the plugin inherits it).
	nsPath string
	// node creates (and at the end removes) the pods' namespaces.
	node *cluster.Node
	cni  *libcni.CNIConfig
	list *libcni.NetworkConfigList
}

// op is a CNI verb the benchmark times.
type op string

const (
	opAdd op = "ADD"
	opDel op = "DEL"
)

// do runs one verb for p and returns the time libcni took (plugin exec
// and result cache write), not counting entering the node namespace.
func (s *side) do(ctx context.Context, o op, p *cluster.Pod) (time.Duration, error) {
	var d time.Duration
	err := nsnet.Do(s.nsPath, func() error {
		rt := p.RuntimeConf()
		start := time.Now()
		if o == opDel {
			err := s.cni.DelNetworkList(ctx, s.list, rt)
			d = time.Since(start)
			return err
		}
		r, err := s.cni.AddNetworkList(ctx, s.list, rt)
		d = time.Since(start)
		if err != nil {
			return err
		}
		res, err := current.NewResultFromResult(r)
		if err != nil {
			return err
		}
		p.Result = res
		if len(res.IPs) > 0 {
			p.IP, _ = netip.AddrFromSlice(res.IPs[0].Address.IP.To4())
		}
		return nil
	})
	if err != nil {
		return d, fmt.Errorf("%s %s pod %s: %w", s.name, o, p.Name, err)
	}
	return d, nil
}

// run runs o for every pod with par workers and returns each latency and
// the wall time of the whole batch. It stops at the first error.
func (s *side) run(ctx context.Context, o op, pods []*cluster.Pod, par int) ([]time.Duration, time.Duration, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	lat := make([]time.Duration, len(pods))
	next := make(chan int)
	var wg sync.WaitGroup
	start := time.Now()
	for range min(par, len(pods)) {
		wg.Go(func() {
			for i := range next {
				var err error
				if lat[i], err = s.do(ctx, o, pods[i]); err != nil {
					cancel(err) // the first error wins
				}
			}
		})
	}
	for i := range pods {
		if ctx.Err() != nil {
			break
		}
		next <- i
	}
	close(next)
	wg.Wait()
	return lat, time.Since(start), context.Cause(ctx)
}

// version runs VERSION, the cheapest verb: what it costs is the exec and
// start-up of the plugin binary.
func (s *side) version(ctx context.Context) (time.Duration, error) {
	var d time.Duration
	err := nsnet.Do(s.nsPath, func() error {
		start := time.Now()
		_, err := s.cni.GetVersionInfo(ctx, s.list.Plugins[0].Network.Type)
		d = time.Since(start)
		return err
	})
	return d, err
}

// env is everything a run has started; close removes it.
type env struct {
	opts    Options
	sim     *sim.Sim
	cluster *cluster.Cluster
	node    *cluster.Node // the measured node
	peer    *cluster.Node // the other node, for cross-node traffic
	vnet    *side
	ref     *side
	vnetLog string
	logFile *os.File // the plugins' stderr
	nsNames []string // namespaces created outside the cluster
}

// Run measures everything and returns the results. It removes every
// namespace, process and file it created under Options.Dir's children,
// also when ctx is cancelled half-way.
func Run(ctx context.Context, opts Options) (res *Results, err error) {
	opts.setDefaults()
	if opts.Dir == "" {
		return nil, errors.New("bench: Dir is required")
	}
	if maxN := maxInt(opts.Sizes); maxN > opts.PoolSize || opts.PoolSize > poolMax-5 {
		return nil, fmt.Errorf("bench: %d pods do not fit a pool of %d (at most %d)", maxN, opts.PoolSize, poolMax-5)
	}
	if opts.Mode != config.ModeBridge && opts.Mode != config.ModeRouted && opts.Mode != config.ModeKubenet {
		return nil, fmt.Errorf("bench: mode %q: want %s, %s or %s", opts.Mode, config.ModeBridge, config.ModeRouted, config.ModeKubenet)
	}
	res = &Results{LoadAvgStart: loadAvg(), Started: time.Now().UTC().Format(time.RFC3339), RefIPMasq: opts.RefIPMasq,
		Mode: opts.Mode, RefName: refName(opts.Mode)}
	start := time.Now()
	e := &env{opts: opts}
	defer func() { err = errors.Join(err, e.close()) }()
	if err := e.setup(ctx, res); err != nil {
		return nil, err
	}
	if err := e.measureExec(ctx, res); err != nil {
		return nil, err
	}
	if err := e.measureLatency(ctx, res); err != nil {
		return nil, err
	}
	if err := e.measureThroughput(ctx, res); err != nil {
		return nil, err
	}
	res.LoadAvgEnd = loadAvg()
	res.RunSeconds = round3(time.Since(start).Seconds())
	res.fill()
	return res, nil
}

func (e *env) progress(format string, args ...any) {
	fmt.Fprintf(e.opts.Progress, "  "+format+"\n", args...)
}

func (e *env) close() error {
	var errs []error
	if e.opts.PluginLog != "" && e.vnetLog != "" {
		if data, err := os.ReadFile(e.vnetLog); err == nil {
			errs = append(errs, os.WriteFile(e.opts.PluginLog, data, 0o644))
		}
	}
	if e.cluster != nil {
		errs = append(errs, e.cluster.Close())
	}
	for _, n := range e.nsNames {
		errs = append(errs, deleteNS(n))
	}
	if e.sim != nil {
		errs = append(errs, e.sim.Close())
	}
	if e.logFile != nil {
		errs = append(errs, e.logFile.Close())
	}
	return errors.Join(errs...)
}

// setup starts the sim and both daemons, measures the first fill of the
// measured node and prepares the two sides.
func (e *env) setup(ctx context.Context, res *Results) error {
	o := e.opts
	for _, b := range []string{refPlugin(o.Mode), "host-local"} {
		if _, err := os.Stat(filepath.Join(o.RefPluginDir, b)); err != nil {
			return fmt.Errorf("reference plugin %s (Debian: apt-get install containernetworking-plugins): %w", b, err)
		}
	}
	e.progress("starting the simulated cloud (2 nodes)")
	s, err := sim.Start(ctx, sim.Options{Nodes: 2, Prefix: o.Prefix, Dir: filepath.Join(o.Dir, "sim")})
	if err != nil {
		return err
	}
	e.sim = s
	res.Prefix = s.Description().Prefix
	copts := cluster.Options{
		Dir: filepath.Join(o.Dir, "nodes"), BinDir: o.BinDir,
		// The stores live where the default storeDir does: on a tmpfs.
		StoreOnTmpfs: true,
		IPAMD: func(node string, cfg *config.Config) {
			cfg.Mode = o.Mode
			cfg.ResyncInterval = config.Duration(config.DefaultResyncInterval)
			// The route agent's checks at their defaults, as a node runs
			// them (the harness shortens them for tests).
			cfg.Kubenet.RouteInterval = config.Duration(config.DefaultRouteInterval)
			cfg.Kubenet.RouteSettle = config.Duration(config.DefaultRouteSettle)
			if node != s.Description().Nodes[0].Name {
				return // the peer keeps the cluster's small pool
			}
			cfg.MaxIPs = poolMax
			cfg.IPAddressCount = o.PoolSize
			cfg.WarmIPTarget = poolWarm
			cfg.BatchSize = poolBatch
			cfg.Cooldown = config.Duration(poolCooldown)
			cfg.ReleaseDelay = config.Duration(poolReleaseDelay)
		},
	}
	if o.Mode == config.ModeKubenet {
		copts.KubenetCIDR = kubenetCIDR
	}
	c, err := cluster.New(s.Description(), copts)
	if err != nil {
		return err
	}
	e.cluster = c
	e.node, e.peer = c.Nodes[0], c.Nodes[1]
	res.Pool = PoolConfig{IPAddressCount: o.PoolSize, WarmIPTarget: poolWarm, BatchSize: poolBatch, MaxIPs: poolMax,
		Cooldown: poolCooldown.String(), ReleaseDelay: poolReleaseDelay.String()}

	// The measured node alone first, so that the counters hold its fill.
	arm := s.ARM()
	arm.ResetStats()
	if o.Mode == config.ModeKubenet {
		e.progress("starting vnet-ipamd on %s: its pool is the pod CIDR %s, ready once its route is effective", e.node.Name, e.node.Config.Kubenet.PodCIDR)
	} else {
		e.progress("starting vnet-ipamd on %s, filling %d addresses", e.node.Name, o.PoolSize)
	}
	fillStart := time.Now()
	if err := e.node.StartIPAMD(); err != nil {
		return err
	}
	if err := e.node.WaitReady(ctx); err != nil {
		return err
	}
	if err := e.waitPool(ctx, e.node, func(st poolState) bool { return st.Free >= o.PoolSize && st.Releasing == 0 }); err != nil {
		return fmt.Errorf("first fill: %w", err)
	}
	res.Cloud.FillSeconds = round3(time.Since(fillStart).Seconds())
	res.Cloud.Fill = callCounts(arm.Stats())
	if res.RSS.IdleMiB, _, err = rssMiB(e.node.PID()); err != nil {
		return err
	}
	e.progress("filled in %.1fs with %d cloud writes, %d reads", res.Cloud.FillSeconds, res.Cloud.Fill.Writes, res.Cloud.Fill.Reads)
	if err := e.peer.StartIPAMD(); err != nil {
		return err
	}
	if err := e.peer.WaitReady(ctx); err != nil {
		return err
	}

	e.vnetLog = filepath.Join(o.Dir, "vnet-cni.log")
	logf, err := os.OpenFile(e.vnetLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	e.logFile = logf
	vnetList, err := e.node.PluginOnlyList("1.0.0")
	if err != nil {
		return err
	}
	e.vnet = &side{name: "vnet-cni", nsPath: e.node.NSPath, node: e.node, list: vnetList,
		cni: libcni.NewCNIConfigWithCacheDir([]string{mustAbs(o.BinDir)},
			filepath.Join(o.Dir, "cache-vnet"), execWithStderr(logf))}
	res.RefSubnet = refSubnet
	if o.Mode == config.ModeKubenet {
		res.RefSubnet = e.node.Config.Kubenet.PodCIDR
	}
	refList, err := refConflist(filepath.Join(o.Dir, "host-local"), o.Mode, res.RefSubnet, o.RefIPMasq)
	if err != nil {
		return err
	}
	// The reference gets a node namespace of its own: vnet-cni's
	// bridge-family rules apply to every bridge of a namespace, and the
	// reference's iptables chains would lengthen vnet-cni's nftables
	// reads; each plugin sees a node with its own datapath only.
	refNode := res.Prefix + "-refnode"
	if err := nsnet.CreateNamed(refNode); err != nil {
		return err
	}
	e.nsNames = append(e.nsNames, refNode)
	e.ref = &side{name: refName(o.Mode), nsPath: nsPath(refNode), node: e.node, list: refList,
		cni: libcni.NewCNIConfigWithCacheDir([]string{o.RefPluginDir},
			filepath.Join(o.Dir, "cache-ref"), execWithStderr(logf))}

	// Counted from here: everything the daemons ask the cloud while pods
	// come and go.
	arm.ResetStats()
	return nil
}

func execWithStderr(w io.Writer) invoke.Exec {
	return &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: w}, PluginDecoder: version.PluginDecoder{}}
}

func mustAbs(p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		return p
	}
	return a
}

// refPlugin is the reference plugin of a mode: Debian's bridge for bridge
// mode, its ptp (a veth per pod, a /32 route to it, no bridge) for routed
// mode.
func refPlugin(mode string) string {
	if mode == config.ModeRouted {
		return "ptp"
	}
	return "bridge"
}

func refName(mode string) string { return refPlugin(mode) + "+host-local" }

// refConflist is the mode's reference plugin with host-local on subnet,
// as a kubenet-style runtime configures them, with the IPAM data in
// dataDir; ipMasq makes it masquerade pod traffic leaving its subnet, as
// vnet-cni does. In kubenet mode the bridge is cbr0 and subnet the pod
// CIDR, whose first address host-local gives the bridge as the gateway.
func refConflist(dataDir, mode, subnet string, ipMasq bool) (*libcni.NetworkConfigList, error) {
	plugin := map[string]any{
		"type": "bridge", "bridge": refBridge, "isGateway": true, "ipMasq": ipMasq, "hairpinMode": true,
	}
	switch mode {
	case config.ModeRouted:
		plugin = map[string]any{"type": "ptp", "ipMasq": ipMasq}
	case config.ModeKubenet:
		plugin["bridge"] = refKubenetBridge
	}
	plugin["ipam"] = map[string]any{
		"type": "host-local", "dataDir": dataDir,
		"ranges": [][]map[string]string{{{"subnet": subnet}}},
		"routes": []map[string]string{{"dst": "0.0.0.0/0"}},
	}
	doc := map[string]any{"cniVersion": "1.0.0", "name": "bench-ref", "plugins": []any{plugin}}
	data, err := json.Marshal(doc)
	if err != nil {
		return nil, err
	}
	return libcni.ConfListFromBytes(data)
}

type poolState struct {
	Free, Assigned, Cooling, Releasing, Total int
}

// waitPool polls the daemon until ok holds for its pool.
func (e *env) waitPool(ctx context.Context, n *cluster.Node, ok func(poolState) bool) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	var last poolState
	for {
		st, err := n.Status(ctx)
		if err == nil {
			p := st.Pool
			last = poolState{Free: p.Free, Assigned: p.Assigned, Cooling: p.Cooling, Releasing: p.Releasing, Total: p.Total}
			if ok(last) {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("node %s pool %+v: %w", n.Name, last, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// measureExec times VERSION of both plugins: the floor of exec and
// runtime start-up under every verb.
func (e *env) measureExec(ctx context.Context, res *Results) error {
	e.progress("VERSION exec floor, %d calls each", e.opts.SingleRounds)
	var v, r []time.Duration
	for range e.opts.SingleRounds {
		for _, s := range []*side{e.vnet, e.ref} {
			d, err := s.version(ctx)
			if err != nil {
				return fmt.Errorf("%s VERSION: %w", s.name, err)
			}
			if s == e.vnet {
				v = append(v, d)
			} else {
				r = append(r, d)
			}
		}
	}
	res.ExecFloor = SidePair{VNet: Summarize(v), Ref: Summarize(r)}
	return nil
}

func maxInt(v []int) int {
	m := 0
	for _, x := range v {
		m = max(m, x)
	}
	return m
}

// loadAvg is the first three fields of /proc/loadavg.
func loadAvg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}
