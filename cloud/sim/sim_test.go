package sim

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	azcloud "github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v9"
	"github.com/vishvananda/netlink"

	"github.com/vnet-cni/vnet-cni/cloud/sim/imds"
	"github.com/vnet-cni/vnet-cni/internal/nsnet"
	"github.com/vnet-cni/vnet-cni/internal/nstest"
)

// startSim runs a simulated cloud with its fabric for the test.
func startSim(t *testing.T, nodes int) *Sim {
	t.Helper()
	nstest.RequireRoot(t)
	s, err := Start(context.Background(), Options{
		Nodes: nodes, Prefix: nstest.Prefix(t), Dir: t.TempDir(), StaticToken: "tok",
		OperationDuration: 50 * time.Millisecond, PollInterval: 20 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close sim: %v", err)
		}
		for _, n := range s.Description().Nodes {
			if _, err := os.Stat(n.Netns); err == nil {
				t.Errorf("namespace %s left behind", n.Netns)
			}
		}
	})
	return s
}

// httpIn returns an HTTP client whose connections start inside nsPath and
// that trusts the sim's CA.
func httpIn(s *Sim, nsPath string) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext:     nsnet.DialContextIn(nsPath),
		TLSClientConfig: &tls.Config{RootCAs: s.CA().CertPool(), MinVersion: tls.VersionTLS12},
	}}
}

type staticCred string

func (c staticCred) GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
	return azcore.AccessToken{Token: string(c), ExpiresOn: time.Now().Add(time.Hour)}, nil
}

func armOptions(s *Sim, client *http.Client) *arm.ClientOptions {
	d := s.Description()
	return &arm.ClientOptions{ClientOptions: policy.ClientOptions{
		Cloud: azcloud.Configuration{Services: map[azcloud.ServiceName]azcloud.ServiceConfiguration{
			azcloud.ResourceManager: {Endpoint: d.ARMEndpoint, Audience: d.ARMAudience},
		}},
		Transport: client,
	}}
}

func TestDescriptionFile(t *testing.T) {
	s := startSim(t, 2)
	data, err := os.ReadFile(filepath.Join(s.opts.Dir, "sim.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d Description
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatal(err)
	}
	if len(d.Nodes) != 2 || d.ARMEndpoint == "" || d.AdminEndpoint == "" || d.InternetHost == "" || d.Gateway != "10.240.0.1" {
		t.Errorf("description %+v", d)
	}
	for i, n := range d.Nodes {
		if n.Netns == "" || n.NIC != fmt.Sprintf("node%d-nic", i) || n.PrimaryIP != fmt.Sprintf("10.240.0.%d", 4+i) {
			t.Errorf("node %d: %+v", i, n)
		}
		if _, err := os.Stat(n.Netns); err != nil {
			t.Errorf("node namespace: %v", err)
		}
	}
	if _, err := os.Stat(d.CAFile); err != nil {
		t.Errorf("ca file: %v", err)
	}
}

func TestIMDSAnswersEachNodeItsOwnVM(t *testing.T) {
	s := startSim(t, 2)
	for _, n := range s.Description().Nodes {
		client := httpIn(s, n.Netns)
		req, _ := http.NewRequest(http.MethodGet, "http://169.254.169.254/metadata/instance?api-version=2021-02-01", nil)
		req.Header.Set("Metadata", "true")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("imds from %s: %v", n.Name, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var inst imds.Instance
		if err := json.Unmarshal(body, &inst); err != nil {
			t.Fatal(err)
		}
		if inst.Compute.Name != n.Name || inst.Compute.VMID != n.VMID {
			t.Errorf("node %s got compute %+v", n.Name, inst.Compute)
		}
		ifc := inst.Network.Interface[0]
		wantMAC := strings.ToUpper(strings.ReplaceAll(n.MAC, ":", ""))
		if ifc.MACAddress != wantMAC || ifc.IPv4.IPAddress[0].PrivateIPAddress != n.PrimaryIP {
			t.Errorf("node %s got network %+v, want MAC %s IP %s", n.Name, ifc, wantMAC, n.PrimaryIP)
		}
		// Without the Metadata header IMDS refuses, as Azure's does.
		resp, err = client.Get("http://169.254.169.254/metadata/instance?api-version=2021-02-01")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("imds without Metadata header: %d, want 400", resp.StatusCode)
		}
	}
}

// TestManagedIdentityInsideNode runs the real azidentity managed-identity
// credential and the armnetwork client in a process inside a node namespace,
// as vnet-ipamd runs on a VM: token from IMDS, ARM at the described URL.
func TestManagedIdentityInsideNode(t *testing.T) {
	if os.Getenv("VNETSIM_CHILD") == "1" {
		return
	}
	s := startSim(t, 1)
	d := s.Description()
	n := d.Nodes[0]
	desc, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", filepath.Base(n.Netns), os.Args[0], "-test.run=^TestChildManagedIdentity$", "-test.v")
	cmd.Env = append(os.Environ(), "VNETSIM_CHILD=1", "VNETSIM_DESC="+string(desc))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child in %s: %v\n%s", n.Netns, err, out)
	}
	if !strings.Contains(string(out), "nic "+n.NIC+" primary "+n.PrimaryIP) {
		t.Errorf("child output lacks the NIC read through ARM:\n%s", out)
	}
}

