package integration

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/vnet-cni/vnet-cni/cloud/sim"
	"github.com/vnet-cni/vnet-cni/integration/cluster"
	"github.com/vnet-cni/vnet-cni/internal/nstest"
)

func TestSmoke(t *testing.T) {
	nstest.RequireRoot(t)
	ctx := context.Background()
	s, err := sim.Start(ctx, sim.Options{Nodes: 2, Prefix: nstest.Prefix(t), Dir: t.TempDir(),
		OperationDuration: 100 * time.Millisecond, PollInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c, err := cluster.New(s.Description(), cluster.Options{Dir: t.TempDir(), BinDir: "../bin"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	n0, n1 := c.Nodes[0], c.Nodes[1]
	a, err := n0.NewPod("default", "a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := n1.NewPod("default", "b")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n0.Add(ctx, a); err != nil {
		t.Fatalf("ADD a: %v", err)
	}
	if _, err := n1.Add(ctx, b); err != nil {
		t.Fatalf("ADD b: %v", err)
	}
	t.Logf("a=%s b=%s", a.IP, b.IP)
	dst := nstest.ListenTCP(t, b.NSPath, netip.AddrPortFrom(b.IP, 80))
	line, err := nstest.DialTCP(ctx, a.NSPath, netip.Addr{}, dst, 3*time.Second)
	if err != nil {
		t.Fatalf("a -> b: %v", err)
	}
	t.Log(line)
	if err := n0.Del(ctx, a); err != nil {
		t.Fatal(err)
	}
}
