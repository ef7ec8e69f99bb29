// Package cluster runs a Kubernetes cluster on the simulated Azure VNet,
// offline: the simulated cloud with one VM more than there are workers;
// on that last VM the control plane (etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler) listening on its primary
// address, so that kubelets reach it through the VNet's fabric; on every
// other VM a worker (package node: containerd, kubelet, kube-proxy in the
// VM's network namespace and a private mount namespace) and vnet-ipamd
// (package integration/cluster), whose conflist is what containerd loads.
// Pods get their addresses from vnet-cni, exactly as on a real node.
//
// What kubelet changes on the host is put back by Close: the kernel
// sysctls it sets (vm.overcommit_memory, kernel.panic, ...), its cgroups
// (every node's cgroup root, processes in it killed first), the mount
// points the nodes' bind mounts needed. Close runs when Start's context
// ends too (a test's Ctrl-C).
package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/vnet-cni/vnet-cni/cloud/sim"
	vnet "github.com/vnet-cni/vnet-cni/integration/cluster"
	"github.com/vnet-cni/vnet-cni/integration/k8s/binaries"
	"github.com/vnet-cni/vnet-cni/integration/k8s/controlplane"
	"github.com/vnet-cni/vnet-cni/integration/k8s/images"
	"github.com/vnet-cni/vnet-cni/integration/k8s/node"
	"github.com/vnet-cni/vnet-cni/internal/nodeimage"
	"github.com/vnet-cni/vnet-cni/ipamd/config"
)

// Options configure a cluster.
type Options struct {
	// Workers is the number of worker VMs (default 2).
	Workers int
	// Prefix names the run's namespaces and cgroup roots (required,
	// unique per run).
	Prefix string
	// Dir receives everything (required); the caller removes it.
	Dir string
	// BinDir holds vnet-ipamd and vnet-cni (make build).
	BinDir string
	// Kubernetes, Containerd and CNIPlugins are the built binaries
	// (package binaries): kube-*, kubelet, kubectl; containerd, its shim
	// and ctr; portmap and loopback.
	Kubernetes, Containerd, CNIPlugins binaries.Set
	// Etcd is the etcd binary; "etcd" from $PATH if empty.
	Etcd string
	// IPAMD adjusts each worker's vnet-ipamd configuration.
	IPAMD func(node string, c *config.Config)
	// DeferIPAMD leaves vnet-ipamd stopped; StartIPAMD starts it.
	DeferIPAMD bool
	// IPAMDAsDaemonSet starts no vnet-ipamd process: the node image
	// (package nodeimage, from BinDir's binaries) is imported into every
	// worker's containerd and the caller installs the DaemonSet
	// (manifests/). Each worker's mount namespace shows the node's own
	// /etc/cni/net.d, /opt/cni/bin (portmap and loopback only: the
	// DaemonSet's init step installs vnet-cni), /run/vnet-cni and
	// /var/lib/vnet-cni to the pod's hostPath volumes. IPAMD is nil then.
	IPAMDAsDaemonSet bool
	// TemplateIPs and ReadOnlyIdentity are the sim's (sim.Options): every
	// NIC created with that many secondary ipConfigurations, as a cluster
	// template's ipAddressCount makes them, and every node's identity
	// allowed to read only (403 AuthorizationFailed on a write).
	TemplateIPs      int
	ReadOnlyIdentity bool
	// CloudConfig writes every worker's /etc/kubernetes/azure.json as an
	// AKS/acs-engine-style template does: the sim's tenant, subscription,
	// resource group, location, VNet, subnet and route table, and the VM's
	// managed identity (manifests/overlays/azure-template mounts it).
	CloudConfig bool
	// ExtraCNIPlugins are further plugins in every node's /opt/cni/bin
	// (name → host path), for a conflist other than vnet-ipamd's.
	ExtraCNIPlugins map[string]string
	// KubenetCIDR, when valid, is a kubenet cluster's cluster CIDR:
	// kube-controller-manager allocates each Node a /24 of it
	// (controlplane.Config.ClusterCIDR) and kube-proxy takes it as the
	// pods' range. vnet-ipamd runs from the DaemonSet then (it needs
	// IPAMDAsDaemonSet): the caller installs manifests/overlays/kubenet
	// (install.KubenetOverlay). It must not overlap the VNet.
	KubenetCIDR netip.Prefix
	// ContainerdMetrics serves containerd's Prometheus metrics on
	// ContainerdMetricsAddr inside every worker's network namespace.
	ContainerdMetrics bool
	// Log receives progress; slog.Default() if nil.
	Log *slog.Logger
}

