package aws

import (
	"context"
	"fmt"
	"math"
	"net/netip"
	"slices"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/vnet-cni/vnet-cni/cloud"
)

// checkManaged refuses an ENI the provider does not manage, re-reading the
// instance once when id is unknown (an ENI attached since the last read).
func (p *Provider) checkManaged(ctx context.Context, op, id string) error {
	if p.knownManaged(id) {
		return nil
	}
	if _, err := p.Instance(ctx); err != nil {
		return err
	}
	if p.knownManaged(id) {
		return nil
	}
	return notManaged(op, id, p.node.InstanceID)
}

func notManaged(op, id, instance string) error {
	return &cloud.Error{Kind: cloud.Fatal, Op: op,
		Err: fmt.Errorf("eni %s is neither the primary ENI of instance %s nor an attached ENI vnet-cni created for it", id, instance)}
}

// AddAddresses assigns n secondary addresses, chosen by EC2, to the ENI
// iface in one AssignPrivateIpAddresses call and returns them, sorted.
// More than the instance type allows on one ENI is refused by EC2
// (PrivateIpAddressLimitExceeded: a *cloud.Error of kind NICLimit).
func (p *Provider) AddAddresses(ctx context.Context, iface string, n int) ([]netip.Addr, error) {
	const op = "AssignPrivateIpAddresses"
	if n <= 0 {
		return nil, nil
	}
	if n > math.MaxInt32 {
		return nil, &cloud.Error{Kind: cloud.NICLimit, Op: op, Err: fmt.Errorf("%d addresses asked for", n)}
	}
	if err := p.checkManaged(ctx, op, iface); err != nil {
		return nil, err
	}
	out, err := call(ctx, p, op, func(ctx context.Context) (*ec2.AssignPrivateIpAddressesOutput, error) {
		return p.ec2.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{
			NetworkInterfaceId:             awssdk.String(iface),
			SecondaryPrivateIpAddressCount: awssdk.Int32(int32(n)),
		})
	})
	if err != nil {
		return nil, err
	}
	var added []netip.Addr
	for _, a := range out.AssignedPrivateIpAddresses {
		if ip, err := netip.ParseAddr(awssdk.ToString(a.PrivateIpAddress)); err == nil && ip.Is4() {
			added = append(added, ip)
		}
	}
	slices.SortFunc(added, netip.Addr.Compare)
	if len(added) != n {
		return added, &cloud.Error{Kind: cloud.Transient, Op: op,
			Err: fmt.Errorf("asked for %d addresses on %s, the answer lists %d", n, iface, len(added))}
	}
	return added, nil
}

// RemoveAddresses unassigns ips from the ENI iface. It reads the ENI first
// and unassigns, in one call, only those of ips that are secondary
// addresses of it: addresses already gone (or an ENI already deleted) are
// ignored, and the primary address is never removed.
func (p *Provider) RemoveAddresses(ctx context.Context, iface string, ips []netip.Addr) error {
	const op = "UnassignPrivateIpAddresses"
	if len(ips) == 0 {
		return nil
	}
	// One more round when the ENI changed between the read and the call.
	for attempt := 0; ; attempt++ {
		e, err := p.describeENI(ctx, iface)
		if codeOf(err) == codeENINotFound {
			p.log.Warn("the ENI to remove addresses from is gone; so are its addresses", "eni", iface)
			return nil
		}
		if err != nil {
			return err
		}
		if !p.manages(e) {
			return notManaged(op, iface, p.node.InstanceID)
		}
		_, have, err := addresses(e)
		if err != nil {
			return &cloud.Error{Kind: cloud.Fatal, Op: "DescribeNetworkInterfaces", Err: err}
		}
		var drop []string
		for _, ip := range have {
			if slices.Contains(ips, ip) {
				drop = append(drop, ip.String())
			}
		}
		if len(drop) == 0 {
			return nil
		}
		_, err = call(ctx, p, op, func(ctx context.Context) (*ec2.UnassignPrivateIpAddressesOutput, error) {
			return p.ec2.UnassignPrivateIpAddresses(ctx, &ec2.UnassignPrivateIpAddressesInput{
				NetworkInterfaceId: awssdk.String(iface),
				PrivateIpAddresses: drop,
			})
		})
		if err != nil && attempt == 0 && codeOf(err) == codeInvalidParameterValue {
			p.log.Debug("the ENI changed under an unassign, re-reading", "eni", iface, "err", err)
			continue
		}
		return err
	}
}

// RestoreAddresses assigns ips back to the ENI iface by value, in one call
// with AllowReassignment off: the daemon owns them, a pod uses them, but
// someone removed them outside vnet-ipamd. Addresses already on the ENI are
// ignored. EC2 assigns all or none: an address another ENI holds fails the
// call with InvalidIPAddress.InUse (a *cloud.Error of kind AddressInUse).
// More than the ENI may hold is refused before any call (NICLimit).
func (p *Provider) RestoreAddresses(ctx context.Context, iface string, ips []netip.Addr) error {
	const op = "AssignPrivateIpAddresses"
	if len(ips) == 0 {
		return nil
	}
	e, err := p.describeENI(ctx, iface)
	if err != nil {
		return err
	}
	if !p.manages(e) {
		return notManaged(op, iface, p.node.InstanceID)
	}
	primary, have, err := addresses(e)
	if err != nil {
		return &cloud.Error{Kind: cloud.Fatal, Op: "DescribeNetworkInterfaces", Err: err}
	}
	var add []string
	for _, ip := range ips {
		if ip != primary && !slices.Contains(have, ip) && !slices.Contains(add, ip.String()) {
			add = append(add, ip.String())
		}
	}
	if len(add) == 0 {
		return nil
	}
	if total := 1 + len(have) + len(add); isAttachedTo(e, p.node.InstanceID) && total > p.limits.AddressesPerInterface {
		return &cloud.Error{Kind: cloud.NICLimit, Op: op,
			Err: fmt.Errorf("eni %s holds %d of %d addresses, cannot put back %d", iface, 1+len(have), p.limits.AddressesPerInterface, len(add))}
	}
	out, err := call(ctx, p, op, func(ctx context.Context) (*ec2.AssignPrivateIpAddressesOutput, error) {
		return p.ec2.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{
			NetworkInterfaceId: awssdk.String(iface),
			PrivateIpAddresses: add,
			AllowReassignment:  awssdk.Bool(false),
		})
	})
	if err != nil {
		return err
	}
	got := map[string]bool{}
	for _, a := range out.AssignedPrivateIpAddresses {
		got[awssdk.ToString(a.PrivateIpAddress)] = true
	}
	for _, a := range add {
		if !got[a] {
			return &cloud.Error{Kind: cloud.Transient, Op: op, Err: fmt.Errorf("put %s back on %s, but the answer does not list it", a, iface)}
		}
	}
	return nil
}

// isAttachedTo reports an ENI attached (or attaching) to instance.
func isAttachedTo(e types.NetworkInterface, instance string) bool {
	return e.Attachment != nil && awssdk.ToString(e.Attachment.InstanceId) == instance &&
		e.Attachment.Status != types.AttachmentStatusDetached
}
