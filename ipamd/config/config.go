// Package config is the configuration file of vnet-ipamd: one JSON document with
// typed fields, defaults, and a validation whose every error names the field and
// the allowed values.
//
// Load (or Parse) starts from Default, overlays the file, and validates. Unknown
// fields are an error, and so are wrongly cased names: "warmIpTarget" is not
// "warmIPTarget". Durations are Go duration strings such as "30s" or "1m30s".
// A daemon that overrides fields from flags calls Validate again afterwards.
package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"time"

	"github.com/vnet-cni/vnet-cni/cloud/azure"
	"github.com/vnet-cni/vnet-cni/ipamd/api"
	"github.com/vnet-cni/vnet-cni/ipamd/pool"
)

// Default values of the fields; Default returns them as a Config.
const (
	DefaultWarmIPTarget   = 10
	DefaultMinIPTarget    = 0
	DefaultMaxIPs         = 30
	DefaultBatchSize      = 10
	DefaultCooldown       = 30 * time.Second
	DefaultReleaseDelay   = 60 * time.Second
	DefaultAllocateWait   = 5 * time.Second
	DefaultResyncInterval = 60 * time.Second
	DefaultRecoveryGrace  = 30 * time.Second
	DefaultSocketPath     = api.DefaultSocketPath
	DefaultStoreDir       = "/run/vnet-cni/store"
	DefaultCNIConfDir     = "/etc/cni/net.d"
	DefaultCNIConfName    = "10-vnet-cni.conflist"
	DefaultCNIVersion     = "1.1.0"
	DefaultReleaseSpool   = api.DefaultReleaseSpool
	DefaultPluginLockDir  = api.DefaultLockDir
	DefaultMetricsAddr    = "127.0.0.1:10093"
	DefaultLogLevel       = LogInfo
	DefaultMode           = ModeBridge
	DefaultNodeSetup      = NodeSetupIPAMD
	DefaultProvider       = ProviderAzure
	DefaultCallTimeout    = 30 * time.Second

	DefaultResourceManagerEndpoint = azure.DefaultResourceManagerEndpoint
	DefaultResourceManagerAudience = azure.DefaultAudience
	DefaultIMDSEndpoint            = azure.DefaultIMDSEndpoint
	DefaultCredential              = CredentialManagedIdentity
	DefaultCloudConfigFile         = azure.DefaultCloudConfigFile
	DefaultAWSIMDSEndpoint         = "http://169.254.169.254"
	DefaultSweepInterval           = 5 * time.Minute
	DefaultSweepGrace              = 10 * time.Minute
	DefaultStatusInterval          = 5 * time.Second
	DefaultKubenetBridge           = "vnetbr0"
	DefaultKubenetStateDir         = "/run/vnet-cni/podcidr"
	DefaultMaxRoutes               = 1000
	DefaultRouteInterval           = 30 * time.Second
	DefaultRouteSettle             = 10 * time.Second
	DefaultLeaseName               = "vnet-cni-routes"
	DefaultLeaseNamespace          = "vnet-cni"
)

// Allowed values of the enumerated fields.
const (
	LogDebug = "debug"
	LogInfo  = "info"
	LogWarn  = "warn"
	LogError = "error"

	// ModeBridge: pods get secondary VNet addresses of the node's NIC behind
	// the azure0 bridge, which takes the NIC over (Azure CNI's bridge mode).
	ModeBridge = api.ModeBridge
	// ModeRouted: no bridge, the NIC stays as it is; the node routes to
	// each pod's /32 over its veth, and the pod's default route is a
	// link-local gateway on its veth (Azure CNI's transparent mode, the
	// AWS VPC CNI's datapath).
	ModeRouted = api.ModeRouted
	// ModeKubenet: pods take addresses of the node's pod CIDR (the
	// Kubernetes Node's spec.podCIDRs, or kubenet.podCIDR) on a local
	// bridge; the node's route podCIDR → node in the VNet's route table
	// (UDR) and its NIC's IP forwarding carry traffic between nodes. No
	// secondary address is taken from the subnet.
	ModeKubenet = api.ModeKubenet

	// NodeSetupIPAMD: the daemon sets the node's datapath up before it
	// writes the conflist and repairs it (and the conflist) while it runs.
	NodeSetupIPAMD = "ipamd"
	// NodeSetupPlugin: the daemon leaves the datapath to the plugin, which
	// makes sure of the node on every ADD; for clusters that run the plugin
	// with a conflist of their own.
	NodeSetupPlugin = "plugin"

	ProviderAzure = "azure"
	ProviderAWS   = "aws"

	// CredentialManagedIdentity authenticates to ARM with the VM's managed
	// identity through IMDS (azidentity). Use it on real Azure VMs.
	CredentialManagedIdentity = "managedIdentity"
	// CredentialStaticTokenFile sends the bearer token read from TokenFile.
	// Use it against the simulated cloud (vnet-sim) and in tests, where no
	// identity endpoint exists; never on a real cluster.
	CredentialStaticTokenFile = "staticTokenFile"
	// CredentialCloudConfig uses the identity the cloud-provider
	// configuration file (CloudConfigFile, azure.json) names: the VM's
	// managed identity (userAssignedIdentityID selecting a user-assigned
	// one) or a service principal (aadClientId, aadClientSecret, tenantId).
	CredentialCloudConfig = "cloudConfig"
)

