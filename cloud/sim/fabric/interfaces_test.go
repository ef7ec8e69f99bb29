package fabric

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vnet-cni/vnet-cni/internal/nsnet"
	"github.com/vnet-cni/vnet-cni/internal/nstest"
)

// Policy routing tables in the node for the tests: leave through eth0 or eth1.
const (
	tableEth0 = 100
	tableEth1 = 101
)

// policyRoutes gives node the tables tableEth0 and tableEth1 (a default
// route via the gateway out of eth0, resp. eth1).
func policyRoutes(t *testing.T, f *Fabric, node string) *netlink.Handle {
	t.Helper()
	h := handle(t, f.NodeNSPath(node))
	for table, dev := range map[int]string{tableEth0: "eth0", tableEth1: "eth1"} {
		r := &netlink.Route{Table: table, LinkIndex: link(t, h, dev).Attrs().Index, Gw: f.Gateway().AsSlice(), Flags: int(netlink.FLAG_ONLINK)}
		if err := h.RouteReplace(r); err != nil {
			t.Fatalf("default route in table %d via %s: %v", table, dev, err)
		}
	}
	return h
}

// leaveThrough makes traffic from src leave through table's interface.
func leaveThrough(t *testing.T, h *netlink.Handle, src netip.Addr, table int) {
	t.Helper()
	for _, tb := range []int{tableEth0, tableEth1} {
		r := netlink.NewRule()
		r.Src, r.Table, r.Priority = ipNet(netip.PrefixFrom(src, 32)), tb, 100
		if err := h.RuleDel(r); err != nil && !errors.Is(err, unix.ENOENT) {
			t.Fatalf("delete rule from %s: %v", src, err)
		}
	}
	r := netlink.NewRule()
	r.Src, r.Table, r.Priority = ipNet(netip.PrefixFrom(src, 32)), table, 100
	if err := h.RuleAdd(r); err != nil {
		t.Fatalf("rule from %s lookup %d: %v", src, table, err)
	}
}

func wantLink(t *testing.T, h *netlink.Handle, name string, mac net.HardwareAddr) netlink.Link {
	t.Helper()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if !bytes.Equal(l.Attrs().HardwareAddr, mac) || l.Attrs().Flags&net.FlagUp == 0 {
		t.Fatalf("%s: mac %s flags %v, want %s and up", name, l.Attrs().HardwareAddr, l.Attrs().Flags, mac)
	}
	return l
}

func wantNoLink(t *testing.T, h *netlink.Handle, name string) {
	t.Helper()
	if l, err := h.LinkByName(name); err == nil {
		t.Fatalf("%s still there (mac %s)", name, l.Attrs().HardwareAddr)
	}
}

