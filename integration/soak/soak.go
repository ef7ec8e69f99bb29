// Package soak is vnet-cni's churn soak: pods are added and deleted at a high
// rate on a simulated cluster while the cloud injects errors, throttling
// storms and latency, vnet-ipamd is killed with SIGKILL at random moments
// (and its store damaged while it is down: a journal cut inside a record,
// zeroed, or every file deleted), and an operator deletes ipConfigurations
// of the nodes' NICs outside vnet-ipamd (cloud drift). At the end the
// kernel, the daemons' stores and the cloud are compared: no address may be
// held twice, none may leak, every live pod must reach the network, and
// every store must be valid.
//
// Run it with `make soak` (cmd/vnet-soak) or, in a short profile, as
// TestSoak in package integration.
package soak

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vnet-cni/vnet-cni/cloud/sim"
	"github.com/vnet-cni/vnet-cni/cloud/sim/arm"
	"github.com/vnet-cni/vnet-cni/cloud/sim/ec2"
	"github.com/vnet-cni/vnet-cni/integration/cluster"
	"github.com/vnet-cni/vnet-cni/internal/nsnet"
	"github.com/vnet-cni/vnet-cni/ipamd/api"
	"github.com/vnet-cni/vnet-cni/ipamd/config"
	"github.com/vnet-cni/vnet-cni/ipamd/store"
)

// Profile sets the size and the bounds of a soak.
type Profile struct {
	// Nodes and Slots: Slots pod slots on each of Nodes nodes.
	Nodes int
	Slots int
	// Workers is the number of concurrent ADD/DEL loops per node.
	Workers int
	// Duration bounds the churn; MaxOps bounds the CNI operations.
	Duration time.Duration
	MaxOps   int
	// KillMin and KillMax bound the pause between two SIGKILLs of a
	// random node's vnet-ipamd; DownMax bounds how long it stays down.
	KillMin, KillMax, DownMax time.Duration
	// FirstKill, when set, is the pause before the first SIGKILL.
	FirstKill time.Duration
	// ErrorRate of ARM requests answered with 5xx; Latency added to every
	// ARM request; a 429 storm of StormLength every StormEvery.
	ErrorRate               float64
	Latency                 time.Duration
	StormEvery, StormLength time.Duration
	// DamageRate is the probability that the killer damages the store of
	// the daemon it killed before restarting it (one of Damage's kinds,
	// chosen at random); never in the last recoveryGrace of the churn, so
	// that its recovery ends soon after the churn.
	DamageRate float64
	// DriftMin and DriftMax bound the pause between two ipConfigurations
	// deleted out of band (zero DriftMax: no drift), none begun in the last
	// resync interval of the churn, so that the daemons have seen every
	// deletion when it ends; DriftLive is the probability that the drifter
	// picks a live pod's address rather than any address of the NIC.
	DriftMin, DriftMax time.Duration
	DriftLive          float64
	// Seed makes the random choices repeatable (0: random).
	Seed uint64
}

// Full is the profile of `make soak` (at most 5 minutes in all).
func Full() Profile {
	return Profile{
		Nodes: 2, Slots: 100, Workers: 3,
		Duration: 3*time.Minute + 30*time.Second, MaxOps: 100000,
		KillMin: 4 * time.Second, KillMax: 12 * time.Second, DownMax: 1500 * time.Millisecond,
		ErrorRate: 0.10, Latency: 2 * time.Second,
		StormEvery: 20 * time.Second, StormLength: 4 * time.Second,
		DamageRate: 0.25,
		DriftMin:   4 * time.Second, DriftMax: 12 * time.Second, DriftLive: 0.75,
	}
}

// Short is the profile that runs in `make test` (at most 60 seconds).
func Short() Profile {
	p := Full()
	p.Duration = 20 * time.Second
	p.MaxOps = 5000
	p.KillMin, p.KillMax = 4*time.Second, 8*time.Second
	p.StormEvery, p.StormLength = 8*time.Second, 3*time.Second
	// The first kill, 2 s into the churn, always damages the store, early
	// enough for the recovery (the first sync under the faults, then the
	// quarantine) to end about when the churn does; the later kills come
	// too late to damage it.
	p.FirstKill = 2 * time.Second
	p.DamageRate = 1
	p.DriftMin, p.DriftMax = 2*time.Second, 5*time.Second
	return p
}

