// Package cluster runs vnet-cni end to end on the simulated cloud the way a
// Kubernetes node does: vnet-ipamd started inside each node namespace with
// its own configuration file (on Azure: managed identity through the sim's
// IMDS, the ARM endpoint and CA from sim.json; on AWS: the instance role
// through IMDSv2, the EC2 endpoint and CA from sim.json, routed mode), and
// the vnet-cni plugin executed by libcni from inside the node with the
// conflist the daemon wrote, chained with the reference plugins. Tests, the
// demo and the benchmark share it.
package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vnet-cni/vnet-cni/cloud/sim"
	"github.com/vnet-cni/vnet-cni/ipamd/api"
	"github.com/vnet-cni/vnet-cni/ipamd/config"
)

// Options configure a cluster on an already running simulated cloud.
type Options struct {
	// Dir receives every node's files (config, store, socket, conflist, logs).
	Dir string
	// BinDir holds vnet-ipamd and vnet-cni (default: bin/ of the repository).
	BinDir string
	// PluginDirs are searched for the chained reference plugins (default /usr/lib/cni).
	PluginDirs []string
	// IPAMD adjusts each node's daemon configuration before it is written.
	IPAMD func(node string, c *config.Config)
	// Logger receives progress; nil discards.
	Logger *slog.Logger
	// PluginStderr receives what the plugins write to stderr (their log
	// lines); nil means os.Stderr, as libcni does.
	PluginStderr io.Writer
	// StoreOnTmpfs mounts a tmpfs on each node's store directory, as a
	// node's /run (where the default storeDir lives) is; Close unmounts it.
	StoreOnTmpfs bool
	// KubenetCIDR, when valid, runs the nodes in kubenet mode (Azure
	// only): the cluster CIDR, of which node i gets the i-th /24 as its
	// pod CIDR (kubenet.podCIDR, as kubelet's --pod-cidr on a node without
	// the API server). IPAMD runs after and may change it.
	KubenetCIDR netip.Prefix
}

// KubenetPodCIDR is the pod CIDR of node i in a cluster of cluster CIDR
// cidr: its i-th /24.
func KubenetPodCIDR(cidr netip.Prefix, i int) netip.Prefix {
	a := cidr.Masked().Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v += uint32(i) << 8
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), 24)
}

// Cluster is a set of nodes with their daemons.
type Cluster struct {
	Desc  sim.Description
	Nodes []*Node
	opts  Options
	log   *slog.Logger
}

// Node is one simulated VM with its vnet-ipamd.
type Node struct {
	Name      string
	NSPath    string
	PrimaryIP string
	// NIC is the node's primary interface in the cloud: the Azure NIC's
	// name, the primary ENI's ID on AWS.
	NIC string
	// InstanceID is the EC2 instance's ID (AWS only).
	InstanceID string
	// Dir holds the node's files.
	Dir        string
	ConfigPath string
	Config     config.Config
	LogPath    string
	// ExtraArgs are added to vnet-ipamd's command line on every start
	// (e.g. --boot-id-file for a simulated reboot).
	ExtraArgs []string
	cluster   *Cluster
	// tmpfs is the store's mount point when Options.StoreOnTmpfs is set.
	tmpfs string

	mu   sync.Mutex // guards cmd, done and pods
	cmd  *exec.Cmd
	done chan struct{}
	pods map[string]*Pod
}

