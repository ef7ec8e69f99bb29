package aws

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/google/go-cmp/cmp"

	"github.com/vnet-cni/vnet-cni/cloud"
	ec2sim "github.com/vnet-cni/vnet-cni/cloud/sim/ec2"
)

var addrCmp = cmp.Comparer(func(a, b netip.Addr) bool { return a == b })
var prefixCmp = cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })

// TestDiscovery: an m5.large found through IMDSv2 and EC2 with the
// instance role's credentials: 3 ENIs of 10 addresses, the VPC's CIDRs;
// the limits are read once.
func TestDiscovery(t *testing.T) {
	e := newEnv(t, nil)
	c := e.count("DescribeInstanceTypes", "DescribeInstances")
	p := e.provider(t, e.config(node0))
	var in cloud.Instance
	for range 3 {
		var err error
		if in, err = p.Instance(ctxT(t)); err != nil {
			t.Fatal(err)
		}
	}
	want := cloud.Instance{
		Provider: "aws",
		ID:       node0,
		Name:     "ip-10-0-0-10.us-east-1.compute.internal",
		Interfaces: []cloud.Interface{{
			ID: eni0, MAC: "0e000000000a", DeviceIndex: 0, Primary: true,
			PrimaryIP: netip.MustParseAddr("10.0.0.10"),
			Subnet:    netip.MustParsePrefix("10.0.0.0/24"), SubnetID: mainSubnet, Gateway: netip.MustParseAddr("10.0.0.1"),
		}},
		NetworkPrefixes: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16"), netip.MustParsePrefix("10.1.0.0/16")},
		Limits:          cloud.Limits{Interfaces: 3, AddressesPerInterface: 10},
	}
	if d := cmp.Diff(want, in, addrCmp, prefixCmp); d != "" {
		t.Errorf("instance (-want +got):\n%s", d)
	}
	if got := in.Limits.Secondaries(3); got != 27 {
		t.Errorf("secondaries on 3 ENIs = %d, want 27", got)
	}
	if got := c.since(); got["DescribeInstanceTypes"] != 1 || got["DescribeInstances"] != 1 {
		t.Errorf("calls %v: want the instance and its type read once", got)
	}
}

// TestDiscoveryFails: without IMDS, with an untrusted endpoint, with bad
// credentials and with bad metadata, New fails with a clear error.
func TestDiscoveryFails(t *testing.T) {
	e := newEnv(t, nil)
	for _, tc := range []struct {
		name     string
		mutate   func(*Config)
		kind     cloud.Kind
		contains string
	}{
		{"no imds", func(c *Config) { c.IMDSEndpoint = "http://127.0.0.1:1"; c.CallTimeout = 3 * time.Second }, cloud.Transient, "imds: get instance-id"},
		{"untrusted ca", func(c *Config) { c.CAFile = "" }, cloud.Transient, "certificate"},
		{"signed for another region", func(c *Config) { c.Region = "eu-west-1" }, cloud.Fatal, "AuthFailure"},
		{"bad static credentials", func(c *Config) {
			c.StaticCredentials = &StaticCredentials{AccessKeyID: toolKey, SecretAccessKey: "wrong"}
		}, cloud.Fatal, "AuthFailure"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := e.config(node0)
			tc.mutate(&cfg)
			_, err := New(ctxT(t), cfg)
			if err == nil {
				t.Fatal("New succeeded")
			}
			if cloud.KindOf(err) != tc.kind || !strings.Contains(err.Error(), tc.contains) {
				t.Errorf("error %v (kind %s), want kind %s mentioning %q", err, cloud.KindOf(err), tc.kind, tc.contains)
			}
		})
	}
	t.Run("imds of a terminated instance", func(t *testing.T) {
		e := newEnv(t, nil)
		if err := e.s.TerminateInstance(node1); err != nil {
			t.Fatal(err)
		}
		cfg := e.config(node1)
		cfg.CallTimeout = 3 * time.Second
		if _, err := New(ctxT(t), cfg); cloud.KindOf(err) != cloud.Transient || !strings.Contains(err.Error(), "imds: get instance-id") {
			t.Errorf("error %v, want a transient imds error", err)
		}
	})
	t.Run("static credentials work", func(t *testing.T) {
		cfg := e.config(node0)
		cfg.StaticCredentials = &StaticCredentials{AccessKeyID: toolKey, SecretAccessKey: toolSecret}
		if _, err := e.provider(t, cfg).Instance(ctxT(t)); err != nil {
			t.Fatal(err)
		}
	})
}

