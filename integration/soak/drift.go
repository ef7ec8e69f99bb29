package soak

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v9"

	"github.com/vnet-cni/vnet-cni/cloud/sim"
	"github.com/vnet-cni/vnet-cni/cloud/sim/arm"
	"github.com/vnet-cni/vnet-cni/integration/armops"
	"github.com/vnet-cni/vnet-cni/integration/cluster"
	"github.com/vnet-cni/vnet-cni/internal/nsnet"
	"github.com/vnet-cni/vnet-cni/ipamd/api"
)

// Cloud drift: an operator deletes ipConfigurations of the nodes' NICs
// through ARM (the real SDK, as the portal or the CLI does), outside
// vnet-ipamd, under the same injected faults as the daemons' calls. The
// daemon must put back an address one of its pods holds, or keep it out of
// its pool; it must never hand it out again.
//
// What no CNI can prevent: the subnet gives a deleted address to the next
// NIC that asks for a dynamic one (Azure, like the simulator, takes the
// lowest free address), and when that is the other node's, that node may
// hand it to one of its pods before the owner's daemon puts it back. The
// soak tells these apart from duplicates vnet-ipamd made (see addHeld): a
// duplicate on one node is always a violation; across nodes it is the
// cloud's when one of the two pods is a drift victim, a live pod whose
// address the drifter took off its node's NIC and that has not been on it
// since. Such a victim is counted (Result.DriftTaken) and, after the churn,
// deleted as an operator who reads the daemon's report deletes it, once its
// daemon reports the address lost, with the cloud's refusal to put it back
// (settleDrift); its daemon must then forget the address.

// operator changes NICs through ARM with the SDK.
type operator struct {
	rg   string
	nics *armnetwork.InterfacesClient
}

func newOperator(desc sim.Description, a *arm.Server) (*operator, error) {
	nics, err := armops.Interfaces(desc, a)
	if err != nil {
		return nil, err
	}
	return &operator{rg: desc.ResourceGroup, nics: nics}, nil
}

// removeAddress deletes the ipConfiguration holding ip from the NIC: GET,
// then PUT without it, with If-Match, until one PUT succeeds or ip is no
// longer on the NIC. put tells whether ARM accepted a PUT without ip, or
// may have (the operator did not see the answer); a PUT that ARM refused
// (412, 409, an injected 5xx or 429) changed nothing.
func (o *operator) removeAddress(ctx context.Context, name string, ip netip.Addr) (put bool, err error) {
	var last error
	for ctx.Err() == nil {
		if last != nil {
			select {
			case <-ctx.Done():
			case <-time.After(300 * time.Millisecond):
			}
		}
		resp, err := o.nics.Get(ctx, o.rg, name, nil)
		if err != nil {
			last = fmt.Errorf("get nic %s: %w", name, err)
			continue
		}
		nic := resp.Interface
		keep := nic.Properties.IPConfigurations[:0:0]
		for _, c := range nic.Properties.IPConfigurations {
			if c.Properties == nil || c.Properties.PrivateIPAddress == nil || *c.Properties.PrivateIPAddress != ip.String() {
				keep = append(keep, c)
			}
		}
		if len(keep) == len(nic.Properties.IPConfigurations) {
			return put, nil
		}
		nic.Properties.IPConfigurations = keep
		putCtx := policy.WithHTTPHeader(ctx, http.Header{"If-Match": []string{*resp.Etag}})
		poller, err := o.nics.BeginCreateOrUpdate(putCtx, o.rg, name, nic, nil)
		var refused *azcore.ResponseError
		if !errors.As(err, &refused) {
			// Accepted, or an outcome the operator did not see.
			put = true
		}
		if err == nil {
			_, err = poller.PollUntilDone(ctx, &runtime.PollUntilDoneOptions{Frequency: 100 * time.Millisecond})
		}
		if err == nil {
			return true, nil
		}
		// A 412 (the daemon changed the NIC since the GET), a 409 (an
		// operation in progress), an injected 5xx or 429: read it again.
		last = fmt.Errorf("put nic %s: %w", name, err)
	}
	return put, errors.Join(ctx.Err(), last)
}

