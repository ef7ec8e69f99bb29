// Package azure is vnet-cni's Azure provider: the node identity from IMDS,
// the NIC's secondary ipConfigurations through the armnetwork SDK (batched
// updates with ETag/If-Match), and credentials through azidentity. Against
// the simulated cloud only the endpoint, the CA and the credential differ.
package azure

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	azcloud "github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v9"

	"github.com/vnet-cni/vnet-cni/cloud"
	"github.com/vnet-cni/vnet-cni/internal/cabundle"
)

// Endpoints of the public Azure cloud, the defaults of Config.
const (
	DefaultResourceManagerEndpoint = "https://management.azure.com"
	DefaultAudience                = "https://management.azure.com/"
	DefaultIMDSEndpoint            = "http://169.254.169.254"
)

// MaxIPConfigurations is Azure's limit of ipConfigurations per NIC.
const MaxIPConfigurations = 256

// limits are what the provider offers for pods: the addresses of the VM's
// primary NIC. A VM may have more NICs, but pods only use the primary one.
var limits = cloud.Limits{Interfaces: 1, AddressesPerInterface: MaxIPConfigurations}

// ipConfigPrefix names the ipConfigurations vnet-cni creates.
const ipConfigPrefix = "vnetcni-"

// Config configures the provider.
type Config struct {
	// ResourceManagerEndpoint is the ARM URL (default DefaultResourceManagerEndpoint).
	ResourceManagerEndpoint string
	// Audience is the token audience of ARM (default DefaultAudience).
	Audience string
	// CAFile, if set, is a PEM bundle trusted for the ARM endpoint instead of
	// the system roots (a private CA: Azure Stack, a proxy, the simulated cloud).
	CAFile string
	// IMDSEndpoint is the instance metadata service (default DefaultIMDSEndpoint).
	IMDSEndpoint string
	// Credential authenticates to ARM.
	Credential azcore.TokenCredential
	// CallTimeout bounds every cloud operation, polling included (default 30s).
	CallTimeout time.Duration
	// MaxRetries is the SDK's retry count for throttled and failed requests
	// (default 3); retries honour Retry-After.
	MaxRetries int32
	// PollFrequency is used when the API does not advertise a poll interval (default 1s).
	PollFrequency time.Duration
	Logger        *slog.Logger
	// Expect is what the node's configuration (azure.json) says its network
	// is; New fails when the NIC it finds is elsewhere.
	Expect Expected
}

