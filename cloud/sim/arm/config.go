package arm

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
	DefaultOperationDuration = time.Second
	DefaultPollInterval      = time.Second
	DefaultTokenLifetime     = time.Hour
	DefaultTenantID          = "5e1a7c0d-0000-4000-8000-0000000000e1"
	// DefaultMaxRoutes is Azure's default number of routes per route table
	// (1000 since 2026; 400 before, and still in older subscriptions).
	DefaultMaxRoutes = 1000
	// MaxIPConfigsPerNIC is Azure's limit of ipConfigurations per network
	// interface.
	MaxIPConfigsPerNIC = 256
)

// Config describes the simulated subscription: one resource group with one
// virtual network, one subnet, one route table associated with the subnet
// and a set of network interfaces.
type Config struct {
	SubscriptionID, ResourceGroup, Location string
	VNetName                                string
	VNetPrefixes                            []netip.Prefix
	SubnetName                              string
	Subnet                                  netip.Prefix
	// RouteTableName is created empty at start and associated with the
	// subnet (Server.SetSubnetRouteTable changes the association).
	RouteTableName string
	// NICs are created at start, each with one primary Static ipConfiguration
	// named "ipconfig1".
	NICs []NICSpec
	// OperationDuration is how long a long-running operation reports
	// InProgress (default 1s).
	OperationDuration time.Duration
	// PollInterval is advertised on long-running operation responses: as
	// Retry-After in whole seconds when it is at least one second, else as
	// retry-after-ms (default 1s).
	PollInterval time.Duration
	// Throttle configures the per-subscription token buckets; zero fields take
	// Azure's defaults.
	Throttle Throttle
	// StaticToken is a bearer token accepted in addition to issued ones
	// ("" = none).
	StaticToken string
	// TokenLifetime is the lifetime of tokens from IssueToken (default 1h).
	TokenLifetime time.Duration
	// TenantID is the Entra ID tenant (default DefaultTenantID) whose
	// ServicePrincipals sign in at the server's Entra ID endpoint.
	TenantID          string
	ServicePrincipals []ServicePrincipal
	// MaxRoutes caps the routes of one route table (default 1000, Azure's
	// default per route table since 2026; older subscriptions have 400).
	MaxRoutes int
	// RouteEffectDelay is how long after a route table's change succeeded
	// (the PUT's operation Succeeded) the fabric follows it: ARM answers
	// before the routes are programmed in the hosts, as Azure does. Zero
	// means at once. Snapshot reports the effective routes.
	RouteEffectDelay time.Duration
	// Faults are the faults active from the start.
	Faults Faults
	Logger *slog.Logger
}

// NICSpec is a network interface created at start.
type NICSpec struct {
	Name, VMName string
	MAC          net.HardwareAddr
	Primary      netip.Addr
	// TemplateIPs is the number of secondary ipConfigurations the NIC is
	// created with, dynamic ones named ipconfig2, ipconfig3, …, as a
	// cluster template's ipAddressCount creates them (acs-engine's ARM
	// template); they take the lowest free addresses of the subnet.
	TemplateIPs int
}

// Throttle holds the sizes and refill rates (tokens per second) of the
// per-subscription token buckets for reads, writes and deletes.
type Throttle struct {
	ReadBucket, WriteBucket, DeleteBucket int
	ReadRefill, WriteRefill, DeleteRefill float64
}

// withDefaults fills zero fields with Azure's documented limits: reads 250
// refilled at 25/s, writes and deletes 200 refilled at 10/s.
func (t Throttle) withDefaults() Throttle {
	if t.ReadBucket == 0 {
		t.ReadBucket = 250
	}
	if t.ReadRefill == 0 {
		t.ReadRefill = 25
	}
	if t.WriteBucket == 0 {
		t.WriteBucket = 200
	}
	if t.WriteRefill == 0 {
		t.WriteRefill = 10
	}
	if t.DeleteBucket == 0 {
		t.DeleteBucket = 200
	}
	if t.DeleteRefill == 0 {
		t.DeleteRefill = 10
	}
	return t
}

