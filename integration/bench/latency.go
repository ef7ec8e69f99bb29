package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/vnet-cni/vnet-cni/cloud/sim/arm"
	"github.com/vnet-cni/vnet-cni/integration/cluster"
	"github.com/vnet-cni/vnet-cni/internal/nsnet"
)

// measureLatency creates each side's bridge with a first pod, then runs
// every size sequentially and in parallel.
func (e *env) measureLatency(ctx context.Context, res *Results) error {
	for _, s := range []*side{e.vnet, e.ref} {
		p, err := e.node.NewPod("bench", "first-"+shortName(s))
		if err != nil {
			return err
		}
		d, err := s.do(ctx, opAdd, p)
		if err != nil {
			return err
		}
		if s == e.vnet {
			res.FirstAdd.VNetMs = ms(d)
		} else {
			res.FirstAdd.RefMs = ms(d)
		}
		if _, err := s.do(ctx, opDel, p); err != nil {
			return err
		}
		if err := p.Remove(); err != nil {
			return err
		}
	}
	maxN := maxInt(e.opts.Sizes)
	for _, n := range e.opts.Sizes {
		for _, par := range []int{1, e.opts.Parallel} {
			if n == 1 && par > 1 {
				continue // one pod in parallel is the sequential case
			}
			sc, err := e.scenario(ctx, n, par, res, n == maxN && par == 1)
			if err != nil {
				return err
			}
			res.Scenarios = append(res.Scenarios, sc)
		}
	}
	m, err := e.allocateMetrics(ctx)
	if err != nil {
		return err
	}
	res.Allocations = m
	return nil
}

func shortName(s *side) string {
	if s.name == "vnet-cni" {
		return "v"
	}
	return "r"
}

// chunkSize is the batch after which the other side takes its turn: about
// ten turns per phase sequentially, five in parallel (a batch should keep
// every worker busy most of its time).
func chunkSize(n, par int) int {
	if par > 1 {
		return max(n/5, par)
	}
	return max(n/10, 1)
}

// scenario measures n pods with par workers: ADD of all, then DEL of all,
// each phase alternating batches of the two sides on the same node.
func (e *env) scenario(ctx context.Context, n, par int, res *Results, largestSeq bool) (Scenario, error) {
	rounds := 1
	if n == 1 {
		rounds = e.opts.SingleRounds
	}
	mode := "seq"
	if par > 1 {
		mode = fmt.Sprintf("par%d", par)
	}
	e.progress("%d pods, %s, %d round(s)", n, mode, rounds)
	sc := Scenario{Pods: n, Parallel: par, Rounds: rounds, Chunk: chunkSize(n, par)}
	var lat [2][2][]time.Duration // [side][op]
	var wall [2][2]time.Duration
	var vnetIDs []string
	armSrv := e.sim.ARM()
	before := armSrv.Stats()
	sides := [2]*side{e.vnet, e.ref}
	for r := range rounds {
		// Released addresses cool down before they are free again.
		if err := e.waitPool(ctx, e.node, func(st poolState) bool { return st.Free >= n }); err != nil {
			return sc, err
		}
		var pods [2][]*cluster.Pod
		for si, s := range sides {
			for i := range n {
				p, err := e.node.NewPod("bench", fmt.Sprintf("%s%d%s%d-%d", shortName(s), n, mode, r, i))
				if err != nil {
					return sc, err
				}
				pods[si] = append(pods[si], p)
				if si == 0 {
					vnetIDs = append(vnetIDs, p.ContainerID)
				}
			}
		}
		for oi, o := range []op{opAdd, opDel} {
			turn := r // alternate who starts, round after round
			for start := 0; start < n; start += sc.Chunk {
				end := min(start+sc.Chunk, n)
				for k := range 2 {
					si := (turn + k) % 2
					l, w, err := sides[si].run(ctx, o, pods[si][start:end], par)
					if err != nil {
						return sc, err
					}
					lat[si][oi] = append(lat[si][oi], l...)
					wall[si][oi] += w
				}
				turn++
			}
			if o == opAdd && largestSeq {
				if err := e.atLargest(ctx, res, n); err != nil {
					return sc, err
				}
			}
		}
		for _, side := range pods {
			for _, p := range side {
				if err := p.Remove(); err != nil {
					return sc, err
				}
			}
		}
	}
	sc.Cloud = diffCalls(before, armSrv.Stats())
	sc.Add = SidePair{VNet: Summarize(lat[0][0]), Ref: Summarize(lat[1][0])}
	sc.Del = SidePair{VNet: Summarize(lat[0][1]), Ref: Summarize(lat[1][1])}
	sc.AddWall = WallPair{VNetMs: ms(wall[0][0] / time.Duration(rounds)), RefMs: ms(wall[1][0] / time.Duration(rounds))}
	sc.DelWall = WallPair{VNetMs: ms(wall[0][1] / time.Duration(rounds)), RefMs: ms(wall[1][1] / time.Duration(rounds))}
	inside, err := e.pluginDurations(vnetIDs)
	if err != nil {
		return sc, err
	}
	sc.VNetInsideAdd, sc.VNetInsideDel = Summarize(inside[opAdd]), Summarize(inside[opDel])
	e.progress("  ADD p50 %.2f / %.2f ms, DEL p50 %.2f / %.2f ms (vnet-cni / reference)",
		sc.Add.VNet.P50, sc.Add.Ref.P50, sc.Del.VNet.P50, sc.Del.Ref.P50)
	return sc, nil
}

