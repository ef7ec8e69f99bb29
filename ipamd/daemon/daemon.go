// Package daemon is the heart of vnet-ipamd: it keeps the node's warm pool of
// secondary addresses filled through the cloud, hands addresses out to the
// CNI plugin over the rpc socket from that pool (never calling the cloud on
// that path), persists every change in the store, reconciles with the cloud
// and reports readiness.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/vnet-cni/vnet-cni/cloud"
	"github.com/vnet-cni/vnet-cni/internal/atomicfile"
	"github.com/vnet-cni/vnet-cni/ipamd/api"
	"github.com/vnet-cni/vnet-cni/ipamd/pool"
	"github.com/vnet-cni/vnet-cni/ipamd/store"
)

// Cloud is what the daemon needs of a cloud provider. Interfaces are named
// by the IDs that Instance reports.
type Cloud interface {
	// Instance reads the instance: its interfaces with their addresses,
	// the network's address space and the provider's limits. Called right
	// after connecting (the daemon is not ready before it succeeds) and on
	// every resync.
	Instance(ctx context.Context) (cloud.Instance, error)
	// AddAddresses adds n secondary addresses, chosen by the cloud, to the
	// interface iface in one update and returns them; called when the pool
	// is short. Addresses it returns with an error are on the interface.
	AddAddresses(ctx context.Context, iface string, n int) ([]netip.Addr, error)
	// RemoveAddresses removes ips from the interface iface in one update;
	// called to release excess and to finish a release a crash or an error
	// cut. Addresses already gone are ignored.
	RemoveAddresses(ctx context.Context, iface string, ips []netip.Addr) error
	// RestoreAddresses puts ips, addresses the daemon assigned that left
	// the interface iface outside vnet-ipamd, back on it by value, in one
	// update; called after a resync found them missing. Addresses already
	// on the interface are ignored. All or nothing: an address another
	// interface holds fails it with a *cloud.Error of kind AddressInUse.
	RestoreAddresses(ctx context.Context, iface string, ips []netip.Addr) error
}

// InterfaceCloud is a Cloud whose instances take further interfaces for pod
// addresses, which the daemon attaches and detaches itself (AWS's ENIs). With
// such a cloud the pool fills the attached interfaces by device index and
// attaches one more when they are full, up to the provider's limit; with any
// other the pool fills the primary interface only.
type InterfaceCloud interface {
	Cloud
	// AddInterface creates an interface for pod addresses, attaches it to
	// the instance and returns it once it is attached (Owned set); called
	// when the pool is short and every attached interface is full. On an
	// error nothing it created is left behind.
	AddInterface(ctx context.Context) (cloud.Interface, error)
	// RemoveInterface detaches and deletes the interface id, one the
	// daemon added (Owned) and that holds no secondary address; called
	// once no pod has held one of its addresses for the pool's release
	// delay and the daemon has released its free ones, while the pool
	// needs no more addresses. An interface already gone is success.
	RemoveInterface(ctx context.Context, id string) error
}

// Sweeper is a Cloud that can find interfaces of dead instances of the
// cluster (created by vnet-cni on a node that went away with them attached,
// left behind by the cloud) and delete them. The daemon calls Sweep every
// Options.SweepInterval; several nodes sweeping at once is harmless.
type Sweeper interface {
	// Sweep deletes the cluster's interfaces whose instance is gone, and
	// returns their IDs.
	Sweep(ctx context.Context) ([]string, error)
}

// Connect creates the cloud provider; the daemon calls it until it succeeds.
type Connect func(ctx context.Context) (Cloud, error)

