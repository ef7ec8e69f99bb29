package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/vnet-cni/vnet-cni/internal/namedns"
	"github.com/vnet-cni/vnet-cni/internal/nsnet"
)

// Pod is a pod sandbox: a network namespace and its CNI attachment.
type Pod struct {
	Node        *Node
	Namespace   string
	Name        string
	ContainerID string
	IfName      string
	NSName      string
	NSPath      string
	// Result is the CNI result of the last successful ADD.
	Result *current.Result
	// IP is the pod's address from Result.
	IP netip.Addr
}

// PortMapping is a hostPort, as the runtime passes it to portmap.
type PortMapping struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol"`
}

// NewPod creates the sandbox's network namespace (as the runtime does
// before ADD).
func (n *Node) NewPod(namespace, name string) (*Pod, error) {
	id := make([]byte, 32)
	if _, err := rand.Read(id); err != nil {
		return nil, err
	}
	p := &Pod{
		Node: n, Namespace: namespace, Name: name, IfName: "eth0",
		ContainerID: hex.EncodeToString(id),
		NSName:      fmt.Sprintf("%s-%s-%s", n.cluster.Desc.Prefix, n.Name, name),
	}
	p.NSPath = filepath.Join(namedns.Dir, p.NSName)
	if err := namedns.Create(p.NSName); err != nil {
		return nil, fmt.Errorf("pod %s: create netns: %w", name, err)
	}
	n.mu.Lock()
	if n.pods == nil {
		n.pods = map[string]*Pod{}
	}
	n.pods[p.NSName] = p
	n.mu.Unlock()
	return p, nil
}

// Remove deletes the pod's namespace (as the runtime does after DEL).
func (p *Pod) Remove() error {
	p.Node.mu.Lock()
	delete(p.Node.pods, p.NSName)
	p.Node.mu.Unlock()
	return namedns.Delete(p.NSName)
}

func (n *Node) removePods() error {
	n.mu.Lock()
	pods := make([]*Pod, 0, len(n.pods))
	for _, p := range n.pods {
		pods = append(pods, p)
	}
	n.mu.Unlock()
	var errs []error
	for _, p := range pods {
		errs = append(errs, p.Remove())
	}
	return errors.Join(errs...)
}

// CNI returns a libcni client that finds vnet-cni and the reference
// plugins, with its cache in the node's directory.
func (n *Node) CNI() *libcni.CNIConfig {
	dirs := append([]string{n.cluster.opts.BinDir}, n.cluster.opts.PluginDirs...)
	var exec invoke.Exec
	if w := n.cluster.opts.PluginStderr; w != nil {
		exec = &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: w}}
	}
	return libcni.NewCNIConfigWithCacheDir(dirs, filepath.Join(n.Dir, "cni-cache"), exec)
}

// Conflist reads the network configuration the daemon wrote, as kubelet does.
func (n *Node) Conflist() (*libcni.NetworkConfigList, error) {
	return libcni.ConfListFromFile(n.ConflistPath())
}

// PluginOnlyList is the conflist reduced to vnet-cni at cniVersion v, for
// verbs (GC, STATUS) that need a newer version than the chained plugins speak.
func (n *Node) PluginOnlyList(v string) (*libcni.NetworkConfigList, error) {
	data, err := os.ReadFile(n.ConflistPath())
	if err != nil {
		return nil, err
	}
	var doc map[string]any
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, err
	}
	plugins, _ := doc["plugins"].([]any)
	if len(plugins) == 0 {
		return nil, errors.New("conflist has no plugins")
	}
	doc["cniVersion"] = v
	doc["plugins"] = plugins[:1]
	out, err := json.Marshal(doc)
	if err != nil {
		return nil, err
	}
	return libcni.ConfListFromBytes(out)
}

// RuntimeConf is what the runtime passes for the pod.
func (p *Pod) RuntimeConf(ports ...PortMapping) *libcni.RuntimeConf {
	rt := &libcni.RuntimeConf{
		ContainerID: p.ContainerID,
		NetNS:       p.NSPath,
		IfName:      p.IfName,
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", p.Namespace},
			{"K8S_POD_NAME", p.Name},
			{"K8S_POD_INFRA_CONTAINER_ID", p.ContainerID},
		},
	}
	if len(ports) > 0 {
		rt.CapabilityArgs = map[string]any{"portMappings": ports}
	}
	return rt
}

// InNode runs fn on a thread inside the node's namespace: plugins that fn
// executes inherit it, as they inherit the host's namespace from containerd.
func (n *Node) InNode(fn func() error) error { return nsnet.Do(n.NSPath, fn) }

// Add runs ADD for the pod through libcni with the node's conflist.
func (n *Node) Add(ctx context.Context, p *Pod, ports ...PortMapping) (*current.Result, error) {
	list, err := n.Conflist()
	if err != nil {
		return nil, err
	}
	return n.AddWithList(ctx, list, p, ports...)
}

// AddWithList runs ADD for the pod through libcni with list (e.g. the
// node's conflist with a changed plugin setting).
func (n *Node) AddWithList(ctx context.Context, list *libcni.NetworkConfigList, p *Pod, ports ...PortMapping) (*current.Result, error) {
	var res *current.Result
	err := n.InNode(func() error {
		r, err := n.CNI().AddNetworkList(ctx, list, p.RuntimeConf(ports...))
		if err != nil {
			return err
		}
		res, err = current.NewResultFromResult(r)
		return err
	})
	if err != nil {
		return nil, err
	}
	p.Result = res
	if len(res.IPs) > 0 {
		p.IP, _ = netip.AddrFromSlice(res.IPs[0].Address.IP.To4())
	}
	return res, nil
}

// Del runs DEL for the pod through libcni.
func (n *Node) Del(ctx context.Context, p *Pod, ports ...PortMapping) error {
	list, err := n.Conflist()
	if err != nil {
		return err
	}
	return n.InNode(func() error { return n.CNI().DelNetworkList(ctx, list, p.RuntimeConf(ports...)) })
}

// Check runs CHECK for the pod through libcni (it uses the cached result).
func (n *Node) Check(ctx context.Context, p *Pod, ports ...PortMapping) error {
	list, err := n.Conflist()
	if err != nil {
		return err
	}
	return n.InNode(func() error { return n.CNI().CheckNetworkList(ctx, list, p.RuntimeConf(ports...)) })
}

// GC runs GC with the given pods as the valid attachments (CNI 1.1.0).
func (n *Node) GC(ctx context.Context, valid []*Pod) error {
	list, err := n.PluginOnlyList("1.1.0")
	if err != nil {
		return err
	}
	args := &libcni.GCArgs{}
	for _, p := range valid {
		args.ValidAttachments = append(args.ValidAttachments, typesGCAttachment(p))
	}
	return n.InNode(func() error { return n.CNI().GCNetworkList(ctx, list, args) })
}

// PluginStatus runs STATUS (CNI 1.1.0).
func (n *Node) PluginStatus(ctx context.Context) error {
	list, err := n.PluginOnlyList("1.1.0")
	if err != nil {
		return err
	}
	return n.InNode(func() error { return n.CNI().GetStatusNetworkList(ctx, list) })
}
