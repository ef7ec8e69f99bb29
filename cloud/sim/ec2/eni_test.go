package ec2

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

func describeENI(t *testing.T, e *env, id string) types.NetworkInterface {
	t.Helper()
	out, err := e.ec2.DescribeNetworkInterfaces(ctxT(t), &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{id}})
	noErr(t, err)
	if len(out.NetworkInterfaces) != 1 {
		t.Fatalf("describe %s: %d interfaces", id, len(out.NetworkInterfaces))
	}
	return out.NetworkInterfaces[0]
}

func addrsOf(ni types.NetworkInterface) []string {
	var out []string
	for _, p := range ni.PrivateIpAddresses {
		out = append(out, aws.ToString(p.PrivateIpAddress))
	}
	return out
}

func filterIDs(t *testing.T, e *env, fs ...types.Filter) []string {
	t.Helper()
	out, err := e.ec2.DescribeNetworkInterfaces(ctxT(t), &ec2.DescribeNetworkInterfacesInput{Filters: fs})
	noErr(t, err)
	var ids []string
	for _, ni := range out.NetworkInterfaces {
		ids = append(ids, aws.ToString(ni.NetworkInterfaceId))
	}
	slices.Sort(ids)
	return ids
}

func sdkFilter(name string, values ...string) types.Filter {
	return types.Filter{Name: aws.String(name), Values: values}
}

func createENI(t *testing.T, e *env, in *ec2.CreateNetworkInterfaceInput) string {
	t.Helper()
	out, err := e.ec2.CreateNetworkInterface(ctxT(t), in)
	noErr(t, err)
	return aws.ToString(out.NetworkInterface.NetworkInterfaceId)
}

func attach(t *testing.T, e *env, eni, inst string, dev int32) string {
	t.Helper()
	out, err := e.ec2.AttachNetworkInterface(ctxT(t), &ec2.AttachNetworkInterfaceInput{
		NetworkInterfaceId: aws.String(eni), InstanceId: aws.String(inst), DeviceIndex: aws.Int32(dev),
	})
	noErr(t, err)
	return aws.ToString(out.AttachmentId)
}

