package soak

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/vnet-cni/vnet-cni/bridge/azure0"
	"github.com/vnet-cni/vnet-cni/bridge/linux"
	"github.com/vnet-cni/vnet-cni/integration/cluster"
	"github.com/vnet-cni/vnet-cni/internal/nsnet"
	"github.com/vnet-cni/vnet-cni/ipamd/api"
	"github.com/vnet-cni/vnet-cni/ipamd/store"
)

// probePort is where each node listens (on its primary address) for the
// connectivity probes of the other node's pods.
const probePort = 7077

// verify compares the pods the soak believes live with the daemons'
// stores, the cloud and the kernel, probes every live pod's connectivity,
// and finally kills every daemon and checks that its store opens and is
// valid.
func (r *runner) verify(ctx context.Context) {
	live := make([]map[string]*cluster.Pod, len(r.c.Nodes)) // by container id
	for ni := range r.c.Nodes {
		live[ni] = map[string]*cluster.Pod{}
		for _, s := range r.slots[ni] {
			if s.live {
				live[ni][s.pod.ContainerID] = s.pod
			}
		}
	}
	r.checkAddresses(ctx, live)
	r.checkCloud(live)
	for ni, n := range r.c.Nodes {
		r.checkKernel(n, live[ni])
	}
	r.checkConnectivity(ctx, live)
	for _, n := range r.c.Nodes {
		if err := n.StopIPAMD(syscall.SIGKILL); err != nil {
			r.violation("kill vnet-ipamd on %s: %v", n.Name, err)
		}
		st, err := store.Open(n.Config.StoreDir, store.Options{})
		if err != nil {
			r.violation("store of %s does not open after kill -9: %v", n.Name, err)
			continue
		}
		if err := st.Validate(); err != nil {
			r.violation("store of %s is invalid: %v", n.Name, err)
		}
		if err := st.Close(); err != nil {
			r.violation("close the store of %s: %v", n.Name, err)
		}
	}
}

// checkAddresses compares each daemon's assignments (rpc List) with the
// live pods: same attachments, same addresses, no address twice anywhere.
func (r *runner) checkAddresses(ctx context.Context, live []map[string]*cluster.Pod) {
	owner := map[netip.Addr]string{} // every address in any store or pod, with who has it
	claim := func(ip netip.Addr, who string) {
		if prev, ok := owner[ip]; ok && prev != who {
			r.violation("%s is held by %s and by %s", ip, prev, who)
			return
		}
		owner[ip] = who
	}
	for ni, n := range r.c.Nodes {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		list, err := n.Client().List(cctx, api.ListRequest{})
		cancel()
		if err != nil {
			r.violation("list the addresses of %s: %v", n.Name, err)
			continue
		}
		assigned := map[string]netip.Addr{}
		for _, a := range list.Addresses {
			who := fmt.Sprintf("%s store (%s)", n.Name, a.State)
			switch {
			case a.State == string(store.StateAssigned):
				who = fmt.Sprintf("%s/%s/%s", n.Name, short(a.ContainerID), a.IfName)
			case a.ContainerID != "":
				who = fmt.Sprintf("%s store (%s, released by %s/%s)", n.Name, a.State, short(a.ContainerID), a.IfName)
			}
			// A released address the cloud took off the node's NIC is a
			// tombstone kept until its cooldown ends (never free, never
			// put back): the subnet may have given it to the other node.
			if a.LostSince.IsZero() || a.State == string(store.StateAssigned) {
				claim(a.IP, who)
			}
			if a.State != string(store.StateAssigned) {
				continue
			}
			if _, dup := assigned[a.ContainerID+"/"+a.IfName]; dup {
				r.violation("%s: attachment %s/%s holds two addresses", n.Name, short(a.ContainerID), a.IfName)
			}
			assigned[a.ContainerID+"/"+a.IfName] = a.IP
		}
		for id, p := range live[ni] {
			ip, ok := assigned[id+"/"+p.IfName]
			switch {
			case !ok:
				r.violation("%s: live pod %s (%s) has no assignment in the store", n.Name, p.Name, p.IP)
			case ip != p.IP:
				r.violation("%s: live pod %s has %s, the store says %s", n.Name, p.Name, p.IP, ip)
			}
			claim(p.IP, fmt.Sprintf("%s/%s/%s", n.Name, short(id), p.IfName))
		}
		for att, ip := range assigned {
			id, _, _ := strings.Cut(att, "/")
			if _, ok := live[ni][id]; !ok {
				r.violation("%s: %s leaked: assigned to %s, which is not a live pod (after GC)", n.Name, ip, short(id))
			}
		}
		if len(assigned) != len(live[ni]) {
			r.violation("%s: %d addresses assigned, %d live pods", n.Name, len(assigned), len(live[ni]))
		}
		r.log.Info("addresses checked", "node", n.Name, "live", len(live[ni]), "assigned", len(assigned), "held", len(list.Addresses))
	}
}

