package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/vnet-cni/vnet-cni/cloud"
	"github.com/vnet-cni/vnet-cni/ipamd/store"
)

// Witness is the datapath's own record of the node's live attachments: the
// second witness of every assignment beside the store. It lives exactly as
// long as the pods' datapath does (the pod veths in the node's namespace),
// so it survives what the store may lose, and never outlives the boot.
//
// The rule is one-sided: an address that a live attachment holds is never
// free, whatever the store says. What the store lacks is rebuilt from the
// witness; what the witness lacks (an ADD in flight has its address before
// its veth records it) is released only by the runtime's DEL and GC, or,
// in the recovery of a damaged store, whose assignments may be older than
// the pods that replaced them, at the end of the recovery's grace.
type Witness interface {
	// Read lists the live attachments. interfaces are the cloud's IDs of
	// the instance's interfaces (nil when not known yet), which
	// Witnessed.Interface is resolved against. The daemon calls it when it
	// starts (before it trusts its store), at every resync, before any
	// address becomes free and before addresses the cloud just added enter
	// the pool.
	Read(ctx context.Context, interfaces []string) (WitnessState, error)
	// Key is the key under which Read reports the attachment (containerID,
	// ifName): the name of its host veth.
	Key(containerID, ifName string) string
}

// WitnessState is what the witness found.
type WitnessState struct {
	// Attachments are the live attachments, one per pod veth.
	Attachments []Witnessed
	// Present reports that vnet-cni's datapath was set up in this boot
	// (its bridge or a pod veth exists), even with no pod left.
	Present bool
	// MACs are the hardware addresses of the namespace's links, lower-case
	// hex without separators: the namespace holds the node's NIC.
	MACs []string
}

// Witnessed is one live attachment as its host veth records it.
type Witnessed struct {
	// Key is the host veth's name (see Witness.Key).
	Key string
	IP  netip.Addr
	// ContainerID and IfName name the attachment; empty when the veth does
	// not record them (a veth of a plugin before this record, a container
	// ID too long to record). Such an attachment still holds its address.
	ContainerID string
	IfName      string
	// Interface is the cloud's ID of the interface the record names, one of
	// the interfaces given to Read; empty when it names none of them.
	Interface string
}

// witnessTimeout bounds one read of the witness; witnessRetry is how long
// promotions wait after a failed one.
const (
	witnessTimeout = 10 * time.Second
	witnessRetry   = time.Second
)

// recovery is a recovery of the store in progress (see store.RecoveryMark).
type recovery struct {
	mark  store.RecoveryMark
	stats store.Recovery
	// until is the end of the quarantine, zero before the first sync.
	until time.Time
	// stale are the assignments that the damaged store had at the first
	// sync for attachments without a veth, none of which holds their
	// address: released at the end of the recovery if still so.
	stale []store.Record
}

// openRecovery reads the witness when the daemon starts and decides with
// the store whether the store must be recovered: it was found damaged (and
// salvaged), a recovery was not finished, or it is empty while vnet-cni's
// datapath of this boot exists (a deleted or emptied store). An empty store
// on a node without that datapath is a new node or a new boot: nothing to
// recover, nothing reported. A witness that cannot be read is an error: the
// store cannot be checked, let alone recovered.
func (d *Daemon) openRecovery() error {
	w := d.opts.Witness
	if w == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), witnessTimeout)
	defer cancel()
	dp, err := w.Read(ctx, nil)
	if err != nil {
		return fmt.Errorf("read the datapath witness (the node's pod veths), without which vnet-ipamd cannot check or recover its store: %w", err)
	}
	stats := d.store.Stats().Recovery
	if _, ok := d.store.Recovering(); !ok && stats.Empty && dp.Present {
		reason := fmt.Sprintf("the store is empty (its files are new, emptied or zeroed, or its directory was deleted) "+
			"but vnet-cni's datapath of this boot exists, with %d pods", len(dp.Attachments))
		if err := d.store.BeginRecovery(store.RecoveryLost, reason); err != nil {
			return err
		}
	}
	m, ok := d.store.Recovering()
	if !ok {
		return nil
	}
	d.recovery = &recovery{mark: m, stats: stats}
	d.notReadyReason = fmt.Sprintf("recovering the address store (%s: %s)", m.Kind, m.Reason)
	d.log.Warn("the address store needs recovery: it is rebuilt from the pods' veths and the cloud at the first sync, and no address is handed out before",
		"kind", m.Kind, "reason", m.Reason, "since", m.Since, "movedAside", stats.MovedAside, "salvaged", stats.Salvaged,
		"livePods", len(dp.Attachments))
	return nil
}

