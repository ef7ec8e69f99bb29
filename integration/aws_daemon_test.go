package integration

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	vaws "github.com/vnet-cni/vnet-cni/cloud/aws"
	"github.com/vnet-cni/vnet-cni/cloud/sim"
	ec2sim "github.com/vnet-cni/vnet-cni/cloud/sim/ec2"
	"github.com/vnet-cni/vnet-cni/integration/cluster"
	"github.com/vnet-cni/vnet-cni/internal/nsnet"
	"github.com/vnet-cni/vnet-cni/internal/nstest"
	"github.com/vnet-cni/vnet-cni/ipamd/api"
	ipamdconfig "github.com/vnet-cni/vnet-cni/ipamd/config"
)

// awsDaemonEnv is the real vnet-ipamd binary on every node of a simulated
// AWS region (EC2 over HTTPS, IMDSv2 inside each node's namespace, the
// fabric), with a host tool's EC2 client to check what the daemons did.
type awsDaemonEnv struct {
	sim     *sim.Sim
	desc    sim.Description
	simDir  string
	c       *cluster.Cluster
	ec2     *ec2.Client
	cluster string // the ENIs' cluster tag
}

// newAWSDaemonEnv starts a simulated AWS region of nodes instanceType
// instances whose attachments take attach, and prepares a vnet-ipamd per
// node (not started) with the AWS provider; hook adjusts each daemon's
// configuration.
func newAWSDaemonEnv(t *testing.T, nodes int, instanceType string, attach time.Duration, hook func(node string, c *ipamdconfig.Config)) *awsDaemonEnv {
	t.Helper()
	nstest.RequireRoot(t)
	dir := t.TempDir()
	prefix := nstest.Prefix(t)
	e := &awsDaemonEnv{simDir: filepath.Join(dir, "sim"), cluster: "it-" + prefix}
	s, err := sim.Start(context.Background(), sim.Options{
		Cloud: sim.CloudAWS, Nodes: nodes, InstanceType: instanceType, Prefix: prefix, Dir: e.simDir,
		OperationDuration: attach, MetadataDelay: -1,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close sim: %v", err)
		}
	})
	e.sim, e.desc = s, s.Description()
	c, err := cluster.New(e.desc, cluster.Options{
		Dir: filepath.Join(dir, "cluster"), BinDir: "../bin",
		IPAMD: func(node string, c *ipamdconfig.Config) {
			c.Cloud.Provider = ipamdconfig.ProviderAWS
			c.Cloud.AWS.ClusterName = e.cluster
			c.Cloud.AWS.EC2Endpoint = e.desc.EC2Endpoint
			c.Cloud.AWS.CAFile = e.desc.CAFile
			// Control plane only: no pods, so no datapath.
			c.NodeSetup = ipamdconfig.NodeSetupPlugin
			c.Mode = ipamdconfig.ModeRouted
			c.LogLevel = ipamdconfig.LogDebug
			if hook != nil {
				hook(node, c)
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	e.c = c
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range c.Nodes {
				if data, err := os.ReadFile(n.LogPath); err == nil {
					lines := strings.Split(strings.TrimSpace(string(data)), "\n")
					t.Logf("--- %s (last 30 lines)\n%s", n.LogPath, strings.Join(lines[max(0, len(lines)-30):], "\n"))
				}
			}
		}
		if err := c.Close(); err != nil {
			t.Errorf("close cluster: %v", err)
		}
	})
	ca, err := os.ReadFile(e.desc.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	st := e.desc.StaticCredentials
	cfg, err := config.LoadDefaultConfig(context.Background(), config.WithRegion(e.desc.Region),
		config.WithCustomCABundle(bytes.NewReader(ca)),
		config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(st.AccessKeyID, st.SecretAccessKey, "")))
	if err != nil {
		t.Fatal(err)
	}
	e.ec2 = ec2.NewFromConfig(cfg, func(o *ec2.Options) { o.BaseEndpoint = awssdk.String(e.desc.EC2Endpoint) })
	return e
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// enis lists the ENIs matching filters, as a host tool sees them.
func (e *awsDaemonEnv) enis(t *testing.T, filters ...types.Filter) []types.NetworkInterface {
	t.Helper()
	out, err := e.ec2.DescribeNetworkInterfaces(ctxFor(t, 10*time.Second), &ec2.DescribeNetworkInterfacesInput{Filters: filters})
	if err != nil {
		t.Fatalf("describe network interfaces: %v", err)
	}
	return out.NetworkInterfaces
}

func ec2Filter(name string, values ...string) types.Filter {
	return types.Filter{Name: awssdk.String(name), Values: values}
}

// ownENIs are the ENIs vnet-cni created for instance in this cluster, found
// by their tags as an operator (or the sweep) finds them.
func (e *awsDaemonEnv) ownENIs(t *testing.T, instance string) []types.NetworkInterface {
	t.Helper()
	return e.enis(t, ec2Filter("tag:"+vaws.TagCluster, e.cluster), ec2Filter("tag:"+vaws.TagCreatedBy, "vnet-cni"),
		ec2Filter("tag:"+vaws.TagInstance, instance))
}

// calls is the simulated EC2's count of action's answers with status.
func (e *awsDaemonEnv) calls(action, status string) int {
	return e.sim.EC2().Stats().Calls[action][status]
}

// checkNoDuplicates checks through EC2 that every address of the VPC is on
// one ENI only, and that each node's daemon holds exactly the secondary
// addresses of its instance's ENIs, each recorded on the ENI that holds it.
func (e *awsDaemonEnv) checkNoDuplicates(t *testing.T, nodes ...*cluster.Node) {
	t.Helper()
	owner := map[netip.Addr]string{}
	secondaries := map[string][]netip.Addr{} // instance -> its ENIs' secondaries
	for _, eni := range e.enis(t) {
		id := awssdk.ToString(eni.NetworkInterfaceId)
		for _, a := range eni.PrivateIpAddresses {
			ip := netip.MustParseAddr(awssdk.ToString(a.PrivateIpAddress))
			if other, dup := owner[ip]; dup {
				t.Errorf("address %s is on %s and on %s", ip, other, id)
			}
			owner[ip] = id
			if eni.Attachment != nil && !awssdk.ToBool(a.Primary) {
				inst := awssdk.ToString(eni.Attachment.InstanceId)
				secondaries[inst] = append(secondaries[inst], ip)
			}
		}
	}
	for _, n := range nodes {
		inst := e.instance(n.Name)
		err := nsnet.Eventually(15*time.Second, func() error {
			l, err := n.Client().List(ctxFor(t, 5*time.Second), api.ListRequest{})
			if err != nil {
				return err
			}
			var held []netip.Addr
			for _, a := range l.Addresses {
				if a.State == "releasing" {
					continue
				}
				held = append(held, a.IP)
				if owner[a.IP] != a.Interface {
					return fmt.Errorf("the daemon records %s on %s, EC2 has it on %q", a.IP, a.Interface, owner[a.IP])
				}
			}
			want := slices.Clone(secondaries[inst])
			slices.SortFunc(want, netip.Addr.Compare)
			slices.SortFunc(held, netip.Addr.Compare)
			if !slices.Equal(held, want) {
				return fmt.Errorf("the daemon holds %v, the instance's ENIs %v", held, want)
			}
			return nil
		})
		if err != nil {
			t.Errorf("node %s: %v", n.Name, err)
		}
	}
}

// own0 is the attachment of the only ENI in enis, nil if there is none.
func own0(enis []types.NetworkInterface) *types.NetworkInterfaceAttachment {
	if len(enis) != 1 {
		return nil
	}
	return enis[0].Attachment
}

// instance is the instance id of node.
func (e *awsDaemonEnv) instance(node string) string {
	for _, n := range e.desc.Nodes {
		if n.Name == node {
			return n.InstanceID
		}
	}
	return ""
}

// waitPool waits until the node's daemon is ready with at least free
// addresses.
func waitPool(t *testing.T, n *cluster.Node, free int, within time.Duration) {
	t.Helper()
	err := nsnet.Eventually(within, func() error {
		st, err := n.Status(context.Background())
		if err != nil {
			return err
		}
		if !st.Ready || st.Pool.Free < free {
			return fmt.Errorf("ready %v, pool %+v, reason %q, last cloud error %q", st.Ready, st.Pool, st.Reason, st.LastCloudError)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("node %s: %v", n.Name, err)
	}
}

// TestAWSKillDuringAttach: vnet-ipamd (the real binary) is killed -9
// while the second ENI of its t3.medium is being attached, first while
// EC2 holds the AttachNetworkInterface request (the sim's latency fault),
// then while the attachment is attaching. After each restart, EC2 shows
// one ENI of vnet-cni's for the instance (found by its tags, attached
// with DeleteOnTermination), every address on one ENI only, and the
// daemon's store exactly the instance's secondaries, each on its ENI; the
// attaching ENI was adopted, not created again. Killed while the pool
// shrinks and the ENI is detaching, the restarted daemon deletes it once
// it is available.
func TestAWSKillDuringAttach(t *testing.T) {
	// t3.medium: 3 ENIs of 6 addresses (5 secondaries); a warm target of 8
	// needs a second ENI.
	e := newAWSDaemonEnv(t, 2, "t3.medium", 2*time.Second, func(_ string, c *ipamdconfig.Config) {
		c.WarmIPTarget, c.MaxIPs, c.BatchSize, c.IPAddressCount = 8, 15, 5, 5
		c.ResyncInterval = ipamdconfig.Duration(2 * time.Second)
		c.ReleaseDelay = ipamdconfig.Duration(time.Second)
	})
	killAndRestart := func(t *testing.T, n *cluster.Node) {
		t.Helper()
		if err := n.StopIPAMD(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		if err := n.StartIPAMD(); err != nil {
			t.Fatal(err)
		}
		waitPool(t, n, 8, 60*time.Second)
	}
	checkOneENI := func(t *testing.T, n *cluster.Node) string {
		t.Helper()
		inst := e.instance(n.Name)
		var own []types.NetworkInterface
		err := nsnet.Eventually(10*time.Second, func() error {
			own = e.ownENIs(t, inst)
			if len(own) != 1 {
				return fmt.Errorf("%d ENIs of vnet-cni's for %s, want 1", len(own), inst)
			}
			a := own[0].Attachment
			if a == nil || a.Status != types.AttachmentStatusAttached || awssdk.ToString(a.InstanceId) != inst || !awssdk.ToBool(a.DeleteOnTermination) {
				return fmt.Errorf("eni %s attachment %+v, want attached to %s with DeleteOnTermination", awssdk.ToString(own[0].NetworkInterfaceId), a, inst)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("node %s: %v", n.Name, err)
		}
		if all := e.enis(t, ec2Filter("attachment.instance-id", inst)); len(all) != 2 {
			t.Errorf("node %s: %d ENIs attached, want the primary and vnet-cni's", n.Name, len(all))
		}
		return awssdk.ToString(own[0].NetworkInterfaceId)
	}

	t.Run("attach request held", func(t *testing.T) {
		n := e.c.Nodes[0]
		inst := e.instance(n.Name)
		e.sim.EC2().SetFaults(ec2sim.Faults{Latency: map[string]ec2sim.Duration{"AttachNetworkInterface": ec2sim.Duration(time.Minute)}})
		if err := n.StartIPAMD(); err != nil {
			t.Fatal(err)
		}
		if err := nsnet.Eventually(60*time.Second, func() error {
			if len(e.ownENIs(t, inst)) == 0 {
				return fmt.Errorf("no ENI created for %s yet", inst)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond) // the attach request follows the create at once
		if err := n.StopIPAMD(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		e.sim.EC2().SetFaults(ec2sim.Faults{})
		left := e.ownENIs(t, inst)
		if len(left) != 1 || left[0].Attachment != nil {
			t.Fatalf("after the kill: %d ENIs of vnet-cni's for %s (first attachment %+v), want one, not attached (EC2 dropped the held attach)", len(left), inst, left[0].Attachment)
		}
		if err := n.StartIPAMD(); err != nil {
			t.Fatal(err)
		}
		waitPool(t, n, 8, 60*time.Second)
		id := checkOneENI(t, n)
		t.Logf("after the restart: %s attached; creates %d, deletes %d", id, e.calls("CreateNetworkInterface", "200"), e.calls("DeleteNetworkInterface", "200"))
		e.checkNoDuplicates(t, n)
	})

	t.Run("detaching", func(t *testing.T) {
		// node0's pool shrinks below what its primary ENI holds: the daemon
		// releases the added ENI's addresses and detaches it; it is killed
		// while the ENI is detaching.
		n := e.c.Nodes[0]
		inst := e.instance(n.Name)
		own := e.ownENIs(t, inst)
		if len(own) != 1 {
			t.Fatalf("%d ENIs of vnet-cni's on %s, want 1", len(own), inst)
		}
		id := awssdk.ToString(own[0].NetworkInterfaceId)
		n.Config.WarmIPTarget = 3
		if err := n.WriteConfig(); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Kill(n.PID(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		if err := nsnet.Eventually(60*time.Second, func() error {
			if a := own0(e.enis(t, ec2Filter("network-interface-id", id))); a == nil || a.Status != types.AttachmentStatusDetaching {
				return fmt.Errorf("eni %s attachment %+v, not detaching yet", id, a)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if err := n.StopIPAMD(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		if err := n.StartIPAMD(); err != nil {
			t.Fatal(err)
		}
		waitPool(t, n, 3, 60*time.Second)
		if err := nsnet.Eventually(30*time.Second, func() error {
			if got := e.enis(t, ec2Filter("network-interface-id", id)); len(got) != 0 {
				return fmt.Errorf("eni %s is still there (status %s)", id, got[0].Status)
			}
			return nil
		}); err != nil {
			t.Fatalf("the ENI left detaching by the kill: %v", err)
		}
		if got := e.ownENIs(t, inst); len(got) != 0 {
			t.Errorf("%d ENIs of vnet-cni's on %s, want none", len(got), inst)
		}
		e.checkNoDuplicates(t, n)
	})

	t.Run("attaching", func(t *testing.T) {
		n := e.c.Nodes[1]
		inst := e.instance(n.Name)
		creates, attaches := e.calls("CreateNetworkInterface", "200"), e.calls("AttachNetworkInterface", "200")
		if err := n.StartIPAMD(); err != nil {
			t.Fatal(err)
		}
		var attaching string
		if err := nsnet.Eventually(60*time.Second, func() error {
			for _, eni := range e.ownENIs(t, inst) {
				if a := eni.Attachment; a != nil && a.Status == types.AttachmentStatusAttaching {
					attaching = awssdk.ToString(eni.NetworkInterfaceId)
					return nil
				}
			}
			return fmt.Errorf("no ENI of %s attaching yet", inst)
		}); err != nil {
			t.Fatal(err)
		}
		killAndRestart(t, n)
		if id := checkOneENI(t, n); id != attaching {
			t.Errorf("the node's ENI is %s, want the adopted %s", id, attaching)
		}
		if c, a := e.calls("CreateNetworkInterface", "200")-creates, e.calls("AttachNetworkInterface", "200")-attaches; c != 1 || a != 1 {
			t.Errorf("%d creates and %d attaches for node %s, want 1 each (the attaching ENI adopted)", c, a, n.Name)
		}
		e.checkNoDuplicates(t, e.c.Nodes...)
	})
}

// TestAWSDeadNodeSweep: node1 dies with three ENIs (its vnet-ipamd killed
// -9, one ENI without DeleteOnTermination as a crash between the attach
// and the modify leaves it, then `vnet-sim terminate`): EC2 deletes the
// primary and the flagged ENI and leaves the other available. node0's
// vnet-ipamd sweep deletes that one after the grace, and never node0's own
// ENIs, an ENI of another cluster or an untagged ENI made by hand.
func TestAWSDeadNodeSweep(t *testing.T) {
	e := newAWSDaemonEnv(t, 2, "t3.medium", 200*time.Millisecond, func(node string, c *ipamdconfig.Config) {
		c.WarmIPTarget, c.MaxIPs, c.BatchSize, c.IPAddressCount = 8, 15, 5, 5
		if node == "node1" {
			c.WarmIPTarget = 12 // three ENIs
		}
		c.Cloud.AWS.SweepInterval = ipamdconfig.Duration(ipamdconfig.MinSweepInterval)
		c.Cloud.AWS.SweepGrace = ipamdconfig.Duration(time.Second)
	})
	n0, n1 := e.c.Nodes[0], e.c.Nodes[1]
	i0, i1 := e.instance(n0.Name), e.instance(n1.Name)
	if err := e.c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitPool(t, n0, 8, 60*time.Second)
	waitPool(t, n1, 12, 60*time.Second)
	mine := e.ownENIs(t, i0)
	dead := e.ownENIs(t, i1)
	if len(mine) != 1 || len(dead) != 2 {
		t.Fatalf("vnet-cni's ENIs: %d on node0, %d on node1, want 1 and 2", len(mine), len(dead))
	}
	if err := n1.StopIPAMD(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	leak := awssdk.ToString(dead[0].NetworkInterfaceId)
	if _, err := e.ec2.ModifyNetworkInterfaceAttribute(ctxFor(t, 10*time.Second), &ec2.ModifyNetworkInterfaceAttributeInput{
		NetworkInterfaceId: dead[0].NetworkInterfaceId,
		Attachment:         &types.NetworkInterfaceAttachmentChanges{AttachmentId: dead[0].Attachment.AttachmentId, DeleteOnTermination: awssdk.Bool(false)},
	}); err != nil {
		t.Fatal(err)
	}
	// ENIs the sweep must leave alone: untagged, another cluster's for the
	// dead instance, both available.
	create := func(tags map[string]string) string {
		in := &ec2.CreateNetworkInterfaceInput{SubnetId: awssdk.String(e.desc.SubnetID)}
		if len(tags) > 0 {
			spec := types.TagSpecification{ResourceType: types.ResourceTypeNetworkInterface}
			for k, v := range tags {
				spec.Tags = append(spec.Tags, types.Tag{Key: awssdk.String(k), Value: awssdk.String(v)})
			}
			in.TagSpecifications = []types.TagSpecification{spec}
		}
		out, err := e.ec2.CreateNetworkInterface(ctxFor(t, 10*time.Second), in)
		if err != nil {
			t.Fatal(err)
		}
		return awssdk.ToString(out.NetworkInterface.NetworkInterfaceId)
	}
	old := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
	keep := []string{
		create(nil),
		create(map[string]string{vaws.TagCluster: "another-cluster", vaws.TagInstance: i1, vaws.TagCreatedBy: "vnet-cni", vaws.TagCreatedAt: old}),
	}

	out, err := exec.Command("../bin/vnet-sim", "terminate", "--dir", e.simDir, "--node", n1.Name).CombinedOutput()
	if err != nil {
		t.Fatalf("vnet-sim terminate: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), leak) || !strings.Contains(string(out), awssdk.ToString(dead[1].NetworkInterfaceId)) {
		t.Errorf("vnet-sim terminate answered %s, want %s detached and %s deleted", out, leak, awssdk.ToString(dead[1].NetworkInterfaceId))
	}
	if got := e.ownENIs(t, i1); len(got) != 1 || awssdk.ToString(got[0].NetworkInterfaceId) != leak || got[0].Status != types.NetworkInterfaceStatusAvailable {
		t.Fatalf("after the termination node1's ENIs are %d, want the one without DeleteOnTermination, available", len(got))
	}

	start := time.Now()
	if err := nsnet.Eventually(3*ipamdconfig.MinSweepInterval+10*time.Second, func() error {
		if got := e.ownENIs(t, i1); len(got) != 0 {
			return fmt.Errorf("node1's leaked %s is still there", leak)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("node0's sweep deleted node1's leaked ENI %.1f s after the termination", time.Since(start).Seconds())
	for _, id := range keep {
		if got := e.enis(t, ec2Filter("network-interface-id", id)); len(got) != 1 {
			t.Errorf("eni %s (not this cluster's) was deleted", id)
		}
	}
	if got := e.ownENIs(t, i0); len(got) != 1 || awssdk.ToString(got[0].NetworkInterfaceId) != awssdk.ToString(mine[0].NetworkInterfaceId) || got[0].Attachment == nil {
		t.Errorf("node0's own ENIs changed: %d", len(got))
	}
	waitPool(t, n0, 8, 10*time.Second)
	e.checkNoDuplicates(t, n0)
	logData, err := os.ReadFile(n0.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(logData), "sweep: deleted an ENI a dead instance leaked") || !strings.Contains(string(logData), leak) {
		t.Errorf("node0's log does not say that its sweep deleted %s", leak)
	}
}