// checkCloud compares each daemon's store with the node's NIC in the
// cloud: every address the store holds is on the NIC, and every secondary
// address of the NIC is in the store (a crash between the cloud call and
// the store write is repaired by the next resync, so this is awaited).
func (r *runner) checkCloud(live []map[string]*cluster.Pod) {
	for ni, n := range r.c.Nodes {
		var last error
		err := nsnet.Eventually(time.Duration(n.Config.ResyncInterval)+5*time.Second, func() error {
			nic, ok := r.nic(n)
			if !ok {
				return fmt.Errorf("no nic %s in the cloud", n.NIC)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			list, err := n.Client().List(ctx, api.ListRequest{})
			if err != nil {
				return err
			}
			inStore := map[netip.Addr]bool{}
			var errs []error
			for _, a := range list.Addresses {
				inStore[a.IP] = true
				if !nic[a.IP] && a.State != "releasing" {
					errs = append(errs, fmt.Errorf("store holds %s (%s), the nic does not", a.IP, a.State))
				}
			}
			for ip := range nic {
				if !inStore[ip] {
					errs = append(errs, fmt.Errorf("nic holds %s, unknown to the store", ip))
				}
			}
			for _, p := range live[ni] {
				if !nic[p.IP] {
					errs = append(errs, fmt.Errorf("live pod %s has %s, which is not on the nic", p.Name, p.IP))
				}
			}
			last = errors.Join(errs...)
			return last
		})
		if err != nil {
			r.violation("%s: store and cloud disagree: %v", n.Name, last)
		}
	}
	// The cloud itself never puts one address on two NICs.
	seen := map[netip.Addr]string{}
	if r.aws() {
		for _, eni := range r.sim.EC2().Snapshot().ENIs {
			for _, ip := range eni.IPs {
				if prev, ok := seen[ip]; ok {
					r.violation("the cloud has %s on %s and on %s", ip, prev, eni.ID)
				}
				seen[ip] = eni.ID
			}
		}
		return
	}
	for _, nic := range r.sim.ARM().Snapshot().NICs {
		for _, ip := range append([]netip.Addr{nic.Primary}, nic.Secondary...) {
			if prev, ok := seen[ip]; ok {
				r.violation("the cloud has %s on %s and on %s", ip, prev, nic.Name)
			}
			seen[ip] = nic.Name
		}
	}
}

// nic returns the secondary addresses of the node's NIC in the cloud; on
// AWS those of every ENI attached to the instance.
func (r *runner) nic(node *cluster.Node) (map[netip.Addr]bool, bool) {
	if r.aws() {
		out := map[netip.Addr]bool{}
		found := false
		for _, eni := range r.sim.EC2().Snapshot().ENIs {
			if eni.InstanceID != node.InstanceID || len(eni.IPs) == 0 {
				continue
			}
			found = true
			for _, ip := range eni.IPs[1:] {
				out[ip] = true
			}
		}
		return out, found
	}
	for _, n := range r.sim.ARM().Snapshot().NICs {
		if n.Name == node.NIC {
			out := map[netip.Addr]bool{}
			for _, ip := range n.Secondary {
				out[ip] = true
			}
			return out, true
		}
	}
	return nil, false
}

// checkKernel compares the node's datapath with its live pods: one host
// veth per live pod on the bridge and no other, the pod's address inside
// its namespace, and the bridge table's pod map.
func (r *runner) checkKernel(n *cluster.Node, live map[string]*cluster.Pod) {
	if r.aws() {
		r.checkKernelRouted(n, live)
		return
	}
	h, err := netns.GetFromPath(n.NSPath)
	if err != nil {
		r.violation("open netns of %s: %v", n.Name, err)
		return
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		r.violation("netlink in %s: %v", n.Name, err)
		return
	}
	defer nl.Close()
	br, err := nl.LinkByName(azure0.DefaultBridgeName)
	if err != nil {
		if len(live) > 0 {
			r.violation("%s: no bridge %s with %d live pods: %v", n.Name, azure0.DefaultBridgeName, len(live), err)
		}
		return
	}
	links, err := nl.LinkList()
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		r.violation("list links of %s: %v", n.Name, err)
		return
	}
	veths := map[string]netlink.Link{}
	for _, l := range links {
		// eth0, the node's NIC, is a veth to the fabric and a port too.
		if l.Type() == "veth" && l.Attrs().MasterIndex == br.Attrs().Index && l.Attrs().Name != "eth0" {
			veths[l.Attrs().Name] = l
		}
	}
	want := map[string]*cluster.Pod{}
	macs := map[netip.Addr]string{}
	for id, p := range live {
		name := linux.HostVethName(id, p.IfName)
		want[name] = p
		if _, ok := veths[name]; !ok {
			r.violation("%s: live pod %s has no host veth %s", n.Name, p.Name, name)
		}
		mac, err := r.checkPodNS(p)
		if err != nil {
			r.violation("%s: pod %s: %v", n.Name, p.Name, err)
		}
		macs[p.IP] = mac
	}
	for name, l := range veths {
		if _, ok := want[name]; !ok {
			r.violation("%s: veth %s (%s) on %s belongs to no live pod", n.Name, name, l.Attrs().Alias, azure0.DefaultBridgeName)
		}
	}
	elems, err := podMap(h)
	if err != nil {
		r.violation("%s: read the bridge pod map: %v", n.Name, err)
		return
	}
	for ip, mac := range macs {
		if elems[ip] != mac {
			r.violation("%s: the pod map sends %s to %q, the pod's mac is %s", n.Name, ip, elems[ip], mac)
		}
	}
	for ip := range elems {
		if _, ok := macs[ip]; !ok {
			r.violation("%s: the pod map holds %s, which no live pod has", n.Name, ip)
		}
	}
	r.log.Info("kernel checked", "node", n.Name, "veths", len(veths), "podMap", len(elems))
}

