package azure0

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vnet-cni/vnet-cni/bridge/linux"
	"github.com/vnet-cni/vnet-cni/internal/nsnet"
	"github.com/vnet-cni/vnet-cni/internal/nstest"
)

// TestNICHairpin is kube-proxy's NodePort with policy Cluster on bridge
// mode: a connection from node1 to node0's address that node0 DNATs (and
// masquerades, as kube-proxy does) to a pod of node1 leaves node0 through
// the eth0 it came in on, in both directions, and works. A broadcast from
// the fabric is not reflected to it. Hairpin off and the forward chain
// emptied by hand are put back by EnsureNode.
func TestNICHairpin(t *testing.T) {
	podA, podC := netip.MustParseAddr("10.240.0.10"), netip.MustParseAddr("10.240.0.20")
	f := newFabric(t, map[string][]netip.Addr{"node0": {podA}, "node1": {podC}})
	ctx := context.Background()
	lockDir := t.TempDir()
	node0NS, node1NS := f.NodeNSPath("node0"), f.NodeNSPath("node1")
	n0 := openNode(t, node0NS, lockDir)
	n1 := openNode(t, node1NS, lockDir)
	for _, n := range []*Node{n0, n1} {
		if _, err := n.EnsureNode(ctx, nodeConfig()); err != nil {
			t.Fatalf("ensure node: %v", err)
		}
	}
	err := nsnet.Do(node0NS, func() error {
		_, err := os.Stat("/proc/sys/net/bridge/bridge-nf-call-iptables")
		return err
	})
	if errors.Is(err, os.ErrNotExist) {
		t.Skip("br_netfilter not loaded: the node's ip hooks never see bridged frames")
	}
	nsC, _ := addPod(t, n1, f.prefix, "pc", podC, 0)
	listenPeer(t, nsC, netip.AddrPortFrom(podC, 8080))
	addService(t, node0NS, f.prefix, netip.AddrPortFrom(node0IP, 9090), netip.AddrPortFrom(podC, 8080), node0IP)
	nsA, _ := addPod(t, n0, f.prefix, "pa", podA, 0)
	listenPeer(t, nsA, netip.AddrPortFrom(podA, 8080))
	addService(t, node0NS, f.prefix+"l", netip.AddrPortFrom(node0IP, 9091), netip.AddrPortFrom(podA, 8080), netip.Addr{})
	local := netip.AddrPortFrom(node0IP, 9091)
	if got, err := seenAs(node1NS, local, 3*time.Second); err != nil || got != node1IP {
		t.Errorf("node1 to %s (dnat-ed to node0's own pod %s): seen as %s, %v; want %s", local, podA, got, err, node1IP)
	}

	service := netip.AddrPortFrom(node0IP, 9090)
	reaches := func(what string) {
		t.Helper()
		for i := range 5 {
			got, err := seenAs(node1NS, service, 3*time.Second)
			if err != nil || got != node0IP {
				t.Fatalf("%s: connection %d from node1 to %s (dnat-ed to %s on node1): seen as %s, %v; want %s",
					what, i, service, podC, got, err, node0IP)
			}
		}
	}
	reaches("after EnsureNode")
	if on, err := n0.hairpin(eth0Of(t, n0)); err != nil || !on {
		t.Fatalf("hairpin on node0's eth0: %v, %v; want true", on, err)
	}

	t.Run("a broadcast from the fabric is not reflected", func(t *testing.T) {
		target := netip.MustParseAddr("10.240.0.77") // nobody's
		fabricSide := rawARP(t, f.VNetNSPath(), "n0")
		bridgeSide := rawARP(t, node0NS, DefaultBridgeName)
		frame := arpWhoHas(f.GatewayMAC(), f.Gateway(), target)
		// A few, in case one is lost to a busy machine.
		for range 3 {
			if err := unix.Sendto(fabricSide, frame, 0, &unix.SockaddrLinklayer{Ifindex: ifIndex(t, f.VNetNSPath(), "n0")}); err != nil {
				t.Fatalf("send the broadcast: %v", err)
			}
		}
		if n := arpRequestsFor(t, bridgeSide, target, false, time.Second); n == 0 {
			t.Fatalf("the broadcast never reached node0's bridge: the test sees nothing")
		}
		if n := arpRequestsFor(t, fabricSide, target, true, time.Second); n > 0 {
			t.Errorf("node0 sent %d of the fabric's broadcasts back to the fabric", n)
		}
	})

	t.Run("hairpin off and the forward chain flushed are repaired", func(t *testing.T) {
		if err := n0.ns.Netlink.LinkSetHairpin(eth0Of(t, n0), false); err != nil {
			t.Fatal(err)
		}
		c := nftIn(t, node0NS)
		bt, _ := mainTables()
		c.FlushChain(&nftables.Chain{Name: chainForward, Table: bt})
		if err := c.Flush(); err != nil {
			t.Fatal(err)
		}
		if _, err := seenAs(node1NS, service, time.Second); err == nil {
			t.Errorf("with hairpin off the dnat-ed connection still worked: the test cannot see the defect")
		}
		info, err := n0.EnsureNode(ctx, nodeConfig())
		if err != nil {
			t.Fatal(err)
		}
		if !info.BridgeChanged || info.NFTChanges == 0 {
			t.Errorf("EnsureNode: bridge changed %v, %d nftables changes; want true and some", info.BridgeChanged, info.NFTChanges)
		}
		if got := summarize(t, c).Rules["bridge "+chainForward]; got != 2 {
			t.Errorf("forward chain has %d rules, want 2", got)
		}
		again, err := n0.EnsureNode(ctx, nodeConfig())
		if err != nil || again.BridgeChanged || again.NFTChanges != 0 {
			t.Errorf("second EnsureNode: bridge changed %v, %d changes, %v; want nothing", again.BridgeChanged, again.NFTChanges, err)
		}
		reaches("after the repair")
	})
}

