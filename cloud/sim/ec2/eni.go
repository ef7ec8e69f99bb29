package ec2

import (
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// eni is a network interface.
type eni struct {
	id, subnetID, description string
	mac                       net.HardwareAddr
	// ips holds the private addresses; ips[0] is the primary.
	ips             []privateIP
	sourceDestCheck bool
	tags            map[string]string
	groups          []string
	attachment      *attachment
}

type privateIP struct {
	addr    netip.Addr
	primary bool
	since   time.Time // when it was assigned
}

// Attachment states.
const (
	stateAttaching = "attaching"
	stateAttached  = "attached"
	stateDetaching = "detaching"
)

type attachment struct {
	id, instanceID      string
	device              int
	status              string
	deleteOnTermination bool
	attachTime          time.Time
	// until is when an attaching or detaching attachment moves on.
	until time.Time
}

// status is the ENI's status as EC2 reports it.
func (e *eni) status() string {
	switch {
	case e.attachment == nil:
		return "available"
	case e.attachment.status == stateAttached:
		return "in-use"
	default:
		return e.attachment.status
	}
}

func (e *eni) primaryIP() netip.Addr { return e.ips[0].addr }

// advanceLocked completes attachments and detachments that are due.
func (s *Server) advanceLocked(now time.Time) {
	changed := false
	for _, e := range s.enis {
		a := e.attachment
		switch {
		case a == nil || now.Before(a.until):
		case a.status == stateAttaching:
			a.status = stateAttached
			changed = true
		case a.status == stateDetaching:
			e.attachment = nil
			changed = true
		}
	}
	if changed {
		s.notifyLocked()
	}
}

// lookupENILocked finds an ENI by id, with EC2's malformed and not-found
// errors.
func (s *Server) lookupENILocked(id string) (*eni, *apiError) {
	if id == "" {
		return nil, errMissing("NetworkInterfaceId")
	}
	if !strings.HasPrefix(id, "eni-") {
		return nil, clientError(CodeInvalidENIIDMalformed, "Invalid id: \"%s\" (expecting \"eni-...\")", id)
	}
	e, ok := s.enis[id]
	if !ok {
		return nil, errENINotFound(id)
	}
	return e, nil
}

func (s *Server) lookupInstanceLocked(id string) (*instance, *apiError) {
	if id == "" {
		return nil, errMissing("InstanceId")
	}
	if !strings.HasPrefix(id, "i-") {
		return nil, clientError(CodeInvalidInstanceIDMalformed, "Invalid id: \"%s\" (expecting \"i-...\")", id)
	}
	in, ok := s.instances[id]
	if !ok {
		return nil, errInstanceNotFound(id)
	}
	return in, nil
}

// ipLimitLocked is the number of private addresses e may hold: its
// instance type's when attached (or attaching), else MaxIPsUnattached.
func (s *Server) ipLimitLocked(e *eni) int {
	if e.attachment != nil {
		if in := s.instances[e.attachment.instanceID]; in != nil {
			return s.cfg.InstanceTypes[in.typ].IPv4PerENI
		}
	}
	return MaxIPsUnattached
}

// claimLocked checks that the explicit addresses may go to an ENI in sn:
// usable in the subnet, listed once, and free unless reassign (then they
// may move from another ENI; free reports those on self as no-ops).
func (s *Server) claimLocked(sn *subnet, self string, addrs []string, reassign bool) ([]netip.Addr, *apiError) {
	var out []netip.Addr
	for _, a := range addrs {
		ip, err := netip.ParseAddr(a)
		if err != nil || !ip.Is4() {
			return nil, errInvalidValue("Invalid value '%s' for PrivateIpAddress", a)
		}
		if !usable(sn.cidr, ip) {
			return nil, errInvalidValue("Address %s does not fall within the subnet's address range", ip)
		}
		if slices.Contains(out, ip) {
			return nil, errInvalidValue("Address %s is listed twice", ip)
		}
		if o, used := s.owner[ip]; used && o != self && !reassign {
			return nil, clientError(CodeInvalidIPAddressInUse, "Address %s is in use.", ip)
		}
		if o, used := s.owner[ip]; used && o != self && s.enis[o].primaryIP() == ip {
			return nil, clientError(CodeInvalidIPAddressInUse, "Address %s is the primary address of %s.", ip, o)
		}
		out = append(out, ip)
	}
	return out, nil
}

// allocLocked takes the n lowest free addresses of sn.
func (s *Server) allocLocked(sn *subnet, n int) ([]netip.Addr, *apiError) {
	got := lowestFree(sn.cidr, n, func(a netip.Addr) bool { _, used := s.owner[a]; return used })
	if len(got) < n {
		return nil, clientError(CodeInsufficientFreeAddresses, "The specified subnet does not have enough free addresses to satisfy the request.")
	}
	return got, nil
}

// giveLocked assigns addrs to e, taking them from other ENIs if needed.
func (s *Server) giveLocked(e *eni, addrs []netip.Addr, now time.Time) {
	for _, a := range addrs {
		if o, used := s.owner[a]; used {
			if o == e.id {
				continue
			}
			old := s.enis[o]
			old.ips = slices.DeleteFunc(old.ips, func(p privateIP) bool { return p.addr == a })
		}
		s.owner[a] = e.id
		e.ips = append(e.ips, privateIP{addr: a, primary: len(e.ips) == 0, since: now})
	}
}

func parseTags(members []params) (map[string]string, *apiError) {
	tags := map[string]string{}
	for _, m := range members {
		k := m.get("Key")
		switch {
		case k == "":
			return nil, errInvalidValue("Tag key must not be empty")
		case strings.HasPrefix(strings.ToLower(k), "aws:"):
			return nil, errInvalidValue("Tag keys starting with 'aws:' are reserved for internal use")
		case len(k) > 128 || len(m.get("Value")) > 256:
			return nil, errInvalidValue("Tag key or value is too long")
		}
		tags[k] = m.get("Value")
	}
	return tags, nil
}

func (s *Server) createENI(p params) (response, *apiError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id := p.get("SubnetId")
	if id == "" {
		return nil, errMissing("SubnetId")
	}
	sn, ok := s.subnets[id]
	if !ok {
		return nil, clientError(CodeInvalidSubnetIDNotFound, "The subnet ID '%s' does not exist", id)
	}
	if p.has("Ipv4PrefixCount") || len(p.list("Ipv4Prefix")) > 0 || p.has("Ipv6AddressCount") {
		return nil, errInvalidValue("Prefix delegation and IPv6 are not simulated")
	}
	var explicit []string
	primarySet := false
	if a := p.get("PrivateIpAddress"); a != "" {
		explicit, primarySet = append(explicit, a), true
	}
	for _, m := range p.members("PrivateIpAddresses") {
		if prim, _, _ := m.boolean("Primary"); prim {
			if primarySet {
				return nil, clientError(CodeInvalidParameterCombination, "Only one primary private IP address may be specified")
			}
			explicit, primarySet = append([]string{m.get("PrivateIpAddress")}, explicit...), true
		} else {
			explicit = append(explicit, m.get("PrivateIpAddress"))
		}
	}
	count := 0
	if c := p.get("SecondaryPrivateIpAddressCount"); c != "" {
		n, err := strconv.Atoi(c)
		if err != nil || n < 1 {
			return nil, errInvalidValue("Invalid value '%s' for SecondaryPrivateIpAddressCount", c)
		}
		count = n
	}
	if len(explicit) > 1 && count > 0 {
		return nil, clientError(CodeInvalidParameterCombination, "Secondary private IP addresses and SecondaryPrivateIpAddressCount cannot be specified together")
	}
	total := max(len(explicit), 1) + count
	if total > MaxIPsUnattached {
		return nil, clientError(CodePrivateIPAddressLimitExceeded, "Number of private addresses will exceed limit.")
	}
	tags := map[string]string{}
	for _, ts := range p.members("TagSpecification") {
		if rt := ts.get("ResourceType"); rt != "network-interface" {
			return nil, errInvalidValue("'%s' is not a valid taggable resource type for this operation.", rt)
		}
		t, e := parseTags(ts.members("Tag"))
		if e != nil {
			return nil, e
		}
		for k, v := range t {
			tags[k] = v
		}
	}
	addrs, e := s.claimLocked(sn, "", explicit, false)
	if e != nil {
		return nil, e
	}
	auto := lowestFree(sn.cidr, total-len(addrs), func(a netip.Addr) bool {
		_, used := s.owner[a]
		return used || slices.Contains(addrs, a)
	})
	if len(auto) < total-len(addrs) {
		return nil, clientError(CodeInsufficientFreeAddresses, "The specified subnet does not have enough free addresses to satisfy the request.")
	}
	addrs = append(addrs, auto...)
	en := &eni{
		id: newID("eni"), subnetID: sn.id, mac: s.newMACLocked(), description: p.get("Description"),
		sourceDestCheck: true, tags: tags, groups: p.list("SecurityGroupId"),
	}
	s.enis[en.id] = en
	s.giveLocked(en, addrs, time.Now())
	s.notifyLocked()
	return &createENIResponse{ENI: s.eniXMLLocked(en)}, nil
}

func (s *Server) attachENI(p params) (response, *apiError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	s.advanceLocked(now)
	e, err := s.lookupENILocked(p.get("NetworkInterfaceId"))
	if err != nil {
		return nil, err
	}
	in, err := s.lookupInstanceLocked(p.get("InstanceId"))
	if err != nil {
		return nil, err
	}
	if p.get("DeviceIndex") == "" {
		return nil, errMissing("DeviceIndex")
	}
	dev, convErr := strconv.Atoi(p.get("DeviceIndex"))
	if convErr != nil || dev < 0 {
		return nil, errInvalidValue("Invalid value '%s' for DeviceIndex", p.get("DeviceIndex"))
	}
	if c := p.get("NetworkCardIndex"); c != "" && c != "0" {
		return nil, errInvalidValue("Network card index %s is not supported by instance type %s", c, in.typ)
	}
	if e.attachment != nil {
		return nil, clientError(CodeInvalidENIInUse, "Interface: [%s] in use.", e.id)
	}
	if s.subnets[e.subnetID].az != s.subnets[in.subnetID].az {
		return nil, errInvalidValue("The network interface and the instance must be in the same availability zone")
	}
	it := s.cfg.InstanceTypes[in.typ]
	attached := s.attachedLocked(in.id)
	if len(attached) >= it.MaxENIs {
		return nil, clientError(CodeAttachmentLimitExceeded, "Interface count %d exceeds the limit for %s", len(attached)+1, in.typ)
	}
	for _, o := range attached {
		if o.attachment.device == dev {
			return nil, errInvalidValue("Instance '%s' already has an interface attached at device index '%d'.", in.id, dev)
		}
	}
	if len(e.ips) > it.IPv4PerENI {
		return nil, clientError(CodePrivateIPAddressLimitExceeded, "Number of private addresses of %s exceeds the limit of %s", e.id, in.typ)
	}
	e.attachment = &attachment{
		id: newID("eni-attach"), instanceID: in.id, device: dev, status: stateAttaching,
		attachTime: now, until: now.Add(s.cfg.AttachDelay),
	}
	s.wakeAfterLocked(s.cfg.AttachDelay)
	s.notifyLocked()
	return &attachENIResponse{AttachmentID: e.attachment.id}, nil
}

// attachedLocked returns the ENIs attached, attaching or detaching to
// instance id, by device index.
func (s *Server) attachedLocked(id string) []*eni {
	var out []*eni
	for _, e := range s.enis {
		if e.attachment != nil && e.attachment.instanceID == id {
			out = append(out, e)
		}
	}
	slices.SortFunc(out, func(a, b *eni) int { return a.attachment.device - b.attachment.device })
	return out
}

func (s *Server) findAttachmentLocked(id string) (*eni, *apiError) {
	if id == "" {
		return nil, errMissing("AttachmentId")
	}
	for _, e := range s.enis {
		if e.attachment != nil && e.attachment.id == id {
			return e, nil
		}
	}
	return nil, clientError(CodeInvalidAttachmentIDNotFound, "The attachment ID '%s' does not exist", id)
}

func (s *Server) detachENI(p params) (response, *apiError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	s.advanceLocked(now)
	e, err := s.findAttachmentLocked(p.get("AttachmentId"))
	if err != nil {
		return nil, err
	}
	if e.attachment.device == 0 {
		return nil, clientError(CodeOperationNotPermitted, "The network interface at device index 0 and networkCard index 0 cannot be detached.")
	}
	if e.attachment.status != stateDetaching {
		e.attachment.status = stateDetaching
		e.attachment.until = now.Add(s.cfg.DetachDelay)
		s.wakeAfterLocked(s.cfg.DetachDelay)
		s.notifyLocked()
	}
	return &returnResponse{Return: true}, nil
}

func (s *Server) deleteENI(p params) (response, *apiError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.advanceLocked(time.Now())
	e, err := s.lookupENILocked(p.get("NetworkInterfaceId"))
	if err != nil {
		return nil, err
	}
	if e.attachment != nil {
		return nil, clientError(CodeInvalidENIInUse, "The network interface '%s' is currently in use.", e.id)
	}
	s.removeENILocked(e)
	s.notifyLocked()
	return &returnResponse{Return: true}, nil
}

func (s *Server) removeENILocked(e *eni) {
	for _, ip := range e.ips {
		delete(s.owner, ip.addr)
	}
	delete(s.enis, e.id)
}

func (s *Server) modifyENIAttribute(p params) (response, *apiError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.advanceLocked(time.Now())
	e, err := s.lookupENILocked(p.get("NetworkInterfaceId"))
	if err != nil {
		return nil, err
	}
	var set []string
	for _, a := range []string{"SourceDestCheck.Value", "Description.Value", "Attachment.AttachmentId"} {
		if p.has(a) {
			set = append(set, strings.Split(a, ".")[0])
		}
	}
	if len(p.list("SecurityGroupId")) > 0 {
		set = append(set, "SecurityGroupId")
	}
	switch {
	case len(set) == 0:
		return nil, clientError(CodeInvalidParameterCombination, "No attributes specified.")
	case len(set) > 1:
		return nil, clientError(CodeInvalidParameterCombination, "Fields for multiple attribute types specified: %s", strings.Join(set, ", "))
	}
	switch set[0] {
	case "SourceDestCheck":
		v, _, ok := p.boolean("SourceDestCheck.Value")
		if !ok {
			return nil, errInvalidValue("Invalid value '%s' for SourceDestCheck", p.get("SourceDestCheck.Value"))
		}
		e.sourceDestCheck = v
	case "Description":
		e.description = p.get("Description.Value")
	case "SecurityGroupId":
		e.groups = p.list("SecurityGroupId")
	case "Attachment":
		id := p.get("Attachment.AttachmentId")
		if e.attachment == nil || e.attachment.id != id {
			return nil, clientError(CodeInvalidAttachmentIDNotFound, "The attachment ID '%s' does not exist", id)
		}
		v, set, ok := p.boolean("Attachment.DeleteOnTermination")
		if !ok || !set {
			return nil, errInvalidValue("Invalid value '%s' for DeleteOnTermination", p.get("Attachment.DeleteOnTermination"))
		}
		e.attachment.deleteOnTermination = v
	}
	s.notifyLocked()
	return &returnResponse{Return: true}, nil
}

func (s *Server) assignIPs(p params) (response, *apiError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	s.advanceLocked(now)
	e, err := s.lookupENILocked(p.get("NetworkInterfaceId"))
	if err != nil {
		return nil, err
	}
	if p.has("Ipv4PrefixCount") || len(p.list("Ipv4Prefix")) > 0 {
		return nil, errInvalidValue("Prefix delegation is not simulated")
	}
	list, countStr := p.list("PrivateIpAddress"), p.get("SecondaryPrivateIpAddressCount")
	switch {
	case len(list) > 0 && countStr != "":
		return nil, clientError(CodeInvalidParameterCombination,
			"The parameters 'PrivateIpAddress' and 'SecondaryPrivateIpAddressCount' cannot be specified together")
	case len(list) == 0 && countStr == "":
		return nil, errMissing("PrivateIpAddress or SecondaryPrivateIpAddressCount")
	}
	reassign, _, ok := p.boolean("AllowReassignment")
	if !ok {
		return nil, errInvalidValue("Invalid value '%s' for AllowReassignment", p.get("AllowReassignment"))
	}
	sn := s.subnets[e.subnetID]
	var addrs []netip.Addr
	if countStr != "" {
		n, convErr := strconv.Atoi(countStr)
		if convErr != nil || n < 1 {
			return nil, errInvalidValue("Invalid value '%s' for SecondaryPrivateIpAddressCount", countStr)
		}
		if len(e.ips)+n > s.ipLimitLocked(e) {
			return nil, clientError(CodePrivateIPAddressLimitExceeded, "Number of private addresses will exceed limit.")
		}
		if addrs, err = s.allocLocked(sn, n); err != nil {
			return nil, err
		}
	} else {
		if addrs, err = s.claimLocked(sn, e.id, list, reassign); err != nil {
			return nil, err
		}
		fresh := 0
		for _, a := range addrs {
			if s.owner[a] != e.id {
				fresh++
			}
		}
		if len(e.ips)+fresh > s.ipLimitLocked(e) {
			return nil, clientError(CodePrivateIPAddressLimitExceeded, "Number of private addresses will exceed limit.")
		}
	}
	s.giveLocked(e, addrs, now)
	s.notifyLocked()
	out := &assignResponse{NetworkInterfaceID: e.id}
	for _, a := range addrs {
		out.Assigned = append(out.Assigned, xmlAssigned{PrivateIPAddress: a.String()})
	}
	return out, nil
}

func (s *Server) unassignIPs(p params) (response, *apiError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.advanceLocked(time.Now())
	e, err := s.lookupENILocked(p.get("NetworkInterfaceId"))
	if err != nil {
		return nil, err
	}
	list, prefixes := p.list("PrivateIpAddress"), p.list("Ipv4Prefix")
	switch {
	case len(list) > 0 && len(prefixes) > 0:
		return nil, clientError(CodeInvalidParameterCombination,
			"The parameters 'PrivateIpAddress' and 'Ipv4Prefix' cannot be specified together")
	case len(prefixes) > 0:
		return nil, errInvalidValue("Prefix delegation is not simulated")
	case len(list) == 0:
		return nil, errMissing("PrivateIpAddress")
	}
	var drop []netip.Addr
	for _, a := range list {
		ip, convErr := netip.ParseAddr(a)
		if convErr != nil {
			return nil, errInvalidValue("Invalid value '%s' for PrivateIpAddress", a)
		}
		if ip == e.primaryIP() {
			return nil, errInvalidValue("The primary private IP address %s of %s cannot be unassigned", ip, e.id)
		}
		if s.owner[ip] != e.id {
			return nil, errInvalidValue("Some of the specified addresses are not assigned to interface %s", e.id)
		}
		drop = append(drop, ip)
	}
	e.ips = slices.DeleteFunc(e.ips, func(ip privateIP) bool { return slices.Contains(drop, ip.addr) })
	for _, a := range drop {
		delete(s.owner, a)
	}
	s.notifyLocked()
	return &returnResponse{Return: true}, nil
}

func (s *Server) createTags(p params) (response, *apiError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := p.list("ResourceId")
	if len(ids) == 0 {
		return nil, errMissing("ResourceId")
	}
	tags, err := parseTags(p.members("Tag"))
	if err != nil {
		return nil, err
	}
	var targets []map[string]string
	for _, id := range ids {
		switch {
		case strings.HasPrefix(id, "eni-"):
			e, err := s.lookupENILocked(id)
			if err != nil {
				return nil, err
			}
			targets = append(targets, e.tags)
		case strings.HasPrefix(id, "i-"):
			in, err := s.lookupInstanceLocked(id)
			if err != nil {
				return nil, err
			}
			targets = append(targets, in.tags)
		case strings.HasPrefix(id, "subnet-"):
			sn, ok := s.subnets[id]
			if !ok {
				return nil, clientError(CodeInvalidSubnetIDNotFound, "The subnet ID '%s' does not exist", id)
			}
			targets = append(targets, sn.tags)
		default:
			return nil, clientError("InvalidID", "The ID '%s' is not valid", id)
		}
	}
	for _, t := range targets {
		for k, v := range tags {
			t[k] = v
		}
	}
	s.notifyLocked()
	return &returnResponse{Return: true}, nil
}

// TerminateInstance simulates an instance that is gone: its ENIs with
// DeleteOnTermination are deleted, the others detached and left available
// (the leak the product's sweep must find).
func (s *Server) TerminateInstance(id string) error {
	_, err := s.Terminate(id)
	return err
}

// Termination is what terminating an instance did to its ENIs.
type Termination struct {
	InstanceID string `json:"instanceId"`
	// Deleted are the ENIs deleted with the instance (DeleteOnTermination:
	// the primary by default), Detached the ones left available.
	Deleted  []string `json:"deleted"`
	Detached []string `json:"detached"`
}

// Terminate terminates instance id as EC2 does and reports what became of
// its ENIs: those attached (or attaching, or detaching) with
// DeleteOnTermination are deleted, the others detached and left available.
// The instance is no longer listed.
func (s *Server) Terminate(id string) (Termination, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.instances[id]; !ok {
		return Termination{}, errInstanceNotFound(id)
	}
	t := Termination{InstanceID: id, Deleted: []string{}, Detached: []string{}}
	for _, e := range s.attachedLocked(id) {
		if e.attachment.deleteOnTermination {
			t.Deleted = append(t.Deleted, e.id)
			s.removeENILocked(e)
		} else {
			t.Detached = append(t.Detached, e.id)
			e.attachment = nil
		}
	}
	delete(s.instances, id)
	s.notifyLocked()
	slices.Sort(t.Deleted)
	slices.Sort(t.Detached)
	s.log.Info("ec2 instance terminated", "instance", id, "deleted", t.Deleted, "detached", t.Detached)
	return t, nil
}
