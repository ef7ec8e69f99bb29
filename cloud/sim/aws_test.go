package sim

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vnet-cni/vnet-cni/internal/nsnet"
	"github.com/vnet-cni/vnet-cni/internal/nstest"
)

// startAWS runs a simulated AWS region with its fabric for the test.
func startAWS(t *testing.T, nodes int) *Sim {
	t.Helper()
	nstest.RequireRoot(t)
	s, err := Start(context.Background(), Options{
		Cloud: CloudAWS, Nodes: nodes, Prefix: nstest.Prefix(t), Dir: t.TempDir(),
		OperationDuration: 100 * time.Millisecond, MetadataDelay: -1,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close sim: %v", err)
		}
		d := s.Description()
		for _, p := range []string{d.VNetNetns, d.InternetNetns, d.Nodes[0].Netns} {
			if _, err := os.Stat(p); err == nil {
				t.Errorf("namespace %s left behind", p)
			}
		}
	})
	return s
}

// readDescription reads sim.json as a tool on the host would.
func readDescription(t *testing.T, dir string) Description {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "sim.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d Description
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatal(err)
	}
	return d
}

// ec2Client is the real SDK's EC2 client as a host tool builds it from
// sim.json: the endpoint, the CA and the static credentials.
func ec2Client(t *testing.T, d Description) *ec2.Client {
	t.Helper()
	pem, err := os.ReadFile(d.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	if d.StaticCredentials == nil {
		t.Fatal("sim.json has no static credentials")
	}
	cfg, err := config.LoadDefaultConfig(context.Background(),
		config.WithRegion(d.Region),
		config.WithCustomCABundle(bytes.NewReader(pem)),
		config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(
			d.StaticCredentials.AccessKeyID, d.StaticCredentials.SecretAccessKey, "")),
	)
	if err != nil {
		t.Fatal(err)
	}
	return ec2.NewFromConfig(cfg, func(o *ec2.Options) { o.BaseEndpoint = aws.String(d.EC2Endpoint) })
}

func TestAWSDescription(t *testing.T) {
	s := startAWS(t, 2)
	d := readDescription(t, s.opts.Dir)
	if d.Cloud != CloudAWS || d.Region != "us-east-1" || d.EC2Endpoint == "" || d.ARMEndpoint != "" ||
		!strings.HasPrefix(d.VPCID, "vpc-") || !strings.HasPrefix(d.SubnetID, "subnet-") ||
		d.SubnetCIDR != "10.240.0.0/17" || len(d.VPCCIDRs) != 1 || d.VPCCIDRs[0] != "10.240.0.0/16" ||
		d.Gateway != "10.240.0.1" || d.GatewayMAC != "02:76:70:63:00:01" || d.InternetHost == "" {
		t.Errorf("description %+v", d)
	}
	ctx := ctxT(t)
	client := ec2Client(t, d)
	out, err := client.DescribeInstances(ctx, &ec2.DescribeInstancesInput{})
	if err != nil {
		t.Fatalf("DescribeInstances with the static credentials of sim.json: %v", err)
	}
	got := map[string]ec2types.Instance{}
	for _, r := range out.Reservations {
		for _, in := range r.Instances {
			got[aws.ToString(in.InstanceId)] = in
		}
	}
	for i, n := range d.Nodes {
		in, ok := got[n.InstanceID]
		if !ok {
			t.Fatalf("node %s: instance %s not in DescribeInstances", n.Name, n.InstanceID)
		}
		if n.Netns == "" || n.PrimaryIP != fmt.Sprintf("10.240.0.%d", 4+i) || n.InstanceType != "m5.large" ||
			string(in.InstanceType) != n.InstanceType || aws.ToString(in.PrivateIpAddress) != n.PrimaryIP ||
			aws.ToString(in.SubnetId) != d.SubnetID || aws.ToString(in.VpcId) != d.VPCID {
			t.Errorf("node %d: %+v, instance %+v", i, n, in)
		}
		eni := in.NetworkInterfaces[0]
		if aws.ToString(eni.NetworkInterfaceId) != n.ENIID || aws.ToString(eni.MacAddress) != n.MAC {
			t.Errorf("node %s: primary eni %s %s, described %s %s", n.Name, aws.ToString(eni.NetworkInterfaceId), aws.ToString(eni.MacAddress), n.ENIID, n.MAC)
		}
		eth0, err := nstest.Netlink(t, n.Netns).LinkByName("eth0")
		if err != nil || eth0.Attrs().HardwareAddr.String() != n.MAC {
			t.Errorf("node %s: eth0 %v (%v), want mac %s", n.Name, eth0, err, n.MAC)
		}
	}
}

