package node

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// writeConfigs writes containerd's, kubelet's and kube-proxy's
// configuration files into the node's etc directory. Paths in them are the
// node's view (inside its mount namespace), files of the harness (CA,
// kubeconfigs) host paths, which the node sees unchanged.
func (n *Node) writeConfigs() error {
	files := map[string]string{
		"containerd.toml": n.containerdConfig(),
		"kubelet.yaml":    n.kubeletConfig(),
		"kube-proxy.yaml": n.kubeProxyConfig(),
	}
	for name, body := range files {
		if err := os.WriteFile(n.etc(name), []byte(body), 0o644); err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
	}
	return nil
}

// containerdConfig: containerd v2's configuration (version 3). The CRI
// must not raise any process's oom_score_adj (no CAP_SYS_RESOURCE in this
// VM), loads the one conflist in the node's /etc/cni/net.d, finds the
// plugins in /opt/cni/bin, and uses the harness's pause image. NRI and the
// TCP and debug endpoints are off; nothing listens but the unix sockets
// and, when configured, the metrics endpoint.
func (n *Node) containerdConfig() string {
	q := strconv.Quote
	var metrics string
	if n.cfg.ContainerdMetrics.IsValid() {
		metrics = `
  [plugins.'io.containerd.server.v1.metrics']
    address = ` + q(n.cfg.ContainerdMetrics.String()) + `
`
	}
	return `version = 3
root = "/var/lib/containerd"
state = "/run/containerd"

[grpc]
  address = "/run/containerd/containerd.sock"

[ttrpc]
  address = "/run/containerd/containerd.sock.ttrpc"

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = ` + q(n.cfg.Snapshotter) + `
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = ` + q(n.cfg.SandboxImage) + `

  [plugins.'io.containerd.cri.v1.runtime']
    restrict_oom_score_adj = true
    disable_apparmor = true
    enable_selinux = false
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = "runc"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = ` + q(n.cfg.Runc) + `
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ["/opt/cni/bin"]
      conf_dir = "/etc/cni/net.d"
      max_conf_num = 1

  [plugins.'io.containerd.grpc.v1.cri']
    disable_tcp_service = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"

  [plugins.'io.containerd.nri.v1.nri']
    disable = true
` + metrics
}

// kubeletConfig: cgroup v1 allowed, the cgroupfs driver under the node's
// own cgroup root, containerd's socket, client certificates checked
// against the cluster CA and requests authorized by the apiserver, the
// VM's address for serving, no swap check, eviction and image GC
// thresholds so low that a busy shared disk never evicts a test pod.
func (n *Node) kubeletConfig() string {
	ip := n.cfg.IP.String()
	return `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: ` + strconv.Quote(n.cfg.CgroupRoot) + `
cgroupsPerQOS: true
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
address: ` + ip + `
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: ` + strconv.Quote(n.cfg.CAFile) + `
authorization:
  mode: Webhook
clusterDomain: cluster.local
failSwapOn: false
protectKernelDefaults: false
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%"
  nodefs.inodesFree: "1%"
  imagefs.available: "1%"
  imagefs.inodesFree: "1%"
maxPods: 110
registerNode: true
rotateCertificates: false
serverTLSBootstrap: false
nodeStatusUpdateFrequency: 2s
nodeStatusReportFrequency: 10s
syncFrequency: 10s
fileCheckFrequency: 10s
staticPodPath: ""
podLogsDir: /var/log/pods
resolvConf: /etc/resolv.conf
localStorageCapacityIsolation: true
`
}

// kubeProxyConfig: nftables mode, the node's identity, no conntrack sysctl
// touched (nf_conntrack_max is the host's), health and metrics on
// loopback, and the VNet as the cluster's pod range so that pod traffic to
// a Service keeps its source address.
func (n *Node) kubeProxyConfig() string {
	var cidr string
	if n.cfg.ClusterCIDR.IsValid() {
		cidr = "clusterCIDR: " + n.cfg.ClusterCIDR.String() + "\n"
	}
	return strings.Join([]string{`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
hostnameOverride: ` + n.cfg.Name + `
bindAddress: 0.0.0.0
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
clientConnection:
  kubeconfig: ` + strconv.Quote(n.cfg.ProxyKubeconfig) + `
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
`, cidr}, "")
}
