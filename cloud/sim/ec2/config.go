package ec2

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"
)

// Defaults applied by New to zero fields of Config.
const (
	DefaultRegion             = "us-east-1"
	DefaultAccountID          = "123456789012"
	DefaultRole               = "vnet-cni-node"
	DefaultAttachDelay        = time.Second
	DefaultDetachDelay        = time.Second
	DefaultMetadataDelay      = 500 * time.Millisecond
	DefaultCredentialLifetime = 6 * time.Hour
	// MaxClockSkew is how far a request's X-Amz-Date may be from the
	// server's clock (EC2 answers RequestExpired beyond it).
	MaxClockSkew = 5 * time.Minute
	// MaxIPsUnattached caps the private addresses of an ENI that is not
	// attached; attached ENIs are capped by their instance type.
	MaxIPsUnattached = 50
)

// InstanceType is the part of an instance type that matters to ENIs.
type InstanceType struct {
	// MaxENIs is NetworkInfo.MaximumNetworkInterfaces.
	MaxENIs int `json:"maxENIs"`
	// IPv4PerENI is NetworkInfo.Ipv4AddressesPerInterface, the primary
	// address included.
	IPv4PerENI int `json:"ipv4PerENI"`
}

// InstanceTypes are the instance types known without configuration, with
// EC2's published limits.
func InstanceTypes() map[string]InstanceType {
	return map[string]InstanceType{
		"t3.small":   {MaxENIs: 3, IPv4PerENI: 4},
		"t3.medium":  {MaxENIs: 3, IPv4PerENI: 6},
		"t3.large":   {MaxENIs: 3, IPv4PerENI: 12},
		"m5.large":   {MaxENIs: 3, IPv4PerENI: 10},
		"m5.xlarge":  {MaxENIs: 4, IPv4PerENI: 15},
		"m5.2xlarge": {MaxENIs: 4, IPv4PerENI: 15},
		"m5.4xlarge": {MaxENIs: 8, IPv4PerENI: 30},
		"c5.large":   {MaxENIs: 3, IPv4PerENI: 10},
	}
}

// Config describes the simulated account: one region, one VPC with its
// subnets and a set of running instances, each with its primary ENI.
type Config struct {
	Region, AccountID string
	VPCID             string
	VPCCIDRs          []netip.Prefix
	Subnets           []SubnetSpec
	Instances         []InstanceSpec
	// InstanceTypes adds to or replaces entries of InstanceTypes().
	InstanceTypes map[string]InstanceType
	// Role is the instance profile role of every instance (default
	// "vnet-cni-node").
	Role string
	// AttachDelay is how long an attachment stays "attaching" (default 1s);
	// DetachDelay how long it stays "detaching" (default 1s).
	AttachDelay, DetachDelay time.Duration
	// MetadataDelay is how long a new private address takes to appear in
	// IMDS's local-ipv4s (default 500ms; negative = at once).
	MetadataDelay time.Duration
	// CredentialLifetime is the lifetime of role credentials (default 6h).
	CredentialLifetime time.Duration
	// StaticCredentials, when set, are accepted besides the role's (for
	// tools on the host).
	StaticCredentials *StaticCredentials
	// Throttle configures the per-action token buckets; zero fields take
	// the defaults.
	Throttle Throttle
	// Faults are the faults active from the start.
	Faults Faults
	Logger *slog.Logger
}

// SubnetSpec is a subnet of the VPC.
type SubnetSpec struct {
	ID               string
	CIDR             netip.Prefix
	AvailabilityZone string
}

// InstanceSpec is a running instance created at start with its primary ENI
// (device 0) holding Primary.
type InstanceSpec struct {
	ID, Type, SubnetID string
	// ENIID is the primary ENI's id ("" = generated).
	ENIID   string
	MAC     net.HardwareAddr
	Primary netip.Addr
}

// StaticCredentials are long-term credentials (no session token).
type StaticCredentials struct {
	AccessKeyID, SecretAccessKey string
}

