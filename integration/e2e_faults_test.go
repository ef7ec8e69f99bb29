package integration

// The end-to-end fault suite: a daemon killed during a burst of ADDs, a node
// reboot, the NIC limit, and a 429 storm of the cloud API.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/vnet-cni/vnet-cni/cloud/sim/arm"
	"github.com/vnet-cni/vnet-cni/integration/cluster"
	"github.com/vnet-cni/vnet-cni/internal/nsnet"
	"github.com/vnet-cni/vnet-cni/internal/nstest"
	"github.com/vnet-cni/vnet-cni/ipamd/config"
)

// TestE2EKillDuringBurst kills vnet-ipamd with SIGKILL while 50 ADDs run
// concurrently on one node, and restarts it. Every ADD that succeeded keeps
// its address (in the daemon and on the NIC) and its connectivity; no
// address is held twice; every ADD that failed failed with CNI error 11 and
// left no datapath behind; after the runtime's DEL of the failed ones and a
// GC with the valid attachments, the assigned addresses are exactly those
// of the running pods.
func TestE2EKillDuringBurst(t *testing.T) {
	e := newE2EEnv(t, 1, nil)
	e.start(t)
	n := e.c.Nodes[0]
	ctx := context.Background()

	const burst, killAfter = 50, 10
	pods := make([]*cluster.Pod, burst)
	for i := range pods {
		p, err := n.NewPod("burst", fmt.Sprintf("p%02d", i))
		if err != nil {
			t.Fatal(err)
		}
		pods[i] = p
	}
	errs := make([]error, burst)
	var ok atomic.Int32
	enough := make(chan struct{})
	begin := make(chan struct{})
	var wg sync.WaitGroup
	// The pods of a burst arrive over about a second (a Deployment scaled
	// up), so the kill lands with some ADDs in flight and others not yet
	// started, however fast a single ADD is.
	for i, p := range pods {
		wg.Go(func() {
			<-begin
			time.Sleep(time.Duration(i) * 20 * time.Millisecond)
			_, errs[i] = n.Add(ctx, p)
			if errs[i] == nil && ok.Add(1) == killAfter {
				close(enough)
			}
		})
	}
	close(begin)
	select {
	case <-enough:
	case <-time.After(60 * time.Second):
		t.Fatalf("fewer than %d of %d ADDs succeeded within 60s", killAfter, burst)
	}
	if err := n.StopIPAMD(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	wg.Wait()

	// ADDs while the daemon is down: try again later, nothing taken.
	down := make([]*cluster.Pod, 3)
	for i := range down {
		p, err := n.NewPod("burst", fmt.Sprintf("down%d", i))
		if err != nil {
			t.Fatal(err)
		}
		_, err = n.Add(ctx, p)
		if code := e2eCode(err); code != types.ErrTryAgainLater {
			t.Errorf("ADD %s while vnet-ipamd is down: %v (code %d), want code 11", p.Name, err, code)
		}
		down[i] = p
	}
	if err := n.StartIPAMD(); err != nil {
		t.Fatal(err)
	}
	if err := n.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}

	var good, failed []*cluster.Pod
	for i, p := range pods {
		if errs[i] == nil {
			good = append(good, p)
			continue
		}
		failed = append(failed, p)
		if code := e2eCode(errs[i]); code != types.ErrTryAgainLater {
			t.Errorf("ADD %s failed with code %d, want 11: %v", p.Name, code, errs[i])
		}
	}
	failed = append(failed, down...)
	t.Logf("%d ADDs succeeded, %d failed when vnet-ipamd was killed", len(good), len(failed)-len(down))
	if len(good) == burst {
		t.Fatal("the kill came after every ADD had finished: nothing was interrupted")
	}

	// Every successful ADD kept its address, uniquely, in the daemon and on the NIC.
	byIP := map[netip.Addr]*cluster.Pod{}
	for _, p := range good {
		if q, dup := byIP[p.IP]; dup {
			t.Errorf("%s and %s were both given %s", p.Name, q.Name, p.IP)
		}
		byIP[p.IP] = p
		if a := e2eAssigned(t, p); a == nil || a.IP != p.IP {
			t.Errorf("%s: ADD returned %s, the daemon after the restart holds %+v", p.Name, p.IP, a)
		}
		if err := n.Check(ctx, p); err != nil {
			t.Errorf("CHECK %s after the restart: %v", p.Name, err)
		}
	}
	e.storeMatchesNIC(t, n)
	failedIDs := map[string]*cluster.Pod{}
	for _, p := range failed {
		failedIDs[p.ContainerID] = p
	}
	orphans := 0
	for ip, a := range e2eList(t, n) {
		if a.State != "assigned" {
			continue
		}
		if p, ok := byIP[ip]; ok {
			if a.ContainerID != p.ContainerID {
				t.Errorf("%s is assigned to %s in the daemon but was given to %s", ip, a.ContainerID, p.Name)
			}
			continue
		}
		if _, ok := failedIDs[a.ContainerID]; ok {
			// The daemon assigned it but was killed before answering:
			// the runtime's DEL after the failed ADD (or GC) releases it.
			orphans++
			continue
		}
		t.Errorf("%s is assigned to unknown attachment %s", ip, a.ContainerID)
	}
	t.Logf("%d failed ADDs hold an address whose answer the kill cut off", orphans)

	// Failed ADDs left no datapath.
	for _, p := range failed {
		if left := e2eLeftovers(t, p); len(left) > 0 {
			t.Errorf("failed ADD %s left %v", p.Name, left)
		}
	}

	// Connectivity of every surviving pod: from its node and to the internet.
	internet := e2eServe(t, e.desc.InternetNetns, "internet", netip.AddrPortFrom(e2eAddr(e.desc.InternetHost), 80))
	for _, p := range good {
		dst := e2eServe(t, p.NSPath, p.Name, netip.AddrPortFrom(p.IP, 80))
		e2eExpect(t, "node -> "+p.Name, n.NSPath, dst, p.Name, e2eAddr(n.PrimaryIP))
		e2eExpect(t, p.Name+" -> internet", p.NSPath, internet, "internet", e2eAddr(n.PrimaryIP))
	}

	// The runtime deletes what failed (containerd does after a failed ADD),
	// then GC with the valid attachments: nothing leaks.
	for _, p := range failed {
		if err := n.Del(ctx, p); err != nil {
			t.Errorf("DEL after failed ADD %s: %v", p.Name, err)
		}
	}
	if err := n.GC(ctx, good); err != nil {
		t.Fatalf("GC: %v", err)
	}
	assigned := map[string]netip.Addr{}
	for ip, a := range e2eList(t, n) {
		if a.State == "assigned" {
			assigned[a.ContainerID] = ip
		}
	}
	if len(assigned) != len(good) {
		t.Errorf("after GC %d addresses are assigned, want %d (the running pods)", len(assigned), len(good))
	}
	for _, p := range good {
		if assigned[p.ContainerID] != p.IP {
			t.Errorf("after GC %s holds %s, want %s", p.Name, assigned[p.ContainerID], p.IP)
		}
	}
	// And the node still starts pods.
	e2eAddPod(t, n, "after")
}

