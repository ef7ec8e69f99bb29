// Package ec2ops is an operator's view of the simulated EC2: an
// aws-sdk-go-v2 EC2 client signed with the static credentials of sim.json
// and trusting the sim's CA, as a person with the console or the CLI would
// reach the ENIs, outside vnet-ipamd.
package ec2ops

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"slices"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/vnet-cni/vnet-cni/cloud/sim"
)

// Client returns an EC2 client of the sim described by desc (the SDK's
// standard retryer, three attempts).
func Client(ctx context.Context, desc sim.Description) (*ec2.Client, error) {
	if desc.Cloud != sim.CloudAWS || desc.StaticCredentials == nil {
		return nil, fmt.Errorf("ec2ops: sim %s is not an AWS run with static credentials", desc.Prefix)
	}
	pem, err := os.ReadFile(desc.CAFile)
	if err != nil {
		return nil, fmt.Errorf("the sim's CA: %w", err)
	}
	sc := desc.StaticCredentials
	cfg, err := awsconfig.LoadDefaultConfig(ctx, awsconfig.WithRegion(desc.Region),
		awsconfig.WithCustomCABundle(bytes.NewReader(pem)),
		awsconfig.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(sc.AccessKeyID, sc.SecretAccessKey, "")),
		awsconfig.WithRetryMaxAttempts(3))
	if err != nil {
		return nil, fmt.Errorf("ec2ops: sdk config: %w", err)
	}
	return ec2.NewFromConfig(cfg, func(o *ec2.Options) { o.BaseEndpoint = awssdk.String(desc.EC2Endpoint) }), nil
}

// ENI is one network interface as EC2 describes it.
type ENI struct {
	ID         string
	MAC        string
	InstanceID string
	// Device is the attachment's device index, -1 when not attached.
	Device int
	// Status is the ENI's status (available, in-use, ...).
	Status string
	// Primary is the ENI's primary address; Secondary its other
	// addresses, sorted.
	Primary   netip.Addr
	Secondary []netip.Addr
	// SourceDestCheck is the ENI's source/destination check.
	SourceDestCheck bool
	Tags            map[string]string
}

// ENIs describes the ENIs attached to instance, or tagged for it by
// vnet-cni (vnet-cni/instance-id) when tagged is set, by device index
// (unattached ones last).
func ENIs(ctx context.Context, c *ec2.Client, instance string, tagged bool) ([]ENI, error) {
	filter := ec2types.Filter{Name: awssdk.String("attachment.instance-id"), Values: []string{instance}}
	if tagged {
		filter = ec2types.Filter{Name: awssdk.String("tag:vnet-cni/instance-id"), Values: []string{instance}}
	}
	var out []ENI
	p := ec2.NewDescribeNetworkInterfacesPaginator(c, &ec2.DescribeNetworkInterfacesInput{Filters: []ec2types.Filter{filter}})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("describe network interfaces of %s: %w", instance, err)
		}
		for _, ni := range page.NetworkInterfaces {
			e, err := eniOf(ni)
			if err != nil {
				return nil, err
			}
			out = append(out, e)
		}
	}
	slices.SortFunc(out, func(a, b ENI) int {
		if a.Device < 0 || b.Device < 0 {
			return b.Device - a.Device
		}
		return a.Device - b.Device
	})
	return out, nil
}

func eniOf(ni ec2types.NetworkInterface) (ENI, error) {
	e := ENI{
		ID: awssdk.ToString(ni.NetworkInterfaceId), MAC: awssdk.ToString(ni.MacAddress),
		Status: string(ni.Status), Device: -1, SourceDestCheck: awssdk.ToBool(ni.SourceDestCheck),
		Tags: map[string]string{},
	}
	if a := ni.Attachment; a != nil {
		e.InstanceID = awssdk.ToString(a.InstanceId)
		e.Device = int(awssdk.ToInt32(a.DeviceIndex))
	}
	for _, t := range ni.TagSet {
		e.Tags[awssdk.ToString(t.Key)] = awssdk.ToString(t.Value)
	}
	for _, pa := range ni.PrivateIpAddresses {
		ip, err := netip.ParseAddr(awssdk.ToString(pa.PrivateIpAddress))
		if err != nil {
			return ENI{}, fmt.Errorf("eni %s: address %q: %w", e.ID, awssdk.ToString(pa.PrivateIpAddress), err)
		}
		if awssdk.ToBool(pa.Primary) {
			e.Primary = ip
		} else {
			e.Secondary = append(e.Secondary, ip)
		}
	}
	slices.SortFunc(e.Secondary, netip.Addr.Compare)
	return e, nil
}

// Holder returns the ENI of enis whose addresses include ip, or nil.
func Holder(enis []ENI, ip netip.Addr) *ENI {
	for i := range enis {
		if enis[i].Primary == ip || slices.Contains(enis[i].Secondary, ip) {
			return &enis[i]
		}
	}
	return nil
}
