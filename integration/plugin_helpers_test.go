package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"

	"github.com/vnet-cni/vnet-cni/bridge/azure0"
	"github.com/vnet-cni/vnet-cni/bridge/linux"
	"github.com/vnet-cni/vnet-cni/integration/cluster"
	"github.com/vnet-cni/vnet-cni/integration/probe"
	"github.com/vnet-cni/vnet-cni/internal/nstest"
	"github.com/vnet-cni/vnet-cni/ipamd/api"
)

// listenRemote runs a probe server on addr inside the namespace, named
// after the namespace, closed when the test ends.
func listenRemote(t testing.TB, nsPath string, addr netip.AddrPort) netip.AddrPort {
	t.Helper()
	var s probe.Servers
	ap, err := s.Listen(nsPath, filepath.Base(nsPath), addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return ap
}

// seenFrom dials dst from the namespace and returns the source address
// that the probe server saw.
func seenFrom(ctx context.Context, nsPath string, dst netip.AddrPort) (netip.Addr, error) {
	a, err := probe.Dial(ctx, nsPath, dst)
	return a.Seen, err
}

// nodeLinks opens a netlink handle inside the node's namespace.
func nodeLinks(t testing.TB, n *cluster.Node) *netlink.Handle {
	t.Helper()
	return nstest.Netlink(t, n.NSPath)
}

// hostVeth reports whether the pod's host veth exists in the node namespace.
func hostVeth(t testing.TB, n *cluster.Node, containerID, ifName string) bool {
	t.Helper()
	nl := nodeLinks(t, n)
	_, err := nl.LinkByName(linux.HostVethName(containerID, ifName))
	var lnf netlink.LinkNotFoundError
	if errors.As(err, &lnf) {
		return false
	}
	if err != nil {
		t.Fatalf("link of %s: %v", containerID, err)
	}
	return true
}

// vethCount counts the veth links in the node namespace but its uplink
// (eth0, a veth wired to the sim's vnet namespace).
func vethCount(t testing.TB, n *cluster.Node) int {
	t.Helper()
	links, err := nodeLinks(t, n).LinkList()
	if err != nil {
		t.Fatalf("links of %s: %v", n.Name, err)
	}
	c := 0
	for _, l := range links {
		if l.Type() == "veth" && l.Attrs().Name != "eth0" {
			c++
		}
	}
	return c
}

// assignment returns ipamd's assignment of the attachment (nil: none).
func assignment(t testing.TB, n *cluster.Node, containerID, ifName string) *api.Assignment {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	resp, err := n.Client().Check(ctx, api.CheckRequest{ContainerID: containerID, IfName: ifName})
	if err != nil {
		t.Fatalf("ipamd check on %s: %v", n.Name, err)
	}
	return resp.Assignment
}

// addresses lists the daemon's address records.
func addresses(t testing.TB, n *cluster.Node) []api.AddressRecord {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	resp, err := n.Client().List(ctx, api.ListRequest{})
	if err != nil {
		t.Fatalf("ipamd list on %s: %v", n.Name, err)
	}
	return resp.Addresses
}

// registeredMAC is the MAC that the node's bridge table maps ip to (nil: none).
func registeredMAC(t testing.TB, n *cluster.Node, ip netip.Addr) net.HardwareAddr {
	t.Helper()
	bn, err := azure0.Open(n.NSPath, azure0.Options{LockDir: n.Config.PluginLockDir})
	if err != nil {
		t.Fatal(err)
	}
	defer bn.Close()
	st, err := bn.InspectPod(context.Background(), linux.PodRef{ContainerID: "inspect", IfName: "eth0", IP: ip})
	if err != nil {
		t.Fatalf("inspect %s on %s: %v", ip, n.Name, err)
	}
	return st.RegisteredMAC
}

// cniError returns the CNI error in err's chain, failing the test when err
// is nil or not a CNI error.
func cniError(t testing.TB, err error) *types.Error {
	t.Helper()
	if err == nil {
		t.Fatal("want a CNI error, got success")
	}
	var e *types.Error
	if !errors.As(err, &e) {
		t.Fatalf("want a CNI error, got %T: %v", err, err)
	}
	return e
}

// pluginConf is the vnet-cni entry of the node's conflist as a standalone
// network configuration at cniVersion v, with the given fields replaced
// (a nil value removes the field).
func pluginConf(t testing.TB, n *cluster.Node, v string, set map[string]any) []byte {
	t.Helper()
	data, err := os.ReadFile(n.ConflistPath())
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Name    string           `json:"name"`
		Plugins []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(data, &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Plugins) == 0 || list.Plugins[0]["type"] != "vnet-cni" {
		t.Fatalf("conflist %s: first plugin is not vnet-cni: %s", n.ConflistPath(), data)
	}
	conf := list.Plugins[0]
	conf["cniVersion"] = v
	conf["name"] = list.Name
	for k, val := range set {
		if val == nil {
			delete(conf, k)
			continue
		}
		conf[k] = val
	}
	out, err := json.Marshal(conf)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// execEnv is the environment of one direct plugin execution.
type execEnv struct {
	Command     string
	ContainerID string
	Netns       string
	IfName      string
	Args        string
	// Unset lists variables to leave out entirely.
	Unset []string
}

// execPlugin runs bin/vnet-cni directly, as a runtime does, from a thread
// inside the node namespace. It returns stdout and, when the plugin failed,
// the CNI error it printed.
func execPlugin(t testing.TB, n *cluster.Node, env execEnv, stdin []byte) ([]byte, *types.Error) {
	t.Helper()
	bin, err := filepath.Abs("../bin/vnet-cni")
	if err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{
		"CNI_COMMAND":     env.Command,
		"CNI_CONTAINERID": env.ContainerID,
		"CNI_NETNS":       env.Netns,
		"CNI_IFNAME":      env.IfName,
		"CNI_ARGS":        env.Args,
		"CNI_PATH":        filepath.Dir(bin) + ":/usr/lib/cni",
	}
	for _, k := range env.Unset {
		delete(vars, k)
	}
	cmd := exec.Command(bin)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	for k, v := range vars {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	var runErr error
	if err := n.InNode(func() error {
		runErr = cmd.Run()
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if runErr == nil {
		return stdout.Bytes(), nil
	}
	var ee *exec.ExitError
	if !errors.As(runErr, &ee) {
		t.Fatalf("run vnet-cni: %v", runErr)
	}
	var e types.Error
	if err := json.Unmarshal(stdout.Bytes(), &e); err != nil || e.Code == 0 {
		t.Fatalf("vnet-cni failed (%v) without a CNI error on stdout: %q (stderr %q)", runErr, stdout.String(), stderr.String())
	}
	return stdout.Bytes(), &e
}

// k8sArgs is CNI_ARGS as kubelet passes it.
func k8sArgs(p *cluster.Pod) string {
	return strings.Join([]string{"IgnoreUnknown=1", "K8S_POD_NAMESPACE=" + p.Namespace,
		"K8S_POD_NAME=" + p.Name, "K8S_POD_INFRA_CONTAINER_ID=" + p.ContainerID}, ";")
}

// removeLater deletes the pod's sandbox when the test ends.
func removeLater(t testing.TB, p *cluster.Pod) {
	t.Cleanup(func() {
		if err := p.Remove(); err != nil {
			t.Errorf("remove sandbox %s: %v", p.Name, err)
		}
	})
}
