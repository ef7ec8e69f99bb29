// Package azuretest starts the simulated Azure for tests of packages that
// use the real provider: the sim without its fabric, the node's IMDS on a
// test server, and the provider's configuration with the sim's static
// token, as vnet-ipamd's staticTokenFile credential reads it.
package azuretest

import (
	"context"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vnet-cni/vnet-cni/cloud/azure"
	"github.com/vnet-cni/vnet-cni/cloud/sim"
)

// Token is the sim's static bearer token in these tests.
const Token = "azuretest-token"

// Start starts the sim with opts (NoFabric, the static token and short
// operations set) and closes it when the test ends.
func Start(t testing.TB, opts sim.Options) *sim.Sim {
	t.Helper()
	opts.Dir = t.TempDir()
	opts.NoFabric = true
	opts.StaticToken = Token
	if opts.OperationDuration == 0 {
		opts.OperationDuration = 30 * time.Millisecond
		opts.PollInterval = 20 * time.Millisecond
	}
	s, err := sim.Start(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// Config is the provider's configuration for the sim's node: its IMDS on
// a test server, the ARM endpoint and CA, the static token.
func Config(t testing.TB, s *sim.Sim, node string) azure.Config {
	t.Helper()
	h, ok := s.IMDSHandler(node)
	if !ok {
		t.Fatalf("no imds for %s", node)
	}
	imds := httptest.NewServer(h)
	t.Cleanup(imds.Close)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(Token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cred, err := azure.NewTokenFileCredential(tokenFile)
	if err != nil {
		t.Fatal(err)
	}
	d := s.Description()
	return azure.Config{
		ResourceManagerEndpoint: d.ARMEndpoint, Audience: d.ARMAudience, CAFile: d.CAFile,
		IMDSEndpoint: imds.URL, Credential: cred, CallTimeout: 20 * time.Second, PollFrequency: 20 * time.Millisecond,
	}
}

// Provider is the real provider of the sim's node.
func Provider(t testing.TB, s *sim.Sim, node string) *azure.Provider {
	t.Helper()
	p, err := azure.New(context.Background(), Config(t, s, node))
	if err != nil {
		t.Fatal(err)
	}
	return p
}
