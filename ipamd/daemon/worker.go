package daemon

import (
	"context"
	"errors"
	"maps"
	"net/netip"
	"slices"
	"time"

	"github.com/vnet-cni/vnet-cni/cloud"
	"github.com/vnet-cni/vnet-cni/ipamd/api"
	"github.com/vnet-cni/vnet-cni/ipamd/pool"
	"github.com/vnet-cni/vnet-cni/ipamd/store"
)

// Back-off bounds of the worker after cloud errors.
const (
	minBackoff      = time.Second
	maxBackoff      = 30 * time.Second
	conflictBackoff = 200 * time.Millisecond
	// A refused permission is asked again after minDeniedBackoff, then
	// twice as long each time, up to maxDeniedBackoff.
	minDeniedBackoff = 5 * time.Minute
	maxDeniedBackoff = time.Hour
)

// step does one round of the pool worker: connect, resync, promote cooled
// addresses, finish an interrupted release, plan, and make at most one cloud
// write. It returns how long to sleep before the next round (a kick wakes
// the worker earlier).
func (d *Daemon) step(ctx context.Context) time.Duration {
	now := d.opts.Now()
	d.mu.Lock()
	until := d.backoffUntil
	c, synced, resyncDue := d.cloud, d.synced, !now.Before(d.nextResync)
	storeErr := d.storeErr
	d.mu.Unlock()
	if storeErr != nil {
		// Every step records its outcome in the store: an address the
		// cloud added now would be known to no one until a resync. The
		// probe kicks the worker when the store can write again.
		return d.opts.StoreProbeInterval
	}
	d.drainSpool()
	if now.Before(until) {
		// No cloud call before the back-off ends, but what needs none
		// goes on: cooled addresses return to the pool meanwhile.
		if !synced {
			return until.Sub(now)
		}
		d.tend(ctx, now)
		return d.nextLocalWake(now, until, d.store.List())
	}

	if c == nil {
		var err error
		if c, err = d.connectCloud(ctx); err != nil {
			return d.fail("connect", err)
		}
	}
	if !synced || resyncDue {
		if err := d.sync(ctx, c); err != nil {
			return d.fail("resync", err)
		}
	}
	d.tend(ctx, now)

	records := d.store.List()
	// Addresses the daemon assigned that left the interface outside
	// vnet-ipamd go back on it before anything else changes the NIC. Only
	// those a pod still holds: a released (cooling) one has no pod to
	// keep, and putting it back could take it from the NIC the subnet gave
	// it to since, whose pod may hold it now. It is forgotten after its
	// cooldown instead (forgetLost). Nor those a recovery holds for
	// attachments without a veth, until it has decided about them.
	if lost := d.restorable(records); len(lost) > 0 && d.isRestoreDue() {
		if wait, ok := d.writeDelay(now); !ok {
			return wait
		}
		if err := d.restoreLost(ctx, c, records, ipsOf(lost)); err != nil {
			return d.fail("restore", err)
		}
		return 0
	}
	// A release that failed or was cut by a crash is finished first: its
	// addresses may already be gone from the NIC, so they are never reused.
	if releasing := ipsIn(records, store.StateReleasing); len(releasing) > 0 {
		if wait, ok := d.writeDelay(now); !ok {
			return wait
		}
		if err := d.release(ctx, c, d.byInterface(records, releasing)); err != nil {
			return d.fail("release", err)
		}
		return 0
	}

	dec := pool.Plan(d.planInput(now, records))
	d.mu.Lock()
	d.limitReached = dec.LimitReached
	d.mu.Unlock()
	d.updateReadiness(records)

	switch dec.Action {
	case pool.ActionAllocate:
		if wait, ok := d.writeDelay(now); !ok {
			return wait
		}
		n := dec.Allocate
		d.mu.Lock()
		if d.firstFill && len(records) == 0 {
			// The template's ipAddressCount is the first fill, within the
			// ceiling; it takes a round per interface it spreads over.
			d.fillTo = min(d.opts.InitialBatch, d.ceilingLocked())
		}
		d.firstFill = false
		if d.fillTo > len(records) {
			n = max(n, d.fillTo-len(records))
		} else {
			d.fillTo = 0
		}
		d.mu.Unlock()
		if err := d.allocate(ctx, c, records, n, dec.Reason); err != nil {
			return d.fail("allocate", err)
		}
		return 0
	case pool.ActionRelease:
		if wait, hold := d.holdPartialRelease(now, dec); hold {
			return wait
		}
		if wait, ok := d.writeDelay(now); !ok {
			return wait
		}
		d.log.Info("releasing addresses", "count", len(dec.Release), "reason", dec.Reason)
		if err := d.store.MarkReleasing(dec.Release...); err != nil {
			d.log.Error("mark addresses releasing", "err", err)
			return d.fail("release", err)
		}
		if err := d.release(ctx, c, d.byInterface(records, dec.Release)); err != nil {
			return d.fail("release", err)
		}
		return 0
	}
	d.mu.Lock()
	d.partialSince = time.Time{}
	d.mu.Unlock()
	if !dec.LimitReached {
		if wait, acted := d.removeEmptyInterfaces(ctx, c, now, records); acted {
			return wait
		}
	}
	d.sweep(ctx, c, now)
	if dec.LimitReached {
		d.log.Debug("pool limit reached", "reason", dec.Reason)
	}
	return d.nextWake(now, records, dec)
}

