package aws

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/vnet-cni/vnet-cni/cloud"
)

// The tags of every ENI vnet-cni creates. Sweep and RemoveInterface act
// only on ENIs with TagCreatedBy = "vnet-cni" and this cluster's
// TagCluster; TagCreatedAt (RFC 3339, UTC) dates them, since EC2 reports
// no creation time of its own.
const (
	TagCluster   = "vnet-cni/cluster"
	TagInstance  = "vnet-cni/instance-id"
	TagCreatedBy = "vnet-cni/created-by"
	TagCreatedAt = "vnet-cni/created-at"
	createdBy    = "vnet-cni"
)

// ownTagFilters select vnet-cni's ENIs of this cluster, and of instance
// unless it is "".
func (p *Provider) ownTagFilters(instance string) []types.Filter {
	fs := []types.Filter{
		filter("tag:"+TagCreatedBy, createdBy),
		filter("tag:"+TagCluster, p.cfg.ClusterName),
	}
	if instance != "" {
		fs = append(fs, filter("tag:"+TagInstance, instance))
	}
	return fs
}

// AddInterface gives the instance one more ENI for pod addresses and
// returns it, attached, with DeleteOnTermination set. The daemon calls it
// when every managed ENI is full (AddAddresses answered NICLimit, or the
// pool's arithmetic says so) and Instance's Interfaces are fewer than its
// Limits.Interfaces; the new ENI then takes addresses with AddAddresses.
//
// An unattached ENI that vnet-cni created for this instance before (an
// AddInterface cut short by a crash between its create and its attach) is
// adopted instead of creating another, and so is an ENI of vnet-cni's for
// this instance that is still attaching, or attached but not among the
// ones Instance last reported (a process killed while it waited for the
// attachment: the attach went through). Otherwise the ENI is created in the
// primary ENI's subnet with its security groups and vnet-cni's tags. It is
// attached at the lowest free device index and waited for (polling with
// back-off, at most AttachTimeout). Any failure after the create detaches
// and deletes it again, so nothing leaks; what a failed roll-back leaves,
// the next Instance removes. An instance at its ENI limit gets a
// *cloud.Error of kind InterfaceLimit, before any change.
func (p *Provider) AddInterface(ctx context.Context) (cloud.Interface, error) {
	p.lifecycle.Lock()
	defer p.lifecycle.Unlock()
	attached, err := p.describeENIs(ctx, filter("attachment.instance-id", p.node.InstanceID))
	if err != nil {
		return cloud.Interface{}, err
	}
	if e, ok := p.pendingAttach(attached); ok {
		return p.adopt(ctx, e)
	}
	if len(attached) >= p.limits.Interfaces {
		return cloud.Interface{}, &cloud.Error{Kind: cloud.InterfaceLimit, Op: "AttachNetworkInterface",
			Err: fmt.Errorf("instance %s (%s) holds %d of its %d network interfaces", p.node.InstanceID, p.node.InstanceType, len(attached), p.limits.Interfaces)}
	}
	var primary *types.NetworkInterface
	used := map[int32]bool{}
	for i, e := range attached {
		if e.Attachment == nil {
			continue
		}
		used[awssdk.ToInt32(e.Attachment.DeviceIndex)] = true
		if isPrimary(e, p.node.InstanceID) {
			primary = &attached[i]
		}
	}
	if primary == nil {
		return cloud.Interface{}, &cloud.Error{Kind: cloud.Fatal, Op: "DescribeNetworkInterfaces",
			Err: fmt.Errorf("instance %s has no network interface at device 0", p.node.InstanceID)}
	}
	device := int32(1)
	for used[device] {
		device++
	}
	leftovers, err := p.leftovers(ctx)
	if err != nil {
		return cloud.Interface{}, err
	}
	var id string
	if len(leftovers) > 0 {
		id = awssdk.ToString(leftovers[0].NetworkInterfaceId)
		p.log.Info("adopting an ENI vnet-cni created but never attached (an interrupted AddInterface)", "eni", id)
		for _, e := range leftovers[1:] {
			if err := p.deleteENI(ctx, awssdk.ToString(e.NetworkInterfaceId)); err != nil {
				p.log.Warn("cannot delete a surplus unattached ENI", "eni", awssdk.ToString(e.NetworkInterfaceId), "err", err)
			}
		}
	} else {
		e, err := p.createENI(ctx, *primary)
		if err != nil {
			return cloud.Interface{}, err
		}
		id = awssdk.ToString(e.NetworkInterfaceId)
	}
	ifc, err := p.attach(ctx, id, device)
	if err != nil {
		if rerr := p.rollBack(ctx, id); rerr != nil {
			p.mu.Lock()
			p.repair = true
			p.mu.Unlock()
			err = errors.Join(err, fmt.Errorf("roll back eni %s: %w", id, rerr))
		}
		return cloud.Interface{}, err
	}
	p.setManaged(id, true)
	p.log.Info("attached a new ENI", "eni", id, "device", ifc.DeviceIndex, "mac", ifc.MAC, "subnet", ifc.SubnetID)
	return ifc, nil
}

