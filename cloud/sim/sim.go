// Package sim runs a simulated cloud, Azure (the default) or AWS: its
// control plane over HTTPS with its own CA (ARM's network API, or EC2's
// Query API), an admin endpoint for faults and call counts, and, unless
// disabled, the fabric (vnet, node and internet namespaces) with each
// node's metadata service (Azure IMDS, or EC2's IMDSv2) at 169.254.169.254
// and the control plane reachable from inside every node at the same URL
// as from the host.
package sim

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/vnet-cni/vnet-cni/cloud/sim/arm"
	"github.com/vnet-cni/vnet-cni/cloud/sim/ec2"
	"github.com/vnet-cni/vnet-cni/cloud/sim/ec2imds"
	"github.com/vnet-cni/vnet-cni/cloud/sim/fabric"
	"github.com/vnet-cni/vnet-cni/cloud/sim/simca"
)

// Cloud names the simulated cloud of a run.
type Cloud string

// The clouds the simulator runs.
const (
	CloudAzure Cloud = "azure"
	CloudAWS   Cloud = "aws"
)

// Options configures a simulated cloud. The zero value of every field but
// Dir has a sensible default.
type Options struct {
	// Cloud is the cloud to simulate (default CloudAzure).
	Cloud Cloud
	// Nodes is the number of VMs, each with one NIC (default 2).
	Nodes int
	// Prefix names every namespace of this run; default a random "vs"+6 hex.
	Prefix string
	// Dir receives the CA file and the description (sim.json).
	Dir string
	// VNet is the virtual network's address space (default 10.240.0.0/12);
	// on AWS the VPC's CIDR block (/16 to /28, default 10.240.0.0/16).
	VNet netip.Prefix
	// Subnet is the node subnet (default 10.240.0.0/16; on AWS
	// 10.240.0.0/17).
	Subnet netip.Prefix
	// Internet is the range of the internet namespace (default 203.0.113.0/24).
	Internet netip.Prefix
	// Location is the Azure region name (default "westeurope").
	Location string
	// OperationDuration is how long a long-running operation stays
	// InProgress (default 1s); PollInterval what the API advertises for
	// polling it (default 1s). On AWS, OperationDuration is how long an
	// attachment stays attaching or detaching.
	OperationDuration time.Duration
	PollInterval      time.Duration
	// StaticToken is accepted by the control plane besides the tokens that
	// IMDS issues (empty: none).
	StaticToken string
	// Faults are the initial injected faults (Azure).
	Faults arm.Faults
	// TemplateIPs is the number of secondary ipConfigurations every NIC is
	// created with, as a cluster template's ipAddressCount pre-creates
	// them (0-255).
	TemplateIPs int
	// ReadOnlyIdentity gives every node's managed identity read access
	// only (Azure's Reader role): ARM refuses its writes with 403
	// AuthorizationFailed. The static token may still write.
	ReadOnlyIdentity bool
	// MaxRoutes caps the routes of a route table (default 1000, Azure's
	// default since 2026; 400 in older subscriptions).
	MaxRoutes int
	// RouteEffectDelay is how long after a route table change succeeded
	// the fabric follows it, as Azure answers a PUT before the hosts are
	// programmed (default 3s; negative: at once).
	RouteEffectDelay time.Duration

	// Region is the AWS region (default us-east-1).
	Region string
	// InstanceType is the type of every AWS instance (default m5.large).
	InstanceType string
	// MetadataDelay is how long a new private address takes to appear in
	// IMDS on AWS (default 500ms; negative: at once).
	MetadataDelay time.Duration
	// EC2Faults are the initial injected faults (AWS).
	EC2Faults ec2.Faults

	// NoFabric runs the control plane alone (no namespaces, no root needed).
	NoFabric bool
	Logger   *slog.Logger
}

// Fixed names of the simulated resources.
const (
	SubscriptionID = "5e1f0000-5e1f-4000-8000-00000000c0de"
	ResourceGroup  = "vnet-sim-rg"
	VNetName       = "vnet-sim-vnet"
	SubnetName     = "nodes"
	RouteTableName = "vnet-sim-routes"
	TenantID       = arm.DefaultTenantID
	// DefaultRouteEffectDelay is how long a route table change takes to
	// reach the fabric after ARM reports it succeeded.
	DefaultRouteEffectDelay = 3 * time.Second
	// Audience is the resource for which tokens are requested.
	Audience = "https://management.azure.com/"
)

