package manifests

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"

	"github.com/vnet-cni/vnet-cni/integration/k8s/binaries"
	"github.com/vnet-cni/vnet-cni/ipamd/config"
	"github.com/vnet-cni/vnet-cni/ipamd/routecontroller"
)

// TestIPAMDConfigsValid: every ipamd.json shipped is a configuration
// vnet-ipamd accepts.
func TestIPAMDConfigsValid(t *testing.T) {
	for _, p := range []string{"base/ipamd.json", "overlays/sim/ipamd.json", "overlays/azure-template/ipamd.json", "overlays/kubenet/ipamd.json"} {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := config.Parse(b); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
}

func kubectl(t *testing.T) string {
	t.Helper()
	set, ok := binaries.Find(binaries.Options{})
	if !ok {
		t.Skipf("kubectl not built in %s: run `make k8s-bins`", binaries.DefaultDir(binaries.Version))
	}
	return set.Path("kubectl")
}

func helm(t *testing.T) string {
	t.Helper()
	set, ok := binaries.FindModule(binaries.Options{}, binaries.Helm(binaries.HelmVersion))
	if !ok {
		t.Skipf("helm %s not built in %s: run `make k8s-bins`", binaries.HelmVersion, binaries.DefaultModuleDir(binaries.Helm(binaries.HelmVersion)))
	}
	return set.Path("helm")
}

func run(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", filepath.Base(name), strings.Join(args, " "), err, stderr.String())
	}
	return out
}

// objects decodes a multi-document YAML stream into typed objects, keyed
// by "Kind namespace/name".
func objects(t *testing.T, stream []byte) map[string]runtime.Object {
	t.Helper()
	objs := map[string]runtime.Object{}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(stream)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return objs
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(bytes.TrimSpace(doc)) == 0 || strings.TrimSpace(stripComments(string(doc))) == "" {
			continue
		}
		obj, gvk, err := scheme.Codecs.UniversalDeserializer().Decode(doc, nil, nil)
		if runtime.IsNotRegisteredError(err) {
			// A kind client-go's scheme does not know (the CRD).
			u := &unstructured.Unstructured{}
			if err = yaml.Unmarshal(doc, &u.Object); err == nil {
				obj = u
				k := u.GroupVersionKind()
				gvk = &k
			}
		}
		if err != nil {
			t.Fatalf("decode %s: %v", doc, err)
		}
		m, err := metaOf(obj)
		if err != nil {
			t.Fatal(err)
		}
		key := gvk.Kind + " " + m
		if _, dup := objs[key]; dup {
			t.Errorf("%s rendered twice", key)
		}
		objs[key] = obj
	}
}

func stripComments(s string) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

func metaOf(obj runtime.Object) (string, error) {
	type named interface {
		GetNamespace() string
		GetName() string
	}
	n, ok := obj.(named)
	if !ok {
		return "", errors.New("object without metadata")
	}
	return n.GetNamespace() + "/" + n.GetName(), nil
}