// tend does the part of a round that needs no cloud call: it frees the
// addresses whose cooldown is over (after the datapath check), forgets lost
// addresses released long ago and ends a recovery whose grace is over.
func (d *Daemon) tend(ctx context.Context, now time.Time) {
	switch ok, err := d.guardPromotion(ctx, now, d.store.List()); {
	case d.storeFailed(err):
	case err != nil:
		// Nothing becomes free that a live pod may hold.
		d.log.Warn("cannot check the datapath before freeing addresses: none freed for now", "retryIn", witnessRetry.String(), "err", err)
	case ok:
		d.promote(now)
	}
	d.forgetLost(now)
	d.endRecovery(ctx, now)
}

// promote frees the addresses whose cooldown or quarantine is over.
func (d *Daemon) promote(now time.Time) {
	promoted, err := d.store.Promote(now, d.opts.Cooldown)
	if err != nil {
		d.storeFailed(err)
		d.log.Error("promote cooled addresses", "err", err)
		return
	}
	if len(promoted) > 0 {
		d.log.Debug("addresses back in the pool after cooldown or quarantine", "count", len(promoted))
		d.signalFree()
	}
}

// drainSpool finishes the releases the plugin spooled while the daemon was
// unreachable. Each carries the stamp of its DEL: one made before the
// attachment's latest Allocate (the attachment was ADDed again after the
// DEL) belongs to the earlier assignment and frees nothing, and one spooled
// in an earlier boot of the node is dropped: every assignment of that boot
// ended with it, and the boot clock of the two boots cannot be compared.
func (d *Daemon) drainSpool() {
	if d.opts.ReleaseSpool == "" {
		return
	}
	released := 0
	_, err := api.DrainSpool(d.opts.ReleaseSpool, func(r api.PendingRelease) error {
		a := store.Attachment{ContainerID: r.ContainerID, IfName: r.IfName}
		at := r.Stamp()
		if boot := api.KernelBootID(); at.BootID != "" && boot != "" && at.BootID != boot {
			d.metrics.supersededReleases.Inc()
			d.log.Info("dropped a release spooled in an earlier boot of the node", "containerID", a.ContainerID, "ifName", a.IfName,
				"spooledAt", r.At, "bootID", at.BootID)
			return nil
		}
		rec, known, err := d.store.ReleaseAt(a, store.Stamp{Boot: at.Boot, BootID: at.BootID, Wall: at.Wall})
		switch {
		case errors.Is(err, store.ErrSuperseded):
			d.superseded("spool", a, rec)
			return nil
		case err != nil:
			return err
		case known:
			released++
		}
		return nil
	})
	if err != nil {
		d.storeFailed(err)
		d.log.Warn("release spool", "err", err)
	}
	if released > 0 {
		d.metrics.releases.Add(float64(released))
		d.log.Info("finished releases spooled by the plugin while the daemon was away", "count", released)
		d.kick()
	}
}