// Limits of the numeric and duration fields, inclusive.
const (
	MaxAllocateWait = 30 * time.Second
	MaxCooldown     = time.Hour
	MaxReleaseDelay = 24 * time.Hour
	MinResync       = time.Second
	MaxResync       = 24 * time.Hour
	MinGrace        = time.Second
	MaxGrace        = 10 * time.Minute
	MinCallTimeout  = time.Second
	MaxCallTimeout  = 10 * time.Minute
	// The sweep for leaked ENIs: often enough to find a dead node's
	// within minutes, never a call storm. The floor is for tests: at 150
	// nodes a 10 s interval is 15 describes/s, below the describe
	// bucket's refill (20/s).
	MinSweepInterval = 10 * time.Second
	MaxSweepInterval = 24 * time.Hour
	// How old a leaked ENI must be before the sweep deletes it (EC2 is
	// eventually consistent: a just-launched instance may not be listed).
	MinSweepGrace = time.Second
	MaxSweepGrace = 24 * time.Hour
	// The per-node object's status is written at most this often.
	MinStatusInterval = time.Second
	MaxStatusInterval = 5 * time.Minute
	// The check of the node's own route, and the leader's round over
	// every node's.
	MinRouteInterval = time.Second
	MaxRouteInterval = time.Hour
	// MaxRoutes bounds kubenet.maxRoutes: Azure lets a subscription raise
	// the limit per route table, never beyond a few thousand.
	MaxMaxRoutes = 10000
	// The settle time after a route write.
	MaxRouteSettle = 10 * time.Minute
	// MaxAddresses bounds maxIPs, batchSize and the targets: a sanity bound
	// above what any instance holds. The cloud provider's own limit (an
	// Azure NIC: 255 secondary addresses) caps the pool at run time.
	MaxAddresses = 1024
	// maxSocketPath is the room in sockaddr_un.sun_path without the final NUL.
	maxSocketPath = api.MaxSocketPath
)

