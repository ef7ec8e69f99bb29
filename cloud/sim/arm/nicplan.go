package arm

import (
	"net/http"
	"net/netip"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v9"
)

// planNICLocked validates the properties of a NIC PUT against the current
// state and returns the NIC state it asks for, with addresses assigned:
// existing ipConfigurations (matched by name) keep their address unless a
// Static one asks for another, new Dynamic ones get the lowest free
// addresses of the subnet.
func (s *Server) planNICLocked(n *nic, props *armnetwork.InterfacePropertiesFormat) (nicState, *apiError) {
	if props == nil {
		props = &armnetwork.InterfacePropertiesFormat{}
	}
	reqs := props.IPConfigurations
	if len(reqs) > MaxIPConfigsPerNIC {
		return nicState{}, newAPIError(http.StatusBadRequest, CodeIPConfigLimit,
			"Network interface %s has %d IP configurations, which exceeds the maximum of %d IP configurations per network interface.",
			s.nicID(n.name), len(reqs), MaxIPConfigsPerNIC)
	}
	out := nicState{ipForwarding: props.EnableIPForwarding != nil && *props.EnableIPForwarding}
	if err := s.checkIPConfigShapes(n, reqs); err != nil {
		return nicState{}, err
	}

	old := map[string]ipConfig{}
	var oldPrimary *ipConfig
	for i, c := range n.state.ipConfigs {
		old[strings.ToLower(c.name)] = c
		if c.primary {
			oldPrimary = &n.state.ipConfigs[i]
		}
	}
	others := s.takenLocked(n)
	fixed := map[netip.Addr]string{} // addresses settled so far in this request
	needDynamic := 0
	for _, rc := range reqs {
		name := *rc.Name
		id := s.ipConfigID(n.name, name)
		p := rc.Properties
		primary := isPrimary(rc, len(reqs))
		c := ipConfig{name: name, primary: primary, static: p != nil && p.PrivateIPAllocationMethod != nil &&
			strings.EqualFold(string(*p.PrivateIPAllocationMethod), string(armnetwork.IPAllocationMethodStatic))}
		prev, existed := old[strings.ToLower(name)]
		if oldPrimary != nil && (primary != strings.EqualFold(name, oldPrimary.name)) {
			return nicState{}, newAPIError(http.StatusBadRequest, CodePropertyChangeNotAllowed,
				"The primary IP configuration of network interface %s cannot be changed from %s.", s.nicID(n.name), oldPrimary.name)
		}
		switch {
		case c.static && p.PrivateIPAddress != nil && *p.PrivateIPAddress != "":
			a, err := netip.ParseAddr(*p.PrivateIPAddress)
			if err != nil {
				return nicState{}, newAPIError(http.StatusBadRequest, CodeInvalidRequestFormat,
					"IP configuration %s has an invalid private IP address '%s'.", id, *p.PrivateIPAddress)
			}
			c.addr = a.Unmap()
		case existed:
			c.addr = prev.addr
		case c.static:
			return nicState{}, newAPIError(http.StatusBadRequest, CodeInvalidRequestFormat,
				"IP configuration %s has Static allocation but no private IP address.", id)
		default:
			needDynamic++
			out.ipConfigs = append(out.ipConfigs, c)
			continue
		}
		if existed && primary && c.addr != prev.addr {
			return nicState{}, newAPIError(http.StatusBadRequest, CodePropertyChangeNotAllowed,
				"The private IP address of the primary IP configuration %s cannot be changed from %s to %s.", id, prev.addr, c.addr)
		}
		if err := s.checkAddress(id, c.addr, others, fixed); err != nil {
			return nicState{}, err
		}
		fixed[c.addr] = id
		out.ipConfigs = append(out.ipConfigs, c)
	}
	if needDynamic == 0 {
		return out, nil
	}
	// Addresses of this NIC's removed ipConfigurations stay held until the
	// operation succeeds, so Dynamic ones do not take them.
	for _, c := range n.state.ipConfigs {
		fixed[c.addr] = s.ipConfigID(n.name, c.name)
	}
	free := lowestFree(s.cfg.Subnet, needDynamic, func(a netip.Addr) bool {
		_, o := others[a]
		_, f := fixed[a]
		return o || f
	})
	if len(free) < needDynamic {
		return nicState{}, newAPIError(http.StatusBadRequest, CodeSubnetIsFull,
			"Subnet %s with address prefix %s does not have enough capacity for %d IP addresses.",
			s.cfg.SubnetName, s.cfg.Subnet, needDynamic)
	}
	for i := range out.ipConfigs {
		if !out.ipConfigs[i].addr.IsValid() {
			out.ipConfigs[i].addr, free = free[0], free[1:]
		}
	}
	return out, nil
}