// superseded reports a release that was made before the attachment's latest
// allocation and therefore freed nothing.
func (d *Daemon) superseded(via string, a store.Attachment, r store.Record) {
	d.metrics.supersededReleases.Inc()
	d.log.Warn("ignored a release made before the attachment's latest allocation: it belongs to an earlier assignment",
		"via", via, "containerID", a.ContainerID, "ifName", a.IfName, "ip", r.IP.String())
}

// forgetLost drops the lost addresses whose owner released them at least a
// cooldown ago: nothing holds them, and the cloud does not have them.
func (d *Daemon) forgetLost(now time.Time) {
	gone, err := d.store.ForgetLost(now, d.opts.Cooldown)
	if err != nil {
		d.storeFailed(err)
		d.log.Error("forget lost addresses", "err", err)
		return
	}
	d.mu.Lock()
	for _, r := range gone {
		delete(d.restoreErr, r.IP)
	}
	d.mu.Unlock()
	for _, r := range gone {
		d.log.Warn("forgot a lost address: its owner released it and the cloud never gave it back",
			"ip", r.IP.String(), "containerID", r.Owner.ContainerID, "ifName", r.Owner.IfName, "lostSince", r.LostAt)
	}
}

func (d *Daemon) isRestoreDue() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.restoreDue
}

// restoreLost puts the lost addresses back on their interfaces, one update
// per interface. The update is all or nothing, so when the cloud refuses
// one with several addresses (another interface holds one of them), each
// is tried alone. A refused address stays lost, with its owner and out of
// the pool, and is tried again after the next resync; a transient error is
// returned for the worker's back-off.
func (d *Daemon) restoreLost(ctx context.Context, c Cloud, records []store.Record, lost []netip.Addr) error {
	restored := false
	byIface := d.byInterface(records, lost)
	for _, iface := range slices.Sorted(maps.Keys(byIface)) {
		ips := byIface[iface]
		err := d.restoreOn(ctx, c, iface, ips, len(ips) == 1)
		if err == nil {
			restored = true
			continue
		}
		if !refused(err) {
			return err
		}
		if len(ips) == 1 {
			continue
		}
		for _, ip := range ips {
			err := d.restoreOn(ctx, c, iface, []netip.Addr{ip}, true)
			if err == nil {
				restored = true
			} else if !refused(err) {
				return err
			}
		}
	}
	d.mu.Lock()
	d.restoreDue = false
	if restored {
		// Read the interface again: the resync clears what is back.
		d.nextResync = d.opts.Now()
	}
	d.mu.Unlock()
	d.succeeded()
	return nil
}

// restoreOn makes one update putting ips back on iface; report records a
// refusal as the addresses' restore error.
func (d *Daemon) restoreOn(ctx context.Context, c Cloud, iface string, ips []netip.Addr, report bool) error {
	start := time.Now()
	err := c.RestoreAddresses(ctx, iface, ips)
	d.metrics.observeCloud("restore_ips", start, err)
	d.mu.Lock()
	d.lastWrite = d.opts.Now()
	d.mu.Unlock()
	strs := make([]string, len(ips))
	for i, ip := range ips {
		strs[i] = ip.String()
	}
	switch {
	case err == nil:
		d.mu.Lock()
		for _, ip := range ips {
			delete(d.restoreErr, ip)
		}
		d.mu.Unlock()
		d.metrics.restores.WithLabelValues("ok").Add(float64(len(ips)))
		d.log.Info("put addresses removed outside vnet-ipamd back on their interface", "interface", iface, "ips", strs)
	case refused(err) && report:
		d.mu.Lock()
		for _, ip := range ips {
			d.restoreErr[ip] = cloud.Reason(err)
		}
		d.mu.Unlock()
		d.metrics.restores.WithLabelValues(cloud.KindOf(err).String()).Add(float64(len(ips)))
		d.log.Error("cannot put back an address removed outside vnet-ipamd: it stays with its owner and out of the pool; trying again after the next resync",
			"interface", iface, "ips", strs, "kind", cloud.KindOf(err).String(), "err", err)
	}
	return err
}

