package integration

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vnet-cni/vnet-cni/cloud/sim"
	"github.com/vnet-cni/vnet-cni/integration/cluster"
	"github.com/vnet-cni/vnet-cni/internal/nsnet"
	"github.com/vnet-cni/vnet-cni/ipamd/api"
	"github.com/vnet-cni/vnet-cni/ipamd/config"
)

// TestTemplateNodeWithReadOnlyIdentity: a node made by a cluster template
// with ipAddressCount 30 pre-created on its NIC, whose managed identity may
// only read, runs 30 pods through libcni with no cloud write; the 31st ADD
// fails with CNI error 11 saying that the pool is exhausted and why, and
// the refused write is not repeated.
func TestTemplateNodeWithReadOnlyIdentity(t *testing.T) {
	const template = 30
	e := newE2EEnvOn(t, sim.Options{Nodes: 1, TemplateIPs: template, ReadOnlyIdentity: true}, func(_ string, c *config.Config) {
		// The pool is what the template made: no warm target beyond it.
		c.WarmIPTarget, c.MinIPTarget, c.IPAddressCount, c.MaxIPs = 0, template, 0, template+10
		c.AllocateWait = config.Duration(time.Second)
	})
	e.start(t)
	n := e.c.Nodes[0]
	pods := make([]*cluster.Pod, 0, template)
	for i := range template {
		pods = append(pods, e2eAddPod(t, n, fmt.Sprintf("tpl-%d", i)))
	}
	writes := func() map[string]int { return e.sim.ARM().Stats().Calls["NetworkInterfaces_CreateOrUpdate"] }
	if w := writes(); len(w) != 0 {
		t.Errorf("NIC writes while the template's %d addresses lasted: %v, want none", template, w)
	}
	onNIC := map[string]bool{}
	for _, ip := range e.nicIPs(n) {
		onNIC[ip.String()] = true
	}
	for _, p := range pods {
		if a := e2eAssigned(t, p); !onNIC[a.IP.String()] {
			t.Errorf("pod %s got %s, not one of the template's addresses", p.Name, a.IP)
		}
	}

	extra, err := n.NewPod("default", "tpl-extra")
	if err != nil {
		t.Fatal(err)
	}
	_, err = n.Add(t.Context(), extra)
	if code := e2eCode(err); code != 11 || !strings.Contains(err.Error(), "exhausted") || !strings.Contains(err.Error(), "AuthorizationFailed") {
		t.Fatalf("ADD beyond the template: %v (code %d), want CNI error 11 saying the pool is exhausted (AuthorizationFailed)", err, code)
	}
	time.Sleep(2 * time.Second)
	if w := writes(); w["403"] != 1 || len(w) != 1 {
		t.Errorf("NIC writes = %v, want exactly the one refused with 403", w)
	}
	if err := n.Del(t.Context(), extra); err != nil {
		t.Errorf("DEL of the failed pod: %v", err)
	}
	// The node is full, not broken: STATUS stays ok, so kubelet keeps the
	// node Ready and its 30 pods are not evicted.
	if err := n.PluginStatus(t.Context()); err != nil {
		t.Errorf("STATUS of the full template node: %v, want ok", err)
	}
}

// TestReadOnlyIdentityWithoutTemplate: a node whose identity may only read
// and whose NIC has no template address can set no pod up: vnet-ipamd
// stays not ready with the reason and writes no conflist (the runtime
// reports the network not ready, kubelet keeps the node NotReady and the
// scheduler sends it no pod: TestK8sNodesReadyAfterConflist), and the
// refused write is not repeated in a loop.
func TestReadOnlyIdentityWithoutTemplate(t *testing.T) {
	e := newE2EEnvOn(t, sim.Options{Nodes: 1, ReadOnlyIdentity: true}, nil)
	n := e.c.Nodes[0]
	// Not e.start: the daemon never becomes ready, it has no address.
	if err := n.StartIPAMD(); err != nil {
		t.Fatal(err)
	}
	var st api.StatusResponse
	if err := nsnet.Eventually(20*time.Second, func() error {
		var err error
		if st, err = n.Status(t.Context()); err != nil {
			return err
		}
		if st.Ready || !strings.Contains(st.Reason, "AuthorizationFailed") {
			return fmt.Errorf("status ready %v, reason %q", st.Ready, st.Reason)
		}
		return nil
	}); err != nil {
		t.Fatalf("vnet-ipamd with no address and a read-only identity: %v, want not ready naming AuthorizationFailed", err)
	}
	t.Logf("not ready: %s", st.Reason)
	time.Sleep(3 * time.Second)
	if _, err := os.Stat(n.ConflistPath()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("conflist of a node that can set no pod up: %v, want none", err)
	}
	if w := e.sim.ARM().Stats().Calls["NetworkInterfaces_CreateOrUpdate"]; w["403"] != 1 || len(w) != 1 {
		t.Errorf("NIC writes = %v, want exactly the one refused with 403", w)
	}
}