// isPrimary tells whether an ipConfiguration of the request is the primary:
// the only one of a NIC is primary even when the flag is not set.
func isPrimary(c *armnetwork.InterfaceIPConfiguration, count int) bool {
	if count == 1 {
		return true
	}
	return c.Properties != nil && c.Properties.Primary != nil && *c.Properties.Primary
}

// checkIPConfigShapes checks names, the subnet reference and that exactly
// one ipConfiguration is primary, and that the primary is not removed.
func (s *Server) checkIPConfigShapes(n *nic, reqs []*armnetwork.InterfaceIPConfiguration) *apiError {
	names := map[string]bool{}
	primaries := 0
	for i, rc := range reqs {
		if rc == nil || rc.Name == nil || *rc.Name == "" || strings.ContainsAny(*rc.Name, "/?#") {
			return newAPIError(http.StatusBadRequest, CodeInvalidRequestFormat,
				"IP configuration %d of network interface %s has no valid name.", i, s.nicID(n.name))
		}
		key := strings.ToLower(*rc.Name)
		if names[key] {
			return newAPIError(http.StatusBadRequest, CodeInvalidRequestFormat,
				"Network interface %s has two IP configurations named %s.", s.nicID(n.name), *rc.Name)
		}
		names[key] = true
		id := s.ipConfigID(n.name, *rc.Name)
		if rc.Properties == nil || rc.Properties.Subnet == nil || rc.Properties.Subnet.ID == nil {
			return newAPIError(http.StatusBadRequest, CodeInvalidResourceReference,
				"IP configuration %s must reference a subnet.", id)
		}
		if ref := strings.TrimRight(*rc.Properties.Subnet.ID, "/"); !strings.EqualFold(ref, s.subnetID()) {
			return newAPIError(http.StatusBadRequest, CodeInvalidResourceReference,
				"Resource %s referenced by resource %s was not found. Please make sure that the referenced resource exists, and that both resources are in the same region.",
				ref, s.nicID(n.name))
		}
		if isPrimary(rc, len(reqs)) {
			primaries++
		}
	}
	switch {
	case primaries == 0:
		return newAPIError(http.StatusBadRequest, CodeNoPrimaryIPConfig,
			"Network interface %s must have exactly one primary IP configuration; none is marked primary.", s.nicID(n.name))
	case primaries > 1:
		return newAPIError(http.StatusBadRequest, CodeMultiplePrimaryIPConfigs,
			"Network interface %s must have exactly one primary IP configuration; %d are marked primary.", s.nicID(n.name), primaries)
	}
	for _, c := range n.state.ipConfigs {
		if c.primary && !names[strings.ToLower(c.name)] {
			return newAPIError(http.StatusBadRequest, CodePrimaryDeleteNotAllowed,
				"IP Configuration %s cannot be deleted. Deletion and renaming of primary IP Configuration is not supported", c.name)
		}
	}
	return nil
}

// checkAddress validates a Static or kept address of ipConfiguration id.
func (s *Server) checkAddress(id string, a netip.Addr, others, fixed map[netip.Addr]string) *apiError {
	subnet := s.cfg.Subnet
	switch {
	case !subnet.Contains(a):
		return newAPIError(http.StatusBadRequest, CodeAddressNotInSubnet,
			"IP configuration %s is using the private IP address %s which is not in the address prefix %s of subnet %s.",
			id, a, subnet, s.subnetID())
	case reserved(subnet, a):
		return newAPIError(http.StatusBadRequest, CodeAddressInReservedRange,
			"IP configuration %s is using the private IP address %s which is reserved by Azure in subnet %s.", id, a, s.subnetID())
	}
	holder, taken := others[a]
	if !taken {
		holder, taken = fixed[a]
	}
	if taken {
		return newAPIError(http.StatusBadRequest, CodeAddressIsAllocated,
			"IP configuration %s is using the private IP address %s which is already allocated to resource %s.", id, a, holder)
	}
	return nil
}