// refused reports a cloud error that asking again soon will not change for
// these addresses: another interface holds one, the interface is full, or
// the cloud refused the request.
func refused(err error) bool {
	switch cloud.KindOf(err) {
	case cloud.AddressInUse, cloud.NICLimit, cloud.InterfaceLimit, cloud.SubnetFull, cloud.Fatal, cloud.Denied:
		return true
	}
	return false
}

// restorable are the lost records whose address a pod still holds.
func (d *Daemon) restorable(records []store.Record) []store.Record {
	d.mu.Lock()
	var stale []store.Record
	if d.recovery != nil {
		stale = d.recovery.stale
	}
	d.mu.Unlock()
	var out []store.Record
	for _, r := range lostRecords(records) {
		if r.State == store.StateAssigned && !slices.ContainsFunc(stale, func(s store.Record) bool {
			return s.IP == r.IP && s.Owner.Attachment() == r.Owner.Attachment()
		}) {
			out = append(out, r)
		}
	}
	return out
}

// lostRecords are the records whose address the cloud lost.
func lostRecords(records []store.Record) []store.Record {
	var out []store.Record
	for _, r := range records {
		if r.Lost() {
			out = append(out, r)
		}
	}
	return out
}

// holdPartialRelease keeps a release back while part of the excess still
// waits for its release delay, so that the excess goes back to the cloud in
// one NIC update rather than one per address age. It holds at most one
// release delay, so churn that keeps producing young free addresses cannot
// postpone a release for ever.
func (d *Daemon) holdPartialRelease(now time.Time, dec pool.Decision) (time.Duration, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if dec.RecheckAt.IsZero() {
		d.partialSince = time.Time{}
		return 0, false
	}
	if d.partialSince.IsZero() {
		d.partialSince = now
	}
	if now.Sub(d.partialSince) >= d.targets.ReleaseDelay {
		d.partialSince = time.Time{}
		return 0, false
	}
	return max(dec.RecheckAt.Sub(now), time.Millisecond), true
}

// writeDelay merges bursts: a cloud write waits until MinWriteInterval has
// passed since the last one.
func (d *Daemon) writeDelay(now time.Time) (time.Duration, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if next := d.lastWrite.Add(d.opts.MinWriteInterval); now.Before(next) {
		return next.Sub(now), false
	}
	return 0, true
}

func (d *Daemon) connectCloud(ctx context.Context) (Cloud, error) {
	start := time.Now()
	c, err := d.connect(ctx)
	d.metrics.observeCloud("connect", start, err)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	d.cloud = c
	d.mu.Unlock()
	return c, nil
}

