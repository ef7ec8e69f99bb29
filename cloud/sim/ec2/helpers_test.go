package ec2

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials/ec2rolecreds"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/smithy-go"

	"github.com/vnet-cni/vnet-cni/cloud/sim/ec2imds"
	"github.com/vnet-cni/vnet-cni/cloud/sim/simca"
)

const (
	node0       = "i-0000000000000000a" // m5.large, 10.0.0.10
	node1       = "i-0000000000000000b" // t3.medium, 10.0.0.11
	mainSubnet  = "subnet-0000000000000main"
	smallSubnet = "subnet-000000000000small" // a /28: 11 usable addresses
)

func testConfig() Config {
	return Config{
		VPCID:    "vpc-00000000000000sim",
		VPCCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")},
		Subnets: []SubnetSpec{
			{ID: mainSubnet, CIDR: netip.MustParsePrefix("10.0.0.0/24"), AvailabilityZone: "us-east-1a"},
			{ID: smallSubnet, CIDR: netip.MustParsePrefix("10.0.1.0/28"), AvailabilityZone: "us-east-1a"},
		},
		Instances: []InstanceSpec{
			{ID: node0, Type: "m5.large", SubnetID: mainSubnet, MAC: net.HardwareAddr{0x0e, 0, 0, 0, 0, 0x0a}, Primary: netip.MustParseAddr("10.0.0.10")},
			{ID: node1, Type: "t3.medium", SubnetID: mainSubnet, MAC: net.HardwareAddr{0x0e, 0, 0, 0, 0, 0x0b}, Primary: netip.MustParseAddr("10.0.0.11")},
		},
		AttachDelay:   150 * time.Millisecond,
		DetachDelay:   100 * time.Millisecond,
		MetadataDelay: -1,
	}
}

// env is a simulated EC2 behind HTTPS with the sim's own CA, node0's IMDSv2,
// and the real SDK configured as vnet-ipamd on node0 would be.
type env struct {
	s       *Server
	ca      *simca.CA
	url     string
	imdsURL string
	imds    *imds.Client
	cfg     aws.Config
	ec2     *ec2.Client
}

func newEnv(t *testing.T, mutate func(*Config), opts ...func(*config.LoadOptions) error) *env {
	t.Helper()
	cfg := testConfig()
	if mutate != nil {
		mutate(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ca, err := simca.New("ec2 test ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg, err := ca.ServerConfig("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewUnstartedServer(s.Handler())
	ts.TLS = tlsCfg
	ts.StartTLS()
	md := httptest.NewServer(ec2imds.NewHandler(s.IMDS(node0)))
	t.Cleanup(func() {
		ts.Close()
		md.Close()
		s.Close()
	})
	e := &env{s: s, ca: ca, url: ts.URL, imdsURL: md.URL}
	e.imds = imds.New(imds.Options{Endpoint: md.URL, EnableFallback: aws.FalseTernary})
	load := append([]func(*config.LoadOptions) error{
		config.WithRegion(s.Region()),
		config.WithCustomCABundle(bytes.NewReader(ca.PEM())),
		config.WithCredentialsProvider(aws.NewCredentialsCache(ec2rolecreds.New(func(o *ec2rolecreds.Options) {
			o.Client = e.imds
		}))),
	}, opts...)
	e.cfg, err = config.LoadDefaultConfig(context.Background(), load...)
	if err != nil {
		t.Fatalf("LoadDefaultConfig: %v", err)
	}
	e.ec2 = e.client(e.cfg)
	return e
}

// client is an EC2 client of awsCfg pointed at the simulator.
func (e *env) client(awsCfg aws.Config, opts ...func(*ec2.Options)) *ec2.Client {
	return ec2.NewFromConfig(awsCfg, append([]func(*ec2.Options){func(o *ec2.Options) {
		o.BaseEndpoint = aws.String(e.url)
	}}, opts...)...)
}

func ctxT(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// wantCode fails unless err is an EC2 API error with code and HTTP status.
func wantCode(t *testing.T, err error, code string, status int) {
	t.Helper()
	var ae smithy.APIError
	if !errors.As(err, &ae) {
		t.Fatalf("error = %v, want API error %s", err, code)
	}
	if ae.ErrorCode() != code {
		t.Fatalf("error code = %s (%v), want %s", ae.ErrorCode(), err, code)
	}
	var re *awshttp.ResponseError
	if !errors.As(err, &re) || re.HTTPStatusCode() != status {
		t.Fatalf("error %v: want HTTP status %d", err, status)
	}
}

// waitFor polls cond every 20ms until it holds or 5s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func noErr(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
