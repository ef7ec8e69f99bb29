package node

import (
	"net/netip"
	"path/filepath"
	"testing"

	"sigs.k8s.io/yaml"
)

func testNode(t *testing.T) *Node {
	t.Helper()
	dir := t.TempDir()
	n, err := New(Config{
		Name: "node0", NetNS: "/run/netns/x-node0", IP: netip.MustParseAddr("10.240.0.4"), Dir: dir,
		CNIConfDir: filepath.Join(dir, "net.d"), CgroupRoot: "/vnetk8s-x-node0", Server: "https://10.240.0.6:6443",
		CAFile: "/ca.pem", Kubeconfig: "/k.conf", ProxyKubeconfig: "/p.conf", ClusterCIDR: netip.MustParsePrefix("10.240.0.0/12"),
		SandboxImage: "vnet-cni.invalid/pause:1",
		CNIPlugins:   map[string]string{"vnet-cni": "/bin/vnet-cni"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestHostPath(t *testing.T) {
	n := testNode(t)
	dir := n.cfg.Dir
	for in, want := range map[string]string{
		"/run/containerd/containerd.sock": filepath.Join(dir, "run-containerd", "containerd.sock"),
		"/etc/cni/net.d/10-vnet.conflist": filepath.Join(dir, "net.d", "10-vnet.conflist"),
		"/var/lib/kubelet":                filepath.Join(dir, "var-lib-kubelet"),
		"/var/lib/kubeletx":               "/var/lib/kubeletx",
		"/tmp/other":                      "/tmp/other",
	} {
		if got := n.HostPath(in); got != want {
			t.Errorf("HostPath(%s) = %s, want %s", in, got, want)
		}
	}
}

func TestNewRequiresIdentity(t *testing.T) {
	if _, err := New(Config{Name: "node0"}); err == nil {
		t.Error("a node without namespace, address, directory, cgroup root and server was accepted")
	}
}

// TestConfigsParse reads kubelet's and kube-proxy's files back as YAML
// and checks the settings this VM needs.
func TestConfigsParse(t *testing.T) {
	n := testNode(t)
	var kubelet map[string]any
	if err := yaml.Unmarshal([]byte(n.kubeletConfig()), &kubelet); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{
		"failCgroupV1": false, "cgroupDriver": "cgroupfs", "cgroupRoot": "/vnetk8s-x-node0",
		"containerRuntimeEndpoint": "unix:///run/containerd/containerd.sock", "address": "10.240.0.4",
	} {
		if kubelet[k] != want {
			t.Errorf("kubelet %s = %v, want %v", k, kubelet[k], want)
		}
	}
	var proxy map[string]any
	if err := yaml.Unmarshal([]byte(n.kubeProxyConfig()), &proxy); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{"mode": "nftables", "clusterCIDR": "10.240.0.0/12", "hostnameOverride": "node0"} {
		if proxy[k] != want {
			t.Errorf("kube-proxy %s = %v, want %v", k, proxy[k], want)
		}
	}
	if ct, _ := proxy["conntrack"].(map[string]any); ct["maxPerCore"] != float64(0) {
		t.Errorf("kube-proxy conntrack %v: maxPerCore must be 0 (the host's nf_conntrack_max)", ct)
	}
}
