// Package node runs one worker of the simulated Kubernetes cluster inside a
// VM of the simulated VNet: containerd (with runc), kubelet and kube-proxy,
// all in the VM's network namespace and in a private mount namespace held
// by vnet-k8s-mountns, in which the node's own directories are bound over
// /var/lib/kubelet, /var/lib/containerd, /run/containerd, /etc/cni/net.d,
// /opt/cni/bin, /var/lib/cni, /var/log/pods, /var/log/containers,
// /run/netns, /run/vnet-cni, /var/lib/vnet-cni and /etc/kubernetes. Two nodes on one host never see each other's files, and the
// host's own directories are never written (only the empty mount points,
// which the caller makes and removes: see Targets).
//
// The node's vnet-ipamd is not run here: it writes its conflist into
// Config.CNIConfDir, which is what the node's /etc/cni/net.d shows.
package node

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vnet-cni/vnet-cni/integration/k8s/binaries"
	"github.com/vnet-cni/vnet-cni/internal/nsnet"
)

// Config describes one worker.
type Config struct {
	// Name is the node's name in Kubernetes (kubelet's hostname override).
	Name string
	// NetNS is the path of the VM's network namespace.
	NetNS string
	// IP is the VM's primary address: kubelet's node IP.
	IP netip.Addr
	// Dir is the node's directory on the host; everything the node writes
	// lives under it.
	Dir string
	// Kubernetes holds kubelet and kube-proxy; Containerd holds
	// containerd, containerd-shim-runc-v2 and ctr.
	Kubernetes, Containerd binaries.Set
	// MountNS is the vnet-k8s-mountns program.
	MountNS string
	// Runc is the runc binary; /usr/sbin/runc if empty.
	Runc string
	// CNIConfDir is the host directory shown as the node's /etc/cni/net.d
	// (where vnet-ipamd writes its conflist).
	CNIConfDir string
	// CNIPlugins are the plugins shown in the node's /opt/cni/bin: name →
	// path of the binary on the host.
	CNIPlugins map[string]string
	// CgroupRoot is kubelet's cgroupRoot, distinct per node ("/vnetk8s-x-node0").
	CgroupRoot string
	// Server is kube-apiserver's URL; CAFile the cluster CA that signed it
	// and the clients' certificates.
	Server string
	CAFile string
	// Kubeconfig is kubelet's (system:node:<Name>), ProxyKubeconfig
	// kube-proxy's (system:kube-proxy).
	Kubeconfig, ProxyKubeconfig string
	// ClusterCIDR is kube-proxy's clusterCIDR: traffic from it to a Service
	// is not masqueraded.
	ClusterCIDR netip.Prefix
	// Images are OCI tarballs imported into containerd's k8s.io namespace.
	Images []string
	// SandboxImage is the pause image containerd's CRI uses.
	SandboxImage string
	// ContainerdMetrics is where containerd serves Prometheus metrics (in
	// the node's network namespace); none when not valid.
	ContainerdMetrics netip.AddrPort
	// Snapshotter is containerd's; "overlayfs" if empty.
	Snapshotter string
	// Log receives progress; slog.Default() if nil.
	Log *slog.Logger
}

// Targets are the paths bound over in each node's mount namespace; they
// must exist on the host (as empty directories) before Start.
var Targets = []string{
	"/etc/cni/net.d", "/opt/cni/bin", "/var/lib/cni",
	"/var/lib/kubelet", "/var/lib/containerd", "/run/containerd",
	"/var/log/pods", "/var/log/containers", "/run/netns",
	// vnet-ipamd's socket, store and lock, and the plugin's release
	// spool, where the DaemonSet (manifests/) puts them.
	"/run/vnet-cni", "/var/lib/vnet-cni",
	// The cloud-provider configuration a cluster template writes
	// (azure.json), which manifests/overlays/azure-template mounts.
	"/etc/kubernetes",
}

// hostDir maps each target to the node's directory under Dir.
func hostDir(target string) string {
	return strings.ReplaceAll(strings.TrimPrefix(target, "/"), "/", "-")
}

// Components of a node, in start order.
const (
	MountNS    = "mountns"
	Containerd = "containerd"
	Kubelet    = "kubelet"
	KubeProxy  = "kube-proxy"
)

