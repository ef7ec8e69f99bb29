package aws

import (
	"bytes"
	"context"
	"io"
	"log"
	"net"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	ec2sim "github.com/vnet-cni/vnet-cni/cloud/sim/ec2"
	"github.com/vnet-cni/vnet-cni/cloud/sim/ec2imds"
	"github.com/vnet-cni/vnet-cni/cloud/sim/simca"
	"github.com/vnet-cni/vnet-cni/ipamd/daemon"
)

// The provider is what the daemon calls.
var _ daemon.Cloud = (*Provider)(nil)

const (
	node0      = "i-0000000000000000a" // m5.large, 10.0.0.10
	node1      = "i-0000000000000000b" // m5.large, 10.0.0.11
	eni0       = "eni-0000000000000000a"
	eni1       = "eni-0000000000000000b"
	mainSubnet = "subnet-0000000000000main"
	vpcID      = "vpc-00000000000000sim"
	cluster    = "test-cluster"
	// Host-tool credentials the simulated EC2 accepts.
	toolKey    = "AKIAVNETCNITESTTOOL0"
	toolSecret = "tool-secret"
)

// env is a simulated EC2 behind HTTPS with its own CA, an IMDSv2 per
// instance on loopback, and a plain SDK client for arranging what the
// provider then finds (as another actor would).
type env struct {
	s      *ec2sim.Server
	url    string
	caFile string
	imds   map[string]string // instance id -> IMDS URL
	admin  *ec2.Client
}

func simConfig() ec2sim.Config {
	return ec2sim.Config{
		VPCID:    vpcID,
		VPCCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16"), netip.MustParsePrefix("10.1.0.0/16")},
		Subnets: []ec2sim.SubnetSpec{
			{ID: mainSubnet, CIDR: netip.MustParsePrefix("10.0.0.0/24"), AvailabilityZone: "us-east-1a"},
		},
		Instances: []ec2sim.InstanceSpec{
			{ID: node0, Type: "m5.large", SubnetID: mainSubnet, ENIID: eni0, MAC: net.HardwareAddr{0x0e, 0, 0, 0, 0, 0x0a}, Primary: netip.MustParseAddr("10.0.0.10")},
			{ID: node1, Type: "m5.large", SubnetID: mainSubnet, ENIID: eni1, MAC: net.HardwareAddr{0x0e, 0, 0, 0, 0, 0x0b}, Primary: netip.MustParseAddr("10.0.0.11")},
		},
		AttachDelay:       60 * time.Millisecond,
		DetachDelay:       40 * time.Millisecond,
		MetadataDelay:     -1,
		StaticCredentials: &ec2sim.StaticCredentials{AccessKeyID: toolKey, SecretAccessKey: toolSecret},
	}
}