func (c *Config) setDefaults() {
	if c.ResourceManagerEndpoint == "" {
		c.ResourceManagerEndpoint = DefaultResourceManagerEndpoint
	}
	if c.Audience == "" {
		c.Audience = DefaultAudience
	}
	if c.IMDSEndpoint == "" {
		c.IMDSEndpoint = DefaultIMDSEndpoint
	}
	if c.CallTimeout == 0 {
		c.CallTimeout = 30 * time.Second
	}
	if c.MaxRetries == 0 {
		c.MaxRetries = 3
	}
	if c.PollFrequency == 0 {
		c.PollFrequency = time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Provider manages the secondary addresses of the node's NIC.
type Provider struct {
	cfg Config
	// nic is how ARM names the node's NIC.
	nic nicRef
	// base is the instance found at start; Instance adds the NIC's
	// current addresses to it.
	base  cloud.Instance
	nics  *armnetwork.InterfacesClient
	vnets *armnetwork.VirtualNetworksClient
	log   *slog.Logger
	// subscription is the node's (from IMDS); factory makes clients for
	// it, opts (endpoint, transport, retries) with cfg.Credential clients
	// for another one.
	subscription string
	factory      *armnetwork.ClientFactory
	opts         *arm.ClientOptions
}

// New discovers the node (IMDS, then the NIC whose MAC IMDS reports, then
// its virtual network) and returns a provider for it.
func New(ctx context.Context, cfg Config) (*Provider, error) {
	cfg.setDefaults()
	if cfg.Credential == nil {
		return nil, errors.New("azure: no credential configured")
	}
	transport, err := NewHTTPClient(cfg.CAFile)
	if err != nil {
		return nil, err
	}
	opts := &arm.ClientOptions{ClientOptions: policy.ClientOptions{
		Cloud: azcloud.Configuration{Services: map[azcloud.ServiceName]azcloud.ServiceConfiguration{
			azcloud.ResourceManager: {Endpoint: cfg.ResourceManagerEndpoint, Audience: cfg.Audience},
		}},
		Transport: transport,
		Retry:     policy.RetryOptions{MaxRetries: cfg.MaxRetries},
	}}

	ictx, cancel := context.WithTimeout(ctx, cfg.CallTimeout)
	defer cancel()
	inst, err := readInstance(ictx, &http.Client{Transport: &http.Transport{Proxy: nil}}, cfg.IMDSEndpoint)
	if err != nil {
		return nil, &cloud.Error{Kind: cloud.Transient, Op: "IMDS_Instance", Err: err}
	}
	factory, err := armnetwork.NewClientFactory(inst.SubscriptionID, cfg.Credential, opts)
	if err != nil {
		return nil, fmt.Errorf("azure: client factory: %w", err)
	}
	p := &Provider{
		cfg:   cfg,
		nics:  factory.NewInterfacesClient(),
		vnets: factory.NewVirtualNetworksClient(),
		log:   cfg.Logger,

		subscription: inst.SubscriptionID,
		factory:      factory,
		opts:         opts,
	}
	if err := p.discover(ctx, inst); err != nil {
		return nil, err
	}
	return p, nil
}

// nicRef is the Azure identity of the node's NIC: what ARM calls need and
// the neutral cloud types do not carry.
type nicRef struct {
	resourceGroup string
	// name is the NIC's resource name, id its resource ID (the interface ID
	// of the neutral types).
	name string
	id   string
}

// NewHTTPClient returns the HTTP client for ARM and Entra ID: the system
// roots, or the PEM bundle caFile when set.
func NewHTTPClient(caFile string) (*http.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if caFile != "" {
		pool, err := cabundle.Load(caFile)
		if err != nil {
			return nil, fmt.Errorf("azure: %w", err)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &http.Client{Transport: tr}, nil
}

// discover finds the NIC that IMDS describes and the VNet's address space.
func (p *Provider) discover(ctx context.Context, inst instance) error {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.CallTimeout)
	defer cancel()
	var nic *armnetwork.Interface
	pager := p.nics.NewListPager(inst.ResourceGroup, nil)
	for pager.More() && nic == nil {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return classify("NetworkInterfaces_List", err)
		}
		for _, n := range page.Value {
			if n.Properties != nil && normalizeMAC(deref(n.Properties.MacAddress)) == inst.MAC {
				nic = n
				break
			}
		}
	}
	if nic == nil {
		return &cloud.Error{Kind: cloud.Fatal, Op: "NetworkInterfaces_List",
			Err: fmt.Errorf("no network interface in resource group %s has MAC %s", inst.ResourceGroup, inst.MAC)}
	}
	primary, err := primaryConfig(nic)
	if err != nil {
		return &cloud.Error{Kind: cloud.Fatal, Op: "NetworkInterfaces_List", Err: err}
	}
	subnetID := ""
	if primary.Properties.Subnet != nil {
		subnetID = deref(primary.Properties.Subnet.ID)
	}
	vnetRG, vnetName, err := parseSubnetID(subnetID)
	if err != nil {
		return &cloud.Error{Kind: cloud.Fatal, Op: "NetworkInterfaces_List", Err: err}
	}
	if err := p.cfg.Expect.check(inst, subnetID); err != nil {
		return &cloud.Error{Kind: cloud.Fatal, Op: "NetworkInterfaces_List", Err: err}
	}
	vnet, err := p.vnets.Get(ctx, vnetRG, vnetName, nil)
	if err != nil {
		return classify("VirtualNetworks_Get", err)
	}
	var prefixes []netip.Prefix
	if vnet.Properties != nil && vnet.Properties.AddressSpace != nil {
		for _, s := range vnet.Properties.AddressSpace.AddressPrefixes {
			pfx, err := netip.ParsePrefix(deref(s))
			if err != nil {
				return &cloud.Error{Kind: cloud.Fatal, Op: "VirtualNetworks_Get", Err: fmt.Errorf("bad vnet prefix %q: %w", deref(s), err)}
			}
			prefixes = append(prefixes, pfx.Masked())
		}
	}
	if len(prefixes) == 0 {
		return &cloud.Error{Kind: cloud.Fatal, Op: "VirtualNetworks_Get", Err: fmt.Errorf("vnet %s has no address space", vnetName)}
	}
	p.nic = nicRef{resourceGroup: inst.ResourceGroup, name: deref(nic.Name), id: deref(nic.ID)}
	p.base = cloud.Instance{
		Provider: "azure",
		ID:       inst.VMID,
		Name:     inst.VMName,
		Interfaces: []cloud.Interface{{
			ID:          p.nic.id,
			MAC:         inst.MAC,
			DeviceIndex: 0,
			Primary:     true,
			PrimaryIP:   inst.PrimaryIP,
			Subnet:      inst.Subnet,
			SubnetID:    subnetID,
			Gateway:     inst.Subnet.Addr().Next(),
		}},
		NetworkPrefixes: prefixes,
		Limits:          limits,
	}
	p.log.Info("found the node's network interface", "vm", inst.VMName, "subscription", inst.SubscriptionID,
		"resourceGroup", inst.ResourceGroup, "location", inst.Location, "nic", p.nic.name)
	return nil
}

// parseSubnetID returns the resource group and VNet name of a subnet id
// /subscriptions/S/resourceGroups/RG/providers/Microsoft.Network/virtualNetworks/V/subnets/N.
func parseSubnetID(id string) (rg, vnet string, err error) {
	rg, vnet, _, err = splitSubnetID(id)
	return rg, vnet, err
}

// splitSubnetID returns the resource group, VNet and subnet names of a
// subnet id.
func splitSubnetID(id string) (rg, vnet, subnet string, err error) {
	parts := strings.Split(strings.Trim(id, "/"), "/")
	if len(parts) != 10 || !strings.EqualFold(parts[2], "resourceGroups") ||
		!strings.EqualFold(parts[6], "virtualNetworks") || !strings.EqualFold(parts[8], "subnets") {
		return "", "", "", fmt.Errorf("malformed subnet id %q", id)
	}
	return parts[3], parts[7], parts[9], nil
}

func primaryConfig(nic *armnetwork.Interface) (*armnetwork.InterfaceIPConfiguration, error) {
	if nic.Properties == nil {
		return nil, fmt.Errorf("network interface %s has no properties", deref(nic.Name))
	}
	for _, c := range nic.Properties.IPConfigurations {
		if c != nil && c.Properties != nil && deref(c.Properties.Primary) {
			return c, nil
		}
	}
	return nil, fmt.Errorf("network interface %s has no primary ipConfiguration", deref(nic.Name))
}

// Instance reads the NIC's current addresses and returns the instance found
// at start with them.
func (p *Provider) Instance(ctx context.Context) (cloud.Instance, error) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.CallTimeout)
	defer cancel()
	nic, _, err := p.get(ctx)
	if err != nil {
		return cloud.Instance{}, err
	}
	in := p.base
	ifc := in.Interfaces[0]
	addNICState(&ifc, nic)
	in.Interfaces = []cloud.Interface{ifc}
	in.NetworkPrefixes = slices.Clone(in.NetworkPrefixes)
	return in, nil
}