// Node is a running worker.
type Node struct {
	cfg Config
	log *slog.Logger

	mu     sync.Mutex
	procs  map[string]*proc
	holder *proc
	stdin  io.WriteCloser // the mount namespace holder's; closing it ends it
}

// New checks cfg and makes the node's directories and configuration files.
// It starts nothing.
func New(cfg Config) (*Node, error) {
	if cfg.Name == "" || cfg.NetNS == "" || !cfg.IP.IsValid() || cfg.Dir == "" || cfg.CgroupRoot == "" || cfg.Server == "" {
		return nil, errors.New("node: Name, NetNS, IP, Dir, CgroupRoot and Server are required")
	}
	if cfg.Runc == "" {
		cfg.Runc = "/usr/sbin/runc"
	}
	if cfg.Snapshotter == "" {
		cfg.Snapshotter = "overlayfs"
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	cfg.Log = cfg.Log.With("node", cfg.Name)
	n := &Node{cfg: cfg, log: cfg.Log, procs: map[string]*proc{}}
	for _, d := range []string{"etc", "logs"} {
		if err := os.MkdirAll(filepath.Join(cfg.Dir, d), 0o755); err != nil {
			return nil, fmt.Errorf("node %s: %w", cfg.Name, err)
		}
	}
	for _, t := range Targets {
		if t == "/etc/cni/net.d" {
			if err := os.MkdirAll(cfg.CNIConfDir, 0o755); err != nil {
				return nil, fmt.Errorf("node %s: %w", cfg.Name, err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Join(cfg.Dir, hostDir(t)), 0o755); err != nil {
			return nil, fmt.Errorf("node %s: %w", cfg.Name, err)
		}
	}
	for name, path := range cfg.CNIPlugins {
		link := filepath.Join(cfg.Dir, hostDir("/opt/cni/bin"), name)
		if err := os.Symlink(path, link); err != nil && !errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("node %s: cni plugin %s: %w", cfg.Name, name, err)
		}
	}
	if err := n.writeConfigs(); err != nil {
		return nil, fmt.Errorf("node %s: %w", cfg.Name, err)
	}
	return n, nil
}

// Name is the node's name.
func (n *Node) Name() string { return n.cfg.Name }

// IP is the node's primary address.
func (n *Node) IP() netip.Addr { return n.cfg.IP }

// NetNS is the path of the node's network namespace.
func (n *Node) NetNS() string { return n.cfg.NetNS }

// HostPath is where a path of the node's view (under one of Targets) lives
// on the host: HostPath("/run/containerd/containerd.sock").
func (n *Node) HostPath(p string) string {
	for _, t := range Targets {
		if p == t || strings.HasPrefix(p, t+"/") {
			base := filepath.Join(n.cfg.Dir, hostDir(t))
			if t == "/etc/cni/net.d" {
				base = n.cfg.CNIConfDir
			}
			return filepath.Join(base, strings.TrimPrefix(p, t))
		}
	}
	return p
}

// ContainerdSocket is containerd's socket as the host reaches it.
func (n *Node) ContainerdSocket() string { return n.HostPath("/run/containerd/containerd.sock") }

// LogPath is the log file of a component.
func (n *Node) LogPath(component string) string {
	return filepath.Join(n.cfg.Dir, "logs", component+".log")
}

// LogTail returns the last lines of a component's log.
func (n *Node) LogTail(component string, lines int) string {
	return tailFile(n.LogPath(component), lines)
}

// Start starts the mount namespace holder, containerd (and imports the
// images), kubelet and kube-proxy. On an error the caller stops the node.
func (n *Node) Start(ctx context.Context) error {
	if err := n.StartMountNS(); err != nil {
		return err
	}
	if err := n.StartContainerd(ctx); err != nil {
		return err
	}
	if err := n.ImportImages(ctx); err != nil {
		return err
	}
	if err := n.StartKubelet(); err != nil {
		return err
	}
	return n.StartKubeProxy()
}

// StartMountNS starts vnet-k8s-mountns in a new mount namespace inside the
// node's network namespace and waits until its bind mounts are in place.
func (n *Node) StartMountNS() error {
	args := []string{}
	for _, t := range Targets {
		args = append(args, "--bind", n.HostPath(t)+":"+t)
	}
	cmd := exec.Command(n.cfg.MountNS, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	logf, err := os.OpenFile(n.LogPath(MountNS), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd.Stderr = logf
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if err := nsnet.Do(n.cfg.NetNS, cmd.Start); err != nil {
		logf.Close()
		return fmt.Errorf("node %s: start %s: %w", n.cfg.Name, MountNS, err)
	}
	p := &proc{name: MountNS, cmd: cmd, logPath: n.LogPath(MountNS), done: make(chan struct{})}
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err == nil && strings.TrimSpace(line) != "ready" {
			err = fmt.Errorf("said %q", line)
		}
		ready <- err
		_, _ = io.Copy(io.Discard, stdout)
	}()
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	n.mu.Lock()
	n.holder, n.stdin = p, stdin
	n.mu.Unlock()
	select {
	case err := <-ready:
		if err != nil {
			<-p.done
			return fmt.Errorf("node %s: %s: %w: %s", n.cfg.Name, MountNS, err, p.tailOr())
		}
	case <-time.After(10 * time.Second):
		return fmt.Errorf("node %s: %s not ready after 10s", n.cfg.Name, MountNS)
	}
	n.log.Info("mount namespace ready", "pid", cmd.Process.Pid)
	return nil
}

func (p *proc) tailOr() string { return tailFile(p.logPath, 10) }

// MountNSPID is the pid of the mount namespace holder, 0 if none runs.
func (n *Node) MountNSPID() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.holder == nil {
		return 0
	}
	if done, _ := n.holder.exited(); done {
		return 0
	}
	return n.holder.cmd.Process.Pid
}

// command returns a command that runs path inside the node's mount and
// network namespaces (nsenter execs it, so its pid is the program's).
func (n *Node) command(path string, args ...string) (*exec.Cmd, error) {
	pid := n.MountNSPID()
	if pid == 0 {
		return nil, fmt.Errorf("node %s: mount namespace not running", n.cfg.Name)
	}
	cmd := exec.Command("nsenter", append([]string{"--target", strconv.Itoa(pid), "--mount", "--net", "--", path}, args...)...)
	cmd.Env = []string{
		"PATH=" + n.cfg.Containerd.Dir + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=/root",
	}
	return cmd, nil
}

// startComponent starts one component in the node's namespaces.
func (n *Node) startComponent(name, path string, args ...string) error {
	n.mu.Lock()
	if p := n.procs[name]; p != nil {
		if done, _ := p.exited(); !done {
			n.mu.Unlock()
			return fmt.Errorf("node %s: %s already running", n.cfg.Name, name)
		}
	}
	n.mu.Unlock()
	cmd, err := n.command(path, args...)
	if err != nil {
		return err
	}
	p, err := start(name, cmd, n.LogPath(name))
	if err != nil {
		return fmt.Errorf("node %s: %w", n.cfg.Name, err)
	}
	n.mu.Lock()
	n.procs[name] = p
	n.mu.Unlock()
	n.log.Info("started", "component", name, "pid", cmd.Process.Pid)
	return nil
}

// StartContainerd starts containerd and waits until it answers.
func (n *Node) StartContainerd(ctx context.Context) error {
	if err := n.startComponent(Containerd, n.cfg.Containerd.Path("containerd"), "--config", n.etc("containerd.toml")); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var last error
	for {
		if done, err := n.exited(Containerd); done {
			if err == nil {
				err = errors.New("exit status 0")
			}
			return fmt.Errorf("node %s: containerd exited: %w; its log ends:\n%s", n.cfg.Name, err, n.LogTail(Containerd, 30))
		}
		out, err := n.Ctr(ctx, "version")
		if err == nil {
			return nil
		}
		last = fmt.Errorf("%w: %s", err, out)
		select {
		case <-ctx.Done():
			return fmt.Errorf("node %s: containerd not ready: %w; its log ends:\n%s", n.cfg.Name, last, n.LogTail(Containerd, 30))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Ctr runs ctr against the node's containerd from the host and returns
// its combined output.
func (n *Node) Ctr(ctx context.Context, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, n.cfg.Containerd.Path("ctr"), append([]string{"--address", n.ContainerdSocket(), "--timeout", "30s"}, args...)...)
	return cmd.CombinedOutput()
}

// ImportImages imports every image tarball into containerd's k8s.io
// namespace, where its CRI finds them.
func (n *Node) ImportImages(ctx context.Context) error {
	for _, img := range n.cfg.Images {
		if out, err := n.Ctr(ctx, "-n", "k8s.io", "images", "import", img); err != nil {
			return fmt.Errorf("node %s: import %s: %w: %s", n.cfg.Name, img, err, out)
		}
	}
	return nil
}

// StartKubelet starts kubelet; it registers the node by itself.
func (n *Node) StartKubelet() error {
	return n.startComponent(Kubelet, n.cfg.Kubernetes.Path("kubelet"),
		"--config="+n.etc("kubelet.yaml"),
		"--kubeconfig="+n.cfg.Kubeconfig,
		"--hostname-override="+n.cfg.Name,
		"--node-ip="+n.cfg.IP.String(),
		"--v=2",
	)
}

// StartKubeProxy starts kube-proxy in nftables mode.
func (n *Node) StartKubeProxy() error {
	return n.startComponent(KubeProxy, n.cfg.Kubernetes.Path("kube-proxy"),
		"--config="+n.etc("kube-proxy.yaml"), "--v=2")
}

// Stop ends one component with sig (SIGTERM waits 15 s before SIGKILL).
func (n *Node) Stop(component string, sig syscall.Signal) error {
	n.mu.Lock()
	p := n.procs[component]
	n.mu.Unlock()
	if p == nil {
		return nil
	}
	return p.stop(sig, 15*time.Second)
}

// Running reports whether a component runs.
func (n *Node) Running(component string) bool {
	done, _ := n.exited(component)
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.procs[component] != nil && !done
}

func (n *Node) exited(component string) (bool, error) {
	n.mu.Lock()
	p := n.procs[component]
	n.mu.Unlock()
	if p == nil {
		return true, errors.New("not started")
	}
	return p.exited()
}

// PIDs returns the pid of every component started (the mount namespace
// holder's too).
func (n *Node) PIDs() map[string]int {
	n.mu.Lock()
	defer n.mu.Unlock()
	pids := map[string]int{}
	for name, p := range n.procs {
		pids[name] = p.cmd.Process.Pid
	}
	if n.holder != nil {
		pids[MountNS] = n.holder.cmd.Process.Pid
	}
	return pids
}

// Close stops the node: kubelet, kube-proxy, containerd, then every
// process still in the node's mount namespace (the shims), then every
// process in the cgroup root (the containers), the cgroup root itself, and
// the mount namespace holder, whose exit takes the namespace and all its
// mounts with it. The node's directory is the caller's.
func (n *Node) Close() error {
	var errs []error
	for _, c := range []string{Kubelet, KubeProxy, Containerd} {
		errs = append(errs, n.Stop(c, syscall.SIGTERM))
	}
	errs = append(errs, n.killMountNS())
	errs = append(errs, RemoveCgroupRoot(n.cfg.CgroupRoot))
	n.mu.Lock()
	holder, stdin := n.holder, n.stdin
	n.mu.Unlock()
	if holder != nil {
		_ = stdin.Close()
		errs = append(errs, holder.stop(syscall.SIGTERM, 5*time.Second))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("node %s: %w", n.cfg.Name, err)
	}
	return nil
}

// killMountNS kills every process but the holder in the node's mount
// namespace (containerd's shims after containerd is gone) and waits for
// them to go.
func (n *Node) killMountNS() error {
	pid := n.MountNSPID()
	if pid == 0 {
		return nil
	}
	ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid))
	if err != nil {
		return fmt.Errorf("mount namespace of %d: %w", pid, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		left := ProcessesIn(ns, pid)
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v left in the mount namespace", left)
		}
		for _, p := range left {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ProcessesIn lists the processes whose mount namespace is ns (as
// /proc/<pid>/ns/mnt reads, "mnt:[...]"), except the one given.
func ProcessesIn(ns string, except int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == except {
			continue
		}
		if l, err := os.Readlink("/proc/" + e.Name() + "/ns/mnt"); err == nil && l == ns {
			pids = append(pids, pid)
		}
	}
	return pids
}

func (n *Node) etc(name string) string { return filepath.Join(n.cfg.Dir, "etc", name) }