// Description is the machine-readable description of a running simulation,
// written to Dir/sim.json. The Azure fields are empty (and left out) on
// AWS, the AWS ones on Azure.
type Description struct {
	// Cloud is "azure" or "aws".
	Cloud         Cloud  `json:"cloud"`
	Prefix        string `json:"prefix"`
	CAFile        string `json:"caFile"`
	AdminEndpoint string `json:"adminEndpoint"`

	// Azure.
	ARMEndpoint    string   `json:"armEndpoint,omitempty"`
	ARMAudience    string   `json:"armAudience,omitempty"`
	StaticToken    string   `json:"staticToken,omitempty"`
	SubscriptionID string   `json:"subscriptionId,omitempty"`
	ResourceGroup  string   `json:"resourceGroup,omitempty"`
	Location       string   `json:"location,omitempty"`
	VNet           string   `json:"vnet,omitempty"`
	VNetPrefixes   []string `json:"vnetPrefixes,omitempty"`
	Subnet         string   `json:"subnet,omitempty"`
	SubnetPrefix   string   `json:"subnetPrefix,omitempty"`
	RouteTable     string   `json:"routeTable,omitempty"`
	// TenantID is the Entra ID tenant; ActiveDirectoryEndpoint its
	// authority host (the ARM endpoint's host answers Entra ID too), where
	// ServicePrincipal signs in with its client secret (a cluster
	// template's aadClientId and aadClientSecret). It has the nodes' role:
	// read-only with ReadOnlyIdentity.
	TenantID                string            `json:"tenantId,omitempty"`
	ActiveDirectoryEndpoint string            `json:"activeDirectoryEndpoint,omitempty"`
	ServicePrincipal        *ServicePrincipal `json:"servicePrincipal,omitempty"`

	// AWS.
	Region           string   `json:"region,omitempty"`
	AccountID        string   `json:"accountId,omitempty"`
	EC2Endpoint      string   `json:"ec2Endpoint,omitempty"`
	AvailabilityZone string   `json:"availabilityZone,omitempty"`
	VPCID            string   `json:"vpcId,omitempty"`
	VPCCIDRs         []string `json:"vpcCidrs,omitempty"`
	SubnetID         string   `json:"subnetId,omitempty"`
	SubnetCIDR       string   `json:"subnetCidr,omitempty"`
	// InstanceRole is the role whose credentials every node's IMDS hands out.
	InstanceRole string `json:"instanceRole,omitempty"`
	// StaticCredentials are accepted by EC2 besides the role's, for tools
	// on the host.
	StaticCredentials *StaticCredentials `json:"staticCredentials,omitempty"`

	// Gateway is the subnet's first address (Azure's gateway, the VPC
	// router); GatewayMAC the MAC with which the fabric answers ARP.
	Gateway       string            `json:"gateway"`
	GatewayMAC    string            `json:"gatewayMac,omitempty"`
	VNetNetns     string            `json:"vnetNetns,omitempty"`
	InternetNetns string            `json:"internetNetns,omitempty"`
	InternetHost  string            `json:"internetHost,omitempty"`
	Nodes         []NodeDescription `json:"nodes"`
}

// ServicePrincipal is an Entra ID application's client credentials.
type ServicePrincipal struct {
	ClientID     string `json:"clientId"`
	ClientSecret string `json:"clientSecret"`
}

// StaticCredentials are long-term AWS credentials (no session token).
type StaticCredentials struct {
	AccessKeyID     string `json:"accessKeyId"`
	SecretAccessKey string `json:"secretAccessKey"`
}

// NodeDescription describes one VM (Azure) or instance (AWS).
type NodeDescription struct {
	Name string `json:"name"`
	// Azure: the VM's id and its NIC's name.
	VMID string `json:"vmId,omitempty"`
	NIC  string `json:"nic,omitempty"`
	// AWS: the instance's id and type and its primary ENI's id.
	InstanceID   string `json:"instanceId,omitempty"`
	InstanceType string `json:"instanceType,omitempty"`
	ENIID        string `json:"eniId,omitempty"`
	// MAC and PrimaryIP are eth0's (the NIC's, the primary ENI's).
	MAC       string `json:"mac"`
	PrimaryIP string `json:"primaryIP"`
	Netns     string `json:"netns,omitempty"`
}