// recoveryGrace is the daemons' quarantine after a damaged or lost store:
// above the plugin's 10 s datapath timeout, as it must be (see
// config.RecoveryGrace), and short enough for the short profile.
const recoveryGrace = 12 * time.Second

// Options are what the soak needs besides the profile.
type Options struct {
	// Cloud is the simulated cloud (default Azure). On AWS the nodes are
	// m5.4xlarge instances (8 ENIs × 30 addresses) in routed mode, the
	// faults are EC2's (5xx, latency, RequestLimitExceeded storms) and
	// there is no drift (the drifter is ARM's).
	Cloud sim.Cloud
	// Dir receives the sim's and the nodes' files.
	Dir string
	// BinDir holds vnet-ipamd and vnet-cni.
	BinDir string
	// Prefix names the namespaces (at most 12 characters); default random.
	Prefix string
	Logger *slog.Logger
}

// Result is what a soak measured.
type Result struct {
	Operations int
	// Adds and Dels count successful ADDs and DELs; Failed the CNI calls
	// that returned an error (expected under faults, never a violation by
	// themselves).
	Adds, Dels, Failed int
	// Faults are the ARM requests answered with an error (injected 5xx,
	// 429 during storms and throttling, conflicts), the drift operator's
	// included.
	Faults int
	// Restarts are the SIGKILLs of vnet-ipamd followed by a restart.
	Restarts int
	// Damages are the stores damaged while their daemon was down, by kind.
	Damages Damages
	// Drifts are the ipConfigurations the operator deleted out of band,
	// DriftLive those of them that held a live pod's address, and
	// DriftTaken the drift victims whose address the cloud gave to another
	// node's NIC before their daemon could put it back (see drift.go).
	Drifts, DriftLive, DriftTaken int
	// Violations lists every broken guarantee found.
	Violations []string
	// LivePods at the end, and the duration of the whole run.
	LivePods int
	Elapsed  time.Duration
	// Seed is the seed of the run's random choices (the timing is not
	// repeatable).
	Seed uint64
}

// Line is the one-line summary that ends a soak. Tools parse it: keep its
// format.
func (r Result) Line() string {
	return fmt.Sprintf("soak: %d operations, %d faults, %d restarts, %d violations",
		r.Operations, r.Faults, r.Restarts, len(r.Violations))
}

// FaultLine counts the faults of the store and of the cloud's state that
// Line does not: the damaged stores by kind and the cloud drift.
func (r Result) FaultLine() string {
	return fmt.Sprintf("soak faults: %d stores damaged (%d truncated, %d zeroed, %d deleted), %d ipConfigurations deleted out of band (%d of live pods, %d of them taken by another NIC)",
		r.Damages.Total(), r.Damages.Truncated, r.Damages.Zeroed, r.Damages.Deleted, r.Drifts, r.DriftLive, r.DriftTaken)
}

// slot is one pod slot of a node. mu is held for the whole of an operation.
type slot struct {
	mu  sync.Mutex
	pod *cluster.Pod
	// live: the last ADD succeeded and no DEL succeeded since; dirty: an
	// ADD or DEL failed and the pod still needs a successful DEL.
	live, dirty bool
}

type runner struct {
	prof  Profile
	opts  Options
	log   *slog.Logger
	sim   *sim.Sim
	c     *cluster.Cluster
	slots [][]*slot

	ops, adds, dels, failed, restarts atomic.Int64

	mu sync.Mutex // guards the fields below
	// holders maps every address of a live pod to its pods, across nodes:
	// the online duplicate check (addHeld). More than one only after the
	// cloud gave a drift victim's address to another node.
	holders    map[netip.Addr][]*cluster.Pod
	violations []string
	damages    Damages
	// driftOff holds the addresses the drifter removed from a node's NIC
	// that have not been seen on it since; victims the live pods whose
	// address is such an address of their node; taken the victims whose
	// address another node's pod or NIC got (counted once).
	driftOff          map[netip.Addr]*cluster.Node
	victims, taken    map[*cluster.Pod]bool
	drifts, driftLive int
	// deleted are the container IDs of the pods whose DEL succeeded: none
	// may hold an address again, before GC too (checkDeleted).
	deleted map[string]bool
}

