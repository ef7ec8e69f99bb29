package daemon

import (
	"context"
	"net/netip"
	"slices"
	"time"

	"github.com/vnet-cni/vnet-cni/cloud"
	"github.com/vnet-cni/vnet-cni/ipamd/pool"
	"github.com/vnet-cni/vnet-cni/ipamd/store"
)

// sweepTimeout bounds one sweep for leaked interfaces.
const sweepTimeout = time.Minute

// managedInterfaces is the number of interfaces the pool may fill: every
// one the provider allows with a cloud the daemon attaches interfaces on,
// else the primary one.
func managedInterfaces(c Cloud, inst cloud.Instance) int {
	if _, ok := c.(InterfaceCloud); ok {
		return inst.Limits.Interfaces
	}
	return 1
}

// filled are the interfaces the pool fills, by device index: every attached
// one with an InterfaceCloud, else the primary one.
func (d *Daemon) filled() []cloud.Interface {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.cloud.(InterfaceCloud); !ok {
		return []cloud.Interface{d.iface}
	}
	out := slices.Clone(d.inst.Interfaces)
	slices.SortFunc(out, func(a, b cloud.Interface) int { return a.DeviceIndex - b.DeviceIndex })
	return out
}

// holdings counts the store's records by interface; a record without one
// is on the primary interface.
func (d *Daemon) holdings(records []store.Record) map[string]int {
	d.mu.Lock()
	primary := d.iface.ID
	d.mu.Unlock()
	held := map[string]int{}
	for _, r := range records {
		iface := r.Interface
		if iface == "" {
			iface = primary
		}
		held[iface]++
	}
	return held
}

// rooms is the room left on each interface the pool fills, in the order
// they fill: the limit per interface less every address the store holds on
// it, whatever its state.
func (d *Daemon) rooms(records []store.Record) []pool.Room {
	held := d.holdings(records)
	d.mu.Lock()
	perInterface := max(d.inst.Limits.AddressesPerInterface-1, 0)
	d.mu.Unlock()
	var rooms []pool.Room
	for _, ifc := range d.filled() {
		rooms = append(rooms, pool.Room{Interface: ifc.ID, Free: perInterface - held[ifc.ID]})
	}
	return rooms
}

// deviceIndexes maps the store's interface names to their device index, the
// rank of their free addresses for release.
func (d *Daemon) deviceIndexes() map[string]int {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := map[string]int{"": d.iface.DeviceIndex}
	for _, ifc := range d.inst.Interfaces {
		out[ifc.ID] = ifc.DeviceIndex
	}
	return out
}

// canAttach reports room for one more interface on the instance.
func (d *Daemon) canAttach() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.inst.Interfaces) < d.inst.Limits.Interfaces
}

// attach adds an interface to the instance for the next rounds to fill.
func (d *Daemon) attach(ctx context.Context, ic InterfaceCloud) error {
	start := time.Now()
	ifc, err := ic.AddInterface(ctx)
	d.metrics.observeCloud("add_interface", start, err)
	d.mu.Lock()
	d.lastWrite = d.opts.Now()
	d.mu.Unlock()
	if err != nil {
		return err
	}
	d.log.Info("attached an interface for pod addresses", "interface", ifc.ID, "deviceIndex", ifc.DeviceIndex,
		"mac", ifc.MAC, "took", time.Since(start).Round(time.Millisecond).String())
	d.mu.Lock()
	if !slices.ContainsFunc(d.inst.Interfaces, func(i cloud.Interface) bool { return i.ID == ifc.ID }) {
		d.inst.Interfaces = append(d.inst.Interfaces, ifc)
	}
	d.mu.Unlock()
	d.instanceChanged()
	d.succeeded()
	return nil
}