// TestENILifecycle walks one ENI through every mutating call, checking each
// effect with Describe.
func TestENILifecycle(t *testing.T) {
	e := newEnv(t, nil)
	ctx := ctxT(t)
	out, err := e.ec2.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{
		SubnetId: aws.String(mainSubnet), Description: aws.String("vnet-cni"),
		TagSpecifications: []types.TagSpecification{{
			ResourceType: types.ResourceTypeNetworkInterface,
			Tags:         []types.Tag{{Key: aws.String("vnet-cni/cluster"), Value: aws.String("c1")}, {Key: aws.String("vnet-cni/instance"), Value: aws.String(node0)}},
		}},
	})
	noErr(t, err)
	ni := *out.NetworkInterface
	id := aws.ToString(ni.NetworkInterfaceId)
	// The lowest free address of 10.0.0.0/24: .0-.3 are reserved.
	if aws.ToString(ni.PrivateIpAddress) != "10.0.0.4" || ni.Status != types.NetworkInterfaceStatusAvailable ||
		!aws.ToBool(ni.SourceDestCheck) || len(ni.TagSet) != 2 || !strings.HasPrefix(id, "eni-") || aws.ToString(ni.MacAddress) == "" {
		t.Fatalf("created = %+v", ni)
	}
	if got := filterIDs(t, e, sdkFilter("tag:vnet-cni/cluster", "c1"), sdkFilter("status", "available")); !slices.Equal(got, []string{id}) {
		t.Fatalf("tag+status filter = %v, want [%s]", got, id)
	}

	// Attach is asynchronous: attaching, then attached.
	att := attach(t, e, id, node0, 1)
	if got := describeENI(t, e, id); got.Attachment == nil || got.Attachment.Status != types.AttachmentStatusAttaching ||
		aws.ToString(got.Attachment.AttachmentId) != att {
		t.Fatalf("right after attach: %+v", got.Attachment)
	}
	waitFor(t, "attached", func() bool { return describeENI(t, e, id).Attachment.Status == types.AttachmentStatusAttached })
	if got := describeENI(t, e, id); got.Status != types.NetworkInterfaceStatusInUse || aws.ToInt32(got.Attachment.DeviceIndex) != 1 {
		t.Fatalf("attached: %+v", got)
	}
	if got := filterIDs(t, e, sdkFilter("attachment.instance-id", node0)); len(got) != 2 || !slices.Contains(got, id) {
		t.Fatalf("attachment.instance-id filter = %v", got)
	}
	_, err = e.ec2.AttachNetworkInterface(ctx, &ec2.AttachNetworkInterfaceInput{NetworkInterfaceId: aws.String(id), InstanceId: aws.String(node1), DeviceIndex: aws.Int32(1)})
	wantCode(t, err, CodeInvalidENIInUse, http.StatusBadRequest)

	// Assign by count: the lowest free addresses.
	as, err := e.ec2.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(id), SecondaryPrivateIpAddressCount: aws.Int32(3)})
	noErr(t, err)
	var got []string
	for _, a := range as.AssignedPrivateIpAddresses {
		got = append(got, aws.ToString(a.PrivateIpAddress))
	}
	if !slices.Equal(got, []string{"10.0.0.5", "10.0.0.6", "10.0.0.7"}) {
		t.Fatalf("assigned %v", got)
	}
	// Explicit list; in use elsewhere is refused; count and list are exclusive.
	_, err = e.ec2.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(id), PrivateIpAddresses: []string{"10.0.0.100", "10.0.0.101"}})
	noErr(t, err)
	_, err = e.ec2.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(id), PrivateIpAddresses: []string{"10.0.0.11"}})
	wantCode(t, err, CodeInvalidIPAddressInUse, http.StatusBadRequest)
	_, err = e.ec2.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(id), PrivateIpAddresses: []string{"10.0.0.102"}, SecondaryPrivateIpAddressCount: aws.Int32(1)})
	wantCode(t, err, CodeInvalidParameterCombination, http.StatusBadRequest)
	// m5.large: 10 per ENI; it holds 6.
	_, err = e.ec2.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(id), SecondaryPrivateIpAddressCount: aws.Int32(5)})
	wantCode(t, err, CodePrivateIPAddressLimitExceeded, http.StatusBadRequest)
	_, err = e.ec2.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(id), SecondaryPrivateIpAddressCount: aws.Int32(4)})
	noErr(t, err)
	if n := len(describeENI(t, e, id).PrivateIpAddresses); n != 10 {
		t.Fatalf("%d addresses, want 10", n)
	}
	if got := filterIDs(t, e, sdkFilter("private-ip-address", "10.0.0.100")); !slices.Equal(got, []string{id}) {
		t.Fatalf("private-ip-address filter = %v", got)
	}

	// Unassign: explicit, secondary only, all or nothing.
	_, err = e.ec2.UnassignPrivateIpAddresses(ctx, &ec2.UnassignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(id), PrivateIpAddresses: []string{"10.0.0.100", "10.0.0.200"}})
	wantCode(t, err, CodeInvalidParameterValue, http.StatusBadRequest)
	_, err = e.ec2.UnassignPrivateIpAddresses(ctx, &ec2.UnassignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(id), PrivateIpAddresses: []string{"10.0.0.4"}})
	wantCode(t, err, CodeInvalidParameterValue, http.StatusBadRequest)
	_, err = e.ec2.UnassignPrivateIpAddresses(ctx, &ec2.UnassignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(id), PrivateIpAddresses: []string{"10.0.0.100", "10.0.0.5"}})
	noErr(t, err)
	if a := addrsOf(describeENI(t, e, id)); len(a) != 8 || slices.Contains(a, "10.0.0.100") || slices.Contains(a, "10.0.0.5") || a[0] != "10.0.0.4" {
		t.Fatalf("after unassign: %v", a)
	}
	// A freed address is the lowest free again.
	as, err = e.ec2.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(id), SecondaryPrivateIpAddressCount: aws.Int32(1)})
	noErr(t, err)
	if a := aws.ToString(as.AssignedPrivateIpAddresses[0].PrivateIpAddress); a != "10.0.0.5" {
		t.Fatalf("reassigned %s, want 10.0.0.5", a)
	}

	// Attributes.
	_, err = e.ec2.ModifyNetworkInterfaceAttribute(ctx, &ec2.ModifyNetworkInterfaceAttributeInput{NetworkInterfaceId: aws.String(id), SourceDestCheck: &types.AttributeBooleanValue{Value: aws.Bool(false)}})
	noErr(t, err)
	_, err = e.ec2.ModifyNetworkInterfaceAttribute(ctx, &ec2.ModifyNetworkInterfaceAttributeInput{NetworkInterfaceId: aws.String(id),
		Attachment: &types.NetworkInterfaceAttachmentChanges{AttachmentId: aws.String(att), DeleteOnTermination: aws.Bool(true)}})
	noErr(t, err)
	_, err = e.ec2.ModifyNetworkInterfaceAttribute(ctx, &ec2.ModifyNetworkInterfaceAttributeInput{NetworkInterfaceId: aws.String(id),
		SourceDestCheck: &types.AttributeBooleanValue{Value: aws.Bool(true)}, Description: &types.AttributeValue{Value: aws.String("x")}})
	wantCode(t, err, CodeInvalidParameterCombination, http.StatusBadRequest)
	if got := describeENI(t, e, id); aws.ToBool(got.SourceDestCheck) || !aws.ToBool(got.Attachment.DeleteOnTermination) {
		t.Fatalf("attributes: sourceDestCheck %v deleteOnTermination %v", aws.ToBool(got.SourceDestCheck), aws.ToBool(got.Attachment.DeleteOnTermination))
	}

	// Tags afterwards.
	_, err = e.ec2.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{id}, Tags: []types.Tag{{Key: aws.String("owner"), Value: aws.String("ipamd")}}})
	noErr(t, err)
	if got := filterIDs(t, e, sdkFilter("tag:owner", "ipamd")); !slices.Equal(got, []string{id}) {
		t.Fatalf("tag filter after CreateTags = %v", got)
	}
	_, err = e.ec2.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{"eni-0000000000000dead"}, Tags: []types.Tag{{Key: aws.String("k"), Value: aws.String("v")}}})
	wantCode(t, err, CodeInvalidENIIDNotFound, http.StatusBadRequest)

	// Delete needs a detached ENI; detach is asynchronous too; the primary
	// ENI cannot be detached.
	_, err = e.ec2.DeleteNetworkInterface(ctx, &ec2.DeleteNetworkInterfaceInput{NetworkInterfaceId: aws.String(id)})
	wantCode(t, err, CodeInvalidENIInUse, http.StatusBadRequest)
	inst, err := e.ec2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{node0}})
	noErr(t, err)
	for _, n := range inst.Reservations[0].Instances[0].NetworkInterfaces {
		if aws.ToInt32(n.Attachment.DeviceIndex) == 0 {
			_, err = e.ec2.DetachNetworkInterface(ctx, &ec2.DetachNetworkInterfaceInput{AttachmentId: n.Attachment.AttachmentId})
			wantCode(t, err, CodeOperationNotPermitted, http.StatusBadRequest)
		}
	}
	_, err = e.ec2.DetachNetworkInterface(ctx, &ec2.DetachNetworkInterfaceInput{AttachmentId: aws.String(att)})
	noErr(t, err)
	if got := describeENI(t, e, id); got.Status != types.NetworkInterfaceStatusDetaching {
		t.Fatalf("right after detach: status %s", got.Status)
	}
	waitFor(t, "available", func() bool { return describeENI(t, e, id).Status == types.NetworkInterfaceStatusAvailable })
	if got := describeENI(t, e, id); got.Attachment != nil {
		t.Fatalf("detached ENI still has attachment %+v", got.Attachment)
	}
	_, err = e.ec2.DeleteNetworkInterface(ctx, &ec2.DeleteNetworkInterfaceInput{NetworkInterfaceId: aws.String(id)})
	noErr(t, err)
	_, err = e.ec2.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{id}})
	wantCode(t, err, CodeInvalidENIIDNotFound, http.StatusBadRequest)
	_, err = e.ec2.DeleteNetworkInterface(ctx, &ec2.DeleteNetworkInterfaceInput{NetworkInterfaceId: aws.String(id)})
	wantCode(t, err, CodeInvalidENIIDNotFound, http.StatusBadRequest)
	// Its addresses are free again.
	id2 := createENI(t, e, &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(mainSubnet)})
	if a := addrsOf(describeENI(t, e, id2)); !slices.Equal(a, []string{"10.0.0.4"}) {
		t.Fatalf("new ENI got %v, want the freed 10.0.0.4", a)
	}
}

