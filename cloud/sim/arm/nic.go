package arm

import (
	"net/http"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v9"
)

func (s *Server) getNIC(w http.ResponseWriter, name string) {
	s.mu.Lock()
	s.advanceLocked(time.Now())
	n := s.nics[strings.ToLower(name)]
	if n == nil || !n.exists {
		s.mu.Unlock()
		errResourceNotFound(typeNIC, name, s.cfg.ResourceGroup).write(w)
		return
	}
	body := s.renderNICLocked(n, n.state, n.etag, provisioningState(n.pending != nil))
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, body)
}

func (s *Server) listNICs(w http.ResponseWriter) {
	s.mu.Lock()
	s.advanceLocked(time.Now())
	list := armnetwork.InterfaceListResult{Value: []*armnetwork.Interface{}}
	for _, n := range s.sortedNICsLocked() {
		v := s.renderNICLocked(n, n.state, n.etag, provisioningState(n.pending != nil))
		list.Value = append(list.Value, &v)
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, list)
}

// putNIC validates the new NIC synchronously, reserves its addresses and
// starts the operation that commits it.
func (s *Server) putNIC(w http.ResponseWriter, r *http.Request, name string) {
	var body armnetwork.Interface
	if err := decodeBody(r, &body); err != nil {
		err.write(w)
		return
	}
	now := time.Now()
	s.mu.Lock()
	s.advanceLocked(now)
	key := strings.ToLower(name)
	n := s.nics[key]
	exists := n != nil && n.exists
	etag := ""
	if exists {
		etag = n.etag
	}
	if err := checkPreconditions(r, exists, etag); err != nil {
		s.mu.Unlock()
		err.write(w)
		return
	}
	if n != nil && n.pending != nil {
		err := errAnotherOperation(n.pending.op.id, s.nicID(n.name), n.pending.op.doneAt.Sub(now))
		s.mu.Unlock()
		err.write(w)
		return
	}
	if err := s.checkLocation(body.Location, exists, typeNIC, name); err != nil {
		s.mu.Unlock()
		err.write(w)
		return
	}
	if n == nil {
		n = &nic{name: name, mac: s.newMACLocked(), location: s.cfg.Location}
	}
	target, err := s.planNICLocked(n, body.Properties)
	if err != nil {
		s.mu.Unlock()
		err.write(w)
		return
	}
	s.nics[key] = n
	p := &pendingNIC{target: target, etag: newETag()}
	p.op = s.startOpLocked(http.MethodPut, now, func(ok bool) {
		n.pending = nil
		switch {
		case ok:
			n.state, n.etag, n.exists = p.target, p.etag, true
			s.vnetETag = newETag()
		case !n.exists:
			delete(s.nics, key)
		}
	})
	n.pending = p
	resp := s.renderNICLocked(n, target, p.etag, armnetwork.ProvisioningStateUpdating)
	s.mu.Unlock()

	s.log.Debug("arm nic update accepted", "nic", name, "ipconfigs", len(target.ipConfigs), "op", p.op.id)
	s.acceptLRO(w, r, p.op)
	status := http.StatusOK
	if !exists {
		status = http.StatusCreated
	}
	writeJSON(w, status, resp)
}

func provisioningState(updating bool) armnetwork.ProvisioningState {
	if updating {
		return armnetwork.ProvisioningStateUpdating
	}
	return armnetwork.ProvisioningStateSucceeded
}

// renderNICLocked builds the API form of NIC n with state st.
func (s *Server) renderNICLocked(n *nic, st nicState, etag string, ps armnetwork.ProvisioningState) armnetwork.Interface {
	props := &armnetwork.InterfacePropertiesFormat{
		MacAddress:         to.Ptr(azureMAC(n)),
		EnableIPForwarding: to.Ptr(st.ipForwarding),
		Primary:            to.Ptr(n.vmName != ""),
		ProvisioningState:  to.Ptr(ps),
		NicType:            to.Ptr(armnetwork.NetworkInterfaceNicTypeStandard),
		IPConfigurations:   []*armnetwork.InterfaceIPConfiguration{},
	}
	if n.vmName != "" {
		props.VirtualMachine = &armnetwork.SubResource{ID: to.Ptr(s.vmID(n.vmName))}
	}
	for _, c := range st.ipConfigs {
		method := armnetwork.IPAllocationMethodDynamic
		if c.static {
			method = armnetwork.IPAllocationMethodStatic
		}
		props.IPConfigurations = append(props.IPConfigurations, &armnetwork.InterfaceIPConfiguration{
			ID:   to.Ptr(s.ipConfigID(n.name, c.name)),
			Name: to.Ptr(c.name),
			Type: to.Ptr(typeIPConfig),
			Etag: to.Ptr(etag),
			Properties: &armnetwork.InterfaceIPConfigurationPropertiesFormat{
				PrivateIPAddress:          to.Ptr(c.addr.String()),
				PrivateIPAllocationMethod: to.Ptr(method),
				PrivateIPAddressVersion:   to.Ptr(armnetwork.IPVersionIPv4),
				Primary:                   to.Ptr(c.primary),
				Subnet:                    &armnetwork.Subnet{ID: to.Ptr(s.subnetID())},
				ProvisioningState:         to.Ptr(ps),
			},
		})
	}
	return armnetwork.Interface{
		ID:         to.Ptr(s.nicID(n.name)),
		Name:       to.Ptr(n.name),
		Type:       to.Ptr(typeNIC),
		Location:   to.Ptr(n.location),
		Etag:       to.Ptr(etag),
		Properties: props,
	}
}

// azureMAC formats the NIC's MAC as Azure does: "00-0D-3A-11-22-33".
func azureMAC(n *nic) string {
	return strings.ToUpper(strings.ReplaceAll(n.mac.String(), ":", "-"))
}
