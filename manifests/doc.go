// Package manifests holds vnet-cni's Kubernetes installation: the kustomize
// base (manifests/base), the overlays (manifests/overlays/...) and, in
// charts/vnet-cni, the Helm chart that renders the same objects. Its tests
// render them with kubectl kustomize and helm (both built by make
// k8s-bins) and check what a node needs and what the daemon may do; see
// docs/install.md. manifests/crds holds the CustomResourceDefinitions.
package manifests
