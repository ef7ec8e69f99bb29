package azure0

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/vnet-cni/vnet-cni/bridge/linux"
	"github.com/vnet-cni/vnet-cni/cloud/sim/fabric"
	"github.com/vnet-cni/vnet-cni/internal/nsnet"
	"github.com/vnet-cni/vnet-cni/internal/nstest"
)

// The test VNet: one subnet, two nodes, pods with secondary IPs.
var (
	vnetPrefix = netip.MustParsePrefix("10.240.0.0/16")
	subnet     = netip.MustParsePrefix("10.240.0.0/24")
	internet   = netip.MustParsePrefix("203.0.113.0/24")
	gatewayIP  = netip.MustParseAddr("10.240.0.1")
	node0IP    = netip.MustParseAddr("10.240.0.4")
	node1IP    = netip.MustParseAddr("10.240.0.5")
	node0MAC   = net.HardwareAddr{0x02, 0x0d, 0x3a, 0x00, 0x00, 0x04}
	node1MAC   = net.HardwareAddr{0x02, 0x0d, 0x3a, 0x00, 0x00, 0x05}
)

// testFabric is a fabric with node0 and node1 whose NICs hold the given
// secondary IPs.
type testFabric struct {
	*fabric.Fabric
	prefix string
}

func newFabric(t testing.TB, secondaries map[string][]netip.Addr) *testFabric {
	t.Helper()
	nstest.RequireRoot(t)
	prefix := nstest.Prefix(t)
	ctx := context.Background()
	f, err := fabric.Create(ctx, fabric.Topology{
		Prefix:       prefix,
		VNetPrefixes: []netip.Prefix{vnetPrefix},
		Subnet:       subnet,
		Internet:     internet,
		Nodes: []fabric.Node{
			{Name: "node0", MAC: node0MAC, Primary: node0IP},
			{Name: "node1", MAC: node1MAC, Primary: node1IP},
		},
	})
	if err != nil {
		t.Fatalf("create fabric: %v", err)
	}
	t.Cleanup(func() {
		if err := f.Destroy(); err != nil {
			t.Errorf("destroy fabric: %v", err)
		}
	})
	st := fabric.State{Nodes: []fabric.NodeState{
		{Name: "node0", IPs: append([]netip.Addr{node0IP}, secondaries["node0"]...)},
		{Name: "node1", IPs: append([]netip.Addr{node1IP}, secondaries["node1"]...)},
	}}
	if err := f.Apply(ctx, st); err != nil {
		t.Fatalf("apply fabric state: %v", err)
	}
	return &testFabric{Fabric: f, prefix: prefix}
}

// openNode opens a Node on nsPath whose lock files live in lockDir.
func openNode(t testing.TB, nsPath, lockDir string) *Node {
	t.Helper()
	n, err := Open(nsPath, Options{LockDir: lockDir})
	if err != nil {
		t.Fatalf("open node %s: %v", nsPath, err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("close node: %v", err)
		}
	})
	return n
}

// nodeConfig is the EnsureNode configuration used by the tests.
func nodeConfig() NodeConfig {
	return NodeConfig{VNetPrefixes: []netip.Prefix{vnetPrefix}}
}

// addPod creates a pod namespace and attaches it with ip.
func addPod(t testing.TB, n *Node, prefix, name string, ip netip.Addr, mtu int) (string, linux.PodResult) {
	t.Helper()
	nsPath := nstest.NewNS(t, prefix+"-"+name)
	res, err := n.AddPod(context.Background(), PodConfig{
		ContainerID: prefix + "-" + name, IfName: "eth0", NetNS: nsPath,
		IP: ip, Subnet: subnet, Gateway: gatewayIP, MTU: mtu,
	})
	if err != nil {
		t.Fatalf("add pod %s: %v", name, err)
	}
	return nsPath, res
}

// listenPeer listens on addr in the namespace and answers every connection
// with the peer's address as the server saw it, so that tests see SNAT.
func listenPeer(t testing.TB, nsPath string, addr netip.AddrPort) netip.AddrPort {
	t.Helper()
	var ln net.Listener
	err := nsnet.Do(nsPath, func() error {
		var err error
		ln, err = net.Listen("tcp4", addr.String())
		return err
	})
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			ra := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
			_ = c.SetDeadline(time.Now().Add(2 * time.Second))
			_, _ = fmt.Fprintf(c, "%s\n", ra)
			_ = c.Close()
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		wg.Wait()
	})
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// seenAs dials dst from the namespace and returns the source address the
// server saw.
func seenAs(nsPath string, dst netip.AddrPort, timeout time.Duration) (netip.Addr, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var c net.Conn
	err := nsnet.Do(nsPath, func() error {
		var err error
		var d net.Dialer
		c, err = d.DialContext(ctx, "tcp4", dst.String())
		return err
	})
	if err != nil {
		return netip.Addr{}, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return netip.Addr{}, fmt.Errorf("read from %s: %w", dst, err)
	}
	return netip.ParseAddr(strings.TrimSpace(line))
}

// neighMAC returns the MAC the namespace's neighbour table holds for ip.
func neighMAC(t testing.TB, nsPath string, ip netip.Addr) net.HardwareAddr {
	t.Helper()
	h, err := netns.GetFromPath(nsPath)
	if err != nil {
		t.Fatalf("open netns: %v", err)
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		t.Fatalf("netlink handle: %v", err)
	}
	defer nl.Close()
	neighs, err := nl.NeighList(0, netlink.FAMILY_V4)
	if err != nil {
		t.Fatalf("neighbours: %v", err)
	}
	for _, ne := range neighs {
		if a, ok := netip.AddrFromSlice(ne.IP.To4()); ok && a == ip && ne.HardwareAddr != nil {
			return ne.HardwareAddr
		}
	}
	return nil
}
