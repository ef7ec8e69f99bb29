package azure

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vnet-cni/vnet-cni/cloud"
	"github.com/vnet-cni/vnet-cni/cloud/sim"
)

func TestParseCloudConfig(t *testing.T) {
	good := `{
		"cloud": "AzurePublicCloud", "tenantId": "t", "subscriptionId": "s", "resourceGroup": "rg",
		"location": "westeurope", "vnetName": "v", "vnetResourceGroup": "", "subnetName": "n",
		"securityGroupName": "nsg", "routeTableName": "rt", "primaryAvailabilitySetName": "as",
		"cloudProviderBackoff": true, "cloudProviderRateLimitQPS": 6,
		"useManagedIdentityExtension": true, "userAssignedIdentityID": "0123abcd-4567-89ab-cdef-0123456789ab",
		"useInstanceMetadata": true, "vmType": "vmss", "excludeMasterFromStandardLB": true
	}`
	c, err := ParseCloudConfig([]byte(good))
	if err != nil {
		t.Fatalf("an acs-engine style azure.json: %v", err)
	}
	want := Expected{SubscriptionID: "s", ResourceGroup: "rg", VNetResourceGroup: "rg", VNetName: "v", SubnetName: "n"}
	if got := c.Expected(); got != want {
		t.Errorf("expected %+v, want %+v (vnetResourceGroup defaults to resourceGroup)", got, want)
	}
	if c.ServicePrincipal() || c.UserAssignedIdentityID == "" || c.RouteTableName != "rt" {
		t.Errorf("parsed %+v", c)
	}

	for _, tc := range []struct{ name, doc, want string }{
		{"not json", `{"tenantId": `, "parse cloud config"},
		{"wrong type", `{"useManagedIdentityExtension": "yes"}`, "useManagedIdentityExtension"},
		{"two documents", `{} {}`, "more than one"},
		{"unknown cloud", `{"cloud": "AzureStackCloud"}`, `cloud "AzureStackCloud"`},
		{"both identities", `{"useManagedIdentityExtension": true, "aadClientId": "a", "aadClientSecret": "b", "tenantId": "t"}`, "choose one identity"},
		{"user identity without msi", `{"userAssignedIdentityID": "x"}`, "useManagedIdentityExtension is false"},
		{"client id without secret", `{"aadClientId": "a", "tenantId": "t"}`, "both aadClientId and aadClientSecret"},
		{"secret without tenant", `{"aadClientId": "a", "aadClientSecret": "b"}`, "needs tenantId"},
		{"subnet without vnet", `{"subnetName": "n"}`, "vnetName and subnetName go together"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseCloudConfig([]byte(tc.doc))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}

	dir := t.TempDir()
	bad := filepath.Join(dir, "azure.json")
	if err := os.WriteFile(bad, []byte(`{"cloud": 1}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCloudConfig(bad); err == nil || !strings.Contains(err.Error(), bad) {
		t.Errorf("a bad file: %v, want an error naming %s", err, bad)
	}
	if _, err := LoadCloudConfig(filepath.Join(dir, "missing.json")); !os.IsNotExist(unwrapAll(err)) {
		t.Errorf("a missing file: %v, want not-exist", err)
	}
}

func unwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		err = u.Unwrap()
	}
}

// TestExpectedNetwork holds the provider to what the node's azure.json
// says: the same names pass (case-insensitively, as ARM compares them),
// any other subscription, resource group, VNet or subnet is refused before
// a single write, with every difference named.
func TestExpectedNetwork(t *testing.T) {
	e := newEnv(t, sim.Options{Nodes: 1})
	right := Expected{SubscriptionID: strings.ToUpper(e.desc.SubscriptionID), ResourceGroup: e.desc.ResourceGroup,
		VNetResourceGroup: e.desc.ResourceGroup, VNetName: e.desc.VNet, SubnetName: strings.ToUpper(e.desc.Subnet)}
	cfg := e.cfg
	cfg.Expect = right
	if _, err := New(context.Background(), cfg); err != nil {
		t.Fatalf("the NIC's own network: %v", err)
	}
	for _, tc := range []struct {
		name string
		edit func(*Expected)
		want string
	}{
		{"subnet", func(x *Expected) { x.SubnetName = "pods" }, `subnet "pods", the cloud says "` + e.desc.Subnet + `"`},
		{"vnet", func(x *Expected) { x.VNetName = "other-vnet" }, `VNet "other-vnet"`},
		{"vnet resource group", func(x *Expected) { x.VNetResourceGroup = "net-rg" }, `VNet resource group "net-rg"`},
		{"subscription", func(x *Expected) { x.SubscriptionID = "00000000-0000-0000-0000-000000000001" }, "subscription"},
		{"resource group and subnet", func(x *Expected) { x.ResourceGroup = "rg2"; x.SubnetName = "s2" }, `resource group "rg2", the cloud says "` + e.desc.ResourceGroup + `"; subnet "s2"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := e.cfg
			cfg.Expect = right
			tc.edit(&cfg.Expect)
			writes := e.calls("NetworkInterfaces_CreateOrUpdate")
			_, err := New(context.Background(), cfg)
			if cloud.KindOf(err) != cloud.Fatal || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "does not match its NIC") {
				t.Errorf("New: %v, want a fatal error containing %q", err, tc.want)
			}
			if got := e.calls("NetworkInterfaces_CreateOrUpdate") - writes; got != 0 {
				t.Errorf("%d NIC writes, want 0", got)
			}
		})
	}
}