// Run runs a soak. The error reports a failure of the harness (the sim or a
// daemon could not start); broken guarantees are Result.Violations.
func Run(ctx context.Context, prof Profile, opts Options) (res Result, err error) {
	start := time.Now()
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if prof.Seed == 0 {
		prof.Seed = rand.Uint64()
	}
	r := &runner{
		prof: prof, opts: opts, log: opts.Logger, holders: map[netip.Addr][]*cluster.Pod{},
		driftOff: map[netip.Addr]*cluster.Node{}, victims: map[*cluster.Pod]bool{}, taken: map[*cluster.Pod]bool{},
		deleted: map[string]bool{},
	}
	r.log.Info("soak starting", "nodes", prof.Nodes, "slots", prof.Slots, "duration", prof.Duration, "seed", prof.Seed)

	res.Seed = prof.Seed
	if opts.Cloud == sim.CloudAWS && r.prof.DriftMax > 0 {
		r.log.Info("no drift on AWS: the drifter deletes ipConfigurations through ARM")
		r.prof.DriftMax = 0
	}
	r.sim, err = sim.Start(ctx, sim.Options{
		Cloud: opts.Cloud, InstanceType: "m5.4xlarge",
		Nodes: prof.Nodes, Prefix: opts.Prefix, Dir: filepath.Join(opts.Dir, "sim"),
		OperationDuration: 200 * time.Millisecond, PollInterval: 100 * time.Millisecond,
	})
	if err != nil {
		return res, fmt.Errorf("start sim: %w", err)
	}
	defer func() { err = errors.Join(err, r.sim.Close()) }()
	r.c, err = cluster.New(r.sim.Description(), cluster.Options{
		Dir: filepath.Join(opts.Dir, "nodes"), BinDir: opts.BinDir, Logger: r.log,
		// The stores live where the default storeDir does: on a tmpfs.
		StoreOnTmpfs: true,
		IPAMD: func(_ string, c *config.Config) {
			// Room for every slot plus what cools down.
			// A warm pool deep enough to ride out a refill that takes
			// several seconds under the injected latency and faults.
			c.MaxIPs = prof.Slots + 40
			c.WarmIPTarget = 30
			c.IPAddressCount = 60
			c.BatchSize = 20
			c.AllocateWait = config.Duration(3 * time.Second)
			c.RecoveryGrace = config.Duration(recoveryGrace)
			// A deleted ipConfiguration is seen at the next resync.
			c.ResyncInterval = config.Duration(5 * time.Second)
		},
	})
	if err != nil {
		return res, err
	}
	defer func() { err = errors.Join(err, r.c.Close()) }()
	if err := r.c.Start(ctx); err != nil {
		return res, err
	}
	r.slots = make([][]*slot, len(r.c.Nodes))
	for i := range r.slots {
		for range prof.Slots {
			r.slots[i] = append(r.slots[i], &slot{})
		}
	}

	r.churn(ctx)
	r.settle(ctx)
	r.verify(ctx)

	res = Result{
		Operations: int(r.ops.Load()), Adds: int(r.adds.Load()), Dels: int(r.dels.Load()),
		Failed: int(r.failed.Load()), Faults: r.cloudErrors(), Restarts: int(r.restarts.Load()),
	}
	r.mu.Lock()
	res.Violations = append(res.Violations, r.violations...)
	res.Damages = r.damages
	res.Drifts, res.DriftLive, res.DriftTaken = r.drifts, r.driftLive, len(r.taken)
	r.mu.Unlock()
	for _, ss := range r.slots {
		for _, s := range ss {
			if s.live {
				res.LivePods++
			}
		}
	}
	res.Elapsed = time.Since(start)
	res.Seed = prof.Seed
	return res, nil
}

func (r *runner) violation(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.violationLocked(format, args...)
}

func (r *runner) violationLocked(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	r.log.Error("violation", "what", msg)
	r.violations = append(r.violations, msg)
}

