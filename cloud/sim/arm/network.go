package arm

import (
	"net/http"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v9"
)

func (s *Server) getVNet(w http.ResponseWriter, name string) {
	if !strings.EqualFold(name, s.cfg.VNetName) {
		errResourceNotFound(typeVNet, name, s.cfg.ResourceGroup).write(w)
		return
	}
	s.mu.Lock()
	s.advanceLocked(time.Now())
	subnet := s.renderSubnetLocked()
	etag := s.vnetETag
	s.mu.Unlock()
	prefixes := []*string{}
	for _, p := range s.cfg.VNetPrefixes {
		prefixes = append(prefixes, to.Ptr(p.String()))
	}
	writeJSON(w, http.StatusOK, armnetwork.VirtualNetwork{
		ID:       to.Ptr(s.vnetID()),
		Name:     to.Ptr(s.cfg.VNetName),
		Type:     to.Ptr(typeVNet),
		Location: to.Ptr(s.cfg.Location),
		Etag:     to.Ptr(etag),
		Properties: &armnetwork.VirtualNetworkPropertiesFormat{
			AddressSpace:      &armnetwork.AddressSpace{AddressPrefixes: prefixes},
			Subnets:           []*armnetwork.Subnet{&subnet},
			ProvisioningState: to.Ptr(armnetwork.ProvisioningStateSucceeded),
		},
	})
}

func (s *Server) listSubnets(w http.ResponseWriter, vnet string) {
	if !strings.EqualFold(vnet, s.cfg.VNetName) {
		errResourceNotFound(typeVNet, vnet, s.cfg.ResourceGroup).write(w)
		return
	}
	s.mu.Lock()
	s.advanceLocked(time.Now())
	subnet := s.renderSubnetLocked()
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, armnetwork.SubnetListResult{Value: []*armnetwork.Subnet{&subnet}})
}

func (s *Server) getSubnet(w http.ResponseWriter, vnet, name string) {
	switch {
	case !strings.EqualFold(vnet, s.cfg.VNetName):
		errResourceNotFound(typeVNet, vnet, s.cfg.ResourceGroup).write(w)
		return
	case !strings.EqualFold(name, s.cfg.SubnetName):
		errNotFound(s.vnetID() + "/subnets/" + name).write(w)
		return
	}
	s.mu.Lock()
	s.advanceLocked(time.Now())
	subnet := s.renderSubnetLocked()
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, subnet)
}

// renderSubnetLocked builds the API form of the subnet, with references to
// the committed ipConfigurations in it.
func (s *Server) renderSubnetLocked() armnetwork.Subnet {
	refs := []*armnetwork.IPConfiguration{}
	for _, n := range s.sortedNICsLocked() {
		for _, c := range n.state.ipConfigs {
			refs = append(refs, &armnetwork.IPConfiguration{ID: to.Ptr(s.ipConfigID(n.name, c.name))})
		}
	}
	var table *armnetwork.RouteTable
	if t := s.subnetTableLocked(); t != nil {
		table = &armnetwork.RouteTable{ID: to.Ptr(s.routeTableID(t.name))}
	}
	return armnetwork.Subnet{
		ID:   to.Ptr(s.subnetID()),
		Name: to.Ptr(s.cfg.SubnetName),
		Type: to.Ptr(typeSubnet),
		Etag: to.Ptr(s.vnetETag),
		Properties: &armnetwork.SubnetPropertiesFormat{
			AddressPrefix:     to.Ptr(s.cfg.Subnet.String()),
			RouteTable:        table,
			IPConfigurations:  refs,
			ProvisioningState: to.Ptr(armnetwork.ProvisioningStateSucceeded),
		},
	}
}