func TestAWSOptions(t *testing.T) {
	tests := []struct {
		name string
		opts Options
		ok   bool
	}{
		{"unknown cloud", Options{Cloud: "gcp"}, false},
		{"vpc larger than /16", Options{Cloud: CloudAWS, VNet: netip.MustParsePrefix("10.240.0.0/12")}, false},
		{"subnet smaller than /28", Options{Cloud: CloudAWS, Subnet: netip.MustParsePrefix("10.240.0.0/29")}, false},
		{"unknown instance type", Options{Cloud: CloudAWS, InstanceType: "m9.huge"}, false},
		{"an azure option", Options{Cloud: CloudAWS, TemplateIPs: 3}, false},
		{"control plane only", Options{Cloud: CloudAWS, InstanceType: "t3.small", Nodes: 3}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.Dir, tt.opts.NoFabric = t.TempDir(), true
			s, err := Start(context.Background(), tt.opts)
			if (err == nil) != tt.ok {
				t.Fatalf("Start: %v, want ok %v", err, tt.ok)
			}
			if err != nil {
				return
			}
			defer func() {
				if err := s.Close(); err != nil {
					t.Error(err)
				}
			}()
			d := s.Description()
			if s.ARM() != nil || s.EC2() == nil || len(d.Nodes) != 3 || d.Nodes[2].Netns != "" || d.VNetNetns != "" {
				t.Errorf("description %+v", d)
			}
			// Without the fabric, the metadata service is there for tests
			// to serve on loopback.
			h, ok := s.IMDSHandler("node2")
			if !ok {
				t.Fatal("no IMDS handler for node2")
			}
			srv := httptest.NewServer(h)
			defer srv.Close()
			md := imds.New(imds.Options{Endpoint: srv.URL, EnableFallback: aws.FalseTernary})
			out, err := md.GetMetadata(ctxT(t), &imds.GetMetadataInput{Path: "instance-type"})
			if err != nil {
				t.Fatal(err)
			}
			defer out.Content.Close()
			if b, _ := io.ReadAll(out.Content); string(b) != "t3.small" {
				t.Errorf("instance-type %q, want t3.small", b)
			}
		})
	}
}

func ctxT(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// Policy routing tables in node0 for TestAWSENIFabric.
const (
	tableEth0 = 100
	tableEth1 = 101
)

// routeFrom makes node traffic from src leave through table's interface.
func routeFrom(h *netlink.Handle, src netip.Addr, table int) error {
	for _, tb := range []int{tableEth0, tableEth1} {
		r := netlink.NewRule()
		r.Src, r.Table, r.Priority = &net.IPNet{IP: src.AsSlice(), Mask: net.CIDRMask(32, 32)}, tb, 100
		if err := h.RuleDel(r); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("delete rule from %s: %w", src, err)
		}
	}
	r := netlink.NewRule()
	r.Src, r.Table, r.Priority = &net.IPNet{IP: src.AsSlice(), Mask: net.CIDRMask(32, 32)}, table, 100
	return h.RuleAdd(r)
}

