// Package aws is vnet-cni's AWS provider: the node's identity from IMDSv2,
// its ENIs and their secondary private addresses through the
// aws-sdk-go-v2 EC2 client, the life cycle of the extra ENIs the pool needs
// (create, attach, detach, delete, and a sweep of the ones dead nodes
// leaked), and credentials from the instance role. Against the simulated
// EC2 only the endpoints and the CA differ.
//
// The package is named after its directory, as cloud/azure is; inside it
// the SDK's own aws package is imported as awssdk.
package aws

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"net/url"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/credentials/ec2rolecreds"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/vnet-cni/vnet-cni/cloud"
	"github.com/vnet-cni/vnet-cni/internal/cabundle"
)

// DefaultIMDSEndpoint is EC2's instance metadata service.
const DefaultIMDSEndpoint = "http://169.254.169.254"

// Defaults of Config.
const (
	DefaultCallTimeout   = 30 * time.Second
	DefaultMaxAttempts   = 3
	DefaultMaxBackoff    = 5 * time.Second
	DefaultAttachTimeout = time.Minute
	DefaultPollInterval  = 250 * time.Millisecond
	DefaultSweepGrace    = 10 * time.Minute
	// MaxAttempts bounds Config.MaxAttempts: more retries per call only
	// deepen a throttling storm.
	MaxAttempts = 10
)

// Config configures the provider. Zero fields take the defaults.
type Config struct {
	// ClusterName names the cluster in the tags of the ENIs vnet-cni
	// creates (required); Sweep only ever deletes ENIs tagged with it.
	ClusterName string
	// Region is the EC2 region (default: IMDS's placement/region).
	Region string
	// EC2Endpoint, if set, replaces the SDK's regional EC2 endpoint (an
	// https URL: a VPC endpoint, a proxy, the simulated EC2).
	EC2Endpoint string
	// CAFile, if set, is a PEM bundle trusted for the EC2 endpoint besides
	// the system roots (a private CA: a proxy, the simulated EC2).
	CAFile string
	// IMDSEndpoint is the instance metadata service (default
	// DefaultIMDSEndpoint). Only IMDSv2 is used.
	IMDSEndpoint string
	// StaticCredentials, if set, are used instead of the instance role's
	// (for tools on a host that is not the instance).
	StaticCredentials *StaticCredentials
	// CallTimeout bounds every EC2 and IMDS call, the SDK's retries
	// included (default 30s).
	CallTimeout time.Duration
	// MaxAttempts is the SDK's standard retryer's attempts per call, the
	// first included (default 3, at most MaxAttempts). The daemon backs off
	// by error kind on top of it.
	MaxAttempts int
	// MaxBackoff bounds the SDK's delay between attempts (default 5s).
	MaxBackoff time.Duration
	// AttachTimeout bounds the wait for an ENI to become attached or
	// detached (default 1m).
	AttachTimeout time.Duration
	// PollInterval is the first delay between reads while waiting for an
	// attachment to change; it doubles up to 8 times as much (default 250ms).
	PollInterval time.Duration
	// SweepGrace is how old an ENI must be before Sweep deletes it (default
	// 10m): EC2 is eventually consistent, and a just-launched instance may
	// not be listed yet.
	SweepGrace time.Duration
	Logger     *slog.Logger
}

// StaticCredentials are AWS credentials given by value.
type StaticCredentials struct {
	AccessKeyID, SecretAccessKey string
	// SessionToken is set for temporary credentials.
	SessionToken string
}

var clusterNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// withDefaults returns cfg with defaults set, or the list of what is wrong
// with it.
func (cfg Config) withDefaults() (Config, error) {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	switch {
	case cfg.ClusterName == "":
		bad("ClusterName", "must be set (it tags the ENIs vnet-cni creates)")
	case !clusterNameRE.MatchString(cfg.ClusterName):
		bad("ClusterName", "%q: want 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit", cfg.ClusterName)
	}
	if cfg.Region != "" && !regionRE.MatchString(cfg.Region) {
		bad("Region", "%q is not an AWS region name", cfg.Region)
	}
	if cfg.EC2Endpoint != "" {
		if err := checkURL(cfg.EC2Endpoint, "https"); err != nil {
			bad("EC2Endpoint", "%v", err)
		}
	}
	if cfg.IMDSEndpoint == "" {
		cfg.IMDSEndpoint = DefaultIMDSEndpoint
	} else if err := checkURL(cfg.IMDSEndpoint, "http", "https"); err != nil {
		bad("IMDSEndpoint", "%v", err)
	}
	if c := cfg.StaticCredentials; c != nil && (c.AccessKeyID == "" || c.SecretAccessKey == "") {
		bad("StaticCredentials", "need both an access key id and a secret access key")
	}
	for _, d := range []struct {
		field string
		v     *time.Duration
		def   time.Duration
	}{
		{"CallTimeout", &cfg.CallTimeout, DefaultCallTimeout},
		{"MaxBackoff", &cfg.MaxBackoff, DefaultMaxBackoff},
		{"AttachTimeout", &cfg.AttachTimeout, DefaultAttachTimeout},
		{"PollInterval", &cfg.PollInterval, DefaultPollInterval},
		{"SweepGrace", &cfg.SweepGrace, DefaultSweepGrace},
	} {
		switch {
		case *d.v < 0:
			bad(d.field, "%s is negative", *d.v)
		case *d.v == 0:
			*d.v = d.def
		}
	}
	switch {
	case cfg.MaxAttempts == 0:
		cfg.MaxAttempts = DefaultMaxAttempts
	case cfg.MaxAttempts < 1 || cfg.MaxAttempts > MaxAttempts:
		bad("MaxAttempts", "%d is outside 1..%d", cfg.MaxAttempts, MaxAttempts)
	}
	if cfg.PollInterval > cfg.AttachTimeout {
		bad("PollInterval", "%s is longer than AttachTimeout %s", cfg.PollInterval, cfg.AttachTimeout)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if err := errors.Join(errs...); err != nil {
		return cfg, fmt.Errorf("aws: invalid config: %w", err)
	}
	return cfg, nil
}

// checkURL accepts an absolute URL with one of schemes, a host, and no
// user, query or fragment.
func checkURL(s string, schemes ...string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("%q is not a URL: %w", s, err)
	}
	okScheme := false
	for _, sc := range schemes {
		okScheme = okScheme || u.Scheme == sc
	}
	switch {
	case !okScheme:
		return fmt.Errorf("%q: the scheme must be %v", s, schemes)
	case u.Host == "":
		return fmt.Errorf("%q has no host", s)
	case u.User != nil || u.RawQuery != "" || u.Fragment != "":
		return fmt.Errorf("%q must not carry a user, a query or a fragment", s)
	}
	return nil
}

// Provider manages the ENIs of the node's instance and their secondary
// addresses. Its methods may be called concurrently.
type Provider struct {
	cfg    Config
	log    *slog.Logger
	ec2    *ec2.Client
	node   identity
	name   string
	limits cloud.Limits
	// hints are the throttle hints of the two classes of EC2's buckets:
	// Describe* calls, and mutations. A successful describe says nothing
	// about the mutation buckets.
	hints [2]throttleHint

	// lifecycle serialises AddInterface, RemoveInterface and Instance's
	// repair of what a crashed AddInterface left behind.
	lifecycle sync.Mutex

	mu sync.Mutex
	// subnets caches subnet CIDRs by subnet id.
	subnets map[string]netip.Prefix
	// managed are the ENIs the provider last reported or attached.
	managed map[string]bool
	// repair asks Instance to look for leftovers of an AddInterface that
	// did not finish: at start (the process may have crashed) and after a
	// roll-back that failed.
	repair bool
}

// New discovers the node (IMDSv2, then the instance and its type through
// EC2) and returns a provider for it. IMDS errors are Transient (IMDS may
// not be up yet) unless IMDS answered nonsense (Fatal); EC2 errors are
// classified.
func New(ctx context.Context, cfg Config) (*Provider, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	md := imds.New(imds.Options{
		Endpoint:          cfg.IMDSEndpoint,
		EnableFallback:    awssdk.FalseTernary,
		ClientEnableState: imds.ClientEnabled,
	})
	ictx, cancel := context.WithTimeout(ctx, cfg.CallTimeout)
	node, err := readIdentity(ictx, md)
	cancel()
	if err != nil {
		kind := cloud.Transient
		var bad *badMetadataError
		if errors.As(err, &bad) {
			kind = cloud.Fatal
		}
		return nil, &cloud.Error{Kind: kind, Op: "IMDS", Err: err}
	}
	region := cfg.Region
	if region == "" {
		region = node.Region
	}
	var creds awssdk.CredentialsProvider
	if c := cfg.StaticCredentials; c != nil {
		creds = credentials.NewStaticCredentialsProvider(c.AccessKeyID, c.SecretAccessKey, c.SessionToken)
	} else {
		creds = ec2rolecreds.New(func(o *ec2rolecreds.Options) { o.Client = md })
	}
	opts := []func(*config.LoadOptions) error{
		config.WithRegion(region),
		config.WithCredentialsProvider(awssdk.NewCredentialsCache(creds)),
		config.WithRetryer(func() awssdk.Retryer {
			return retry.NewStandard(func(o *retry.StandardOptions) {
				o.MaxAttempts = cfg.MaxAttempts
				o.MaxBackoff = cfg.MaxBackoff
				// RequestLimitExceeded is not retried within the call: the
				// provider's throttle hint (growing, jittered, shared by the
				// calls of a bucket class) paces the next one. The SDK's
				// quick in-call retries only tripled the requests an
				// account's empty bucket refuses (TestAWSBurst at 150
				// nodes: 2,620 throttled describes, 17 per node).
				o.Retryables = append([]retry.IsErrorRetryable{retry.IsErrorRetryableFunc(notThrottle)}, o.Retryables...)
			})
		}),
	}
	if cfg.CAFile != "" {
		if _, err := cabundle.Load(cfg.CAFile); err != nil {
			return nil, fmt.Errorf("aws: %w", err)
		}
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("aws: %w", err)
		}
		opts = append(opts, config.WithCustomCABundle(bytes.NewReader(pem)))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("aws: sdk config: %w", err)
	}
	p := &Provider{
		cfg: cfg,
		log: cfg.Logger,
		ec2: ec2.NewFromConfig(awsCfg, func(o *ec2.Options) {
			if cfg.EC2Endpoint != "" {
				o.BaseEndpoint = awssdk.String(cfg.EC2Endpoint)
			}
		}),
		node:    node,
		subnets: map[string]netip.Prefix{node.SubnetID: node.Subnet},
		managed: map[string]bool{node.ENIID: true},
		repair:  true,
	}
	if err := p.discover(ctx); err != nil {
		return nil, err
	}
	return p, nil
}