// sync reads the instance and aligns the store with its interfaces.
func (d *Daemon) sync(ctx context.Context, c Cloud) error {
	start := time.Now()
	inst, err := c.Instance(ctx)
	d.metrics.observeCloud("nic_read", start, err)
	if err != nil {
		return err
	}
	primary, ok := inst.Primary()
	if !ok {
		return &cloud.Error{Kind: cloud.Fatal, Op: "read instance", Err: errors.New("the instance has no primary interface")}
	}
	onCloud := map[netip.Addr]string{}
	for _, ifc := range inst.Interfaces {
		for _, ip := range ifc.Secondary {
			onCloud[ip] = ifc.ID
		}
	}
	if d.opts.Witness != nil {
		// Before Reconcile makes unknown addresses free: a live pod's
		// address is claimed first.
		if err := d.applyWitness(ctx, inst, onCloud); err != nil {
			return err
		}
	}
	res, err := d.store.Reconcile(onCloud)
	if err != nil {
		return err
	}
	d.mu.Lock()
	first := !d.synced
	d.inst, d.iface = inst, primary
	d.capacity = inst.Limits.Secondaries(managedInterfaces(c, inst))
	d.mu.Unlock()
	if first {
		d.log.Info("connected to the cloud", "provider", inst.Provider, "instance", inst.Name, "interface", primary.ID,
			"primaryIP", primary.PrimaryIP.String(), "subnet", primary.Subnet.String(), "gateway", primary.Gateway.String(),
			"interfaces", len(inst.Interfaces), "addressesPerInterface", inst.Limits.AddressesPerInterface)
	}
	if len(res.Added) > 0 {
		d.log.Info("addresses on the instance's interfaces unknown to the store are now free", "count", len(res.Added))
		d.signalFree()
	}
	if len(res.Moved) > 0 {
		d.log.Info("recorded the interface of addresses", "count", len(res.Moved))
	}
	for _, r := range res.Dropped {
		d.log.Info("address left the NIC outside vnet-ipamd; no pod held it, dropped from the store",
			"ip", r.IP.String(), "state", string(r.State))
	}
	for _, r := range res.Lost {
		d.log.Warn("an address vnet-ipamd assigned left its interface outside vnet-ipamd: it stays with its owner and out of the pool, and goes back on the interface",
			"ip", r.IP.String(), "interface", r.Interface, "state", string(r.State), "containerID", r.Owner.ContainerID, "ifName", r.Owner.IfName,
			"pod", r.Owner.PodNamespace+"/"+r.Owner.PodName)
	}
	if len(res.Found) > 0 {
		strs := make([]string, len(res.Found))
		for i, ip := range res.Found {
			strs[i] = ip.String()
		}
		d.log.Info("lost addresses are on their interface again", "ips", strs)
	}
	d.mu.Lock()
	for _, ip := range res.Found {
		delete(d.restoreErr, ip)
	}
	d.restoreDue = true
	d.synced = true
	d.nextResync = d.opts.Now().Add(d.opts.ResyncInterval)
	d.mu.Unlock()
	d.instanceChanged()
	d.succeeded()
	return nil
}

// allocate adds n addresses in one cloud update: to the first interface,
// by device index, with room (pool.Spread); when every attached interface is
// full it attaches another one instead, if the cloud takes more, and the next
// round fills it.
func (d *Daemon) allocate(ctx context.Context, c Cloud, records []store.Record, n int, reason string) error {
	shares, rest := pool.Spread(d.rooms(records), n)
	if len(shares) == 0 {
		ic, ok := c.(InterfaceCloud)
		if !ok || !d.canAttach() {
			// The capacity counts only interfaces the pool may fill, so
			// this is an interface that holds more than the limits say.
			d.log.Warn("the pool is short but every interface is full", "wanted", rest)
			return nil
		}
		d.log.Info("attaching an interface: every attached one is full", "wanted", rest, "reason", reason)
		return d.attach(ctx, ic)
	}
	iface, k := shares[0].Interface, shares[0].Count
	d.log.Info("allocating addresses", "count", k, "interface", iface, "reason", reason)
	start := time.Now()
	ips, err := c.AddAddresses(ctx, iface, k)
	d.metrics.observeCloud("add_ips", start, err)
	d.mu.Lock()
	d.lastWrite = d.opts.Now()
	d.mu.Unlock()
	if len(ips) > 0 {
		// Whatever the cloud confirmed is kept, even with an error.
		if serr := d.addFromCloud(ctx, iface, ips); serr != nil {
			return errors.Join(err, serr)
		}
		d.signalFree()
		d.metrics.allocatedFromCloud.Add(float64(len(ips)))
	}
	if err != nil {
		return err
	}
	d.succeeded()
	return nil
}

// release removes addresses (in state releasing) from their interfaces,
// one update per interface, and then from the store. On failure they stay
// releasing and the next round tries again: the outcome of a failed call is
// unknown, so they are never handed out.
func (d *Daemon) release(ctx context.Context, c Cloud, byIface map[string][]netip.Addr) error {
	for _, iface := range slices.Sorted(maps.Keys(byIface)) {
		ips := byIface[iface]
		start := time.Now()
		err := c.RemoveAddresses(ctx, iface, ips)
		d.metrics.observeCloud("remove_ips", start, err)
		d.mu.Lock()
		d.lastWrite = d.opts.Now()
		d.mu.Unlock()
		if err != nil {
			return err
		}
		if err := d.store.Remove(ips...); err != nil {
			return err
		}
		d.metrics.releasedToCloud.Add(float64(len(ips)))
	}
	d.succeeded()
	return nil
}

