package sim

import (
	"crypto/x509"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"

	"github.com/vnet-cni/vnet-cni/internal/cabundle"
)

func newManagedIdentity() (azcore.TokenCredential, error) {
	return azidentity.NewManagedIdentityCredential(nil)
}

func loadPool(path string) (*x509.CertPool, error) { return cabundle.Load(path) }
