package azure

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"

	azcloud "github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
)

// DefaultCloudConfigFile is where AKS and acs-engine-style templates put the
// Azure cloud-provider configuration on every node.
const DefaultCloudConfigFile = "/etc/kubernetes/azure.json"

// CloudConfig is the part of the Azure cloud-provider configuration file
// (azure.json, the file kubelet and cloud-controller-manager read with
// --cloud-config) that vnet-cni uses. The file has many more fields; they
// are ignored.
type CloudConfig struct {
	// Cloud names the Azure cloud: AzurePublicCloud (the default),
	// AzureChinaCloud or AzureUSGovernmentCloud.
	Cloud          string `json:"cloud"`
	TenantID       string `json:"tenantId"`
	SubscriptionID string `json:"subscriptionId"`
	// ResourceGroup is the cluster's (the VMs' and NICs') resource group.
	ResourceGroup string `json:"resourceGroup"`
	Location      string `json:"location"`
	VNetName      string `json:"vnetName"`
	// VNetResourceGroup is the VNet's resource group when it is not
	// ResourceGroup (a VNet shared between clusters).
	VNetResourceGroup       string `json:"vnetResourceGroup"`
	SubnetName              string `json:"subnetName"`
	RouteTableName          string `json:"routeTableName"`
	RouteTableResourceGroup string `json:"routeTableResourceGroup"`
	// UseManagedIdentityExtension selects the VM's managed identity;
	// UserAssignedIdentityID, when set, is the client ID of a user-assigned
	// one.
	UseManagedIdentityExtension bool   `json:"useManagedIdentityExtension"`
	UserAssignedIdentityID      string `json:"userAssignedIdentityID"`
	// AADClientID and AADClientSecret are a service principal's, used
	// when UseManagedIdentityExtension is false.
	AADClientID     string `json:"aadClientId"`
	AADClientSecret string `json:"aadClientSecret"`
}

// ParseCloudConfig parses an azure.json document. Unknown fields are
// allowed (the file is shared with the cloud provider); a field of the wrong
// type, a service principal without its secret or a managed identity and a
// service principal at once are errors.
func ParseCloudConfig(data []byte) (CloudConfig, error) {
	var c CloudConfig
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&c); err != nil {
		return CloudConfig{}, fmt.Errorf("parse cloud config: %w", err)
	}
	if dec.More() {
		return CloudConfig{}, errors.New("parse cloud config: more than one JSON value")
	}
	if _, err := c.CloudConfiguration(); err != nil {
		return CloudConfig{}, err
	}
	switch {
	case c.UseManagedIdentityExtension && c.AADClientSecret != "":
		return CloudConfig{}, errors.New("cloud config: useManagedIdentityExtension and aadClientSecret are both set; choose one identity")
	case !c.UseManagedIdentityExtension && c.UserAssignedIdentityID != "":
		return CloudConfig{}, errors.New("cloud config: userAssignedIdentityID is set but useManagedIdentityExtension is false")
	case (c.AADClientID == "") != (c.AADClientSecret == ""):
		if !c.UseManagedIdentityExtension {
			return CloudConfig{}, errors.New("cloud config: a service principal needs both aadClientId and aadClientSecret")
		}
	}
	if c.AADClientSecret != "" && c.TenantID == "" {
		return CloudConfig{}, errors.New("cloud config: a service principal needs tenantId")
	}
	if (c.SubnetName == "") != (c.VNetName == "") {
		return CloudConfig{}, errors.New("cloud config: vnetName and subnetName go together")
	}
	return c, nil
}

// LoadCloudConfig reads and parses the file at path; errors name it.
func LoadCloudConfig(path string) (CloudConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return CloudConfig{}, fmt.Errorf("read cloud config: %w", err)
	}
	c, err := ParseCloudConfig(data)
	if err != nil {
		return CloudConfig{}, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// CloudConfiguration returns the SDK's description of the named cloud (its
// ARM and Entra ID endpoints).
func (c CloudConfig) CloudConfiguration() (azcloud.Configuration, error) {
	switch strings.ToLower(c.Cloud) {
	case "", "azurepubliccloud":
		return azcloud.AzurePublic, nil
	case "azurechinacloud":
		return azcloud.AzureChina, nil
	case "azureusgovernmentcloud":
		return azcloud.AzureGovernment, nil
	}
	return azcloud.Configuration{}, fmt.Errorf("cloud config: cloud %q is not one of AzurePublicCloud, AzureChinaCloud, AzureUSGovernmentCloud", c.Cloud)
}

// ServicePrincipal reports whether the file names a service principal
// rather than a managed identity.
func (c CloudConfig) ServicePrincipal() bool {
	return !c.UseManagedIdentityExtension && c.AADClientSecret != ""
}

// Expected returns what the file says about the node's network, for the
// provider to hold the cloud to.
func (c CloudConfig) Expected() Expected {
	vnetRG := c.VNetResourceGroup
	if vnetRG == "" {
		vnetRG = c.ResourceGroup
	}
	if c.VNetName == "" {
		vnetRG = ""
	}
	return Expected{
		SubscriptionID:    c.SubscriptionID,
		ResourceGroup:     c.ResourceGroup,
		VNetResourceGroup: vnetRG,
		VNetName:          c.VNetName,
		SubnetName:        c.SubnetName,
	}
}

// Expected is what the node's configuration says its network is. Empty
// fields are not checked. The provider refuses to start when the cloud
// disagrees: a node whose NIC is in another subnet than its template says
// would hand out addresses the cluster's routes and security rules were
// not made for.
type Expected struct {
	// Source names where the expectations come from in errors (the file).
	Source            string
	SubscriptionID    string
	ResourceGroup     string
	VNetResourceGroup string
	VNetName          string
	SubnetName        string
}

// check compares the discovered instance and subnet id with e.
func (e Expected) check(inst instance, subnetID string) error {
	var diffs []string
	differ := func(what, want, got string) {
		if want != "" && !strings.EqualFold(want, got) {
			diffs = append(diffs, fmt.Sprintf("%s %q, the cloud says %q", what, want, got))
		}
	}
	differ("subscription", e.SubscriptionID, inst.SubscriptionID)
	differ("resource group", e.ResourceGroup, inst.ResourceGroup)
	if e.VNetName != "" || e.SubnetName != "" {
		rg, vnet, subnet, err := splitSubnetID(subnetID)
		if err != nil {
			return err
		}
		differ("VNet resource group", e.VNetResourceGroup, rg)
		differ("VNet", e.VNetName, vnet)
		differ("subnet", e.SubnetName, subnet)
	}
	if len(diffs) > 0 {
		src := "the node's configuration"
		if e.Source != "" {
			src += " (" + e.Source + ")"
		}
		return fmt.Errorf("%s does not match its NIC: configured %s", src, strings.Join(diffs, "; "))
	}
	return nil
}
