package fabric

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/vnet-cni/vnet-cni/internal/nsnet"
	"github.com/vnet-cni/vnet-cni/internal/nstest"
)

const (
	okTimeout   = 3 * time.Second        // a connection that must work
	dropTimeout = 400 * time.Millisecond // a connection that must be dropped
)

func testTopology(prefix string, nodes int) Topology {
	topo := Topology{
		Prefix:       prefix,
		VNetPrefixes: []netip.Prefix{pfx("10.240.0.0/16")},
		Subnet:       pfx("10.240.0.0/16"),
		Internet:     pfx("203.0.113.0/24"),
	}
	primary := ip("10.240.0.4")
	for i := range nodes {
		topo.Nodes = append(topo.Nodes, Node{
			Name:    fmt.Sprintf("node%d", i),
			MAC:     net.HardwareAddr{0x00, 0x0d, 0x3a, 0x5c, 0x00, byte(i + 1)},
			Primary: primary,
		})
		primary = primary.Next()
	}
	return topo
}

// newFabric creates a fabric with n nodes, removed when the test ends.
func newFabric(t *testing.T, n int) *Fabric {
	t.Helper()
	nstest.RequireRoot(t)
	t.Parallel()
	topo := testTopology(nstest.Prefix(t), n)
	t.Cleanup(func() { // runs last: a safety net if Destroy failed
		if err := Cleanup(topo.Prefix); err != nil {
			t.Errorf("Cleanup(%s): %v", topo.Prefix, err)
		}
	})
	f, err := Create(t.Context(), topo)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	t.Cleanup(func() {
		if err := f.Destroy(); err != nil {
			t.Errorf("Destroy: %v", err)
		}
	})
	return f
}

func mustApply(t *testing.T, f *Fabric, st State) {
	t.Helper()
	if err := f.Apply(t.Context(), st); err != nil {
		t.Fatalf("Apply: %v", err)
	}
}

func primary(f *Fabric, node string) netip.Addr {
	for _, n := range f.topo.Nodes {
		if n.Name == node {
			return n.Primary
		}
	}
	panic("unknown node " + node)
}

// handle returns a netlink handle in the namespace at nsPath.
func handle(t *testing.T, nsPath string) *netlink.Handle {
	t.Helper()
	nsh, err := netns.GetFromPath(nsPath)
	if err != nil {
		t.Fatalf("open %s: %v", nsPath, err)
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		t.Fatalf("netlink handle in %s: %v", nsPath, err)
	}
	t.Cleanup(h.Close)
	return h
}

func link(t *testing.T, h *netlink.Handle, name string) netlink.Link {
	t.Helper()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatalf("link %s: %v", name, err)
	}
	return l
}

// addAddr puts a on the link, as a pod or the node daemon would.
func addAddr(t *testing.T, nsPath, dev string, a netip.Prefix) {
	t.Helper()
	h := handle(t, nsPath)
	if err := h.AddrAdd(link(t, h, dev), &netlink.Addr{IPNet: ipNet(a)}); err != nil {
		t.Fatalf("add %s to %s: %v", a, dev, err)
	}
}

func setSysctl(t *testing.T, nsPath, key, value string) {
	t.Helper()
	if err := writeSysctls(nsPath, map[string]string{key: value}); err != nil {
		t.Fatal(err)
	}
}

// tcpCheck is one connection attempt from a node.
type tcpCheck struct {
	from string         // node name
	src  netip.Addr     // source address; invalid for the kernel's choice
	dst  netip.AddrPort // where a listener is (or is not)
	// want is the namespace expected to answer; empty when the connection
	// must fail (dropped, or unreachable).
	want string
}

func checkTCP(t *testing.T, f *Fabric, checks ...tcpCheck) {
	t.Helper()
	for _, c := range checks {
		timeout := okTimeout
		if c.want == "" {
			timeout = dropTimeout
		}
		line, err := nsnet.DialTCP(t.Context(), f.NodeNSPath(c.from), c.src, c.dst, timeout)
		switch {
		case c.want == "" && err == nil:
			t.Errorf("%s (src %v) -> %s: connected (%q), want dropped", c.from, c.src, c.dst, line)
		case c.want != "" && err != nil:
			t.Errorf("%s (src %v) -> %s: %v, want answer from %s", c.from, c.src, c.dst, err, c.want)
		case c.want != "" && !strings.HasPrefix(line, c.want+" "):
			t.Errorf("%s (src %v) -> %s: answered %q, want %s", c.from, c.src, c.dst, line, c.want)
		}
	}
}