// TestInterfaces attaches an interface (an ENI) to node0 and checks what
// the fabric enforces on it and on eth0, state by state.
func TestInterfaces(t *testing.T) {
	f := newFabric(t, 2)
	n0, n1 := f.NodeNSPath("node0"), f.NodeNSPath("node1")
	eniMAC := net.HardwareAddr{0x0e, 0x00, 0x00, 0x00, 0x01, 0x01}
	eniPrimary, sec, other := ip("10.240.0.30"), ip("10.240.0.31"), ip("10.240.0.50")
	eni := Interface{Device: 1, MAC: eniMAC, IPs: []netip.Addr{eniPrimary, sec}}
	with := func(eth0Fwd, eniFwd bool) State {
		e := eni
		e.IPForwarding = eniFwd
		return State{Nodes: []NodeState{{Name: "node0", IPForwarding: eth0Fwd, Interfaces: []Interface{e}}}}
	}

	h0 := handle(t, n0)
	wantNoLink(t, h0, "eth1")
	mustApply(t, f, with(false, false))
	eth1 := wantLink(t, h0, "eth1", eniMAC)
	if l := link(t, handle(t, f.VNetNSPath()), "n0e1"); !bytes.Equal(l.Attrs().HardwareAddr, f.GatewayMAC()) {
		t.Errorf("vnet side of eth1 has mac %s, want the gateway's %s", l.Attrs().HardwareAddr, f.GatewayMAC())
	}

	for _, a := range []netip.Addr{sec, other} {
		if err := h0.AddrAdd(eth1, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(a, 32))}); err != nil {
			t.Fatal(err)
		}
	}
	policyRoutes(t, f, "node0")
	leaveThrough(t, h0, sec, tableEth1)
	leaveThrough(t, h0, other, tableEth1)
	nstest.ListenTCP(t, n0, netip.AddrPortFrom(sec, 80))
	nstest.ListenTCP(t, n1, netip.AddrPortFrom(netip.IPv4Unspecified(), 80))
	node0, node1 := nsName(n0), nsName(n1)
	peer1 := netip.AddrPortFrom(primary(f, "node1"), 80)
	udpDst := netip.AddrPortFrom(primary(f, "node1"), 5000)
	got := nstest.ListenUDP(t, n1, udpDst)
	udp := func(t *testing.T, src netip.Addr, want bool) {
		t.Helper()
		timeout := okTimeout
		if !want {
			timeout = dropTimeout
		}
		if arrived := nsnet.UDPReaches(n0, src, udpDst, got, timeout); arrived != want {
			t.Errorf("datagram from %s arrived = %v, want %v", src, arrived, want)
		}
	}

	t.Run("delivery to the interface that owns the address, reply through it", func(t *testing.T) {
		checkTCP(t, f,
			tcpCheck{from: "node1", dst: netip.AddrPortFrom(sec, 80), want: node0},
			tcpCheck{from: "node0", src: sec, dst: peer1, want: node1})
	})
	t.Run("source not on the interface is dropped", func(t *testing.T) {
		udp(t, sec, true)
		udp(t, other, false)
	})
	t.Run("the interface's address out of eth0 is dropped", func(t *testing.T) {
		leaveThrough(t, h0, sec, tableEth0)
		udp(t, sec, false)
		checkTCP(t, f, tcpCheck{from: "node0", src: sec, dst: peer1})
	})
	t.Run("out of eth0 with eth0's check off", func(t *testing.T) {
		mustApply(t, f, with(true, false))
		udp(t, sec, true)
		// The reply comes back through eth1, which owns the address.
		checkTCP(t, f, tcpCheck{from: "node0", src: sec, dst: peer1, want: node1})
		leaveThrough(t, h0, sec, tableEth1)
	})
	t.Run("foreign source out of the interface with its check off", func(t *testing.T) {
		mustApply(t, f, with(false, true))
		udp(t, other, true)
		mustApply(t, f, with(false, false))
		udp(t, other, false)
	})
	t.Run("foreign source mac on the interface", func(t *testing.T) {
		if err := h0.LinkSetHardwareAddr(eth1, net.HardwareAddr{0x0e, 0x66, 0x66, 0x66, 0x66, 0x66}); err != nil {
			t.Fatal(err)
		}
		udp(t, sec, false)
		if err := h0.LinkSetHardwareAddr(eth1, eniMAC); err != nil {
			t.Fatal(err)
		}
		udp(t, sec, true)
	})
	t.Run("detached: link gone, address no longer delivered", func(t *testing.T) {
		mustApply(t, f, State{})
		wantNoLink(t, h0, "eth1")
		checkTCP(t, f, tcpCheck{from: "node1", dst: netip.AddrPortFrom(sec, 80)})
	})
	t.Run("another interface at the same device index", func(t *testing.T) {
		mustApply(t, f, with(false, false))
		wantLink(t, h0, "eth1", eniMAC)
		mac2 := net.HardwareAddr{0x0e, 0x00, 0x00, 0x00, 0x02, 0x02}
		mustApply(t, f, State{Nodes: []NodeState{{Name: "node0", Interfaces: []Interface{{Device: 1, MAC: mac2, IPs: []netip.Addr{ip("10.240.0.60")}}}}}})
		wantLink(t, h0, "eth1", mac2)
		if ok, err := f.inSync(State{Nodes: []NodeState{{Name: "node0", Interfaces: []Interface{{Device: 1, MAC: mac2, IPs: []netip.Addr{ip("10.240.0.60")}}}}}}); !ok || err != nil {
			t.Errorf("in sync after the replacement = %v (%v)", ok, err)
		}
	})
}