func keys(objs map[string]runtime.Object) []string {
	var ks []string
	for k := range objs {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

var wantObjects = []string{
	"ClusterRole /vnet-ipamd",
	"ClusterRoleBinding /vnet-ipamd",
	"ConfigMap vnet-cni/vnet-cni-config",
	"CustomResourceDefinition /vnetnodes.vnet-cni.io",
	"DaemonSet vnet-cni/vnet-ipamd",
	"Namespace /vnet-cni",
	"ServiceAccount vnet-cni/vnet-ipamd",
}

// wantRules are the daemon's rights, exactly (docs/install.md says why).
var wantRules = []rbacv1.PolicyRule{
	{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"list", "watch"}},
	{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
	{APIGroups: []string{"vnet-cni.io"}, Resources: []string{"vnetnodes"}, Verbs: []string{"list", "watch", "create"}},
	{APIGroups: []string{"vnet-cni.io"}, Resources: []string{"vnetnodes/status"}, Verbs: []string{"patch"}},
}

// wantHostPaths are the host paths the pod mounts and no more.
var wantHostPaths = []string{"/etc/cni/net.d", "/opt/cni/bin", "/run/vnet-cni", "/var/lib/vnet-cni"}

// checkInstall checks what every rendering must hold: the objects, the
// RBAC rules, the DaemonSet's node-level settings, and a configuration
// vnet-ipamd accepts (returned).
func checkInstall(t *testing.T, objs map[string]runtime.Object, extraHostPaths ...string) config.Config {
	t.Helper()
	return checkInstallOf(t, objs, wantObjects, wantRules, extraHostPaths...)
}

// checkInstallOf is checkInstall with the objects and the ClusterRole's
// rules given.
func checkInstallOf(t *testing.T, objs map[string]runtime.Object, wantObjects []string, wantRules []rbacv1.PolicyRule, extraHostPaths ...string) config.Config {
	t.Helper()
	if diff := cmp.Diff(wantObjects, keys(objs)); diff != "" {
		t.Fatalf("objects (-want +got):\n%s", diff)
	}
	role := objs["ClusterRole /vnet-ipamd"].(*rbacv1.ClusterRole)
	if diff := cmp.Diff(wantRules, role.Rules); diff != "" {
		t.Errorf("ClusterRole rules (-want +got):\n%s", diff)
	}
	binding := objs["ClusterRoleBinding /vnet-ipamd"].(*rbacv1.ClusterRoleBinding)
	if binding.RoleRef.Name != "vnet-ipamd" || len(binding.Subjects) != 1 ||
		binding.Subjects[0] != (rbacv1.Subject{Kind: "ServiceAccount", Name: "vnet-ipamd", Namespace: "vnet-cni"}) {
		t.Errorf("ClusterRoleBinding %+v", binding)
	}
	ds := objs["DaemonSet vnet-cni/vnet-ipamd"].(*appsv1.DaemonSet)
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork || spec.PriorityClassName != "system-node-critical" || spec.ServiceAccountName != "vnet-ipamd" ||
		spec.DNSPolicy != corev1.DNSDefault {
		t.Errorf("pod spec: hostNetwork %v priorityClass %q serviceAccount %q dnsPolicy %q",
			spec.HostNetwork, spec.PriorityClassName, spec.ServiceAccountName, spec.DNSPolicy)
	}
	if len(spec.Tolerations) != 1 || spec.Tolerations[0] != (corev1.Toleration{Operator: corev1.TolerationOpExists}) {
		t.Errorf("tolerations %+v, want one with operator Exists", spec.Tolerations)
	}
	if ds.Spec.UpdateStrategy.Type != appsv1.RollingUpdateDaemonSetStrategyType {
		t.Errorf("update strategy %q", ds.Spec.UpdateStrategy.Type)
	}
	var hostPaths []string
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			hostPaths = append(hostPaths, v.HostPath.Path)
		}
	}
	slices.Sort(hostPaths)
	want := append(slices.Clone(wantHostPaths), extraHostPaths...)
	slices.Sort(want)
	if diff := cmp.Diff(want, hostPaths); diff != "" {
		t.Errorf("host paths (-want +got):\n%s", diff)
	}
	if len(spec.Containers) != 1 || len(spec.InitContainers) != 1 {
		t.Fatalf("%d containers, %d init containers", len(spec.Containers), len(spec.InitContainers))
	}
	c := spec.Containers[0]
	sc := c.SecurityContext
	if sc == nil || sc.Privileged == nil || *sc.Privileged || sc.Capabilities == nil {
		t.Fatalf("the daemon's container is privileged or has no capabilities: %+v", sc)
	}
	if diff := cmp.Diff([]corev1.Capability{"NET_ADMIN"}, sc.Capabilities.Add); diff != "" {
		t.Errorf("added capabilities (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]corev1.Capability{"ALL"}, sc.Capabilities.Drop); diff != "" {
		t.Errorf("dropped capabilities (-want +got):\n%s", diff)
	}
	for name, p := range map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" || p.HTTPGet.Host != "127.0.0.1" || p.HTTPGet.Port.IntValue() != 10093 {
			t.Errorf("%s probe %+v, want GET 127.0.0.1:10093/healthz", name, p)
		}
	}
	var nodeName bool
	for _, e := range c.Env {
		nodeName = nodeName || (e.Name == "NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName")
	}
	if !nodeName {
		t.Error("NODE_NAME does not come from spec.nodeName")
	}
	// Only the init step is privileged, and it mounts only the CNI bin
	// directory of the host.
	init := spec.InitContainers[0]
	if init.Args[0] != "prepare" {
		t.Errorf("init container args %q", init.Args)
	}
	for _, m := range c.VolumeMounts {
		if m.Name == "cni-bin" {
			t.Error("the daemon's container mounts the host's CNI bin directory (the init step installs the plugin)")
		}
	}
	cm := objs["ConfigMap vnet-cni/vnet-cni-config"].(*corev1.ConfigMap)
	cfg, err := config.Parse([]byte(cm.Data["ipamd.json"]))
	if err != nil {
		t.Fatalf("the ConfigMap's ipamd.json: %v", err)
	}
	return cfg
}