// byInterface groups ips by the interface their records name; a record
// without one (written before records named their interface, and not
// reconciled yet) is on the primary interface.
func (d *Daemon) byInterface(records []store.Record, ips []netip.Addr) map[string][]netip.Addr {
	d.mu.Lock()
	primary := d.iface.ID
	d.mu.Unlock()
	ifaceOf := make(map[netip.Addr]string, len(records))
	for _, r := range records {
		ifaceOf[r.IP] = r.Interface
	}
	out := map[string][]netip.Addr{}
	for _, ip := range ips {
		iface := ifaceOf[ip]
		if iface == "" {
			iface = primary
		}
		out[iface] = append(out[iface], ip)
	}
	return out
}

// fail records a cloud error and returns the back-off before the next round.
// A store that cannot write is not the cloud's fault: the round is retried
// after the store's next probe.
func (d *Daemon) fail(what string, err error) time.Duration {
	if d.storeFailed(err) {
		d.log.Warn("pool worker round cut short: the store cannot write", "step", what, "err", err)
		return d.opts.StoreProbeInterval
	}
	kind := cloud.KindOf(err)
	d.metrics.errors.WithLabelValues(kind.String()).Inc()
	d.mu.Lock()
	defer d.mu.Unlock()
	d.lastCloudErr = err
	var count uint64
	if d.lastErr != nil {
		count = d.lastErr.Count
	}
	msg := reportMessage(err)
	if len(msg) > cloud.MaxMessage {
		msg = msg[:cloud.MaxMessage]
	}
	d.lastErr = &CloudError{Kind: kind, Message: msg, At: d.opts.Now(), Active: true, Count: count + 1}
	var wait time.Duration
	switch kind {
	case cloud.Throttled:
		wait = max(cloud.RetryAfterOf(err), minBackoff)
	case cloud.Conflict:
		wait = max(cloud.RetryAfterOf(err), conflictBackoff)
	case cloud.SubnetFull, cloud.NICLimit, cloud.InterfaceLimit:
		// Nothing will change by asking again soon; a resync or a released
		// address (kick) brings the worker back.
		d.limitReached = true
		wait = d.opts.ResyncInterval
	case cloud.Denied:
		// Only an operator can change this (a role assignment): no writes
		// in a loop. The pool serves what the interfaces hold meanwhile.
		d.limitReached = true
		if d.deniedBackoff == 0 {
			d.deniedBackoff = minDeniedBackoff
		} else {
			d.deniedBackoff = min(2*d.deniedBackoff, maxDeniedBackoff)
		}
		wait = d.deniedBackoff
	default:
		if d.backoff == 0 {
			d.backoff = minBackoff
		} else {
			d.backoff = min(2*d.backoff, maxBackoff)
		}
		wait = d.backoff
	}
	d.backoffUntil = d.opts.Now().Add(wait)
	if !d.ready {
		d.notReadyReason = what + ": " + err.Error()
	}
	d.log.Warn("cloud call failed", "step", what, "kind", kind.String(), "retryIn", wait.String(), "err", err)
	return wait
}

// reportMessage is a cloud error as the Report carries it (the VNetNode's
// status, the Node's Events): the operation and the cloud's own words
// (cloud.Reason), not the SDK's dump of the request and the response.
func reportMessage(err error) string {
	var ce *cloud.Error
	if errors.As(err, &ce) && ce.Op != "" && ce.Message != "" {
		return ce.Op + ": " + cloud.Reason(err)
	}
	return err.Error()
}

func (d *Daemon) succeeded() {
	d.mu.Lock()
	d.backoff = 0
	d.deniedBackoff = 0
	d.lastCloudErr = nil
	d.mu.Unlock()
}

