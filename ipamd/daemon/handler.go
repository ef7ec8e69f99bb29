package daemon

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/vnet-cni/vnet-cni/cloud"
	"github.com/vnet-cni/vnet-cni/ipamd/api"
	"github.com/vnet-cni/vnet-cni/ipamd/server"
	"github.com/vnet-cni/vnet-cni/ipamd/store"
)

var _ server.Handler = (*Daemon)(nil)

// network returns what every answer about an address carries, or an error
// when the daemon has not synced with the cloud yet.
func (d *Daemon) network() (network, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.synced {
		return network{}, api.Errorf(api.CodeNotReady, "vnet-ipamd is starting: %s", d.notReadyReason)
	}
	return d.networkLocked(), nil
}

// network is what an assignment's answer says of the node's network: the
// primary interface's part, and the interfaces an address may be on.
type network struct {
	base   api.Assignment
	ifaces []cloud.Interface
}

func (d *Daemon) networkLocked() network {
	return network{base: d.baseLocked(), ifaces: d.inst.Interfaces}
}

// baseLocked is the network part of every assignment: the primary
// interface's, the one the pool fills.
func (d *Daemon) baseLocked() api.Assignment {
	return api.Assignment{
		Interface: d.iface.ID, Subnet: d.iface.Subnet, Gateway: d.iface.Gateway, MTU: d.opts.MTU,
		VNetCIDRs: d.inst.NetworkPrefixes, PrimaryIP: d.iface.PrimaryIP,
	}
}

func assignment(nw network, r store.Record) api.Assignment {
	base := nw.base
	base.ContainerID = r.Owner.ContainerID
	base.IfName = r.Owner.IfName
	base.PodNamespace = r.Owner.PodNamespace
	base.PodName = r.Owner.PodName
	base.IP = r.IP
	if r.Interface != "" {
		// Records without one are on the primary interface, base's.
		base.Interface = r.Interface
	}
	for _, ifc := range nw.ifaces {
		if ifc.ID != base.Interface {
			continue
		}
		base.InterfaceMAC, base.DeviceIndex = ifc.MAC, ifc.DeviceIndex
		if ifc.Subnet.IsValid() && ifc.Gateway.IsValid() {
			base.Subnet, base.Gateway = ifc.Subnet, ifc.Gateway
		}
	}
	return base
}

// storeWritable is the error for an allocation while the store cannot write.
func (d *Daemon) storeWritable() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.storeErr != nil {
		return unwritable(d.storeErr)
	}
	return nil
}

// readyLocked: ready after the first sync with a pool, while the node's
// datapath is set up and while the store can write.
func (d *Daemon) readyLocked() bool {
	ok, _ := d.datapathReadyLocked()
	_, recovering := d.recoveryHoldLocked(d.opts.Now(), 0)
	return d.ready && ok && d.storeErr == nil && !recovering && len(d.holds) == 0
}

// Allocate hands out an address from the pool; it never calls the cloud.
// When the pool is empty it waits up to AllocateWait for the refill.
func (d *Daemon) Allocate(ctx context.Context, req api.AllocateRequest) (api.AllocateResponse, error) {
	defer d.notify()
	start := time.Now()
	base, err := d.network()
	if err == nil {
		err = d.storeWritable()
	}
	if err == nil {
		err = d.heldErr()
	}
	if err != nil {
		d.metrics.allocations.WithLabelValues("not_ready").Inc()
		return api.AllocateResponse{}, err
	}
	owner := store.Owner{
		ContainerID: req.ContainerID, IfName: req.IfName,
		PodNamespace: req.PodNamespace, PodName: req.PodName, Netns: req.Netns,
	}
	at := callStamp(req.At)
	wait := time.NewTimer(d.opts.AllocateWait)
	defer wait.Stop()
	waiting := false
	defer func() {
		if waiting {
			d.mu.Lock()
			d.pending--
			d.mu.Unlock()
		}
	}()
	for {
		d.mu.Lock()
		freed := d.freed
		d.mu.Unlock()
		rec, err := d.store.AssignAt(owner, at)
		if err == nil {
			d.metrics.allocations.WithLabelValues("ok").Inc()
			d.metrics.allocateSeconds.Observe(time.Since(start).Seconds())
			d.kickIfLow()
			return api.AllocateResponse{Assignment: assignment(base, rec)}, nil
		}
		if d.storeFailed(err) {
			d.metrics.allocations.WithLabelValues("not_ready").Inc()
			return api.AllocateResponse{}, unwritable(err)
		}
		if !errors.Is(err, store.ErrNoFree) {
			d.metrics.allocations.WithLabelValues("error").Inc()
			return api.AllocateResponse{}, fmt.Errorf("assign address to %s/%s: %w", req.ContainerID, req.IfName, err)
		}
		if !waiting {
			waiting = true
			d.mu.Lock()
			d.pending++
			d.mu.Unlock()
		}
		d.kick()
		select {
		case <-freed:
		case <-wait.C:
			d.metrics.allocations.WithLabelValues("try_again").Inc()
			return api.AllocateResponse{}, api.Errorf(api.CodeTryAgain,
				"no free address on this node after waiting %s: %s", d.opts.AllocateWait, d.poolSituation())
		case <-ctx.Done():
			d.metrics.allocations.WithLabelValues("try_again").Inc()
			return api.AllocateResponse{}, api.Errorf(api.CodeTryAgain, "no free address on this node yet: %s", d.poolSituation())
		}
	}
}