// Options configure the daemon.
type Options struct {
	// Targets are the pool sizes at start; SetTargets changes them.
	Targets pool.Targets
	// TargetsFrom says what set Targets (see SetTargetsFrom); default
	// "config".
	TargetsFrom string
	// InitialBatch is the number of addresses the first fill of an empty
	// pool asks for at least (the cluster template's ipAddressCount).
	InitialBatch int
	// Cooldown is how long a released address waits before reuse.
	Cooldown time.Duration
	// AllocateWait bounds how long an allocation waits for a refill when
	// the pool is empty before it answers "try again".
	AllocateWait time.Duration
	// ResyncInterval is the period of the safety-net resync with the cloud.
	ResyncInterval time.Duration
	// MinWriteInterval merges bursts: cloud writes are at least this far apart.
	MinWriteInterval time.Duration
	// StoreProbeInterval is the period of the store's probe (store.Probe):
	// the daemon is not ready while the store cannot write, and ready again
	// at the first probe that succeeds.
	StoreProbeInterval time.Duration
	// NodeName is the Kubernetes node name (reported in status).
	NodeName string
	// MTU is the MTU pods get (Azure: 1500).
	MTU int
	// BootID is the kernel's boot id; a change since the store was last
	// used means the node rebooted and every pod's datapath is gone.
	BootID string
	// ReleaseSpool is the directory where the plugin records releases it
	// could not hand over (see package spool); drained on every round.
	ReleaseSpool string
	// Witness is the datapath's record of the live attachments (see
	// Witness); nil runs without one, trusting the store alone.
	Witness Witness
	// RecoveryGrace is how long addresses are quarantined after the store
	// was found damaged or lost (and what a live veth holds without naming
	// its attachment stays held after it is gone): longer than the
	// plugin's datapath timeout, within which an ADD that had its address
	// records its pod on its veth.
	RecoveryGrace time.Duration
	// Conflist is written atomically once the daemon is ready, and again
	// whenever it is deleted or changed.
	Conflist Conflist
	// Datapath, when set, is the node's datapath the daemon keeps: set up
	// before the conflist is written, repaired on changes (see Datapath).
	Datapath Datapath
	// DatapathInterval is the period of the datapath and conflist checks
	// (default 2s); change events trigger them sooner.
	DatapathInterval time.Duration
	// SweepInterval is the period of the sweep for leaked interfaces, with
	// a cloud that is a Sweeper (default 5m); the first sweep is one
	// interval after the first sync.
	SweepInterval time.Duration
	Logger        *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Conflist is the CNI network configuration file the daemon writes when ready.
type Conflist struct {
	// Path is the file (e.g. /etc/cni/net.d/10-vnet-cni.conflist); empty disables writing.
	Path string
	// Build returns the file's content for the instance the daemon found
	// (the plugin learns the network's address space from it); when nil,
	// Data is written.
	Build func(inst cloud.Instance) []byte
	Data  []byte
}

func (o *Options) setDefaults() {
	if o.TargetsFrom == "" {
		o.TargetsFrom = TargetsFromConfig
	}
	if o.Cooldown == 0 {
		o.Cooldown = 30 * time.Second
	}
	if o.AllocateWait == 0 {
		o.AllocateWait = 5 * time.Second
	}
	if o.ResyncInterval == 0 {
		o.ResyncInterval = time.Minute
	}
	if o.MinWriteInterval == 0 {
		o.MinWriteInterval = 200 * time.Millisecond
	}
	if o.StoreProbeInterval == 0 {
		o.StoreProbeInterval = time.Second
	}
	if o.MTU == 0 {
		o.MTU = 1500
	}
	if o.DatapathInterval == 0 {
		o.DatapathInterval = defaultDatapathInterval
	}
	if o.RecoveryGrace == 0 {
		o.RecoveryGrace = 30 * time.Second
	}
	if o.SweepInterval == 0 {
		o.SweepInterval = 5 * time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// Daemon is the address manager of one node.
type Daemon struct {
	opts    Options
	store   *store.Store
	connect Connect
	log     *slog.Logger
	metrics *Metrics
	kickCh  chan struct{}
	// instanceCh tells the datapath keeper that the instance was read.
	instanceCh chan struct{}
	// changed is Changes.
	changed chan struct{}

	// mu guards the fields below.
	mu sync.Mutex
	// targets are the pool sizes (see SetTargets); targetsFrom says what
	// set them.
	targets     pool.Targets
	targetsFrom string
	// cloud is nil until connect succeeded.
	cloud Cloud
	// inst is the instance as last read (interfaces the daemon added or
	// removed since are added or removed in it too); iface is its primary
	// interface; capacity is the provider's limit of secondary addresses
	// on the interfaces the pool may fill.
	inst     cloud.Instance
	iface    cloud.Interface
	capacity int
	// emptySince is when each interface the daemon may remove was first
	// seen with no address a pod holds or held (free ones only, or none);
	// nextSweep is when the next sweep for leaked interfaces is due.
	emptySince map[string]time.Time
	nextSweep  time.Time
	// synced is true after the first successful read of the instance.
	synced bool
	ready  bool
	// notReadyReason says why the daemon is not ready.
	notReadyReason string
	// datapathDone is true once Datapath.Ensure succeeded; datapathErr is
	// the outcome of the last one.
	datapathDone bool
	datapathErr  error
	// datapathIfaces names the interfaces of the last successful Ensure.
	datapathIfaces string
	// storeErr is set while the store cannot write (a change or the probe
	// failed with store.ErrUnwritable); the daemon is not ready meanwhile.
	storeErr     error
	limitReached bool
	lastCloudErr error
	// lastErr is the last cloud error, kept after a success (see Report).
	lastErr *CloudError
	// pending counts allocations waiting for a refill.
	pending int
	// freed is closed (and replaced) whenever addresses become free.
	freed chan struct{}
	// Scheduling of the worker.
	backoffUntil  time.Time
	backoff       time.Duration
	deniedBackoff time.Duration
	nextResync    time.Time
	lastWrite     time.Time
	// firstFill is true until the first allocation; fillTo is the pool's
	// size its template asked for (InitialBatch), zero once reached.
	firstFill bool
	fillTo    int
	// partialSince is when a release was first held back (see holdPartialRelease).
	partialSince time.Time
	// restoreDue is set by every resync and cleared by an attempt to put the
	// lost addresses back (see restoreLost); restoreErr says why the last
	// attempt for an address was refused.
	restoreDue bool
	restoreErr map[netip.Addr]string
	// recovery is the store's recovery in progress, nil when none.
	recovery *recovery
	// witnessConflicts are the live attachments the witness could not
	// give their address to at its last read (see reportWitness).
	witnessConflicts map[string]string
	// promoteAfter holds promotions back after a failed read of the
	// witness (see guardPromotion).
	promoteAfter time.Time
	// holds keep the daemon not ready, by name (see SetHold).
	holds map[string]string
}

// New returns a daemon over an open store. Start its worker with Run.
func New(st *store.Store, connect Connect, opts Options) (*Daemon, error) {
	opts.setDefaults()
	d := &Daemon{
		opts:           opts,
		targets:        opts.Targets,
		store:          st,
		connect:        connect,
		log:            opts.Logger,
		kickCh:         make(chan struct{}, 1),
		instanceCh:     make(chan struct{}, 1),
		changed:        make(chan struct{}, 1),
		targetsFrom:    opts.TargetsFrom,
		freed:          make(chan struct{}),
		notReadyReason: "connecting to the cloud",
		firstFill:      true,
		restoreErr:     map[netip.Addr]string{},
		emptySince:     map[string]time.Time{},
	}
	d.metrics = newMetrics(d)
	if err := opts.Targets.Validate(); err != nil {
		return nil, fmt.Errorf("pool targets: %w", err)
	}
	if err := d.openRecovery(); err != nil {
		return nil, err
	}
	if err := d.handleReboot(); err != nil {
		return nil, err
	}
	return d, nil
}

// SetTargets replaces the pool sizes of a running daemon, for example after
// the configuration file changed; the worker plans with them at once. Bad
// targets are refused and the old ones kept.
func (d *Daemon) SetTargets(t pool.Targets) error {
	return d.SetTargetsFrom(t, TargetsFromConfig)
}

func (d *Daemon) setTargets(t pool.Targets, from string) error {
	if err := t.Validate(); err != nil {
		return fmt.Errorf("pool targets: %w", err)
	}
	d.mu.Lock()
	old, oldFrom := d.targets, d.targetsFrom
	d.targets, d.targetsFrom = t, from
	d.partialSince = time.Time{}
	d.mu.Unlock()
	if old != t || oldFrom != from {
		d.log.Info("pool targets changed", "warmIPTarget", t.WarmIPTarget, "minIPTarget", t.MinIPTarget,
			"maxIPs", t.MaxIPs, "batchSize", t.BatchSize, "releaseDelay", t.ReleaseDelay.String(), "from", from)
	}
	d.kick()
	return nil
}

// ceilingLocked is the most secondary addresses the pool may hold now.
func (d *Daemon) ceilingLocked() int { return pool.Ceiling(d.targets, d.capacity) }

// handleReboot records the boot id; after a reboot every pod is gone, so
// every assigned address starts its cooldown.
func (d *Daemon) handleReboot() error {
	if d.opts.BootID == "" {
		return nil
	}
	rebooted, err := d.store.SetBootID(d.opts.BootID)
	if err != nil {
		return fmt.Errorf("record boot id: %w", err)
	}
	if !rebooted {
		return nil
	}
	n := 0
	for _, r := range d.store.List() {
		if r.State != store.StateAssigned {
			continue
		}
		if _, _, err := d.store.Release(r.Owner.Attachment()); err != nil {
			return fmt.Errorf("release %s after reboot: %w", r.IP, err)
		}
		n++
	}
	d.log.Info("node rebooted since the store was last used: released the assignments of the previous boot", "released", n)
	return nil
}

// Metrics returns the daemon's Prometheus metrics.
func (d *Daemon) Metrics() *Metrics { return d.metrics }

// kick asks the worker to look at the pool soon.
func (d *Daemon) kick() {
	select {
	case d.kickCh <- struct{}{}:
	default:
	}
}

// Reconnect ends the back-off of a daemon that is not connected, so that
// its next round connects at once: what its connection waited for changed
// (kubenet: the Node's pod CIDR appeared). Once connected it does nothing.
func (d *Daemon) Reconnect() {
	d.mu.Lock()
	waiting := d.cloud == nil
	if waiting {
		d.backoffUntil = time.Time{}
	}
	d.mu.Unlock()
	if waiting {
		d.kick()
	}
}

// signalFreeLocked wakes allocations waiting for a free address.
func (d *Daemon) signalFreeLocked() {
	close(d.freed)
	d.freed = make(chan struct{})
}

func (d *Daemon) signalFree() {
	d.mu.Lock()
	d.signalFreeLocked()
	d.mu.Unlock()
}

// Run connects to the cloud and runs the pool worker, the datapath keeper
// and the store's probe until ctx is done.
func (d *Daemon) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { d.keepDatapath(ctx) })
	wg.Go(func() { d.probeStore(ctx) })
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-d.kickCh:
		case <-timer.C:
		}
		wait := d.step(ctx)
		d.notify()
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(wait)
	}
}