// TestAWSENIFabric creates and attaches an ENI to node0 with the real SDK
// and checks that the fabric follows EC2: eth1 appears with the ENI's MAC,
// a secondary address of the ENI is delivered through it and may leave only
// through it until the source/destination check of eth0's ENI is turned
// off, and eth1 goes when the ENI is detached.
func TestAWSENIFabric(t *testing.T) {
	s := startAWS(t, 2)
	d := s.Description()
	ctx := ctxT(t)
	client := ec2Client(t, d)
	node0, node1 := d.Nodes[0], d.Nodes[1]
	h0 := nstest.Netlink(t, node0.Netns)

	created, err := client.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(d.SubnetID)})
	if err != nil {
		t.Fatal(err)
	}
	eniID := aws.ToString(created.NetworkInterface.NetworkInterfaceId)
	eniMAC := aws.ToString(created.NetworkInterface.MacAddress)
	if _, err := h0.LinkByName("eth1"); err == nil {
		t.Fatal("eth1 exists before any attachment")
	}
	att, err := client.AttachNetworkInterface(ctx, &ec2.AttachNetworkInterfaceInput{
		DeviceIndex: aws.Int32(1), InstanceId: aws.String(node0.InstanceID), NetworkInterfaceId: aws.String(eniID),
	})
	if err != nil {
		t.Fatal(err)
	}
	attached := time.Now()
	var eth1 netlink.Link
	if err := nsnet.Eventually(5*time.Second, func() error {
		l, err := h0.LinkByName("eth1")
		if err != nil {
			return err
		}
		if l.Attrs().HardwareAddr.String() != eniMAC || l.Attrs().Flags&net.FlagUp == 0 {
			return fmt.Errorf("eth1 mac %s flags %v, want %s and up", l.Attrs().HardwareAddr, l.Attrs().Flags, eniMAC)
		}
		eth1 = l
		return nil
	}); err != nil {
		t.Fatalf("eth1 after the attachment: %v", err)
	}
	t.Logf("eth1 appeared %v after AttachNetworkInterface returned (attach delay %v)",
		time.Since(attached).Round(time.Millisecond), s.opts.OperationDuration)
	desc, err := client.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{eniID}})
	if err != nil {
		t.Fatal(err)
	}
	if st := desc.NetworkInterfaces[0].Attachment.Status; st != ec2types.AttachmentStatusAttached {
		t.Errorf("eth1 is there while the attachment is %s", st)
	}

	assigned, err := client.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{
		NetworkInterfaceId: aws.String(eniID), SecondaryPrivateIpAddressCount: aws.Int32(1),
	})
	if err != nil {
		t.Fatal(err)
	}
	sec := netip.MustParseAddr(aws.ToString(assigned.AssignedPrivateIpAddresses[0].PrivateIpAddress))

	// node0 as a routed datapath would set it up: the address on eth1 and
	// a table per interface, traffic from the address through eth1.
	gw := netip.MustParseAddr(d.Gateway)
	if err := h0.AddrAdd(eth1, &netlink.Addr{IPNet: &net.IPNet{IP: sec.AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
		t.Fatal(err)
	}
	for table, dev := range map[int]string{tableEth0: "eth0", tableEth1: "eth1"} {
		l, err := h0.LinkByName(dev)
		if err != nil {
			t.Fatal(err)
		}
		if err := h0.RouteReplace(&netlink.Route{Table: table, LinkIndex: l.Attrs().Index, Gw: gw.AsSlice(), Flags: int(netlink.FLAG_ONLINK)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := routeFrom(h0, sec, tableEth1); err != nil {
		t.Fatal(err)
	}
	peer := nstest.ListenTCP(t, node1.Netns, netip.AddrPortFrom(netip.MustParseAddr(node1.PrimaryIP), 80))
	dial := func(timeout time.Duration) (string, error) {
		return nsnet.DialTCP(ctx, node0.Netns, sec, peer, timeout)
	}
	rxEth1 := func() uint64 {
		l, err := h0.LinkByName("eth1")
		if err != nil {
			t.Fatal(err)
		}
		return l.Attrs().Statistics.RxPackets
	}

	before := rxEth1()
	if line, err := dial(5 * time.Second); err != nil || !strings.HasPrefix(line, filepath.Base(node1.Netns)+" ") {
		t.Fatalf("from %s out of eth1 to node1: %q, %v", sec, line, err)
	}
	if rxEth1() == before {
		t.Error("the reply did not come in through eth1")
	}

	if err := routeFrom(h0, sec, tableEth0); err != nil {
		t.Fatal(err)
	}
	if line, err := dial(500 * time.Millisecond); err == nil {
		t.Fatalf("from %s out of eth0 passed the source/destination check: %q", sec, line)
	}
	if _, err := client.ModifyNetworkInterfaceAttribute(ctx, &ec2.ModifyNetworkInterfaceAttributeInput{
		NetworkInterfaceId: aws.String(node0.ENIID), SourceDestCheck: &ec2types.AttributeBooleanValue{Value: aws.Bool(false)},
	}); err != nil {
		t.Fatal(err)
	}
	if err := nsnet.Eventually(5*time.Second, func() error {
		_, err := dial(500 * time.Millisecond)
		return err
	}); err != nil {
		t.Fatalf("from %s out of eth0 with its source/destination check off: %v", sec, err)
	}

	if _, err := client.DetachNetworkInterface(ctx, &ec2.DetachNetworkInterfaceInput{AttachmentId: att.AttachmentId}); err != nil {
		t.Fatal(err)
	}
	if err := nsnet.Eventually(5*time.Second, func() error {
		if _, err := h0.LinkByName("eth1"); err == nil {
			return errors.New("eth1 still there")
		}
		return nil
	}); err != nil {
		t.Fatalf("after the detachment: %v", err)
	}
	if _, err := client.DeleteNetworkInterface(ctx, &ec2.DeleteNetworkInterfaceInput{NetworkInterfaceId: aws.String(eniID)}); err != nil {
		t.Errorf("delete the detached eni: %v", err)
	}
}

// TestAWSInsideNode runs the real SDK in a process inside node0's
// namespace, as vnet-ipamd runs on an instance: IMDSv2 at 169.254.169.254
// with its token flow (IMDSv1 refused), the instance role's credentials
// from it through the default chain, and EC2 at the described URL.
func TestAWSInsideNode(t *testing.T) {
	if os.Getenv("VNETSIM_CHILD") == "1" {
		return
	}
	s := startAWS(t, 1)
	d := s.Description()
	n := d.Nodes[0]
	desc, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", filepath.Base(n.Netns), os.Args[0], "-test.run=^TestChildAWS$", "-test.v")
	// No credentials but the instance role's: no static ones from the
	// environment or shared files.
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "AWS_") {
			env = append(env, kv)
		}
	}
	env = append(env, "VNETSIM_CHILD=1", "VNETSIM_DESC="+string(desc),
		"AWS_CONFIG_FILE=/dev/null", "AWS_SHARED_CREDENTIALS_FILE=/dev/null")
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child in %s: %v\n%s", n.Netns, err, out)
	}
	want := fmt.Sprintf("instance %s type %s mac %s eni %s ip %s", n.InstanceID, n.InstanceType, n.MAC, n.ENIID, n.PrimaryIP)
	if !strings.Contains(string(out), want) {
		t.Errorf("child output lacks %q:\n%s", want, out)
	}
}

func TestChildAWS(t *testing.T) {
	if os.Getenv("VNETSIM_CHILD") != "1" {
		t.Skip("runs only as the child of TestAWSInsideNode")
	}
	var d Description
	if err := json.Unmarshal([]byte(os.Getenv("VNETSIM_DESC")), &d); err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)

	// IMDSv1: a GET without a token is refused.
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get("http://169.254.169.254/latest/meta-data/instance-id")
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("IMDSv1 GET: %d, want 401", resp.StatusCode)
	}

	// IMDSv2 with the SDK's client at its default endpoint, never falling
	// back to IMDSv1.
	md := imds.New(imds.Options{EnableFallback: aws.FalseTernary})
	get := func(path string) string {
		t.Helper()
		out, err := md.GetMetadata(ctx, &imds.GetMetadataInput{Path: path})
		if err != nil {
			t.Fatalf("imds %s: %v", path, err)
		}
		defer out.Content.Close()
		b, err := io.ReadAll(out.Content)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	id, typ, mac := get("instance-id"), get("instance-type"), get("mac")
	eni := get("network/interfaces/macs/" + mac + "/interface-id")
	if cidr := get("network/interfaces/macs/" + mac + "/subnet-ipv4-cidr-block"); cidr != d.SubnetCIDR {
		t.Errorf("subnet-ipv4-cidr-block %q, want %s", cidr, d.SubnetCIDR)
	}

	// The default credential chain ends at the instance role through IMDS.
	pem, err := os.ReadFile(d.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.LoadDefaultConfig(ctx, config.WithRegion(d.Region), config.WithCustomCABundle(bytes.NewReader(pem)))
	if err != nil {
		t.Fatal(err)
	}
	creds, err := cfg.Credentials.Retrieve(ctx)
	if err != nil {
		t.Fatalf("credentials from the default chain: %v", err)
	}
	if creds.SessionToken == "" || creds.AccessKeyID == d.StaticCredentials.AccessKeyID {
		t.Errorf("credentials %s (source %s) are not the role's", creds.AccessKeyID, creds.Source)
	}
	ec := ec2.NewFromConfig(cfg, func(o *ec2.Options) { o.BaseEndpoint = aws.String(d.EC2Endpoint) })
	out, err := ec.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{id}})
	if err != nil {
		t.Fatalf("DescribeInstances with the role's credentials: %v", err)
	}
	in := out.Reservations[0].Instances[0]
	fmt.Printf("instance %s type %s mac %s eni %s ip %s\n", id, typ, mac, eni, aws.ToString(in.PrivateIpAddress))
}