// checkPodNS checks the pod's interface and returns its MAC.
func (r *runner) checkPodNS(p *cluster.Pod) (string, error) {
	h, err := netns.GetFromPath(p.NSPath)
	if err != nil {
		return "", fmt.Errorf("open netns: %w", err)
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		return "", err
	}
	defer nl.Close()
	l, err := nl.LinkByName(p.IfName)
	if err != nil {
		return "", fmt.Errorf("interface %s: %w", p.IfName, err)
	}
	addrs, err := nl.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return "", fmt.Errorf("addresses: %w", err)
	}
	var got []string
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok && ip == p.IP {
			return l.Attrs().HardwareAddr.String(), nil
		}
		got = append(got, a.IPNet.String())
	}
	return l.Attrs().HardwareAddr.String(), fmt.Errorf("%s has %v, not %s", p.IfName, got, p.IP)
}

// podMap reads the bridge table's ip -> mac map in the node namespace.
func podMap(h netns.NsHandle) (map[netip.Addr]string, error) {
	c, err := nftables.New(nftables.WithNetNSFd(int(h)))
	if err != nil {
		return nil, err
	}
	set := &nftables.Set{
		Table: &nftables.Table{Name: azure0.TableName, Family: nftables.TableFamilyBridge},
		Name:  "pods", KeyType: nftables.TypeIPAddr, DataType: nftables.TypeEtherAddr, IsMap: true,
	}
	elems, err := c.GetSetElements(set)
	if err != nil {
		return nil, err
	}
	out := map[netip.Addr]string{}
	for _, e := range elems {
		ip, ok := netip.AddrFromSlice(e.Key)
		if ok && len(e.Val) >= 6 {
			out[ip] = net.HardwareAddr(e.Val[:6]).String()
		}
	}
	return out, nil
}

