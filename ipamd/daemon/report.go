package daemon

import (
	"time"

	"github.com/vnet-cni/vnet-cni/cloud"
	"github.com/vnet-cni/vnet-cni/ipamd/pool"
	"github.com/vnet-cni/vnet-cni/ipamd/store"
)

// TargetsFromConfig is the source SetTargets records: the configuration
// file (at start or after a SIGHUP).
const TargetsFromConfig = "config"

// Report is the daemon's state for what reports it outside the node (the
// Kubernetes per-node object and its Events); Changes says when to read it
// again.
type Report struct {
	Ready bool
	// Reason says why the daemon is not ready.
	Reason string
	Counts store.Counts
	// Ceiling is the most secondary addresses the pool may hold now.
	Ceiling int
	// Targets are the pool targets in effect and TargetsFrom what set them
	// (see SetTargetsFrom).
	Targets     pool.Targets
	TargetsFrom string
	// LimitReached: the pool wants more addresses than its limits allow.
	LimitReached bool
	// Interfaces are the cloud IDs of the instance's interfaces, primary
	// first; empty before the first sync.
	Interfaces []string
	// CloudError is the last cloud error the pool hit, nil if none since
	// the start. It stays after a successful call, with Active false.
	CloudError *CloudError
}

// CloudError is a cloud error the pool worker hit.
type CloudError struct {
	Kind    cloud.Kind
	Message string
	At      time.Time
	// Active is true until a cloud call succeeds.
	Active bool
	// Count is the number of failed rounds since the start: a new failure
	// of the same kind changes it.
	Count uint64
}

// Report returns the daemon's state now.
func (d *Daemon) Report() Report {
	c := d.store.Counts()
	d.mu.Lock()
	defer d.mu.Unlock()
	r := Report{
		Ready:        d.readyLocked(),
		Reason:       d.notReadyReason,
		Counts:       c,
		Ceiling:      d.ceilingLocked(),
		Targets:      d.targets,
		TargetsFrom:  d.targetsFrom,
		LimitReached: d.limitReached,
	}
	if why := d.holdLocked(); why != "" && r.Reason == "" {
		r.Reason = why
	}
	if d.synced {
		if p, ok := d.inst.Primary(); ok {
			r.Interfaces = append(r.Interfaces, p.ID)
		}
		for _, ifc := range d.inst.Interfaces {
			if !ifc.Primary {
				r.Interfaces = append(r.Interfaces, ifc.ID)
			}
		}
	}
	if d.lastErr != nil {
		e := *d.lastErr
		e.Active = d.lastCloudErr != nil
		r.CloudError = &e
	}
	return r
}

// Changes is signalled (without blocking the daemon) after every round of
// the pool worker and every allocation, release and gc: the moments the
// Report may have changed. One signal may stand for several changes.
func (d *Daemon) Changes() <-chan struct{} { return d.changed }

// notify signals Changes.
func (d *Daemon) notify() {
	select {
	case d.changed <- struct{}{}:
	default:
	}
}

// SetTargetsFrom is SetTargets with the source of the targets (such as
// "node" when maxIPs is the node's allocatable pods), reported in Status,
// the metrics and the Report.
func (d *Daemon) SetTargetsFrom(t pool.Targets, from string) error {
	if err := d.setTargets(t, from); err != nil {
		return err
	}
	d.notify()
	return nil
}
