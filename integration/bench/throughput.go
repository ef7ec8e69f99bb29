package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/vnet-cni/vnet-cni/integration/cluster"
	"github.com/vnet-cni/vnet-cni/internal/nsnet"
)

// path is one way between two namespaces that throughput is measured on.
type path struct {
	name     string
	src, dst string // namespace paths
	dstIP    netip.Addr
}

// The direct pair's addresses, inside two namespaces of their own.
var (
	directA = netip.MustParsePrefix("192.168.77.1/30")
	directB = netip.MustParsePrefix("192.168.77.2/30")
)

// measureThroughput moves ThroughputBytes over TCP on each path, rounds
// interleaved, and keeps the median of each path.
func (e *env) measureThroughput(ctx context.Context, res *Results) (err error) {
	e.progress("throughput: %d MiB per run, %d runs per path", e.opts.ThroughputBytes>>20, e.opts.ThroughputRounds)
	direct, err := e.directPair()
	if err != nil {
		return err
	}
	peerList, err := e.peer.PluginOnlyList("1.0.0")
	if err != nil {
		return err
	}
	peerSide := &side{name: "vnet-cni", nsPath: e.peer.NSPath, node: e.peer, cni: e.vnet.cni, list: peerList}
	type podOn struct {
		s    *side
		name string
	}
	added := map[string]*cluster.Pod{}
	var order []podOn
	defer func() {
		// Undo in reverse; the namespaces go with the cluster.
		for _, po := range slices.Backward(order) {
			p := added[po.name]
			err = errors.Join(err, ignoreCtx(po.s.do(context.WithoutCancel(ctx), opDel, p)))
			err = errors.Join(err, p.Remove())
		}
	}()
	for _, po := range []podOn{{e.vnet, "tv1"}, {e.vnet, "tv2"}, {peerSide, "tv3"}, {e.ref, "tr1"}, {e.ref, "tr2"}} {
		p, perr := po.s.node.NewPod("bench", po.name)
		if perr != nil {
			return perr
		}
		if _, perr := po.s.do(ctx, opAdd, p); perr != nil {
			return errors.Join(perr, p.Remove())
		}
		added[po.name] = p
		order = append(order, po)
	}
	paths := []path{
		direct,
		{name: "vnet-cni, same node", src: added["tv1"].NSPath, dst: added["tv2"].NSPath, dstIP: added["tv2"].IP},
		{name: "vnet-cni, across nodes", src: added["tv1"].NSPath, dst: added["tv3"].NSPath, dstIP: added["tv3"].IP},
		{name: e.ref.name + ", same node", src: added["tr1"].NSPath, dst: added["tr2"].NSPath, dstIP: added["tr2"].IP},
	}
	samples := make([][]float64, len(paths))
	for _, p := range paths { // warm up: neighbours, routes, TCP memory
		if _, err := tcpThroughput(ctx, p, 1<<20); err != nil {
			return fmt.Errorf("throughput %s: %w", p.name, err)
		}
	}
	for r := range e.opts.ThroughputRounds {
		for k := range paths {
			i := (k + r) % len(paths)
			bps, err := tcpThroughput(ctx, paths[i], e.opts.ThroughputBytes)
			if err != nil {
				return fmt.Errorf("throughput %s: %w", paths[i].name, err)
			}
			samples[i] = append(samples[i], bps)
		}
	}
	for i, p := range paths {
		s := slices.Sorted(slices.Values(samples[i]))
		res.Throughput = append(res.Throughput, Throughput{Path: p.name, Gbps: round3(s[len(s)/2] / 1e9),
			Runs: len(s), MiB: int(e.opts.ThroughputBytes >> 20)})
	}
	return nil
}

func ignoreCtx(_ time.Duration, err error) error { return err }

// directPair creates two namespaces joined by a veth: the ceiling of what
// a pod's link can carry.
func (e *env) directPair() (path, error) {
	a, b := e.sim.Description().Prefix+"-direct-a", e.sim.Description().Prefix+"-direct-b"
	for _, n := range []string{a, b} {
		if err := nsnet.CreateNamed(n); err != nil {
			return path{}, err
		}
		e.nsNames = append(e.nsNames, n)
	}
	pa, pb := nsPath(a), nsPath(b)
	hb, err := netns.GetFromPath(pb)
	if err != nil {
		return path{}, err
	}
	defer hb.Close()
	err = nsnet.Do(pa, func() error {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(hb)}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("add veth: %w", err)
		}
		return upWithAddr("eth0", directA)
	})
	if err != nil {
		return path{}, err
	}
	if err := nsnet.Do(pb, func() error { return upWithAddr("eth0", directB) }); err != nil {
		return path{}, err
	}
	return path{name: "direct veth pair", src: pa, dst: pb, dstIP: directB.Addr()}, nil
}

func nsPath(name string) string { return nsnet.NSDir + "/" + name }

func deleteNS(name string) error { return nsnet.DeleteNamed(name) }

// upWithAddr sets the link up with addr, in the calling thread's namespace.
func upWithAddr(name string, addr netip.Prefix) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: addr.Addr().AsSlice(), Mask: net.CIDRMask(addr.Bits(), 32)}}
	if err := netlink.AddrAdd(l, a); err != nil {
		return fmt.Errorf("address %s on %s: %w", addr, name, err)
	}
	return netlink.LinkSetUp(l)
}

// tcpThroughput sends n bytes from p.src to p.dst over one TCP connection
// and returns bits per second, from the connection's start to the last
// byte read by the receiver.
func tcpThroughput(ctx context.Context, p path, n int64) (float64, error) {
	var ln net.Listener
	err := nsnet.Do(p.dst, func() error {
		var err error
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(p.dstIP, 0).String())
		return err
	})
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	deadline := time.Now().Add(60 * time.Second)
	type result struct {
		n   int64
		end time.Time
		err error
	}
	got := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- result{err: err}
			return
		}
		defer c.Close()
		_ = c.SetDeadline(deadline)
		m, err := io.CopyBuffer(io.Discard, c, make([]byte, 256<<10))
		got <- result{n: m, end: time.Now(), err: err}
	}()
	var conn net.Conn
	err = nsnet.Do(p.src, func() error {
		d := net.Dialer{Timeout: 5 * time.Second}
		var err error
		conn, err = d.DialContext(ctx, "tcp4", ln.Addr().String())
		return err
	})
	if err != nil {
		return 0, err
	}
	_ = conn.SetDeadline(deadline)
	start := time.Now()
	buf := make([]byte, 256<<10)
	var sent int64
	for sent < n && err == nil {
		var w int
		w, err = conn.Write(buf[:min(int64(len(buf)), n-sent)])
		sent += int64(w)
	}
	err = errors.Join(err, conn.Close())
	r := <-got
	if err = errors.Join(err, r.err); err != nil {
		return 0, err
	}
	if r.n != n {
		return 0, fmt.Errorf("received %d of %d bytes", r.n, n)
	}
	return float64(n*8) / r.end.Sub(start).Seconds(), nil
}
