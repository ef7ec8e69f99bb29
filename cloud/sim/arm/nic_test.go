package arm

import (
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v9"
	"github.com/google/go-cmp/cmp"
)

// TestNICGetShape: the NIC looks the way Azure shows it.
func TestNICGetShape(t *testing.T) {
	e := newEnv(t, nil)
	res, err := e.nics.Get(testCtx(t), testRG, "NODE-0", nil) // names match case-insensitively
	if err != nil {
		t.Fatal(err)
	}
	n := res.Interface
	c := n.Properties.IPConfigurations[0]
	got := map[string]any{
		"id":        *n.ID,
		"name":      *n.Name,
		"type":      *n.Type,
		"location":  *n.Location,
		"mac":       *n.Properties.MacAddress,
		"fwd":       *n.Properties.EnableIPForwarding,
		"primary":   *n.Properties.Primary,
		"vm":        *n.Properties.VirtualMachine.ID,
		"state":     *n.Properties.ProvisioningState,
		"cfgID":     *c.ID,
		"cfgName":   *c.Name,
		"cfgIP":     *c.Properties.PrivateIPAddress,
		"cfgMethod": *c.Properties.PrivateIPAllocationMethod,
		"cfgVer":    *c.Properties.PrivateIPAddressVersion,
		"cfgPri":    *c.Properties.Primary,
		"cfgSubnet": *c.Properties.Subnet.ID,
		"cfgState":  *c.Properties.ProvisioningState,
	}
	base := "/subscriptions/" + testSub + "/resourceGroups/" + testRG + "/providers/"
	want := map[string]any{
		"id":        base + "Microsoft.Network/networkInterfaces/node-0",
		"name":      "node-0",
		"type":      "Microsoft.Network/networkInterfaces",
		"location":  testLocation,
		"mac":       "00-0D-3A-00-00-01",
		"fwd":       false,
		"primary":   true,
		"vm":        base + "Microsoft.Compute/virtualMachines/vm-0",
		"state":     armnetwork.ProvisioningStateSucceeded,
		"cfgID":     base + "Microsoft.Network/networkInterfaces/node-0/ipConfigurations/ipconfig1",
		"cfgName":   "ipconfig1",
		"cfgIP":     "10.0.0.4",
		"cfgMethod": armnetwork.IPAllocationMethodStatic,
		"cfgVer":    armnetwork.IPVersionIPv4,
		"cfgPri":    true,
		"cfgSubnet": base + "Microsoft.Network/virtualNetworks/vnet/subnets/nodes",
		"cfgState":  armnetwork.ProvisioningStateSucceeded,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("NIC (-want +got):\n%s", diff)
	}

	pager := e.nics.NewListPager(testRG, nil)
	var names []string
	for pager.More() {
		page, err := pager.NextPage(testCtx(t))
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range page.Value {
			names = append(names, *n.Name)
		}
	}
	if diff := cmp.Diff([]string{"node-0", "node-1"}, names); diff != "" {
		t.Errorf("List (-want +got):\n%s", diff)
	}
}