// Config is the daemon's configuration. The JSON names are the camelCase field
// names shown in the tags.
type Config struct {
	// WarmIPTarget is the number of free addresses to keep ready, 0..maxIPs.
	WarmIPTarget int `json:"warmIPTarget"`
	// MinIPTarget is the floor of secondary addresses on the NIC (free,
	// assigned and cooling; the primary is not counted), 0..maxIPs.
	MinIPTarget int `json:"minIPTarget"`
	// MaxIPs is the ceiling of secondary addresses on the node, 1..1024
	// (0: the Kubernetes node's allocatable pods, allowed with
	// kubernetes.enabled, and the default then);
	// the cloud provider's limit applies too and wins when it is lower (an
	// Azure NIC holds 256 ipConfigurations, one of them the primary, so at
	// most 255 secondaries). The default 30 is one address per pod at Azure
	// CNI's default of 30 pods per node (the primary address is not
	// counted). Cooling addresses count
	// toward it, so a node at its pod limit that deletes and creates pods
	// waits for the cooldown; set maxIPs above the node's max pods (e.g. by
	// one batch) to avoid that.
	MaxIPs int `json:"maxIPs"`
	// IPAddressCount is the size of the first fill at start-up (the knob a
	// cluster template sets), 0..maxIPs; the daemon's first allocation asks
	// for max(ipAddressCount, what the pool maths wants). Default: the value
	// of warmIPTarget.
	IPAddressCount int `json:"ipAddressCount"`
	// BatchSize is the allocation granularity, 1..1024.
	BatchSize int `json:"batchSize"`
	// Cooldown is how long a released address waits before it can be
	// assigned again, 0s..1h.
	Cooldown Duration `json:"cooldown"`
	// ReleaseDelay is how long an excess address must have been free before
	// it is returned to the cloud, 0s..24h.
	ReleaseDelay Duration `json:"releaseDelay"`
	// AllocateWait is how long an allocation waits for a refill when the
	// pool is empty before answering "try again later", 0s..30s.
	AllocateWait Duration `json:"allocateWait"`
	// ResyncInterval is the period of the safety-net resync with the cloud,
	// 1s..24h.
	ResyncInterval Duration `json:"resyncInterval"`
	// RecoveryGrace is how long addresses stay quarantined after the
	// store was found damaged or lost, 1s..10m: an ADD that had its address
	// before the damage records its pod on its veth within the plugin's
	// datapath timeout (10 s), so keep it well above that. The daemon is
	// not ready meanwhile.
	RecoveryGrace Duration `json:"recoveryGrace"`
	// SocketPath is the unix socket the plugin talks to: an absolute path of
	// at most 107 bytes.
	SocketPath string `json:"socketPath"`
	// StoreDir is the directory of the address store (mode 0700), absolute.
	// The default is under /run, a tmpfs on every node: the store outlives
	// the daemon (a kill -9, an upgrade) but not the node's boot, and no pod
	// outlives the boot either. On tmpfs a record's fdatasync costs nothing;
	// on a disk every assignment waits for one.
	StoreDir string `json:"storeDir"`
	// CNIConfDir is where the daemon writes the CNI conflist once ready,
	// absolute.
	CNIConfDir string `json:"cniConfDir"`
	// CNIConfName is the conflist's file name: no directory, ending in
	// ".conflist".
	CNIConfName string `json:"cniConfName"`
	// CNIVersion is the cniVersion of the conflist the daemon writes: 1.0.0
	// or 1.1.0 (1.1.0, the default, is needed for the GC and STATUS verbs).
	CNIVersion string `json:"cniVersion"`
	// ReleaseSpool is the directory where the plugin records releases it
	// could not hand to the daemon (the daemon drains it), a clean absolute
	// path different from storeDir; empty disables the spool.
	ReleaseSpool string `json:"releaseSpool"`
	// PluginLockDir is where the plugin keeps the lock that serialises the
	// node's first bridge set-up, absolute; written into the conflist.
	PluginLockDir string `json:"pluginLockDir"`
	// CNIBinDir is the directory of the CNI plugin binaries, absolute; empty
	// (the default) means the daemon does not touch it. When set, the
	// daemon installs the vnet-cni binary that lies next to its own
	// executable (the node image's /vnet-cni) into it at start, before it
	// writes the conflist, with an atomic rename.
	CNIBinDir string `json:"cniBinDir,omitempty"`
	// MetricsAddr is the metrics and introspection listener, a loopback
	// ip:port (127.0.0.0/8 or ::1, port 1..65535): nothing else listens on TCP.
	MetricsAddr netip.AddrPort `json:"metricsAddr"`
	// LogLevel is one of debug, info, warn, error.
	LogLevel string `json:"logLevel"`
	// Mode is the datapath mode: "bridge" (the default), "routed" or
	// "kubenet" (configured by the kubenet section). It is
	// written into the conflist for the plugin. A node changes its mode
	// only drained: the daemon refuses (stays not ready, saying why) to set
	// routed mode up on a node whose NIC bridge mode took over in this
	// boot (reboot it first), or bridge mode while routed pods run.
	Mode string `json:"mode"`
	// NodeSetup says who keeps the node's datapath (bridge and nftables
	// tables): "ipamd" (the default) or "plugin".
	NodeSetup string `json:"nodeSetup"`
	// AllowPodMetadata lets pods reach the instance metadata service
	// (169.254.169.254). Off by default: on Azure it hands the node's
	// managed-identity token to whoever asks from the node, and a pod's
	// request would leave with the node's address. The node and
	// host-network pods reach it either way. Set it per node (agent pool)
	// only where workloads need the metadata and the identity is harmless.
	AllowPodMetadata bool `json:"allowPodMetadata,omitempty"`
	// SNATExclusions are the destinations pods reach with their own address,
	// IPv4 CIDRs, at most 32 (api.MaxSNATExclusions: each is two expressions
	// of one nftables rule); everything else leaving the node is translated
	// to its primary address. Written into the conflist. Empty (the default)
	// means the VNet's address space as the cloud reports it.
	SNATExclusions []string `json:"snatExclusions,omitempty"`
	// Cloud configures the cloud provider.
	Cloud Cloud `json:"cloud"`
	// Kubernetes connects the daemon to the cluster's API server (optional).
	Kubernetes Kubernetes `json:"kubernetes"`
	// Kubenet configures mode "kubenet"; ignored in the other modes.
	Kubenet Kubenet `json:"kubenet"`
}