// atLargest records the daemon's memory and pool with the most pods.
func (e *env) atLargest(ctx context.Context, res *Results, n int) error {
	rss, hwm, err := rssMiB(e.node.PID())
	if err != nil {
		return err
	}
	res.RSS.Pods, res.RSS.MiB, res.RSS.PeakMiB = n, rss, hwm
	st, err := e.node.Status(ctx)
	if err != nil {
		return err
	}
	res.RSS.Pool = poolState{Free: st.Pool.Free, Assigned: st.Pool.Assigned, Cooling: st.Pool.Cooling,
		Releasing: st.Pool.Releasing, Total: st.Pool.Total}
	return nil
}

// rssMiB reads VmRSS and VmHWM of pid.
func rssMiB(pid int) (rss, hwm float64, err error) {
	if pid == 0 {
		return 0, 0, errors.New("vnet-ipamd is not running")
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for line := range strings.Lines(string(data)) {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, perr := strconv.ParseFloat(f[1], 64)
		if perr != nil {
			continue
		}
		switch f[0] {
		case "VmRSS:":
			rss = round3(kb / 1024)
		case "VmHWM:":
			hwm = round3(kb / 1024)
		}
	}
	if rss == 0 {
		return 0, 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
	}
	return rss, hwm, nil
}

// callKey identifies one plugin call in the plugin's log.
type callKey struct {
	verb        string
	containerID string
}

// parsePluginLog reads the durationMs of every call from vnet-cni's JSON
// log lines.
func parsePluginLog(data []byte) map[callKey]time.Duration {
	out := map[callKey]time.Duration{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var l struct {
			Verb        string  `json:"verb"`
			DurationMs  float64 `json:"durationMs"`
			ContainerID string  `json:"containerID"`
		}
		if json.Unmarshal(sc.Bytes(), &l) != nil || l.Verb == "" {
			continue
		}
		out[callKey{l.Verb, l.ContainerID}] = time.Duration(l.DurationMs * float64(time.Millisecond))
	}
	return out
}

// pluginDurations is the time vnet-cni itself measured for the calls of
// these containers (from its start-up, after exec and runtime start).
func (e *env) pluginDurations(ids []string) (map[op][]time.Duration, error) {
	data, err := os.ReadFile(e.vnetLog)
	if err != nil {
		return nil, err
	}
	all := parsePluginLog(data)
	out := map[op][]time.Duration{}
	for _, id := range ids {
		for _, o := range []op{opAdd, opDel} {
			if d, ok := all[callKey{string(o), id}]; ok {
				out[o] = append(out[o], d)
			}
		}
	}
	return out, nil
}

// allocateMetrics scrapes the measured daemon's allocation counters: how
// many Allocate calls were answered within 250 ms (from the warm pool: a
// refill takes a cloud operation of seconds) and how many were refused.
func (e *env) allocateMetrics(ctx context.Context) (AllocationStats, error) {
	var a AllocationStats
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	client := &http.Client{Transport: &http.Transport{DialContext: nsnet.DialContextIn(e.node.NSPath)}}
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+e.node.Config.MetricsAddr.String()+"/metrics", http.NoBody)
	if err != nil {
		return a, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return a, fmt.Errorf("scrape vnet-ipamd metrics: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return a, err
	}
	text := string(body)
	a.OK = int(metricValue(text, `vnetcni_ipamd_allocations_total{result="ok"}`))
	a.TryAgain = int(metricValue(text, `vnetcni_ipamd_allocations_total{result="try_again"}`))
	a.Within250ms = int(metricValue(text, `vnetcni_ipamd_allocate_duration_seconds_bucket{le="0.25"}`))
	a.Within500us = int(metricValue(text, `vnetcni_ipamd_allocate_duration_seconds_bucket{le="0.0005"}`))
	a.Within1ms = int(metricValue(text, `vnetcni_ipamd_allocate_duration_seconds_bucket{le="0.001"}`))
	a.Count = int(metricValue(text, `vnetcni_ipamd_allocate_duration_seconds_count`))
	return a, nil
}

// metricValue is the value of the sample named exactly name (with its
// labels) in a Prometheus text exposition, 0 when absent.
func metricValue(text, name string) float64 {
	for line := range strings.Lines(text) {
		rest, ok := strings.CutPrefix(line, name+" ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
		if err == nil {
			return v
		}
	}
	return 0
}

// CallCounts are ARM requests split into writes (NIC updates) and reads.
type CallCounts struct {
	Writes int            `json:"writes"`
	Reads  int            `json:"reads"`
	ByOp   map[string]int `json:"by_operation,omitempty"`
}

// isWrite tells writes (NetworkInterfaces_CreateOrUpdate and the like)
// from reads (gets, lists and polls of long-running operations).
func isWrite(op string) bool {
	return strings.HasSuffix(op, "_CreateOrUpdate") || strings.HasSuffix(op, "_Delete")
}

func callCounts(s arm.Stats) CallCounts {
	return diffCalls(arm.Stats{}, s)
}

func diffCalls(before, after arm.Stats) CallCounts {
	c := CallCounts{ByOp: map[string]int{}}
	for op, byStatus := range after.Calls {
		n := 0
		for status, v := range byStatus {
			n += v - before.Calls[op][status]
		}
		if n == 0 {
			continue
		}
		c.ByOp[op] = n
		if isWrite(op) {
			c.Writes += n
		} else {
			c.Reads += n
		}
	}
	return c
}