// eth0Of is the node's NIC.
func eth0Of(t *testing.T, n *Node) netlink.Link {
	t.Helper()
	l, err := n.ns.Netlink.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// addService adds, in its own table of the namespace, what kube-proxy does
// for a NodePort with policy Cluster: front DNAT-ed to backend, and the
// DNAT-ed connection masqueraded to masq (when valid: policy Local keeps
// the source).
func addService(t *testing.T, nsPath, prefix string, front, backend netip.AddrPort, masq netip.Addr) {
	t.Helper()
	c := nftIn(t, nsPath)
	tb := c.AddTable(&nftables.Table{Name: prefix + "-svc", Family: nftables.TableFamilyIPv4})
	pre := c.AddChain(&nftables.Chain{Name: "prerouting", Table: tb, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest})
	post := c.AddChain(&nftables.Chain{Name: "postrouting", Table: tb, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
	c.AddRule(&nftables.Rule{Table: tb, Chain: pre, Exprs: []expr.Any{
		linux.LoadNet(ipDst, 4), &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: front.Addr().AsSlice()},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(front.Port())},
		&expr.Immediate{Register: 1, Data: backend.Addr().AsSlice()},
		&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(backend.Port())},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2},
	}})
	if masq.IsValid() {
		c.AddRule(&nftables.Rule{Table: tb, Chain: post, Exprs: []expr.Any{
			linux.LoadNet(ipDst, 4), &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: backend.Addr().AsSlice()},
			&expr.Immediate{Register: 1, Data: masq.AsSlice()},
			&expr.NAT{Type: expr.NATTypeSourceNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1},
		}})
	}
	if err := c.Flush(); err != nil {
		t.Fatalf("add the service's table: %v", err)
	}
}

// rawARP opens an AF_PACKET socket for ARP frames on the namespace's link.
func rawARP(t *testing.T, nsPath, link string) int {
	t.Helper()
	idx := ifIndex(t, nsPath, link)
	fd := -1
	err := nsnet.Do(nsPath, func() error {
		var err error
		proto := int(htons(unix.ETH_P_ARP))
		if fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto); err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: idx})
	})
	if fd >= 0 {
		t.Cleanup(func() { _ = unix.Close(fd) })
	}
	if err != nil {
		t.Fatalf("packet socket on %s: %v", link, err)
	}
	tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	return fd
}

func ifIndex(t *testing.T, nsPath, link string) int {
	t.Helper()
	l, err := nstest.Netlink(t, nsPath).LinkByName(link)
	if err != nil {
		t.Fatalf("link %s: %v", link, err)
	}
	return l.Attrs().Index
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// arpWhoHas is a broadcast who-has target from sender.
func arpWhoHas(mac net.HardwareAddr, sender, target netip.Addr) []byte {
	b := make([]byte, 0, 42)
	b = append(b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)
	b = append(b, mac...)
	b = binary.BigEndian.AppendUint16(b, unix.ETH_P_ARP)
	b = append(b, arpEthIPv4...)
	b = binary.BigEndian.AppendUint16(b, arpRequest)
	b = append(b, mac...)
	b = append(b, sender.AsSlice()...)
	b = append(b, 0, 0, 0, 0, 0, 0)
	return append(b, target.AsSlice()...)
}

// arpRequestsFor counts, for d, the ARP requests for target the socket
// receives (only those coming in from the link when incoming).
func arpRequestsFor(t *testing.T, fd int, target netip.Addr, incoming bool, d time.Duration) int {
	t.Helper()
	buf := make([]byte, 2048)
	n := 0
	for end := time.Now().Add(d); time.Now().Before(end); {
		m, from, err := unix.Recvfrom(fd, buf, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			t.Fatalf("receive: %v", err)
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); incoming && ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		f := buf[:m]
		if len(f) < 42 || binary.BigEndian.Uint16(f[12:]) != unix.ETH_P_ARP ||
			binary.BigEndian.Uint16(f[14+6:]) != arpRequest || netip.AddrFrom4([4]byte(f[14+arpTPA:14+arpTPA+4])) != target {
			continue
		}
		n++
	}
	return n
}