// witnessPlan is what the witness asks of the store.
type witnessPlan struct {
	claims []store.Claim
	// hold are addresses a live veth holds without naming its attachment:
	// quarantined while it does.
	hold map[netip.Addr]string
	// foreign are live attachments whose address the store has assigned,
	// or releasing, for another attachment than the veth's; unplaced ones
	// hold, without naming their attachment, an address that neither the
	// store nor the cloud knows.
	foreign, unplaced []Witnessed
}

// plan compares the witness with the records. known are the addresses that
// may get a record (the cloud's, or those just added); nil means only those
// the store has. seen is the store's Seq before the witness was read.
func (d *Daemon) plan(dp WitnessState, records []store.Record, known map[netip.Addr]string, seen uint64) witnessPlan {
	w := d.opts.Witness
	byIP := make(map[netip.Addr]store.Record, len(records))
	for _, r := range records {
		byIP[r.IP] = r
	}
	p := witnessPlan{hold: map[netip.Addr]string{}}
	for _, a := range dp.Attachments {
		r, inStore := byIP[a.IP]
		onCloud, isKnown := known[a.IP]
		iface := onCloud
		if iface == "" {
			iface = r.Interface
		}
		if iface == "" {
			iface = a.Interface
		}
		owned := r.State == store.StateAssigned || r.State == store.StateCooling
		if inStore && owned && w.Key(r.Owner.ContainerID, r.Owner.IfName) == a.Key {
			if r.State == store.StateCooling {
				p.claims = append(p.claims, store.Claim{IP: a.IP, Interface: iface, Owner: r.Owner, Seen: seen})
			}
			continue
		}
		named := a.ContainerID != "" && a.IfName != "" && w.Key(a.ContainerID, a.IfName) == a.Key
		switch {
		case !inStore && !isKnown && !named:
			p.unplaced = append(p.unplaced, a)
		case named:
			// Also when neither the store nor the cloud has the address
			// (it left the NIC while the store was lost): the assignment
			// is rebuilt, and the next resync finds it missing from the
			// NIC and puts it back or reports it lost, as for any drift.
			p.claims = append(p.claims, store.Claim{IP: a.IP, Interface: iface, Owner: store.Owner{ContainerID: a.ContainerID, IfName: a.IfName}, Seen: seen})
		case inStore && (r.State == store.StateAssigned || r.State == store.StateReleasing):
			p.foreign = append(p.foreign, a)
		default:
			p.hold[a.IP] = iface
		}
	}
	return p
}