// churn runs the ADD/DEL workers, the fault injector and the killer until
// the duration or the operation budget is spent.
func (r *runner) churn(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, r.prof.Duration)
	defer cancel()
	var wg sync.WaitGroup
	for ni, n := range r.c.Nodes {
		for w := range r.prof.Workers {
			rng := rand.New(rand.NewPCG(r.prof.Seed, uint64(ni*100+w)))
			wg.Go(func() { r.worker(ctx, cancel, ni, n, rng) })
		}
	}
	wg.Go(func() { r.faults(ctx) })
	wg.Go(func() { r.killer(ctx, rand.New(rand.NewPCG(r.prof.Seed, 999))) })
	if r.prof.DriftMax > 0 {
		wg.Go(func() { r.drifter(ctx, rand.New(rand.NewPCG(r.prof.Seed, 998))) })
		wg.Go(func() { r.watchDrift(ctx) })
	}
	wg.Wait()
}

func (r *runner) worker(ctx context.Context, stop context.CancelFunc, ni int, n *cluster.Node, rng *rand.Rand) {
	for ctx.Err() == nil {
		if int(r.ops.Load()) >= r.prof.MaxOps {
			stop()
			return
		}
		s := r.slots[ni][rng.IntN(len(r.slots[ni]))]
		if !s.mu.TryLock() {
			continue
		}
		r.step(ctx, n, s, fmt.Sprintf("s%03d", indexOf(r.slots[ni], s)))
		s.mu.Unlock()
	}
}

// indexOf returns the index of s (for the pod's name).
func indexOf(ss []*slot, s *slot) int {
	for i, x := range ss {
		if x == s {
			return i
		}
	}
	return -1
}

// step does one operation on a slot held by the caller: DEL of a live or
// dirty pod, else ADD of a new pod. A failed ADD is followed by DEL, as the
// runtime does.
func (r *runner) step(ctx context.Context, n *cluster.Node, s *slot, name string) {
	callCtx := context.WithoutCancel(ctx)
	if s.pod != nil {
		r.del(callCtx, n, s)
		return
	}
	p, err := n.NewPod("soak", name)
	if err != nil {
		r.violation("create the netns of %s/%s: %v", n.Name, name, err)
		return
	}
	s.pod = p
	r.ops.Add(1)
	if _, err := n.Add(callCtx, p); err != nil {
		r.failed.Add(1)
		r.log.Debug("add failed", "node", n.Name, "pod", name, "err", err)
		s.dirty = true
		r.del(callCtx, n, s)
		return
	}
	r.adds.Add(1)
	s.live = true
	r.addHeld(p)
}

// addHeld records that the ADD of p succeeded, after checking that no
// other live pod holds its address. On the same node that is always a
// violation. Across nodes it is one unless either pod is a drift victim:
// the cloud moved the address, and the victim's daemon must keep it out of
// its pool and report it (checked after the churn, see settleDrift).
func (r *runner) addHeld(p *cluster.Pod) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := p.Node
	if r.driftOff[p.IP] == n {
		// n handed out an address the drifter took off its NIC before
		// its daemon noticed: p holds an address its NIC lacks.
		r.victims[p] = true
	}
	for _, other := range r.holders[p.IP] {
		switch {
		case other.Node != n && (r.victims[other] || r.victims[p]):
			victim := other
			if !r.victims[other] {
				victim = p
			}
			r.taken[victim] = true
			r.log.Warn("drift: the cloud gave a drift victim's address to another node, which handed it out",
				"ip", p.IP, "victim", victim.Node.Name+"/"+victim.Name, "pods", []string{other.Node.Name + "/" + other.Name, n.Name + "/" + p.Name})
		default:
			r.violationLocked("%s given to %s/%s (%s) while %s/%s (%s) holds it",
				p.IP, n.Name, p.Name, short(p.ContainerID), other.Node.Name, other.Name, short(other.ContainerID))
		}
	}
	r.holders[p.IP] = append(r.holders[p.IP], p)
}

// dropHeld forgets p as a holder of its address (after its DEL).
func (r *runner) dropHeld(p *cluster.Pod) {
	r.mu.Lock()
	defer r.mu.Unlock()
	hs := slices.DeleteFunc(r.holders[p.IP], func(h *cluster.Pod) bool { return h == p })
	if len(hs) == 0 {
		delete(r.holders, p.IP)
	} else {
		r.holders[p.IP] = hs
	}
	delete(r.victims, p)
}