func TestAttachmentLimit(t *testing.T) {
	e := newEnv(t, nil)
	ctx := ctxT(t)
	// t3.medium: 3 ENIs, the primary included.
	for dev := int32(1); dev <= 2; dev++ {
		attach(t, e, createENI(t, e, &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(mainSubnet)}), node1, dev)
	}
	extra := createENI(t, e, &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(mainSubnet)})
	_, err := e.ec2.AttachNetworkInterface(ctx, &ec2.AttachNetworkInterfaceInput{NetworkInterfaceId: aws.String(extra), InstanceId: aws.String(node1), DeviceIndex: aws.Int32(3)})
	wantCode(t, err, CodeAttachmentLimitExceeded, http.StatusBadRequest)
	// A used device index is refused on an instance with room.
	_, err = e.ec2.AttachNetworkInterface(ctx, &ec2.AttachNetworkInterfaceInput{NetworkInterfaceId: aws.String(extra), InstanceId: aws.String(node0), DeviceIndex: aws.Int32(0)})
	wantCode(t, err, CodeInvalidParameterValue, http.StatusBadRequest)
	// t3.medium: 6 addresses per ENI.
	id := filterIDs(t, e, sdkFilter("attachment.instance-id", node1), sdkFilter("attachment.device-index", "1"))[0]
	_, err = e.ec2.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(id), SecondaryPrivateIpAddressCount: aws.Int32(6)})
	wantCode(t, err, CodePrivateIPAddressLimitExceeded, http.StatusBadRequest)
	_, err = e.ec2.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(id), SecondaryPrivateIpAddressCount: aws.Int32(5)})
	noErr(t, err)
	_, err = e.ec2.AttachNetworkInterface(ctx, &ec2.AttachNetworkInterfaceInput{NetworkInterfaceId: aws.String("eni-00000000000000bad"), InstanceId: aws.String(node0), DeviceIndex: aws.Int32(1)})
	wantCode(t, err, CodeInvalidENIIDNotFound, http.StatusBadRequest)
}

