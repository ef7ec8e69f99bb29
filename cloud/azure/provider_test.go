package azure

import (
	"context"
	"errors"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
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

// readNIC reads the node's NIC through Instance.
func readNIC(ctx context.Context, p *Provider) (cloud.Interface, error) {
	in, err := p.Instance(ctx)
	if err != nil {
		return cloud.Interface{}, err
	}
	ifc, ok := in.Primary()
	if !ok {
		return cloud.Interface{}, errors.New("no primary interface")
	}
	return ifc, nil
}

func TestDiscoverInstance(t *testing.T) {
	e := newEnv(t, sim.Options{Nodes: 3})
	p := e.provider(t)
	in, err := p.Instance(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := e.desc.Nodes[0]
	if in.Provider != "azure" || in.Name != want.Name || in.ID != want.VMID {
		t.Errorf("instance %+v, want vm %s (%s)", in, want.Name, want.VMID)
	}
	if len(in.Interfaces) != 1 {
		t.Fatalf("interfaces %+v, want the one NIC", in.Interfaces)
	}
	n := in.Interfaces[0]
	if p.nic.name != want.NIC || !n.Primary || n.DeviceIndex != 0 || n.PrimaryIP.String() != want.PrimaryIP || n.ID == "" || len(n.MAC) != 12 {
		t.Errorf("interface = %+v (nic %s), want NIC %s primary %s", n, p.nic.name, want.NIC, want.PrimaryIP)
	}
	if !strings.HasSuffix(n.ID, "/networkInterfaces/"+want.NIC) || n.SubnetID == "" {
		t.Errorf("interface id %q subnet id %q, want the NIC's and the subnet's resource IDs", n.ID, n.SubnetID)
	}
	if n.Subnet.String() != e.desc.SubnetPrefix || n.Gateway.String() != e.desc.Gateway {
		t.Errorf("subnet %s gateway %s, want %s %s", n.Subnet, n.Gateway, e.desc.SubnetPrefix, e.desc.Gateway)
	}
	if len(in.NetworkPrefixes) != 1 || in.NetworkPrefixes[0].String() != e.desc.VNetPrefixes[0] {
		t.Errorf("vnet prefixes %v, want %v", in.NetworkPrefixes, e.desc.VNetPrefixes)
	}
	if p.nic.resourceGroup != e.desc.ResourceGroup || in.Limits != (cloud.Limits{Interfaces: 1, AddressesPerInterface: 256}) {
		t.Errorf("resource group %q limits %+v", p.nic.resourceGroup, in.Limits)
	}
	if got := in.Limits.Secondaries(len(in.Interfaces)); got != 255 {
		t.Errorf("secondaries allowed = %d, want 255", got)
	}
}

func TestOtherInterfaceRefused(t *testing.T) {
	e := newEnv(t, sim.Options{Nodes: 2})
	p := e.provider(t)
	other := strings.Replace(p.nic.id, e.desc.Nodes[0].NIC, e.desc.Nodes[1].NIC, 1)
	puts := e.calls("NetworkInterfaces_CreateOrUpdate")
	if _, err := p.AddAddresses(context.Background(), other, 1); cloud.KindOf(err) != cloud.Fatal {
		t.Errorf("add to another node's NIC: %v, want a fatal error", err)
	}
	if err := p.RemoveAddresses(context.Background(), other, []netip.Addr{netip.MustParseAddr("10.0.0.9")}); cloud.KindOf(err) != cloud.Fatal {
		t.Errorf("remove from another node's NIC: %v, want a fatal error", err)
	}
	if err := p.RestoreAddresses(context.Background(), other, []netip.Addr{netip.MustParseAddr("10.0.0.9")}); cloud.KindOf(err) != cloud.Fatal {
		t.Errorf("restore on another node's NIC: %v, want a fatal error", err)
	}
	if got := e.calls("NetworkInterfaces_CreateOrUpdate") - puts; got != 0 {
		t.Errorf("%d NIC writes for refused calls, want 0", got)
	}
}

func TestAddAndRemoveAreBatched(t *testing.T) {
	e := newEnv(t, sim.Options{Nodes: 2})
	p := e.provider(t)
	ctx := context.Background()
	puts := e.calls("NetworkInterfaces_CreateOrUpdate")

	added, err := p.AddAddresses(ctx, p.nic.id, 10)
	if err != nil {
		t.Fatalf("AddIPs: %v", err)
	}
	if len(added) != 10 {
		t.Fatalf("added %d addresses, want 10", len(added))
	}
	if got := e.calls("NetworkInterfaces_CreateOrUpdate") - puts; got != 1 {
		t.Errorf("AddIPs(10) made %d NIC updates, want 1", got)
	}
	nic, err := readNIC(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if len(nic.Secondary) != 10 {
		t.Errorf("NIC shows %d secondaries, want 10", len(nic.Secondary))
	}
	subnet := p.base.Interfaces[0].Subnet
	seen := map[netip.Addr]bool{p.base.Interfaces[0].PrimaryIP: true, p.base.Interfaces[0].Gateway: true}
	for _, ip := range added {
		if !subnet.Contains(ip) || seen[ip] {
			t.Errorf("address %s outside %s or duplicate", ip, subnet)
		}
		seen[ip] = true
	}
	// The control plane's committed state, which the fabric follows, agrees.
	var snapNIC arm.NICState
	for _, n := range e.sim.ARM().Snapshot().NICs {
		if n.Name == p.nic.name {
			snapNIC = n
		}
	}
	if len(snapNIC.Secondary) != 10 {
		t.Errorf("snapshot shows %d secondaries, want 10", len(snapNIC.Secondary))
	}

	puts = e.calls("NetworkInterfaces_CreateOrUpdate")
	if err := p.RemoveAddresses(ctx, p.nic.id, added[:4]); err != nil {
		t.Fatalf("RemoveIPs: %v", err)
	}
	if got := e.calls("NetworkInterfaces_CreateOrUpdate") - puts; got != 1 {
		t.Errorf("RemoveIPs(4) made %d NIC updates, want 1", got)
	}
	nic, err = readNIC(ctx, p)
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
	if err := p.RemoveAddresses(ctx, p.nic.id, added[:4]); err != nil {
		t.Fatal(err)
	}
	if got := e.calls("NetworkInterfaces_CreateOrUpdate") - puts; got != 0 {
		t.Errorf("removing absent addresses made %d updates, want 0", got)
	}
	// The primary is never removed.
	if err := p.RemoveAddresses(ctx, p.nic.id, []netip.Addr{p.base.Interfaces[0].PrimaryIP}); err != nil {
		t.Fatal(err)
	}
	if nic, _ := readNIC(ctx, p); nic.PrimaryIP != p.base.Interfaces[0].PrimaryIP {
		t.Errorf("primary = %s after trying to remove it", nic.PrimaryIP)
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
			results[i], errs[i] = p.AddAddresses(ctx, p.nic.id, 5)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("writer %d: %v", i, err)
		}
	}
	nic, err := readNIC(ctx, p1)
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
		_, err := p.AddAddresses(context.Background(), p.nic.id, 26)
		if cloud.KindOf(err) != cloud.SubnetFull {
			t.Fatalf("error = %v, want kind subnet_full", err)
		}
		if _, err := p.AddAddresses(context.Background(), p.nic.id, 25); err != nil {
			t.Errorf("25 addresses should fit: %v", err)
		}
	})
	t.Run("nic limit costs no write", func(t *testing.T) {
		e := newEnv(t, sim.Options{Nodes: 1})
		p := e.provider(t)
		puts := e.calls("NetworkInterfaces_CreateOrUpdate")
		_, err := p.AddAddresses(context.Background(), p.nic.id, 256)
		if cloud.KindOf(err) != cloud.NICLimit {
			t.Fatalf("error = %v, want kind nic_limit", err)
		}
		if got := e.calls("NetworkInterfaces_CreateOrUpdate") - puts; got != 0 {
			t.Errorf("a request over the NIC limit made %d writes, want 0", got)
		}
		if _, err := p.AddAddresses(context.Background(), p.nic.id, 255); err != nil {
			t.Errorf("255 secondaries should fit: %v", err)
		}
	})
	t.Run("throttled with retry-after", func(t *testing.T) {
		e := newEnv(t, sim.Options{Nodes: 1})
		e.cfg.MaxRetries = 1
		p := e.provider(t)
		e.sim.ARM().SetFaults(arm.Faults{Storm: &arm.Storm{Duration: arm.Duration(time.Minute), RetryAfterSeconds: 1}})
		start := time.Now()
		_, err := p.AddAddresses(context.Background(), p.nic.id, 1)
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
	t.Run("read-only identity is denied", func(t *testing.T) {
		e := newEnv(t, sim.Options{Nodes: 1, TemplateIPs: 2})
		tok, _ := e.sim.ARM().IssueReadOnlyToken(sim.Audience)
		ro := filepath.Join(t.TempDir(), "ro")
		if err := os.WriteFile(ro, []byte(tok), 0o600); err != nil {
			t.Fatal(err)
		}
		cred, err := NewTokenFileCredential(ro)
		if err != nil {
			t.Fatal(err)
		}
		e.cfg.Credential = cred
		p := e.provider(t)
		inst, err := p.Instance(context.Background())
		if err != nil {
			t.Fatalf("a read-only identity reads: %v", err)
		}
		if got := len(inst.Interfaces[0].Secondary); got != 2 {
			t.Errorf("%d secondaries, want the template's 2", got)
		}
		_, err = p.AddAddresses(context.Background(), p.nic.id, 1)
		var ce *cloud.Error
		if !errors.As(err, &ce) || ce.Kind != cloud.Denied || ce.Code != "AuthorizationFailed" || !strings.Contains(ce.Message, "networkInterfaces/write") {
			t.Fatalf("error = %v, want kind denied, code AuthorizationFailed, naming the action", err)
		}
		if got := e.sim.ARM().Stats().Calls["NetworkInterfaces_CreateOrUpdate"]["403"]; got != 1 {
			t.Errorf("the write was answered 403 %d times, want 1 (not retried)", got)
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

// TestRestoreAddresses puts addresses removed by someone else back on the
// NIC as static ipConfigurations, in one update; an address that another
// NIC holds is refused as AddressInUse and the update adds nothing.
func TestRestoreAddresses(t *testing.T) {
	e := newEnv(t, sim.Options{Nodes: 2})
	p := e.provider(t)
	ctx := context.Background()
	added, err := p.AddAddresses(ctx, p.nic.id, 4)
	if err != nil {
		t.Fatal(err)
	}
	// Someone removes two of them outside the daemon.
	other := e.provider(t)
	if err := other.RemoveAddresses(ctx, p.nic.id, added[:2]); err != nil {
		t.Fatal(err)
	}
	puts := e.calls("NetworkInterfaces_CreateOrUpdate")
	if err := p.RestoreAddresses(ctx, p.nic.id, added); err != nil {
		t.Fatalf("RestoreAddresses: %v", err)
	}
	if got := e.calls("NetworkInterfaces_CreateOrUpdate") - puts; got != 1 {
		t.Errorf("restoring 2 addresses made %d NIC updates, want 1", got)
	}
	nic, _, err := p.get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	method := map[netip.Addr]string{}
	for _, c := range nic.Properties.IPConfigurations {
		method[netip.MustParseAddr(*c.Properties.PrivateIPAddress)] = string(*c.Properties.PrivateIPAllocationMethod)
	}
	for i, ip := range added {
		want := "Dynamic"
		if i < 2 {
			want = "Static"
		}
		if method[ip] != want {
			t.Errorf("%s on the NIC with allocation %q, want %q", ip, method[ip], want)
		}
	}
	puts = e.calls("NetworkInterfaces_CreateOrUpdate")
	if err := p.RestoreAddresses(ctx, p.nic.id, added[:2]); err != nil {
		t.Fatalf("RestoreAddresses of addresses on the NIC: %v", err)
	}
	if got := e.calls("NetworkInterfaces_CreateOrUpdate") - puts; got != 0 {
		t.Errorf("restoring addresses already on the NIC made %d NIC updates, want 0", got)
	}

	// node1's NIC takes one of them meanwhile.
	h1, _ := e.sim.IMDSHandler("node1")
	imds1 := httptest.NewServer(h1)
	t.Cleanup(imds1.Close)
	cfg1 := e.cfg
	cfg1.IMDSEndpoint = imds1.URL
	p1, err := New(ctx, cfg1)
	if err != nil {
		t.Fatal(err)
	}
	if err := other.RemoveAddresses(ctx, p.nic.id, added[2:]); err != nil {
		t.Fatal(err)
	}
	if err := p1.RestoreAddresses(ctx, p1.nic.id, added[3:]); err != nil {
		t.Fatalf("node1 takes %s: %v", added[3], err)
	}
	err = p.RestoreAddresses(ctx, p.nic.id, added[2:])
	if cloud.KindOf(err) != cloud.AddressInUse || !strings.Contains(err.Error(), added[3].String()) {
		t.Fatalf("restore of an address node1 holds: %v, want AddressInUse naming %s", err, added[3])
	}
	if r := cloud.Reason(err); !strings.Contains(r, "PrivateIPAddressIsAllocated") || !strings.Contains(r, e.desc.Nodes[1].NIC) || strings.Contains(r, "\n") {
		t.Errorf("reason %q, want one line with the code and the NIC that holds the address", r)
	}
	ifc, err := readNIC(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if len(ifc.Secondary) != 2 {
		t.Errorf("after the refused update the NIC holds %v, want only %v", ifc.Secondary, added[:2])
	}
	if err := p.RestoreAddresses(ctx, p.nic.id, added[2:3]); err != nil {
		t.Errorf("restore of the free one alone: %v", err)
	}
}