func nsName(path string) string { return filepath.Base(path) }

func TestNodeToNode(t *testing.T) {
	f := newFabric(t, 3)
	for _, n := range []string{"node0", "node1", "node2"} {
		nstest.ListenTCP(t, f.NodeNSPath(n), netip.AddrPortFrom(netip.IPv4Unspecified(), 80))
	}
	ap := func(a netip.Addr) netip.AddrPort { return netip.AddrPortFrom(a, 80) }
	tests := []struct {
		name string
		c    tcpCheck
	}{
		{"node0 to node1", tcpCheck{from: "node0", dst: ap(primary(f, "node1")), want: nsName(f.NodeNSPath("node1"))}},
		{"node1 to node2", tcpCheck{from: "node1", dst: ap(primary(f, "node2")), want: nsName(f.NodeNSPath("node2"))}},
		{"node2 to node0", tcpCheck{from: "node2", dst: ap(primary(f, "node0")), want: nsName(f.NodeNSPath("node0"))}},
		{"unassigned address", tcpCheck{from: "node0", dst: ap(ip("10.240.0.99"))}},
		{"outside the vnet and the internet", tcpCheck{from: "node0", dst: ap(ip("192.0.2.1"))}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { checkTCP(t, f, tt.c) })
	}
	t.Run("gateway answers", func(t *testing.T) {
		// Nothing listens on the gateway: a reset proves it is there.
		_, err := nsnet.DialTCP(t.Context(), f.NodeNSPath("node0"), netip.Addr{}, ap(f.Gateway()), okTimeout)
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("dial gateway: %v, want connection refused", err)
		}
	})
}

func TestSecondaryIP(t *testing.T) {
	f := newFabric(t, 2)
	sec := ip("10.240.0.20")
	addAddr(t, f.NodeNSPath("node1"), "eth0", netip.PrefixFrom(sec, 16))
	nstest.ListenTCP(t, f.NodeNSPath("node1"), netip.AddrPortFrom(sec, 80))
	node1 := nsName(f.NodeNSPath("node1"))
	with := State{Nodes: []NodeState{{Name: "node1", IPs: []netip.Addr{primary(f, "node1"), sec}}}}
	// Steps run in order: each is a state transition.
	steps := []struct {
		name string
		st   State
		want string
	}{
		{"on the nic but not in the control plane", State{}, ""},
		{"assigned in the control plane", with, node1},
		{"released again", State{}, ""},
		{"assigned to the wrong nic", State{Nodes: []NodeState{{Name: "node0", IPs: []netip.Addr{sec}}}}, ""},
		{"assigned again", with, node1},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			mustApply(t, f, s.st)
			checkTCP(t, f, tcpCheck{from: "node0", dst: netip.AddrPortFrom(sec, 80), want: s.want})
		})
	}
}

func TestSourceIPAntiSpoofing(t *testing.T) {
	f := newFabric(t, 2)
	extra := ip("10.240.0.30")
	addAddr(t, f.NodeNSPath("node0"), "eth0", netip.PrefixFrom(extra, 16))
	dst := netip.AddrPortFrom(primary(f, "node1"), 5000)
	got := nstest.ListenUDP(t, f.NodeNSPath("node1"), dst)
	steps := []struct {
		name string
		st   State
		src  netip.Addr
		want bool
	}{
		{"primary source", State{}, primary(f, "node0"), true},
		{"source not assigned", State{}, extra, false},
		{"source assigned", State{Nodes: []NodeState{{Name: "node0", IPs: []netip.Addr{extra}}}}, extra, true},
		{"source assigned to another nic", State{Nodes: []NodeState{{Name: "node1", IPs: []netip.Addr{extra}}}}, extra, false},
		{"ip forwarding on the nic", State{Nodes: []NodeState{{Name: "node0", IPForwarding: true}}}, extra, true},
		{"ip forwarding off again", State{}, extra, false},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			mustApply(t, f, s.st)
			timeout := okTimeout
			if !s.want {
				timeout = dropTimeout
			}
			if arrived := nsnet.UDPReaches(f.NodeNSPath("node0"), s.src, dst, got, timeout); arrived != s.want {
				t.Errorf("datagram from %s arrived = %v, want %v", s.src, arrived, s.want)
			}
		})
	}
}

