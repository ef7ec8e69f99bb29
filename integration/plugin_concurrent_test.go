package integration

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/vnet-cni/vnet-cni/bridge/azure0"
	"github.com/vnet-cni/vnet-cni/bridge/linux"
	"github.com/vnet-cni/vnet-cni/integration/cluster"
	"github.com/vnet-cni/vnet-cni/internal/nstest"
	"github.com/vnet-cni/vnet-cni/ipamd/config"
)

// TestPluginConcurrentAdds runs 30 ADDs at once on a node that has no bridge
// yet, so that several of them race to take over eth0, then 30 DELs at once.
func TestPluginConcurrentAdds(t *testing.T) {
	nstest.RequireRoot(t)
	const pods = 30
	_, c := startCluster(t, 1, func(cfg *config.Config) {
		// The pool already holds what the burst needs: this is about
		// the plugin and the datapath, not the refill.
		cfg.IPAddressCount = pods + 5
	})
	n := c.Nodes[0]
	ctx := context.Background()
	nl := nodeLinks(t, n)
	eth0, err := nl.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if links := bridges(t, nl); len(links) != 0 {
		t.Fatalf("the node already has bridges %v", links)
	}

	// Watch every link event of the node: a bridge made twice, or made,
	// removed and made again, shows up here even if the end state is fine.
	events := make(chan netlink.LinkUpdate, 4096)
	done := make(chan struct{})
	h, err := netns.GetFromPath(n.NSPath)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	// A burst makes many link events: a large receive buffer, and a watch
	// that breaks (buffer overrun) fails the test instead of seeing nothing.
	var watchErr error
	var watchErrMu sync.Mutex
	var stopping atomic.Bool // closing the watch makes its receive fail: not an error
	if err := netlink.LinkSubscribeWithOptions(events, done, netlink.LinkSubscribeOptions{
		Namespace: &h, ReceiveBufferSize: 8 << 20, ReceiveBufferForceSize: true,
		ErrorCallback: func(err error) {
			if stopping.Load() {
				return
			}
			watchErrMu.Lock()
			watchErr = errors.Join(watchErr, err)
			watchErrMu.Unlock()
		},
	}); err != nil {
		t.Fatal(err)
	}
	bridgeEvents := map[string]int{} // "new <index>" / "del <index>"
	var evMu sync.Mutex
	var evWG sync.WaitGroup
	evWG.Go(func() {
		for u := range events {
			if _, ok := u.Link.(*netlink.Bridge); !ok {
				continue
			}
			kind := "new"
			if u.Header.Type == unix.RTM_DELLINK {
				kind = "del"
			}
			evMu.Lock()
			bridgeEvents[fmt.Sprintf("%s %d", kind, u.Attrs().Index)]++
			evMu.Unlock()
		}
	})

	all := make([]*cluster.Pod, pods)
	for i := range all {
		if all[i], err = n.NewPod("default", fmt.Sprintf("burst%02d", i)); err != nil {
			t.Fatal(err)
		}
	}
	errs := make([]error, pods)
	var wg sync.WaitGroup
	for i, p := range all {
		wg.Go(func() { _, errs[i] = n.Add(ctx, p) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("ADD %s: %v", all[i].Name, err)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	// One bridge, azure0, holding the node's primary address, with eth0 as
	// a port and eth0's MAC and MTU.
	brs := bridges(t, nl)
	if len(brs) != 1 || brs[0].Attrs().Name != azure0.DefaultBridgeName {
		t.Fatalf("bridges %v, want exactly %s", brs, azure0.DefaultBridgeName)
	}
	br := brs[0]
	eth0, err = nl.LinkByIndex(eth0.Attrs().Index)
	if err != nil {
		t.Fatal(err)
	}
	if eth0.Attrs().MasterIndex != br.Attrs().Index {
		t.Errorf("eth0 is a port of link %d, want %s (%d)", eth0.Attrs().MasterIndex, br.Attrs().Name, br.Attrs().Index)
	}
	if br.Attrs().HardwareAddr.String() != eth0.Attrs().HardwareAddr.String() {
		t.Errorf("bridge mac %s, eth0 mac %s", br.Attrs().HardwareAddr, eth0.Attrs().HardwareAddr)
	}
	primary := netip.MustParseAddr(n.PrimaryIP)
	if got := ipv4Addrs(t, nl, br); len(got) != 1 || got[0] != primary {
		t.Errorf("%s has %v, want the primary %s", br.Attrs().Name, got, primary)
	}
	if got := ipv4Addrs(t, nl, eth0); len(got) != 0 {
		t.Errorf("eth0 still has %v", got)
	}

	bn, err := azure0.Open(n.NSPath, azure0.Options{LockDir: n.Config.PluginLockDir})
	if err != nil {
		t.Fatal(err)
	}
	defer bn.Close()
	// Distinct addresses, each on its pod's eth0 with the bridge's MTU,
	// a hairpin port, and registered for the fabric and for SNAT.
	owner := map[netip.Addr]string{}
	for _, p := range all {
		if o, dup := owner[p.IP]; dup {
			t.Errorf("%s given to %s and %s", p.IP, o, p.Name)
		}
		owner[p.IP] = p.Name
		l, addrs, _ := podSide(t, p)
		if len(addrs) != 1 || addrs[0].Addr() != p.IP {
			t.Errorf("%s has %v, want %s", p.Name, addrs, p.IP)
		}
		if l.Attrs().MTU != br.Attrs().MTU {
			t.Errorf("%s mtu %d, bridge %d", p.Name, l.Attrs().MTU, br.Attrs().MTU)
		}
		st, err := bn.InspectPod(ctx, linux.PodRef{ContainerID: p.ContainerID, IfName: p.IfName, NetNS: p.NSPath})
		if err != nil {
			t.Fatal(err)
		}
		if st.HostVeth == nil || !st.HostVeth.Hairpin || !st.SNATRegistered || st.RegisteredMAC.String() != l.Attrs().HardwareAddr.String() {
			t.Errorf("%s: host veth %+v, snat registered %t, bridge table mac %s (pod mac %s)",
				p.Name, st.HostVeth, st.SNATRegistered, st.RegisteredMAC, l.Attrs().HardwareAddr)
		}
		host, err := nl.LinkByName(linux.HostVethName(p.ContainerID, p.IfName))
		if err != nil {
			t.Errorf("host veth of %s: %v", p.Name, err)
		} else if host.Attrs().MasterIndex != br.Attrs().Index || host.Attrs().MTU != br.Attrs().MTU {
			t.Errorf("host veth of %s: master %d mtu %d", p.Name, host.Attrs().MasterIndex, host.Attrs().MTU)
		}
	}
	if len(owner) != pods {
		t.Errorf("%d distinct addresses for %d pods", len(owner), pods)
	}

	// Every pod answers the node and the next pod.
	targets := make([]netip.AddrPort, pods)
	for i, p := range all {
		targets[i] = listenRemote(t, p.NSPath, netip.AddrPortFrom(p.IP, 80))
	}
	for i, p := range all {
		if got, err := seenFrom(ctx, n.NSPath, targets[i]); err != nil || got != primary {
			t.Errorf("node -> %s: seen as %s, %v", p.Name, got, err)
		}
		next := all[(i+1)%pods]
		if got, err := seenFrom(ctx, p.NSPath, targets[(i+1)%pods]); err != nil || got != p.IP {
			t.Errorf("%s -> %s: seen as %s, %v", p.Name, next.Name, got, err)
		}
	}

	for i, p := range all {
		wg.Go(func() { errs[i] = n.Del(ctx, p) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("DEL %s: %v", all[i].Name, err)
		}
	}
	if got := vethCount(t, n); got != 0 {
		links, _ := nl.LinkList()
		for _, l := range links {
			if l.Type() == "veth" && l.Attrs().Name != "eth0" {
				t.Logf("left: %s alias %q master %d", l.Attrs().Name, l.Attrs().Alias, l.Attrs().MasterIndex)
			}
		}
		for _, p := range all {
			t.Logf("%s %s %s", p.Name, p.IP, linux.HostVethName(p.ContainerID, p.IfName))
		}
		t.Errorf("%d veths left after the DELs", got)
	}
	st, err := n.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Pool.Assigned != 0 || st.Pool.Cooling+st.Pool.Free < pods {
		t.Errorf("pool after the DELs: %+v, want nothing assigned and %d cooling or free", st.Pool, pods)
	}
	state := map[netip.Addr]string{}
	for _, r := range addresses(t, n) {
		state[r.IP] = r.State
	}
	for ip, name := range owner {
		if s := state[ip]; s != "cooling" && s != "free" {
			t.Errorf("%s of %s is %q after DEL", ip, name, s)
		}
		if mac := registeredMAC(t, n, ip); mac != nil {
			t.Errorf("bridge table still maps %s of %s", ip, name)
		}
	}

	// Let late events arrive, then stop watching.
	time.Sleep(100 * time.Millisecond)
	stopping.Store(true)
	close(done)
	evWG.Wait()
	evMu.Lock()
	defer evMu.Unlock()
	created := 0
	for k := range bridgeEvents {
		var kind string
		var idx int
		if _, err := fmt.Sscanf(k, "%s %d", &kind, &idx); err != nil {
			t.Fatal(err)
		}
		if kind == "del" {
			t.Errorf("a bridge (index %d) was deleted during the burst", idx)
		}
		if kind == "new" {
			created++
		}
	}
	watchErrMu.Lock()
	defer watchErrMu.Unlock()
	if watchErr != nil {
		t.Fatalf("the link event watch broke, events are incomplete: %v", watchErr)
	}
	if created != 1 {
		t.Errorf("bridge link events %v: want one bridge index", bridgeEvents)
	}
}

func bridges(t *testing.T, nl *netlink.Handle) []netlink.Link {
	t.Helper()
	links, err := nl.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var out []netlink.Link
	for _, l := range links {
		if _, ok := l.(*netlink.Bridge); ok {
			out = append(out, l)
		}
	}
	return out
}

func ipv4Addrs(t *testing.T, nl *netlink.Handle, l netlink.Link) []netip.Addr {
	t.Helper()
	as, err := nl.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	var out []netip.Addr
	for _, a := range as {
		ip, _ := netip.AddrFromSlice(a.IP.To4())
		out = append(out, ip)
	}
	return out
}