// conflistData is the conflist's wanted content.
func (d *Daemon) conflistData() []byte {
	c := d.opts.Conflist
	if c.Build == nil {
		return c.Data
	}
	d.mu.Lock()
	inst := d.inst
	d.mu.Unlock()
	return c.Build(inst)
}

// writeConflist writes the CNI configuration.
func (d *Daemon) writeConflist() error {
	c := d.opts.Conflist
	if c.Path == "" {
		return nil
	}
	data := d.conflistData()
	if err := os.MkdirAll(filepath.Dir(c.Path), 0o755); err != nil {
		return fmt.Errorf("create cni conf dir: %w", err)
	}
	if err := atomicfile.Write(c.Path, data, 0o644); err != nil {
		return fmt.Errorf("write cni conflist: %w", err)
	}
	d.log.Info("wrote cni network configuration", "path", c.Path)
	return nil
}

// probeStore runs the store's probe every StoreProbeInterval until ctx is
// done.
func (d *Daemon) probeStore(ctx context.Context) {
	t := time.NewTicker(d.opts.StoreProbeInterval)
	defer t.Stop()
	for {
		d.setStoreErr(d.store.Probe())
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// storeFailed records err when it says that the store cannot write, and
// reports whether it does.
func (d *Daemon) storeFailed(err error) bool {
	if !errors.Is(err, store.ErrUnwritable) {
		return false
	}
	d.setStoreErr(err)
	return true
}

// setStoreErr records whether the store can write (err nil) and logs the
// changes between the two.
func (d *Daemon) setStoreErr(err error) {
	if err != nil && !errors.Is(err, store.ErrUnwritable) {
		// Closed at shutdown: nothing to report.
		return
	}
	d.mu.Lock()
	was := d.storeErr
	d.storeErr = err
	d.mu.Unlock()
	switch {
	case err != nil && was == nil:
		d.metrics.storeFailures.Inc()
		d.log.Error("the store cannot write: not ready until it can; nothing acknowledged is lost", "err", err)
	case err == nil && was != nil:
		d.log.Info("the store can write again", "after", was.Error())
		// Spooled releases and the pool's changes waited for the store.
		d.kick()
	}
}

// unwritable is the error for a call the daemon cannot serve while its store
// cannot write: NotReady, which the plugin turns into "try again later" (ADD)
// or a spooled release (DEL).
func unwritable(err error) error {
	return api.Errorf(api.CodeNotReady, "vnet-ipamd cannot write its store, try again later: %v", err)
}
