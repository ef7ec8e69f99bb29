// Package cabundle loads a PEM bundle of CA certificates into a pool, for a
// cloud endpoint whose certificate is signed by a private CA (Azure Stack,
// an intercepting proxy, the simulated cloud).
package cabundle

import (
	"crypto/x509"
	"fmt"
	"os"
)

// Load returns a pool holding every certificate of the PEM file at path. A
// file without a single PEM certificate is an error.
func Load(path string) (*x509.CertPool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read ca bundle: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("ca bundle %s holds no PEM certificate", path)
	}
	return pool, nil
}