func TestSourceMACAntiSpoofing(t *testing.T) {
	f := newFabric(t, 2)
	dst := netip.AddrPortFrom(primary(f, "node1"), 5000)
	got := nstest.ListenUDP(t, f.NodeNSPath("node1"), dst)
	h := handle(t, f.NodeNSPath("node0"))
	orig := f.topo.Nodes[0].MAC
	foreign := net.HardwareAddr{0x00, 0x0d, 0x3a, 0x66, 0x66, 0x66}
	steps := []struct {
		name string
		mac  net.HardwareAddr
		// static pins node1's address to the virtual MAC, so that no
		// ARP is needed and only the frame's source MAC is checked.
		static bool
		want   bool
	}{
		{"nic mac", orig, false, true},
		{"foreign mac, arp needed", foreign, false, false},
		{"foreign mac, static neighbour", foreign, true, false},
		{"nic mac restored", orig, false, true},
		{"nic mac, static neighbour", orig, true, true},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			eth0 := link(t, h, "eth0")
			if err := h.LinkSetHardwareAddr(eth0, s.mac); err != nil {
				t.Fatalf("set mac: %v", err)
			}
			if s.static {
				n := &netlink.Neigh{LinkIndex: eth0.Attrs().Index, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
					IP: dst.Addr().AsSlice(), HardwareAddr: VirtualMAC}
				if err := h.NeighSet(n); err != nil {
					t.Fatalf("static neighbour: %v", err)
				}
				t.Cleanup(func() { _ = h.NeighDel(n) })
			}
			timeout := okTimeout
			if !s.want {
				timeout = dropTimeout
			}
			src := primary(f, "node0")
			if arrived := nsnet.UDPReaches(f.NodeNSPath("node0"), src, dst, got, timeout); arrived != s.want {
				t.Errorf("datagram from mac %s arrived = %v, want %v", s.mac, arrived, s.want)
			}
		})
	}
}

func TestInternet(t *testing.T) {
	f := newFabric(t, 2)
	sec := ip("10.240.0.40")
	addAddr(t, f.NodeNSPath("node0"), "eth0", netip.PrefixFrom(sec, 16))
	host := netip.AddrPortFrom(f.InternetHost(), 80)
	nstest.ListenTCP(t, f.InternetNSPath(), host)
	inet := nsName(f.InternetNSPath())
	steps := []struct {
		name   string
		st     State
		checks []tcpCheck
	}{
		{"primaries reach the internet", State{Nodes: []NodeState{{Name: "node0", IPs: []netip.Addr{sec}}}}, []tcpCheck{
			{from: "node0", src: primary(f, "node0"), dst: host, want: inet},
			{from: "node1", dst: host, want: inet},
			{from: "node0", src: sec, dst: host},
		}},
		{"ip forwarding does not open outbound for secondaries", State{Nodes: []NodeState{{Name: "node0", IPs: []netip.Addr{sec}, IPForwarding: true}}}, []tcpCheck{
			{from: "node0", src: sec, dst: host},
			{from: "node0", src: primary(f, "node0"), dst: host, want: inet},
		}},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			mustApply(t, f, s.st)
			checkTCP(t, f, s.checks...)
		})
	}
}