// applyWitness reads the witness and applies it to the store: claims,
// holds, and in a recovery the quarantine of every address the damaged
// store cannot vouch for. onCloud are the instance's secondary addresses
// after a cloud read, nil elsewhere; inst is the instance read, or the zero
// value.
func (d *Daemon) applyWitness(ctx context.Context, inst cloud.Instance, onCloud map[netip.Addr]string) error {
	w := d.opts.Witness
	var ids []string
	primaryMAC := ""
	for _, ifc := range inst.Interfaces {
		ids = append(ids, ifc.ID)
		if ifc.Primary {
			primaryMAC = strings.ToLower(ifc.MAC)
		}
	}
	if ids == nil {
		d.mu.Lock()
		for _, ifc := range d.inst.Interfaces {
			ids = append(ids, ifc.ID)
		}
		d.mu.Unlock()
	}
	rctx, cancel := context.WithTimeout(ctx, witnessTimeout)
	defer cancel()
	seen := d.store.Seq()
	dp, err := w.Read(rctx, ids)
	if err != nil {
		return fmt.Errorf("read the datapath witness: %w", err)
	}
	if primaryMAC != "" && !slices.Contains(dp.MACs, primaryMAC) {
		return fmt.Errorf("the datapath witness is not the node's network namespace: no link has the NIC's MAC %s (vnet-ipamd must run with the node's network)", primaryMAC)
	}
	now := d.opts.Now()
	until := now.Add(d.opts.RecoveryGrace)
	d.mu.Lock()
	rec := d.recovery
	recovering := rec != nil && rec.until.IsZero() && onCloud != nil
	d.mu.Unlock()
	p := d.plan(dp, d.store.List(), onCloud, seen)
	var live liveSet // read only in a recovery
	if recovering {
		live = witnessed(dp)
		// The damaged store's assignments may be older than the pods on
		// the node: an address assigned in it to an attachment that has
		// no veth, while a live veth holds the address, was released and
		// handed to that pod in changes the damage took.
		byIP := map[netip.Addr]store.Record{}
		for _, r := range d.store.List() {
			byIP[r.IP] = r
		}
		for i, c := range p.claims {
			if r, ok := byIP[c.IP]; ok && r.State == store.StateAssigned && !live.has(w, r.Owner) {
				p.claims[i].Supersede = true
			}
		}
	}
	res, err := d.store.Claim(until, p.claims...)
	if err != nil {
		return err
	}
	quarantine := maps.Clone(p.hold)
	if recovering {
		// The damaged store cannot vouch for what it says is free or
		// cooling, nor know the addresses it lost: an ADD in flight may
		// hold any of them before its veth records it.
		for _, r := range d.store.List() {
			if r.State == store.StateFree || r.State == store.StateCooling || r.State == store.StateQuarantined {
				quarantine[r.IP] = r.Interface
			}
		}
		inStore := map[netip.Addr]bool{}
		for _, r := range d.store.List() {
			inStore[r.IP] = true
		}
		for ip, iface := range onCloud {
			if !inStore[ip] {
				quarantine[ip] = iface
			}
		}
	}
	quarantined, err := d.store.Quarantine(until, quarantine)
	if err != nil {
		return err
	}
	d.metrics.witnessRebuilt.Add(float64(len(res.Rebuilt)))
	d.reportWitness(ctx, p, res, recovering, true)
	if recovering {
		stale := live.stale(w, d.store.List())
		d.mu.Lock()
		rec.until = until
		rec.stale = stale
		d.mu.Unlock()
		for _, r := range res.Superseded {
			d.log.Warn("the damaged store had a live pod's address assigned to an attachment without a veth: the pod's veth wins",
				"ip", r.IP.String(), "storeOwner", r.Owner.Attachment().String(), "storeAssignedAt", r.AssignedAt)
		}
		d.metrics.recoveryReleased.Add(float64(len(res.Superseded)))
		d.metrics.recoveries.WithLabelValues(rec.mark.Kind).Inc()
		d.log.Warn("recovered the address store from the pods' veths and the cloud",
			"kind", rec.mark.Kind, "reason", rec.mark.Reason, "movedAside", rec.stats.MovedAside, "salvaged", rec.stats.Salvaged,
			"livePods", len(dp.Attachments), "rebuilt", len(res.Rebuilt), "displaced", len(res.Displaced),
			"conflicts", len(res.Conflicts)+len(p.foreign), "heldWithoutOwner", len(p.hold), "unplaced", len(p.unplaced),
			"superseded", len(res.Superseded), "withoutVeth", len(stale),
			"quarantined", len(quarantined), "quarantinedUntil", until.UTC().Format(time.RFC3339))
	}
	return nil
}

// liveSet is what a witness read found, by veth name and by address.
type liveSet struct {
	keys map[string]bool
	ips  map[netip.Addr]bool
}

func witnessed(dp WitnessState) liveSet {
	l := liveSet{keys: map[string]bool{}, ips: map[netip.Addr]bool{}}
	for _, a := range dp.Attachments {
		l.keys[a.Key] = true
		l.ips[a.IP] = true
	}
	return l
}

// has reports whether the owner's attachment has a veth.
func (l liveSet) has(w Witness, o store.Owner) bool {
	return l.keys[w.Key(o.ContainerID, o.IfName)]
}