// drifter deletes a random secondary address of a random node's NIC every
// DriftMin..DriftMax; with probability DriftLive it picks a live pod's. A
// deletion takes several ARM calls under the injected latency, so up to
// three run at once.
//
// A pod lives about two seconds in the churn, less than a deletion takes,
// so the drifter holds the slot of the pod it picked (the workers skip a
// held slot): the pod stays live while its ipConfiguration is deleted and
// then for up to three resync intervals, while its daemon notices the loss
// and puts the address back, or the pod's DEL comes first.
func (r *runner) drifter(ctx context.Context, rng *rand.Rand) {
	op, err := newOperator(r.sim.Description(), r.sim.ARM())
	if err != nil {
		r.violation("drift: create the operator's ARM client: %v", err)
		return
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	busy := make(chan struct{}, 3)
	for {
		wait := r.prof.DriftMin + time.Duration(rng.Int64N(int64(r.prof.DriftMax-r.prof.DriftMin)+1))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		ni := rng.IntN(len(r.c.Nodes))
		n := r.c.Nodes[ni]
		resync := time.Duration(n.Config.ResyncInterval)
		hold := time.Duration(rng.Int64N(int64(3 * resync)))
		if !beforeEnd(ctx, resync) {
			continue
		}
		select {
		case busy <- struct{}{}:
		default:
			continue
		}
		ip, pinned, ok := r.driftTarget(ni, rng)
		if !ok {
			<-busy
			continue
		}
		wg.Go(func() {
			defer func() { <-busy }()
			if pinned != nil {
				defer pinned.mu.Unlock()
			}
			// The end of the churn cuts a deletion short (the churn waits
			// for it); a PUT already sent may still be committed.
			opCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
			put, err := op.removeAddress(opCtx, n.NIC, ip)
			cancel()
			if err != nil && ctx.Err() == nil {
				// Not a violation: the operator gave up under the faults.
				r.log.Warn("drift: remove an address", "node", n.Name, "ip", ip, "err", err)
			}
			if put && err != nil {
				time.Sleep(time.Second) // the sim commits a NIC update within 200 ms
			}
			on, _ := r.nic(n)
			if !put || on[ip] {
				return
			}
			victim := r.drifted(n, ip)
			r.log.Info("drift: ipConfiguration deleted out of band", "node", n.Name, "ip", ip, "livePod", victim)
			if pinned != nil {
				select {
				case <-ctx.Done():
				case <-time.After(hold):
				}
			}
		})
	}
}

// driftTarget picks the address to delete from the NIC of node ni: with
// probability DriftLive the address of one of its live pods, whose slot it
// returns locked, else any secondary address of the NIC.
func (r *runner) driftTarget(ni int, rng *rand.Rand) (netip.Addr, *slot, bool) {
	nic, ok := r.nic(r.c.Nodes[ni])
	if !ok || len(nic) == 0 {
		return netip.Addr{}, nil, false
	}
	if rng.Float64() < r.prof.DriftLive {
		ss := r.slots[ni]
		for _, i := range rng.Perm(len(ss)) {
			s := ss[i]
			if !s.mu.TryLock() {
				continue
			}
			if s.live && nic[s.pod.IP] {
				return s.pod.IP, s, true
			}
			s.mu.Unlock()
		}
	}
	all := make([]netip.Addr, 0, len(nic))
	for ip := range nic {
		all = append(all, ip)
	}
	slices.SortFunc(all, netip.Addr.Compare)
	return all[rng.IntN(len(all))], nil, true
}

// drifted records that the drifter removed ip from n's NIC: a live pod of
// n holding it becomes a victim, and a pod of n that gets it before it is
// back on the NIC becomes one too (addHeld). It returns the victim's name.
func (r *runner) drifted(n *cluster.Node, ip netip.Addr) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.drifts++
	r.driftOff[ip] = n
	name := ""
	for _, p := range r.holders[ip] {
		if p.Node == n {
			r.victims[p] = true
			name = p.Name
		}
	}
	if name != "" {
		r.driftLive++
	}
	return name
}

// watchDrift ends victimhood: every half second, an address the drifter
// removed that is on its node's NIC again (put back by the daemon, or
// brought back by a refill) is no longer drifted, and its holder no longer
// a victim.
func (r *runner) watchDrift(ctx context.Context) {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r.pruneDrift()
	}
}

