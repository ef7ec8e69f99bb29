package sim

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"strings"

	"github.com/vnet-cni/vnet-cni/cloud/sim/ec2"
	"github.com/vnet-cni/vnet-cni/cloud/sim/fabric"
)

// awsIDs are the identifiers of an AWS run, random per run as on EC2.
type awsIDs struct {
	vpcID, subnetID, az string
	static              StaticCredentials
}

// randomHex returns n random hex digits.
func randomHex(n int) (string, error) {
	b := make([]byte, (n+1)/2)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("sim: random id: %w", err)
	}
	return hex.EncodeToString(b)[:n], nil
}

// newEC2Config draws the run's identifiers and describes the account: one
// VPC, one subnet, an instance per node with its primary ENI, and static
// credentials for tools on the host.
func (s *Sim) newEC2Config() (ec2.Config, error) {
	var ids [4]string
	for i, n := range []int{17, 17, 13, 40} {
		h, err := randomHex(n)
		if err != nil {
			return ec2.Config{}, err
		}
		ids[i] = h
	}
	s.aws = awsIDs{
		vpcID:    "vpc-" + ids[0],
		subnetID: "subnet-" + ids[1],
		az:       s.opts.Region + "a",
		static:   StaticCredentials{AccessKeyID: "AKIASIM" + strings.ToUpper(ids[2]), SecretAccessKey: ids[3]},
	}
	cfg := ec2.Config{
		Region:   s.opts.Region,
		VPCID:    s.aws.vpcID,
		VPCCIDRs: []netip.Prefix{s.opts.VNet.Masked()},
		Subnets:  []ec2.SubnetSpec{{ID: s.aws.subnetID, CIDR: s.opts.Subnet.Masked(), AvailabilityZone: s.aws.az}},
		// One duration for both directions of an attachment.
		AttachDelay:   s.opts.OperationDuration,
		DetachDelay:   s.opts.OperationDuration,
		MetadataDelay: s.opts.MetadataDelay,
		StaticCredentials: &ec2.StaticCredentials{
			AccessKeyID: s.aws.static.AccessKeyID, SecretAccessKey: s.aws.static.SecretAccessKey,
		},
		Faults: s.opts.EC2Faults,
		Logger: s.log,
	}
	for _, n := range s.nodes {
		cfg.Instances = append(cfg.Instances, ec2.InstanceSpec{
			ID: n.instanceID, Type: s.opts.InstanceType, SubnetID: s.aws.subnetID,
			ENIID: n.eniID, MAC: n.mac, Primary: n.primary,
		})
	}
	return cfg, nil
}

// ec2State derives the fabric's state from EC2's: per instance, the ENI at
// device 0 is eth0 and every other attached (or detaching) ENI an
// interface at its device index; source/destination check off is what the
// fabric calls IP forwarding.
func ec2State(snap ec2.Snapshot, nodes []nodeInfo) fabric.State {
	idx := make(map[string]int, len(nodes))
	st := fabric.State{Nodes: make([]fabric.NodeState, len(nodes))}
	for i, n := range nodes {
		idx[n.instanceID] = i
		st.Nodes[i].Name = n.name
	}
	for _, e := range snap.ENIs {
		i, ok := idx[e.InstanceID]
		if !ok || e.Device < 0 {
			continue
		}
		ns := &st.Nodes[i]
		if e.Device == 0 {
			ns.IPs = append(ns.IPs, e.IPs...)
			ns.IPForwarding = !e.SourceDestCheck
			continue
		}
		ns.Interfaces = append(ns.Interfaces, fabric.Interface{
			Device: e.Device, MAC: e.MAC, IPs: e.IPs, IPForwarding: !e.SourceDestCheck,
		})
	}
	return st
}

func (s *Sim) describeAWS(apiURL, caFile, adminURL string) Description {
	static := s.aws.static
	d := Description{
		Cloud:             CloudAWS,
		Prefix:            s.opts.Prefix,
		CAFile:            caFile,
		AdminEndpoint:     adminURL,
		Region:            s.opts.Region,
		AccountID:         ec2.DefaultAccountID,
		EC2Endpoint:       apiURL,
		AvailabilityZone:  s.aws.az,
		VPCID:             s.aws.vpcID,
		VPCCIDRs:          []string{s.opts.VNet.Masked().String()},
		SubnetID:          s.aws.subnetID,
		SubnetCIDR:        s.opts.Subnet.Masked().String(),
		InstanceRole:      ec2.DefaultRole,
		StaticCredentials: &static,
		Gateway:           s.opts.Subnet.Masked().Addr().Next().String(),
		GatewayMAC:        fabric.VPCRouterMAC.String(),
	}
	s.describeFabric(&d)
	for _, n := range s.nodes {
		nd := NodeDescription{
			Name: n.name, InstanceID: n.instanceID, InstanceType: s.opts.InstanceType, ENIID: n.eniID,
			MAC: n.mac.String(), PrimaryIP: n.primary.String(),
		}
		if s.fab != nil {
			nd.Netns = s.fab.NodeNSPath(n.name)
		}
		d.Nodes = append(d.Nodes, nd)
	}
	return d
}
