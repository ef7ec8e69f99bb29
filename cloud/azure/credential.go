package azure

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
)

// ManagedIdentityCredential returns the VM's managed identity (system
// assigned, or the user-assigned identity with clientID), which asks IMDS at
// 169.254.169.254 for tokens: on a real VM and inside a simulated node alike.
func ManagedIdentityCredential(clientID string) (azcore.TokenCredential, error) {
	opts := &azidentity.ManagedIdentityCredentialOptions{}
	if clientID != "" {
		opts.ID = azidentity.ClientID(clientID)
	}
	cred, err := azidentity.NewManagedIdentityCredential(opts)
	if err != nil {
		return nil, fmt.Errorf("managed identity credential: %w", err)
	}
	return cred, nil
}

// TokenFileCredential reads a bearer token from a file on every request for
// a token, so a rotated file takes effect without a restart. It is meant for
// the simulated cloud's static token and for tokens mounted by an external
// issuer.
type TokenFileCredential struct {
	path string
	// validity is how long a token read from the file is reported valid.
	validity time.Duration
}

// NewTokenFileCredential returns a credential that reads path.
func NewTokenFileCredential(path string) (*TokenFileCredential, error) {
	if path == "" {
		return nil, errors.New("token file credential: no path")
	}
	return &TokenFileCredential{path: path, validity: 5 * time.Minute}, nil
}

var _ azcore.TokenCredential = (*TokenFileCredential)(nil)

// GetToken implements azcore.TokenCredential.
func (c *TokenFileCredential) GetToken(_ context.Context, _ policy.TokenRequestOptions) (azcore.AccessToken, error) {
	data, err := os.ReadFile(c.path)
	if err != nil {
		return azcore.AccessToken{}, fmt.Errorf("read token file: %w", err)
	}
	tok := strings.TrimSpace(string(data))
	if tok == "" {
		return azcore.AccessToken{}, fmt.Errorf("token file %s is empty", c.path)
	}
	return azcore.AccessToken{Token: tok, ExpiresOn: time.Now().Add(c.validity)}, nil
}

// CloudConfigCredential returns the identity a cloud-provider configuration
// names: its service principal, signing in at authorityHost (empty: the
// cloud's own Entra ID endpoint) over transport (nil: the SDK's default), or
// the VM's managed identity, user-assigned when userAssignedIdentityID is set.
func CloudConfigCredential(cc CloudConfig, authorityHost string, transport policy.Transporter) (azcore.TokenCredential, error) {
	switch {
	case cc.ServicePrincipal():
		env, err := cc.CloudConfiguration()
		if err != nil {
			return nil, err
		}
		opts := &azidentity.ClientSecretCredentialOptions{}
		opts.Cloud = env
		if authorityHost != "" {
			opts.Cloud.ActiveDirectoryAuthorityHost = authorityHost
			// Instance discovery asks the public cloud about the authority;
			// a private one (Azure Stack, the simulated cloud) is not known
			// there.
			opts.DisableInstanceDiscovery = true
		}
		if transport != nil {
			opts.Transport = transport
		}
		cred, err := azidentity.NewClientSecretCredential(cc.TenantID, cc.AADClientID, cc.AADClientSecret, opts)
		if err != nil {
			return nil, fmt.Errorf("service principal credential: %w", err)
		}
		return cred, nil
	case cc.UseManagedIdentityExtension:
		return ManagedIdentityCredential(cc.UserAssignedIdentityID)
	}
	return nil, errors.New("cloud config names no identity: set useManagedIdentityExtension, or aadClientId and aadClientSecret")
}
