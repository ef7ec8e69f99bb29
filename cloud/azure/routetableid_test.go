package azure

import "testing"

func TestParseRouteTableID(t *testing.T) {
	ref, err := ParseRouteTableID("/subscriptions/s1/resourcegroups/rg-net/providers/microsoft.network/routeTables/rt-k8s")
	if err != nil || ref.SubscriptionID != "s1" || ref.ResourceGroup != "rg-net" || ref.Name != "rt-k8s" {
		t.Errorf("parsed %+v, %v", ref, err)
	}
	for _, bad := range []string{"", "rt-k8s", "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v",
		"/subscriptions//resourceGroups/rg/providers/Microsoft.Network/routeTables/rt", "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/routeTables/rt/routes/r"} {
		if _, err := ParseRouteTableID(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