// ContainerdMetricsAddr is where containerd serves its metrics in a
// worker's network namespace when Options.ContainerdMetrics is set.
var ContainerdMetricsAddr = netip.MustParseAddrPort("127.0.0.1:1338")

// Cluster is a running cluster.
type Cluster struct {
	Sim   *sim.Sim
	Desc  sim.Description
	CP    *controlplane.ControlPlane
	IPAMD *vnet.Cluster
	Nodes []*node.Node
	// Client is an admin client of the cluster.
	Client kubernetes.Interface
	// Timings of Start.
	Timings Timings

	opts     Options
	log      *slog.Logger
	sysctls  []sysctl
	created  []string // mount points made on the host, in creation order
	roots    []string // cgroup roots made
	closeMu  sync.Mutex
	closed   bool
	closeErr error
	unwatch  func() bool
	hostLock *os.File
}

// Timings say how long the parts of Start took.
type Timings struct {
	Sim, ControlPlane, Images, Nodes time.Duration
}

// Start brings the cluster up: sim, control plane, images, workers (with
// vnet-ipamd unless DeferIPAMD). It returns once every kubelet runs; the
// caller waits for the nodes it needs Ready. On an error everything
// started is stopped again.
func Start(ctx context.Context, opts Options) (_ *Cluster, err error) {
	if opts.Workers == 0 {
		opts.Workers = 2
	}
	if opts.Prefix == "" || opts.Dir == "" {
		return nil, errors.New("k8s cluster: Prefix and Dir are required")
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.KubenetCIDR.IsValid() && !opts.IPAMDAsDaemonSet {
		return nil, errors.New("k8s cluster: KubenetCIDR needs IPAMDAsDaemonSet (install manifests/overlays/kubenet)")
	}
	c := &Cluster{opts: opts, log: opts.Log}
	if c.hostLock, err = lockHost(ctx, opts.Log); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, c.Close())
		}
	}()
	// A cancelled context (Ctrl-C) tears the cluster down at once, even
	// while Start or a test is waiting.
	c.unwatch = context.AfterFunc(ctx, func() { _ = c.Close() })

	t := time.Now()
	c.Sim, err = sim.Start(ctx, sim.Options{Nodes: opts.Workers + 1, Prefix: opts.Prefix, Dir: filepath.Join(opts.Dir, "sim"),
		OperationDuration: 100 * time.Millisecond, PollInterval: 50 * time.Millisecond, Logger: discard(),
		TemplateIPs: opts.TemplateIPs, ReadOnlyIdentity: opts.ReadOnlyIdentity})
	if err != nil {
		return nil, fmt.Errorf("start sim: %w", err)
	}
	c.Desc = c.Sim.Description()
	c.Timings.Sim = time.Since(t)

	t = time.Now()
	cpNode := c.Desc.Nodes[len(c.Desc.Nodes)-1]
	addr, err := netip.ParseAddr(cpNode.PrimaryIP)
	if err != nil {
		return nil, fmt.Errorf("control plane address: %w", err)
	}
	c.CP, err = controlplane.Start(ctx, controlplane.Config{
		Bin: opts.Kubernetes, Etcd: opts.Etcd, TempDir: opts.Dir, NetNS: cpNode.Netns, Addr: addr, Log: opts.Log,
		ClusterCIDR: opts.KubenetCIDR,
	})
	if err != nil {
		return nil, fmt.Errorf("start control plane: %w", err)
	}
	c.Timings.ControlPlane = time.Since(t)
	rc, err := c.CP.RESTConfig()
	if err != nil {
		return nil, err
	}
	if c.Client, err = kubernetes.NewForConfig(rc); err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}

	t = time.Now()
	imgs, err := images.Build(ctx, filepath.Join(opts.Dir, "images"), images.Harness)
	if err != nil {
		return nil, err
	}
	nodeImages := []string{imgs[images.Pause], imgs[images.TestServer]}
	if opts.IPAMDAsDaemonSet {
		path, err := buildNodeImage(filepath.Join(opts.Dir, "images"), opts.BinDir)
		if err != nil {
			return nil, err
		}
		nodeImages = append(nodeImages, path)
	}
	mountns := filepath.Join(opts.Dir, "vnet-k8s-mountns")
	if err := goBuild(ctx, mountns, "github.com/vnet-cni/vnet-cni/integration/cmd/vnet-k8s-mountns"); err != nil {
		return nil, err
	}
	c.Timings.Images = time.Since(t)

	t = time.Now()
	workers := c.Desc
	workers.Nodes = c.Desc.Nodes[:opts.Workers]
	if !opts.IPAMDAsDaemonSet {
		c.IPAMD, err = vnet.New(workers, vnet.Options{Dir: filepath.Join(opts.Dir, "ipamd"), BinDir: opts.BinDir,
			IPAMD: func(name string, cfg *config.Config) {
				// The conflist at 1.1.0: containerd v2 calls STATUS, and
				// the chained portmap is one that speaks 1.1.0.
				cfg.CNIVersion = config.DefaultCNIVersion
				if opts.IPAMD != nil {
					opts.IPAMD(name, cfg)
				}
			}})
		if err != nil {
			return nil, fmt.Errorf("vnet-ipamd: %w", err)
		}
	}
	if err := c.prepareHost(); err != nil {
		return nil, err
	}
	caFile := filepath.Join(opts.Dir, "cluster-ca.pem")
	if err := os.WriteFile(caFile, c.CP.CAPEM, 0o644); err != nil {
		return nil, err
	}
	proxyCfg := filepath.Join(opts.Dir, "kube-proxy.kubeconfig")
	if err := c.writeKubeconfig(proxyCfg, "system:kube-proxy"); err != nil {
		return nil, err
	}
	vnetPrefix, err := netip.ParsePrefix(c.Desc.VNetPrefixes[0])
	if err != nil {
		return nil, fmt.Errorf("vnet prefix: %w", err)
	}
	// The pods' range, kube-proxy's clusterCIDR: the VNet, or kubenet's
	// cluster CIDR.
	podRange := vnetPrefix
	if opts.KubenetCIDR.IsValid() {
		if opts.KubenetCIDR.Overlaps(vnetPrefix) {
			return nil, fmt.Errorf("k8s cluster: kubenet cluster CIDR %s overlaps the VNet %s", opts.KubenetCIDR, vnetPrefix)
		}
		podRange = opts.KubenetCIDR.Masked()
	}
	binDir, err := filepath.Abs(opts.BinDir)
	if err != nil {
		return nil, err
	}
	for i, nd := range workers.Nodes {
		ip, err := netip.ParseAddr(nd.PrimaryIP)
		if err != nil {
			return nil, fmt.Errorf("node %s address: %w", nd.Name, err)
		}
		kubeconfig := filepath.Join(opts.Dir, nd.Name+".kubeconfig")
		if err := c.writeKubeconfig(kubeconfig, "system:node:"+nd.Name, "system:nodes"); err != nil {
			return nil, err
		}
		root := "/vnetk8s-" + opts.Prefix + "-" + nd.Name
		if err := node.CreateCgroupRoot(root); err != nil {
			c.roots = append(c.roots, root)
			return nil, err
		}
		c.roots = append(c.roots, root)
		plugins := map[string]string{
			"portmap": opts.CNIPlugins.Path("portmap"), "loopback": opts.CNIPlugins.Path("loopback"),
		}
		confDir := filepath.Join(opts.Dir, "nodes", nd.Name, "etc-cni-net.d")
		if !opts.IPAMDAsDaemonSet {
			plugins["vnet-cni"] = filepath.Join(binDir, "vnet-cni")
			confDir = c.IPAMD.Nodes[i].Config.CNIConfDir
		}
		for name, path := range opts.ExtraCNIPlugins {
			plugins[name] = path
		}
		var metrics netip.AddrPort
		if opts.ContainerdMetrics {
			metrics = ContainerdMetricsAddr
		}
		n, err := node.New(node.Config{
			Name: nd.Name, NetNS: nd.Netns, IP: ip, Dir: filepath.Join(opts.Dir, "nodes", nd.Name),
			Kubernetes: opts.Kubernetes, Containerd: opts.Containerd, MountNS: mountns,
			CNIConfDir: confDir,
			CNIPlugins: plugins, ContainerdMetrics: metrics,
			CgroupRoot: root, Server: c.CP.Server, CAFile: caFile,
			Kubeconfig: kubeconfig, ProxyKubeconfig: proxyCfg, ClusterCIDR: podRange,
			Images: nodeImages, SandboxImage: images.Pause,
			Log: opts.Log,
		})
		if err != nil {
			return nil, err
		}
		if opts.CloudConfig {
			if err := writeAzureJSON(n.HostPath("/etc/kubernetes/azure.json"), c.Desc); err != nil {
				return nil, fmt.Errorf("node %s: %w", nd.Name, err)
			}
		}
		c.Nodes = append(c.Nodes, n)
	}
	for _, n := range c.Nodes {
		if err := n.Start(ctx); err != nil {
			return nil, err
		}
	}
	if !opts.DeferIPAMD && !opts.IPAMDAsDaemonSet {
		if err := c.StartIPAMD(ctx); err != nil {
			return nil, err
		}
	}
	c.Timings.Nodes = time.Since(t)
	return c, nil
}

