package azure

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const goodDoc = `{"compute":{"location":"westeurope","name":"node0","resourceGroupName":"rg","subscriptionId":"sub","vmId":"v-1"},
"network":{"interface":[{"macAddress":"000D3A0A0B0C","ipv4":{"ipAddress":[{"privateIpAddress":"10.240.0.4","publicIpAddress":""}],
"subnet":[{"address":"10.240.0.0","prefix":"16"}]},"ipv6":{"ipAddress":[]}}]}}`

func TestParseInstance(t *testing.T) {
	got, err := parseInstance([]byte(goodDoc))
	if err != nil {
		t.Fatal(err)
	}
	want := instance{
		SubscriptionID: "sub", ResourceGroup: "rg", Location: "westeurope", VMName: "node0", VMID: "v-1",
		MAC: "000d3a0a0b0c", PrimaryIP: netip.MustParseAddr("10.240.0.4"), Subnet: netip.MustParsePrefix("10.240.0.0/16"),
	}
	if d := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b }), cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); d != "" {
		t.Errorf("instance (-want +got):\n%s", d)
	}
}

func TestParseInstanceRejects(t *testing.T) {
	for _, tc := range []struct {
		name, from, to, wantErr string
	}{
		{"not json", goodDoc, "{", "decode"},
		{"no subscription", `"subscriptionId":"sub"`, `"subscriptionId":""`, "compute.subscriptionId"},
		{"no resource group", `"resourceGroupName":"rg"`, `"resourceGroupName":""`, "compute.resourceGroupName"},
		{"no name", `"name":"node0"`, `"name":""`, "compute.name"},
		{"no interface", `"interface":[{`, `"interface":[],"x":[{`, "no network interface"},
		{"bad mac", `000D3A0A0B0C`, `zz`, "macAddress"},
		{"bad ip", `"10.240.0.4"`, `"10.240.0.400"`, "privateIpAddress"},
		{"ipv6 primary", `"10.240.0.4"`, `"fd00::4"`, "privateIpAddress"},
		{"bad prefix", `"prefix":"16"`, `"prefix":"40"`, "subnet prefix"},
		{"bad subnet address", `"address":"10.240.0.0"`, `"address":"x"`, "subnet address"},
		{"primary outside subnet", `"address":"10.240.0.0","prefix":"16"`, `"address":"10.241.0.0","prefix":"16"`, "outside subnet"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doc := goodDoc
			if tc.from == goodDoc {
				doc = tc.to
			} else {
				if !strings.Contains(doc, tc.from) {
					t.Fatalf("test bug: %q not in document", tc.from)
				}
				doc = strings.Replace(doc, tc.from, tc.to, 1)
			}
			_, err := parseInstance([]byte(doc))
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error = %v, want one mentioning %q", err, tc.wantErr)
			}
		})
	}
}

func TestParseSubnetID(t *testing.T) {
	rg, vnet, err := parseSubnetID("/subscriptions/s/resourceGroups/rg1/providers/Microsoft.Network/virtualNetworks/v1/subnets/n")
	if err != nil || rg != "rg1" || vnet != "v1" {
		t.Errorf("got %q %q %v", rg, vnet, err)
	}
	for _, bad := range []string{"", "/subscriptions/s", "/subscriptions/s/resourceGroups/rg1/providers/Microsoft.Network/virtualNetworks/v1/other/n"} {
		if _, _, err := parseSubnetID(bad); err == nil {
			t.Errorf("parseSubnetID(%q) succeeded", bad)
		}
	}
}

func TestNormalizeMAC(t *testing.T) {
	for _, in := range []string{"00-0D-3A-0A-0B-0C", "00:0d:3a:0a:0b:0c", "000D3A0A0B0C"} {
		if got := normalizeMAC(in); got != "000d3a0a0b0c" {
			t.Errorf("normalizeMAC(%q) = %q", in, got)
		}
	}
}