// Kubenet configures the kubenet mode: addresses from the node's pod CIDR
// on a local bridge, and the route table that carries each pod CIDR to its
// node.
type Kubenet struct {
	// ClusterCIDR holds every node's pod CIDR (kube-controller-manager's
	// --cluster-cidr), an IPv4 CIDR; required. Only routes inside it are
	// vnet-cni's to change, and pods reach it without SNAT.
	ClusterCIDR string `json:"clusterCIDR"`
	// PodCIDR is the node's pod CIDR, an IPv4 CIDR inside clusterCIDR, /8
	// to /29; empty (the default) means the Kubernetes Node's
	// spec.podCIDRs, which needs kubernetes.enabled. Set it only on nodes
	// without the API server (kubelet's --pod-cidr).
	PodCIDR string `json:"podCIDR,omitempty"`
	// Bridge is the pods' local bridge, an interface name; default vnetbr0.
	Bridge string `json:"bridge"`
	// StateDir keeps the pod CIDR's allocation (which addresses the pool
	// took), the second witness beside storeDir, absolute and different
	// from it; default /run/vnet-cni/podcidr.
	StateDir string `json:"stateDir"`
	// RouteTable is the resource ID of the route table to program; empty
	// (the default) means the one associated with the node's subnet.
	RouteTable string `json:"routeTable,omitempty"`
	// MaxRoutes is the route table's limit, 1..10000; default 1,000
	// (Azure's since 2026; 400 in older subscriptions). A node whose route
	// does not fit is reported and its pods are held back.
	MaxRoutes int `json:"maxRoutes"`
	// RouteInterval is how often a node checks its own route, its NIC's
	// IP forwarding and the route's effect, and how often the leader
	// reconciles every node's route, 1s..1h; default 30s.
	RouteInterval Duration `json:"routeInterval"`
	// RouteSettle is how long the node's pods stay held back after a
	// write of its route or of its NIC's IP forwarding, even when the
	// NIC's effective routes show the route already (they may still show
	// the state before the write), 0s..10m; default 10s. Set it above the
	// time the VNet takes to follow a route table change.
	RouteSettle Duration `json:"routeSettle"`
	// Controller runs the leader-elected route controller in this daemon
	// (it removes the routes of deleted nodes); needs kubernetes.enabled.
	// Default: on when kubernetes.enabled.
	Controller *bool `json:"controller,omitempty"`
	// LeaseName and LeaseNamespace name the coordination.k8s.io Lease of
	// the controller's leader election; defaults vnet-cni-routes and
	// vnet-cni.
	LeaseName      string `json:"leaseName"`
	LeaseNamespace string `json:"leaseNamespace"`
}

// ControllerEnabled reports whether this daemon takes part in the route
// controller's leader election.
func (k Kubenet) ControllerEnabled(kubernetes bool) bool {
	if k.Controller != nil {
		return *k.Controller
	}
	return kubernetes
}

// ClusterPrefix returns clusterCIDR parsed and masked; invalid when it does
// not parse (Validate reports it).
func (k Kubenet) ClusterPrefix() netip.Prefix {
	p, err := netip.ParsePrefix(k.ClusterCIDR)
	if err != nil {
		return netip.Prefix{}
	}
	return p.Masked()
}