// TestInterfaceRepaired deletes an interface by hand (and sets the vnet side
// down): Run puts it back, and the rebuilt link is policed again.
func TestInterfaceRepaired(t *testing.T) {
	f := newFabric(t, 2)
	n0 := f.NodeNSPath("node0")
	eniMAC := net.HardwareAddr{0x0e, 0x00, 0x00, 0x00, 0x01, 0x01}
	sec, other := ip("10.240.0.31"), ip("10.240.0.50")
	st := State{Nodes: []NodeState{{Name: "node0", Interfaces: []Interface{{Device: 1, MAC: eniMAC, IPs: []netip.Addr{ip("10.240.0.30"), sec}}}}}}
	mustApply(t, f, st)
	h0 := handle(t, n0)
	vh := handle(t, f.VNetNSPath())

	repair := func(t *testing.T) {
		t.Helper()
		if ok, err := f.inSync(st); ok || err != nil {
			t.Fatalf("after the edit: in sync = %v (%v), want a difference", ok, err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		var wg sync.WaitGroup
		wg.Go(func() { f.Run(ctx, func() State { return st }, nil) })
		defer wg.Wait()
		defer cancel()
		if err := nsnet.Eventually(3*time.Second, func() error {
			if ok, err := f.inSync(st); !ok || err != nil {
				return errors.Join(errors.New("not repaired"), err)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("vnet side set down", func(t *testing.T) {
		if err := vh.LinkSetDown(link(t, vh, "n0e1")); err != nil {
			t.Fatal(err)
		}
		repair(t)
		if l := link(t, vh, "n0e1"); l.Attrs().Flags&net.FlagUp == 0 {
			t.Error("n0e1 still down")
		}
	})
	t.Run("eth1 deleted in the node", func(t *testing.T) {
		if err := h0.LinkDel(link(t, h0, "eth1")); err != nil {
			t.Fatal(err)
		}
		repair(t)
		wantLink(t, h0, "eth1", eniMAC)
	})
	t.Run("an interface link nobody wants", func(t *testing.T) {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = "n1e3"
		if err := vh.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "x" + f.topo.Prefix}); err != nil {
			t.Fatal(err)
		}
		repair(t)
		wantNoLink(t, vh, "n1e3")
	})

	// The recreated eth1 carries traffic and is policed: its chain is bound
	// to the new link.
	eth1 := link(t, h0, "eth1")
	for _, a := range []netip.Addr{sec, other} {
		if err := h0.AddrAdd(eth1, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(a, 32))}); err != nil {
			t.Fatal(err)
		}
	}
	policyRoutes(t, f, "node0")
	leaveThrough(t, h0, sec, tableEth1)
	leaveThrough(t, h0, other, tableEth1)
	dst := netip.AddrPortFrom(primary(f, "node1"), 5000)
	got := nstest.ListenUDP(t, f.NodeNSPath("node1"), dst)
	for _, c := range []struct {
		src  netip.Addr
		want bool
	}{{sec, true}, {other, false}} {
		timeout := okTimeout
		if !c.want {
			timeout = dropTimeout
		}
		if arrived := nsnet.UDPReaches(n0, c.src, dst, got, timeout); arrived != c.want {
			t.Errorf("after repair: datagram from %s arrived = %v, want %v", c.src, arrived, c.want)
		}
	}
}

func TestInterfacesIdempotent(t *testing.T) {
	f := newFabric(t, 2)
	mac := func(b byte) net.HardwareAddr { return net.HardwareAddr{0x0e, 0, 0, 0, 0, b} }
	eni := func(dev int, m byte, ips ...string) Interface {
		i := Interface{Device: dev, MAC: mac(m)}
		for _, s := range ips {
			i.IPs = append(i.IPs, ip(s))
		}
		return i
	}
	states := []State{
		{},
		{Nodes: []NodeState{{Name: "node0", Interfaces: []Interface{eni(1, 1, "10.240.0.30")}}}},
		{Nodes: []NodeState{{Name: "node0", Interfaces: []Interface{eni(1, 1, "10.240.0.30", "10.240.0.31"), eni(2, 2, "10.240.0.40")}}}},
		{Nodes: []NodeState{
			{Name: "node0", Interfaces: []Interface{eni(2, 2, "10.240.0.40")}},
			{Name: "node1", IPForwarding: true, Interfaces: []Interface{eni(1, 3, "10.240.0.50")}},
		}},
	}
	for round := range 2 {
		for i, st := range states {
			t.Run(fmt.Sprintf("round %d state %d", round, i), func(t *testing.T) {
				mustApply(t, f, st)
				before := f.Changes()
				mustApply(t, f, st)
				if again := f.Changes() - before; again != 0 {
					t.Errorf("second Apply made %d changes, want 0", again)
				}
				for _, ns := range st.Nodes {
					h := handle(t, f.NodeNSPath(ns.Name))
					for _, ifc := range ns.Interfaces {
						wantLink(t, h, fmt.Sprintf("eth%d", ifc.Device), ifc.MAC)
					}
				}
			})
		}
	}
}