// controlPlane is what the sim serves of either cloud's control plane.
type controlPlane interface {
	Handler() http.Handler
	AdminHandler() http.Handler
	Changed() <-chan struct{}
	Close()
}

var (
	_ controlPlane = (*arm.Server)(nil)
	_ controlPlane = (*ec2.Server)(nil)
)

// Sim is a running simulated cloud.
type Sim struct {
	opts  Options
	ca    *simca.CA
	cp    controlPlane // arm or ec2
	arm   *arm.Server  // nil on AWS
	ec2   *ec2.Server  // nil on Azure
	aws   awsIDs
	fab   *fabric.Fabric
	desc  Description
	log   *slog.Logger
	nodes []nodeInfo
	// sp is the Azure tenant's service principal.
	sp     ServicePrincipal
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex // guards servers and closed
	servers []*http.Server
	closed  bool
}

type nodeInfo struct {
	name    string
	mac     net.HardwareAddr
	primary netip.Addr
	// Azure
	vmID string
	nic  string
	// AWS
	instanceID, eniID string
}

// Start brings up a simulated cloud. Close it to remove everything.
func Start(ctx context.Context, opts Options) (s *Sim, err error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	s = &Sim{opts: opts, log: opts.Logger}
	defer func() {
		if err != nil {
			err = errors.Join(err, s.Close())
			s = nil
		}
	}()
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create sim dir: %w", err)
	}
	if s.ca, err = simca.New("vnet-sim CA "+opts.Prefix, 30*24*time.Hour); err != nil {
		return nil, err
	}
	caFile := filepath.Join(opts.Dir, "ca.pem")
	if err := s.ca.WriteFile(caFile); err != nil {
		return nil, err
	}
	s.nodes = makeNodes(opts)
	switch opts.Cloud {
	case CloudAWS:
		cfg, err := s.newEC2Config()
		if err != nil {
			return nil, err
		}
		if s.ec2, err = ec2.New(cfg); err != nil {
			return nil, fmt.Errorf("control plane: %w", err)
		}
		s.cp = s.ec2
	default:
		s.sp = ServicePrincipal{ClientID: uuid.NewString(), ClientSecret: randomSecret()}
		if s.arm, err = arm.New(s.armConfig()); err != nil {
			return nil, fmt.Errorf("control plane: %w", err)
		}
		s.cp = s.arm
	}

	tlsCfg, err := s.ca.ServerConfig("127.0.0.1", "localhost")
	if err != nil {
		return nil, err
	}
	apiLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen for the control plane: %w", err)
	}
	apiAddr := apiLn.Addr().String()
	s.serve(s.cp.Handler(), tls.NewListener(apiLn, tlsCfg))
	adminLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen for the admin endpoint: %w", err)
	}
	s.serve(s.cp.AdminHandler(), adminLn)

	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.cancel = cancel
	if !opts.NoFabric {
		if err := s.startFabric(ctx, runCtx, apiAddr, tlsCfg); err != nil {
			return nil, err
		}
	}
	s.desc = s.describe("https://"+apiAddr, caFile, "http://"+adminLn.Addr().String())
	if err := writeJSON(filepath.Join(opts.Dir, "sim.json"), s.desc); err != nil {
		return nil, err
	}
	return s, nil
}

