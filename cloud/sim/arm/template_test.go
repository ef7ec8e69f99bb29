package arm

import (
	"context"
	"errors"
	"maps"
	"net/http"
	"strings"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v9"
)

// TestTemplateIPConfigurations: NICs created with a template's
// ipAddressCount hold that many dynamic secondary ipConfigurations, on the
// lowest free addresses after every primary, and the subnet accounts them.
func TestTemplateIPConfigurations(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		c.NICs[0].TemplateIPs = 3
		c.NICs[1].TemplateIPs = 2
	})
	ctx := testCtx(t)
	want := map[string]map[string]string{
		"node-0": {"ipconfig1": "10.0.0.4", "ipconfig2": "10.0.0.6", "ipconfig3": "10.0.0.7", "ipconfig4": "10.0.0.8"},
		"node-1": {"ipconfig1": "10.0.0.5", "ipconfig2": "10.0.0.9", "ipconfig3": "10.0.0.10"},
	}
	for name, addrs := range want {
		resp, err := e.nics.Get(ctx, testRG, name, nil)
		if err != nil {
			t.Fatalf("get %s: %v", name, err)
		}
		if got := addrsOf(resp.Interface); !maps.Equal(got, addrs) {
			t.Errorf("%s ipConfigurations = %v, want %v", name, got, addrs)
		}
		for _, c := range resp.Properties.IPConfigurations {
			if *c.Name == "ipconfig1" {
				continue
			}
			if got := *c.Properties.PrivateIPAllocationMethod; got != armnetwork.IPAllocationMethodDynamic {
				t.Errorf("%s %s allocation = %s, want Dynamic", name, *c.Name, got)
			}
		}
	}
	// A dynamic address asked for now is the next free one.
	resp, err := e.nics.Get(ctx, testRG, "node-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	body := resp.Interface
	body.Properties.IPConfigurations = append(body.Properties.IPConfigurations, ipc("extra", "", false))
	got, err := e.putNIC(ctx, "node-1", body)
	if err != nil {
		t.Fatalf("put: %v", err)
	}
	if a := addrsOf(got)["extra"]; a != "10.0.0.11" {
		t.Errorf("next dynamic address = %s, want 10.0.0.11", a)
	}

	for _, tc := range []struct {
		name string
		n    int
		want string
	}{
		{"negative", -1, "outside 0-255"},
		{"beyond a NIC", 256, "outside 0-255"},
		{"beyond the subnet", 250, "do not fit"},
	} {
		cfg := testConfig()
		cfg.NICs[0].TemplateIPs = tc.n
		cfg.NICs[1].TemplateIPs = 5
		if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: New = %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
}

// TestReadOnlyIdentity: an identity with read access only (a Reader role)
// reads, and every write is refused with Azure RBAC's 403 AuthorizationFailed,
// changing nothing.
func TestReadOnlyIdentity(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.NICs[0].TemplateIPs = 2 })
	e.setClients(t, readOnlyCredential{e.s})
	ctx := testCtx(t)
	resp, err := e.nics.Get(ctx, testRG, "node-0", nil)
	if err != nil {
		t.Fatalf("read with a read-only identity: %v", err)
	}
	before := addrsOf(resp.Interface)
	body := resp.Interface
	body.Properties.IPConfigurations = append(body.Properties.IPConfigurations, ipc("extra", "", false))
	_, err = e.putNIC(noRetry(ctx), "node-0", body)
	wantAPIError(t, err, http.StatusForbidden, CodeAuthorizationFailed)
	var re *azcore.ResponseError
	if errors.As(err, &re) && !strings.Contains(re.Error(), "Microsoft.Network/networkInterfaces/write") {
		t.Errorf("the refusal does not name the action: %v", re)
	}
	_, err = e.routes.BeginDelete(noRetry(ctx), testRG, "rt", "some-route", nil)
	wantAPIError(t, err, http.StatusForbidden, CodeAuthorizationFailed)

	resp, err = e.nics.Get(ctx, testRG, "node-0", nil)
	if err != nil {
		t.Fatal(err)
	}
	if after := addrsOf(resp.Interface); !maps.Equal(before, after) {
		t.Errorf("a refused write changed the NIC: %v, then %v", before, after)
	}
	if got := e.s.Stats().Calls["NetworkInterfaces_CreateOrUpdate"]["403"]; got != 1 {
		t.Errorf("403 count = %d, want 1 (a refusal is not retried by the SDK)", got)
	}
	// A full identity still writes.
	e.setClients(t, issuerCredential{e.s})
	if _, err := e.putNIC(ctx, "node-0", body); err != nil {
		t.Errorf("write with a full identity: %v", err)
	}
}

// readOnlyCredential gets read-only tokens from the server.
type readOnlyCredential struct{ s *Server }

func (c readOnlyCredential) GetToken(_ context.Context, o policy.TokenRequestOptions) (azcore.AccessToken, error) {
	tok, exp := c.s.IssueReadOnlyToken(strings.TrimSuffix(o.Scopes[0], "/.default"))
	return azcore.AccessToken{Token: tok, ExpiresOn: exp}, nil
}
