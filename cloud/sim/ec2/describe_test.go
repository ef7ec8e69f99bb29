package ec2

import (
	"net/http"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

func TestDescribeInstances(t *testing.T) {
	e := newEnv(t, nil)
	ctx := ctxT(t)
	out, err := e.ec2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{node0}})
	noErr(t, err)
	if len(out.Reservations) != 1 || len(out.Reservations[0].Instances) != 1 {
		t.Fatalf("reservations = %+v", out.Reservations)
	}
	in := out.Reservations[0].Instances[0]
	if aws.ToString(in.InstanceId) != node0 || in.InstanceType != types.InstanceTypeM5Large ||
		aws.ToString(in.PrivateIpAddress) != "10.0.0.10" || aws.ToString(in.SubnetId) != mainSubnet ||
		in.State == nil || in.State.Name != types.InstanceStateNameRunning || len(in.NetworkInterfaces) != 1 {
		t.Fatalf("instance = %+v", in)
	}
	if ni := in.NetworkInterfaces[0]; aws.ToString(ni.MacAddress) != "0e:00:00:00:00:0a" ||
		aws.ToInt32(ni.Attachment.DeviceIndex) != 0 || ni.Attachment.Status != types.AttachmentStatusAttached {
		t.Fatalf("primary eni = %+v", ni)
	}
	out, err = e.ec2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{Filters: []types.Filter{
		{Name: aws.String("instance-type"), Values: []string{"t3.*"}},
	}})
	noErr(t, err)
	if len(out.Reservations) != 1 || aws.ToString(out.Reservations[0].Instances[0].InstanceId) != node1 {
		t.Fatalf("filtered = %+v", out.Reservations)
	}
	_, err = e.ec2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{"i-0123456789abcdef0"}})
	wantCode(t, err, CodeInvalidInstanceIDNotFound, http.StatusBadRequest)
	_, err = e.ec2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{Filters: []types.Filter{{Name: aws.String("no-such-filter"), Values: []string{"x"}}}})
	wantCode(t, err, CodeInvalidParameterValue, http.StatusBadRequest)
}

func TestDescribeInstanceTypes(t *testing.T) {
	e := newEnv(t, nil)
	ctx := ctxT(t)
	out, err := e.ec2.DescribeInstanceTypes(ctx, &ec2.DescribeInstanceTypesInput{
		InstanceTypes: []types.InstanceType{types.InstanceTypeT3Medium, types.InstanceTypeM5Large, types.InstanceTypeM54xlarge},
	})
	noErr(t, err)
	got := map[types.InstanceType][2]int32{}
	for _, it := range out.InstanceTypes {
		got[it.InstanceType] = [2]int32{aws.ToInt32(it.NetworkInfo.MaximumNetworkInterfaces), aws.ToInt32(it.NetworkInfo.Ipv4AddressesPerInterface)}
	}
	want := map[types.InstanceType][2]int32{"t3.medium": {3, 6}, "m5.large": {3, 10}, "m5.4xlarge": {8, 30}}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: ENIs x IPs = %v, want %v", k, got[k], v)
		}
	}
	_, err = e.ec2.DescribeInstanceTypes(ctx, &ec2.DescribeInstanceTypesInput{InstanceTypes: []types.InstanceType{"x9.huge"}})
	wantCode(t, err, CodeInvalidInstanceType, http.StatusBadRequest)
}

func TestDescribeSubnets(t *testing.T) {
	e := newEnv(t, nil)
	ctx := ctxT(t)
	out, err := e.ec2.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{SubnetIds: []string{mainSubnet}})
	noErr(t, err)
	if len(out.Subnets) != 1 {
		t.Fatalf("subnets = %+v", out.Subnets)
	}
	sn := out.Subnets[0]
	// 256 - 5 reserved - 2 primaries.
	if aws.ToString(sn.CidrBlock) != "10.0.0.0/24" || aws.ToInt32(sn.AvailableIpAddressCount) != 249 ||
		aws.ToString(sn.AvailabilityZone) != "us-east-1a" || aws.ToString(sn.VpcId) != "vpc-00000000000000sim" {
		t.Fatalf("subnet = %+v", sn)
	}
	out, err = e.ec2.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{Filters: []types.Filter{
		{Name: aws.String("cidr-block"), Values: []string{"10.0.1.0/28"}},
	}})
	noErr(t, err)
	if len(out.Subnets) != 1 || aws.ToString(out.Subnets[0].SubnetId) != smallSubnet {
		t.Fatalf("filtered = %+v", out.Subnets)
	}
	_, err = e.ec2.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{SubnetIds: []string{"subnet-0nope"}})
	wantCode(t, err, CodeInvalidSubnetIDNotFound, http.StatusBadRequest)
}