func newEnv(t *testing.T, mutate func(*ec2sim.Config)) *env {
	t.Helper()
	cfg := simConfig()
	if mutate != nil {
		mutate(&cfg)
	}
	s, err := ec2sim.New(cfg)
	if err != nil {
		t.Fatalf("sim: %v", err)
	}
	ca, err := simca.New("aws provider test ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg, err := ca.ServerConfig("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewUnstartedServer(s.Handler())
	ts.TLS = tlsCfg
	ts.Config.ErrorLog = log.New(io.Discard, "", 0) // the untrusted-CA test's handshakes
	ts.StartTLS()
	e := &env{s: s, url: ts.URL, imds: map[string]string{}}
	var mds []*httptest.Server
	for _, in := range cfg.Instances {
		md := httptest.NewServer(ec2imds.NewHandler(s.IMDS(in.ID)))
		mds = append(mds, md)
		e.imds[in.ID] = md.URL
	}
	t.Cleanup(func() {
		ts.Close()
		for _, md := range mds {
			md.Close()
		}
		s.Close()
	})
	e.caFile = filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(e.caFile, ca.PEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	awsCfg, err := config.LoadDefaultConfig(context.Background(),
		config.WithRegion(s.Region()),
		config.WithCustomCABundle(bytes.NewReader(ca.PEM())),
		config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(toolKey, toolSecret, "")),
		config.WithRetryMaxAttempts(1))
	if err != nil {
		t.Fatal(err)
	}
	e.admin = ec2.NewFromConfig(awsCfg, func(o *ec2.Options) { o.BaseEndpoint = awssdk.String(e.url) })
	return e
}

// config is the provider's configuration on instance, with short waits.
func (e *env) config(instance string) Config {
	return Config{
		ClusterName:   cluster,
		EC2Endpoint:   e.url,
		CAFile:        e.caFile,
		IMDSEndpoint:  e.imds[instance],
		CallTimeout:   10 * time.Second,
		MaxBackoff:    20 * time.Millisecond,
		AttachTimeout: 5 * time.Second,
		PollInterval:  10 * time.Millisecond,
		SweepGrace:    time.Millisecond,
	}
}

func (e *env) provider(t *testing.T, cfg Config) *Provider {
	t.Helper()
	p, err := New(ctxT(t), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return p
}

// calls is the number of requests of an EC2 action the sim answered.
func (e *env) calls(action string) int {
	n := 0
	for _, c := range e.s.Stats().Calls[action] {
		n += c
	}
	return n
}

// counter remembers the calls of some actions at a point.
type counter struct {
	e    *env
	base map[string]int
}

func (e *env) count(actions ...string) *counter {
	c := &counter{e: e, base: map[string]int{}}
	for _, a := range actions {
		c.base[a] = e.calls(a)
	}
	return c
}

// since returns the calls of each counted action since count.
func (c *counter) since() map[string]int {
	out := map[string]int{}
	for a, n := range c.base {
		out[a] = c.e.calls(a) - n
	}
	return out
}

// eniState is the sim's committed state of one ENI, and whether it exists.
func (e *env) eniState(id string) (ec2sim.ENIState, bool) {
	for _, st := range e.s.Snapshot().ENIs {
		if st.ID == id {
			return st, true
		}
	}
	return ec2sim.ENIState{}, false
}

// enis are the ids of every ENI in the sim, sorted.
func (e *env) enis() []string {
	var ids []string
	for _, st := range e.s.Snapshot().ENIs {
		ids = append(ids, st.ID)
	}
	slices.Sort(ids)
	return ids
}

// describe reads one ENI with the admin client.
func (e *env) describe(t *testing.T, id string) types.NetworkInterface {
	t.Helper()
	out, err := e.admin.DescribeNetworkInterfaces(ctxT(t), &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{id}})
	if err != nil || len(out.NetworkInterfaces) != 1 {
		t.Fatalf("describe %s: %v", id, err)
	}
	return out.NetworkInterfaces[0]
}

// createENI creates an ENI in the main subnet with tags, as someone else.
func (e *env) createENI(t *testing.T, tags map[string]string) string {
	t.Helper()
	in := &ec2.CreateNetworkInterfaceInput{SubnetId: awssdk.String(mainSubnet)}
	if len(tags) > 0 {
		spec := types.TagSpecification{ResourceType: types.ResourceTypeNetworkInterface}
		for k, v := range tags {
			spec.Tags = append(spec.Tags, types.Tag{Key: awssdk.String(k), Value: awssdk.String(v)})
		}
		in.TagSpecifications = []types.TagSpecification{spec}
	}
	out, err := e.admin.CreateNetworkInterface(ctxT(t), in)
	if err != nil {
		t.Fatalf("create eni: %v", err)
	}
	return awssdk.ToString(out.NetworkInterface.NetworkInterfaceId)
}

// attachENI attaches id to instance at device as someone else and waits.
func (e *env) attachENI(t *testing.T, id, instance string, device int32) {
	t.Helper()
	_, err := e.admin.AttachNetworkInterface(ctxT(t), &ec2.AttachNetworkInterfaceInput{
		NetworkInterfaceId: awssdk.String(id), InstanceId: awssdk.String(instance), DeviceIndex: awssdk.Int32(device),
	})
	if err != nil {
		t.Fatalf("attach %s: %v", id, err)
	}
	waitFor(t, "attachment of "+id, func() bool {
		st, ok := e.eniState(id)
		return ok && st.InstanceID == instance
	})
}

// setDOT sets DeleteOnTermination of an attached ENI as someone else.
func (e *env) setDOT(t *testing.T, id string, on bool) {
	t.Helper()
	eni := e.describe(t, id)
	_, err := e.admin.ModifyNetworkInterfaceAttribute(ctxT(t), &ec2.ModifyNetworkInterfaceAttributeInput{
		NetworkInterfaceId: awssdk.String(id),
		Attachment:         &types.NetworkInterfaceAttachmentChanges{AttachmentId: eni.Attachment.AttachmentId, DeleteOnTermination: awssdk.Bool(on)},
	})
	if err != nil {
		t.Fatalf("set DeleteOnTermination of %s: %v", id, err)
	}
}

func ctxT(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// waitFor polls cond every 10ms until it holds or 5s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