// Kubernetes configures the daemon's use of the Kubernetes API: its Node
// (maxIPs defaults to the node's allocatable pods; Events about the pool)
// and its VNetNode object (overrides of the pool targets in spec, the
// pool in status). The daemon works without the API server, degraded:
// ADD, DEL and /healthz never wait for it.
type Kubernetes struct {
	// Enabled turns the Kubernetes client on; off by default.
	Enabled bool `json:"enabled"`
	// Kubeconfig is a kubeconfig file, absolute; empty means the
	// in-cluster configuration (the pod's ServiceAccount).
	Kubeconfig string `json:"kubeconfig,omitempty"`
	// NodeName is the node's name; empty means --node-name, which
	// defaults to $NODE_NAME (the downward API's spec.nodeName), then the
	// host name. A DNS subdomain (lower case, at most 253 bytes).
	NodeName string `json:"nodeName,omitempty"`
	// StatusInterval is the shortest time between two writes of the
	// VNetNode's status, 1s..5m; a write happens only when it changed.
	StatusInterval Duration `json:"statusInterval"`
}

// Cloud configures the cloud provider.
type Cloud struct {
	// Provider is the cloud: "azure" or "aws".
	Provider string `json:"provider"`
	// CallTimeout is the deadline of each cloud call, 1s..10m.
	CallTimeout Duration `json:"callTimeout"`
	// Azure configures the Azure provider.
	Azure Azure `json:"azure"`
	// AWS configures the AWS provider.
	AWS AWS `json:"aws"`
}

// AWS configures the AWS provider: EC2 through aws-sdk-go-v2, the node
// discovered through IMDSv2, credentials from the instance's role. Against
// the simulated EC2, the endpoint and the CA file point at vnet-sim.
type AWS struct {
	// ClusterName tags the ENIs the daemon creates; the sweep for ENIs
	// of instances that are gone deletes only its own cluster's. Required:
	// 1-128 letters, digits, '.', '_' or '-', starting with a letter or
	// digit.
	ClusterName string `json:"clusterName"`
	// Region is the EC2 region, e.g. "eu-west-1"; empty means the
	// instance's (IMDS placement/region).
	Region string `json:"region,omitempty"`
	// EC2Endpoint replaces the region's EC2 endpoint, an https URL (a VPC
	// endpoint, a proxy, the simulated EC2); empty means the SDK's.
	EC2Endpoint string `json:"ec2Endpoint,omitempty"`
	// CAFile is an optional PEM bundle trusted for the EC2 endpoint besides
	// the system roots, absolute path.
	CAFile string `json:"caFile,omitempty"`
	// IMDSEndpoint is the instance metadata service, an http or https URL;
	// only IMDSv2 (session tokens) is used.
	IMDSEndpoint string `json:"imdsEndpoint"`
	// SweepInterval is the period of the sweep for the cluster's ENIs
	// whose instance is gone, 10s..24h (each sweep is one
	// DescribeNetworkInterfaces per node: keep it in minutes on a large
	// cluster).
	SweepInterval Duration `json:"sweepInterval"`
	// SweepGrace is how old a leaked ENI must be before the sweep deletes
	// it, 1s..24h.
	SweepGrace Duration `json:"sweepGrace"`
}