// TestNICValidation: invalid PUTs are refused synchronously with Azure's
// codes and leave the NIC as it was.
func TestNICValidation(t *testing.T) {
	e := newEnv(t, nil)
	ctx := testCtx(t)
	if _, err := e.putNIC(ctx, "node-0", nicBody(ipc("ipconfig1", "10.0.0.4", true), ipc("kept", "10.0.0.20", false))); err != nil {
		t.Fatal(err)
	}
	otherSubnet := ipc("x", "", false)
	otherSubnet.Properties.Subnet = &armnetwork.Subnet{ID: to.Ptr(*subnetRef().ID + "-other")}
	tests := []struct {
		name string
		cfgs []*armnetwork.InterfaceIPConfiguration
		code string
	}{
		{"address of another NIC", []*armnetwork.InterfaceIPConfiguration{ipc("ipconfig1", "10.0.0.4", true), ipc("x", "10.0.0.5", false)}, CodeAddressIsAllocated},
		{"same address twice", []*armnetwork.InterfaceIPConfiguration{ipc("ipconfig1", "10.0.0.4", true), ipc("x", "10.0.0.30", false), ipc("y", "10.0.0.30", false)}, CodeAddressIsAllocated},
		{"address of a kept ipConfiguration", []*armnetwork.InterfaceIPConfiguration{ipc("ipconfig1", "10.0.0.4", true), ipc("x", "10.0.0.20", false), ipc("kept", "", false)}, CodeAddressIsAllocated},
		{"outside the subnet", []*armnetwork.InterfaceIPConfiguration{ipc("ipconfig1", "10.0.0.4", true), ipc("x", "10.0.1.9", false)}, CodeAddressNotInSubnet},
		{"gateway address", []*armnetwork.InterfaceIPConfiguration{ipc("ipconfig1", "10.0.0.4", true), ipc("x", "10.0.0.1", false)}, CodeAddressInReservedRange},
		{"dns address", []*armnetwork.InterfaceIPConfiguration{ipc("ipconfig1", "10.0.0.4", true), ipc("x", "10.0.0.3", false)}, CodeAddressInReservedRange},
		{"broadcast address", []*armnetwork.InterfaceIPConfiguration{ipc("ipconfig1", "10.0.0.4", true), ipc("x", "10.0.0.255", false)}, CodeAddressInReservedRange},
		{"no primary", []*armnetwork.InterfaceIPConfiguration{ipc("ipconfig1", "10.0.0.4", false), ipc("x", "", false)}, CodeNoPrimaryIPConfig},
		{"two primaries", []*armnetwork.InterfaceIPConfiguration{ipc("ipconfig1", "10.0.0.4", true), ipc("x", "", true)}, CodeMultiplePrimaryIPConfigs},
		{"primary removed", []*armnetwork.InterfaceIPConfiguration{ipc("other", "10.0.0.4", true)}, CodePrimaryDeleteNotAllowed},
		{"primary address changed", []*armnetwork.InterfaceIPConfiguration{ipc("ipconfig1", "10.0.0.40", true)}, CodePropertyChangeNotAllowed},
		{"other subnet", []*armnetwork.InterfaceIPConfiguration{ipc("ipconfig1", "10.0.0.4", true), otherSubnet}, CodeInvalidResourceReference},
		{"bad address", []*armnetwork.InterfaceIPConfiguration{ipc("ipconfig1", "10.0.0.4", true), ipc("x", "10.0.0.999", false)}, CodeInvalidRequestFormat},
	}
	before := e.s.Snapshot()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.nics.BeginCreateOrUpdate(noRetry(ctx), testRG, "node-0", nicBody(tt.cfgs...), nil)
			wantAPIError(t, err, http.StatusBadRequest, tt.code)
		})
	}
	if diff := cmp.Diff(before, e.s.Snapshot(), netipOpts); diff != "" {
		t.Errorf("refused PUTs changed the state (-before +after):\n%s", diff)
	}
}

// TestIPConfigLimit: 256 ipConfigurations are accepted, 257 are not.
func TestIPConfigLimit(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Subnet = netip.MustParsePrefix("10.0.0.0/22") })
	ctx := testCtx(t)
	build := func(n int) armnetwork.Interface {
		cfgs := []*armnetwork.InterfaceIPConfiguration{ipc("ipconfig1", "10.0.0.4", true)}
		for i := 1; i < n; i++ {
			cfgs = append(cfgs, ipc(fmt.Sprintf("pod%d", i), "", false))
		}
		return nicBody(cfgs...)
	}
	_, err := e.nics.BeginCreateOrUpdate(noRetry(ctx), testRG, "node-0", build(MaxIPConfigsPerNIC+1), nil)
	wantAPIError(t, err, http.StatusBadRequest, CodeIPConfigLimit)

	res, err := e.putNIC(ctx, "node-0", build(MaxIPConfigsPerNIC))
	if err != nil {
		t.Fatalf("PUT with %d ipConfigurations: %v", MaxIPConfigsPerNIC, err)
	}
	if n := len(res.Properties.IPConfigurations); n != MaxIPConfigsPerNIC {
		t.Errorf("NIC has %d ipConfigurations, want %d", n, MaxIPConfigsPerNIC)
	}
	if n := len(e.s.Snapshot().NICs[0].Secondary); n != MaxIPConfigsPerNIC-1 {
		t.Errorf("Snapshot has %d secondaries, want %d", n, MaxIPConfigsPerNIC-1)
	}
}