func (o *Options) setDefaults() error {
	if o.Dir == "" {
		return errors.New("sim: Dir is required")
	}
	switch o.Cloud {
	case "":
		o.Cloud = CloudAzure
	case CloudAzure, CloudAWS:
	default:
		return fmt.Errorf("sim: unknown cloud %q (want %q or %q)", o.Cloud, CloudAzure, CloudAWS)
	}
	if o.Nodes == 0 {
		o.Nodes = 2
	}
	if o.Nodes < 1 || o.Nodes > 200 {
		return fmt.Errorf("sim: nodes %d out of range 1..200", o.Nodes)
	}
	if o.Prefix == "" {
		b := make([]byte, 3)
		if _, err := rand.Read(b); err != nil {
			return fmt.Errorf("sim: random prefix: %w", err)
		}
		o.Prefix = "vs" + hex.EncodeToString(b)
	}
	if len(o.Prefix) > 12 {
		return fmt.Errorf("sim: prefix %q longer than 12 characters", o.Prefix)
	}
	aws := o.Cloud == CloudAWS
	if !o.VNet.IsValid() {
		o.VNet = netip.MustParsePrefix("10.240.0.0/12")
		if aws {
			o.VNet = netip.MustParsePrefix("10.240.0.0/16")
		}
	}
	if !o.Subnet.IsValid() {
		o.Subnet = netip.MustParsePrefix("10.240.0.0/16")
		if aws {
			o.Subnet = netip.MustParsePrefix("10.240.0.0/17")
		}
	}
	if aws && (o.TemplateIPs != 0 || o.ReadOnlyIdentity || o.StaticToken != "" || o.MaxRoutes != 0 || o.RouteEffectDelay != 0) {
		return errors.New("sim: TemplateIPs, ReadOnlyIdentity, StaticToken, MaxRoutes and RouteEffectDelay are azure options")
	}
	if o.MaxRoutes < 0 {
		return fmt.Errorf("sim: max routes %d is negative", o.MaxRoutes)
	}
	if o.RouteEffectDelay == 0 {
		o.RouteEffectDelay = DefaultRouteEffectDelay
	}
	if aws && (o.VNet.Bits() < 16 || o.VNet.Bits() > 28 || o.Subnet.Bits() > 28) {
		return fmt.Errorf("sim: vpc %s and subnet %s: a vpc cidr block is /16 to /28, a subnet at most /28", o.VNet, o.Subnet)
	}
	if !o.Internet.IsValid() {
		o.Internet = netip.MustParsePrefix("203.0.113.0/24")
	}
	if !o.VNet.Contains(o.Subnet.Addr()) || o.Subnet.Bits() < o.VNet.Bits() {
		return fmt.Errorf("sim: subnet %s is not inside the vnet %s", o.Subnet, o.VNet)
	}
	// Azure and AWS reserve 5 addresses per subnet; the nodes take the next ones.
	if size := 1 << (32 - o.Subnet.Bits()); size-5 < o.Nodes {
		return fmt.Errorf("sim: subnet %s too small for %d nodes", o.Subnet, o.Nodes)
	}
	if o.Location == "" {
		o.Location = "westeurope"
	}
	if o.OperationDuration == 0 {
		o.OperationDuration = time.Second
	}
	if o.PollInterval == 0 {
		o.PollInterval = time.Second
	}
	if o.Region == "" {
		o.Region = ec2.DefaultRegion
	}
	if o.InstanceType == "" {
		o.InstanceType = "m5.large"
	}
	if aws {
		if _, ok := ec2.InstanceTypes()[o.InstanceType]; !ok {
			return fmt.Errorf("sim: unknown instance type %q", o.InstanceType)
		}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// makeNodes derives each VM's identity: NIC MACs in Microsoft's 00:0d:3a
// range (on AWS, EC2's locally administered 0e: range), primaries from the
// first address the cloud hands out (.4) on.
func makeNodes(opts Options) []nodeInfo {
	seed := make([]byte, 2)
	_, _ = rand.Read(seed)
	nodes := make([]nodeInfo, opts.Nodes)
	addr := opts.Subnet.Masked().Addr()
	for range 4 {
		addr = addr.Next()
	}
	for i := range nodes {
		name := fmt.Sprintf("node%d", i)
		id := make([]byte, 16)
		_, _ = rand.Read(id)
		id[6] = id[6]&0x0f | 0x40
		id[8] = id[8]&0x3f | 0x80
		if opts.Cloud == CloudAWS {
			raw := make([]byte, 18)
			_, _ = rand.Read(raw)
			nodes[i] = nodeInfo{
				name:       name,
				instanceID: "i-" + hex.EncodeToString(raw[:9])[:17],
				eniID:      "eni-" + hex.EncodeToString(raw[9:])[:17],
				mac:        net.HardwareAddr{0x0e, 0x5e, seed[0], seed[1], byte(i >> 8), byte(i)},
				primary:    addr,
			}
			addr = addr.Next()
			continue
		}
		nodes[i] = nodeInfo{
			name:    name,
			vmID:    fmt.Sprintf("%x-%x-%x-%x-%x", id[0:4], id[4:6], id[6:8], id[8:10], id[10:]),
			nic:     name + "-nic",
			mac:     net.HardwareAddr{0x00, 0x0d, 0x3a, seed[0], seed[1], byte(i)},
			primary: addr,
		}
		addr = addr.Next()
	}
	return nodes
}

func (s *Sim) armConfig() arm.Config {
	cfg := arm.Config{
		SubscriptionID:    SubscriptionID,
		ResourceGroup:     ResourceGroup,
		Location:          s.opts.Location,
		VNetName:          VNetName,
		VNetPrefixes:      []netip.Prefix{s.opts.VNet},
		SubnetName:        SubnetName,
		Subnet:            s.opts.Subnet,
		RouteTableName:    RouteTableName,
		OperationDuration: s.opts.OperationDuration,
		PollInterval:      s.opts.PollInterval,
		StaticToken:       s.opts.StaticToken,
		MaxRoutes:         s.opts.MaxRoutes,
		RouteEffectDelay:  max(s.opts.RouteEffectDelay, 0),
		TenantID:          TenantID,
		ServicePrincipals: []arm.ServicePrincipal{{ClientID: s.sp.ClientID, ClientSecret: s.sp.ClientSecret, ReadOnly: s.opts.ReadOnlyIdentity}},
		Faults:            s.opts.Faults,
		Logger:            s.log,
	}
	for _, n := range s.nodes {
		cfg.NICs = append(cfg.NICs, arm.NICSpec{Name: n.nic, VMName: n.name, MAC: n.mac, Primary: n.primary, TemplateIPs: s.opts.TemplateIPs})
	}
	return cfg
}

// serve runs handler on ln until Close.
func (s *Sim) serve(handler http.Handler, ln net.Listener) {
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)}
	s.mu.Lock()
	s.servers = append(s.servers, srv)
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("sim server stopped", "addr", ln.Addr().String(), "err", err)
		}
	}()
}