// createENI creates an ENI for this instance in the primary ENI's subnet,
// tagged as vnet-cni's, with the primary's security groups.
func (p *Provider) createENI(ctx context.Context, primary types.NetworkInterface) (types.NetworkInterface, error) {
	var groups []string
	for _, g := range primary.Groups {
		groups = append(groups, awssdk.ToString(g.GroupId))
	}
	now := time.Now().UTC().Format(time.RFC3339)
	in := &ec2.CreateNetworkInterfaceInput{
		SubnetId:    primary.SubnetId,
		Description: awssdk.String("vnet-cni pod addresses of " + p.node.InstanceID + " in cluster " + p.cfg.ClusterName),
		Groups:      groups,
		TagSpecifications: []types.TagSpecification{{
			ResourceType: types.ResourceTypeNetworkInterface,
			Tags: []types.Tag{
				{Key: awssdk.String(TagCluster), Value: awssdk.String(p.cfg.ClusterName)},
				{Key: awssdk.String(TagInstance), Value: awssdk.String(p.node.InstanceID)},
				{Key: awssdk.String(TagCreatedBy), Value: awssdk.String(createdBy)},
				{Key: awssdk.String(TagCreatedAt), Value: awssdk.String(now)},
			},
		}},
	}
	out, err := call(ctx, p, "CreateNetworkInterface", func(ctx context.Context) (*ec2.CreateNetworkInterfaceOutput, error) {
		return p.ec2.CreateNetworkInterface(ctx, in)
	})
	if err != nil {
		return types.NetworkInterface{}, err
	}
	if out.NetworkInterface == nil || !validID("eni", awssdk.ToString(out.NetworkInterface.NetworkInterfaceId)) {
		return types.NetworkInterface{}, &cloud.Error{Kind: cloud.Transient, Op: "CreateNetworkInterface", Err: errors.New("the answer names no network interface")}
	}
	p.log.Debug("created an ENI", "eni", awssdk.ToString(out.NetworkInterface.NetworkInterfaceId))
	return *out.NetworkInterface, nil
}

// pendingAttach returns, among the ENIs attached to the instance, one of
// vnet-cni's for it that is still attaching or that is attached but
// unknown to the daemon (not among the interfaces Instance last reported).
func (p *Provider) pendingAttach(attached []types.NetworkInterface) (types.NetworkInterface, bool) {
	for _, e := range attached {
		a := e.Attachment
		if a == nil || isPrimary(e, p.node.InstanceID) || !p.ours(e) || awssdk.ToString(a.InstanceId) != p.node.InstanceID {
			continue
		}
		switch a.Status {
		case types.AttachmentStatusAttaching:
			return e, true
		case types.AttachmentStatusAttached:
			if !p.knownManaged(awssdk.ToString(e.NetworkInterfaceId)) {
				return e, true
			}
		}
	}
	return types.NetworkInterface{}, false
}

// adopt completes the attachment of e, an ENI pendingAttach found: it
// waits until it is attached, sets DeleteOnTermination and returns it. A
// failure leaves the ENI as it is (attached or attaching to this instance,
// it is no leak: Instance lists it once attached, and a later AddInterface
// adopts it again).
func (p *Provider) adopt(ctx context.Context, e types.NetworkInterface) (cloud.Interface, error) {
	id := awssdk.ToString(e.NetworkInterfaceId)
	p.log.Info("adopting an ENI vnet-cni attached before it was restarted", "eni", id,
		"device", awssdk.ToInt32(e.Attachment.DeviceIndex), "status", string(e.Attachment.Status))
	ifc, err := p.finishAttach(ctx, id, awssdk.ToString(e.Attachment.AttachmentId))
	if err != nil {
		return cloud.Interface{}, err
	}
	p.setManaged(id, true)
	return ifc, nil
}