func TestChildManagedIdentity(t *testing.T) {
	if os.Getenv("VNETSIM_CHILD") != "1" {
		t.Skip("runs only as the child of TestManagedIdentityInsideNode")
	}
	var d Description
	if err := json.Unmarshal([]byte(os.Getenv("VNETSIM_DESC")), &d); err != nil {
		t.Fatal(err)
	}
	cred, err := newManagedIdentity()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tok, err := cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{d.ARMAudience + ".default"}})
	if err != nil || tok.Token == "" {
		t.Fatalf("managed identity token from the sim's IMDS: %v", err)
	}
	pool, err := loadPool(d.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	nics, err := armnetwork.NewInterfacesClient(d.SubscriptionID, cred, &arm.ClientOptions{ClientOptions: policy.ClientOptions{
		Cloud: azcloud.Configuration{Services: map[azcloud.ServiceName]azcloud.ServiceConfiguration{
			azcloud.ResourceManager: {Endpoint: d.ARMEndpoint, Audience: d.ARMAudience},
		}},
		Transport: client,
	}})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := nics.Get(ctx, d.ResourceGroup, d.Nodes[0].NIC, nil)
	if err != nil {
		t.Fatalf("GET nic from inside the node with the managed identity: %v", err)
	}
	fmt.Printf("nic %s primary %s\n", *resp.Name, *resp.Properties.IPConfigurations[0].Properties.PrivateIPAddress)
}

