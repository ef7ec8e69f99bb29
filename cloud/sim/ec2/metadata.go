package ec2

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/vnet-cni/vnet-cni/cloud/sim/ec2imds"
)

// IMDS returns the IMDSv2 source of one instance, for ec2imds.NewHandler.
func (s *Server) IMDS(instanceID string) ec2imds.Source {
	return imdsSource{s: s, id: instanceID}
}

type imdsSource struct {
	s  *Server
	id string
}

func (m imdsSource) Instance() (ec2imds.Instance, bool) { return m.s.metadata(m.id, time.Now()) }

func (m imdsSource) Credentials() (ec2imds.Credentials, error) {
	c, err := m.s.InstanceCredentials(m.id)
	if err != nil {
		return ec2imds.Credentials{}, fmt.Errorf("credentials of %s: %w", m.id, err)
	}
	return ec2imds.Credentials{
		AccessKeyID: c.AccessKeyID, SecretAccessKey: c.SecretAccessKey, Token: c.SessionToken,
		Expiration: c.Expiration, LastUpdated: c.Issued,
	}, nil
}

// metadata is what IMDS shows of instance id at now: attached ENIs only,
// and addresses only once MetadataDelay has passed since they were assigned.
func (s *Server) metadata(id string, now time.Time) (ec2imds.Instance, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.advanceLocked(now)
	in, ok := s.instances[id]
	if !ok {
		return ec2imds.Instance{}, false
	}
	out := ec2imds.Instance{
		ID: in.id, Type: in.typ, ImageID: "ami-0sim0000000000000", AccountID: s.cfg.AccountID,
		Region: s.cfg.Region, AvailabilityZone: s.subnets[in.subnetID].az, Role: s.cfg.Role,
	}
	var vpc []string
	for _, p := range s.cfg.VPCCIDRs {
		vpc = append(vpc, p.String())
	}
	for _, e := range s.attachedLocked(id) {
		if e.attachment.status == stateAttaching {
			continue
		}
		sn := s.subnets[e.subnetID]
		iface := ec2imds.Interface{
			MAC: e.mac.String(), DeviceNumber: e.attachment.device, InterfaceID: e.id,
			SubnetID: sn.id, SubnetCIDR: sn.cidr.String(), VPCID: s.cfg.VPCID, VPCCIDRs: slices.Clone(vpc),
		}
		for _, ip := range e.ips {
			if ip.primary || s.cfg.MetadataDelay < 0 || now.Sub(ip.since) >= s.cfg.MetadataDelay {
				iface.LocalIPv4s = append(iface.LocalIPv4s, ip.addr.String())
			}
		}
		if e.attachment.device == 0 {
			out.MAC, out.PrivateIP = iface.MAC, e.primaryIP().String()
		}
		out.Interfaces = append(out.Interfaces, iface)
	}
	return out, true
}

// Snapshot is the control-plane state a data plane follows.
type Snapshot struct {
	VPCCIDRs []netip.Prefix
	ENIs     []ENIState
}

// ENIState is one network interface.
type ENIState struct {
	ID, SubnetID string
	MAC          net.HardwareAddr
	// InstanceID and Device are set when the ENI is attached or detaching
	// (attaching ones are not: they carry no traffic yet); Device is -1 else.
	InstanceID string
	Device     int
	// IPs are the private addresses, the primary first.
	IPs             []netip.Addr
	SourceDestCheck bool
}

// Snapshot returns the current state, ENIs ordered by id.
func (s *Server) Snapshot() Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.advanceLocked(time.Now())
	out := Snapshot{VPCCIDRs: slices.Clone(s.cfg.VPCCIDRs)}
	for _, e := range s.enis {
		st := ENIState{ID: e.id, SubnetID: e.subnetID, MAC: slices.Clone(e.mac), SourceDestCheck: e.sourceDestCheck, Device: -1}
		if a := e.attachment; a != nil && a.status != stateAttaching {
			st.InstanceID, st.Device = a.instanceID, a.device
		}
		for _, ip := range e.ips {
			st.IPs = append(st.IPs, ip.addr)
		}
		out.ENIs = append(out.ENIs, st)
	}
	slices.SortFunc(out.ENIs, func(a, b ENIState) int { return strings.Compare(a.ID, b.ID) })
	return out
}