// TestKustomizeBase renders manifests/base with kubectl kustomize.
func TestKustomizeBase(t *testing.T) {
	objs := objects(t, run(t, kubectl(t), "kustomize", "base"))
	cfg := checkInstall(t, objs)
	if cfg.Cloud.Azure.ResourceManagerEndpoint != config.DefaultResourceManagerEndpoint || cfg.Cloud.Azure.CAFile != "" {
		t.Errorf("base config: endpoint %q, CA %q", cfg.Cloud.Azure.ResourceManagerEndpoint, cfg.Cloud.Azure.CAFile)
	}
}

// TestKustomizeSimOverlay: the sim overlay replaces the configuration and
// mounts the CA's ConfigMap where the configuration's caFile says.
func TestKustomizeSimOverlay(t *testing.T) {
	objs := objects(t, run(t, kubectl(t), "kustomize", "overlays/sim"))
	cfg := checkInstall(t, objs)
	if !strings.HasPrefix(cfg.Cloud.Azure.CAFile, "/etc/vnet-cni-ca/") {
		t.Errorf("caFile %q", cfg.Cloud.Azure.CAFile)
	}
	ds := objs["DaemonSet vnet-cni/vnet-ipamd"].(*appsv1.DaemonSet)
	var mounted, volume bool
	for _, m := range ds.Spec.Template.Spec.Containers[0].VolumeMounts {
		mounted = mounted || (m.Name == "cloud-ca" && m.MountPath == "/etc/vnet-cni-ca")
	}
	for _, v := range ds.Spec.Template.Spec.Volumes {
		volume = volume || (v.Name == "cloud-ca" && v.ConfigMap != nil && v.ConfigMap.Name == "vnet-cni-cloud-ca")
	}
	if !mounted || !volume {
		t.Errorf("cloud CA mounted %v, volume %v", mounted, volume)
	}
}

// TestKustomizeAzureTemplateOverlay: the template overlay mounts the
// node's azure.json, that one file, read-only, where the configuration's
// cloudConfigFile says, and uses its identity.
func TestKustomizeAzureTemplateOverlay(t *testing.T) {
	objs := objects(t, run(t, kubectl(t), "kustomize", "overlays/azure-template"))
	cfg := checkInstall(t, objs, "/etc/kubernetes/azure.json")
	if cfg.Cloud.Azure.Credential != config.CredentialCloudConfig || cfg.Cloud.Azure.CloudConfigFile != "/etc/kubernetes/azure.json" {
		t.Errorf("credential %q, cloudConfigFile %q", cfg.Cloud.Azure.Credential, cfg.Cloud.Azure.CloudConfigFile)
	}
	ds := objs["DaemonSet vnet-cni/vnet-ipamd"].(*appsv1.DaemonSet)
	var mounted bool
	for _, m := range ds.Spec.Template.Spec.Containers[0].VolumeMounts {
		mounted = mounted || (m.Name == "azure-json" && m.MountPath == cfg.Cloud.Azure.CloudConfigFile && m.ReadOnly)
	}
	for _, v := range ds.Spec.Template.Spec.Volumes {
		if v.Name == "azure-json" && (v.HostPath == nil || v.HostPath.Type == nil || *v.HostPath.Type != corev1.HostPathFile) {
			t.Errorf("azure-json volume %+v, want a hostPath of type File", v)
		}
	}
	if !mounted {
		t.Error("azure.json not mounted read-only at cloudConfigFile")
	}
}

// Kubenet mode's objects and rights beyond the base's: the route
// controller's Lease in the daemon's namespace (a Role, not a ClusterRole)
// and the patch of its Node's status (the NetworkUnavailable condition).
var (
	wantKubenetObjects = sortedCopy(append(slices.Clone(wantObjects), "Role vnet-cni/vnet-ipamd-routes", "RoleBinding vnet-cni/vnet-ipamd-routes"))
	wantKubenetRules   = append(slices.Clone(wantRules),
		rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"nodes/status"}, Verbs: []string{"patch"}})
	wantLeaseRules = []rbacv1.PolicyRule{
		{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"create"}},
		{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, ResourceNames: []string{routecontroller.DefaultLeaseName}, Verbs: []string{"get", "update"}},
	}
)