func TestUserDefinedRoute(t *testing.T) {
	f := newFabric(t, 2)
	target := ip("10.244.1.10")
	addAddr(t, f.NodeNSPath("node1"), "lo", netip.PrefixFrom(target, 32))
	setSysctl(t, f.NodeNSPath("node1"), "net/ipv4/ip_forward", "1")
	nstest.ListenTCP(t, f.NodeNSPath("node1"), netip.AddrPortFrom(target, 80))
	udp := netip.AddrPortFrom(target, 5000)
	got := nstest.ListenUDP(t, f.NodeNSPath("node1"), udp)
	route := []Route{{Prefix: pfx("10.244.1.0/24"), NextHop: primary(f, "node1")}}
	fwd := []NodeState{{Name: "node1", IPForwarding: true}}
	steps := []struct {
		name string
		st   State
		want bool
	}{
		{"no route", State{}, false},
		{"route, appliance without ip forwarding", State{Routes: route}, false},
		{"route, appliance with ip forwarding", State{Routes: route, Nodes: fwd}, true},
		{"ip forwarding without route", State{Nodes: fwd}, false},
		{"route to a next hop that is no nic", State{Routes: []Route{{Prefix: pfx("10.244.1.0/24"), NextHop: ip("10.240.0.77")}}, Nodes: fwd}, false},
		{"route back", State{Routes: route, Nodes: fwd}, true},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			mustApply(t, f, s.st)
			// One way: does the route deliver to the appliance at all?
			timeout := okTimeout
			if !s.want {
				timeout = dropTimeout
			}
			if arrived := nsnet.UDPReaches(f.NodeNSPath("node0"), netip.Addr{}, udp, got, timeout); arrived != s.want {
				t.Errorf("datagram to %s arrived = %v, want %v", udp, arrived, s.want)
			}
			// Both ways: the appliance answers from an address that is not its own.
			want := ""
			if s.want {
				want = nsName(f.NodeNSPath("node1"))
			}
			checkTCP(t, f, tcpCheck{from: "node0", dst: netip.AddrPortFrom(target, 80), want: want})
		})
	}
}

func TestProxyARP(t *testing.T) {
	f := newFabric(t, 2)
	own, other := ip("10.240.0.50"), ip("10.240.0.51")
	mustApply(t, f, State{Nodes: []NodeState{
		{Name: "node0", IPs: []netip.Addr{own}}, // a pod address behind node0, not on eth0
		{Name: "node1", IPs: []netip.Addr{other}},
	}})
	h := handle(t, f.NodeNSPath("node0"))
	eth0 := link(t, h, "eth0").Attrs().Index
	tests := []struct {
		name string
		addr netip.Addr
	}{
		{"gateway", f.Gateway()},
		{"another node", primary(f, "node1")},
		{"secondary of another node", other},
		{"secondary of the asking node", own},
		{"unassigned", ip("10.240.3.3")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := nsnet.Eventually(okTimeout, func() error {
				// Any packet makes the node resolve the address.
				_ = nsnet.SendUDP(f.NodeNSPath("node0"), netip.Addr{}, netip.AddrPortFrom(tt.addr, 9), []byte("arp"))
				neighs, err := h.NeighList(eth0, netlink.FAMILY_V4)
				if err != nil {
					return err
				}
				for _, n := range neighs {
					if n.IP.Equal(tt.addr.AsSlice()) {
						if n.State&(netlink.NUD_REACHABLE|netlink.NUD_STALE|netlink.NUD_DELAY|netlink.NUD_PROBE) == 0 {
							return fmt.Errorf("neighbour %s in state %#x", tt.addr, n.State)
						}
						if !bytes.Equal(n.HardwareAddr, VirtualMAC) {
							return fmt.Errorf("neighbour %s is %s, want %s", tt.addr, n.HardwareAddr, VirtualMAC)
						}
						return nil
					}
				}
				return fmt.Errorf("no neighbour entry for %s", tt.addr)
			})
			if err != nil {
				t.Error(err)
			}
		})
	}
}