// Azure configures the Azure provider. Against the simulated cloud, the
// endpoints, the CA file and a static token point at vnet-sim; nothing else
// differs.
type Azure struct {
	// ResourceManagerEndpoint is the ARM endpoint, an https URL.
	ResourceManagerEndpoint string `json:"resourceManagerEndpoint"`
	// ResourceManagerAudience is the audience of ARM tokens, an https URL.
	ResourceManagerAudience string `json:"resourceManagerAudience"`
	// CAFile is an optional PEM bundle trusted for the ARM endpoint in
	// addition to the system roots, absolute path. Its existence is checked
	// when the daemon loads it, not by Validate.
	CAFile string `json:"caFile,omitempty"`
	// IMDSEndpoint is the instance metadata service, an http or https URL.
	IMDSEndpoint string `json:"imdsEndpoint"`
	// Credential is "managedIdentity" (real Azure VMs), "cloudConfig" (the
	// identity CloudConfigFile names: a node made from an AKS or
	// acs-engine-style template) or "staticTokenFile" (the simulated cloud
	// and tests).
	Credential string `json:"credential"`
	// TokenFile holds the bearer token for "staticTokenFile": required with
	// it, absolute path, not allowed with "managedIdentity".
	TokenFile string `json:"tokenFile,omitempty"`
	// ManagedIdentityClientID selects a user-assigned managed identity by
	// its client ID (a GUID); empty means the system-assigned identity. Only
	// with "managedIdentity".
	ManagedIdentityClientID string `json:"managedIdentityClientID,omitempty"`
	// CloudConfigFile is the Azure cloud-provider configuration
	// (azure.json), an absolute path or "" for none. When the file exists
	// the daemon holds the cloud to it: the subscription, resource group,
	// VNet and subnet it names must be the NIC's, or the daemon stays not
	// ready and says which differ. A "cloud" other than AzurePublicCloud
	// selects that cloud's ARM endpoint when resourceManagerEndpoint is
	// left at its default. At the default path a missing file is not an
	// error; at any other path it is.
	CloudConfigFile string `json:"cloudConfigFile"`
	// ActiveDirectoryEndpoint is the Entra ID (Azure AD) authority host a
	// service principal of CloudConfigFile signs in at, an https URL; empty
	// means the cloud's own (https://login.microsoftonline.com/ for
	// AzurePublicCloud). caFile is trusted for it as for ARM.
	ActiveDirectoryEndpoint string `json:"activeDirectoryEndpoint,omitempty"`
}

// Default returns the configuration with every default applied.
func Default() Config {
	return Config{
		WarmIPTarget:   DefaultWarmIPTarget,
		MinIPTarget:    DefaultMinIPTarget,
		MaxIPs:         DefaultMaxIPs,
		IPAddressCount: DefaultWarmIPTarget,
		BatchSize:      DefaultBatchSize,
		Cooldown:       Duration(DefaultCooldown),
		ReleaseDelay:   Duration(DefaultReleaseDelay),
		AllocateWait:   Duration(DefaultAllocateWait),
		ResyncInterval: Duration(DefaultResyncInterval),
		RecoveryGrace:  Duration(DefaultRecoveryGrace),
		SocketPath:     DefaultSocketPath,
		StoreDir:       DefaultStoreDir,
		CNIConfDir:     DefaultCNIConfDir,
		CNIConfName:    DefaultCNIConfName,
		CNIVersion:     DefaultCNIVersion,
		ReleaseSpool:   DefaultReleaseSpool,
		PluginLockDir:  DefaultPluginLockDir,
		MetricsAddr:    netip.MustParseAddrPort(DefaultMetricsAddr),
		LogLevel:       DefaultLogLevel,
		Mode:           DefaultMode,
		NodeSetup:      DefaultNodeSetup,
		Cloud: Cloud{
			Provider:    DefaultProvider,
			CallTimeout: Duration(DefaultCallTimeout),
			Azure: Azure{
				ResourceManagerEndpoint: DefaultResourceManagerEndpoint,
				ResourceManagerAudience: DefaultResourceManagerAudience,
				IMDSEndpoint:            DefaultIMDSEndpoint,
				Credential:              DefaultCredential,
				CloudConfigFile:         DefaultCloudConfigFile,
			},
			AWS: AWS{
				IMDSEndpoint:  DefaultAWSIMDSEndpoint,
				SweepInterval: Duration(DefaultSweepInterval),
				SweepGrace:    Duration(DefaultSweepGrace),
			},
		},
		Kubernetes: Kubernetes{StatusInterval: Duration(DefaultStatusInterval)},
		Kubenet: Kubenet{
			Bridge:         DefaultKubenetBridge,
			StateDir:       DefaultKubenetStateDir,
			MaxRoutes:      DefaultMaxRoutes,
			RouteInterval:  Duration(DefaultRouteInterval),
			RouteSettle:    Duration(DefaultRouteSettle),
			LeaseName:      DefaultLeaseName,
			LeaseNamespace: DefaultLeaseNamespace,
		},
	}
}

// Load reads the file at path with Parse.
func Load(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("load config: %w", err)
	}
	c, err := Parse(data)
	if err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// Parse decodes a configuration document over Default and validates it. A