// stale returns the assigned records whose attachment has no veth and
// whose address no veth holds.
func (l liveSet) stale(w Witness, records []store.Record) []store.Record {
	var out []store.Record
	for _, r := range records {
		if r.State == store.StateAssigned && !l.has(w, r.Owner) && !l.ips[r.IP] {
			out = append(out, r)
		}
	}
	return out
}

// reportWitness logs what the witness changed or could not change: every
// rebuilt assignment outside a recovery (the store should have had it),
// and, after a read of every live attachment (all), the conflicts: new ones
// loudly, and their number for the metric.
func (d *Daemon) reportWitness(ctx context.Context, p witnessPlan, res store.ClaimResult, recovering, all bool) {
	if !recovering {
		for i, r := range res.Rebuilt {
			prev := res.Previous[i]
			d.log.Warn("a live pod's address was not assigned to it in the store; rebuilt the assignment from the pod's veth",
				"ip", r.IP.String(), "containerID", r.Owner.ContainerID, "ifName", r.Owner.IfName,
				"storeState", string(prev.State), "storeOwner", prev.Owner.Attachment().String())
		}
	}
	for _, r := range res.Displaced {
		d.log.Warn("an attachment held another address in the store than the one on its veth; that one is quarantined",
			"ip", r.IP.String(), "containerID", r.Owner.ContainerID, "ifName", r.Owner.IfName)
	}
	if !all {
		return
	}
	conflicts := map[string]string{}
	for _, c := range res.Conflicts {
		conflicts[c.Claim.IP.String()+" "+c.Claim.Owner.Attachment().String()] = c.Holder.Attachment().String()
	}
	for _, a := range p.foreign {
		conflicts[a.IP.String()+" "+a.Key] = "another attachment in the store"
	}
	for _, a := range p.unplaced {
		conflicts[a.IP.String()+" "+a.Key] = "no record and not on the instance's interfaces"
	}
	d.mu.Lock()
	reported := d.witnessConflicts
	d.witnessConflicts = conflicts
	d.mu.Unlock()
	for _, k := range slices.Sorted(maps.Keys(conflicts)) {
		if _, old := reported[k]; old {
			continue
		}
		ipKey, owner, _ := strings.Cut(k, " ")
		d.log.Log(ctx, slog.LevelError, "a live pod's address is held for someone else or nowhere: kept out of the pool, needs an operator",
			"ip", ipKey, "liveAttachment", owner, "store", conflicts[k])
	}
}

// guardPromotion runs before addresses become free: a cooling or
// quarantined address that a live attachment holds is claimed (or held)
// instead. now is the promotion's time, taken before the read, so that
// everything the promotion frees was checked. It reports whether the
// promotion may run: not after a failed read (the error), nor until
// witnessRetry has passed since.
func (d *Daemon) guardPromotion(ctx context.Context, now time.Time, records []store.Record) (bool, error) {
	if d.opts.Witness == nil {
		return true, nil
	}
	d.mu.Lock()
	after := d.promoteAfter
	d.mu.Unlock()
	if now.Before(after) {
		return false, nil
	}
	due := false
	for _, r := range records {
		if r.State == store.StateCooling && !r.Since.Add(d.opts.Cooldown).After(now) ||
			r.State == store.StateQuarantined && !r.Until.After(now) {
			due = true
			break
		}
	}
	if !due {
		return true, nil
	}
	if err := d.applyWitness(ctx, cloud.Instance{}, nil); err != nil {
		d.mu.Lock()
		d.promoteAfter = now.Add(witnessRetry)
		d.mu.Unlock()
		return false, err
	}
	return true, nil
}

