package main

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vnet-cni/vnet-cni/cloud"
	"github.com/vnet-cni/vnet-cni/cloud/azure"
	"github.com/vnet-cni/vnet-cni/ipamd/config"
)

// TestAzureConfigFromCloudConfig: what vnet-ipamd takes from azure.json,
// and when a missing or bad file stops it.
func TestAzureConfigFromCloudConfig(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	dir := t.TempDir()
	file := func(name, doc string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	base := azure.Config{ResourceManagerEndpoint: config.DefaultResourceManagerEndpoint, Audience: config.DefaultResourceManagerAudience}
	a := config.Default().Cloud.Azure

	if _, err := os.Stat(config.DefaultCloudConfigFile); err == nil {
		t.Skipf("this host has %s", config.DefaultCloudConfigFile)
	}
	cfg, err := azureConfig(a, base, log)
	if err != nil || cfg.Expect != (azure.Expected{}) || cfg.Credential == nil {
		t.Errorf("no file at the default path: %+v, %v; want the managed identity, nothing expected", cfg.Expect, err)
	}

	a.CloudConfigFile = filepath.Join(dir, "missing.json")
	if _, err := azureConfig(a, base, log); cloud.KindOf(err) != cloud.Fatal || !strings.Contains(err.Error(), "missing.json") {
		t.Errorf("a configured file that is missing: %v, want a fatal error naming it", err)
	}
	a.CloudConfigFile = config.DefaultCloudConfigFile
	a.Credential = config.CredentialCloudConfig
	if _, err := azureConfig(a, base, log); cloud.KindOf(err) != cloud.Fatal {
		t.Errorf("credential cloudConfig with no file: %v, want a fatal error", err)
	}

	a.CloudConfigFile = file("china.json", `{"cloud": "AzureChinaCloud", "subscriptionId": "s", "resourceGroup": "rg",
		"vnetName": "v", "subnetName": "n", "useManagedIdentityExtension": true, "userAssignedIdentityID": "0123abcd-4567-89ab-cdef-0123456789ab"}`)
	cfg, err = azureConfig(a, base, log)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(cfg.ResourceManagerEndpoint, "chinacloudapi.cn") || cfg.Expect.SubnetName != "n" || cfg.Expect.Source != a.CloudConfigFile || cfg.Credential == nil {
		t.Errorf("from the China cloud's file: endpoint %s, expect %+v", cfg.ResourceManagerEndpoint, cfg.Expect)
	}
	custom := base
	custom.ResourceManagerEndpoint = "https://10.0.0.1:8443"
	if cfg, err = azureConfig(a, custom, log); err != nil || cfg.ResourceManagerEndpoint != custom.ResourceManagerEndpoint {
		t.Errorf("a configured endpoint: %s, %v; want it kept over the file's cloud", cfg.ResourceManagerEndpoint, err)
	}

	a.CloudConfigFile = file("noidentity.json", `{"subscriptionId": "s"}`)
	if _, err := azureConfig(a, base, log); cloud.KindOf(err) != cloud.Fatal || !strings.Contains(err.Error(), "names no identity") {
		t.Errorf("credential cloudConfig, a file with no identity: %v, want a fatal error", err)
	}
	a.CloudConfigFile = file("bad.json", `{"subscriptionId": 7}`)
	a.Credential = config.CredentialManagedIdentity
	if _, err := azureConfig(a, base, log); cloud.KindOf(err) != cloud.Fatal || !strings.Contains(err.Error(), "bad.json") {
		t.Errorf("a malformed file: %v, want a fatal error naming it", err)
	}
}
