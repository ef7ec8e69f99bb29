package ec2

import (
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"time"
)

// timeFormat is how EC2 writes timestamps.
const timeFormat = "2006-01-02T15:04:05.000Z"

func tagsXML(tags map[string]string) []xmlTag {
	var out []xmlTag
	for _, k := range slices.Sorted(maps.Keys(tags)) {
		out = append(out, xmlTag{Key: k, Value: tags[k]})
	}
	return out
}

func (s *Server) privateDNS(a netip.Addr) string {
	b := a.As4()
	return "ip-" + strconv.Itoa(int(b[0])) + "-" + strconv.Itoa(int(b[1])) + "-" + strconv.Itoa(int(b[2])) + "-" +
		strconv.Itoa(int(b[3])) + "." + s.cfg.Region + ".compute.internal"
}

func (s *Server) eniXMLLocked(e *eni) xmlENI {
	out := xmlENI{
		NetworkInterfaceID: e.id, SubnetID: e.subnetID, VPCID: s.cfg.VPCID,
		AvailabilityZone: s.subnets[e.subnetID].az, Description: e.description,
		OwnerID: s.cfg.AccountID, Status: e.status(), MACAddress: e.mac.String(),
		PrivateIPAddress: e.primaryIP().String(), PrivateDNSName: s.privateDNS(e.primaryIP()),
		SourceDestCheck: e.sourceDestCheck, InterfaceType: "interface", Tags: tagsXML(e.tags),
	}
	for _, g := range e.groups {
		out.Groups = append(out.Groups, xmlGroup{GroupID: g, GroupName: g})
	}
	for _, ip := range e.ips {
		out.PrivateIPs = append(out.PrivateIPs, xmlPrivateIP{
			PrivateIPAddress: ip.addr.String(), PrivateDNSName: s.privateDNS(ip.addr), Primary: ip.primary,
		})
	}
	if a := e.attachment; a != nil {
		out.Attachment = &xmlAttachment{
			AttachmentID: a.id, InstanceID: a.instanceID, InstanceOwnerID: s.cfg.AccountID,
			DeviceIndex: a.device, Status: a.status, AttachTime: a.attachTime.UTC().Format(timeFormat),
			DeleteOnTermination: a.deleteOnTermination,
		}
	}
	return out
}

// eniField answers DescribeNetworkInterfaces filters.
func (s *Server) eniField(e *eni) fielder {
	return func(name string) ([]string, bool) {
		var att func(a *attachment) string
		switch name {
		case "network-interface-id":
			return []string{e.id}, true
		case "subnet-id":
			return []string{e.subnetID}, true
		case "vpc-id":
			return []string{s.cfg.VPCID}, true
		case "availability-zone":
			return []string{s.subnets[e.subnetID].az}, true
		case "status":
			return []string{e.status()}, true
		case "description":
			return []string{e.description}, true
		case "mac-address":
			return []string{e.mac.String()}, true
		case "source-dest-check":
			return []string{strconv.FormatBool(e.sourceDestCheck)}, true
		case "private-ip-address", "addresses.private-ip-address":
			var out []string
			for _, ip := range e.ips {
				out = append(out, ip.addr.String())
			}
			return out, true
		case "group-id":
			return e.groups, true
		case "attachment.instance-id":
			att = func(a *attachment) string { return a.instanceID }
		case "attachment.attachment-id":
			att = func(a *attachment) string { return a.id }
		case "attachment.status":
			att = func(a *attachment) string { return a.status }
		case "attachment.device-index":
			att = func(a *attachment) string { return strconv.Itoa(a.device) }
		case "attachment.delete-on-termination":
			att = func(a *attachment) string { return strconv.FormatBool(a.deleteOnTermination) }
		default:
			return tagField(name, e.tags)
		}
		if e.attachment == nil {
			return nil, true
		}
		return []string{att(e.attachment)}, true
	}
}