// addFromCloud puts addresses the cloud just added to iface into the pool,
// except those a live attachment holds already (claimed or held instead).
// Without a readable witness they are quarantined rather than made free.
func (d *Daemon) addFromCloud(ctx context.Context, iface string, ips []netip.Addr) error {
	if d.opts.Witness != nil {
		added := make(map[netip.Addr]string, len(ips))
		for _, ip := range ips {
			added[ip] = iface
		}
		rctx, cancel := context.WithTimeout(ctx, witnessTimeout)
		seen := d.store.Seq()
		dp, err := d.opts.Witness.Read(rctx, []string{iface})
		cancel()
		if err != nil {
			d.log.Warn("cannot read the datapath witness: the new addresses are quarantined instead of free", "count", len(ips), "err", err)
			if _, err := d.store.Quarantine(d.opts.Now().Add(d.opts.RecoveryGrace), added); err != nil {
				return err
			}
			return nil
		}
		p := d.plan(dp, d.store.List(), added, seen)
		if len(p.claims) > 0 || len(p.hold) > 0 {
			until := d.opts.Now().Add(d.opts.RecoveryGrace)
			res, err := d.store.Claim(until, p.claims...)
			if err != nil {
				return err
			}
			if _, err := d.store.Quarantine(until, p.hold); err != nil {
				return err
			}
			d.metrics.witnessRebuilt.Add(float64(len(res.Rebuilt)))
			d.reportWitness(ctx, p, res, false, false)
		}
	}
	_, err := d.store.AddFree(iface, ips...)
	return err
}

// endRecovery ends a recovery whose quarantine is over. The assignments
// the damaged store had for attachments without a veth, whose address no
// veth holds, are released if that is still so: the grace was long enough
// for an ADD in flight to make its veth, so their pods are gone (their
// DELs may be among what the damage took). A release cools the address,
// and the witness is read again before it becomes free.
func (d *Daemon) endRecovery(ctx context.Context, now time.Time) {
	d.mu.Lock()
	rec := d.recovery
	d.mu.Unlock()
	if rec == nil || rec.until.IsZero() || now.Before(rec.until) {
		return
	}
	if len(rec.stale) > 0 {
		if err := d.releaseStale(ctx, rec.stale); err != nil {
			if d.storeFailed(err) {
				return
			}
			d.log.Warn("cannot release the damaged store's assignments that no pod holds: they wait for the runtime's DEL or GC",
				"count", len(rec.stale), "err", err)
		}
	}
	if err := d.store.EndRecovery(); err != nil {
		d.log.Error("end the store's recovery", "err", err)
		return
	}
	d.mu.Lock()
	d.recovery = nil
	d.mu.Unlock()
	d.log.Info("the store's recovery is over: quarantined addresses are back in the pool", "kind", rec.mark.Kind)
}

// recoveryHoldLocked says why the daemon is not ready while a recovery
// holds addresses back.
func (d *Daemon) recoveryHoldLocked(now time.Time, quarantined int) (string, bool) {
	rec := d.recovery
	switch {
	case rec == nil:
		return "", false
	case rec.until.IsZero():
		return fmt.Sprintf("recovering the address store (%s: %s): waiting for the first sync", rec.mark.Kind, rec.mark.Reason), true
	case now.Before(rec.until):
		return fmt.Sprintf("recovering the address store (%s): %d addresses quarantined until %s, while ADDs that had an address before record their pods",
			rec.mark.Kind, quarantined, rec.until.UTC().Format(time.RFC3339)), true
	}
	return "", false
}

// releaseStale releases the stale assignments of a recovery that are
// unchanged and still have no veth.
func (d *Daemon) releaseStale(ctx context.Context, stale []store.Record) error {
	w := d.opts.Witness
	rctx, cancel := context.WithTimeout(ctx, witnessTimeout)
	dp, err := w.Read(rctx, nil)
	cancel()
	if err != nil {
		return fmt.Errorf("read the datapath witness: %w", err)
	}
	live := witnessed(dp)
	var released []string
	for _, r := range stale {
		cur, ok := d.store.Get(r.Owner.Attachment())
		if !ok || cur.IP != r.IP || cur.State != store.StateAssigned || !cur.AssignedAt.Equal(r.AssignedAt) ||
			live.has(w, r.Owner) || live.ips[r.IP] {
			continue
		}
		if _, _, err := d.store.Release(r.Owner.Attachment()); err != nil {
			return err
		}
		released = append(released, r.IP.String())
	}
	if len(released) > 0 {
		d.metrics.recoveryReleased.Add(float64(len(released)))
		d.log.Warn("released the damaged store's assignments whose pods have no veth after the recovery's grace",
			"count", len(released), "ips", released)
	}
	return nil
}