// updateReadiness makes the daemon ready after the first sync with a
// non-empty pool, writing the conflist on the way.
func (d *Daemon) updateReadiness(records []store.Record) {
	d.mu.Lock()
	if d.ready || !d.synced {
		d.mu.Unlock()
		return
	}
	if len(records) == 0 {
		d.notReadyReason = "the pool is empty, waiting for the first addresses"
		d.mu.Unlock()
		return
	}
	if ok, why := d.datapathReadyLocked(); !ok {
		// The keeper kicks the worker when the datapath is set up.
		d.notReadyReason = why
		d.mu.Unlock()
		return
	}
	d.mu.Unlock()
	if err := d.writeConflist(); err != nil {
		d.log.Error("cannot write the cni conflist; staying not ready", "err", err)
		d.mu.Lock()
		d.notReadyReason = err.Error()
		d.mu.Unlock()
		return
	}
	d.mu.Lock()
	d.ready = true
	d.notReadyReason = ""
	d.mu.Unlock()
	d.log.Info("ready", "addresses", len(records))
}

func (d *Daemon) planInput(now time.Time, records []store.Record) pool.Input {
	in := pool.Input{Now: now}
	// Addresses of the interface attached last go first, so that it can
	// empty and be detached.
	rank := d.deviceIndexes()
	for _, r := range records {
		switch r.State {
		case store.StateFree:
			in.Free = append(in.Free, pool.FreeIP{IP: r.IP, Since: r.Since, Rank: rank[r.Interface]})
		case store.StateAssigned:
			in.Assigned++
		case store.StateCooling, store.StateQuarantined:
			// Quarantined ones come back on their own, like cooling ones.
			in.Cooling++
		case store.StateReleasing:
			in.Releasing++
		}
	}
	d.mu.Lock()
	in.Pending = d.pending
	in.Targets = d.targets
	in.Capacity = d.capacity
	d.mu.Unlock()
	return in
}

// nextWake is the sleep until something changes on its own: the resync, the
// end of a cooldown, or a free address becoming eligible for release.
func (d *Daemon) nextWake(now time.Time, records []store.Record, dec pool.Decision) time.Duration {
	d.mu.Lock()
	next := d.nextResync
	if rec := d.recovery; rec != nil && !rec.until.IsZero() && rec.until.Before(next) {
		next = rec.until
	}
	// Addresses waiting to be freed wait for the datapath check too.
	promoteAfter := d.promoteAfter
	d.mu.Unlock()
	for _, r := range records {
		t := next
		switch r.State {
		case store.StateCooling:
			t = r.ReleasedAt.Add(d.opts.Cooldown)
		case store.StateQuarantined:
			t = r.Until
		}
		if t = later(t, promoteAfter); t.Before(next) {
			next = t
		}
	}
	if !dec.RecheckAt.IsZero() && dec.RecheckAt.Before(next) {
		next = dec.RecheckAt
	}
	if t := d.nextInterfaceWake(); !t.IsZero() && t.Before(next) {
		next = t
	}
	return max(next.Sub(now), 10*time.Millisecond)
}

// nextLocalWake is the sleep during a back-off that ends at until: until
// then, or until the next cooldown, quarantine or recovery ends, whichever
// comes first; a moment already past does not count (it was handled, or is
// held back by promoteAfter, which counts instead).
func (d *Daemon) nextLocalWake(now, until time.Time, records []store.Record) time.Duration {
	next := until
	d.mu.Lock()
	if rec := d.recovery; rec != nil && rec.until.After(now) && rec.until.Before(next) {
		next = rec.until
	}
	promoteAfter := d.promoteAfter
	d.mu.Unlock()
	for _, r := range records {
		var t time.Time
		switch r.State {
		case store.StateCooling:
			t = r.ReleasedAt.Add(d.opts.Cooldown)
		case store.StateQuarantined:
			t = r.Until
		default:
			continue
		}
		if t = later(t, promoteAfter); t.After(now) && t.Before(next) {
			next = t
		}
	}
	return max(next.Sub(now), 10*time.Millisecond)
}

func ipsOf(records []store.Record) []netip.Addr {
	ips := make([]netip.Addr, len(records))
	for i, r := range records {
		ips[i] = r.IP
	}
	return ips
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func ipsIn(records []store.Record, st store.State) []netip.Addr {
	var ips []netip.Addr
	for _, r := range records {
		if r.State == st {
			ips = append(ips, r.IP)
		}
	}
	return ips
}