// TestE2EReboot reboots a node: its daemon dies, every pod and the datapath
// (bridge, veths, nftables) are gone and eth0 has its address back, and the
// daemon starts with a new boot id. The previous boot's assignments are
// discarded into their cooldown, new pods start, and the old addresses come
// back to the pool. A restart without a reboot keeps the assignments.
func TestE2EReboot(t *testing.T) {
	const cooldown = 4 * time.Second
	e := newE2EEnv(t, 1, func(_ string, c *config.Config) { c.Cooldown = config.Duration(cooldown) })
	n := e.c.Nodes[0]
	bootID := filepath.Join(t.TempDir(), "boot_id")
	writeBootID := func(id string) {
		t.Helper()
		if err := os.WriteFile(bootID, []byte(id+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeBootID("6d1c9a3e-0000-4000-8000-000000000001")
	n.ExtraArgs = []string{"--boot-id-file", bootID}
	e.start(t)
	ctx := context.Background()

	var old []*cluster.Pod
	for i := range 3 {
		old = append(old, e2eAddPod(t, n, fmt.Sprintf("old%d", i)))
	}

	// A restart in the same boot keeps every assignment.
	if err := n.StopIPAMD(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := n.StartIPAMD(); err != nil {
		t.Fatal(err)
	}
	if err := n.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	for _, p := range old {
		if a := e2eAssigned(t, p); a == nil || a.IP != p.IP {
			t.Fatalf("%s after a restart without reboot: %+v, want %s", p.Name, a, p.IP)
		}
	}

	// The reboot.
	if err := n.StopIPAMD(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for _, p := range old {
		if err := p.Remove(); err != nil {
			t.Fatal(err)
		}
	}
	e2eFreshBoot(t, n, e2eAddr(e.desc.Gateway), netip.MustParsePrefix(e.desc.SubnetPrefix))
	writeBootID("6d1c9a3e-0000-4000-8000-000000000002")
	if err := n.StartIPAMD(); err != nil {
		t.Fatal(err)
	}
	if err := n.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	addrs := e2eList(t, n)
	for _, p := range old {
		if a := addrs[p.IP]; a.State != "cooling" {
			t.Errorf("%s of the previous boot's %s is %q after the reboot, want cooling", p.IP, p.Name, a.State)
		}
		if a := e2eAssigned(t, p); a != nil {
			t.Errorf("%s still assigned %s after the reboot", p.Name, a.IP)
		}
	}

	// New pods start on the rebuilt datapath, with fresh addresses.
	internet := e2eServe(t, e.desc.InternetNetns, "internet", netip.AddrPortFrom(e2eAddr(e.desc.InternetHost), 80))
	for i := range 3 {
		p := e2eAddPod(t, n, fmt.Sprintf("new%d", i))
		for _, o := range old {
			if p.IP == o.IP && time.Since(restarted) < cooldown {
				t.Errorf("%s got %s of the previous boot during its cooldown", p.Name, p.IP)
			}
		}
		dst := e2eServe(t, p.NSPath, p.Name, netip.AddrPortFrom(p.IP, 80))
		e2eExpect(t, "node -> "+p.Name, n.NSPath, dst, p.Name, e2eAddr(n.PrimaryIP))
		e2eExpect(t, p.Name+" -> internet", p.NSPath, internet, "internet", e2eAddr(n.PrimaryIP))
	}
	// kubelet deletes the pods of the previous boot: their netns is gone.
	for _, p := range old {
		if err := n.Del(ctx, p); err != nil {
			t.Errorf("DEL of %s after the reboot: %v", p.Name, err)
		}
	}
	for _, p := range old {
		if err := nsnet.Eventually(cooldown+5*time.Second, func() error {
			if st := e2eList(t, n)[p.IP].State; st != "free" {
				return fmt.Errorf("%s is %q", p.IP, st)
			}
			return nil
		}); err != nil {
			t.Errorf("previous boot's address not back in the pool: %v", err)
		}
	}
	e.storeMatchesNIC(t, n)
}

// e2eFreshBoot makes the node namespace look like a VM after a reboot: no
// bridge, no pod veths, an empty nftables ruleset, forwarding off, and eth0
// with the primary address and the default route, as the VM's network
// set-up leaves it.
func e2eFreshBoot(t *testing.T, n *cluster.Node, gateway netip.Addr, subnet netip.Prefix) {
	t.Helper()
	nl := nstest.Netlink(t, n.NSPath)
	links, err := nl.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if l.Type() == "bridge" || l.Type() == "veth" && l.Attrs().Name != "eth0" {
			// Pod veths vanish on their own with the pods' namespaces.
			if err := nl.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
				t.Fatalf("delete %s: %v", l.Attrs().Name, err)
			}
		}
	}
	eth, err := nl.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	primary := netip.PrefixFrom(e2eAddr(n.PrimaryIP), subnet.Bits())
	if err := nl.AddrReplace(eth, &netlink.Addr{IPNet: &net.IPNet{IP: primary.Addr().AsSlice(), Mask: net.CIDRMask(primary.Bits(), 32)}}); err != nil {
		t.Fatal(err)
	}
	if err := nl.LinkSetUp(eth); err != nil {
		t.Fatal(err)
	}
	if err := nl.RouteReplace(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: gateway.AsSlice()}); err != nil {
		t.Fatal(err)
	}
	h, err := netns.GetFromPath(n.NSPath)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	nft, err := nftables.New(nftables.WithNetNSFd(int(h)))
	if err != nil {
		t.Fatal(err)
	}
	nft.FlushRuleset()
	if err := nft.Flush(); err != nil {
		t.Fatalf("flush nftables ruleset: %v", err)
	}
	if err := nsnet.Do(n.NSPath, func() error {
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("0"), 0o644)
	}); err != nil {
		t.Fatal(err)
	}
	// /run is a tmpfs: the plugin's lock directory is gone too.
	if err := os.RemoveAll(n.Config.PluginLockDir); err != nil {
		t.Fatal(err)
	}
}

// TestE2ENICLimit fills a node to its maxIPs: the next ADD fails with CNI
// error 11 and a message naming the limit, and STATUS reports it; after DEL
// the freed addresses serve new pods again, but only after their cooldown.
func TestE2ENICLimit(t *testing.T) {
	const maxIPs, cooldown = 8, 3 * time.Second
	e := newE2EEnv(t, 1, func(_ string, c *config.Config) {
		c.MaxIPs = maxIPs
		c.WarmIPTarget = 2
		c.BatchSize = 2
		c.IPAddressCount = 2
		c.AllocateWait = config.Duration(time.Second)
		c.Cooldown = config.Duration(cooldown)
	})
	e.start(t)
	n := e.c.Nodes[0]
	ctx := context.Background()

	var pods []*cluster.Pod
	var limitErr error
	for i := range maxIPs + 1 {
		p, err := n.NewPod("default", fmt.Sprintf("p%d", i))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := n.Add(ctx, p); err != nil {
			limitErr = err
			if left := e2eLeftovers(t, p); len(left) > 0 {
				t.Errorf("ADD refused at the limit left %v", left)
			}
			break
		}
		pods = append(pods, p)
	}
	if len(pods) != maxIPs {
		t.Fatalf("%d pods started before the first failure (%v), want maxIPs = %d", len(pods), limitErr, maxIPs)
	}
	if code := e2eCode(limitErr); code != types.ErrTryAgainLater || !strings.Contains(limitErr.Error(), fmt.Sprintf("limit of %d addresses", maxIPs)) {
		t.Errorf("ADD beyond the limit: %v (code %d), want code 11 naming the limit of %d addresses", limitErr, code, maxIPs)
	}
	t.Logf("ADD at the limit: %v", limitErr)
	if got := len(e.nicIPs(n)); got != maxIPs {
		t.Errorf("the NIC holds %d secondary addresses, want %d", got, maxIPs)
	}
	// A full node is not a broken one: STATUS stays ok (an error would
	// make kubelet mark the node NotReady, and its pods be evicted).
	if err := n.PluginStatus(ctx); err != nil {
		t.Errorf("STATUS at the limit, every address held by a pod: %v, want ok", err)
	}

	// Pods leave: their addresses serve new pods once cooled down.
	// The cooldown starts while DEL runs: measure from before the first.
	deleted := time.Now()
	for _, p := range pods[:2] {
		if err := n.Del(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 2 {
		p, err := n.NewPod("default", fmt.Sprintf("again%d", i))
		if err != nil {
			t.Fatal(err)
		}
		if err := nsnet.Eventually(cooldown+10*time.Second, func() error {
			_, err := n.Add(ctx, p)
			if err != nil && e2eCode(err) != types.ErrTryAgainLater {
				t.Fatalf("ADD after DEL: %v, want success or code 11", err)
			}
			return err
		}); err != nil {
			t.Fatalf("ADD never succeeded again after DEL: %v", err)
		}
		if d := time.Since(deleted); d < cooldown {
			t.Errorf("ADD succeeded %s after DEL at the limit, before the cooldown of %s", d, cooldown)
		}
		if p.IP != pods[0].IP && p.IP != pods[1].IP {
			t.Errorf("%s got %s, not one of the freed addresses %s, %s", p.Name, p.IP, pods[0].IP, pods[1].IP)
		}
	}
	if err := n.PluginStatus(ctx); err != nil {
		t.Errorf("STATUS at the limit again: %v, want ok", err)
	}
	e.storeMatchesNIC(t, n)
}

// TestE2EThrottleStorm answers every cloud call with 429 for a while: pods
// still start from the warm pool, the refill backs off (a bounded number of
// throttled calls, honouring Retry-After) and catches up after the storm.
func TestE2EThrottleStorm(t *testing.T) {
	const warm, storm = 10, 5 * time.Second
	e := newE2EEnv(t, 1, func(_ string, c *config.Config) {
		c.WarmIPTarget = warm
		c.IPAddressCount = warm
		c.BatchSize = 5
		c.AllocateWait = config.Duration(time.Second)
	})
	e.start(t)
	n := e.c.Nodes[0]
	ctx := context.Background()
	free := func() int {
		st, err := n.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return st.Pool.Free
	}
	if err := nsnet.Eventually(10*time.Second, func() error {
		if f := free(); f < warm {
			return fmt.Errorf("%d free", f)
		}
		return nil
	}); err != nil {
		t.Fatalf("warm pool never filled: %v", err)
	}

	e.sim.ARM().ResetStats()
	e.sim.ARM().SetFaults(arm.Faults{Storm: &arm.Storm{Duration: arm.Duration(storm), RetryAfterSeconds: 1}})
	stormEnd := time.Now().Add(storm)
	const started = 8
	for i := range started {
		p := e2eAddPod(t, n, fmt.Sprintf("storm%d", i))
		if time.Now().After(stormEnd) {
			t.Fatalf("ADD %s finished after the storm; the test proves nothing", p.Name)
		}
	}
	if err := nsnet.Eventually(storm, func() error {
		st, err := n.Status(ctx)
		if err != nil {
			return err
		}
		if st.LastCloudError == "" {
			return fmt.Errorf("no cloud error reported during the storm")
		}
		return nil
	}); err != nil {
		t.Errorf("the refill did not meet the storm: %v", err)
	}
	if err := nsnet.Eventually(time.Until(stormEnd)+15*time.Second, func() error {
		if f := free(); f < warm {
			return fmt.Errorf("%d free", f)
		}
		return nil
	}); err != nil {
		t.Errorf("the pool did not catch up after the storm: %v", err)
	}
	caughtUp := time.Since(stormEnd)
	stats := e.sim.ARM().Stats()
	t.Logf("storm of %s: %d throttled calls, %d calls in all (%v); caught up %s after it ended",
		storm, stats.Throttled, stats.Total, stats.Calls, caughtUp.Round(10*time.Millisecond))
	// Retry-After is 1 s: a client that honours it makes about one call a
	// second; twice that plus a margin for in-flight polls is the bound.
	if limit := 2*int(storm/time.Second) + 4; stats.Throttled > limit {
		t.Errorf("%d throttled calls during a %s storm with Retry-After 1s, want at most %d", stats.Throttled, storm, limit)
	}
	if stats.Throttled == 0 {
		t.Error("no call was throttled: the refill did not try during the storm")
	}
}