// New prepares the nodes of desc (writing each daemon's configuration) but
// starts nothing.
func New(desc sim.Description, opts Options) (*Cluster, error) {
	if opts.Dir == "" {
		return nil, errors.New("cluster: Dir is required")
	}
	if opts.BinDir == "" {
		opts.BinDir = "bin"
	}
	bin, err := filepath.Abs(opts.BinDir)
	if err != nil {
		return nil, err
	}
	opts.BinDir = bin
	if len(opts.PluginDirs) == 0 {
		opts.PluginDirs = []string{"/usr/lib/cni"}
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	for _, b := range []string{"vnet-ipamd", "vnet-cni"} {
		if _, err := os.Stat(filepath.Join(opts.BinDir, b)); err != nil {
			return nil, fmt.Errorf("cluster: %s not built (make build): %w", b, err)
		}
	}
	c := &Cluster{Desc: desc, opts: opts, log: opts.Logger}
	for _, nd := range desc.Nodes {
		if nd.Netns == "" {
			return nil, fmt.Errorf("cluster: node %s has no namespace (sim without fabric?)", nd.Name)
		}
		dir := filepath.Join(opts.Dir, nd.Name)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
		nic := nd.NIC
		if desc.Cloud == sim.CloudAWS {
			nic = nd.ENIID
		}
		n := &Node{
			Name: nd.Name, NSPath: nd.Netns, PrimaryIP: nd.PrimaryIP, NIC: nic, InstanceID: nd.InstanceID,
			Dir: dir, ConfigPath: filepath.Join(dir, "ipamd.json"), LogPath: filepath.Join(dir, "ipamd.log"),
			cluster: c,
		}
		n.Config = nodeConfig(desc, dir)
		if opts.KubenetCIDR.IsValid() {
			if desc.Cloud == sim.CloudAWS {
				return nil, errors.New("cluster: kubenet mode programs an Azure route table: not on AWS")
			}
			n.Config.Mode = config.ModeKubenet
			n.Config.Kubenet.ClusterCIDR = opts.KubenetCIDR.Masked().String()
			n.Config.Kubenet.PodCIDR = KubenetPodCIDR(opts.KubenetCIDR, len(c.Nodes)).String()
			n.Config.Kubenet.StateDir = filepath.Join(dir, "podcidr")
			n.Config.Kubenet.RouteInterval = config.Duration(2 * time.Second)
			n.Config.Kubenet.RouteSettle = config.Duration(4 * time.Second)
		}
		if opts.IPAMD != nil {
			opts.IPAMD(nd.Name, &n.Config)
		}
		if err := n.WriteConfig(); err != nil {
			return nil, err
		}
		if opts.StoreOnTmpfs {
			if err := n.mountStore(); err != nil {
				return nil, errors.Join(err, c.Close())
			}
		}
		c.Nodes = append(c.Nodes, n)
	}
	return c, nil
}

// nodeConfig is a daemon configuration as a DaemonSet would mount it: the
// real provider's code path, with only the endpoint and CA of the sim. On
// AWS the datapath is routed (an ENI's addresses must leave through it;
// bridge mode has only eth0) and the cluster name, which tags the ENIs the
// daemons create, is the run's prefix.
func nodeConfig(desc sim.Description, dir string) config.Config {
	c := config.Default()
	c.WarmIPTarget = 5
	c.MaxIPs = 60
	c.BatchSize = 5
	c.IPAddressCount = 5
	c.Cooldown = config.Duration(2 * time.Second)
	c.ReleaseDelay = config.Duration(30 * time.Second)
	c.AllocateWait = config.Duration(5 * time.Second)
	c.ResyncInterval = config.Duration(10 * time.Second)
	c.SocketPath = filepath.Join(dir, "ipamd.sock")
	c.StoreDir = filepath.Join(dir, "store")
	c.CNIConfDir = filepath.Join(dir, "net.d")
	c.ReleaseSpool = filepath.Join(dir, "release-spool")
	c.PluginLockDir = filepath.Join(dir, "lock")
	// Debian's reference plugins speak CNI up to 1.0.0.
	c.CNIVersion = "1.0.0"
	if desc.Cloud == sim.CloudAWS {
		c.Mode = config.ModeRouted
		c.Cloud.Provider = config.ProviderAWS
		c.Cloud.AWS.ClusterName = desc.Prefix
		c.Cloud.AWS.Region = desc.Region
		c.Cloud.AWS.EC2Endpoint = desc.EC2Endpoint
		c.Cloud.AWS.CAFile = desc.CAFile
		return c
	}
	c.Cloud.Azure.ResourceManagerEndpoint = desc.ARMEndpoint
	c.Cloud.Azure.ResourceManagerAudience = desc.ARMAudience
	c.Cloud.Azure.CAFile = desc.CAFile
	c.Cloud.Azure.Credential = config.CredentialManagedIdentity
	// The host's own azure.json (on an Azure VM) is not the sim's.
	c.Cloud.Azure.CloudConfigFile = ""
	return c
}

// WriteConfig writes the node's daemon configuration (after a change of Config).
func (n *Node) WriteConfig() error {
	if err := n.Config.Validate(); err != nil {
		return fmt.Errorf("node %s config: %w", n.Name, err)
	}
	data, err := json.MarshalIndent(n.Config, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(n.ConfigPath, data, 0o600)
}

// Start starts every node's daemon and waits until each is ready.
func (c *Cluster) Start(ctx context.Context) error {
	for _, n := range c.Nodes {
		if err := n.StartIPAMD(); err != nil {
			return err
		}
	}
	for _, n := range c.Nodes {
		if err := n.WaitReady(ctx); err != nil {
			return err
		}
	}
	return nil
}

// StartIPAMD runs vnet-ipamd inside the node's namespace, as a DaemonSet
// pod with host networking runs it on the VM.
func (n *Node) StartIPAMD() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd != nil {
		return fmt.Errorf("node %s: vnet-ipamd already running", n.Name)
	}
	logf, err := os.OpenFile(n.LogPath, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	args := []string{"netns", "exec", filepath.Base(n.NSPath),
		filepath.Join(n.cluster.opts.BinDir, "vnet-ipamd"), "--config", n.ConfigPath, "--node-name", n.Name}
	cmd := exec.Command("ip", append(args, n.ExtraArgs...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group, so a terminal's Ctrl-C reaches only us.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		_ = logf.Close()
		return fmt.Errorf("node %s: start vnet-ipamd: %w", n.Name, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		_ = logf.Close()
		close(done)
	}()
	n.cmd, n.done = cmd, done
	n.cluster.log.Debug("vnet-ipamd started", "node", n.Name, "pid", cmd.Process.Pid)
	return nil
}

// StopIPAMD ends the node's daemon with sig (SIGTERM: graceful; SIGKILL:
// a crash) and waits for it to exit.
func (n *Node) StopIPAMD(sig syscall.Signal) error {
	n.mu.Lock()
	cmd, done := n.cmd, n.done
	n.cmd, n.done = nil, nil
	n.mu.Unlock()
	if cmd == nil {
		return nil
	}
	if err := cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("node %s: signal vnet-ipamd: %w", n.Name, err)
	}
	select {
	case <-done:
		return nil
	case <-time.After(15 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		return fmt.Errorf("node %s: vnet-ipamd did not exit within 15s of %s", n.Name, sig)
	}
}

// Running reports whether the node's daemon process is running.
func (n *Node) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.done == nil {
		return false
	}
	select {
	case <-n.done:
		return false
	default:
		return true
	}
}

// PID is the process id of the node's daemon (ip netns exec execs it, so
// it is vnet-ipamd's own), 0 when it is not running.
func (n *Node) PID() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil || n.cmd.Process == nil {
		return 0
	}
	return n.cmd.Process.Pid
}

// Client is an rpc client of the node's daemon.
func (n *Node) Client() *api.Client { return api.NewClient(n.Config.SocketPath) }

// Status asks the node's daemon for its status.
func (n *Node) Status(ctx context.Context) (api.StatusResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	return n.Client().Status(ctx, api.StatusRequest{})
}

// WaitReady waits until the daemon reports ready and has written the conflist.
func (n *Node) WaitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	var last error
	for {
		st, err := n.Status(ctx)
		if err == nil && st.Ready {
			if _, err := os.Stat(n.ConflistPath()); err == nil {
				return nil
			}
		}
		if err != nil {
			last = err
		} else {
			last = fmt.Errorf("not ready: %s", st.Reason)
		}
		if !n.Running() {
			return fmt.Errorf("node %s: vnet-ipamd exited (see %s): %w", n.Name, n.LogPath, last)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("node %s: vnet-ipamd not ready: %w", n.Name, last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// ConflistPath is where the daemon writes the CNI configuration.
func (n *Node) ConflistPath() string {
	return filepath.Join(n.Config.CNIConfDir, n.Config.CNIConfName)
}

// Close stops every daemon (SIGTERM) and removes the pods' namespaces that
// the cluster created. The simulated cloud is the caller's.
func (c *Cluster) Close() error {
	var errs []error
	for _, n := range c.Nodes {
		errs = append(errs, n.StopIPAMD(syscall.SIGTERM))
		errs = append(errs, n.removePods())
		errs = append(errs, n.unmountStore())
	}
	return errors.Join(errs...)
}

// mountStore puts the node's store directory on a fresh tmpfs.
func (n *Node) mountStore() error {
	dir := n.Config.StoreDir
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=0700,size=64m"); err != nil {
		return fmt.Errorf("mount a tmpfs on %s: %w", dir, err)
	}
	n.tmpfs = dir
	return nil
}

// unmountStore undoes mountStore; a busy mount is detached.
func (n *Node) unmountStore() error {
	if n.tmpfs == "" {
		return nil
	}
	if err := unix.Unmount(n.tmpfs, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("unmount %s: %w", n.tmpfs, err)
	}
	n.tmpfs = ""
	return nil
}