// nftConn returns an nftables connection in the fabric's vnet namespace.
func nftConn(t *testing.T, f *Fabric) *nftables.Conn {
	t.Helper()
	nsh, err := netns.GetFromPath(f.VNetNSPath())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nsh.Close() })
	c, err := nftables.New(nftables.WithNetNSFd(int(nsh)))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestRunRepairs(t *testing.T) {
	f := newFabric(t, 2)
	sec := ip("10.240.0.20")
	st := State{
		Nodes:  []NodeState{{Name: "node1", IPs: []netip.Addr{sec}, IPForwarding: false}},
		Routes: []Route{{Prefix: pfx("10.244.0.0/24"), NextHop: primary(f, "node0")}},
	}
	mustApply(t, f, st)
	vh := handle(t, f.VNetNSPath())
	nc := nftConn(t, f)
	table := &nftables.Table{Name: nftTable, Family: nftables.TableFamilyNetdev}
	n0chain := &nftables.Chain{Name: nodeChain("n0"), Table: table}
	rules := func(t *testing.T, c *nftables.Chain) []*nftables.Rule {
		t.Helper()
		rs, err := nc.GetRules(table, c)
		if err != nil || len(rs) == 0 {
			t.Fatalf("rules of %s: %v (%d rules)", c.Name, err, len(rs))
		}
		return rs
	}
	flush := func(t *testing.T) {
		t.Helper()
		if err := nc.Flush(); err != nil {
			t.Fatalf("nft flush: %v", err)
		}
	}
	ipset := func(dev string) *nftables.Set {
		return &nftables.Set{Table: table, Name: nodeSet(dev), KeyType: nftables.TypeIPAddr}
	}

	tests := []struct {
		name   string
		mutate func(t *testing.T)
	}{
		{"route to a primary deleted", func(t *testing.T) {
			r := &netlink.Route{Dst: ipNet(pfx("10.240.0.5/32")), LinkIndex: f.ifindex["n1"], Scope: netlink.SCOPE_LINK, Protocol: routeProtocol}
			if err := vh.RouteDel(r); err != nil {
				t.Fatal(err)
			}
		}},
		{"route to a secondary pointed elsewhere", func(t *testing.T) {
			r := &netlink.Route{Dst: ipNet(netip.PrefixFrom(sec, 32)), LinkIndex: f.ifindex[sinkLink], Scope: netlink.SCOPE_LINK, Protocol: unix.RTPROT_STATIC}
			if err := vh.RouteReplace(r); err != nil {
				t.Fatal(err)
			}
		}},
		{"blackhole of a user-defined route deleted", func(t *testing.T) {
			r := &netlink.Route{Dst: ipNet(pfx("10.244.0.0/24")), Type: unix.RTN_BLACKHOLE, Protocol: routeProtocol}
			if err := vh.RouteDel(r); err != nil {
				t.Fatal(err)
			}
		}},
		{"permanent neighbour changed", func(t *testing.T) {
			n := &netlink.Neigh{LinkIndex: f.ifindex["n1"], Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
				IP: primary(f, "node1").AsSlice(), HardwareAddr: net.HardwareAddr{0x00, 0x0d, 0x3a, 1, 2, 3}}
			if err := vh.NeighSet(n); err != nil {
				t.Fatal(err)
			}
		}},
		{"nft rule deleted", func(t *testing.T) {
			if err := nc.DelRule(rules(t, n0chain)[0]); err != nil {
				t.Fatal(err)
			}
			flush(t)
		}},
		{"nft rule edited", func(t *testing.T) {
			r := rules(t, n0chain)[0]
			var exprs []expr.Any
			for _, e := range r.Exprs {
				if c, ok := e.(*expr.Cmp); ok && len(c.Data) == 6 {
					e = &expr.Cmp{Op: c.Op, Register: c.Register, Data: []byte{0x00, 0x0d, 0x3a, 9, 9, 9}}
				}
				exprs = append(exprs, e)
			}
			nc.ReplaceRule(&nftables.Rule{Table: table, Chain: n0chain, Handle: r.Handle, Exprs: exprs, UserData: r.UserData})
			flush(t)
		}},
		{"nft set element deleted", func(t *testing.T) {
			if err := nc.SetDeleteElements(ipset("n1"), []nftables.SetElement{{Key: sec.AsSlice()}}); err != nil {
				t.Fatal(err)
			}
			flush(t)
		}},
		{"nft set element added", func(t *testing.T) {
			if err := nc.SetAddElements(ipset("n0"), []nftables.SetElement{{Key: ip("10.240.0.66").AsSlice()}}); err != nil {
				t.Fatal(err)
			}
			flush(t)
		}},
		{"nft chain added", func(t *testing.T) {
			nc.AddChain(&nftables.Chain{Name: "intruder", Table: table})
			flush(t)
		}},
		{"nft table deleted", func(t *testing.T) {
			nc.DelTable(table)
			flush(t)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.mutate(t)
			if ok, err := f.inSync(st); ok || err != nil {
				t.Fatalf("after the edit: in sync = %v (%v), want a difference", ok, err)
			}
			ctx, cancel := context.WithCancel(t.Context())
			var wg sync.WaitGroup
			wg.Go(func() { f.Run(ctx, func() State { return st }, nil) })
			defer wg.Wait()
			defer cancel()
			start := time.Now()
			err := nsnet.Eventually(3*time.Second, func() error {
				ok, err := f.inSync(st)
				if !ok && err == nil {
					err = errors.New("not repaired")
				}
				return err
			})
			if err != nil {
				t.Fatalf("after %v: %v", time.Since(start), err)
			}
			t.Logf("repaired after %v", time.Since(start).Round(time.Millisecond))
		})
	}

	// The repaired fabric still enforces: the secondary is delivered, a
	// foreign MAC is not.
	addAddr(t, f.NodeNSPath("node1"), "eth0", netip.PrefixFrom(sec, 16))
	nstest.ListenTCP(t, f.NodeNSPath("node1"), netip.AddrPortFrom(sec, 80))
	checkTCP(t, f, tcpCheck{from: "node0", dst: netip.AddrPortFrom(sec, 80), want: nsName(f.NodeNSPath("node1"))})
	dst := netip.AddrPortFrom(primary(f, "node1"), 5000)
	got := nstest.ListenUDP(t, f.NodeNSPath("node1"), dst)
	h0 := handle(t, f.NodeNSPath("node0"))
	if err := h0.LinkSetHardwareAddr(link(t, h0, "eth0"), net.HardwareAddr{0x00, 0x0d, 0x3a, 0x66, 0x66, 0x66}); err != nil {
		t.Fatal(err)
	}
	if nsnet.UDPReaches(f.NodeNSPath("node0"), primary(f, "node0"), dst, got, dropTimeout) {
		t.Error("foreign source mac passes after repairs")
	}
}

