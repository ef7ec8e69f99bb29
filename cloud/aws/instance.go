package aws

import (
	"context"
	"fmt"
	"net/netip"
	"slices"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/vnet-cni/vnet-cni/cloud"
)

// Instance reads the instance's ENIs and returns the instance with the ones
// vnet-cni manages: the primary ENI and the attached ENIs vnet-cni created
// for this cluster and instance, by device index. ENIs attached by others
// are left alone; they only lower Limits.Interfaces. ENIs still attaching
// or already detaching are not listed (the node cannot use them).
//
// The first call (and the first after a roll-back of AddInterface that
// failed) also repairs what an AddInterface cut short by a crash left:
// vnet-cni's ENIs of this instance that were created but never attached
// are deleted, and DeleteOnTermination is set on those attached without it.
// One still detaching (a RemoveInterface cut short between its detach and
// its delete) is deleted by the first Instance after it became available.
// The repair is best effort: its errors are logged, not returned.
func (p *Provider) Instance(ctx context.Context) (cloud.Instance, error) {
	enis, err := p.describeENIs(ctx, filter("attachment.instance-id", p.node.InstanceID))
	if err != nil {
		return cloud.Instance{}, err
	}
	in := cloud.Instance{
		Provider:        "aws",
		ID:              p.node.InstanceID,
		Name:            p.name,
		NetworkPrefixes: slices.Clone(p.node.VPCCIDRs),
	}
	foreign := 0
	detaching := false
	managed := map[string]bool{}
	var fixDOT []types.NetworkInterface
	for _, e := range enis {
		if e.Attachment == nil {
			continue // detached since the filter matched
		}
		primary := isPrimary(e, p.node.InstanceID)
		if !primary && !p.ours(e) {
			foreign++
			continue
		}
		if e.Attachment.Status == types.AttachmentStatusDetaching && !primary {
			// A RemoveInterface cut short (or one running now): once
			// available, the repair deletes it.
			detaching = true
		}
		if e.Attachment.Status != types.AttachmentStatusAttached {
			continue
		}
		if !primary && !awssdk.ToBool(e.Attachment.DeleteOnTermination) {
			fixDOT = append(fixDOT, e)
		}
		sn, err := p.subnet(ctx, awssdk.ToString(e.SubnetId))
		if err != nil {
			return cloud.Instance{}, err
		}
		ifc, err := toInterface(e, sn)
		if err != nil {
			return cloud.Instance{}, &cloud.Error{Kind: cloud.Fatal, Op: "DescribeNetworkInterfaces", Err: err}
		}
		ifc.Owned = !ifc.Primary && p.ours(e)
		managed[ifc.ID] = true
		in.Interfaces = append(in.Interfaces, ifc)
	}
	slices.SortFunc(in.Interfaces, func(a, b cloud.Interface) int { return a.DeviceIndex - b.DeviceIndex })
	if _, ok := in.Primary(); !ok {
		return cloud.Instance{}, &cloud.Error{Kind: cloud.Fatal, Op: "DescribeNetworkInterfaces",
			Err: fmt.Errorf("instance %s has no attached network interface at device 0", p.node.InstanceID)}
	}
	in.Limits = cloud.Limits{
		Interfaces:            max(p.limits.Interfaces-foreign, 1),
		AddressesPerInterface: p.limits.AddressesPerInterface,
	}
	p.mu.Lock()
	p.managed = managed
	repair := p.repair
	p.mu.Unlock()
	if (repair || detaching || len(fixDOT) > 0) && p.lifecycle.TryLock() {
		// Not while an AddInterface or RemoveInterface of this process runs:
		// its ENI would look like a leftover between its create and its
		// attach, or during its detach.
		p.repairLocked(ctx, repair || detaching, fixDOT)
		if detaching {
			// Deleted once it is available: look again next time.
			p.mu.Lock()
			p.repair = true
			p.mu.Unlock()
		}
		p.lifecycle.Unlock()
	}
	return in, nil
}