func (s *Sim) startFabric(ctx, runCtx context.Context, apiAddr string, tlsCfg *tls.Config) error {
	topo := fabric.Topology{
		Prefix:       s.opts.Prefix,
		VNetPrefixes: []netip.Prefix{s.opts.VNet},
		Subnet:       s.opts.Subnet,
		Internet:     s.opts.Internet,
	}
	if s.opts.Cloud == CloudAWS {
		topo.GatewayMAC = fabric.VPCRouterMAC
	}
	for _, n := range s.nodes {
		topo.Nodes = append(topo.Nodes, fabric.Node{Name: n.name, MAC: n.mac, Primary: n.primary})
	}
	fab, err := fabric.Create(ctx, topo)
	if err != nil {
		return fmt.Errorf("fabric: %w", err)
	}
	s.fab = fab
	if err := fab.Apply(ctx, s.desiredState()); err != nil {
		return fmt.Errorf("fabric: first reconcile: %w", err)
	}
	for _, n := range s.nodes {
		nsPath := fab.NodeNSPath(n.name)
		// The control plane at the same address as on the host, so that a
		// daemon inside the node uses the URL from the description.
		ln, err := listenIn(nsPath, apiAddr)
		if err != nil {
			return fmt.Errorf("control plane in node %s: %w", n.name, err)
		}
		s.serve(s.cp.Handler(), tls.NewListener(ln, tlsCfg))
		ln, err = listenIn(nsPath, netip.AddrPortFrom(fabric.IMDSAddr, 80).String())
		if err != nil {
			return fmt.Errorf("imds in node %s: %w", n.name, err)
		}
		s.serve(s.nodeIMDS(n), ln)
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		fab.Run(runCtx, s.desiredState, s.cp.Changed())
	}()
	return nil
}

// desiredState derives the fabric's forwarding state from the control plane.
func (s *Sim) desiredState() fabric.State {
	if s.ec2 != nil {
		return ec2State(s.ec2.Snapshot(), s.nodes)
	}
	return stateFromSnapshot(s.arm.Snapshot(), s.nodes)
}

// nodeIMDS is node n's metadata service.
func (s *Sim) nodeIMDS(n nodeInfo) http.Handler {
	if s.ec2 != nil {
		return ec2imds.NewHandler(s.ec2.IMDS(n.instanceID))
	}
	return s.imdsHandler(n)
}