// field the document omits keeps its default; ipAddressCount, when omitted,
// takes the value of warmIPTarget. Errors are *FieldError values (joined when
// there are several); a document that is not JSON gives a plain error.
func Parse(data []byte) (Config, error) {
	c := Default()
	seen, decodeErr := decodeStrict(data, &c)
	if seen == nil {
		return Config{}, decodeErr // not JSON at all
	}
	if c.Kubernetes.Enabled && !seen["maxIPs"] {
		c.MaxIPs = 0 // the node's allocatable pods
	}
	if !seen["ipAddressCount"] {
		// Clamped so that a bad warmIPTarget is reported once, under its name.
		upper := c.MaxIPs
		if upper == 0 && c.Kubernetes.Enabled {
			upper = MaxAddresses
		}
		c.IPAddressCount = min(max(c.WarmIPTarget, 0), max(upper, 0))
	}
	// Fields that failed to decode kept their valid defaults, so the
	// validation below adds only the other problems.
	if err := errors.Join(decodeErr, c.Validate()); err != nil {
		return Config{}, err
	}
	return c, nil
}

// SNATPrefixes returns snatExclusions as masked prefixes, nil when there
// are none (the VNet's address space is then excluded). Call it on a
// validated configuration: entries that do not parse are skipped.
func (c Config) SNATPrefixes() []netip.Prefix {
	var out []netip.Prefix
	for _, s := range c.SNATExclusions {
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
		}
	}
	return out
}

// PoolTargets returns the pool maths' view of the configuration. MaxIPs is
// 0 when it is to come from the Kubernetes node.
func (c Config) PoolTargets() pool.Targets {
	return pool.Targets{
		WarmIPTarget: c.WarmIPTarget,
		MinIPTarget:  c.MinIPTarget,
		MaxIPs:       c.MaxIPs,
		BatchSize:    c.BatchSize,
		ReleaseDelay: c.ReleaseDelay.D(),
	}
}

// Duration is a time.Duration written in JSON as a Go duration string ("30s").
type Duration time.Duration

// D returns the duration as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// String formats the duration like time.Duration.
func (d Duration) String() string { return time.Duration(d).String() }

// MarshalText writes the duration as a Go duration string.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText parses a Go duration string such as "30s" or "1m30s".
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a duration such as \"30s\" or \"1m30s\"", b)
	}
	*d = Duration(v)
	return nil
}

// WithTargetsOf returns c with the pool targets of o (warmIPTarget,
// minIPTarget, maxIPs, batchSize, releaseDelay, and ipAddressCount, which
// only sizes the first fill): the part of a changed file that a running
// daemon takes on.
func (c Config) WithTargetsOf(o Config) Config {
	c.WarmIPTarget, c.MinIPTarget, c.MaxIPs = o.WarmIPTarget, o.MinIPTarget, o.MaxIPs
	c.BatchSize, c.ReleaseDelay, c.IPAddressCount = o.BatchSize, o.ReleaseDelay, o.IPAddressCount
	return c
}

// Changed returns the JSON paths of the fields whose values differ between
// a and b, such as "logLevel" or "cloud.azure.caFile", sorted.
func Changed(a, b Config) []string {
	var ma, mb map[string]any
	ja, errA := json.Marshal(a)
	jb, errB := json.Marshal(b)
	if errA != nil || errB != nil || json.Unmarshal(ja, &ma) != nil || json.Unmarshal(jb, &mb) != nil {
		return []string{"(unreadable)"}
	}
	var out []string
	diffJSON("", ma, mb, &out)
	slices.Sort(out)
	return out
}

func diffJSON(prefix string, a, b map[string]any, out *[]string) {
	keys := map[string]bool{}
	for k := range a {
		keys[k] = true
	}
	for k := range b {
		keys[k] = true
	}
	for k := range keys {
		va, vb := a[k], b[k]
		sa, okA := va.(map[string]any)
		sb, okB := vb.(map[string]any)
		if okA && okB {
			diffJSON(prefix+k+".", sa, sb, out)
			continue
		}
		if !reflect.DeepEqual(va, vb) {
			*out = append(*out, prefix+k)
		}
	}
}