func TestConfigValidation(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*Config)
		want   string // "" = valid
	}{
		{"minimal", func(*Config) {}, ""},
		{"no cluster", func(c *Config) { c.ClusterName = "" }, "ClusterName: must be set"},
		{"bad cluster", func(c *Config) { c.ClusterName = "a b" }, "ClusterName"},
		{"long cluster", func(c *Config) { c.ClusterName = strings.Repeat("a", 129) }, "ClusterName"},
		{"bad region", func(c *Config) { c.Region = "Mars" }, "Region"},
		{"http ec2 endpoint", func(c *Config) { c.EC2Endpoint = "http://ec2.example" }, "EC2Endpoint"},
		{"ec2 endpoint with query", func(c *Config) { c.EC2Endpoint = "https://ec2.example/?a=b" }, "EC2Endpoint"},
		{"bad imds endpoint", func(c *Config) { c.IMDSEndpoint = "169.254.169.254" }, "IMDSEndpoint"},
		{"half static credentials", func(c *Config) { c.StaticCredentials = &StaticCredentials{AccessKeyID: "x"} }, "StaticCredentials"},
		{"negative timeout", func(c *Config) { c.CallTimeout = -time.Second }, "CallTimeout"},
		{"too many attempts", func(c *Config) { c.MaxAttempts = 11 }, "MaxAttempts"},
		{"poll longer than attach", func(c *Config) { c.PollInterval = time.Hour }, "PollInterval"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{ClusterName: "c1"}
			tc.mutate(&cfg)
			got, err := cfg.withDefaults()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("valid config refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error %v, want one naming %q", err, tc.want)
			case tc.want == "":
				if got.IMDSEndpoint != DefaultIMDSEndpoint || got.CallTimeout != DefaultCallTimeout || got.MaxAttempts != DefaultMaxAttempts || got.SweepGrace != DefaultSweepGrace {
					t.Errorf("defaults not set: %+v", got)
				}
			}
		})
	}
	if _, err := New(ctxT(t), Config{}); err == nil || !strings.Contains(err.Error(), "ClusterName") {
		t.Errorf("New without a cluster name: %v", err)
	}
	if _, err := New(ctxT(t), Config{ClusterName: "c", CAFile: "/nonexistent"}); err == nil {
		t.Error("New with a missing CA file succeeded")
	}
}

