package install

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vnet-cni/vnet-cni/cloud/sim"
	"github.com/vnet-cni/vnet-cni/integration/k8s/binaries"
	"github.com/vnet-cni/vnet-cni/ipamd/config"
)

// TestSimOverlay writes the kustomization over the repository's sim
// overlay: its resource resolves to the overlay, ipamd.json carries the
// sim's endpoint and the adjustment, ca.pem the sim's CA.
func TestSimOverlay(t *testing.T) {
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, []byte("-----BEGIN CERTIFICATE-----\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "install")
	d := sim.Description{ARMEndpoint: "https://10.0.0.1:8443", CAFile: ca}
	if err := SimOverlay(dir, "../../../manifests", d, func(cfg map[string]any) { cfg["batchSize"] = 1 }); err != nil {
		t.Fatal(err)
	}
	kust, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var res string
	for _, l := range strings.Split(string(kust), "\n") {
		if strings.HasPrefix(l, "  - ") && res == "" {
			res = strings.TrimPrefix(l, "  - ")
		}
	}
	if filepath.IsAbs(res) {
		t.Errorf("resource %q is absolute; kustomize refuses it", res)
	}
	if _, err := os.Stat(filepath.Join(dir, res, "kustomization.yaml")); err != nil {
		t.Errorf("resource %q does not resolve to the sim overlay: %v", res, err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, "ipamd.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		BatchSize int `json:"batchSize"`
		Cloud     struct {
			Azure struct {
				ResourceManagerEndpoint string `json:"resourceManagerEndpoint"`
			} `json:"azure"`
		} `json:"cloud"`
	}
	if err := json.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Cloud.Azure.ResourceManagerEndpoint != d.ARMEndpoint || cfg.BatchSize != 1 {
		t.Errorf("ipamd.json: %+v, want the sim's endpoint and batchSize 1", cfg)
	}
	if got, err := os.ReadFile(filepath.Join(dir, "ca.pem")); err != nil || !strings.HasPrefix(string(got), "-----BEGIN") {
		t.Errorf("ca.pem: %q, %v", got, err)
	}
	if err := SimOverlay(t.TempDir(), t.TempDir(), d, nil); err == nil {
		t.Error("no error for a manifests directory without the sim overlay")
	}
}

// TestTemplateOverlay: over the azure-template overlay the kustomization
// also mounts the CA and ipamd.json trusts it; kubectl kustomize renders it
// with the overlay's azure.json mount and the CA's.
func TestTemplateOverlay(t *testing.T) {
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, []byte("-----BEGIN CERTIFICATE-----\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "install")
	d := sim.Description{ARMEndpoint: "https://10.0.0.1:8443", CAFile: ca}
	if err := Overlay(dir, "../../../manifests", "azure-template", d, nil); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, "ipamd.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(raw), `"caFile": "/etc/vnet-cni-ca/ca.pem"`) || !strings.Contains(string(raw), `"credential": "cloudConfig"`) {
		t.Errorf("ipamd.json over azure-template:\n%s", raw)
	}
	kust, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(kust), "mountPath: /etc/vnet-cni-ca") {
		t.Errorf("no CA mount in the kustomization:\n%s", kust)
	}
	set, ok := binaries.Find(binaries.Options{})
	if !ok {
		t.Skip("kubectl not built: run `make k8s-bins`")
	}
	out, err := exec.Command(set.Path("kubectl"), "kustomize", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl kustomize: %v\n%s", err, out)
	}
	for _, want := range []string{"mountPath: /etc/vnet-cni-ca", "path: /etc/kubernetes/azure.json", "name: vnet-cni-cloud-ca"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("rendered installation has no %q", want)
		}
	}
}

// TestKubenetOverlay: over the kubenet overlay the kustomization trusts
// the sim's CA, and ipamd.json is a kubenet configuration vnet-ipamd
// accepts, with the overlay's cluster CIDR and the sim's route pace;
// kubectl kustomize renders it with the Lease's Role and the CA's mount.
func TestKubenetOverlay(t *testing.T) {
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, []byte("-----BEGIN CERTIFICATE-----\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "install")
	d := sim.Description{ARMEndpoint: "https://10.0.0.1:8443", CAFile: ca}
	if err := KubenetOverlay(dir, "../../../manifests", d, func(cfg map[string]any) { cfg["batchSize"] = 3 }); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, "ipamd.json"))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse(raw)
	if err != nil {
		t.Fatalf("ipamd.json over kubenet: %v\n%s", err, raw)
	}
	k := cfg.Kubenet
	if cfg.Mode != config.ModeKubenet || k.ClusterCIDR != "10.100.0.0/16" || k.RouteInterval.D() != 2*time.Second ||
		k.RouteSettle.D() != 4*time.Second || cfg.BatchSize != 3 || cfg.Cloud.Azure.CAFile != "/etc/vnet-cni-ca/ca.pem" ||
		cfg.Cloud.Azure.ResourceManagerEndpoint != d.ARMEndpoint {
		t.Errorf("ipamd.json over kubenet:\n%s", raw)
	}
	set, ok := binaries.Find(binaries.Options{})
	if !ok {
		t.Skip("kubectl not built: run `make k8s-bins`")
	}
	out, err := exec.Command(set.Path("kubectl"), "kustomize", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl kustomize: %v\n%s", err, out)
	}
	for _, want := range []string{"mountPath: /etc/vnet-cni-ca", "name: vnet-cni-cloud-ca", "kind: Role\n", "- nodes/status", `"mode": "kubenet"`} {
		if !strings.Contains(string(out), want) {
			t.Errorf("rendered installation has no %q", want)
		}
	}
}
