package daemon

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vnet-cni/vnet-cni/cloud"
	"github.com/vnet-cni/vnet-cni/cloud/azure"
	"github.com/vnet-cni/vnet-cni/cloud/sim"
	"github.com/vnet-cni/vnet-cni/ipamd/api"
	"github.com/vnet-cni/vnet-cni/ipamd/podcidr"
)

// TestPodCIDRPoolAndHold runs the pool over kubenet's pod CIDR (the real
// Azure provider against the simulated ARM describes the node): addresses
// come from the pod CIDR without a NIC write, and a hold keeps the node
// not ready and refuses ADD until it is lifted.
func TestPodCIDRPoolAndHold(t *testing.T) {
	podCIDR := netip.MustParsePrefix("10.100.3.0/24")
	stateDir := t.TempDir()
	connect := func(cfg azure.Config) Connect {
		return func(ctx context.Context) (Cloud, error) {
			p, err := azure.New(ctx, cfg)
			if err != nil {
				return nil, err
			}
			return podcidr.New(podcidr.Config{Inner: p, PodCIDR: podCIDR, ClusterCIDR: netip.MustParsePrefix("10.100.0.0/16"), StateDir: stateDir})
		}
	}
	h := newHarnessConnect(t, sim.Options{}, Options{Targets: targets(5, 0, 110, 5, time.Hour)}, connect)
	st := h.waitFor("ready", 10*time.Second, func(s api.StatusResponse) bool { return s.Ready })
	if st.Subnet != podCIDR || st.Gateway != netip.MustParseAddr("10.100.3.1") || st.Interface != "podcidr/10.100.3.0/24" {
		t.Errorf("status network %s gw %s iface %s, want the pod CIDR's", st.Subnet, st.Gateway, st.Interface)
	}
	if got := h.puts(); got != 0 {
		t.Errorf("%d NIC writes, want none: kubenet takes no address of the subnet", got)
	}
	a, err := h.allocate("c1")
	if err != nil {
		t.Fatal(err)
	}
	if !podCIDR.Contains(a.IP) || a.IP == netip.MustParseAddr("10.100.3.1") || a.Gateway != netip.MustParseAddr("10.100.3.1") {
		t.Errorf("assignment %s gw %s, want a pod address of %s", a.IP, a.Gateway, podCIDR)
	}
	h.d.SetHold("route", "the route of 10.100.3.0/24 is not effective yet")
	st = h.status()
	if st.Ready || st.Reason != "the route of 10.100.3.0/24 is not effective yet" {
		t.Errorf("held: ready %v reason %q", st.Ready, st.Reason)
	}
	if _, err := h.allocate("c2"); !api.IsTryAgain(err) {
		t.Errorf("ADD while held: %v, want try again", err)
	}
	if _, err := h.client.Release(context.Background(), api.ReleaseRequest{ContainerID: "c1", IfName: "eth0"}); err != nil {
		t.Errorf("DEL while held: %v", err)
	}
	h.d.SetHold("route", "")
	if st = h.status(); !st.Ready {
		t.Errorf("hold lifted: not ready: %s", st.Reason)
	}
	if _, err := h.allocate("c2"); err != nil {
		t.Errorf("ADD after the hold: %v", err)
	}
}

// TestReconnectEndsTheBackOff: a connection that waits for something (the
// Node's pod CIDR) fails; the daemon backs off. The clock is stopped, so
// the back-off never ends by itself; Reconnect, called when what it waited
// for arrives, connects at once.
func TestReconnectEndsTheBackOff(t *testing.T) {
	stopped := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	var known atomic.Bool
	var calls atomic.Int32
	connect := func(cfg azure.Config) Connect {
		return func(ctx context.Context) (Cloud, error) {
			calls.Add(1)
			if !known.Load() {
				return nil, &cloud.Error{Kind: cloud.Transient, Op: "read the Node's pod CIDR", Err: errors.New("waiting for the Node's spec.podCIDRs")}
			}
			return azure.New(ctx, cfg)
		}
	}
	h := newHarnessConnect(t, sim.Options{}, Options{Targets: targets(2, 0, 30, 2, time.Hour), Now: func() time.Time { return stopped }}, connect)
	h.waitFor("the connection refused", 10*time.Second, func(s api.StatusResponse) bool {
		return !s.Ready && strings.Contains(s.Reason, "spec.podCIDRs")
	})
	// Several times the first back-off (1 s) of the worker's sleeps: with
	// the clock stopped it does not connect again.
	time.Sleep(2500 * time.Millisecond)
	if n := calls.Load(); n != 1 {
		t.Fatalf("%d connection attempts with the clock stopped, want 1: the back-off did not hold", n)
	}
	known.Store(true)
	h.d.Reconnect()
	h.waitFor("ready after Reconnect", 10*time.Second, func(s api.StatusResponse) bool { return s.Ready })
	if n := calls.Load(); n != 2 {
		t.Errorf("%d connection attempts, want 2: the refused one and the one Reconnect started", n)
	}
	// Connected: Reconnect does nothing.
	h.d.Reconnect()
	time.Sleep(200 * time.Millisecond)
	if n := calls.Load(); n != 2 {
		t.Errorf("%d connection attempts after a Reconnect while connected, want still 2", n)
	}
}
