package arm

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v9"
	"github.com/google/go-cmp/cmp"
)

const (
	testSub      = "00000000-0000-0000-0000-00000000cafe"
	testRG       = "rg-sim"
	testLocation = "westeurope"
	apiVersion   = "2025-05-01"
)

// testConfig is a subscription with two NICs in 10.0.0.0/24.
func testConfig() Config {
	return Config{
		SubscriptionID:    testSub,
		ResourceGroup:     testRG,
		Location:          testLocation,
		VNetName:          "vnet",
		VNetPrefixes:      []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")},
		SubnetName:        "nodes",
		Subnet:            netip.MustParsePrefix("10.0.0.0/24"),
		RouteTableName:    "rt",
		OperationDuration: 30 * time.Millisecond,
		PollInterval:      10 * time.Millisecond,
		NICs: []NICSpec{
			{Name: "node-0", VMName: "vm-0", MAC: net.HardwareAddr{0x00, 0x0d, 0x3a, 0, 0, 1}, Primary: netip.MustParseAddr("10.0.0.4")},
			{Name: "node-1", VMName: "vm-1", MAC: net.HardwareAddr{0x00, 0x0d, 0x3a, 0, 0, 2}, Primary: netip.MustParseAddr("10.0.0.5")},
		},
	}
}

// env is a server behind an httptest TLS server with SDK clients.
type env struct {
	s       *Server
	ts      *httptest.Server
	nics    *armnetwork.InterfacesClient
	vnets   *armnetwork.VirtualNetworksClient
	subnets *armnetwork.SubnetsClient
	tables  *armnetwork.RouteTablesClient
	routes  *armnetwork.RoutesClient
}

func newEnv(t *testing.T, mutate func(*Config)) *env {
	t.Helper()
	cfg := testConfig()
	if mutate != nil {
		mutate(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ts := httptest.NewTLSServer(s.Handler())
	t.Cleanup(func() {
		ts.Close()
		s.Close()
	})
	e := &env{s: s, ts: ts}
	e.setClients(t, issuerCredential{s})
	return e
}

// clientOptions points the SDK at ts with the default retry policy, only
// with a shorter base delay; Retry-After is still honoured.
func clientOptions(ts *httptest.Server) *arm.ClientOptions {
	return &arm.ClientOptions{ClientOptions: policy.ClientOptions{
		Cloud: cloud.Configuration{Services: map[cloud.ServiceName]cloud.ServiceConfiguration{
			cloud.ResourceManager: {Endpoint: ts.URL, Audience: "https://management.azure.com"},
		}},
		Transport: ts.Client(),
		Retry:     policy.RetryOptions{RetryDelay: 20 * time.Millisecond},
	}}
}

func (e *env) setClients(t *testing.T, cred azcore.TokenCredential) {
	t.Helper()
	opts := clientOptions(e.ts)
	var err error
	var errs []error
	e.nics, err = armnetwork.NewInterfacesClient(testSub, cred, opts)
	errs = append(errs, err)
	e.vnets, err = armnetwork.NewVirtualNetworksClient(testSub, cred, opts)
	errs = append(errs, err)
	e.subnets, err = armnetwork.NewSubnetsClient(testSub, cred, opts)
	errs = append(errs, err)
	e.tables, err = armnetwork.NewRouteTablesClient(testSub, cred, opts)
	errs = append(errs, err)
	e.routes, err = armnetwork.NewRoutesClient(testSub, cred, opts)
	errs = append(errs, err)
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("create clients: %v", err)
	}
}

// issuerCredential gets its tokens from the server, as the IMDS
// managed-identity endpoint does.
type issuerCredential struct{ s *Server }

func (c issuerCredential) GetToken(_ context.Context, o policy.TokenRequestOptions) (azcore.AccessToken, error) {
	if len(o.Scopes) != 1 {
		return azcore.AccessToken{}, errors.New("want exactly one scope")
	}
	tok, exp := c.s.IssueToken(strings.TrimSuffix(o.Scopes[0], "/.default"))
	return azcore.AccessToken{Token: tok, ExpiresOn: exp}, nil
}

// fixedCredential always returns the same token.
type fixedCredential string

func (c fixedCredential) GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
	return azcore.AccessToken{Token: string(c), ExpiresOn: time.Now().Add(time.Hour)}, nil
}