// TestAddAndRemoveAddresses: one call each way; Instance shows the
// result; removing what is gone costs no mutation; the primary stays.
func TestAddAndRemoveAddresses(t *testing.T) {
	e := newEnv(t, nil)
	p := e.provider(t, e.config(node0))
	ctx := ctxT(t)
	c := e.count("AssignPrivateIpAddresses")
	added, err := p.AddAddresses(ctx, eni0, 4)
	if err != nil {
		t.Fatal(err)
	}
	if n := c.since()["AssignPrivateIpAddresses"]; n != 1 {
		t.Errorf("AddAddresses(4) made %d calls, want 1", n)
	}
	if len(added) != 4 || !slices.IsSortedFunc(added, netip.Addr.Compare) {
		t.Fatalf("added %v, want 4 sorted addresses", added)
	}
	in, err := p.Instance(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(added, in.Interfaces[0].Secondary, addrCmp); d != "" {
		t.Errorf("Instance's secondaries (-added +got):\n%s", d)
	}
	for _, ip := range added {
		if !in.Interfaces[0].Subnet.Contains(ip) || ip == in.Interfaces[0].PrimaryIP {
			t.Errorf("address %s is not a secondary of the subnet", ip)
		}
	}

	// Two of them, one that is not there and the primary: one call drops
	// exactly the two.
	c = e.count("UnassignPrivateIpAddresses")
	drop := []netip.Addr{added[0], added[2], netip.MustParseAddr("10.0.0.200"), netip.MustParseAddr("10.0.0.10")}
	if err := p.RemoveAddresses(ctx, eni0, drop); err != nil {
		t.Fatal(err)
	}
	if n := c.since()["UnassignPrivateIpAddresses"]; n != 1 {
		t.Errorf("RemoveAddresses made %d calls, want 1", n)
	}
	st, _ := e.eniState(eni0)
	if d := cmp.Diff([]netip.Addr{netip.MustParseAddr("10.0.0.10"), added[1], added[3]}, st.IPs, addrCmp); d != "" {
		t.Errorf("ENI's addresses after removal (-want +got):\n%s", d)
	}
	// All gone already: no mutation.
	c = e.count("UnassignPrivateIpAddresses")
	if err := p.RemoveAddresses(ctx, eni0, added[:1]); err != nil {
		t.Fatal(err)
	}
	// An ENI that no longer exists holds none.
	if err := p.RemoveAddresses(ctx, "eni-00000000000000gone", added[:1]); err != nil {
		t.Errorf("removing from a deleted ENI: %v", err)
	}
	if n := c.since()["UnassignPrivateIpAddresses"]; n != 0 {
		t.Errorf("removing absent addresses made %d calls, want 0", n)
	}
}

// TestNICLimit: an m5.large ENI holds 10 addresses; the 10th secondary is
// refused with NICLimit, in one call (the SDK does not retry a 400).
func TestNICLimit(t *testing.T) {
	e := newEnv(t, nil)
	p := e.provider(t, e.config(node0))
	ctx := ctxT(t)
	if _, err := p.AddAddresses(ctx, eni0, 9); err != nil {
		t.Fatalf("9 secondaries should fit: %v", err)
	}
	c := e.count("AssignPrivateIpAddresses")
	_, err := p.AddAddresses(ctx, eni0, 1)
	var ce *cloud.Error
	if !errors.As(err, &ce) || ce.Kind != cloud.NICLimit || ce.Code != codeIPLimitExceeded || ce.Op != "AssignPrivateIpAddresses" || ce.Message == "" {
		t.Fatalf("error %v, want nic_limit (PrivateIpAddressLimitExceeded) from AssignPrivateIpAddresses with EC2's message", err)
	}
	if n := c.since()["AssignPrivateIpAddresses"]; n != 1 {
		t.Errorf("%d calls for a refused assignment, want 1", n)
	}
}

// TestRestoreAddresses: addresses removed behind the provider's back come
// back by value in one call; an address another ENI holds fails all of
// them with AddressInUse; too many fail before any call.
func TestRestoreAddresses(t *testing.T) {
	e := newEnv(t, nil)
	p := e.provider(t, e.config(node0))
	ctx := ctxT(t)
	added, err := p.AddAddresses(ctx, eni0, 4)
	if err != nil {
		t.Fatal(err)
	}
	unassign := func(ips ...netip.Addr) {
		t.Helper()
		var s []string
		for _, ip := range ips {
			s = append(s, ip.String())
		}
		if _, err := e.admin.UnassignPrivateIpAddresses(ctx, &ec2.UnassignPrivateIpAddressesInput{NetworkInterfaceId: awssdk.String(eni0), PrivateIpAddresses: s}); err != nil {
			t.Fatal(err)
		}
	}
	unassign(added[0], added[1])
	c := e.count("AssignPrivateIpAddresses")
	if err := p.RestoreAddresses(ctx, eni0, added); err != nil {
		t.Fatalf("RestoreAddresses: %v", err)
	}
	if n := c.since()["AssignPrivateIpAddresses"]; n != 1 {
		t.Errorf("restoring 2 addresses made %d calls, want 1", n)
	}
	st, _ := e.eniState(eni0)
	if len(st.IPs) != 5 {
		t.Errorf("ENI holds %v, want the primary and all 4", st.IPs)
	}
	c = e.count("AssignPrivateIpAddresses")
	if err := p.RestoreAddresses(ctx, eni0, added); err != nil {
		t.Fatal(err)
	}
	if n := c.since()["AssignPrivateIpAddresses"]; n != 0 {
		t.Errorf("restoring addresses already there made %d calls, want 0", n)
	}

	// node1's ENI takes one of them meanwhile.
	unassign(added[2], added[3])
	if _, err := e.admin.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: awssdk.String(eni1), PrivateIpAddresses: []string{added[3].String()}}); err != nil {
		t.Fatal(err)
	}
	err = p.RestoreAddresses(ctx, eni0, added[2:])
	var ce *cloud.Error
	if !errors.As(err, &ce) || ce.Kind != cloud.AddressInUse || ce.Code != codeAddressInUse {
		t.Fatalf("restore of an address node1 holds: %v, want address_in_use (InvalidIPAddress.InUse)", err)
	}
	st, _ = e.eniState(eni0)
	if slices.Contains(st.IPs, added[2]) {
		t.Errorf("%s was put back although the call failed (not all or nothing)", added[2])
	}
	if st1, _ := e.eniState(eni1); !slices.Contains(st1.IPs, added[3]) {
		t.Errorf("the restore took %s from node1 (AllowReassignment must be off)", added[3])
	}
	if err := p.RestoreAddresses(ctx, eni0, added[2:3]); err != nil {
		t.Errorf("restore of the free one alone: %v", err)
	}

	// The primary and 3 on the ENI; 7 more would make 11 of 10.
	c = e.count("AssignPrivateIpAddresses")
	var many []netip.Addr
	for i := range 7 {
		many = append(many, netip.AddrFrom4([4]byte{10, 0, 0, byte(100 + i)}))
	}
	if err := p.RestoreAddresses(ctx, eni0, many); cloud.KindOf(err) != cloud.NICLimit {
		t.Errorf("restore beyond the ENI's limit: %v, want nic_limit", err)
	}
	if n := c.since()["AssignPrivateIpAddresses"]; n != 0 {
		t.Errorf("a restore beyond the limit made %d calls, want 0", n)
	}
}