// withDefaults returns a copy of cfg with defaults set and validates it.
func (cfg Config) withDefaults() (Config, error) {
	if cfg.Region == "" {
		cfg.Region = DefaultRegion
	}
	if cfg.AccountID == "" {
		cfg.AccountID = DefaultAccountID
	}
	if cfg.Role == "" {
		cfg.Role = DefaultRole
	}
	if cfg.AttachDelay == 0 {
		cfg.AttachDelay = DefaultAttachDelay
	}
	if cfg.DetachDelay == 0 {
		cfg.DetachDelay = DefaultDetachDelay
	}
	if cfg.MetadataDelay == 0 {
		cfg.MetadataDelay = DefaultMetadataDelay
	}
	if cfg.CredentialLifetime == 0 {
		cfg.CredentialLifetime = DefaultCredentialLifetime
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	types := InstanceTypes()
	for k, v := range cfg.InstanceTypes {
		types[k] = v
	}
	cfg.InstanceTypes = types
	cfg.Throttle = cfg.Throttle.withDefaults()
	return cfg, cfg.validate()
}

func (cfg Config) validate() error {
	var errs []error
	if !strings.HasPrefix(cfg.VPCID, "vpc-") {
		errs = append(errs, fmt.Errorf("vpc id %q does not start with vpc-", cfg.VPCID))
	}
	if len(cfg.VPCCIDRs) == 0 {
		errs = append(errs, errors.New("vpc has no cidr blocks"))
	}
	for _, p := range cfg.VPCCIDRs {
		if !p.IsValid() || !p.Addr().Is4() || p.Masked() != p {
			errs = append(errs, fmt.Errorf("vpc cidr %s is not a canonical IPv4 prefix", p))
		}
	}
	if cfg.AttachDelay < 0 || cfg.DetachDelay < 0 || cfg.CredentialLifetime < 0 {
		errs = append(errs, errors.New("attach and detach delays and credential lifetime must not be negative"))
	}
	for name, it := range cfg.InstanceTypes {
		if it.MaxENIs < 1 || it.IPv4PerENI < 1 {
			errs = append(errs, fmt.Errorf("instance type %s: limits must be at least 1", name))
		}
	}
	subnets := map[string]netip.Prefix{}
	for _, s := range cfg.Subnets {
		switch {
		case !strings.HasPrefix(s.ID, "subnet-"):
			errs = append(errs, fmt.Errorf("subnet id %q does not start with subnet-", s.ID))
		case !s.CIDR.IsValid() || !s.CIDR.Addr().Is4() || s.CIDR.Masked() != s.CIDR || s.CIDR.Bits() > 28:
			errs = append(errs, fmt.Errorf("subnet %s: %s is not a canonical IPv4 prefix of /28 or larger", s.ID, s.CIDR))
		case !insideAny(cfg.VPCCIDRs, s.CIDR):
			errs = append(errs, fmt.Errorf("subnet %s: %s is outside the vpc", s.ID, s.CIDR))
		}
		for id, p := range subnets {
			if p.Overlaps(s.CIDR) {
				errs = append(errs, fmt.Errorf("subnet %s overlaps subnet %s", s.ID, id))
			}
		}
		subnets[s.ID] = s.CIDR
	}
	ids := map[string]bool{}
	addrs := map[netip.Addr]bool{}
	for _, in := range cfg.Instances {
		switch {
		case !strings.HasPrefix(in.ID, "i-") || ids[in.ID]:
			errs = append(errs, fmt.Errorf("instance id %q is invalid or used twice", in.ID))
		case cfg.InstanceTypes[in.Type] == InstanceType{}:
			errs = append(errs, fmt.Errorf("instance %s: unknown instance type %q", in.ID, in.Type))
		case len(in.MAC) != 6:
			errs = append(errs, fmt.Errorf("instance %s: mac %q is not a 6-byte address", in.ID, in.MAC))
		case in.ENIID != "" && !strings.HasPrefix(in.ENIID, "eni-"):
			errs = append(errs, fmt.Errorf("instance %s: eni id %q does not start with eni-", in.ID, in.ENIID))
		}
		ids[in.ID] = true
		p, ok := subnets[in.SubnetID]
		switch {
		case !ok:
			errs = append(errs, fmt.Errorf("instance %s: unknown subnet %q", in.ID, in.SubnetID))
		case !usable(p, in.Primary) || addrs[in.Primary]:
			errs = append(errs, fmt.Errorf("instance %s: primary %s is not a free usable address of %s", in.ID, in.Primary, p))
		}
		addrs[in.Primary] = true
	}
	if err := cfg.Throttle.validate(); err != nil {
		errs = append(errs, err)
	}
	if err := cfg.Faults.validate(); err != nil {
		errs = append(errs, fmt.Errorf("faults: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("invalid ec2 config: %w", err)
	}
	return nil
}

func insideAny(vpc []netip.Prefix, s netip.Prefix) bool {
	for _, p := range vpc {
		if p.Bits() <= s.Bits() && p.Contains(s.Addr()) {
			return true
		}
	}
	return false
}