// attach attaches ENI id at device, waits until it is attached and sets
// DeleteOnTermination.
func (p *Provider) attach(ctx context.Context, id string, device int32) (cloud.Interface, error) {
	out, err := call(ctx, p, "AttachNetworkInterface", func(ctx context.Context) (*ec2.AttachNetworkInterfaceOutput, error) {
		return p.ec2.AttachNetworkInterface(ctx, &ec2.AttachNetworkInterfaceInput{
			NetworkInterfaceId: awssdk.String(id),
			InstanceId:         awssdk.String(p.node.InstanceID),
			DeviceIndex:        awssdk.Int32(device),
		})
	})
	if err != nil {
		return cloud.Interface{}, err
	}
	return p.finishAttach(ctx, id, awssdk.ToString(out.AttachmentId))
}

// finishAttach waits until attachment of ENI id is attached, sets
// DeleteOnTermination and returns the interface.
func (p *Provider) finishAttach(ctx context.Context, id, attachment string) (cloud.Interface, error) {
	e, err := p.waitENI(ctx, id, "attached", func(e types.NetworkInterface) bool {
		return e.Attachment != nil && awssdk.ToString(e.Attachment.AttachmentId) == attachment &&
			e.Attachment.Status == types.AttachmentStatusAttached
	})
	if err != nil {
		return cloud.Interface{}, err
	}
	if err := p.setDeleteOnTermination(ctx, e); err != nil {
		return cloud.Interface{}, err
	}
	sn, err := p.subnet(ctx, awssdk.ToString(e.SubnetId))
	if err != nil {
		return cloud.Interface{}, err
	}
	ifc, err := toInterface(e, sn)
	if err != nil {
		return cloud.Interface{}, &cloud.Error{Kind: cloud.Fatal, Op: "DescribeNetworkInterfaces", Err: err}
	}
	ifc.Owned = !ifc.Primary && p.ours(e)
	return ifc, nil
}

func (p *Provider) setDeleteOnTermination(ctx context.Context, e types.NetworkInterface) error {
	if e.Attachment == nil {
		return &cloud.Error{Kind: cloud.Conflict, Op: "ModifyNetworkInterfaceAttribute", Err: fmt.Errorf("eni %s is not attached", awssdk.ToString(e.NetworkInterfaceId))}
	}
	_, err := call(ctx, p, "ModifyNetworkInterfaceAttribute", func(ctx context.Context) (*ec2.ModifyNetworkInterfaceAttributeOutput, error) {
		return p.ec2.ModifyNetworkInterfaceAttribute(ctx, &ec2.ModifyNetworkInterfaceAttributeInput{
			NetworkInterfaceId: e.NetworkInterfaceId,
			Attachment: &types.NetworkInterfaceAttachmentChanges{
				AttachmentId:        e.Attachment.AttachmentId,
				DeleteOnTermination: awssdk.Bool(true),
			},
		})
	})
	return err
}

// rollBack detaches (if attached) and deletes ENI id, which AddInterface
// created or adopted. It runs even when ctx is done, with deadlines of its
// own.
func (p *Provider) rollBack(ctx context.Context, id string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.cfg.AttachTimeout+2*p.cfg.CallTimeout)
	defer cancel()
	err := p.detachAndDelete(ctx, id)
	if err == nil {
		p.log.Info("rolled back an ENI that could not be attached", "eni", id)
	}
	return err
}

// detachAndDelete detaches ENI id if it is attached, waits until it is
// available and deletes it. A missing ENI is done.
func (p *Provider) detachAndDelete(ctx context.Context, id string) error {
	e, err := p.describeENI(ctx, id)
	if codeOf(err) == codeENINotFound {
		return nil
	}
	if err != nil {
		return err
	}
	if a := e.Attachment; a != nil && a.Status != types.AttachmentStatusDetaching && a.Status != types.AttachmentStatusDetached {
		_, err := call(ctx, p, "DetachNetworkInterface", func(ctx context.Context) (*ec2.DetachNetworkInterfaceOutput, error) {
			return p.ec2.DetachNetworkInterface(ctx, &ec2.DetachNetworkInterfaceInput{AttachmentId: a.AttachmentId})
		})
		if err != nil && codeOf(err) != codeAttachmentNotFound {
			return err
		}
	}
	if e.Attachment != nil {
		_, err := p.waitENI(ctx, id, "available", func(e types.NetworkInterface) bool {
			return e.Attachment == nil || e.Attachment.Status == types.AttachmentStatusDetached
		})
		if codeOf(err) == codeENINotFound {
			return nil
		}
		if err != nil {
			return err
		}
	}
	return p.deleteENI(ctx, id)
}