func sortedCopy(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// checkKubenet checks a kubenet rendering: the base's checks with
// kubenet's objects and rules, the Lease's Role bound to the daemon's
// ServiceAccount in its namespace, and a configuration in mode kubenet
// whose Lease is the one the Role names, with the cluster CIDR given.
func checkKubenet(t *testing.T, objs map[string]runtime.Object, clusterCIDR string) config.Config {
	t.Helper()
	cfg := checkInstallOf(t, objs, wantKubenetObjects, wantKubenetRules)
	role := objs["Role vnet-cni/vnet-ipamd-routes"].(*rbacv1.Role)
	if diff := cmp.Diff(wantLeaseRules, role.Rules); diff != "" {
		t.Errorf("Role vnet-ipamd-routes rules (-want +got):\n%s", diff)
	}
	binding := objs["RoleBinding vnet-cni/vnet-ipamd-routes"].(*rbacv1.RoleBinding)
	if binding.RoleRef != (rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "vnet-ipamd-routes"}) || len(binding.Subjects) != 1 ||
		binding.Subjects[0] != (rbacv1.Subject{Kind: "ServiceAccount", Name: "vnet-ipamd", Namespace: "vnet-cni"}) {
		t.Errorf("RoleBinding %+v", binding)
	}
	k := cfg.Kubenet
	if cfg.Mode != config.ModeKubenet || k.ClusterCIDR != clusterCIDR || k.PodCIDR != "" || !k.ControllerEnabled(cfg.Kubernetes.Enabled) ||
		k.LeaseName != routecontroller.DefaultLeaseName || k.LeaseNamespace != role.Namespace {
		t.Errorf("kubenet configuration: mode %q, %+v, kubernetes %v", cfg.Mode, k, cfg.Kubernetes.Enabled)
	}
	return cfg
}

// TestKustomizeKubenetOverlay: the kubenet overlay is the base in mode
// kubenet with the sim's cluster CIDR and kubenet's rights, nothing more.
func TestKustomizeKubenetOverlay(t *testing.T) {
	objs := objects(t, run(t, kubectl(t), "kustomize", "overlays/kubenet"))
	cfg := checkKubenet(t, objs, "10.100.0.0/16")
	if cfg.Cloud.Azure.ResourceManagerEndpoint != config.DefaultResourceManagerEndpoint || cfg.Cloud.Azure.CAFile != "" {
		t.Errorf("kubenet config: endpoint %q, CA %q", cfg.Cloud.Azure.ResourceManagerEndpoint, cfg.Cloud.Azure.CAFile)
	}
}

// TestHelmChartKubenet: the chart with mode=kubenet and the cluster CIDR
// renders the objects of manifests/overlays/kubenet, and refuses kubenet
// without a cluster CIDR.
func TestHelmChartKubenet(t *testing.T) {
	h := helm(t)
	chart := filepath.Join("..", "charts", "vnet-cni")
	fromHelm := objects(t, run(t, h, "template", "--include-crds", "vnet-cni", chart, "--set", "mode=kubenet,kubenet.clusterCIDR=10.100.0.0/16"))
	fromKustomize := objects(t, run(t, kubectl(t), "kustomize", "overlays/kubenet"))
	helmCfg := checkKubenet(t, fromHelm, "10.100.0.0/16")
	kustCfg := checkKubenet(t, fromKustomize, "10.100.0.0/16")
	if diff := cmp.Diff(kustCfg, helmCfg, cmpopts.EquateComparable(netip.AddrPort{})); diff != "" {
		t.Errorf("ipamd.json: kustomize kubenet overlay vs helm (-kustomize +helm):\n%s", diff)
	}
	for _, objs := range []map[string]runtime.Object{fromHelm, fromKustomize} {
		objs["ConfigMap vnet-cni/vnet-cni-config"].(*corev1.ConfigMap).Data = nil
	}
	for _, key := range wantKubenetObjects {
		if diff := cmp.Diff(fromKustomize[key], fromHelm[key]); diff != "" {
			t.Errorf("%s: kustomize kubenet overlay vs helm (-kustomize +helm):\n%s", key, diff)
		}
	}
	cmd := exec.Command(h, "template", "vnet-cni", chart, "--set", "mode=kubenet")
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "kubenet.clusterCIDR is required") {
		t.Errorf("mode=kubenet without kubenet.clusterCIDR: %v\n%s", err, out)
	}
}