func TestSubnetFull(t *testing.T) {
	e := newEnv(t, nil)
	ctx := ctxT(t)
	// A /28 has 11 usable addresses.
	id := createENI(t, e, &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(smallSubnet), SecondaryPrivateIpAddressCount: aws.Int32(9)})
	if a := addrsOf(describeENI(t, e, id)); len(a) != 10 || a[0] != "10.0.1.4" || a[9] != "10.0.1.13" {
		t.Fatalf("addresses %v", a)
	}
	_, err := e.ec2.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(id), SecondaryPrivateIpAddressCount: aws.Int32(2)})
	wantCode(t, err, CodeInsufficientFreeAddresses, http.StatusBadRequest)
	id2 := createENI(t, e, &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(smallSubnet)})
	if a := addrsOf(describeENI(t, e, id2)); !slices.Equal(a, []string{"10.0.1.14"}) {
		t.Fatalf("last address: %v", a)
	}
	_, err = e.ec2.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(smallSubnet)})
	wantCode(t, err, CodeInsufficientFreeAddresses, http.StatusBadRequest)
	_, err = e.ec2.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(mainSubnet), PrivateIpAddress: aws.String("10.0.0.10")})
	wantCode(t, err, CodeInvalidIPAddressInUse, http.StatusBadRequest)
	sn, err := e.ec2.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{SubnetIds: []string{smallSubnet}})
	noErr(t, err)
	if n := aws.ToInt32(sn.Subnets[0].AvailableIpAddressCount); n != 0 {
		t.Fatalf("available = %d, want 0", n)
	}
}

// TestAddressesUnique hammers assignment from many goroutines: every
// address is held by exactly one ENI.
func TestAddressesUnique(t *testing.T) {
	e := newEnv(t, nil)
	var ids []string
	for range 6 {
		ids = append(ids, createENI(t, e, &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(mainSubnet)}))
	}
	errs := make(chan error, len(ids)*5)
	for _, id := range ids {
		go func() {
			for range 5 {
				_, err := e.ec2.AssignPrivateIpAddresses(context.Background(), &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(id), SecondaryPrivateIpAddressCount: aws.Int32(2)})
				errs <- err
			}
		}()
	}
	for range len(ids) * 5 {
		noErr(t, <-errs)
	}
	seen := map[string]string{}
	for _, id := range ids {
		for _, a := range addrsOf(describeENI(t, e, id)) {
			if o, dup := seen[a]; dup {
				t.Fatalf("%s on %s and %s", a, o, id)
			}
			seen[a] = id
		}
	}
	if len(seen) != 6*11 {
		t.Fatalf("%d addresses, want 66", len(seen))
	}
}