// del runs DEL for the slot's pod; on success the pod's namespace is
// removed and the slot is empty.
func (r *runner) del(ctx context.Context, n *cluster.Node, s *slot) bool {
	p := s.pod
	r.ops.Add(1)
	if err := n.Del(ctx, p); err != nil {
		r.failed.Add(1)
		r.log.Debug("del failed", "node", n.Name, "pod", p.Name, "err", err)
		s.dirty = true
		return false
	}
	r.dels.Add(1)
	r.mu.Lock()
	r.deleted[p.ContainerID] = true
	r.mu.Unlock()
	// The address is released (or spooled) only now; forget it afterwards
	// so that a reuse before this point would be caught.
	if s.live {
		r.dropHeld(p)
	}
	if err := p.Remove(); err != nil {
		r.violation("remove the netns of %s/%s: %v", n.Name, p.Name, err)
	}
	s.pod, s.live, s.dirty = nil, false, false
	return true
}

// aws says whether the soak runs on the simulated EC2.
func (r *runner) aws() bool { return r.opts.Cloud == sim.CloudAWS }

// cloudErrors is the number of the control plane's error answers.
func (r *runner) cloudErrors() int {
	if r.aws() {
		return r.sim.EC2().Stats().Errors
	}
	return r.sim.ARM().Stats().Errors
}

// clearFaults ends the injected faults.
func (r *runner) clearFaults() {
	if r.aws() {
		r.sim.EC2().SetFaults(ec2.Faults{})
		return
	}
	r.sim.ARM().SetFaults(arm.Faults{})
}

// faults keeps 5xx errors and latency on every ARM operation and starts a
// 429 storm every StormEvery; on AWS the same on every EC2 action, with
// RequestLimitExceeded storms.
func (r *runner) faults(ctx context.Context) {
	if r.aws() {
		r.ec2Faults(ctx)
		return
	}
	base := arm.Faults{
		Latency: map[string]arm.Duration{arm.AllOperations: arm.Duration(r.prof.Latency)},
		Errors: map[string]arm.ErrorFault{arm.AllOperations: {
			Rate: r.prof.ErrorRate, Status: 503, Code: "ServerBusy", Message: "injected by the soak", RetryAfterSeconds: 1,
		}},
	}
	a := r.sim.ARM()
	a.SetFaults(base)
	defer a.SetFaults(arm.Faults{})
	t := time.NewTicker(r.prof.StormEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f := base
			f.Storm = &arm.Storm{Duration: arm.Duration(r.prof.StormLength), RetryAfterSeconds: 1}
			a.SetFaults(f)
			r.log.Info("429 storm", "length", r.prof.StormLength)
		}
	}
}