func (r *runner) pruneDrift() {
	on := map[*cluster.Node]map[netip.Addr]bool{}
	for _, n := range r.c.Nodes {
		on[n], _ = r.nic(n)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for ip, n := range r.driftOff {
		if on[n][ip] {
			delete(r.driftOff, ip)
		}
	}
	for p := range r.victims {
		if on[p.Node][p.IP] {
			delete(r.victims, p)
		}
	}
}

// settleDrift runs after the churn, with the faults ended: it waits until
// the address of every live drift victim is on its node's NIC again (the
// daemon put it back) or on another NIC. In that case the victim's daemon
// must report the address lost, with its owner and the cloud's refusal;
// then the victim is deleted, as an operator who reads the report deletes
// the pod whose address was taken, and the address is counted as taken.
func (r *runner) settleDrift(ctx context.Context) {
	deadline := time.Now().Add(time.Duration(r.c.Nodes[0].Config.ResyncInterval) + 30*time.Second)
	for {
		r.pruneDrift()
		r.mu.Lock()
		victims := make([]*cluster.Pod, 0, len(r.victims))
		for p := range r.victims {
			victims = append(victims, p)
		}
		r.mu.Unlock()
		if len(victims) == 0 {
			return
		}
		where := map[netip.Addr]string{}
		for _, nic := range r.sim.ARM().Snapshot().NICs {
			for _, ip := range nic.Secondary {
				where[ip] = nic.Name
			}
		}
		late := time.Now().After(deadline)
		for _, p := range victims {
			holder, ok := where[p.IP]
			if !ok || holder == p.Node.NIC {
				if late {
					r.violation("%s: %s of drift victim %s is on no NIC %s after the churn: the daemon did not put it back",
						p.Node.Name, p.IP, p.Name, time.Duration(r.c.Nodes[0].Config.ResyncInterval)+30*time.Second)
					r.forgetVictim(p)
				}
				continue
			}
			if err := r.reportedLost(ctx, p); err != nil {
				if late {
					r.violation("%s: %s of drift victim %s is on %s, and the daemon does not report it: %v", p.Node.Name, p.IP, p.Name, holder, err)
					r.forgetVictim(p)
				}
				continue
			}
			r.log.Info("drift: a victim's address is on another NIC and reported lost; deleting the victim", "node", p.Node.Name, "pod", p.Name, "ip", p.IP, "holder", holder)
			r.mu.Lock()
			r.taken[p] = true
			r.mu.Unlock()
			if r.delPod(ctx, p) {
				r.forgotten(ctx, p)
			}
		}
		if late {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// reportedLost checks that the daemon of p's node reports p's address
// lost, owned by p, with the reason it cannot put it back.
func (r *runner) reportedLost(ctx context.Context, p *cluster.Pod) error {
	st, err := p.Node.Status(ctx)
	if err != nil {
		return err
	}
	for _, l := range st.Lost {
		if l.IP != p.IP {
			continue
		}
		if l.ContainerID != p.ContainerID || l.RestoreError == "" {
			return fmt.Errorf("reported as %+v", l)
		}
		return nil
	}
	return fmt.Errorf("not in the status's lost list (%d addresses)", len(st.Lost))
}

func (r *runner) forgetVictim(p *cluster.Pod) {
	r.mu.Lock()
	delete(r.victims, p)
	r.mu.Unlock()
}

// delPod deletes a live pod after the churn (DEL, retried).
func (r *runner) delPod(ctx context.Context, p *cluster.Pod) bool {
	for _, ss := range r.slots {
		for _, s := range ss {
			if s.pod != p {
				continue
			}
			for range 5 {
				if r.del(ctx, p.Node, s) {
					return true
				}
				time.Sleep(500 * time.Millisecond)
			}
			r.violation("DEL of %s/%s never succeeded", p.Node.Name, p.Name)
			r.forgetVictim(p)
			return false
		}
	}
	r.forgetVictim(p)
	return false
}

// forgotten waits until the daemon of a deleted victim forgets its lost
// address: released, cooled down, and not on the node's NIC, nothing is
// left to keep.
func (r *runner) forgotten(ctx context.Context, p *cluster.Pod) {
	var last string
	err := nsnet.Eventually(time.Duration(p.Node.Config.Cooldown)+10*time.Second, func() error {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		list, err := p.Node.Client().List(cctx, api.ListRequest{})
		if err != nil {
			return err
		}
		for _, a := range list.Addresses {
			if a.IP == p.IP {
				last = fmt.Sprintf("%s (%s, %s)", a.IP, a.State, short(a.ContainerID))
				return errors.New(last)
			}
		}
		return nil
	})
	if err != nil {
		r.violation("%s: the daemon keeps %s, the lost address of deleted victim %s: %v", p.Node.Name, last, p.Name, err)
	}
}