// withDefaults returns a copy of cfg with defaults set and validates it.
func (cfg Config) withDefaults() (Config, error) {
	if cfg.OperationDuration == 0 {
		cfg.OperationDuration = DefaultOperationDuration
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = DefaultPollInterval
	}
	if cfg.TenantID == "" {
		cfg.TenantID = DefaultTenantID
	}
	if cfg.TokenLifetime == 0 {
		cfg.TokenLifetime = DefaultTokenLifetime
	}
	if cfg.MaxRoutes == 0 {
		cfg.MaxRoutes = DefaultMaxRoutes
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.Throttle = cfg.Throttle.withDefaults()
	return cfg, cfg.validate()
}

func (cfg Config) validate() error {
	var errs []error
	for name, v := range map[string]string{
		"subscription id": cfg.SubscriptionID, "resource group": cfg.ResourceGroup,
		"location": cfg.Location, "vnet name": cfg.VNetName, "subnet name": cfg.SubnetName,
		"route table name": cfg.RouteTableName,
	} {
		if v == "" {
			errs = append(errs, fmt.Errorf("%s is empty", name))
		} else if strings.ContainsAny(v, "/?#") {
			errs = append(errs, fmt.Errorf("%s %q contains a reserved character", name, v))
		}
	}
	if cfg.OperationDuration < 0 || cfg.PollInterval < time.Millisecond || cfg.TokenLifetime < 0 {
		errs = append(errs, errors.New("operation duration, poll interval (at least 1ms) and token lifetime must be positive"))
	}
	if cfg.MaxRoutes < 0 {
		errs = append(errs, fmt.Errorf("max routes %d is negative", cfg.MaxRoutes))
	}
	t := cfg.Throttle
	if t.ReadBucket < 0 || t.WriteBucket < 0 || t.DeleteBucket < 0 || t.ReadRefill < 0 || t.WriteRefill < 0 || t.DeleteRefill < 0 {
		errs = append(errs, errors.New("throttle buckets and refill rates must not be negative"))
	}
	if len(cfg.VNetPrefixes) == 0 {
		errs = append(errs, errors.New("vnet has no address prefixes"))
	}
	for _, p := range cfg.VNetPrefixes {
		if !p.IsValid() || !p.Addr().Is4() || p.Masked() != p {
			errs = append(errs, fmt.Errorf("vnet prefix %s is not a canonical IPv4 prefix", p))
		}
	}
	errs = append(errs, cfg.validateSubnet()...)
	errs = append(errs, cfg.validateNICs()...)
	if err := cfg.Faults.validate(); err != nil {
		errs = append(errs, fmt.Errorf("faults: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("invalid arm config: %w", err)
	}
	return nil
}

func (cfg Config) validateSubnet() []error {
	s := cfg.Subnet
	if !s.IsValid() || !s.Addr().Is4() || s.Masked() != s {
		return []error{fmt.Errorf("subnet %s is not a canonical IPv4 prefix", s)}
	}
	if s.Bits() > 29 {
		return []error{fmt.Errorf("subnet %s is smaller than /29, the smallest Azure allows", s)}
	}
	for _, p := range cfg.VNetPrefixes {
		if p.Bits() <= s.Bits() && p.Contains(s.Addr()) {
			return nil
		}
	}
	return []error{fmt.Errorf("subnet %s is outside the vnet address space", s)}
}

func (cfg Config) validateNICs() []error {
	var errs []error
	names := map[string]bool{}
	addrs := map[netip.Addr]bool{}
	macs := map[string]bool{}
	template := 0
	for _, n := range cfg.NICs {
		key := strings.ToLower(n.Name)
		switch {
		case n.Name == "" || strings.ContainsAny(n.Name, "/?#"):
			errs = append(errs, fmt.Errorf("nic name %q is invalid", n.Name))
		case names[key]:
			errs = append(errs, fmt.Errorf("nic %s is listed twice", n.Name))
		}
		names[key] = true
		if len(n.MAC) != 6 {
			errs = append(errs, fmt.Errorf("nic %s: mac %q is not a 6-byte address", n.Name, n.MAC))
		} else if macs[n.MAC.String()] {
			errs = append(errs, fmt.Errorf("nic %s: mac %s is used twice", n.Name, n.MAC))
		}
		macs[n.MAC.String()] = true
		if !usable(cfg.Subnet, n.Primary) {
			errs = append(errs, fmt.Errorf("nic %s: primary %s is not a usable address of subnet %s", n.Name, n.Primary, cfg.Subnet))
		} else if addrs[n.Primary] {
			errs = append(errs, fmt.Errorf("nic %s: primary %s is used twice", n.Name, n.Primary))
		}
		addrs[n.Primary] = true
		if n.TemplateIPs < 0 || n.TemplateIPs > MaxIPConfigsPerNIC-1 {
			errs = append(errs, fmt.Errorf("nic %s: %d template ipConfigurations is outside 0-%d", n.Name, n.TemplateIPs, MaxIPConfigsPerNIC-1))
		}
		template += max(n.TemplateIPs, 0)
	}
	// Five addresses of a subnet are Azure's; the primaries take one each.
	if room := cfg.Subnet.Masked().Addr().BitLen() - cfg.Subnet.Bits(); room < 30 && template > 0 {
		if usableCount := 1<<room - 5 - len(cfg.NICs); template > usableCount {
			errs = append(errs, fmt.Errorf("%d template ipConfigurations do not fit in subnet %s (%d addresses left after the primaries)",
				template, cfg.Subnet, usableCount))
		}
	}
	return errs
}