// poolSituation explains an empty pool for error messages.
func (d *Daemon) poolSituation() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case cloud.KindOf(d.lastCloudErr) == cloud.Denied && d.lastCloudErr != nil:
		return fmt.Sprintf("the pool is exhausted: this node's cloud identity may not add addresses to its interface, so the pool holds only "+
			"the %d addresses it has (%s); grant it write access to its network interface, or create more addresses with the node (the template's ipAddressCount)",
			d.store.Counts().Total(), cloud.Reason(d.lastCloudErr))
	case d.limitReached && d.lastCloudErr != nil:
		return "the pool is at its limit: " + d.lastCloudErr.Error()
	case d.limitReached:
		return fmt.Sprintf("the pool is at its limit of %d addresses (maxIPs %d; the provider allows %d per interface, its primary address included)",
			d.ceilingLocked(), d.targets.MaxIPs, d.inst.Limits.AddressesPerInterface)
	case d.lastCloudErr != nil:
		return "the refill is failing: " + d.lastCloudErr.Error()
	default:
		return "the pool is being refilled"
	}
}

// kickIfLow wakes the worker when free addresses fell below the warm target.
func (d *Daemon) kickIfLow() {
	free := d.store.Counts().Free
	d.mu.Lock()
	low := free < d.targets.WarmIPTarget
	d.mu.Unlock()
	if low {
		d.kick()
	}
}

// callStamp is the store's form of the stamp a request carries; a request
// without one (a client of protocol 1.1) is stamped now.
func callStamp(at api.Stamp) store.Stamp {
	if at.IsZero() {
		at = api.NewStamp()
	}
	return store.Stamp{Boot: at.Boot, BootID: at.BootID, Wall: at.Wall}
}

// Release puts the attachment's address into cooldown; unknown attachments
// are not an error. A release made before the attachment's latest Allocate
// (a DEL whose request waited while the daemon was stalled, then an ADD of
// the same attachment) frees nothing: it answers Known false, so that the
// plugin does not tear down the datapath of the newer assignment either.
func (d *Daemon) Release(_ context.Context, req api.ReleaseRequest) (api.ReleaseResponse, error) {
	defer d.notify()
	a := store.Attachment{ContainerID: req.ContainerID, IfName: req.IfName}
	rec, known, err := d.store.ReleaseAt(a, callStamp(req.At))
	if errors.Is(err, store.ErrSuperseded) {
		d.superseded("rpc", a, rec)
		return api.ReleaseResponse{Superseded: true}, nil
	}
	if d.storeFailed(err) {
		return api.ReleaseResponse{}, unwritable(err)
	}
	if err != nil {
		return api.ReleaseResponse{}, fmt.Errorf("release %s/%s: %w", req.ContainerID, req.IfName, err)
	}
	if known {
		d.metrics.releases.Inc()
		d.kick()
	}
	return api.ReleaseResponse{Known: known, IP: rec.IP}, nil
}

// Check returns the attachment's assignment, if any.
func (d *Daemon) Check(_ context.Context, req api.CheckRequest) (api.CheckResponse, error) {
	base, err := d.network()
	if err != nil {
		return api.CheckResponse{}, err
	}
	rec, ok := d.store.Get(store.Attachment{ContainerID: req.ContainerID, IfName: req.IfName})
	if !ok || rec.State != store.StateAssigned {
		return api.CheckResponse{}, nil
	}
	a := assignment(base, rec)
	return api.CheckResponse{Assignment: &a}, nil
}