// discover reads the instance (its private DNS name; the call also proves
// the credentials) and its type's limits, which are cached: a running
// instance does not change type.
func (p *Provider) discover(ctx context.Context) error {
	out, err := call(ctx, p, "DescribeInstances", func(ctx context.Context) (*ec2.DescribeInstancesOutput, error) {
		return p.ec2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{p.node.InstanceID}})
	})
	if err != nil {
		return err
	}
	var inst *types.Instance
	for _, r := range out.Reservations {
		for i := range r.Instances {
			if awssdk.ToString(r.Instances[i].InstanceId) == p.node.InstanceID {
				inst = &r.Instances[i]
			}
		}
	}
	if inst == nil {
		return &cloud.Error{Kind: cloud.Fatal, Op: "DescribeInstances", Err: fmt.Errorf("instance %s is not listed", p.node.InstanceID)}
	}
	p.name = awssdk.ToString(inst.PrivateDnsName)
	if t := string(inst.InstanceType); t != p.node.InstanceType {
		return &cloud.Error{Kind: cloud.Fatal, Op: "DescribeInstances",
			Err: fmt.Errorf("instance %s is a %s, imds says %s", p.node.InstanceID, t, p.node.InstanceType)}
	}
	its, err := call(ctx, p, "DescribeInstanceTypes", func(ctx context.Context) (*ec2.DescribeInstanceTypesOutput, error) {
		return p.ec2.DescribeInstanceTypes(ctx, &ec2.DescribeInstanceTypesInput{InstanceTypes: []types.InstanceType{types.InstanceType(p.node.InstanceType)}})
	})
	if err != nil {
		return err
	}
	p.limits, err = parseLimits(p.node.InstanceType, its.InstanceTypes)
	if err != nil {
		return &cloud.Error{Kind: cloud.Fatal, Op: "DescribeInstanceTypes", Err: err}
	}
	p.log.Info("found the node's instance", "instance", p.node.InstanceID, "type", p.node.InstanceType,
		"region", p.node.Region, "zone", p.node.AvailabilityZone, "eni", p.node.ENIID, "subnet", p.node.SubnetID,
		"maxENIs", p.limits.Interfaces, "addressesPerENI", p.limits.AddressesPerInterface)
	return nil
}

// parseLimits reads the ENI limits of instance type name.
func parseLimits(name string, infos []types.InstanceTypeInfo) (cloud.Limits, error) {
	for _, it := range infos {
		if string(it.InstanceType) != name {
			continue
		}
		if it.NetworkInfo == nil {
			return cloud.Limits{}, fmt.Errorf("instance type %s has no network info", name)
		}
		l := cloud.Limits{
			Interfaces:            int(awssdk.ToInt32(it.NetworkInfo.MaximumNetworkInterfaces)),
			AddressesPerInterface: int(awssdk.ToInt32(it.NetworkInfo.Ipv4AddressesPerInterface)),
		}
		if l.Interfaces < 1 || l.AddressesPerInterface < 1 {
			return cloud.Limits{}, fmt.Errorf("instance type %s allows %d ENIs of %d addresses", name, l.Interfaces, l.AddressesPerInterface)
		}
		return l, nil
	}
	return cloud.Limits{}, fmt.Errorf("instance type %s is not described", name)
}

// call runs one EC2 action with the CallTimeout deadline (the SDK's
// retries included) and classifies its error; a throttled call asks for
// the provider's growing delay.
func call[T any](ctx context.Context, p *Provider, op string, f func(context.Context) (T, error)) (T, error) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.CallTimeout)
	defer cancel()
	hint := p.hint(op)
	out, err := f(ctx)
	if err == nil {
		hint.succeeded()
		return out, nil
	}
	ce := classify(op, err)
	if ce.Kind == cloud.Throttled && ce.RetryAfter == 0 {
		ce.RetryAfter = hint.throttled()
	}
	var zero T
	return zero, ce
}

// hint returns the throttle hint of op's bucket class.
func (p *Provider) hint(op string) *throttleHint {
	if strings.HasPrefix(op, "Describe") {
		return &p.hints[0]
	}
	return &p.hints[1]
}