func stateFromSnapshot(snap arm.Snapshot, nodes []nodeInfo) fabric.State {
	vmByNIC := make(map[string]string, len(nodes))
	for _, n := range nodes {
		vmByNIC[n.nic] = n.name
	}
	var st fabric.State
	for _, nic := range snap.NICs {
		vm, ok := vmByNIC[nic.Name]
		if !ok {
			continue
		}
		ns := fabric.NodeState{Name: vm, IPForwarding: nic.IPForwarding}
		if nic.Primary.IsValid() {
			ns.IPs = append(ns.IPs, nic.Primary)
		}
		ns.IPs = append(ns.IPs, nic.Secondary...)
		st.Nodes = append(st.Nodes, ns)
	}
	for _, r := range snap.Routes {
		if r.NextHopType == "VirtualAppliance" && r.NextHop.IsValid() {
			st.Routes = append(st.Routes, fabric.Route{Prefix: r.Prefix, NextHop: r.NextHop})
		}
	}
	return st
}

func (s *Sim) describe(apiURL, caFile, adminURL string) Description {
	if s.ec2 != nil {
		return s.describeAWS(apiURL, caFile, adminURL)
	}
	d := Description{
		Cloud:          CloudAzure,
		Prefix:         s.opts.Prefix,
		ARMEndpoint:    apiURL,
		ARMAudience:    Audience,
		CAFile:         caFile,
		AdminEndpoint:  adminURL,
		StaticToken:    s.opts.StaticToken,
		SubscriptionID: SubscriptionID,
		ResourceGroup:  ResourceGroup,
		Location:       s.opts.Location,
		VNet:           VNetName,
		VNetPrefixes:   []string{s.opts.VNet.String()},
		Subnet:         SubnetName,
		SubnetPrefix:   s.opts.Subnet.String(),
		Gateway:        s.opts.Subnet.Masked().Addr().Next().String(),
		GatewayMAC:     fabric.VirtualMAC.String(),
		RouteTable:     RouteTableName,

		TenantID:                TenantID,
		ActiveDirectoryEndpoint: strings.TrimSuffix(apiURL, "/") + "/",
		ServicePrincipal:        &ServicePrincipal{ClientID: s.sp.ClientID, ClientSecret: s.sp.ClientSecret},
	}
	s.describeFabric(&d)
	for _, n := range s.nodes {
		nd := NodeDescription{Name: n.name, VMID: n.vmID, NIC: n.nic, MAC: n.mac.String(), PrimaryIP: n.primary.String()}
		if s.fab != nil {
			nd.Netns = s.fab.NodeNSPath(n.name)
		}
		d.Nodes = append(d.Nodes, nd)
	}
	return d
}

// describeFabric fills in the fabric's namespaces.
func (s *Sim) describeFabric(d *Description) {
	if s.fab != nil {
		d.VNetNetns = s.fab.VNetNSPath()
		d.InternetNetns = s.fab.InternetNSPath()
		d.InternetHost = s.fab.InternetHost().String()
	}
}

// Description returns what sim.json holds.
func (s *Sim) Description() Description { return s.desc }

// ARM returns the Azure control plane, for tests that inspect or fault it
// directly; nil on AWS.
func (s *Sim) ARM() *arm.Server { return s.arm }

// EC2 returns the AWS control plane; nil on Azure.
func (s *Sim) EC2() *ec2.Server { return s.ec2 }

// CA returns the simulation's certificate authority.
func (s *Sim) CA() *simca.CA { return s.ca }

// IMDSHandler returns the metadata service of the named node, for tests that
// run the control plane without the fabric and serve IMDS on loopback.
func (s *Sim) IMDSHandler(node string) (http.Handler, bool) {
	for _, n := range s.nodes {
		if n.name == node {
			return s.nodeIMDS(n), true
		}
	}
	return nil, false
}

// Fabric returns the data plane, nil with NoFabric.
func (s *Sim) Fabric() *fabric.Fabric { return s.fab }

// Close stops every server and removes the fabric. It is idempotent.
func (s *Sim) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	servers := s.servers
	s.mu.Unlock()

	if s.cancel != nil {
		s.cancel()
	}
	var errs []error
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, srv := range servers {
		if err := srv.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("shut down server: %w", err))
			_ = srv.Close()
		}
	}
	s.wg.Wait()
	if s.fab != nil {
		if err := s.fab.Destroy(); err != nil {
			errs = append(errs, fmt.Errorf("destroy fabric: %w", err))
		}
	}
	if s.cp != nil {
		s.cp.Close()
	}
	return errors.Join(errs...)
}

// randomSecret is a client secret as Entra ID makes them: 40 characters.
func randomSecret() string {
	var b [30]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}