// StartIPAMD starts every worker's vnet-ipamd and waits until each has
// written its conflist.
func (c *Cluster) StartIPAMD(ctx context.Context) error {
	if c.IPAMD == nil {
		return errors.New("k8s cluster: vnet-ipamd runs as a DaemonSet")
	}
	return c.IPAMD.Start(ctx)
}

// buildNodeImage writes the node image of binDir's vnet-ipamd and
// vnet-cni into dir and returns the tarball's path.
func buildNodeImage(dir, binDir string) (string, error) {
	opts := nodeimage.Options{IPAMD: filepath.Join(binDir, "vnet-ipamd"), Plugin: filepath.Join(binDir, "vnet-cni")}
	if _, err := os.Stat(nodeimage.DefaultCABundle); err == nil {
		opts.CABundle = nodeimage.DefaultCABundle
	}
	res, err := nodeimage.Build(opts)
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "vnet-cni.tar")
	if err := os.WriteFile(path, res.Tarball, 0o644); err != nil {
		return "", fmt.Errorf("write node image: %w", err)
	}
	return path, nil
}

// writeAzureJSON writes the cloud-provider configuration of a node of the
// sim's cluster, as an acs-engine template writes /etc/kubernetes/azure.json
// (the fields vnet-ipamd reads and some it ignores).
func writeAzureJSON(path string, d sim.Description) error {
	doc, err := json.MarshalIndent(map[string]any{
		"cloud": "AzurePublicCloud", "tenantId": d.TenantID, "subscriptionId": d.SubscriptionID,
		"resourceGroup": d.ResourceGroup, "location": d.Location, "vnetName": d.VNet, "vnetResourceGroup": d.ResourceGroup,
		"subnetName": d.Subnet, "routeTableName": d.RouteTable, "useManagedIdentityExtension": true,
		"useInstanceMetadata": true, "vmType": "standard", "cloudProviderBackoff": true,
	}, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, doc, 0o600); err != nil {
		return fmt.Errorf("write azure.json: %w", err)
	}
	return nil
}