func TestRunFollowsChanges(t *testing.T) {
	f := newFabric(t, 2)
	var cur atomic.Pointer[State]
	cur.Store(&State{})
	changed := make(chan struct{}, 1)
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	wg.Go(func() { f.Run(ctx, func() State { return *cur.Load() }, changed) })
	defer wg.Wait()
	defer cancel()

	sec := ip("10.240.0.20")
	addAddr(t, f.NodeNSPath("node1"), "eth0", netip.PrefixFrom(sec, 16))
	nstest.ListenTCP(t, f.NodeNSPath("node1"), netip.AddrPortFrom(sec, 80))
	next := State{Nodes: []NodeState{{Name: "node1", IPs: []netip.Addr{sec}}}}
	cur.Store(&next)
	changed <- struct{}{}
	if err := nsnet.Eventually(3*time.Second, func() error {
		if ok, err := f.inSync(next); !ok || err != nil {
			return errors.Join(errors.New("not applied"), err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	checkTCP(t, f, tcpCheck{from: "node0", dst: netip.AddrPortFrom(sec, 80), want: nsName(f.NodeNSPath("node1"))})
}

func TestApplyIdempotent(t *testing.T) {
	f := newFabric(t, 3)
	states := []State{
		{},
		{Nodes: []NodeState{{Name: "node1", IPs: []netip.Addr{ip("10.240.0.20"), ip("10.240.0.21")}}}},
		{Nodes: []NodeState{{Name: "node1", IPs: []netip.Addr{ip("10.240.0.21")}}, {Name: "node2", IPForwarding: true}}},
		{
			Nodes:  []NodeState{{Name: "node0", IPs: []netip.Addr{ip("10.240.0.30")}, IPForwarding: true}},
			Routes: []Route{{Prefix: pfx("10.244.0.0/24"), NextHop: primary(f, "node0")}, {Prefix: pfx("10.244.1.0/24"), NextHop: primary(f, "node1")}},
		},
	}
	before := f.Changes()
	mustApply(t, f, State{})
	if got := f.Changes() - before; got != 0 {
		t.Errorf("first Apply after Create made %d changes, want 0", got)
	}
	// Every transition, in random order, twice over.
	order := append(rand.Perm(len(states)), rand.Perm(len(states))...)
	prev := 0
	for _, i := range order {
		before := f.Changes()
		mustApply(t, f, states[i])
		first := f.Changes() - before
		if i != prev && first == 0 {
			t.Errorf("state %d after %d: Apply made no changes", i, prev)
		}
		mustApply(t, f, states[i])
		if again := f.Changes() - before - first; again != 0 {
			t.Errorf("state %d after %d: second Apply made %d changes, want 0", i, prev, again)
		}
		if ok, err := f.inSync(states[i]); !ok || err != nil {
			t.Errorf("state %d: in sync = %v (%v)", i, ok, err)
		}
		prev = i
	}
}

// namespacesWithPrefix lists /run/netns entries named prefix-*.
func namespacesWithPrefix(t *testing.T, prefix string) []string {
	t.Helper()
	entries, err := os.ReadDir(nsDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix+"-") {
			out = append(out, e.Name())
		}
	}
	return out
}

func TestDestroy(t *testing.T) {
	nstest.RequireRoot(t)
	t.Parallel()
	topo := testTopology(nstest.Prefix(t), 2)
	t.Cleanup(func() { _ = Cleanup(topo.Prefix) })
	f, err := Create(t.Context(), topo)
	if err != nil {
		t.Fatal(err)
	}
	if got := namespacesWithPrefix(t, topo.Prefix); len(got) != 4 {
		t.Errorf("namespaces after Create: %v, want 4", got)
	}
	if err := f.Destroy(); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
	if got := namespacesWithPrefix(t, topo.Prefix); len(got) != 0 {
		t.Errorf("namespaces left after Destroy: %v", got)
	}
	if err := f.Destroy(); err != nil {
		t.Errorf("second Destroy: %v", err)
	}
	if err := f.Apply(t.Context(), State{}); !errors.Is(err, ErrDestroyed) {
		t.Errorf("Apply after Destroy = %v, want ErrDestroyed", err)
	}
}

func TestCreateFailureCleansUp(t *testing.T) {
	nstest.RequireRoot(t)
	t.Parallel()
	topo := testTopology(nstest.Prefix(t), 3)
	t.Cleanup(func() { _ = Cleanup(topo.Prefix) })
	// A namespace in the way makes Create fail half-way.
	blocker := topo.Prefix + "-node2"
	nstest.NewNS(t, blocker)
	if f, err := Create(t.Context(), topo); err == nil {
		_ = f.Destroy()
		t.Fatal("Create succeeded, want an error")
	}
	if got := namespacesWithPrefix(t, topo.Prefix); len(got) != 1 || got[0] != blocker {
		t.Errorf("namespaces after failed Create: %v, want only %s", got, blocker)
	}
}

const crashEnv = "FABRIC_TEST_CRASH_PREFIX"

// TestCrashHelper is run as a child process by TestCleanupAfterCrash: it
// creates a fabric and exits without destroying it.
func TestCrashHelper(t *testing.T) {
	prefix := os.Getenv(crashEnv)
	if prefix == "" {
		t.Skip("helper process for TestCleanupAfterCrash")
	}
	if _, err := Create(context.Background(), testTopology(prefix, 2)); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	os.Exit(0)
}

func TestCleanupAfterCrash(t *testing.T) {
	nstest.RequireRoot(t)
	t.Parallel()
	prefix := nstest.Prefix(t)
	t.Cleanup(func() { _ = Cleanup(prefix) })
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestCrashHelper$")
	cmd.Env = append(os.Environ(), crashEnv+"="+prefix)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	if got := namespacesWithPrefix(t, prefix); len(got) != 4 {
		t.Fatalf("namespaces left by the crashed process: %v, want 4", got)
	}
	if err := Cleanup(prefix); err != nil {
		t.Fatalf("Cleanup: %v", err)
	}
	if got := namespacesWithPrefix(t, prefix); len(got) != 0 {
		t.Errorf("namespaces after Cleanup: %v", got)
	}
	if err := Cleanup(prefix); err != nil {
		t.Errorf("second Cleanup: %v", err)
	}
}

// sendARPRequest sends a raw ARP request out of dev in the namespace, with
// the frame's source MAC ether but ARP sender (sha, spa).
func sendARPRequest(nsPath, dev string, ether, sha net.HardwareAddr, spa, tpa netip.Addr) error {
	return nsnet.Do(nsPath, func() error {
		ifi, err := net.InterfaceByName(dev)
		if err != nil {
			return err
		}
		proto := binary.BigEndian.Uint16(binary.NativeEndian.AppendUint16(nil, unix.ETH_P_ARP)) // htons
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(proto))
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		defer unix.Close(fd)
		frame := make([]byte, 0, 42)
		frame = append(frame, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)
		frame = append(frame, ether...)
		frame = append(frame, 0x08, 0x06) // ARP
		frame = append(frame, 0, 1, 0x08, 0x00, 6, 4, 0, 1)
		frame = append(frame, sha...)
		frame = append(frame, spa.AsSlice()...)
		frame = append(frame, 0, 0, 0, 0, 0, 0)
		frame = append(frame, tpa.AsSlice()...)
		sa := &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifi.Index, Halen: 6}
		copy(sa.Addr[:], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
		return unix.Sendto(fd, frame, 0, sa)
	})
}

func TestARPSenderMAC(t *testing.T) {
	f := newFabric(t, 1)
	nic := f.topo.Nodes[0].MAC
	foreign := net.HardwareAddr{0x00, 0x0d, 0x3a, 0x66, 0x66, 0x66}
	vh := handle(t, f.VNetNSPath())
	tests := []struct {
		name  string
		ether net.HardwareAddr
		sha   net.HardwareAddr
		spa   netip.Addr
		learn bool // whether the fabric sees the request (and learns spa)
	}{
		{"nic mac in frame and arp", nic, nic, ip("10.240.0.77"), true},
		{"foreign arp sender", nic, foreign, ip("10.240.0.78"), false},
		{"foreign frame source", foreign, nic, ip("10.240.0.79"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			timeout := okTimeout
			if !tt.learn {
				timeout = dropTimeout
			}
			err := nsnet.Eventually(timeout, func() error {
				// Sent on every try: one frame can be lost on a loaded
				// machine (a link that is not up yet), and more frames
				// give a wrong rule more chances to let one through.
				if err := sendARPRequest(f.NodeNSPath("node0"), "eth0", tt.ether, tt.sha, tt.spa, f.Gateway()); err != nil {
					return fmt.Errorf("send arp: %w", err)
				}
				neighs, err := vh.NeighList(f.ifindex["n0"], netlink.FAMILY_V4)
				if err != nil {
					return err
				}
				for _, n := range neighs {
					if n.IP.Equal(tt.spa.AsSlice()) {
						return nil
					}
				}
				return errors.New("not learned")
			})
			if learned := err == nil; learned != tt.learn {
				t.Errorf("fabric learned %s from the request = %v, want %v", tt.spa, learned, tt.learn)
			}
		})
	}
}

func BenchmarkApplyUnchanged(b *testing.B) {
	nstest.RequireRoot(b)
	topo := testTopology(nstest.Prefix(b), 3)
	b.Cleanup(func() { _ = Cleanup(topo.Prefix) })
	f, err := Create(b.Context(), topo)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = f.Destroy() })
	st := State{Nodes: []NodeState{{Name: "node1", IPs: []netip.Addr{ip("10.240.0.20"), ip("10.240.0.21")}}}}
	if err := f.Apply(b.Context(), st); err != nil {
		b.Fatal(err)
	}
	before := f.Changes()
	for b.Loop() {
		if err := f.Apply(b.Context(), st); err != nil {
			b.Fatal(err)
		}
	}
	if f.Changes() != before {
		b.Fatalf("unchanged state made %d changes", f.Changes()-before)
	}
}