// removeEmptyInterfaces empties and detaches an interface the daemon added
// once no pod has held an address of it for the release delay; called while
// the pool needs no more addresses. The interface attached last goes first.
// Its free addresses are released first, when the other interfaces have room
// for as many (the pool refills there); an interface left without an
// address is detached and deleted. It reports whether it made a cloud call,
// and then the worker's wait.
func (d *Daemon) removeEmptyInterfaces(ctx context.Context, c Cloud, now time.Time, records []store.Record) (time.Duration, bool) {
	ic, ok := c.(InterfaceCloud)
	if !ok {
		return 0, false
	}
	held := d.holdings(records)
	busy := map[string]bool{}
	free := map[string][]netip.Addr{}
	for _, r := range records {
		if r.State == store.StateFree && !r.Lost() {
			free[r.Interface] = append(free[r.Interface], r.IP)
		} else {
			busy[r.Interface] = true
		}
	}
	rooms := d.rooms(records)
	d.mu.Lock()
	delay := d.targets.ReleaseDelay
	ifaces := slices.Clone(d.inst.Interfaces)
	slices.SortFunc(ifaces, func(a, b cloud.Interface) int { return b.DeviceIndex - a.DeviceIndex })
	var due *cloud.Interface
	seen := map[string]bool{}
	for _, ifc := range ifaces {
		if ifc.Primary || !ifc.Owned || busy[ifc.ID] {
			continue
		}
		seen[ifc.ID] = true
		since, ok := d.emptySince[ifc.ID]
		if !ok {
			d.emptySince[ifc.ID] = now
			continue
		}
		if due == nil && !now.Before(since.Add(delay)) {
			due = &ifc
		}
	}
	for id := range d.emptySince {
		if !seen[id] {
			delete(d.emptySince, id)
		}
	}
	d.mu.Unlock()
	if due == nil {
		return 0, false
	}
	if ips := free[due.ID]; len(ips) > 0 {
		elsewhere := 0
		for _, r := range rooms {
			if r.Interface != due.ID {
				elsewhere += max(r.Free, 0)
			}
		}
		if elsewhere < len(ips) {
			// The pool would attach again for what it gives up.
			return 0, false
		}
		if wait, ok := d.writeDelay(now); !ok {
			return wait, true
		}
		d.log.Info("releasing the free addresses of an interface no pod uses, to detach it", "interface", due.ID,
			"deviceIndex", due.DeviceIndex, "count", len(ips))
		if err := d.store.MarkReleasing(ips...); err != nil {
			return d.fail("release", err), true
		}
		if err := d.release(ctx, c, map[string][]netip.Addr{due.ID: ips}); err != nil {
			return d.fail("release", err), true
		}
		return 0, true
	}
	if held[due.ID] > 0 {
		// Not through the store yet; the provider refuses an interface
		// that still holds addresses anyway.
		return 0, false
	}
	if wait, ok := d.writeDelay(now); !ok {
		return wait, true
	}
	start := time.Now()
	err := ic.RemoveInterface(ctx, due.ID)
	d.metrics.observeCloud("remove_interface", start, err)
	d.mu.Lock()
	d.lastWrite = d.opts.Now()
	d.mu.Unlock()
	if err != nil {
		return d.fail("remove interface", err), true
	}
	d.log.Info("detached and deleted an interface that held no address", "interface", due.ID, "deviceIndex", due.DeviceIndex,
		"idleFor", delay.String())
	d.mu.Lock()
	d.inst.Interfaces = slices.DeleteFunc(d.inst.Interfaces, func(i cloud.Interface) bool { return i.ID == due.ID })
	delete(d.emptySince, due.ID)
	d.nextResync = d.opts.Now()
	d.mu.Unlock()
	d.instanceChanged()
	d.succeeded()
	return 0, true
}

// sweep runs the cloud's sweep for leaked interfaces when it is due.
func (d *Daemon) sweep(ctx context.Context, c Cloud, now time.Time) {
	s, ok := c.(Sweeper)
	if !ok {
		return
	}
	d.mu.Lock()
	if d.nextSweep.IsZero() {
		d.nextSweep = now.Add(d.opts.SweepInterval)
	}
	due := !now.Before(d.nextSweep)
	if due {
		d.nextSweep = now.Add(d.opts.SweepInterval)
	}
	d.mu.Unlock()
	if !due {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, sweepTimeout)
	defer cancel()
	start := time.Now()
	deleted, err := s.Sweep(ctx)
	d.metrics.observeCloud("sweep", start, err)
	if err != nil {
		// Not the pool's business: the next sweep tries again.
		d.log.Warn("sweep for interfaces of gone instances failed", "retryIn", d.opts.SweepInterval.String(), "err", err)
		return
	}
	if len(deleted) > 0 {
		d.log.Info("deleted interfaces that instances of the cluster left behind", "interfaces", deleted)
	}
}

// instanceChanged tells the datapath keeper that the instance changed.
func (d *Daemon) instanceChanged() {
	select {
	case d.instanceCh <- struct{}{}:
	default:
	}
}

// nextInterfaceWake is the earliest instant an empty interface becomes due
// for removal or the next sweep is due, or zero.
func (d *Daemon) nextInterfaceWake() time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	var next time.Time
	for _, since := range d.emptySince {
		if t := since.Add(d.targets.ReleaseDelay); next.IsZero() || t.Before(next) {
			next = t
		}
	}
	if _, ok := d.cloud.(Sweeper); ok && !d.nextSweep.IsZero() && (next.IsZero() || d.nextSweep.Before(next)) {
		next = d.nextSweep
	}
	return next
}
