// Package armops is an operator's view of the simulated Azure: an
// armnetwork client of the NICs, authenticated with the simulated control
// plane's tokens and trusting its CA, as a person with the portal or the
// CLI would reach them, outside vnet-ipamd.
package armops

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"net/netip"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	azarm "github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	azcloud "github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v9"

	"github.com/vnet-cni/vnet-cni/cloud/sim"
	"github.com/vnet-cni/vnet-cni/cloud/sim/arm"
	"github.com/vnet-cni/vnet-cni/internal/cabundle"
)

// credential hands out the simulated control plane's tokens.
type credential struct{ arm *arm.Server }

func (c credential) GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
	tok, exp := c.arm.IssueToken(sim.Audience)
	return azcore.AccessToken{Token: tok, ExpiresOn: exp}, nil
}

// Interfaces returns an armnetwork client of the sim's NICs (two retries,
// 30 s per request).
func Interfaces(desc sim.Description, a *arm.Server) (*armnetwork.InterfacesClient, error) {
	opts, err := clientOptions(desc)
	if err != nil {
		return nil, err
	}
	return armnetwork.NewInterfacesClient(desc.SubscriptionID, credential{a}, opts)
}

// RouteTables returns an armnetwork client of the sim's route tables, as
// Interfaces does for the NICs.
func RouteTables(desc sim.Description, a *arm.Server) (*armnetwork.RouteTablesClient, error) {
	opts, err := clientOptions(desc)
	if err != nil {
		return nil, err
	}
	return armnetwork.NewRouteTablesClient(desc.SubscriptionID, credential{a}, opts)
}

func clientOptions(desc sim.Description) (*azarm.ClientOptions, error) {
	pool, err := cabundle.Load(desc.CAFile)
	if err != nil {
		return nil, fmt.Errorf("the sim's CA: %w", err)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	return &azarm.ClientOptions{
		ClientOptions: policy.ClientOptions{
			Cloud: azcloud.Configuration{Services: map[azcloud.ServiceName]azcloud.ServiceConfiguration{
				azcloud.ResourceManager: {Endpoint: desc.ARMEndpoint, Audience: desc.ARMAudience},
			}},
			Transport: &http.Client{Transport: tr, Timeout: 30 * time.Second},
			Retry:     policy.RetryOptions{MaxRetries: 2, RetryDelay: 200 * time.Millisecond},
		},
	}, nil
}

// Secondaries reads a NIC and returns the addresses of its secondary
// ipConfigurations.
func Secondaries(ctx context.Context, nics *armnetwork.InterfacesClient, resourceGroup, nic string) (map[netip.Addr]bool, error) {
	resp, err := nics.Get(ctx, resourceGroup, nic, nil)
	if err != nil {
		return nil, fmt.Errorf("get nic %s: %w", nic, err)
	}
	addrs := map[netip.Addr]bool{}
	for _, c := range resp.Properties.IPConfigurations {
		if c.Properties == nil || c.Properties.PrivateIPAddress == nil {
			continue
		}
		if c.Properties.Primary != nil && *c.Properties.Primary {
			continue
		}
		a, err := netip.ParseAddr(*c.Properties.PrivateIPAddress)
		if err != nil {
			return nil, fmt.Errorf("nic %s: ipConfiguration %s: %w", nic, *c.Name, err)
		}
		addrs[a] = true
	}
	return addrs, nil
}