// GC releases every assignment whose attachment is not in req.Valid.
func (d *Daemon) GC(_ context.Context, req api.GCRequest) (api.GCResponse, error) {
	defer d.notify()
	valid := make(map[store.Attachment]bool, len(req.Valid))
	for _, a := range req.Valid {
		valid[store.Attachment{ContainerID: a.ContainerID, IfName: a.IfName}] = true
	}
	d.mu.Lock()
	base := d.networkLocked()
	d.mu.Unlock()
	at := callStamp(req.At)
	var resp api.GCResponse
	var errs []error
	for _, r := range d.store.List() {
		if r.State != store.StateAssigned || valid[r.Owner.Attachment()] {
			continue
		}
		// An attachment allocated after the runtime made its list is not
		// in it, but it is live.
		if _, _, err := d.store.ReleaseAt(r.Owner.Attachment(), at); errors.Is(err, store.ErrSuperseded) {
			d.superseded("gc", r.Owner.Attachment(), r)
			continue
		} else if err != nil {
			errs = append(errs, err)
			continue
		}
		resp.Released = append(resp.Released, assignment(base, r))
	}
	if len(resp.Released) > 0 {
		d.metrics.releases.Add(float64(len(resp.Released)))
		d.log.Info("gc released stale assignments", "count", len(resp.Released))
		d.kick()
	}
	err := errors.Join(errs...)
	if d.storeFailed(err) {
		return resp, unwritable(err)
	}
	return resp, err
}

// Status tells whether Allocate can succeed now, with the pool counts.
func (d *Daemon) Status(_ context.Context, _ api.StatusRequest) (api.StatusResponse, error) {
	c := d.store.Counts()
	lost := lostRecords(d.store.List())
	d.mu.Lock()
	defer d.mu.Unlock()
	resp := api.StatusResponse{
		Ready:        d.readyLocked(),
		Reason:       d.notReadyReason,
		NodeName:     d.opts.NodeName,
		MTU:          d.opts.MTU,
		LimitReached: d.limitReached,
		Pool: api.PoolCounts{
			Free: c.Free, Assigned: c.Assigned, Cooling: c.Cooling, Releasing: c.Releasing, Quarantined: c.Quarantined,
			Total: c.Total(), Max: d.ceilingLocked(), MaxFrom: d.targetsFrom,
		},
	}
	if ok, why := d.datapathReadyLocked(); d.ready && !ok {
		resp.Reason = why
	}
	if reason, hold := d.recoveryHoldLocked(d.opts.Now(), c.Quarantined); hold {
		resp.Reason = reason
	}
	if d.storeErr != nil {
		resp.Reason = d.storeErr.Error()
	}
	if why := d.holdLocked(); why != "" && resp.Reason == "" {
		resp.Reason = why
	}
	if d.lastCloudErr != nil {
		resp.LastCloudError = d.lastCloudErr.Error()
	}
	for _, r := range lost {
		resp.Lost = append(resp.Lost, api.LostAddress{
			IP: r.IP, Interface: r.Interface, State: string(r.State),
			ContainerID: r.Owner.ContainerID, IfName: r.Owner.IfName,
			PodNamespace: r.Owner.PodNamespace, PodName: r.Owner.PodName,
			Since: r.LostAt, RestoreError: d.restoreErr[r.IP],
		})
	}
	if d.synced {
		resp.VNetCIDRs = d.inst.NetworkPrefixes
		resp.Subnet = d.iface.Subnet
		resp.Gateway = d.iface.Gateway
		resp.PrimaryIP = d.iface.PrimaryIP
		resp.Interface = d.iface.ID
	}
	return resp, nil
}

// List returns every address with its state and owner.
func (d *Daemon) List(_ context.Context, _ api.ListRequest) (api.ListResponse, error) {
	d.mu.Lock()
	primary := d.iface.ID
	d.mu.Unlock()
	var resp api.ListResponse
	for _, r := range d.store.List() {
		iface := r.Interface
		if iface == "" {
			iface = primary
		}
		resp.Addresses = append(resp.Addresses, api.AddressRecord{
			IP: r.IP, Interface: iface, State: string(r.State), Since: r.Since, LostSince: r.LostAt,
			ContainerID: r.Owner.ContainerID, IfName: r.Owner.IfName,
			PodNamespace: r.Owner.PodNamespace, PodName: r.Owner.PodName,
		})
	}
	return resp, nil
}
