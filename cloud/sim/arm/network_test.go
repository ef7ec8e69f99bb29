package arm

import (
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestVNetAndSubnet: the VNet shows its address space and subnet; the
// subnet its prefix, route table and the ipConfigurations in it.
func TestVNetAndSubnet(t *testing.T) {
	e := newEnv(t, nil)
	ctx := testCtx(t)
	if _, err := e.putNIC(ctx, "node-1", nicBody(ipc("ipconfig1", "10.0.0.5", true), ipc("pod", "", false))); err != nil {
		t.Fatal(err)
	}
	vnet, err := e.vnets.Get(ctx, testRG, "vnet", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := *vnet.Properties.AddressSpace.AddressPrefixes[0]; got != "10.0.0.0/16" {
		t.Errorf("address space = %s", got)
	}
	if got := *vnet.Properties.Subnets[0].Properties.AddressPrefix; got != "10.0.0.0/24" {
		t.Errorf("vnet subnet prefix = %s", got)
	}
	sub, err := e.subnets.Get(ctx, testRG, "vnet", "nodes", nil)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(*sub.Properties.RouteTable.ID, "/providers/Microsoft.Network/routeTables/rt") {
		t.Errorf("subnet route table = %s", *sub.Properties.RouteTable.ID)
	}
	var refs []string
	for _, c := range sub.Properties.IPConfigurations {
		refs = append(refs, (*c.ID)[strings.Index(*c.ID, "networkInterfaces/")+len("networkInterfaces/"):])
	}
	want := []string{"node-0/ipConfigurations/ipconfig1", "node-1/ipConfigurations/ipconfig1", "node-1/ipConfigurations/pod"}
	if diff := cmp.Diff(want, refs); diff != "" {
		t.Errorf("subnet ipConfigurations (-want +got):\n%s", diff)
	}
	_, err = e.subnets.Get(ctx, testRG, "vnet", "missing", nil)
	wantAPIError(t, err, http.StatusNotFound, CodeNotFound)
	_, err = e.vnets.Get(ctx, testRG, "missing", nil)
	wantAPIError(t, err, http.StatusNotFound, CodeResourceNotFound)
}

// TestPaths: ARM's answers before the resource provider: api-version,
// unknown paths, subscriptions and groups; literal segments match in any
// case.
func TestPaths(t *testing.T) {
	e := newEnv(t, nil)
	tok := e.token()
	base := "/subscriptions/" + testSub + "/resourceGroups/" + testRG + "/providers/Microsoft.Network"
	tests := []struct {
		name, method, path string
		status             int
		code               string
	}{
		{"no api-version", "GET", nicPath("node-0"), http.StatusBadRequest, CodeMissingAPIVersion},
		{"lower-case path", "GET", strings.ToLower("/SUBSCRIPTIONS/"+testSub+"/RESOURCEGROUPS/"+testRG+"/PROVIDERS/MICROSOFT.NETWORK/NETWORKINTERFACES/node-0") + "?api-version=" + apiVersion, http.StatusOK, ""},
		{"unknown NIC", "GET", nicPath("nope") + "?api-version=" + apiVersion, http.StatusNotFound, CodeResourceNotFound},
		{"unknown path", "GET", base + "/loadBalancers/lb?api-version=" + apiVersion, http.StatusNotFound, CodeNotFound},
		{"unknown subscription", "GET", "/subscriptions/other/resourceGroups/" + testRG + "/providers/Microsoft.Network/networkInterfaces/node-0?api-version=" + apiVersion, http.StatusNotFound, CodeSubscriptionNotFound},
		{"unknown group", "GET", "/subscriptions/" + testSub + "/resourceGroups/other/providers/Microsoft.Network/networkInterfaces/node-0?api-version=" + apiVersion, http.StatusNotFound, CodeResourceGroupNotFound},
		{"unsupported method", "DELETE", nicPath("node-0") + "?api-version=" + apiVersion, http.StatusMethodNotAllowed, CodeMethodNotAllowed},
		{"unknown operation", "GET", "/subscriptions/" + testSub + "/providers/Microsoft.Network/locations/" + testLocation + "/operations/nope?api-version=" + apiVersion, http.StatusNotFound, CodeNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := e.rawRequest(t, tt.method, tt.path, tok, nil)
			if resp.StatusCode != tt.status {
				t.Fatalf("status = %d, want %d: %s", resp.StatusCode, tt.status, body)
			}
			if tt.code != "" && !strings.Contains(body, `"code":"`+tt.code+`"`) {
				t.Errorf("body = %s, want code %s", body, tt.code)
			}
			if resp.Header.Get("x-ms-request-id") == "" || resp.Header.Get("x-ms-correlation-request-id") == "" {
				t.Error("x-ms-request-id or x-ms-correlation-request-id missing")
			}
		})
	}
}