func (p *Provider) get(ctx context.Context) (*armnetwork.Interface, string, error) {
	resp, err := p.nics.Get(ctx, p.nic.resourceGroup, p.nic.name, nil)
	if err != nil {
		return nil, "", classify("NetworkInterfaces_Get", err)
	}
	return &resp.Interface, deref(resp.Etag), nil
}

// addNICState fills ifc's addresses and forwarding flag from the NIC.
func addNICState(ifc *cloud.Interface, nic *armnetwork.Interface) {
	if nic.Properties == nil {
		return
	}
	ifc.IPForwarding = deref(nic.Properties.EnableIPForwarding)
	for _, c := range nic.Properties.IPConfigurations {
		if c == nil || c.Properties == nil {
			continue
		}
		ip, err := netip.ParseAddr(deref(c.Properties.PrivateIPAddress))
		if err != nil {
			continue
		}
		if deref(c.Properties.Primary) {
			ifc.PrimaryIP = ip
		} else {
			ifc.Secondary = append(ifc.Secondary, ip)
		}
	}
	slices.SortFunc(ifc.Secondary, func(a, b netip.Addr) int { return a.Compare(b) })
}

// checkInterface refuses an interface other than the node's NIC: the
// provider manages only that one.
func (p *Provider) checkInterface(op, id string) error {
	if !strings.EqualFold(id, p.nic.id) {
		return &cloud.Error{Kind: cloud.Fatal, Op: op,
			Err: fmt.Errorf("interface %q is not the node's network interface %s", id, p.nic.id)}
	}
	return nil
}

// maxConflictRetries bounds re-reads after a concurrent writer changed the NIC.
const maxConflictRetries = 4