// repairLocked deletes vnet-cni's unattached ENIs of this instance (when
// leftovers is set) and sets DeleteOnTermination on the attached ENIs in
// fixDOT. The caller holds p.lifecycle.
func (p *Provider) repairLocked(ctx context.Context, leftovers bool, fixDOT []types.NetworkInterface) {
	ok := true
	for _, e := range fixDOT {
		if err := p.setDeleteOnTermination(ctx, e); err != nil {
			ok = false
			p.log.Warn("cannot set DeleteOnTermination on an ENI vnet-cni attached", "eni", awssdk.ToString(e.NetworkInterfaceId), "err", err)
		}
	}
	if leftovers {
		list, err := p.leftovers(ctx)
		if err != nil {
			ok = false
			p.log.Warn("cannot look for ENIs a crashed attach left behind", "err", err)
		}
		for _, e := range list {
			id := awssdk.ToString(e.NetworkInterfaceId)
			if err := p.deleteENI(ctx, id); err != nil {
				ok = false
				p.log.Warn("cannot delete an ENI vnet-cni created but never attached", "eni", id, "err", err)
				continue
			}
			p.log.Info("deleted an ENI vnet-cni created but never attached (an interrupted AddInterface)", "eni", id)
		}
	}
	if ok && leftovers {
		p.mu.Lock()
		p.repair = false
		p.mu.Unlock()
	}
}

// leftovers are the ENIs vnet-cni created for this cluster and instance
// that are not attached.
func (p *Provider) leftovers(ctx context.Context) ([]types.NetworkInterface, error) {
	return p.describeENIs(ctx, append(p.ownTagFilters(p.node.InstanceID), filter("status", string(types.NetworkInterfaceStatusAvailable)))...)
}

// toInterface converts an ENI in subnet sn.
func toInterface(e types.NetworkInterface, sn netip.Prefix) (cloud.Interface, error) {
	id := awssdk.ToString(e.NetworkInterfaceId)
	mac, ok := normalizeMAC(awssdk.ToString(e.MacAddress))
	if !ok {
		return cloud.Interface{}, fmt.Errorf("eni %s has a bad mac %q", id, awssdk.ToString(e.MacAddress))
	}
	if e.Attachment == nil || e.Attachment.DeviceIndex == nil {
		return cloud.Interface{}, fmt.Errorf("eni %s is not attached", id)
	}
	ifc := cloud.Interface{
		ID:          id,
		MAC:         mac,
		DeviceIndex: int(*e.Attachment.DeviceIndex),
		Subnet:      sn,
		SubnetID:    awssdk.ToString(e.SubnetId),
		Gateway:     sn.Addr().Next(),
		// SourceDestCheck is on unless EC2 says otherwise.
		IPForwarding: e.SourceDestCheck != nil && !*e.SourceDestCheck,
	}
	ifc.Primary = ifc.DeviceIndex == 0
	primary, secondary, err := addresses(e)
	if err != nil {
		return cloud.Interface{}, err
	}
	ifc.PrimaryIP, ifc.Secondary = primary, secondary
	return ifc, nil
}

// addresses returns an ENI's primary address and its secondary ones,
// sorted.
func addresses(e types.NetworkInterface) (netip.Addr, []netip.Addr, error) {
	id := awssdk.ToString(e.NetworkInterfaceId)
	var primary netip.Addr
	var secondary []netip.Addr
	for _, a := range e.PrivateIpAddresses {
		ip, err := netip.ParseAddr(awssdk.ToString(a.PrivateIpAddress))
		if err != nil || !ip.Is4() {
			return netip.Addr{}, nil, fmt.Errorf("eni %s lists a bad address %q", id, awssdk.ToString(a.PrivateIpAddress))
		}
		if awssdk.ToBool(a.Primary) {
			primary = ip
		} else {
			secondary = append(secondary, ip)
		}
	}
	if !primary.IsValid() {
		ip, err := netip.ParseAddr(awssdk.ToString(e.PrivateIpAddress))
		if err != nil || !ip.Is4() {
			return netip.Addr{}, nil, fmt.Errorf("eni %s has no primary address", id)
		}
		primary = ip
		secondary = slices.DeleteFunc(secondary, func(a netip.Addr) bool { return a == ip })
	}
	slices.SortFunc(secondary, netip.Addr.Compare)
	return primary, slices.Compact(secondary), nil
}

