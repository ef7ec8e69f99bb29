package azure

import (
	"context"
	"errors"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/vnet-cni/vnet-cni/cloud"
	"github.com/vnet-cni/vnet-cni/cloud/sim"
	"github.com/vnet-cni/vnet-cni/cloud/sim/arm"
)

const testToken = "sim-static-token"

type env struct {
	sim  *sim.Sim
	desc sim.Description
	imds *httptest.Server
	cfg  Config
}

// newEnv starts the simulated control plane (no fabric, no root) and an
// IMDS for node0 on loopback, and returns a provider config for node0.
func newEnv(t *testing.T, opts sim.Options) *env {
	t.Helper()
	opts.Dir = t.TempDir()
	opts.NoFabric = true
	opts.StaticToken = testToken
	if opts.OperationDuration == 0 {
		opts.OperationDuration = 30 * time.Millisecond
		opts.PollInterval = 20 * time.Millisecond
	}
	s, err := sim.Start(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	h, ok := s.IMDSHandler("node0")
	if !ok {
		t.Fatal("no imds for node0")
	}
	imds := httptest.NewServer(h)
	t.Cleanup(imds.Close)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(testToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cred, err := NewTokenFileCredential(tokenFile)
	if err != nil {
		t.Fatal(err)
	}
	d := s.Description()
	return &env{sim: s, desc: d, imds: imds, cfg: Config{
		ResourceManagerEndpoint: d.ARMEndpoint,
		Audience:                d.ARMAudience,
		CAFile:                  d.CAFile,
		IMDSEndpoint:            imds.URL,
		Credential:              cred,
		CallTimeout:             20 * time.Second,
		PollFrequency:           20 * time.Millisecond,
	}}
}

func (e *env) provider(t *testing.T) *Provider {
	t.Helper()
	p, err := New(context.Background(), e.cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return p
}

func (e *env) calls(op string) int {
	n := 0
	for _, c := range e.sim.ARM().Stats().Calls[op] {
		n += c
	}
	return n
}

func TestDiscoverNode(t *testing.T) {
	e := newEnv(t, sim.Options{Nodes: 3})
	p := e.provider(t)
	n := p.Node()
	want := e.desc.Nodes[0]
	if n.NICName != want.NIC || n.PrimaryIP.String() != want.PrimaryIP || n.VMName != want.Name || n.VMID != want.VMID {
		t.Errorf("node = %+v, want NIC %s primary %s vm %s", n, want.NIC, want.PrimaryIP, want.Name)
	}
	if n.Subnet.String() != e.desc.SubnetPrefix || n.Gateway.String() != e.desc.Gateway {
		t.Errorf("subnet %s gateway %s, want %s %s", n.Subnet, n.Gateway, e.desc.SubnetPrefix, e.desc.Gateway)
	}
	if len(n.VNetPrefixes) != 1 || n.VNetPrefixes[0].String() != e.desc.VNetPrefixes[0] {
		t.Errorf("vnet prefixes %v, want %v", n.VNetPrefixes, e.desc.VNetPrefixes)
	}
	if n.SubscriptionID != e.desc.SubscriptionID || n.ResourceGroup != e.desc.ResourceGroup || n.MaxIPs != 256 {
		t.Errorf("identity %+v", n)
	}
}

func TestAddAndRemoveAreBatched(t *testing.T) {
	e := newEnv(t, sim.Options{Nodes: 2})
	p := e.provider(t)
	ctx := context.Background()
	puts := e.calls("NetworkInterfaces_CreateOrUpdate")

	added, err := p.AddIPs(ctx, 10)
	if err != nil {
		t.Fatalf("AddIPs: %v", err)
	}
	if len(added) != 10 {
		t.Fatalf("added %d addresses, want 10", len(added))
	}
	if got := e.calls("NetworkInterfaces_CreateOrUpdate") - puts; got != 1 {
		t.Errorf("AddIPs(10) made %d NIC updates, want 1", got)
	}
	nic, err := p.NIC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(nic.Secondary) != 10 {
		t.Errorf("NIC shows %d secondaries, want 10", len(nic.Secondary))
	}
	subnet := p.Node().Subnet
	seen := map[netip.Addr]bool{p.Node().PrimaryIP: true, p.Node().Gateway: true}
	for _, ip := range added {
		if !subnet.Contains(ip) || seen[ip] {
			t.Errorf("address %s outside %s or duplicate", ip, subnet)
		}
		seen[ip] = true
	}
	// The control plane's committed state, which the fabric follows, agrees.
	var snapNIC arm.NICState
	for _, n := range e.sim.ARM().Snapshot().NICs {
		if n.Name == p.Node().NICName {
			snapNIC = n
		}
	}
	if len(snapNIC.Secondary) != 10 {
		t.Errorf("snapshot shows %d secondaries, want 10", len(snapNIC.Secondary))
	}

	puts = e.calls("NetworkInterfaces_CreateOrUpdate")
	if err := p.RemoveIPs(ctx, added[:4]); err != nil {
		t.Fatalf("RemoveIPs: %v", err)
	}
	if got := e.calls("NetworkInterfaces_CreateOrUpdate") - puts; got != 1 {
		t.Errorf("RemoveIPs(4) made %d NIC updates, want 1", got)
	}
	nic, err = p.NIC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[netip.Addr]bool{}
	for _, ip := range added[4:] {
		want[ip] = true
	}
	if len(nic.Secondary) != 6 {
		t.Errorf("after removal NIC has %v, want %v", nic.Secondary, added[4:])
	}
	for _, ip := range nic.Secondary {
		if !want[ip] {
			t.Errorf("address %s should have been removed", ip)
		}
	}
	// Removing addresses that are not there costs no update.
	puts = e.calls("NetworkInterfaces_CreateOrUpdate")
	if err := p.RemoveIPs(ctx, added[:4]); err != nil {
		t.Fatal(err)
	}
	if got := e.calls("NetworkInterfaces_CreateOrUpdate") - puts; got != 0 {
		t.Errorf("removing absent addresses made %d updates, want 0", got)
	}
	// The primary is never removed.
	if err := p.RemoveIPs(ctx, []netip.Addr{p.Node().PrimaryIP}); err != nil {
		t.Fatal(err)
	}
	if nic, _ := p.NIC(ctx); nic.Primary != p.Node().PrimaryIP {
		t.Errorf("primary = %s after trying to remove it", nic.Primary)
	}
}

func TestConcurrentWritersOnOneNIC(t *testing.T) {
	e := newEnv(t, sim.Options{Nodes: 1})
	p1, p2 := e.provider(t), e.provider(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	results := make([][]netip.Addr, 2)
	errs := make([]error, 2)
	for i, p := range []*Provider{p1, p2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = p.AddIPs(ctx, 5)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("writer %d: %v", i, err)
		}
	}
	nic, err := p1.NIC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(nic.Secondary) != 10 {
		t.Errorf("NIC holds %d secondaries after two concurrent adds of 5, want 10 (a lost update?)", len(nic.Secondary))
	}
	seen := map[netip.Addr]bool{}
	for _, r := range results {
		for _, ip := range r {
			if seen[ip] {
				t.Errorf("address %s handed to both writers", ip)
			}
			seen[ip] = true
		}
	}
}

func TestErrorsAreClassified(t *testing.T) {
	t.Run("subnet full", func(t *testing.T) {
		// A /27 holds 32-5 = 27 usable addresses; two nodes take 2.
		e := newEnv(t, sim.Options{Nodes: 2, VNet: netip.MustParsePrefix("10.9.0.0/24"), Subnet: netip.MustParsePrefix("10.9.0.0/27")})
		p := e.provider(t)
		_, err := p.AddIPs(context.Background(), 26)
		if cloud.KindOf(err) != cloud.SubnetFull {
			t.Fatalf("error = %v, want kind subnet_full", err)
		}
		if _, err := p.AddIPs(context.Background(), 25); err != nil {
			t.Errorf("25 addresses should fit: %v", err)
		}
	})
	t.Run("nic limit costs no write", func(t *testing.T) {
		e := newEnv(t, sim.Options{Nodes: 1})
		p := e.provider(t)
		puts := e.calls("NetworkInterfaces_CreateOrUpdate")
		_, err := p.AddIPs(context.Background(), 256)
		if cloud.KindOf(err) != cloud.NICLimit {
			t.Fatalf("error = %v, want kind nic_limit", err)
		}
		if got := e.calls("NetworkInterfaces_CreateOrUpdate") - puts; got != 0 {
			t.Errorf("a request over the NIC limit made %d writes, want 0", got)
		}
		if _, err := p.AddIPs(context.Background(), 255); err != nil {
			t.Errorf("255 secondaries should fit: %v", err)
		}
	})
	t.Run("throttled with retry-after", func(t *testing.T) {
		e := newEnv(t, sim.Options{Nodes: 1})
		e.cfg.MaxRetries = 1
		p := e.provider(t)
		e.sim.ARM().SetFaults(arm.Faults{Storm: &arm.Storm{Duration: arm.Duration(time.Minute), RetryAfterSeconds: 1}})
		start := time.Now()
		_, err := p.AddIPs(context.Background(), 1)
		var ce *cloud.Error
		if !errors.As(err, &ce) || ce.Kind != cloud.Throttled || ce.RetryAfter != time.Second {
			t.Fatalf("error = %v, want throttled with retry after 1s", err)
		}
		// The SDK retried once, after the Retry-After it was given.
		if el := time.Since(start); el < time.Second {
			t.Errorf("gave up after %s, before the 1s Retry-After", el)
		}
		if got := e.sim.ARM().Stats().Calls["NetworkInterfaces_Get"]["429"]; got != 2 {
			t.Errorf("GET was answered 429 %d times, want 2 (one try, one retry)", got)
		}
	})
	t.Run("bad token is fatal", func(t *testing.T) {
		e := newEnv(t, sim.Options{Nodes: 1})
		bad := filepath.Join(t.TempDir(), "bad")
		if err := os.WriteFile(bad, []byte("wrong"), 0o600); err != nil {
			t.Fatal(err)
		}
		cred, err := NewTokenFileCredential(bad)
		if err != nil {
			t.Fatal(err)
		}
		e.cfg.Credential = cred
		_, err = New(context.Background(), e.cfg)
		if cloud.KindOf(err) != cloud.Fatal {
			t.Fatalf("error = %v, want kind fatal", err)
		}
	})
	t.Run("untrusted CA", func(t *testing.T) {
		e := newEnv(t, sim.Options{Nodes: 1})
		e.cfg.CAFile = ""
		_, err := New(context.Background(), e.cfg)
		if err == nil {
			t.Fatal("New succeeded without trusting the sim's CA")
		}
	})
	t.Run("unreachable imds", func(t *testing.T) {
		e := newEnv(t, sim.Options{Nodes: 1})
		e.cfg.IMDSEndpoint = "http://127.0.0.1:1"
		e.cfg.CallTimeout = 2 * time.Second
		_, err := New(context.Background(), e.cfg)
		if cloud.KindOf(err) != cloud.Transient {
			t.Fatalf("error = %v, want kind transient", err)
		}
	})
}