// AddAddresses adds n secondary ipConfigurations with addresses chosen by
// the cloud to the NIC whose resource ID is iface, in one NIC update, and
// returns the new addresses.
func (p *Provider) AddAddresses(ctx context.Context, iface string, n int) ([]netip.Addr, error) {
	const op = "NetworkInterfaces_CreateOrUpdate"
	if err := p.checkInterface(op, iface); err != nil {
		return nil, err
	}
	if n <= 0 {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(ctx, p.cfg.CallTimeout)
	defer cancel()
	for attempt := 0; ; attempt++ {
		nic, etag, err := p.get(ctx)
		if err != nil {
			return nil, err
		}
		if have := len(nic.Properties.IPConfigurations); have+n > MaxIPConfigurations {
			return nil, &cloud.Error{Kind: cloud.NICLimit, Op: op,
				Err: fmt.Errorf("nic %s holds %d of %d ipConfigurations, cannot add %d", p.nic.name, have, MaxIPConfigurations, n)}
		}
		primary, err := primaryConfig(nic)
		if err != nil {
			return nil, &cloud.Error{Kind: cloud.Fatal, Op: op, Err: err}
		}
		names := make(map[string]bool, n)
		for range n {
			name, err := newConfigName()
			if err != nil {
				return nil, err
			}
			names[name] = true
			nic.Properties.IPConfigurations = append(nic.Properties.IPConfigurations,
				secondaryConfig(name, primary.Properties.Subnet.ID, netip.Addr{}))
		}
		updated, err := p.put(ctx, nic, etag)
		if err != nil {
			if cloud.KindOf(err) == cloud.Conflict && attempt < maxConflictRetries {
				p.log.Debug("nic changed concurrently, re-reading", "nic", p.nic.name, "attempt", attempt+1)
				continue
			}
			return nil, err
		}
		var added []netip.Addr
		for _, c := range updated.Properties.IPConfigurations {
			if c == nil || c.Properties == nil || !names[deref(c.Name)] {
				continue
			}
			ip, err := netip.ParseAddr(deref(c.Properties.PrivateIPAddress))
			if err != nil {
				return nil, &cloud.Error{Kind: cloud.Fatal, Op: op, Err: fmt.Errorf("ipConfiguration %s has no address: %w", deref(c.Name), err)}
			}
			added = append(added, ip)
		}
		if len(added) != n {
			return added, &cloud.Error{Kind: cloud.Transient, Op: op, Err: fmt.Errorf("asked for %d addresses, the nic shows %d new ones", n, len(added))}
		}
		slices.SortFunc(added, func(a, b netip.Addr) int { return a.Compare(b) })
		return added, nil
	}
}

// RestoreAddresses puts ips back on the NIC whose resource ID is iface, each
// in a new secondary ipConfiguration with that static address, in one NIC
// update (If-Match on the NIC's ETag): the daemon owns them, and a pod still
// uses them, but someone removed them outside vnet-ipamd. Addresses already
// on the NIC are left as they are. The update is all or nothing: when
// another interface holds one of the addresses, Azure refuses it with
// PrivateIPAddressIsAllocated (a *cloud.Error of kind AddressInUse) and none
// is added.
func (p *Provider) RestoreAddresses(ctx context.Context, iface string, ips []netip.Addr) error {
	const op = "NetworkInterfaces_CreateOrUpdate"
	if err := p.checkInterface(op, iface); err != nil {
		return err
	}
	if len(ips) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, p.cfg.CallTimeout)
	defer cancel()
	for attempt := 0; ; attempt++ {
		nic, etag, err := p.get(ctx)
		if err != nil {
			return err
		}
		have := map[netip.Addr]bool{}
		for _, c := range nic.Properties.IPConfigurations {
			if c != nil && c.Properties != nil {
				if ip, err := netip.ParseAddr(deref(c.Properties.PrivateIPAddress)); err == nil {
					have[ip] = true
				}
			}
		}
		var add []netip.Addr
		for _, ip := range ips {
			if !have[ip] {
				add = append(add, ip)
				have[ip] = true
			}
		}
		if len(add) == 0 {
			return nil
		}
		if n := len(nic.Properties.IPConfigurations); n+len(add) > MaxIPConfigurations {
			return &cloud.Error{Kind: cloud.NICLimit, Op: op,
				Err: fmt.Errorf("nic %s holds %d of %d ipConfigurations, cannot put back %d", p.nic.name, n, MaxIPConfigurations, len(add))}
		}
		primary, err := primaryConfig(nic)
		if err != nil {
			return &cloud.Error{Kind: cloud.Fatal, Op: op, Err: err}
		}
		for _, ip := range add {
			name, err := newConfigName()
			if err != nil {
				return err
			}
			nic.Properties.IPConfigurations = append(nic.Properties.IPConfigurations,
				secondaryConfig(name, primary.Properties.Subnet.ID, ip))
		}
		updated, err := p.put(ctx, nic, etag)
		if err != nil {
			if cloud.KindOf(err) == cloud.Conflict && attempt < maxConflictRetries {
				p.log.Debug("nic changed concurrently, re-reading", "nic", p.nic.name, "attempt", attempt+1)
				continue
			}
			return err
		}
		on := map[netip.Addr]bool{}
		for _, c := range updated.Properties.IPConfigurations {
			if c != nil && c.Properties != nil {
				if ip, err := netip.ParseAddr(deref(c.Properties.PrivateIPAddress)); err == nil {
					on[ip] = true
				}
			}
		}
		for _, ip := range add {
			if !on[ip] {
				return &cloud.Error{Kind: cloud.Transient, Op: op, Err: fmt.Errorf("put %s back, but the nic does not show it", ip)}
			}
		}
		return nil
	}
}