// subnet returns the CIDR of subnet id, from the cache or DescribeSubnets.
func (p *Provider) subnet(ctx context.Context, id string) (netip.Prefix, error) {
	p.mu.Lock()
	sn, ok := p.subnets[id]
	p.mu.Unlock()
	if ok {
		return sn, nil
	}
	out, err := call(ctx, p, "DescribeSubnets", func(ctx context.Context) (*ec2.DescribeSubnetsOutput, error) {
		return p.ec2.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{SubnetIds: []string{id}})
	})
	if err != nil {
		return netip.Prefix{}, err
	}
	for _, s := range out.Subnets {
		if awssdk.ToString(s.SubnetId) != id {
			continue
		}
		sn, err := parseIPv4Prefix(awssdk.ToString(s.CidrBlock))
		if err != nil {
			return netip.Prefix{}, &cloud.Error{Kind: cloud.Fatal, Op: "DescribeSubnets", Err: fmt.Errorf("subnet %s: %w", id, err)}
		}
		p.mu.Lock()
		p.subnets[id] = sn
		p.mu.Unlock()
		return sn, nil
	}
	return netip.Prefix{}, &cloud.Error{Kind: cloud.Fatal, Op: "DescribeSubnets", Err: fmt.Errorf("subnet %s is not listed", id)}
}

// describeENIs lists the ENIs matching filters, every page.
func (p *Provider) describeENIs(ctx context.Context, filters ...types.Filter) ([]types.NetworkInterface, error) {
	in := &ec2.DescribeNetworkInterfacesInput{Filters: filters, MaxResults: awssdk.Int32(1000)}
	var out []types.NetworkInterface
	for {
		page, err := call(ctx, p, "DescribeNetworkInterfaces", func(ctx context.Context) (*ec2.DescribeNetworkInterfacesOutput, error) {
			return p.ec2.DescribeNetworkInterfaces(ctx, in)
		})
		if err != nil {
			return nil, err
		}
		out = append(out, page.NetworkInterfaces...)
		if awssdk.ToString(page.NextToken) == "" {
			return out, nil
		}
		in.NextToken = page.NextToken
	}
}

// describeENI reads one ENI; a missing one is a *cloud.Error with Code
// InvalidNetworkInterfaceID.NotFound.
func (p *Provider) describeENI(ctx context.Context, id string) (types.NetworkInterface, error) {
	if !validID("eni", id) {
		return types.NetworkInterface{}, &cloud.Error{Kind: cloud.Fatal, Op: "DescribeNetworkInterfaces", Err: fmt.Errorf("%q is not an eni id", id)}
	}
	out, err := call(ctx, p, "DescribeNetworkInterfaces", func(ctx context.Context) (*ec2.DescribeNetworkInterfacesOutput, error) {
		return p.ec2.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{id}})
	})
	if err != nil {
		return types.NetworkInterface{}, err
	}
	for _, e := range out.NetworkInterfaces {
		if awssdk.ToString(e.NetworkInterfaceId) == id {
			return e, nil
		}
	}
	return types.NetworkInterface{}, &cloud.Error{Kind: cloud.Conflict, Op: "DescribeNetworkInterfaces", Code: codeENINotFound,
		Err: fmt.Errorf("eni %s is not listed", id)}
}

func filter(name string, values ...string) types.Filter {
	return types.Filter{Name: awssdk.String(name), Values: values}
}

// isPrimary reports an ENI attached to instance at device 0.
func isPrimary(e types.NetworkInterface, instance string) bool {
	a := e.Attachment
	return a != nil && awssdk.ToString(a.InstanceId) == instance && awssdk.ToInt32(a.DeviceIndex) == 0
}

// tags returns an ENI's tags as a map.
func tags(e types.NetworkInterface) map[string]string {
	m := make(map[string]string, len(e.TagSet))
	for _, t := range e.TagSet {
		m[awssdk.ToString(t.Key)] = awssdk.ToString(t.Value)
	}
	return m
}

// ours reports an ENI vnet-cni created for this cluster and this instance.
func (p *Provider) ours(e types.NetworkInterface) bool {
	t := tags(e)
	return t[TagCreatedBy] == createdBy && t[TagCluster] == p.cfg.ClusterName && t[TagInstance] == p.node.InstanceID
}

// manages reports whether the provider may change the addresses of e: the
// primary ENI, or one of vnet-cni's of this instance.
func (p *Provider) manages(e types.NetworkInterface) bool {
	if isPrimary(e, p.node.InstanceID) {
		return true
	}
	if !p.ours(e) {
		return false
	}
	return e.Attachment == nil || awssdk.ToString(e.Attachment.InstanceId) == p.node.InstanceID
}

// knownManaged reports whether id was among the ENIs last reported.
func (p *Provider) knownManaged(id string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.managed[id]
}

func (p *Provider) setManaged(id string, on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if on {
		p.managed[id] = true
	} else {
		delete(p.managed, id)
	}
}
