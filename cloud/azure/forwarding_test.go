package azure

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"

	"github.com/vnet-cni/vnet-cni/cloud"
	"github.com/vnet-cni/vnet-cni/cloud/sim"
)

// TestEnsureIPForwarding: a NIC without IP forwarding gets it in one write;
// a NIC that forwards costs a read and no write; turned off by hand, it is
// turned on again; a read-only identity is refused as Denied.
func TestEnsureIPForwarding(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, sim.Options{Nodes: 1})
	p := e.provider(t)
	forwarding := func() bool {
		t.Helper()
		nic, _, err := p.get(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return deref(nic.Properties.EnableIPForwarding)
	}
	if forwarding() {
		t.Fatal("the sim's NIC forwards from the start")
	}
	writes := e.calls("NetworkInterfaces_CreateOrUpdate")
	if wrote, err := p.EnsureIPForwarding(ctx); err != nil || !wrote || !forwarding() {
		t.Fatalf("first ensure: wrote %v, %v; forwarding %v", wrote, err, forwarding())
	}
	if wrote, err := p.EnsureIPForwarding(ctx); err != nil || wrote {
		t.Errorf("second ensure: wrote %v, %v; want no write", wrote, err)
	}
	if n := e.calls("NetworkInterfaces_CreateOrUpdate") - writes; n != 1 {
		t.Errorf("%d NIC writes, want 1", n)
	}

	// An operator turns it off through ARM.
	nic, etag, err := p.get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	nic.Properties.EnableIPForwarding = to.Ptr(false)
	if _, err := p.put(ctx, nic, etag); err != nil {
		t.Fatal(err)
	}
	if wrote, err := p.EnsureIPForwarding(ctx); err != nil || !wrote || !forwarding() {
		t.Errorf("after the operator turned it off: wrote %v, %v; forwarding %v", wrote, err, forwarding())
	}

	tok, _ := e.sim.ARM().IssueReadOnlyToken(sim.Audience)
	roFile := filepath.Join(t.TempDir(), "ro")
	if err := os.WriteFile(roFile, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	cred, err := NewTokenFileCredential(roFile)
	if err != nil {
		t.Fatal(err)
	}
	cfg := e.cfg
	cfg.Credential = cred
	rop, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	nic, etag, err = p.get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	nic.Properties.EnableIPForwarding = to.Ptr(false)
	if _, err := p.put(ctx, nic, etag); err != nil {
		t.Fatal(err)
	}
	if _, err := rop.EnsureIPForwarding(ctx); cloud.KindOf(err) != cloud.Denied {
		t.Errorf("a read-only identity: %v, want Denied", err)
	}
}