// checkConnectivity connects from every live pod to a listener on the
// other node's primary address: across the bridge, the fabric (which
// delivers the answer only if the cloud has the pod's address on this
// node's NIC) and back through the bridge's MAC rewrite. The listener must
// see the pod's own address (no SNAT inside the VNet).
func (r *runner) checkConnectivity(ctx context.Context, live []map[string]*cluster.Pod) {
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			_ = ln.Close()
		}
	}()
	targets := make([]netip.AddrPort, len(r.c.Nodes))
	for i, n := range r.c.Nodes {
		ap := netip.AddrPortFrom(netip.MustParseAddr(n.PrimaryIP), probePort)
		var ln net.Listener
		err := nsnet.Do(n.NSPath, func() error {
			var err error
			ln, err = net.Listen("tcp", ap.String())
			return err
		})
		if err != nil {
			r.violation("listen on %s in %s: %v", ap, n.Name, err)
			return
		}
		lns = append(lns, ln)
		targets[i] = ap
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				_ = c.SetDeadline(time.Now().Add(2 * time.Second))
				_, _ = fmt.Fprintf(c, "%s\n", c.RemoteAddr())
				_ = c.Close()
			}
		}()
	}
	type job struct {
		node string
		p    *cluster.Pod
		dst  netip.AddrPort
	}
	jobs := make(chan job)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for j := range jobs {
				var last error
				start, tries := time.Now(), 0
				err := nsnet.Eventually(10*time.Second, func() error {
					tries++
					last = probe(ctx, j.p, j.dst)
					return last
				})
				if err != nil {
					r.violation("%s: pod %s (%s) has no connectivity to %s: %v", j.node, j.p.Name, j.p.IP, j.dst, last)
				} else if tries > 1 {
					r.log.Info("connected only after retries", "node", j.node, "pod", j.p.Name, "ip", j.p.IP,
						"tries", tries, "after", time.Since(start).Round(time.Millisecond), "lastError", last)
				}
			}
		})
	}
	for ni, n := range r.c.Nodes {
		dst := targets[(ni+1)%len(targets)]
		for _, p := range live[ni] {
			jobs <- job{node: n.Name, p: p, dst: dst}
		}
	}
	close(jobs)
	wg.Wait()
	r.log.Info("connectivity checked")
}

// probe dials dst from the pod and checks the source address the peer saw.
func probe(ctx context.Context, p *cluster.Pod, dst netip.AddrPort) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var c net.Conn
	err := nsnet.Do(p.NSPath, func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, "tcp", dst.String())
		return err
	})
	if err != nil {
		return err
	}
	defer c.Close()
	dl, _ := ctx.Deadline()
	_ = c.SetDeadline(dl)
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	seen, err := netip.ParseAddrPort(strings.TrimSpace(line))
	if err != nil {
		return fmt.Errorf("peer answered %q", line)
	}
	if seen.Addr().Unmap() != p.IP {
		return fmt.Errorf("peer saw source %s, want the pod's %s", seen.Addr(), p.IP)
	}
	return nil
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// checkKernelRouted is checkKernel in routed mode (AWS): one host veth per
// live pod and no other, the pod's address inside its namespace, and the
// node's route to it on its veth.
func (r *runner) checkKernelRouted(n *cluster.Node, live map[string]*cluster.Pod) {
	h, err := netns.GetFromPath(n.NSPath)
	if err != nil {
		r.violation("open netns of %s: %v", n.Name, err)
		return
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		r.violation("netlink in %s: %v", n.Name, err)
		return
	}
	defer nl.Close()
	links, err := nl.LinkList()
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		r.violation("list links of %s: %v", n.Name, err)
		return
	}
	veths := map[string]netlink.Link{}
	for _, l := range links {
		if l.Type() == "veth" && strings.HasPrefix(l.Attrs().Name, linux.HostVethPrefix) {
			veths[l.Attrs().Name] = l
		}
	}
	routes, err := nl.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		r.violation("list routes of %s: %v", n.Name, err)
		return
	}
	routeDev := map[netip.Addr]int{}
	for _, rt := range routes {
		if p, ok := linux.PrefixOf(rt.Dst); ok && p.Bits() == 32 {
			routeDev[p.Addr()] = rt.LinkIndex
		}
	}
	want := map[string]bool{}
	for id, p := range live {
		name := linux.HostVethName(id, p.IfName)
		want[name] = true
		l, ok := veths[name]
		if !ok {
			r.violation("%s: live pod %s has no host veth %s", n.Name, p.Name, name)
		} else if routeDev[p.IP] != l.Attrs().Index {
			r.violation("%s: live pod %s: no route to %s on %s", n.Name, p.Name, p.IP, name)
		}
		if _, err := r.checkPodNS(p); err != nil {
			r.violation("%s: pod %s: %v", n.Name, p.Name, err)
		}
	}
	for name, l := range veths {
		if !want[name] {
			r.violation("%s: veth %s (%s) belongs to no live pod", n.Name, name, l.Attrs().Alias)
		}
	}
	r.log.Info("kernel checked", "node", n.Name, "veths", len(veths))
}