// TestHelmChart: helm lint passes, helm template with the default values
// renders the objects of the kustomize base (the configuration compared
// as vnet-ipamd reads it), and the values for the pool knobs and the CA
// reach the configuration and the DaemonSet.
func TestHelmChart(t *testing.T) {
	h := helm(t)
	k := kubectl(t)
	chart := filepath.Join("..", "charts", "vnet-cni")
	run(t, h, "lint", "--strict", chart)
	fromHelm := objects(t, run(t, h, "template", "--include-crds", "vnet-cni", chart))
	fromKustomize := objects(t, run(t, k, "kustomize", "base"))
	helmCfg := checkInstall(t, fromHelm)
	kustCfg := checkInstall(t, fromKustomize)
	if diff := cmp.Diff(kustCfg, helmCfg, cmpopts.EquateComparable(netip.AddrPort{})); diff != "" {
		t.Errorf("ipamd.json: kustomize base vs helm (-kustomize +helm):\n%s", diff)
	}
	for _, objs := range []map[string]runtime.Object{fromHelm, fromKustomize} {
		objs["ConfigMap vnet-cni/vnet-cni-config"].(*corev1.ConfigMap).Data = nil
	}
	for _, key := range wantObjects {
		if diff := cmp.Diff(fromKustomize[key], fromHelm[key]); diff != "" {
			t.Errorf("%s: kustomize base vs helm (-kustomize +helm):\n%s", key, diff)
		}
	}

	set := run(t, h, "template", "--include-crds", "vnet-cni", chart, "--set",
		"pool.warmIPTarget=3,pool.maxIPs=50,pool.batchSize=4,pool.cooldown=5s,mode=routed,cloud.azure.caConfigMap=my-ca,cloud.azure.resourceManagerEndpoint=https://arm.example:8443,image.tag=v1")
	objs := objects(t, set)
	cfg := checkInstall(t, objs)
	if cfg.WarmIPTarget != 3 || cfg.MaxIPs != 50 || cfg.BatchSize != 4 || cfg.Cooldown.D().String() != "5s" || cfg.Mode != config.ModeRouted ||
		cfg.Cloud.Azure.CAFile != "/etc/vnet-cni-ca/ca.pem" || cfg.Cloud.Azure.ResourceManagerEndpoint != "https://arm.example:8443" {
		t.Errorf("values not in the configuration: %+v", cfg)
	}
	ds := objs["DaemonSet vnet-cni/vnet-ipamd"].(*appsv1.DaemonSet)
	if img := ds.Spec.Template.Spec.Containers[0].Image; img != "vnet-cni.invalid/vnet-cni:v1" {
		t.Errorf("image %q", img)
	}
	var volume bool
	for _, v := range ds.Spec.Template.Spec.Volumes {
		volume = volume || (v.Name == "cloud-ca" && v.ConfigMap != nil && v.ConfigMap.Name == "my-ca")
	}
	if !volume {
		t.Error("no cloud-ca volume from cloud.azure.caConfigMap")
	}
	// An invalid value renders a configuration the daemon refuses.
	bad := objects(t, run(t, h, "template", "--include-crds", "vnet-cni", chart, "--set", "pool.warmIPTarget=500,pool.maxIPs=20"))
	if _, err := config.Parse([]byte(bad["ConfigMap vnet-cni/vnet-cni-config"].(*corev1.ConfigMap).Data["ipamd.json"])); err == nil {
		t.Error("warmIPTarget above maxIPs accepted")
	}
}

// TestChartCRDIsTheManifestsCRD: the chart carries the VNetNode CRD in its
// crds/ directory (Helm installs it before the templates); it is the same
// file as manifests/crds', so the two cannot drift apart.
func TestChartCRDIsTheManifestsCRD(t *testing.T) {
	a, err := os.ReadFile("crds/vnetnodes.vnet-cni.io.yaml")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("../charts/vnet-cni/crds/vnetnodes.vnet-cni.io.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Error("charts/vnet-cni/crds/vnetnodes.vnet-cni.io.yaml differs from manifests/crds/vnetnodes.vnet-cni.io.yaml: copy it")
	}
}