// TestOtherInterfaceRefused: another instance's ENI, and an ENI attached
// here by someone else, are refused without a mutation.
func TestOtherInterfaceRefused(t *testing.T) {
	e := newEnv(t, nil)
	p := e.provider(t, e.config(node0))
	ctx := ctxT(t)
	foreign := e.createENI(t, nil)
	e.attachENI(t, foreign, node0, 1)
	mutations := e.count("AssignPrivateIpAddresses", "UnassignPrivateIpAddresses")
	ip := []netip.Addr{netip.MustParseAddr("10.0.0.99")}
	for _, id := range []string{eni1, foreign} {
		if _, err := p.AddAddresses(ctx, id, 1); cloud.KindOf(err) != cloud.Fatal {
			t.Errorf("add to %s: %v, want fatal", id, err)
		}
		if err := p.RemoveAddresses(ctx, id, ip); cloud.KindOf(err) != cloud.Fatal {
			t.Errorf("remove from %s: %v, want fatal", id, err)
		}
		if err := p.RestoreAddresses(ctx, id, ip); cloud.KindOf(err) != cloud.Fatal {
			t.Errorf("restore on %s: %v, want fatal", id, err)
		}
	}
	for a, n := range mutations.since() {
		if n != 0 {
			t.Errorf("%d %s calls for refused requests", n, a)
		}
	}
	// The foreign ENI is not listed, but it takes one of the 3 slots.
	in, err := p.Instance(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(in.Interfaces) != 1 || in.Limits.Interfaces != 2 {
		t.Errorf("interfaces %d, limit %d: want the primary only and 2 slots for vnet-cni", len(in.Interfaces), in.Limits.Interfaces)
	}
}

// TestIPForwarding follows the ENI's source/destination check.
func TestIPForwarding(t *testing.T) {
	e := newEnv(t, nil)
	p := e.provider(t, e.config(node0))
	ctx := ctxT(t)
	in, err := p.Instance(ctx)
	if err != nil || in.Interfaces[0].IPForwarding {
		t.Fatalf("instance %+v, %v: want source/dest check on, no forwarding", in, err)
	}
	if _, err := e.admin.ModifyNetworkInterfaceAttribute(ctx, &ec2.ModifyNetworkInterfaceAttributeInput{
		NetworkInterfaceId: awssdk.String(eni0), SourceDestCheck: &types.AttributeBooleanValue{Value: awssdk.Bool(false)},
	}); err != nil {
		t.Fatal(err)
	}
	if in, err = p.Instance(ctx); err != nil || !in.Interfaces[0].IPForwarding {
		t.Fatalf("after disabling the check: %+v, %v: want forwarding", in.Interfaces, err)
	}
}

// TestThrottled: small buckets in the sim; the provider gets Throttled
// with a growing, jittered hint after one request per call: the SDK does
// not retry RequestLimitExceeded, the hint paces the next call (no storm).
func TestThrottled(t *testing.T) {
	e := newEnv(t, func(c *ec2sim.Config) {
		c.Throttle.Actions = map[string]ec2sim.Bucket{"AssignPrivateIpAddresses": {Size: 2, Refill: 0.001}}
	})
	cfg := e.config(node0)
	cfg.MaxAttempts = 3
	p := e.provider(t, cfg)
	ctx := ctxT(t)
	for range 2 {
		if _, err := p.AddAddresses(ctx, eni0, 1); err != nil {
			t.Fatal(err)
		}
	}
	var hints []time.Duration
	for i := range 2 {
		c := e.count("AssignPrivateIpAddresses")
		_, err := p.AddAddresses(ctx, eni0, 1)
		var ce *cloud.Error
		if !errors.As(err, &ce) || ce.Kind != cloud.Throttled || ce.Code != codeRequestLimitExceeded {
			t.Fatalf("call %d: %v, want throttled (RequestLimitExceeded)", i, err)
		}
		hints = append(hints, ce.RetryAfter)
		if n := c.since()["AssignPrivateIpAddresses"]; n != 1 {
			t.Errorf("a throttled call made %d requests, want 1 (MaxAttempts is 3, RequestLimitExceeded is not retried)", n)
		}
	}
	if hints[0] < baseThrottleHint/2 || hints[0] > baseThrottleHint || hints[1] < baseThrottleHint || hints[1] > 2*baseThrottleHint {
		t.Errorf("hints %v: want one in [0.5s, 1s], then one in [1s, 2s]", hints)
	}
	// Describes have their own buckets; their success does not end the
	// mutations' streak.
	if _, err := p.Instance(ctx); err != nil {
		t.Fatal(err)
	}
	_, err := p.AddAddresses(ctx, eni0, 1)
	if d := cloud.RetryAfterOf(err); cloud.KindOf(err) != cloud.Throttled || d < 2*baseThrottleHint || d > 4*baseThrottleHint {
		t.Errorf("third throttled call: %v (hint %s), want throttled with a hint in [2s, 4s]", err, d)
	}

	// A storm: every action throttled; each provider call stays bounded.
	e.s.SetFaults(ec2sim.Faults{Storm: &ec2sim.Storm{Duration: ec2sim.Duration(time.Minute)}})
	c := e.count("DescribeNetworkInterfaces")
	if _, err := p.Instance(ctx); cloud.KindOf(err) != cloud.Throttled {
		t.Fatalf("Instance in a storm: %v, want throttled", err)
	}
	if n := c.since()["DescribeNetworkInterfaces"]; n != 1 {
		t.Errorf("Instance in a storm made %d requests, want 1", n)
	}
}

// TestTransientAndRetried: a 5xx is retried by the SDK up to MaxAttempts
// and surfaces as Transient.
func TestTransientAndRetried(t *testing.T) {
	e := newEnv(t, nil)
	p := e.provider(t, e.config(node0))
	e.s.SetFaults(ec2sim.Faults{Errors: map[string]ec2sim.ErrorFault{"AssignPrivateIpAddresses": {Rate: 1, Status: 500, Code: "InternalError"}}})
	c := e.count("AssignPrivateIpAddresses")
	_, err := p.AddAddresses(ctxT(t), eni0, 1)
	var ce *cloud.Error
	if !errors.As(err, &ce) || ce.Kind != cloud.Transient || ce.Code != "InternalError" {
		t.Fatalf("error %v, want transient InternalError", err)
	}
	if n := c.since()["AssignPrivateIpAddresses"]; n != DefaultMaxAttempts {
		t.Errorf("%d requests, want %d", n, DefaultMaxAttempts)
	}
}