// TestControlPlaneDrivesFabric adds a secondary address to node1's NIC
// through the real SDK and checks that the fabric delivers it, then removes
// it and checks that it no longer does; then a route through node1 works only
// once IP forwarding is enabled on its NIC through the API.
func TestControlPlaneDrivesFabric(t *testing.T) {
	s := startSim(t, 2)
	d := s.Description()
	ctx := context.Background()
	host := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: s.CA().CertPool(), MinVersion: tls.VersionTLS12}}}
	factory, err := armnetwork.NewClientFactory(d.SubscriptionID, staticCred("tok"), armOptions(s, host))
	if err != nil {
		t.Fatal(err)
	}
	nics := factory.NewInterfacesClient()
	node0, node1 := d.Nodes[0], d.Nodes[1]
	secondary := netip.MustParseAddr("10.240.0.77")

	// Put the address on node1's eth0 (as the datapath would) and listen on it.
	if err := nsnet.Do(node1.Netns, func() error {
		link, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		return netlink.AddrAdd(link, &netlink.Addr{IPNet: &net.IPNet{IP: secondary.AsSlice(), Mask: net.CIDRMask(32, 32)}})
	}); err != nil {
		t.Fatal(err)
	}
	dst := nstest.ListenTCP(t, node1.Netns, netip.AddrPortFrom(secondary, 8080))
	reach := func() error {
		_, err := nsnet.DialTCP(ctx, node0.Netns, netip.Addr{}, dst, 300*time.Millisecond)
		return err
	}
	if reach() == nil {
		t.Fatal("an address not on any NIC was delivered")
	}

	setConfigs := func(add bool) {
		t.Helper()
		nic, err := nics.Get(ctx, d.ResourceGroup, node1.NIC, nil)
		if err != nil {
			t.Fatal(err)
		}
		cfgs := nic.Properties.IPConfigurations[:1]
		if add {
			cfgs = append(cfgs, &armnetwork.InterfaceIPConfiguration{
				Name: to.Ptr("extra"),
				Properties: &armnetwork.InterfaceIPConfigurationPropertiesFormat{
					PrivateIPAllocationMethod: to.Ptr(armnetwork.IPAllocationMethodStatic),
					PrivateIPAddress:          to.Ptr(secondary.String()),
					Subnet:                    cfgs[0].Properties.Subnet,
				},
			})
		}
		nic.Properties.IPConfigurations = cfgs
		poller, err := nics.BeginCreateOrUpdate(ctx, d.ResourceGroup, node1.NIC, nic.Interface, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := poller.PollUntilDone(ctx, nil); err != nil {
			t.Fatal(err)
		}
	}
	setConfigs(true)
	if err := nsnet.Eventually(2*time.Second, reach); err != nil {
		t.Fatalf("secondary added through the API not delivered within 2 s: %v", err)
	}
	setConfigs(false)
	if err := nsnet.Eventually(2*time.Second, func() error {
		if reach() == nil {
			return fmt.Errorf("still delivered")
		}
		return nil
	}); err != nil {
		t.Fatalf("secondary removed through the API still delivered: %v", err)
	}

	// A user-defined route to a pod range behind node1.
	podIP := netip.MustParseAddr("10.244.1.10")
	if err := nsnet.Do(node1.Netns, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: podIP.AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
			return err
		}
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644)
	}); err != nil {
		t.Fatal(err)
	}
	podDst := nstest.ListenTCP(t, node1.Netns, netip.AddrPortFrom(podIP, 8080))
	routes := factory.NewRoutesClient()
	rp, err := routes.BeginCreateOrUpdate(ctx, d.ResourceGroup, d.RouteTable, "node1-pods", armnetwork.Route{Properties: &armnetwork.RoutePropertiesFormat{
		AddressPrefix:    to.Ptr("10.244.1.0/24"),
		NextHopType:      to.Ptr(armnetwork.RouteNextHopTypeVirtualAppliance),
		NextHopIPAddress: to.Ptr(node1.PrimaryIP),
	}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rp.PollUntilDone(ctx, nil); err != nil {
		t.Fatal(err)
	}
	reachPod := func() error {
		_, err := nsnet.DialTCP(ctx, node0.Netns, netip.Addr{}, podDst, 300*time.Millisecond)
		return err
	}
	time.Sleep(time.Second)
	if reachPod() == nil {
		t.Fatal("route delivered to a NIC without IP forwarding")
	}
	nic, err := nics.Get(ctx, d.ResourceGroup, node1.NIC, nil)
	if err != nil {
		t.Fatal(err)
	}
	nic.Properties.EnableIPForwarding = to.Ptr(true)
	np, err := nics.BeginCreateOrUpdate(ctx, d.ResourceGroup, node1.NIC, nic.Interface, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := np.PollUntilDone(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if err := nsnet.Eventually(DefaultRouteEffectDelay+2*time.Second, reachPod); err != nil {
		t.Fatalf("route via a forwarding NIC not working: %v", err)
	}

	// A route table change succeeds before the fabric follows it, as on
	// Azure: right after the PUT's operation succeeded the new route does
	// not carry traffic; RouteEffectDelay later it does.
	pod2 := netip.MustParseAddr("10.244.2.10")
	if err := nsnet.Do(node1.Netns, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: pod2.AsSlice(), Mask: net.CIDRMask(32, 32)}})
	}); err != nil {
		t.Fatal(err)
	}
	pod2Dst := nstest.ListenTCP(t, node1.Netns, netip.AddrPortFrom(pod2, 8080))
	rp, err = routes.BeginCreateOrUpdate(ctx, d.ResourceGroup, d.RouteTable, "node1-pods-2", armnetwork.Route{Properties: &armnetwork.RoutePropertiesFormat{
		AddressPrefix:    to.Ptr("10.244.2.0/24"),
		NextHopType:      to.Ptr(armnetwork.RouteNextHopTypeVirtualAppliance),
		NextHopIPAddress: to.Ptr(node1.PrimaryIP),
	}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rp.PollUntilDone(ctx, nil); err != nil {
		t.Fatal(err)
	}
	done := time.Now()
	reachPod2 := func() error {
		_, err := nsnet.DialTCP(ctx, node0.Netns, netip.Addr{}, pod2Dst, 300*time.Millisecond)
		return err
	}
	if err := reachPod2(); err == nil {
		t.Error("a route carried traffic right after its PUT succeeded, before the route could take effect")
	}
	if err := nsnet.Eventually(DefaultRouteEffectDelay+3*time.Second, reachPod2); err != nil {
		t.Fatalf("the route never took effect: %v", err)
	}
	t.Logf("the route carried traffic %v after its PUT succeeded", time.Since(done).Round(100*time.Millisecond))
}

func TestARMReachableInsideNodeAtTheSameURL(t *testing.T) {
	s := startSim(t, 1)
	d := s.Description()
	client := httpIn(s, d.Nodes[0].Netns)
	resp, err := client.Get(d.ARMEndpoint + "/subscriptions/" + d.SubscriptionID + "/resourceGroups/" + d.ResourceGroup +
		"/providers/Microsoft.Network/networkInterfaces?api-version=2025-05-01")
	if err != nil {
		t.Fatalf("ARM from inside the node: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("unauthenticated list from inside the node: %d, want 401", resp.StatusCode)
	}
}