func (s *Server) describeENIs(p params) (response, *apiError) {
	filters, err := parseFilters(p)
	if err != nil {
		return nil, err
	}
	ids := p.list("NetworkInterfaceId")
	if len(ids) > 0 && p.has("MaxResults") {
		return nil, clientError(CodeInvalidParameterCombination, "The parameter NetworkInterfaceIds cannot be used with the parameter maxResults")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.advanceLocked(time.Now())
	var list []*eni
	if len(ids) > 0 {
		for _, id := range ids {
			e, err := s.lookupENILocked(id)
			if err != nil {
				return nil, err
			}
			list = append(list, e)
		}
	} else {
		for _, id := range slices.Sorted(maps.Keys(s.enis)) {
			list = append(list, s.enis[id])
		}
	}
	var match []*eni
	for _, e := range list {
		ok, err := matchFilters(filters, s.eniField(e))
		if err != nil {
			return nil, err
		}
		if ok {
			match = append(match, e)
		}
	}
	from, to, next, err := page(p, len(match))
	if err != nil {
		return nil, err
	}
	out := &describeENIsResponse{NextToken: next}
	for _, e := range match[from:to] {
		out.ENIs = append(out.ENIs, s.eniXMLLocked(e))
	}
	return out, nil
}

func (s *Server) instanceField(in *instance) fielder {
	return func(name string) ([]string, bool) {
		prim := s.enis[in.primaryENI]
		switch name {
		case "instance-id":
			return []string{in.id}, true
		case "instance-type":
			return []string{in.typ}, true
		case "subnet-id":
			return []string{in.subnetID}, true
		case "vpc-id":
			return []string{s.cfg.VPCID}, true
		case "availability-zone":
			return []string{s.subnets[in.subnetID].az}, true
		case "instance-state-name":
			return []string{"running"}, true
		case "private-ip-address":
			if prim == nil {
				return nil, true
			}
			return []string{prim.primaryIP().String()}, true
		case "network-interface.network-interface-id":
			var out []string
			for _, e := range s.attachedLocked(in.id) {
				out = append(out, e.id)
			}
			return out, true
		}
		return tagField(name, in.tags)
	}
}

func (s *Server) describeInstances(p params) (response, *apiError) {
	filters, err := parseFilters(p)
	if err != nil {
		return nil, err
	}
	ids := p.list("InstanceId")
	if len(ids) > 0 && p.has("MaxResults") {
		return nil, clientError(CodeInvalidParameterCombination, "The parameter instancesSet cannot be used with the parameter maxResults")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.advanceLocked(time.Now())
	var list []*instance
	if len(ids) > 0 {
		for _, id := range ids {
			in, err := s.lookupInstanceLocked(id)
			if err != nil {
				return nil, err
			}
			list = append(list, in)
		}
	} else {
		for _, id := range slices.Sorted(maps.Keys(s.instances)) {
			list = append(list, s.instances[id])
		}
	}
	var match []*instance
	for _, in := range list {
		ok, err := matchFilters(filters, s.instanceField(in))
		if err != nil {
			return nil, err
		}
		if ok {
			match = append(match, in)
		}
	}
	from, to, next, err := page(p, len(match))
	if err != nil {
		return nil, err
	}
	out := &describeInstancesResponse{NextToken: next}
	for _, in := range match[from:to] {
		x := xmlInstance{
			InstanceID: in.id, ImageID: "ami-0sim0000000000000", InstanceType: in.typ,
			InstanceState: xmlInstanceState{Code: 16, Name: "running"},
			LaunchTime:    in.launched.UTC().Format(timeFormat),
			Placement:     xmlPlacement{AvailabilityZone: s.subnets[in.subnetID].az, Tenancy: "default"},
			SubnetID:      in.subnetID, VPCID: s.cfg.VPCID, SourceDestCheck: true, Architecture: "x86_64",
			Tags: tagsXML(in.tags),
		}
		if prim := s.enis[in.primaryENI]; prim != nil {
			x.PrivateIPAddress = prim.primaryIP().String()
			x.PrivateDNSName = s.privateDNS(prim.primaryIP())
			x.SourceDestCheck = prim.sourceDestCheck
		}
		for _, e := range s.attachedLocked(in.id) {
			x.NetworkInterfaces = append(x.NetworkInterfaces, s.eniXMLLocked(e))
		}
		// One reservation per instance, as when each was launched alone.
		out.Reservations = append(out.Reservations, xmlReservation{
			ReservationID: "r-" + in.id[2:], OwnerID: s.cfg.AccountID, Instances: []xmlInstance{x},
		})
	}
	return out, nil
}

func (s *Server) describeInstanceTypes(p params) (response, *apiError) {
	filters, err := parseFilters(p)
	if err != nil {
		return nil, err
	}
	names := p.list("InstanceType")
	var unknown []string
	for _, n := range names {
		if _, ok := s.cfg.InstanceTypes[n]; !ok {
			unknown = append(unknown, n)
		}
	}
	if len(unknown) > 0 {
		return nil, clientError(CodeInvalidInstanceType, "The following supplied instance types do not exist: %v", unknown)
	}
	if len(names) == 0 {
		names = slices.Sorted(maps.Keys(s.cfg.InstanceTypes))
	}
	out := &describeInstanceTypesResponse{}
	for _, n := range names {
		ok, err := matchFilters(filters, func(f string) ([]string, bool) {
			if f == "instance-type" {
				return []string{n}, true
			}
			return nil, false
		})
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		it := s.cfg.InstanceTypes[n]
		out.InstanceTypes = append(out.InstanceTypes, xmlInstanceType{InstanceType: n, NetworkInfo: xmlNetworkInfo{
			MaximumNetworkInterfaces: it.MaxENIs, MaximumNetworkCards: 1,
			NetworkCards:              []xmlNetworkCard{{NetworkCardIndex: 0, MaximumNetworkInterfaces: it.MaxENIs}},
			IPv4AddressesPerInterface: it.IPv4PerENI, IPv6AddressesPerInterface: it.IPv4PerENI,
			IPv6Supported: true, EnaSupport: "required",
		}})
	}
	return out, nil
}

func (s *Server) describeSubnets(p params) (response, *apiError) {
	filters, err := parseFilters(p)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := p.list("SubnetId")
	if len(ids) == 0 {
		ids = slices.Sorted(maps.Keys(s.subnets))
	}
	out := &describeSubnetsResponse{}
	for _, id := range ids {
		sn, ok := s.subnets[id]
		if !ok {
			return nil, clientError(CodeInvalidSubnetIDNotFound, "The subnet ID '%s' does not exist", id)
		}
		ok, err := matchFilters(filters, func(name string) ([]string, bool) {
			switch name {
			case "subnet-id":
				return []string{sn.id}, true
			case "vpc-id":
				return []string{s.cfg.VPCID}, true
			case "cidr-block", "cidr":
				return []string{sn.cidr.String()}, true
			case "availability-zone":
				return []string{sn.az}, true
			case "state":
				return []string{"available"}, true
			}
			return tagField(name, sn.tags)
		})
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		used := 0
		for a := range s.owner {
			if sn.cidr.Contains(a) {
				used++
			}
		}
		out.Subnets = append(out.Subnets, xmlSubnet{
			SubnetID: sn.id, SubnetArn: "arn:aws:ec2:" + s.cfg.Region + ":" + s.cfg.AccountID + ":subnet/" + sn.id,
			State: "available", VPCID: s.cfg.VPCID, OwnerID: s.cfg.AccountID, CIDRBlock: sn.cidr.String(),
			AvailableIPAddressCount: usableCount(sn.cidr) - used, AvailabilityZone: sn.az, Tags: tagsXML(sn.tags),
		})
	}
	return out, nil
}
