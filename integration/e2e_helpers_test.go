package integration

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"

	"github.com/vnet-cni/vnet-cni/bridge/linux"
	"github.com/vnet-cni/vnet-cni/cloud/sim"
	"github.com/vnet-cni/vnet-cni/integration/cluster"
	"github.com/vnet-cni/vnet-cni/integration/probe"
	"github.com/vnet-cni/vnet-cni/internal/nsnet"
	"github.com/vnet-cni/vnet-cni/internal/nstest"
	"github.com/vnet-cni/vnet-cni/ipamd/api"
	"github.com/vnet-cni/vnet-cni/ipamd/config"
)

// e2eEnv is one end-to-end run: a simulated cloud with its fabric and a
// cluster of real vnet-ipamd daemons, all removed when the test ends.
type e2eEnv struct {
	sim  *sim.Sim
	desc sim.Description
	c    *cluster.Cluster
	dir  string
}

// newE2EEnv starts a simulated cloud with nodes VMs and prepares (but does not
// start) their daemons; hook adjusts each daemon's configuration.
func newE2EEnv(t *testing.T, nodes int, hook func(node string, c *config.Config)) *e2eEnv {
	t.Helper()
	return newE2EEnvOn(t, sim.Options{Nodes: nodes}, hook)
}

// newE2EEnvOn is newE2EEnv on a cloud made with opts (Prefix, Dir and the
// operation timings are set here).
func newE2EEnvOn(t *testing.T, opts sim.Options, hook func(node string, c *config.Config)) *e2eEnv {
	t.Helper()
	return newE2EEnvWith(t, opts, cluster.Options{IPAMD: hook})
}

