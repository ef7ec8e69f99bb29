package azure

import (
	"context"
	"fmt"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"

	"github.com/vnet-cni/vnet-cni/cloud"
)

// EnsureIPForwarding turns IP forwarding on for the node's NIC when it is
// off, in one NIC update with If-Match, and reports whether it wrote. Azure
// delivers traffic for a route whose next hop is the node (kubenet's pod
// CIDR routes, next hop VirtualAppliance) only through a NIC that forwards,
// and drops it otherwise; an operator or a policy can turn it off at any
// time, so the daemon calls this on every resync. A NIC that already
// forwards costs one read and no write.
func (p *Provider) EnsureIPForwarding(ctx context.Context) (bool, error) {
	const op = "NetworkInterfaces_CreateOrUpdate"
	ctx, cancel := context.WithTimeout(ctx, p.cfg.CallTimeout)
	defer cancel()
	for attempt := 0; ; attempt++ {
		nic, etag, err := p.get(ctx)
		if err != nil {
			return false, err
		}
		if deref(nic.Properties.EnableIPForwarding) {
			return false, nil
		}
		nic.Properties.EnableIPForwarding = to.Ptr(true)
		updated, err := p.put(ctx, nic, etag)
		if err != nil {
			if cloud.KindOf(err) == cloud.Conflict && attempt < maxConflictRetries {
				continue
			}
			return false, err
		}
		if !deref(updated.Properties.EnableIPForwarding) {
			return true, &cloud.Error{Kind: cloud.Transient, Op: op, Err: fmt.Errorf("turned IP forwarding on for nic %s, but the nic does not show it", p.nic.name)}
		}
		p.log.Info("turned IP forwarding on", "nic", p.nic.name)
		return true, nil
	}
}