func (c *Cluster) writeKubeconfig(path, user string, groups ...string) error {
	kp, err := c.CP.SignClient(user, groups...)
	if err != nil {
		return err
	}
	return c.CP.WriteKubeconfig(path, user, kp)
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

// goBuild builds a static program of this module.
func goBuild(ctx context.Context, out, pkg string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-buildvcs=false")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build %s: %w: %s", pkg, err, strings.TrimSpace(string(b)))
	}
	return nil
}

// hostSysctls are the kernel settings kubelet writes at start (its
// protectKernelDefaults off); none is per network namespace, so Close
// writes back what they were.
var hostSysctls = []string{
	"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes",
}

type sysctl struct{ key, value string }

// prepareHost records the sysctls kubelet will change and makes the
// mount points the nodes bind over where the host lacks them.
func (c *Cluster) prepareHost() error {
	for _, k := range hostSysctls {
		v, err := os.ReadFile("/proc/sys/" + k)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("read sysctl %s: %w", k, err)
		}
		c.sysctls = append(c.sysctls, sysctl{k, strings.TrimSpace(string(v))})
	}
	for _, t := range node.Targets {
		var missing []string
		for d := t; d != "/"; d = filepath.Dir(d) {
			if _, err := os.Stat(d); err == nil {
				break
			}
			missing = append(missing, d)
		}
		for i := len(missing) - 1; i >= 0; i-- {
			if err := os.Mkdir(missing[i], 0o755); err != nil {
				return fmt.Errorf("mount point %s: %w", missing[i], err)
			}
			c.created = append(c.created, missing[i])
		}
	}
	return nil
}