// killer SIGKILLs a random node's daemon at random moments, damages its
// store with probability DamageRate, and restarts it after a random pause.
//
// A daemon killed while it recovers from a damaged store starts the
// recovery again, with a new quarantine; near the end of the churn the
// killer spares such a node, so that every recovery is over soon after the
// churn.
func (r *runner) killer(ctx context.Context, rng *rand.Rand) {
	// A recovery lasts the restart, the first cloud sync under the faults
	// (a few seconds) and the quarantine.
	const recovery = recoveryGrace + 10*time.Second
	damaged := map[*cluster.Node]time.Time{}
	for first := true; ; first = false {
		wait := r.prof.KillMin + time.Duration(rng.Int64N(int64(r.prof.KillMax-r.prof.KillMin)+1))
		if first && r.prof.FirstKill > 0 {
			wait = r.prof.FirstKill
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		n := r.c.Nodes[rng.IntN(len(r.c.Nodes))]
		harm := rng.Float64() < r.prof.DamageRate
		kind := Damage(rng.IntN(int(numDamages)))
		if time.Since(damaged[n]) < recovery && !beforeEnd(ctx, recovery) {
			continue
		}
		if err := n.StopIPAMD(syscall.SIGKILL); err != nil {
			r.violation("kill vnet-ipamd on %s: %v", n.Name, err)
		}
		if harm && beforeEnd(ctx, recoveryGrace) {
			r.damage(n, kind, rng)
			damaged[n] = time.Now()
		}
		time.Sleep(time.Duration(rng.Int64N(int64(r.prof.DownMax) + 1)))
		if err := n.StartIPAMD(); err != nil {
			r.violation("restart vnet-ipamd on %s: %v", n.Name, err)
			continue
		}
		r.restarts.Add(1)
		r.log.Info("vnet-ipamd killed and restarted", "node", n.Name)
	}
}

// beforeEnd tells whether ctx ends more than d from now.
func beforeEnd(ctx context.Context, d time.Duration) bool {
	end, ok := ctx.Deadline()
	return !ok || time.Until(end) > d
}

// damage inflicts kind on the store of n, whose daemon is down, and counts it.
func (r *runner) damage(n *cluster.Node, kind Damage, rng *rand.Rand) {
	got, what, err := damageStore(n.Config.StoreDir, kind, rng)
	if err != nil {
		r.violation("damage the store of %s (%s): %v", n.Name, kind, err)
		return
	}
	r.mu.Lock()
	switch got {
	case DamageTruncate:
		r.damages.Truncated++
	case DamageZero:
		r.damages.Zeroed++
	case DamageDelete:
		r.damages.Deleted++
	}
	r.mu.Unlock()
	r.log.Info("store damaged while vnet-ipamd is down", "node", n.Name, "damage", got, "what", what)
}

// settle ends the faults, makes sure every daemon runs and is ready,
// finishes the DELs that failed, and runs GC with the live pods as the
// runtime does after a restart.
func (r *runner) settle(ctx context.Context) {
	r.clearFaults()
	for _, n := range r.c.Nodes {
		if !n.Running() {
			if err := n.StartIPAMD(); err != nil {
				r.violation("start vnet-ipamd on %s: %v", n.Name, err)
			}
		}
		if err := n.WaitReady(ctx); err != nil {
			r.violation("vnet-ipamd on %s not ready after the churn: %v", n.Name, err)
		}
	}
	r.log.Info("churn over, every daemon ready")
	r.settleDrift(ctx)
	for ni, n := range r.c.Nodes {
		for _, s := range r.slots[ni] {
			if s.pod == nil || !s.dirty {
				continue
			}
			ok := false
			for range 5 {
				if ok = r.del(ctx, n, s); ok {
					break
				}
				time.Sleep(500 * time.Millisecond)
			}
			if !ok {
				r.violation("DEL of %s/%s never succeeded", n.Name, s.pod.Name)
			}
		}
		r.checkDeleted(ctx, n)
		var live []*cluster.Pod
		for _, s := range r.slots[ni] {
			if s.live {
				live = append(live, s.pod)
			}
		}
		r.ops.Add(1)
		if err := n.GC(ctx, live); err != nil {
			r.violation("GC on %s: %v", n.Name, err)
		}
	}
}

// checkDeleted runs before GC, which would hide it: no address is assigned
// to a pod whose DEL succeeded. A daemon may take a few seconds after it is
// ready to release what a damaged store resurrected (the end of its
// recovery), so this is awaited.
func (r *runner) checkDeleted(ctx context.Context, n *cluster.Node) {
	var last []string
	err := nsnet.Eventually(10*time.Second, func() error {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		list, err := n.Client().List(cctx, api.ListRequest{})
		if err != nil {
			return err
		}
		last = last[:0]
		r.mu.Lock()
		for _, a := range list.Addresses {
			if a.State == string(store.StateAssigned) && r.deleted[a.ContainerID] {
				last = append(last, fmt.Sprintf("%s to %s/%s", a.IP, short(a.ContainerID), a.IfName))
			}
		}
		r.mu.Unlock()
		if len(last) > 0 {
			return fmt.Errorf("%d assigned", len(last))
		}
		return nil
	})
	if err != nil {
		r.violation("%s: addresses assigned to pods whose DEL succeeded, before GC: %v (%v)", n.Name, last, err)
	}
}

// ec2Faults is faults on the simulated EC2.
func (r *runner) ec2Faults(ctx context.Context) {
	base := ec2.Faults{
		Latency: map[string]ec2.Duration{"*": ec2.Duration(r.prof.Latency)},
		Errors: map[string]ec2.ErrorFault{"*": {
			Rate: r.prof.ErrorRate, Status: 503, Code: "Unavailable", Message: "injected by the soak",
		}},
	}
	e := r.sim.EC2()
	e.SetFaults(base)
	defer e.SetFaults(ec2.Faults{})
	t := time.NewTicker(r.prof.StormEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f := base
			f.Storm = &ec2.Storm{Duration: ec2.Duration(r.prof.StormLength)}
			e.SetFaults(f)
			r.log.Info("RequestLimitExceeded storm", "length", r.prof.StormLength)
		}
	}
}
