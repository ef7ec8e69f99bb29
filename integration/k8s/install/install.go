// Package install writes what `kubectl apply -k` needs to install vnet-cni
// from manifests/ on a cluster of package integration/k8s/cluster: a
// kustomization over an overlay (sim, azure-template) with the run's ARM
// endpoint and CA.
// The tests and vnet-demo-k8s install through it.
package install

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/vnet-cni/vnet-cni/cloud/sim"
)

// SimOverlay writes into dir a kustomization over manifests/overlays/sim
// (manifests is the repository's manifests directory): the overlay's
// ipamd.json with the sim's ARM endpoint (then adjusted by adjust, if not
// nil) and the CA's ConfigMap from the sim's CA file. dir is what to pass
// to kubectl apply -k.
func SimOverlay(dir, manifests string, d sim.Description, adjust func(cfg map[string]any)) error {
	return Overlay(dir, manifests, "sim", d, adjust)
}

// KubenetOverlay writes into dir a kustomization over
// manifests/overlays/kubenet for the sim's cluster (Overlay: the ARM
// endpoint, the CA's ConfigMap and its mount), with the route checks of
// the sim's pace: every 2 s, and the node's pods held back 4 s after a
// route write (the sim's route table takes effect after 3 s). adjust,
// if not nil, runs last.
func KubenetOverlay(dir, manifests string, d sim.Description, adjust func(cfg map[string]any)) error {
	return Overlay(dir, manifests, "kubenet", d, func(cfg map[string]any) {
		k, _ := cfg["kubenet"].(map[string]any)
		if k == nil {
			k = map[string]any{}
			cfg["kubenet"] = k
		}
		k["routeInterval"] = "2s"
		k["routeSettle"] = "4s"
		if adjust != nil {
			adjust(cfg)
		}
	})
}

// caMount mounts the CA's ConfigMap at /etc/vnet-cni-ca, for an overlay
// made for a real cloud, which trusts the system roots only.
const caMount = `patches:
  - patch: |-
      apiVersion: apps/v1
      kind: DaemonSet
      metadata:
        name: vnet-ipamd
        namespace: vnet-cni
      spec:
        template:
          spec:
            containers:
              - name: vnet-ipamd
                volumeMounts:
                  - name: cloud-ca
                    mountPath: /etc/vnet-cni-ca
                    readOnly: true
            volumes:
              - name: cloud-ca
                configMap:
                  name: vnet-cni-cloud-ca
`

// Overlay is SimOverlay over manifests/overlays/<name>. An overlay other
// than sim also gets the CA's mount and caFile /etc/vnet-cni-ca/ca.pem, as
// the sim overlay has them.
func Overlay(dir, manifests, name string, d sim.Description, adjust func(cfg map[string]any)) error {
	overlay, err := filepath.Abs(filepath.Join(manifests, "overlays", name))
	if err != nil {
		return err
	}
	raw, err := os.ReadFile(filepath.Join(overlay, "ipamd.json"))
	if err != nil {
		return fmt.Errorf("%s overlay: %w", name, err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return fmt.Errorf("%s overlay's ipamd.json: %w", name, err)
	}
	cloud, _ := cfg["cloud"].(map[string]any)
	azure, _ := cloud["azure"].(map[string]any)
	if azure == nil {
		return fmt.Errorf("%s overlay's ipamd.json: no cloud.azure", name)
	}
	azure["resourceManagerEndpoint"] = d.ARMEndpoint
	patch := ""
	if name != "sim" {
		azure["caFile"] = "/etc/vnet-cni-ca/ca.pem"
		patch = caMount
	}
	if adjust != nil {
		adjust(cfg)
	}
	out, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	ca, err := os.ReadFile(d.CAFile)
	if err != nil {
		return fmt.Errorf("sim's CA: %w", err)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	// kustomize takes no absolute path as a resource.
	rel, err := filepath.Rel(abs, overlay)
	if err != nil {
		return err
	}
	kust := `apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ` + rel + `
configMapGenerator:
  - name: vnet-cni-config
    namespace: vnet-cni
    behavior: replace
    files: [ipamd.json]
  - name: vnet-cni-cloud-ca
    namespace: vnet-cni
    files: [ca.pem]
generatorOptions:
  disableNameSuffixHash: true
` + patch
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for name, data := range map[string][]byte{"kustomization.yaml": []byte(kust), "ipamd.json": out, "ca.pem": ca} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			return err
		}
	}
	return nil
}