// TestServicePrincipal signs in with azidentity's client secret credential
// at the simulated Entra ID endpoint, as a node of a template whose
// azure.json names a service principal does, and uses the token on ARM.
func TestServicePrincipal(t *testing.T) {
	for _, readOnly := range []bool{false, true} {
		name := "contributor"
		if readOnly {
			name = "reader"
		}
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, sim.Options{Nodes: 1, ReadOnlyIdentity: readOnly})
			d := e.desc
			if d.ServicePrincipal == nil || d.TenantID == "" || d.ActiveDirectoryEndpoint == "" {
				t.Fatalf("sim.json has no service principal: %+v", d)
			}
			doc, _ := json.Marshal(map[string]any{
				"cloud": "AzurePublicCloud", "tenantId": d.TenantID, "subscriptionId": d.SubscriptionID,
				"resourceGroup": d.ResourceGroup, "vnetName": d.VNet, "subnetName": d.Subnet,
				"aadClientId": d.ServicePrincipal.ClientID, "aadClientSecret": d.ServicePrincipal.ClientSecret,
			})
			cc, err := ParseCloudConfig(doc)
			if err != nil {
				t.Fatal(err)
			}
			client, err := NewHTTPClient(d.CAFile)
			if err != nil {
				t.Fatal(err)
			}
			cred, err := CloudConfigCredential(cc, d.ActiveDirectoryEndpoint, client)
			if err != nil {
				t.Fatal(err)
			}
			cfg := e.cfg
			cfg.Credential = cred
			cfg.Expect = cc.Expected()
			p, err := New(context.Background(), cfg)
			if err != nil {
				t.Fatalf("New with the service principal: %v", err)
			}
			_, err = p.AddAddresses(context.Background(), p.nic.id, 2)
			switch {
			case !readOnly && err != nil:
				t.Errorf("add with a contributor principal: %v", err)
			case readOnly && cloud.KindOf(err) != cloud.Denied:
				t.Errorf("add with a reader principal: %v, want Denied", err)
			}
			if n := e.sim.ARM().Stats().Calls["Entra_Token"]["200"]; n != 1 {
				t.Errorf("%d token requests answered 200, want 1 (the credential caches it)", n)
			}

			bad := cc
			bad.AADClientSecret = "not-the-secret"
			cred, err = CloudConfigCredential(bad, d.ActiveDirectoryEndpoint, client)
			if err != nil {
				t.Fatal(err)
			}
			cfg.Credential = cred
			if _, err := New(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "AADSTS7000215") {
				t.Errorf("a wrong secret: %v, want Entra ID's invalid client secret", err)
			}
		})
	}
}