// TestSubnetIsFull: a /28 has 11 usable addresses; two are primaries.
func TestSubnetIsFull(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Subnet = netip.MustParsePrefix("10.0.0.0/28") })
	ctx := testCtx(t)
	build := func(n int) armnetwork.Interface {
		cfgs := []*armnetwork.InterfaceIPConfiguration{ipc("ipconfig1", "10.0.0.4", true)}
		for i := range n {
			cfgs = append(cfgs, ipc(fmt.Sprintf("pod%d", i), "", false))
		}
		return nicBody(cfgs...)
	}
	_, err := e.nics.BeginCreateOrUpdate(noRetry(ctx), testRG, "node-0", build(10), nil)
	wantAPIError(t, err, http.StatusBadRequest, CodeSubnetIsFull)
	if want := "Subnet nodes with address prefix 10.0.0.0/28 does not have enough capacity for 10 IP addresses"; !strings.Contains(err.Error(), want) {
		t.Errorf("message does not contain %q: %v", want, err)
	}
	res, err := e.putNIC(ctx, "node-0", build(9))
	if err != nil {
		t.Fatalf("PUT of the 9 free addresses: %v", err)
	}
	if got := addrsOf(res)["pod8"]; got != "10.0.0.14" {
		t.Errorf("last address = %s, want 10.0.0.14 (10.0.0.15 is the broadcast)", got)
	}
	_, err = e.nics.BeginCreateOrUpdate(noRetry(ctx), testRG, "node-1", nicBody(ipc("ipconfig1", "10.0.0.5", true), ipc("one", "", false)), nil)
	wantAPIError(t, err, http.StatusBadRequest, CodeSubnetIsFull)
}

// TestDynamicAllocation: Dynamic ipConfigurations get the lowest free
// address, keep it across updates, and removed addresses are free again only
// after the update committed.
func TestDynamicAllocation(t *testing.T) {
	e := newEnv(t, nil)
	ctx := testCtx(t)
	steps := []struct {
		nic  string
		cfgs []*armnetwork.InterfaceIPConfiguration
		want map[string]string
	}{
		{"node-0", []*armnetwork.InterfaceIPConfiguration{ipc("ipconfig1", "10.0.0.4", true), ipc("a", "", false), ipc("b", "", false)},
			map[string]string{"ipconfig1": "10.0.0.4", "a": "10.0.0.6", "b": "10.0.0.7"}},
		{"node-1", []*armnetwork.InterfaceIPConfiguration{ipc("ipconfig1", "10.0.0.5", true), ipc("c", "", false)},
			map[string]string{"ipconfig1": "10.0.0.5", "c": "10.0.0.8"}},
		// a is removed, b kept (its Dynamic address stays), d is new: a's
		// address is still held while the update runs.
		{"node-0", []*armnetwork.InterfaceIPConfiguration{ipc("ipconfig1", "", true), ipc("b", "", false), ipc("d", "", false)},
			map[string]string{"ipconfig1": "10.0.0.4", "b": "10.0.0.7", "d": "10.0.0.9"}},
		{"node-1", []*armnetwork.InterfaceIPConfiguration{ipc("ipconfig1", "10.0.0.5", true), ipc("c", "", false), ipc("e", "", false)},
			map[string]string{"ipconfig1": "10.0.0.5", "c": "10.0.0.8", "e": "10.0.0.6"}},
	}
	for i, st := range steps {
		t.Run(fmt.Sprintf("step%d", i), func(t *testing.T) {
			res, err := e.putNIC(ctx, st.nic, nicBody(st.cfgs...))
			if err != nil {
				t.Fatalf("PUT: %v", err)
			}
			if diff := cmp.Diff(st.want, addrsOf(res)); diff != "" {
				t.Errorf("addresses (-want +got):\n%s", diff)
			}
		})
	}
}

// TestIPForwarding: enableIPForwarding is changed by a PUT and reaches the
// snapshot.
func TestIPForwarding(t *testing.T) {
	e := newEnv(t, nil)
	body := nicBody(ipc("ipconfig1", "10.0.0.4", true))
	body.Properties.EnableIPForwarding = to.Ptr(true)
	res, err := e.putNIC(testCtx(t), "node-0", body)
	if err != nil {
		t.Fatal(err)
	}
	if !*res.Properties.EnableIPForwarding {
		t.Error("enableIPForwarding = false after PUT true")
	}
	if !e.s.Snapshot().NICs[0].IPForwarding {
		t.Error("Snapshot IPForwarding = false")
	}
}
