package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/vnet-cni/vnet-cni/cloud"
)

// Datapath is the node's datapath as the daemon keeps it: in bridge mode the
// azure0 bridge and vnet-cni's nftables tables. The daemon sets it up before
// it writes the conflist (so the node is Ready only with a working
// datapath) and repairs it whenever it changes, so that a hand edit, an
// `nft flush ruleset` or a deleted table heals within seconds instead of at
// the next ADD.
type Datapath interface {
	// Ensure sets the node up for the instance's network, repairing what
	// differs from the wanted state, and returns the number of changes
	// made (0 when everything was in place).
	Ensure(ctx context.Context, inst cloud.Instance) (changes int, err error)
	// Watch reports changes that someone may have made to the datapath:
	// it sends on the returned channel after them (a hint: the daemon
	// checks everything anyway) until ctx is done.
	Watch(ctx context.Context) (<-chan struct{}, error)
}

// Defaults of the datapath keeper.
const (
	// defaultDatapathInterval is the period of the keeper's checks when
	// nothing reports a change; conflist deletions are only seen this way.
	defaultDatapathInterval = 2 * time.Second
	// datapathSettle lets a burst of change events end before the check.
	datapathSettle = 20 * time.Millisecond
	// datapathTimeout bounds one Ensure (it waits for the plugins' node
	// lock).
	datapathTimeout = 10 * time.Second
)

// keepDatapath sets the node's datapath up once the instance is known, then
// repairs it and the conflist on every change event and every
// DatapathInterval, until ctx is done.
func (d *Daemon) keepDatapath(ctx context.Context) {
	var events <-chan struct{}
	if d.opts.Datapath != nil {
		ch, err := d.opts.Datapath.Watch(ctx)
		if err != nil {
			// The timer still repairs, only later.
			d.log.Warn("cannot watch the node's datapath for changes; checking it every interval only",
				"interval", d.opts.DatapathInterval.String(), "err", err)
		}
		events = ch
	}
	ticker := time.NewTicker(d.opts.DatapathInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.instanceCh:
		case <-ticker.C:
		case _, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			// Let the rest of a burst (a whole ruleset flushed) arrive.
			t := time.NewTimer(datapathSettle)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			drain(events)
		}
		d.checkDatapath(ctx)
	}
}

// drain empties a hint channel without blocking.
func drain(ch <-chan struct{}) {
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		default:
			return
		}
	}
}

// checkDatapath runs one round of the keeper: the datapath, then the
// conflist (only once the daemon has written it: before that it is the
// readiness path's to write).
func (d *Daemon) checkDatapath(ctx context.Context) {
	d.mu.Lock()
	inst, synced, ready := d.inst, d.synced, d.ready
	d.mu.Unlock()
	if !synced {
		return
	}
	if d.opts.Datapath != nil {
		d.ensureDatapath(ctx, inst)
	}
	if ready {
		d.repairConflist()
	}
}

// ensureDatapath runs Ensure and records the outcome for readiness, STATUS
// and the metrics.
func (d *Daemon) ensureDatapath(ctx context.Context, inst cloud.Instance) {
	ctx, cancel := context.WithTimeout(ctx, datapathTimeout)
	defer cancel()
	start := time.Now()
	changes, err := d.opts.Datapath.Ensure(ctx, inst)
	d.metrics.datapathChecks.Inc()
	ifaces := interfacesKey(inst)
	d.mu.Lock()
	first := !d.datapathDone
	prevErr := d.datapathErr
	// Changes for an interface the datapath did not have yet (an ENI just
	// attached: its table and rules) are set-up, not repairs.
	grown := !first && ifaces != d.datapathIfaces
	if err == nil {
		d.datapathDone = true
		d.datapathIfaces = ifaces
	}
	d.datapathErr = err
	d.mu.Unlock()
	switch {
	case err != nil:
		d.metrics.datapathErrors.Inc()
		if prevErr == nil || prevErr.Error() != err.Error() {
			d.log.Error("cannot set up the node's datapath", "err", err)
		}
	case first:
		d.log.Info("set up the node's datapath", "changes", changes, "durationMs", float64(time.Since(start).Microseconds())/1000)
		d.kick() // readiness waits for it
	case changes > 0 && grown:
		d.log.Info("set up the datapath of the node's interfaces as they are now", "changes", changes, "interfaces", ifaces,
			"durationMs", float64(time.Since(start).Microseconds())/1000)
	case changes > 0:
		d.metrics.datapathRepairs.Add(float64(changes))
		d.log.Warn("repaired the node's datapath: something changed it by hand", "changes", changes,
			"durationMs", float64(time.Since(start).Microseconds())/1000)
	case prevErr != nil:
		d.log.Info("the node's datapath works again")
	}
}

// datapathReadyLocked tells whether the datapath lets the daemon be ready,
// and why not.
func (d *Daemon) datapathReadyLocked() (bool, string) {
	if d.opts.Datapath == nil {
		return true, ""
	}
	if d.datapathErr != nil {
		return false, fmt.Sprintf("the node's datapath is not set up: %v", d.datapathErr)
	}
	if !d.datapathDone {
		return false, "setting up the node's datapath"
	}
	return true, ""
}

// repairConflist writes the conflist again when it was deleted or changed.
func (d *Daemon) repairConflist() {
	c := d.opts.Conflist
	if c.Path == "" {
		return
	}
	have, err := os.ReadFile(c.Path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		d.log.Error("cannot read the cni conflist", "path", c.Path, "err", err)
		return
	}
	if err == nil && bytes.Equal(have, d.conflistData()) {
		return
	}
	what := "changed"
	if err != nil {
		what = "deleted"
	}
	if err := d.writeConflist(); err != nil {
		d.log.Error("cannot write the cni conflist again", "path", c.Path, "err", err)
		return
	}
	d.metrics.conflistRepairs.Inc()
	d.log.Warn("the cni conflist was "+what+" by hand; wrote it again", "path", c.Path)
}

// interfacesKey names the instance's interfaces (device, ID, MAC), in
// device order, for telling a new interface from a hand edit.
func interfacesKey(inst cloud.Instance) string {
	ifs := slices.Clone(inst.Interfaces)
	slices.SortFunc(ifs, func(a, b cloud.Interface) int { return a.DeviceIndex - b.DeviceIndex })
	var b strings.Builder
	for _, ifc := range ifs {
		fmt.Fprintf(&b, "%d=%s/%s;", ifc.DeviceIndex, ifc.ID, ifc.MAC)
	}
	return b.String()
}