// newE2EEnvWith is newE2EEnvOn with the cluster's options (Dir, BinDir and
// PluginStderr are set here).
func newE2EEnvWith(t *testing.T, opts sim.Options, copts cluster.Options) *e2eEnv {
	t.Helper()
	nstest.RequireRoot(t)
	ctx := context.Background()
	dir := t.TempDir()
	opts.Prefix, opts.Dir = nstest.Prefix(t), filepath.Join(dir, "sim")
	opts.OperationDuration, opts.PollInterval = 100*time.Millisecond, 50*time.Millisecond
	s, err := sim.Start(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close sim: %v", err)
		}
	})
	pluginLog, err := os.Create(filepath.Join(dir, "plugins.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pluginLog.Close() })
	copts.Dir, copts.BinDir, copts.PluginStderr = filepath.Join(dir, "cluster"), "../bin", pluginLog
	c, err := cluster.New(s.Description(), copts)
	if err != nil {
		t.Fatal(err)
	}
	e := &e2eEnv{sim: s, desc: s.Description(), c: c, dir: dir}
	t.Cleanup(func() {
		if t.Failed() {
			e.dumpLogs(t)
		}
		if err := c.Close(); err != nil {
			t.Errorf("close cluster: %v", err)
		}
	})
	return e
}

// start starts every daemon and waits until each is ready.
func (e *e2eEnv) start(t *testing.T) {
	t.Helper()
	if err := e.c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// dumpLogs prints the tails of the daemons' and the plugins' logs.
func (e *e2eEnv) dumpLogs(t *testing.T) {
	t.Helper()
	files := []string{filepath.Join(e.dir, "plugins.log")}
	for _, n := range e.c.Nodes {
		files = append(files, n.LogPath)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimSpace(string(data)), "\n")
		if len(lines) > 40 {
			lines = lines[len(lines)-40:]
		}
		t.Logf("--- %s (last %d lines)\n%s", f, len(lines), strings.Join(lines, "\n"))
	}
}

// e2eAddPod creates a pod sandbox on n and runs ADD for it.
func e2eAddPod(t *testing.T, n *cluster.Node, name string, ports ...cluster.PortMapping) *cluster.Pod {
	t.Helper()
	p, err := n.NewPod("default", name)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.Add(context.Background(), p, ports...); err != nil {
		t.Fatalf("ADD %s on %s: %v", name, n.Name, err)
	}
	return p
}

// e2eCode is the CNI error code of err, 0 if err is not a CNI error.
func e2eCode(err error) uint {
	var te *types.Error
	if errors.As(err, &te) {
		return te.Code
	}
	return 0
}

// e2eList returns the daemon's addresses by IP.
func e2eList(t *testing.T, n *cluster.Node) map[netip.Addr]api.AddressRecord {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	l, err := n.Client().List(ctx, api.ListRequest{})
	if err != nil {
		t.Fatalf("list %s: %v", n.Name, err)
	}
	out := make(map[netip.Addr]api.AddressRecord, len(l.Addresses))
	for _, a := range l.Addresses {
		if _, dup := out[a.IP]; dup {
			t.Errorf("node %s: the daemon lists %s twice", n.Name, a.IP)
		}
		out[a.IP] = a
	}
	return out
}

// e2eAssigned asks the daemon for the pod's assignment (nil if none).
func e2eAssigned(t *testing.T, p *cluster.Pod) *api.Assignment {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := p.Node.Client().Check(ctx, api.CheckRequest{ContainerID: p.ContainerID, IfName: p.IfName})
	if err != nil {
		t.Fatalf("check %s: %v", p.Name, err)
	}
	return r.Assignment
}

// nicIPs returns the secondary addresses of the node's NIC as the control
// plane holds them (committed state); on AWS those of every ENI attached to
// the instance, sorted.
func (e *e2eEnv) nicIPs(n *cluster.Node) []netip.Addr {
	if e.desc.Cloud == sim.CloudAWS {
		var out []netip.Addr
		for _, eni := range e.sim.EC2().Snapshot().ENIs {
			if eni.InstanceID == n.InstanceID && len(eni.IPs) > 1 {
				out = append(out, eni.IPs[1:]...)
			}
		}
		slices.SortFunc(out, netip.Addr.Compare)
		return out
	}
	for _, nic := range e.sim.ARM().Snapshot().NICs {
		if nic.Name == n.NIC {
			return nic.Secondary
		}
	}
	return nil
}

// storeMatchesNIC waits until the daemon's addresses are exactly the NIC's
// secondary ipConfigurations (a refill in flight may briefly differ).
func (e *e2eEnv) storeMatchesNIC(t *testing.T, n *cluster.Node) {
	t.Helper()
	err := nsnet.Eventually(10*time.Second, func() error {
		nic := e.nicIPs(n)
		var store []netip.Addr
		for ip, a := range e2eList(t, n) {
			if a.State != "releasing" {
				store = append(store, ip)
			}
		}
		slices.SortFunc(store, netip.Addr.Compare)
		if !slices.Equal(store, nic) {
			return fmt.Errorf("daemon holds %v, the NIC %v", store, nic)
		}
		return nil
	})
	if err != nil {
		t.Errorf("node %s: %v", n.Name, err)
	}
}

// e2eServe runs a probe server named name on addr inside the namespace,
// closed when the test ends.
func e2eServe(t *testing.T, nsPath, name string, addr netip.AddrPort) netip.AddrPort {
	t.Helper()
	var s probe.Servers
	ap, err := s.Listen(nsPath, name, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return ap
}

// e2eDial connects from inside the namespace to dst and returns the name
// of the server and the source address it saw.
func e2eDial(nsPath string, dst netip.AddrPort) (string, netip.Addr, error) {
	a, err := probe.Dial(context.Background(), nsPath, dst)
	return a.Name, a.Seen, err
}

// e2eExpect dials dst from nsPath and checks who answered and which
// source address it saw.
func e2eExpect(t *testing.T, what, nsPath string, dst netip.AddrPort, wantName string, wantSrc netip.Addr) {
	t.Helper()
	name, src, err := e2eDial(nsPath, dst)
	if err != nil {
		t.Errorf("%s: %v", what, err)
		return
	}
	if name != wantName || src != wantSrc {
		t.Errorf("%s: answered by %s seeing source %s, want %s seeing %s", what, name, src, wantName, wantSrc)
	}
}

// e2eLeftovers lists what a pod's attachment left in the node and in its
// namespace: the host veth and the pod's interface.
func e2eLeftovers(t *testing.T, p *cluster.Pod) []string {
	t.Helper()
	var left []string
	host := linux.HostVethName(p.ContainerID, p.IfName)
	if err := nsnet.Do(p.Node.NSPath, func() error {
		_, err := netlink.LinkByName(host)
		if err == nil {
			left = append(left, "host veth "+host)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p.NSPath); err == nil {
		if err := nsnet.Do(p.NSPath, func() error {
			if _, err := netlink.LinkByName(p.IfName); err == nil {
				left = append(left, "pod interface "+p.IfName)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	return left
}

func e2eAddr(s string) netip.Addr { return netip.MustParseAddr(s) }
