package daemon

import (
	"context"
	"fmt"
	"maps"
	"net"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vnet-cni/vnet-cni/cloud/aws"
	ec2sim "github.com/vnet-cni/vnet-cni/cloud/sim/ec2"
	"github.com/vnet-cni/vnet-cni/cloud/sim/ec2imds"
	"github.com/vnet-cni/vnet-cni/ipamd/api"
	"github.com/vnet-cni/vnet-cni/ipamd/config"
	"github.com/vnet-cni/vnet-cni/ipamd/store"
)

// burstNodes is the size of TestAWSBurst: VNET_AWS_BURST_NODES, else 30.
func burstNodes(t *testing.T) int {
	t.Helper()
	v := os.Getenv("VNET_AWS_BURST_NODES")
	if v == "" {
		return 30
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > 1000 {
		t.Fatalf("VNET_AWS_BURST_NODES=%q: want 1..1000", v)
	}
	return n
}

// mutations are the EC2 actions that take tokens from the mutation
// buckets (100, refilled at 5/s, one bucket per action) in a node's start.
var mutations = []string{"AssignPrivateIpAddresses", "CreateNetworkInterface", "AttachNetworkInterface", "ModifyNetworkInterfaceAttribute"}

// minThrottleWait is the least a node waits after a throttled request
// before its next request of the same class (mutations, describes): the
// provider's hint is at least half of 1 s (1 s doubled per throttled call
// in a row, jittered to [h/2, h]), the SDK does not retry
// RequestLimitExceeded within a call, and the daemon and the attachment
// wait both honour the hint.
const minThrottleWait = 500 * time.Millisecond

// TestAWSBurst: N control-plane-only nodes (m5.large, the product's
// default pool: warm 10 from an initial batch of 10, so each fills its
// primary ENI's 9 secondaries and attaches a second ENI) start at once
// against one simulated EC2 account with EC2's token buckets (mutations
// 100 per action, refilled at 5/s; describes 100, 20/s). Every node
// reaches its warm pool; the EC2 calls are counted by action and status,
// throttles included. There is no request storm: the successful mutations
// are exactly the five a node needs (two assignments, create, attach,
// DeleteOnTermination), and the throttled requests of each class
// (mutations, describes) stay within what the back-off allows: per node
// one per minThrottleWait of the burst. The time to warm is printed (p50,
// p90, max), never asserted.
func TestAWSBurst(t *testing.T) {
	n := burstNodes(t)
	cfg := ec2sim.Config{
		VPCID:       "vpc-000000000000b0000",
		VPCCIDRs:    []netip.Prefix{netip.MustParsePrefix("10.8.0.0/16")},
		Subnets:     []ec2sim.SubnetSpec{{ID: "subnet-00000000000b0000", CIDR: netip.MustParsePrefix("10.8.0.0/17"), AvailabilityZone: "us-east-1a"}},
		AttachDelay: time.Second, DetachDelay: time.Second, MetadataDelay: -1,
	}
	for i := range n {
		cfg.Instances = append(cfg.Instances, ec2sim.InstanceSpec{
			ID: fmt.Sprintf("i-%017x", 0xb0000+i), Type: "m5.large", SubnetID: cfg.Subnets[0].ID,
			ENIID: fmt.Sprintf("eni-%017x", 0xb0000+i),
			MAC:   net.HardwareAddr{0x0e, 0, 0xbb, 0, byte(i >> 8), byte(i)},
			// 10.8.1.0 onwards: clear of the addresses EC2 hands out first.
			Primary: netip.AddrFrom4([4]byte{10, 8, byte(1 + i/250), byte(4 + i%250)}),
		})
	}
	s, err := ec2sim.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts, caFile := serveEC2(t, s)

	// Every node: its own IMDS, the provider with the product's defaults
	// (only the endpoints and the CA are the sim's), a daemon with the
	// product's default pool.
	def := config.Default()
	type node struct {
		d     *Daemon
		warm  time.Duration
		ready bool
	}
	nodes := make([]*node, n)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	for i, in := range cfg.Instances {
		md := httptest.NewServer(ec2imds.NewHandler(s.IMDS(in.ID)))
		t.Cleanup(md.Close)
		pcfg := aws.Config{ClusterName: "burst", EC2Endpoint: ts.URL, CAFile: caFile, IMDSEndpoint: md.URL}
		st, err := store.Open(t.TempDir(), store.Options{Salvage: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = st.Close() })
		d, err := New(st, func(ctx context.Context) (Cloud, error) { return aws.New(ctx, pcfg) }, Options{
			Targets: def.PoolTargets(), InitialBatch: def.IPAddressCount, Cooldown: def.Cooldown.D(),
			AllocateWait: def.AllocateWait.D(), ResyncInterval: def.ResyncInterval.D(),
			NodeName: fmt.Sprintf("burst-%03d", i),
			Conflist: Conflist{Path: filepath.Join(t.TempDir(), "10-vnet-cni.conflist"), Data: []byte(`{"name":"vnet-cni"}`)},
		})
		if err != nil {
			t.Fatal(err)
		}
		nodes[i] = &node{d: d}
	}
	start := time.Now()
	for _, nd := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = nd.d.Run(ctx)
		}()
	}
	deadline := start.Add(10 * time.Minute)
	for left := n; left > 0; {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d nodes not warm after %v; EC2 calls %v", left, n, time.Since(start), s.Stats().Calls)
		}
		time.Sleep(100 * time.Millisecond)
		for _, nd := range nodes {
			if nd.ready {
				continue
			}
			st, err := nd.d.Status(ctx, api.StatusRequest{})
			if err == nil && st.Ready && st.Pool.Free >= def.WarmIPTarget {
				nd.ready, nd.warm = true, time.Since(start)
				left--
			}
		}
	}
	all := time.Since(start)
	stats := s.Stats()

	warm := make([]time.Duration, n)
	for i, nd := range nodes {
		warm[i] = nd.warm
	}
	slices.Sort(warm)
	pct := func(p float64) time.Duration { return warm[min(n-1, int(p*float64(n)))] }
	t.Logf("%d nodes warm (%d free addresses each) in %.1f s: time to warm p50 %.1f s, p90 %.1f s, max %.1f s",
		n, def.WarmIPTarget, all.Seconds(), pct(0.5).Seconds(), pct(0.9).Seconds(), warm[n-1].Seconds())
	var b strings.Builder
	for _, action := range slices.Sorted(maps.Keys(stats.Calls)) {
		byStatus := stats.Calls[action]
		total := 0
		for _, c := range byStatus {
			total += c
		}
		fmt.Fprintf(&b, "\n  %-32s %5d requests (%.2f per node) by status %v", action, total, float64(total)/float64(n), byStatus)
	}
	t.Logf("EC2 requests: %d, %d throttled (RequestLimitExceeded), %d errors%s", stats.Total, stats.Throttled, stats.Errors, b.String())

	// Exactly the mutations the pools need, and no storm around them: one
	// node makes at most one throttled request of a class per
	// minThrottleWait of the burst.
	throttled := map[bool]int{} // by describe
	for action, byStatus := range stats.Calls {
		throttled[strings.HasPrefix(action, "Describe")] += byStatus["503"]
	}
	for _, action := range mutations {
		ok := stats.Calls[action]["200"]
		want := n
		if action == "AssignPrivateIpAddresses" {
			want = 2 * n
		}
		if ok != want {
			t.Errorf("%s succeeded %d times for %d nodes, want %d per node", action, ok, n, want/n)
		}
	}
	perNode := int(all / minThrottleWait)
	t.Logf("throttled requests: %d mutations, %d describes (%.1f and %.1f per node); the back-off's bound in %.0f s: %d per node and class",
		throttled[false], throttled[true], float64(throttled[false])/float64(n), float64(throttled[true])/float64(n), all.Seconds(), perNode)
	for describe, c := range throttled {
		if c > n*perNode {
			t.Errorf("%d throttled requests (describes: %v) for %d nodes, more than the back-off allows (%d per node): a request storm", c, describe, n, perNode)
		}
	}
	for _, e := range s.Snapshot().ENIs {
		if e.InstanceID == "" {
			t.Errorf("eni %s is not attached: leaked by the burst", e.ID)
		}
	}
}