// deleteENI deletes ENI id; a missing one is done.
func (p *Provider) deleteENI(ctx context.Context, id string) error {
	_, err := call(ctx, p, "DeleteNetworkInterface", func(ctx context.Context) (*ec2.DeleteNetworkInterfaceOutput, error) {
		return p.ec2.DeleteNetworkInterface(ctx, &ec2.DeleteNetworkInterfaceInput{NetworkInterfaceId: awssdk.String(id)})
	})
	if codeOf(err) == codeENINotFound {
		return nil
	}
	return err
}

// waitENI reads ENI id until done holds, at most AttachTimeout: after
// PollInterval first, then twice as long each time up to 8 times
// PollInterval. Throttled and transient reads are retried until the
// deadline, a throttled one no sooner than its RetryAfter (the throttle
// hint, jittered, so that a fleet polling its attachments at once backs
// off instead of draining the describe bucket); a missing ENI ends the
// wait with its error.
func (p *Provider) waitENI(ctx context.Context, id, state string, done func(types.NetworkInterface) bool) (types.NetworkInterface, error) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.AttachTimeout)
	defer cancel()
	delay := p.cfg.PollInterval
	var last error
	for {
		timer := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			timer.Stop()
			err := fmt.Errorf("eni %s is not %s after %s: %w", id, state, p.cfg.AttachTimeout, ctx.Err())
			return types.NetworkInterface{}, &cloud.Error{Kind: cloud.Transient, Op: "DescribeNetworkInterfaces", Err: errors.Join(err, last)}
		case <-timer.C:
		}
		delay = min(2*delay, 8*p.cfg.PollInterval)
		e, err := p.describeENI(ctx, id)
		switch k := cloud.KindOf(err); {
		case err == nil && done(e):
			return e, nil
		case err == nil:
		case k == cloud.Throttled || k == cloud.Transient:
			last = err
			if ce := (*cloud.Error)(nil); errors.As(err, &ce) && ce.RetryAfter > delay {
				delay = ce.RetryAfter
			}
		default:
			return types.NetworkInterface{}, err
		}
	}
}

// RemoveInterface detaches and deletes the ENI id, which must be one that
// vnet-cni created for this instance, not the primary, and hold no
// secondary address (the daemon releases them first). The daemon calls it
// for an ENI left empty while the pool is above its targets; a missing ENI
// (InvalidNetworkInterfaceID.NotFound) is done. Any other ENI is refused
// with a Fatal *cloud.Error before any change.
func (p *Provider) RemoveInterface(ctx context.Context, id string) error {
	const op = "DetachNetworkInterface"
	p.lifecycle.Lock()
	defer p.lifecycle.Unlock()
	e, err := p.describeENI(ctx, id)
	if codeOf(err) == codeENINotFound {
		p.setManaged(id, false)
		return nil
	}
	if err != nil {
		return err
	}
	_, secondary, err := addresses(e)
	switch {
	case err != nil:
		return &cloud.Error{Kind: cloud.Fatal, Op: "DescribeNetworkInterfaces", Err: err}
	case isPrimary(e, p.node.InstanceID):
		return &cloud.Error{Kind: cloud.Fatal, Op: op, Err: fmt.Errorf("eni %s is the primary ENI of instance %s", id, p.node.InstanceID)}
	case !p.ours(e):
		return &cloud.Error{Kind: cloud.Fatal, Op: op,
			Err: fmt.Errorf("eni %s was not created by vnet-cni for instance %s in cluster %s", id, p.node.InstanceID, p.cfg.ClusterName)}
	case e.Attachment != nil && awssdk.ToString(e.Attachment.InstanceId) != p.node.InstanceID:
		return &cloud.Error{Kind: cloud.Fatal, Op: op, Err: fmt.Errorf("eni %s is attached to instance %s", id, awssdk.ToString(e.Attachment.InstanceId))}
	case len(secondary) > 0:
		return &cloud.Error{Kind: cloud.Fatal, Op: op, Err: fmt.Errorf("eni %s still holds %d secondary addresses", id, len(secondary))}
	}
	p.setManaged(id, false)
	if err := p.detachAndDelete(ctx, id); err != nil {
		return err
	}
	p.log.Info("detached and deleted an empty ENI", "eni", id)
	return nil
}