// RemoveAddresses removes the secondary ipConfigurations holding ips from
// the NIC whose resource ID is iface, in one NIC update. Addresses not on the
// NIC are ignored; the primary is never removed.
func (p *Provider) RemoveAddresses(ctx context.Context, iface string, ips []netip.Addr) error {
	if err := p.checkInterface("NetworkInterfaces_CreateOrUpdate", iface); err != nil {
		return err
	}
	if len(ips) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, p.cfg.CallTimeout)
	defer cancel()
	drop := make(map[netip.Addr]bool, len(ips))
	for _, ip := range ips {
		drop[ip] = true
	}
	for attempt := 0; ; attempt++ {
		nic, etag, err := p.get(ctx)
		if err != nil {
			return err
		}
		keep := nic.Properties.IPConfigurations[:0:0]
		for _, c := range nic.Properties.IPConfigurations {
			if c != nil && c.Properties != nil && !deref(c.Properties.Primary) {
				if ip, err := netip.ParseAddr(deref(c.Properties.PrivateIPAddress)); err == nil && drop[ip] {
					continue
				}
			}
			keep = append(keep, c)
		}
		if len(keep) == len(nic.Properties.IPConfigurations) {
			return nil
		}
		nic.Properties.IPConfigurations = keep
		if _, err := p.put(ctx, nic, etag); err != nil {
			if cloud.KindOf(err) == cloud.Conflict && attempt < maxConflictRetries {
				continue
			}
			return err
		}
		return nil
	}
}

// put writes the whole NIC with If-Match and waits for the operation.
func (p *Provider) put(ctx context.Context, nic *armnetwork.Interface, etag string) (*armnetwork.Interface, error) {
	const op = "NetworkInterfaces_CreateOrUpdate"
	// The precondition belongs to the PUT only, not to the polls after it.
	putCtx := ctx
	if etag != "" {
		putCtx = policy.WithHTTPHeader(ctx, http.Header{"If-Match": []string{etag}})
	}
	poller, err := p.nics.BeginCreateOrUpdate(putCtx, p.nic.resourceGroup, p.nic.name, *nic, nil)
	if err != nil {
		return nil, classify(op, err)
	}
	resp, err := poller.PollUntilDone(ctx, &runtime.PollUntilDoneOptions{Frequency: p.cfg.PollFrequency})
	if err != nil {
		return nil, classify(op, err)
	}
	return &resp.Interface, nil
}

func newConfigName() (string, error) {
	b := make([]byte, 5)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("random ipConfiguration name: %w", err)
	}
	return ipConfigPrefix + hex.EncodeToString(b), nil
}

// deref returns *p, or the zero value for nil: the SDK models are all pointers.
func deref[T any](p *T) T {
	if p == nil {
		var zero T
		return zero
	}
	return *p
}

// secondaryConfig is a new secondary IPv4 ipConfiguration in the subnet
// subnetID: with the address ip, static (an address put back), or, when ip
// is not valid, one the subnet chooses (dynamic).
func secondaryConfig(name string, subnetID *string, ip netip.Addr) *armnetwork.InterfaceIPConfiguration {
	props := &armnetwork.InterfaceIPConfigurationPropertiesFormat{
		Primary:                   to.Ptr(false),
		PrivateIPAllocationMethod: to.Ptr(armnetwork.IPAllocationMethodDynamic),
		PrivateIPAddressVersion:   to.Ptr(armnetwork.IPVersionIPv4),
		Subnet:                    &armnetwork.Subnet{ID: subnetID},
	}
	if ip.IsValid() {
		props.PrivateIPAllocationMethod = to.Ptr(armnetwork.IPAllocationMethodStatic)
		props.PrivateIPAddress = to.Ptr(ip.String())
	}
	return &armnetwork.InterfaceIPConfiguration{Name: to.Ptr(name), Properties: props}
}
