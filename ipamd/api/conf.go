package api

// Defaults shared by the plugin and the daemon, defined here once: the
// daemon's configuration starts from them and writes them into the conflist,
// the plugin falls back to them when the conflist leaves a key out.
const (
	// DefaultSocketPath is where the daemon listens and the plugin calls.
	DefaultSocketPath = "/run/vnet-cni/ipamd.sock"
	// DefaultReleaseSpool is the directory of the release spool.
	DefaultReleaseSpool = "/var/lib/vnet-cni/release-spool"
	// DefaultLockDir holds the plugin's node-wide lock files.
	DefaultLockDir = "/run/vnet-cni"
	// ModeBridge is the datapath mode where pods get secondary VNet
	// addresses of the node's NIC behind the azure0 bridge, the default.
	ModeBridge = "bridge"
	// ModeRouted is the datapath mode where the node routes to each pod
	// over its veth (a /32 and a link-local gateway; no bridge, the NIC
	// stays as it is), policy-routing the addresses of non-primary
	// interfaces out of their own interface.
	ModeRouted = "routed"
	// ModeKubenet is the datapath mode where pods take addresses of the
	// node's pod CIDR on a local bridge whose address is the pod CIDR's
	// gateway; the cloud's route table carries each pod CIDR to its node.
	ModeKubenet = "kubenet"
	// PluginType is the type of vnet-cni's entry in a conflist: the name of
	// the plugin's binary.
	PluginType = "vnet-cni"
	// NetworkName is the name of the network in the conflist the daemon
	// writes.
	NetworkName = "vnet-cni"
)

// Limits of the plugin's configuration that the daemon's configuration
// shares, so that the daemon refuses at start what every ADD would refuse.
const (
	// MaxSocketPath is the longest socket path, in bytes: what fits in
	// sockaddr_un's sun_path (108 bytes) with its final NUL.
	MaxSocketPath = 107
	// MaxSNATExclusions bounds snatExclusions (and vnetCIDRs, the default
	// exclusions). Each exclusion is two expressions (mask, compare) of one
	// nftables rule in the bridge table and one in the ip table, and the
	// kernel takes at most 128 expressions per rule (NFT_RULE_MAXEXPRS): the
	// bridge table's SNAT rule fits 57 exclusions today. 32 leaves room for
	// the rule to grow; in JSON 32 CIDRs are well under 1 KiB of the conflist.
	MaxSNATExclusions = 32
)

// PluginConf holds vnet-cni's own keys of its conflist entry: the daemon
// writes them, the plugin reads them (its NetConf embeds PluginConf next to
// the CNI library's generic keys: cniVersion, name, type, prevResult...).
// Values stay in their JSON form (strings) so that the plugin validates them
// once and reports a bad one as CNI error 7 naming the key.
type PluginConf struct {
	// Mode is the datapath: "bridge" (the default), "routed" or "kubenet".
	Mode string `json:"mode,omitempty"`
	// Bridge is the bridge name (bridge mode: default azure0; kubenet
	// mode: the local bridge, default vnetbr0).
	Bridge string `json:"bridge,omitempty"`
	// Master is the node's uplink (default: the interface holding the node's
	// primary IP, found on the bridge once it exists).
	Master string `json:"master,omitempty"`
	// IPAMDSocket is vnet-ipamd's socket (default DefaultSocketPath): an
	// absolute path of at most MaxSocketPath bytes.
	IPAMDSocket string `json:"ipamdSocket,omitempty"`
	// MTU of the bridge and the veths (default: the master's).
	MTU int `json:"mtu,omitempty"`
	// SNATExclusions are destinations that pods reach without SNAT (default:
	// the VNet address space from vnet-ipamd), IPv4 CIDRs, at most
	// MaxSNATExclusions.
	SNATExclusions []string `json:"snatExclusions,omitempty"`
	// LogFile receives one JSON line per call (default: stderr, which the
	// runtime records).
	LogFile string `json:"logFile,omitempty"`
	// LogLevel is debug, info, warn or error (default info).
	LogLevel string `json:"logLevel,omitempty"`
	// IPAMDTimeout bounds an ADD's wait for an address (default 10s); DEL,
	// CHECK and STATUS use at most 2s.
	IPAMDTimeout string `json:"ipamdTimeout,omitempty"`
	// ReleaseSpool is where a DEL records a release that vnet-ipamd could not
	// take (it was unreachable); the daemon finishes them (default
	// DefaultReleaseSpool when the key is missing). The daemon always writes
	// the key: an empty value is its "no spool".
	ReleaseSpool string `json:"releaseSpool"`
	// LockDir holds the lock that serialises first-time bridge set-up
	// (default DefaultLockDir).
	LockDir string `json:"lockDir,omitempty"`
	// VNetCIDRs is the VNet's address space as vnet-ipamd wrote it into the
	// conflist; with it, ADD sets the node up while the address is on its
	// way. Without it, ADD waits for the address, whose answer carries them.
	VNetCIDRs []string `json:"vnetCIDRs,omitempty"`
	// ManagedNode says that vnet-ipamd keeps the node's datapath (the
	// bridge and the nftables tables): it set them up before it wrote the
	// conflist and repairs them when they change. ADD then leaves the node
	// alone unless the pod cannot be added without it. Without the key,
	// every ADD makes sure of the node.
	ManagedNode bool `json:"managedNode,omitempty"`
	// AllowMetadata lets pods reach the instance metadata service
	// (169.254.169.254); by default their packets to it are dropped.
	AllowMetadata bool `json:"allowMetadata,omitempty"`
}

// PluginEntry is vnet-cni's entry in the conflist the daemon writes: the
// plugin's type and its keys.
type PluginEntry struct {
	Type string `json:"type"`
	PluginConf
}

// Conflist is the CNI network configuration list the daemon writes when the
// node is ready. Plugins holds vnet-cni's PluginEntry first, then the
// plugins chained after it, each a value that marshals to its entry.
type Conflist struct {
	CNIVersion string `json:"cniVersion"`
	Name       string `json:"name"`
	Plugins    []any  `json:"plugins"`
}