// TestE2EAzureCloudConfig: a template node whose only Azure configuration
// is the cloud provider's azure.json (a service principal, the cluster's
// subscription, resource group, VNet and subnet) signs in with the service
// principal at Entra ID, serves pods, and is held to the network the file
// names: with another subnet in the file, vnet-ipamd stays not ready and
// says which names differ, makes no NIC write, and becomes ready without a
// restart once the file is right again.
func TestE2EAzureCloudConfig(t *testing.T) {
	e := newE2EEnvOn(t, sim.Options{Nodes: 1}, nil)
	d := e.desc
	azureJSON := filepath.Join(e.dir, "azure.json")
	write := func(subnet string) {
		t.Helper()
		doc, err := json.MarshalIndent(map[string]any{
			"cloud": "AzurePublicCloud", "tenantId": d.TenantID, "subscriptionId": d.SubscriptionID,
			"resourceGroup": d.ResourceGroup, "location": d.Location, "vnetName": d.VNet, "subnetName": subnet,
			"routeTableName": d.RouteTable, "useManagedIdentityExtension": false,
			"aadClientId": d.ServicePrincipal.ClientID, "aadClientSecret": d.ServicePrincipal.ClientSecret,
			"useInstanceMetadata": true, "vmType": "standard",
		}, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(azureJSON, doc, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(d.Subnet)
	n := e.c.Nodes[0]
	n.Config.Cloud.Azure.Credential = config.CredentialCloudConfig
	n.Config.Cloud.Azure.CloudConfigFile = azureJSON
	n.Config.Cloud.Azure.ActiveDirectoryEndpoint = d.ActiveDirectoryEndpoint
	if err := n.WriteConfig(); err != nil {
		t.Fatal(err)
	}
	e.start(t)
	p := e2eAddPod(t, n, "cc-0")
	if a := e2eAssigned(t, p); !slices.Contains(e.nicIPs(n), a.IP) {
		t.Errorf("pod got %s, not an address of the NIC %v", a.IP, e.nicIPs(n))
	}
	calls := e.sim.ARM().Stats().Calls
	if calls["Entra_Token"]["200"] == 0 {
		t.Errorf("no token from Entra ID (%v): the service principal was not used", calls["Entra_Token"])
	}

	if err := n.StopIPAMD(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	write("pods")
	e.sim.ARM().ResetStats()
	if err := n.StartIPAMD(); err != nil {
		t.Fatal(err)
	}
	var st api.StatusResponse
	if err := nsnet.Eventually(20*time.Second, func() error {
		var err error
		if st, err = n.Status(t.Context()); err != nil {
			return err
		}
		if st.Ready || !strings.Contains(st.Reason, `subnet "pods", the cloud says "`+d.Subnet+`"`) || !strings.Contains(st.Reason, azureJSON) {
			return fmt.Errorf("status ready %v, reason %q", st.Ready, st.Reason)
		}
		return nil
	}); err != nil {
		t.Fatalf("azure.json naming another subnet: %v, want not ready naming both subnets", err)
	}
	t.Logf("not ready: %s", st.Reason)
	if w := e.sim.ARM().Stats().Calls["NetworkInterfaces_CreateOrUpdate"]; len(w) != 0 {
		t.Errorf("NIC writes while the file contradicts the NIC: %v, want none", w)
	}
	if _, err := n.Add(t.Context(), mustNewPod(t, n, "cc-refused")); e2eCode(err) != 11 {
		t.Errorf("ADD while not ready: %v, want CNI error 11 (try again later)", err)
	}

	write(d.Subnet)
	if err := n.WaitReady(t.Context()); err != nil {
		t.Fatalf("after the file was fixed: %v, want ready without a restart", err)
	}
	if a := e2eAssigned(t, p); a.IP != p.IP {
		t.Errorf("the pod's assignment after the restart: %s, want %s", a.IP, p.IP)
	}
}

func mustNewPod(t *testing.T, n *cluster.Node, name string) *cluster.Pod {
	t.Helper()
	p, err := n.NewPod("default", name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