// noRetry disables the SDK's retries for one call.
func noRetry(ctx context.Context) context.Context {
	return policy.WithRetryOptions(ctx, policy.RetryOptions{MaxRetries: -1})
}

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// subnetRef is the subnet reference ipConfigurations carry.
func subnetRef() *armnetwork.Subnet {
	return &armnetwork.Subnet{ID: to.Ptr("/subscriptions/" + testSub + "/resourceGroups/" + testRG +
		"/providers/Microsoft.Network/virtualNetworks/vnet/subnets/nodes")}
}

// ipc builds a request ipConfiguration; addr "" means Dynamic.
func ipc(name, addr string, primary bool) *armnetwork.InterfaceIPConfiguration {
	p := &armnetwork.InterfaceIPConfigurationPropertiesFormat{
		Subnet:                    subnetRef(),
		Primary:                   to.Ptr(primary),
		PrivateIPAllocationMethod: to.Ptr(armnetwork.IPAllocationMethodDynamic),
	}
	if addr != "" {
		p.PrivateIPAllocationMethod = to.Ptr(armnetwork.IPAllocationMethodStatic)
		p.PrivateIPAddress = to.Ptr(addr)
	}
	return &armnetwork.InterfaceIPConfiguration{Name: to.Ptr(name), Properties: p}
}

// nicBody is a NIC PUT body.
func nicBody(cfgs ...*armnetwork.InterfaceIPConfiguration) armnetwork.Interface {
	return armnetwork.Interface{
		Location:   to.Ptr(testLocation),
		Properties: &armnetwork.InterfacePropertiesFormat{IPConfigurations: cfgs},
	}
}

// putNIC runs a NIC PUT to completion.
func (e *env) putNIC(ctx context.Context, name string, body armnetwork.Interface) (armnetwork.Interface, error) {
	p, err := e.nics.BeginCreateOrUpdate(ctx, testRG, name, body, nil)
	if err != nil {
		return armnetwork.Interface{}, err
	}
	res, err := p.PollUntilDone(ctx, nil)
	return res.Interface, err
}

// addrsOf maps ipConfiguration name to private IP.
func addrsOf(n armnetwork.Interface) map[string]string {
	out := map[string]string{}
	for _, c := range n.Properties.IPConfigurations {
		out[*c.Name] = *c.Properties.PrivateIPAddress
	}
	return out
}

// wantAPIError checks that err is an ARM error with status and code.
func wantAPIError(t *testing.T, err error, status int, code string) {
	t.Helper()
	var re *azcore.ResponseError
	if !errors.As(err, &re) {
		t.Fatalf("error = %v, want an ARM error %d %s", err, status, code)
	}
	if re.StatusCode != status || re.ErrorCode != code {
		t.Fatalf("error = %d %s, want %d %s (%v)", re.StatusCode, re.ErrorCode, status, code, err)
	}
}

// rawRequest sends an HTTP request to the ARM handler, with token when not
// empty, and returns the response and its body.
func (e *env) rawRequest(t *testing.T, method, path, token string, body io.Reader) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(testCtx(t), method, e.ts.URL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := e.ts.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

// token issues a valid ARM token.
func (e *env) token() string {
	tok, _ := e.s.IssueToken("https://management.azure.com/")
	return tok
}

// drain empties the Changed channel.
func drain(s *Server) {
	select {
	case <-s.Changed():
	default:
	}
}

func nicPath(name string) string {
	return "/subscriptions/" + testSub + "/resourceGroups/" + testRG + "/providers/Microsoft.Network/networkInterfaces/" + name
}

// netipOpts lets cmp compare netip values.
var netipOpts = cmp.Options{
	cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
	cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
}

func contextWithTimeout(t *testing.T, d time.Duration) (context.Context, context.CancelFunc) {
	t.Helper()
	return context.WithTimeout(context.Background(), d)
}