// aliveStates are the instance states in which an instance may still use
// its ENIs: Sweep leaves those alone.
var aliveStates = []string{"pending", "running", "shutting-down", "stopping", "stopped"}

// maxFilterValues is how many values EC2 takes in one filter.
const maxFilterValues = 200

// Sweep deletes the ENIs that dead instances leaked: available (not
// attached) ENIs that vnet-cni created for this cluster, older than
// SweepGrace, whose instance is not listed in a live state (it was
// terminated while such an ENI was detached or without
// DeleteOnTermination). ENIs of other clusters, ENIs vnet-cni did not
// create, attached ENIs and ENIs of live instances are never touched. It
// returns the ids it deleted, sorted, with the errors of the others.
//
// It costs one DescribeNetworkInterfaces, one DescribeInstances when there
// are candidates, and a delete per leak: the daemon may run it on every
// node every few minutes, with jitter; once per cluster is enough.
func (p *Provider) Sweep(ctx context.Context) ([]string, error) {
	list, err := p.describeENIs(ctx, append(p.ownTagFilters(""), filter("status", string(types.NetworkInterfaceStatusAvailable)))...)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	byInstance := map[string][]string{}
	for _, e := range list {
		id, t := awssdk.ToString(e.NetworkInterfaceId), tags(e)
		created, err := time.Parse(time.RFC3339, t[TagCreatedAt])
		switch {
		case e.Attachment != nil && e.Attachment.Status != types.AttachmentStatusDetached:
			continue
		case !validID("i", t[TagInstance]):
			p.log.Warn("sweep: leaving a vnet-cni ENI without a valid instance tag", "eni", id, "instance", t[TagInstance])
			continue
		case err != nil:
			p.log.Warn("sweep: leaving a vnet-cni ENI without a valid creation time", "eni", id, "createdAt", t[TagCreatedAt])
			continue
		case now.Sub(created) < p.cfg.SweepGrace:
			continue
		}
		byInstance[t[TagInstance]] = append(byInstance[t[TagInstance]], id)
	}
	if len(byInstance) == 0 {
		return nil, nil
	}
	alive, err := p.liveInstances(ctx, slices.Sorted(maps.Keys(byInstance)))
	if err != nil {
		return nil, err
	}
	var deleted []string
	var errs []error
	for inst, ids := range byInstance {
		if alive[inst] {
			continue
		}
		for _, id := range ids {
			err := p.deleteENI(ctx, id)
			switch {
			case err == nil:
				deleted = append(deleted, id)
				p.log.Info("sweep: deleted an ENI a dead instance leaked", "eni", id, "instance", inst)
			case codeOf(err) == codeENIInUse:
				// Attached meanwhile: somebody uses it.
			case cloud.KindOf(err) == cloud.Throttled:
				// Do not push on: the next sweep goes on.
				slices.Sort(deleted)
				return deleted, errors.Join(append(errs, err)...)
			default:
				errs = append(errs, fmt.Errorf("sweep eni %s: %w", id, err))
			}
		}
	}
	slices.Sort(deleted)
	return deleted, errors.Join(errs...)
}

// liveInstances returns which of ids are listed in a live state.
func (p *Provider) liveInstances(ctx context.Context, ids []string) (map[string]bool, error) {
	alive := map[string]bool{}
	for chunk := range slices.Chunk(ids, maxFilterValues) {
		in := &ec2.DescribeInstancesInput{
			Filters:    []types.Filter{filter("instance-id", chunk...), filter("instance-state-name", aliveStates...)},
			MaxResults: awssdk.Int32(1000),
		}
		for {
			out, err := call(ctx, p, "DescribeInstances", func(ctx context.Context) (*ec2.DescribeInstancesOutput, error) {
				return p.ec2.DescribeInstances(ctx, in)
			})
			if err != nil {
				return nil, err
			}
			for _, r := range out.Reservations {
				for _, i := range r.Instances {
					alive[awssdk.ToString(i.InstanceId)] = true
				}
			}
			if awssdk.ToString(out.NextToken) == "" {
				break
			}
			in.NextToken = out.NextToken
		}
	}
	return alive, nil
}