// restoreHost writes the recorded sysctls back and removes the mount
// points made, deepest first (one still in use by another run stays).
func (c *Cluster) restoreHost() error {
	var errs []error
	for _, s := range c.sysctls {
		cur, err := os.ReadFile("/proc/sys/" + s.key)
		if err == nil && strings.TrimSpace(string(cur)) == s.value {
			continue
		}
		if err := os.WriteFile("/proc/sys/"+s.key, []byte(s.value), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("restore sysctl %s: %w", s.key, err))
		}
	}
	for i := len(c.created) - 1; i >= 0; i-- {
		if err := syscall.Rmdir(c.created[i]); err != nil && !errors.Is(err, syscall.ENOENT) &&
			!errors.Is(err, syscall.ENOTEMPTY) && !errors.Is(err, syscall.EBUSY) {
			errs = append(errs, fmt.Errorf("remove mount point %s: %w", c.created[i], err))
		}
	}
	return errors.Join(errs...)
}

// Sysctls returns the recorded host sysctls (key → value before the run).
func (c *Cluster) Sysctls() map[string]string {
	m := map[string]string{}
	for _, s := range c.sysctls {
		m[s.key] = s.value
	}
	return m
}

// CgroupRoots returns the nodes' cgroup roots.
func (c *Cluster) CgroupRoots() []string { return slices.Clone(c.roots) }

// CreatedMountPoints returns the mount points made on the host.
func (c *Cluster) CreatedMountPoints() []string { return slices.Clone(c.created) }

// Close stops everything in order: every kubelet, every kube-proxy, every
// containerd (and what they left: shims, containers, cgroups, the mount
// namespaces), every vnet-ipamd, the control plane (kube-apiserver before
// etcd), the sim; then puts the host's sysctls back and removes the mount
// points it made. Safe to call more than once; later calls return the
// first's result.
func (c *Cluster) Close() error {
	c.closeMu.Lock()
	defer c.closeMu.Unlock()
	if c.closed {
		return c.closeErr
	}
	c.closed = true
	if c.unwatch != nil {
		c.unwatch()
	}
	var errs []error
	for _, comp := range []string{node.Kubelet, node.KubeProxy, node.Containerd} {
		for _, n := range c.Nodes {
			errs = append(errs, n.Stop(comp, syscall.SIGTERM))
		}
	}
	for _, n := range c.Nodes {
		errs = append(errs, n.Close())
	}
	for _, r := range c.roots {
		errs = append(errs, node.RemoveCgroupRoot(r))
	}
	if c.IPAMD != nil {
		errs = append(errs, c.IPAMD.Close())
	}
	if c.CP != nil {
		errs = append(errs, c.CP.Stop())
	}
	if c.Sim != nil {
		errs = append(errs, c.Sim.Close())
	}
	errs = append(errs, c.restoreHost())
	if c.hostLock != nil {
		errs = append(errs, c.hostLock.Close())
	}
	c.closeErr = errors.Join(errs...)
	c.log.Info("k8s cluster closed", "err", c.closeErr)
	return c.closeErr
}
