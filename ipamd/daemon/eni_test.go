package daemon

import (
	"context"
	"fmt"
	"net"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vnet-cni/vnet-cni/cloud/aws"
	ec2sim "github.com/vnet-cni/vnet-cni/cloud/sim/ec2"
	"github.com/vnet-cni/vnet-cni/cloud/sim/ec2imds"
	"github.com/vnet-cni/vnet-cni/cloud/sim/simca"
	"github.com/vnet-cni/vnet-cni/ipamd/api"
)

// The AWS provider attaches interfaces and sweeps.
var (
	_ InterfaceCloud = (*aws.Provider)(nil)
	_ Sweeper        = (*aws.Provider)(nil)
)

const (
	awsNode = "i-00000000000000d01"
	awsENI0 = "eni-00000000000000d01"
)

// newAWSHarness is a daemon on an m5.large of a simulated EC2 (3 ENIs of
// 10 addresses each), through the real AWS provider over HTTPS and IMDSv2.
func newAWSHarness(t *testing.T, opts Options) (*harness, *ec2sim.Server) {
	t.Helper()
	s, err := ec2sim.New(ec2sim.Config{
		VPCID:    "vpc-00000000000000d01",
		VPCCIDRs: []netip.Prefix{netip.MustParsePrefix("10.4.0.0/16")},
		Subnets:  []ec2sim.SubnetSpec{{ID: "subnet-0000000000000d01", CIDR: netip.MustParsePrefix("10.4.0.0/24"), AvailabilityZone: "us-east-1a"}},
		Instances: []ec2sim.InstanceSpec{{ID: awsNode, Type: "m5.large", SubnetID: "subnet-0000000000000d01", ENIID: awsENI0,
			MAC: net.HardwareAddr{0x0e, 0, 0, 0, 0xd0, 0x01}, Primary: netip.MustParseAddr("10.4.0.10")}},
		AttachDelay: 50 * time.Millisecond, DetachDelay: 30 * time.Millisecond, MetadataDelay: -1,
	})
	if err != nil {
		t.Fatal(err)
	}
	ts, caFile := serveEC2(t, s)
	md := httptest.NewServer(ec2imds.NewHandler(s.IMDS(awsNode)))
	t.Cleanup(md.Close)
	cfg := aws.Config{
		ClusterName: "daemon-test", EC2Endpoint: ts.URL, CAFile: caFile, IMDSEndpoint: md.URL,
		CallTimeout: 10 * time.Second, MaxBackoff: 20 * time.Millisecond, AttachTimeout: 5 * time.Second,
		PollInterval: 10 * time.Millisecond,
	}
	h := &harness{t: t, opts: opts, connect: func(ctx context.Context) (Cloud, error) { return aws.New(ctx, cfg) }}
	h.start(t.TempDir())
	return h, s
}

// nodeENIs are the ENIs of the node (attached or not) with their number of
// secondary addresses.
func nodeENIs(s *ec2sim.Server) map[string]int {
	out := map[string]int{}
	for _, e := range s.Snapshot().ENIs {
		if e.InstanceID == awsNode || e.ID != awsENI0 {
			out[e.ID] = len(e.IPs) - 1
		}
	}
	return out
}

// TestPoolOverENIs: on an m5.large the pool fills the primary ENI, then
// attaches a second and a third, up to 27 addresses (3 × 9 secondaries);
// the 28th pod is told the limit; when the pods are gone the pool shrinks
// to its warm target on the primary ENI and detaches and deletes the ENIs
// it added.
func TestPoolOverENIs(t *testing.T) {
	h, s := newAWSHarness(t, Options{Targets: targets(4, 0, 40, 4, 300*time.Millisecond),
		Cooldown: 100 * time.Millisecond, AllocateWait: 3 * time.Second, ResyncInterval: time.Second})
	st := h.waitFor("ready on the primary ENI", 20*time.Second, func(s api.StatusResponse) bool { return s.Ready && s.Pool.Free >= 4 })
	if st.Pool.Max != 27 {
		t.Errorf("pool max = %d, want 27 (3 ENIs × 9 secondaries)", st.Pool.Max)
	}
	if got := nodeENIs(s); len(got) != 1 {
		t.Errorf("ENIs at start = %v, want the primary only", got)
	}
	byENI := map[string]int{}
	for i := range 27 {
		a, err := h.allocate(fmt.Sprintf("pod-%02d", i))
		if err != nil {
			t.Fatalf("allocation %d of 27: %v", i+1, err)
		}
		byENI[a.Interface]++
	}
	if len(byENI) != 3 || byENI[awsENI0] != 9 {
		t.Errorf("assignments by ENI = %v, want 9 on each of 3, the primary filled first", byENI)
	}
	for id, n := range nodeENIs(s) {
		if n != 9 {
			t.Errorf("ENI %s holds %d secondaries, want 9", id, n)
		}
	}
	_, err := h.allocate("pod-28")
	if !api.IsTryAgain(err) || !strings.Contains(err.Error(), "limit") {
		t.Errorf("28th allocation: %v, want TryAgain naming the limit", err)
	}
	attaches := s.Stats().Calls["AttachNetworkInterface"]["200"]
	if attaches != 2 {
		t.Errorf("%d attachments, want 2", attaches)
	}

	for i := range 27 {
		if _, err := h.client.Release(t.Context(), api.ReleaseRequest{ContainerID: fmt.Sprintf("pod-%02d", i), IfName: "eth0"}); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		enis := nodeENIs(s)
		st := h.status()
		if len(enis) == 1 && enis[awsENI0] == st.Pool.Total && st.Pool.Free == st.Pool.Total && st.Pool.Total <= 4+3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the pool did not shrink onto the primary ENI: ENIs %v, pool %+v", enis, st.Pool)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := s.Stats().Calls["DeleteNetworkInterface"]["200"]; got != 2 {
		t.Errorf("%d ENIs deleted, want the 2 the daemon added", got)
	}
	// Growing again attaches again.
	for i := range 12 {
		if _, err := h.allocate(fmt.Sprintf("again-%02d", i)); err != nil {
			t.Fatalf("allocation %d after the shrink: %v", i+1, err)
		}
	}
	if got := len(nodeENIs(s)); got != 2 {
		t.Errorf("%d ENIs for 12 pods, want 2", got)
	}
}

// serveEC2 serves the simulated EC2 s over TLS with a CA of its own, until
// the test ends (s is closed then too), and returns the server and the CA
// file to trust.
func serveEC2(t *testing.T, s *ec2sim.Server) (*httptest.Server, string) {
	t.Helper()
	ca, err := simca.New("daemon aws test ca", time.Hour)
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
	t.Cleanup(func() {
		ts.Close()
		s.Close()
	})
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, ca.PEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	return ts, caFile
}
