package integration

// Cloud drift and stale releases with live pods: an operator deletes a live
// pod's ipConfiguration in the portal (the daemon puts it back), or the
// subnet gives it to another NIC meanwhile (the daemon keeps it out of the
// pool and reports it), and a DEL spooled while the daemon was stalled,
// followed by an ADD of the same attachment (the spooled release must not
// free the new assignment). Afterwards, allocating every free address never
// returns a live pod's address, and the pods keep their connectivity.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v9"

	"github.com/vnet-cni/vnet-cni/cloud/sim"
	"github.com/vnet-cni/vnet-cni/cloud/sim/arm"
	"github.com/vnet-cni/vnet-cni/integration/armops"
	"github.com/vnet-cni/vnet-cni/integration/cluster"
	"github.com/vnet-cni/vnet-cni/internal/nsnet"
	"github.com/vnet-cni/vnet-cni/ipamd/api"
	"github.com/vnet-cni/vnet-cni/ipamd/config"
)

// driftConfig keeps the pools small, so that allocating every free address
// is quick, and the resync short.
func driftConfig(_ string, c *config.Config) {
	c.WarmIPTarget = 3
	c.BatchSize = 3
	c.IPAddressCount = 3
	c.MaxIPs = 12
	c.AllocateWait = config.Duration(time.Second)
	c.ResyncInterval = config.Duration(3 * time.Second)
}

// TestE2EDriftRestore deletes a live pod's ipConfiguration through ARM, as
// an operator in the portal does. The daemon's resync finds it gone and puts
// it back on the NIC (a static ipConfiguration), still assigned to the pod;
// it is never handed to another pod, and traffic from the other node reaches
// the pod through the fabric again.
func TestE2EDriftRestore(t *testing.T) {
	e := newE2EEnv(t, 2, driftConfig)
	e.start(t)
	n0, n1 := e.c.Nodes[0], e.c.Nodes[1]
	p := e2eAddPod(t, n0, "drift")
	q := e2eAddPod(t, n0, "bystander")
	r := e2eAddPod(t, n1, "remote")
	op := newE2EOperator(t, e)
	e2eQuiet(t, e, n0)

	op.removeAddress(n0.NIC, p.IP)
	if slices.Contains(e.nicIPs(n0), p.IP) {
		t.Fatalf("%s still on %s after the operator removed it", p.IP, n0.NIC)
	}
	if err := nsnet.Eventually(30*time.Second, func() error {
		if !slices.Contains(e.nicIPs(n0), p.IP) {
			return fmt.Errorf("%s not back on %s", p.IP, n0.NIC)
		}
		if a := e2eList(t, n0)[p.IP]; a.State != "assigned" || a.ContainerID != p.ContainerID || !a.LostSince.IsZero() {
			return fmt.Errorf("%s back on the NIC but the daemon lists %+v", p.IP, a)
		}
		return nil
	}); err != nil {
		t.Fatalf("the daemon did not put the pod's address back: %v", err)
	}
	if m := op.allocationMethod(n0.NIC, p.IP); m != armnetwork.IPAllocationMethodStatic {
		t.Errorf("%s is back on the NIC with allocation %q, want Static (the daemon asked for that address)", p.IP, m)
	}
	if a := e2eAssigned(t, p); a == nil || a.IP != p.IP {
		t.Errorf("CHECK of %s: %+v, want %s", p.Name, a, p.IP)
	}
	metrics := e2eMetrics(t, n0)
	if v := metricValue(t, metrics, `vnetcni_ipamd_address_restores_total{result="ok"}`); v < 1 {
		t.Errorf("restores ok = %v, want at least 1", v)
	}
	if st, err := n0.Status(context.Background()); err != nil || len(st.Lost) != 0 {
		t.Errorf("status after the restore: lost %+v (%v), want none", st.Lost, err)
	}

	live := []*cluster.Pod{p, q, r}
	e2eAllocateAll(t, n0, live)
	e.storeMatchesNIC(t, n0)
	newE2EProbes(t, e).connected(live...)
}

// TestE2EDriftAddressTaken deletes a live pod's ipConfiguration and gives
// the address to another NIC before the daemon can put it back (the daemon
// is stopped meanwhile, so that the order is certain). The daemon cannot
// restore it: the address stays the pod's, out of the pool, and is reported
// in the status, the list and the metrics. When the other NIC lets it go,
// the daemon puts it back; only after the pod's DEL and its cooldown is it
// free again.
func TestE2EDriftAddressTaken(t *testing.T) {
	e := newE2EEnv(t, 2, driftConfig)
	e.start(t)
	n0, n1 := e.c.Nodes[0], e.c.Nodes[1]
	ctx := context.Background()
	p := e2eAddPod(t, n0, "victim")
	q := e2eAddPod(t, n0, "bystander")
	r := e2eAddPod(t, n1, "remote")
	op := newE2EOperator(t, e)
	otherPrimary := e2eHighAddress(t, netip.MustParsePrefix(e.desc.SubnetPrefix))
	e2eQuiet(t, e, n0)

	resume := e2eStall(t, n0)
	op.removeAddress(n0.NIC, p.IP)
	op.putNIC("operator-nic", otherPrimary, p.IP)
	resume()

	var lost api.LostAddress
	if err := nsnet.Eventually(30*time.Second, func() error {
		st, err := n0.Status(ctx)
		if err != nil {
			return err
		}
		if len(st.Lost) != 1 || st.Lost[0].IP != p.IP || st.Lost[0].RestoreError == "" {
			return fmt.Errorf("status lists lost addresses %+v, want %s with the reason it cannot be restored", st.Lost, p.IP)
		}
		lost = st.Lost[0]
		return nil
	}); err != nil {
		t.Fatalf("the lost address is not reported: %v", err)
	}
	t.Logf("reported: %+v", lost)
	if lost.ContainerID != p.ContainerID || lost.State != "assigned" || !strings.Contains(lost.RestoreError, arm.CodeAddressIsAllocated) {
		t.Errorf("lost address %+v, want assigned to %s and the cloud's %s", lost, p.ContainerID, arm.CodeAddressIsAllocated)
	}
	if a := e2eList(t, n0)[p.IP]; a.State != "assigned" || a.ContainerID != p.ContainerID || a.LostSince.IsZero() {
		t.Errorf("the daemon lists %+v for %s, want assigned to %s and lost", a, p.IP, p.ContainerID)
	}
	if a := e2eAssigned(t, p); a == nil || a.IP != p.IP {
		t.Errorf("CHECK of %s: %+v, want %s", p.Name, a, p.IP)
	}
	metrics := e2eMetrics(t, n0)
	if v := metricValue(t, metrics, `vnetcni_ipamd_lost_addresses{state="assigned"}`); v != 1 {
		t.Errorf("lost addresses metric = %v, want 1", v)
	}
	if v := metricValue(t, metrics, `vnetcni_ipamd_address_restores_total{result="address_in_use"}`); v < 1 {
		t.Errorf("refused restores = %v, want at least 1", v)
	}
	if log, err := os.ReadFile(n0.LogPath); err != nil || !strings.Contains(string(log), p.IP.String()) || !strings.Contains(string(log), "cannot put back") {
		t.Errorf("the daemon's log does not report the address it cannot put back (%v)", err)
	}

	live := []*cluster.Pod{p, q, r}
	e2eAllocateAll(t, n0, live)
	// The pod's own node still reaches it, and it reaches the internet
	// (SNAT to the node's address); the fabric delivers its address to the
	// other NIC now, so nothing else can.
	probes := newE2EProbes(t, e)
	e2eExpect(t, "node0 -> "+p.Name, n0.NSPath, probes.pod(p), p.Name, e2eAddr(n0.PrimaryIP))
	e2eExpect(t, p.Name+" -> internet", p.NSPath, probes.internet, "internet", e2eAddr(n0.PrimaryIP))
	probes.connected(q, r)

	// The other NIC lets the address go: the daemon puts it back.
	op.putNIC("operator-nic", otherPrimary)
	if err := nsnet.Eventually(30*time.Second, func() error {
		if !slices.Contains(e.nicIPs(n0), p.IP) {
			return fmt.Errorf("%s not back on %s", p.IP, n0.NIC)
		}
		st, err := n0.Status(ctx)
		if err != nil {
			return err
		}
		if len(st.Lost) != 0 {
			return fmt.Errorf("still reported lost: %+v", st.Lost)
		}
		return nil
	}); err != nil {
		t.Fatalf("the daemon did not put the address back once it was free: %v", err)
	}
	probes.connected(live...)

	// Only the owner's release (and its cooldown) returns it to the pool.
	if err := n0.Del(ctx, p); err != nil {
		t.Fatal(err)
	}
	if err := nsnet.Eventually(15*time.Second, func() error {
		if st := e2eList(t, n0)[p.IP].State; st != "free" {
			return fmt.Errorf("%s is %q", p.IP, st)
		}
		return nil
	}); err != nil {
		t.Errorf("the released address did not return to the pool: %v", err)
	}
	e.storeMatchesNIC(t, n0)
}

// TestE2EStaleSpooledRelease stalls the daemon (SIGSTOP) so that a DEL
// spools its release, then ADDs the same attachment again once the daemon
// runs: the spooled release, drained afterwards, belongs to the previous
// assignment and must not free the new one. The pool worker is held in a
// throttled cloud call meanwhile (a 429 storm with a long Retry-After), as
// a busy cloud holds it, so that the spool is drained after the new ADD.
func TestE2EStaleSpooledRelease(t *testing.T) {
	const cooldown = 2 * time.Second
	e := newE2EEnv(t, 1, func(node string, c *config.Config) {
		driftConfig(node, c)
		c.Cooldown = config.Duration(cooldown)
	})
	e.start(t)
	n := e.c.Nodes[0]
	ctx := context.Background()
	p := e2eAddPod(t, n, "respawn")
	q := e2eAddPod(t, n, "bystander")
	first := p.IP

	e.sim.ARM().ResetStats()
	e.sim.ARM().SetFaults(arm.Faults{Storm: &arm.Storm{Duration: arm.Duration(time.Minute), RetryAfterSeconds: 10}})
	t.Cleanup(func() { e.sim.ARM().SetFaults(arm.Faults{}) })
	if err := nsnet.Eventually(15*time.Second, func() error {
		if e.sim.ARM().Stats().Throttled == 0 {
			return errors.New("no cloud call throttled yet")
		}
		return nil
	}); err != nil {
		t.Fatalf("the pool worker did not meet the storm: %v", err)
	}
	throttled := time.Now()

	resume := e2eStall(t, n)
	if err := n.Del(ctx, p); err != nil {
		t.Fatalf("DEL with the daemon stalled: %v", err)
	}
	spooled, err := os.ReadDir(n.Config.ReleaseSpool)
	if err != nil || len(spooled) != 1 {
		t.Fatalf("release spool after DEL: %v (%v), want one file", spooled, err)
	}
	resume()
	if _, err := n.Add(ctx, p); err != nil {
		t.Fatalf("ADD of the same attachment again: %v", err)
	}
	if p.IP != first {
		t.Errorf("the ADD again got %s, want %s back", p.IP, first)
	}
	if d := time.Since(throttled); d > 8*time.Second {
		t.Fatalf("the ADD again ended %s after the storm met the worker; the spool may have been drained before it", d)
	}
	e.sim.ARM().SetFaults(arm.Faults{})

	if err := nsnet.Eventually(45*time.Second, func() error {
		left, err := os.ReadDir(n.Config.ReleaseSpool)
		if err != nil {
			return err
		}
		if len(left) > 0 {
			return fmt.Errorf("%d spooled releases left", len(left))
		}
		return nil
	}); err != nil {
		t.Fatalf("the spool was not drained: %v", err)
	}
	// Long enough for a wrongly released address to cool down and be free.
	time.Sleep(cooldown + time.Second)
	if a := e2eList(t, n)[p.IP]; a.State != "assigned" || a.ContainerID != p.ContainerID {
		t.Errorf("after the drain the daemon lists %+v for %s, want it assigned to %s", a, p.IP, p.ContainerID)
	}
	if a := e2eAssigned(t, p); a == nil || a.IP != p.IP {
		t.Errorf("CHECK of %s after the drain: %+v, want %s", p.Name, a, p.IP)
	}
	if v := metricValue(t, e2eMetrics(t, n), `vnetcni_ipamd_superseded_releases_total`); v < 1 {
		t.Errorf("superseded releases = %v, want at least 1", v)
	}
	live := []*cluster.Pod{p, q}
	e2eAllocateAll(t, n, live)
	newE2EProbes(t, e).connected(live...)
}

// e2eAllocateAll takes every address the daemon of n hands out (refills
// included, up to its maxIPs) for attachments of no pod, and fails the test
// if one of them is a live pod's address.
func e2eAllocateAll(t *testing.T, n *cluster.Node, live []*cluster.Pod) {
	t.Helper()
	held := map[netip.Addr]string{}
	for _, p := range live {
		held[p.IP] = p.Name
	}
	got := 0
	for i := range 2 * n.Config.MaxIPs {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		resp, err := n.Client().Allocate(ctx, api.AllocateRequest{ContainerID: fmt.Sprintf("drain%04d", i), IfName: "eth0"})
		cancel()
		if api.IsTryAgain(err) {
			t.Logf("%s: allocated %d free addresses until %v", n.Name, got, err)
			return
		}
		if err != nil {
			t.Fatalf("allocate %d on %s: %v", i, n.Name, err)
		}
		got++
		if name, ok := held[resp.Assignment.IP]; ok {
			t.Errorf("%s handed out %s, the address of live pod %s", n.Name, resp.Assignment.IP, name)
		}
	}
	t.Fatalf("%s handed out %d addresses, more than its maxIPs", n.Name, got)
}

// e2eQuiet waits until the pool of n is full and matches its NIC, so that
// no refill is in flight when a test changes the NIC behind its back.
func e2eQuiet(t *testing.T, e *e2eEnv, n *cluster.Node) {
	t.Helper()
	if err := nsnet.Eventually(15*time.Second, func() error {
		st, err := n.Status(context.Background())
		if err != nil {
			return err
		}
		if st.Pool.Free < n.Config.WarmIPTarget {
			return fmt.Errorf("%d free, warm target %d", st.Pool.Free, n.Config.WarmIPTarget)
		}
		return nil
	}); err != nil {
		t.Fatalf("%s: the pool did not fill: %v", n.Name, err)
	}
	e.storeMatchesNIC(t, n)
}

// e2eProbes are a test's probe servers, each started once: the internet
// namespace's and each pod's.
type e2eProbes struct {
	t        *testing.T
	e        *e2eEnv
	internet netip.AddrPort
	pods     map[*cluster.Pod]netip.AddrPort
}

func newE2EProbes(t *testing.T, e *e2eEnv) *e2eProbes {
	t.Helper()
	internet := e2eServe(t, e.desc.InternetNetns, "internet", netip.AddrPortFrom(e2eAddr(e.desc.InternetHost), 80))
	return &e2eProbes{t: t, e: e, internet: internet, pods: map[*cluster.Pod]netip.AddrPort{}}
}

// pod returns the address of the pod's probe server.
func (pr *e2eProbes) pod(p *cluster.Pod) netip.AddrPort {
	pr.t.Helper()
	if ap, ok := pr.pods[p]; ok {
		return ap
	}
	ap := e2eServe(pr.t, p.NSPath, p.Name, netip.AddrPortFrom(p.IP, 80))
	pr.pods[p] = ap
	return ap
}

// connected checks every pod's connectivity through the fabric: from the
// other node (or its own when alone) and to the internet.
func (pr *e2eProbes) connected(pods ...*cluster.Pod) {
	pr.t.Helper()
	for _, p := range pods {
		from := p.Node
		for _, n := range pr.e.c.Nodes {
			if n != p.Node {
				from = n
				break
			}
		}
		e2eExpect(pr.t, from.Name+" -> "+p.Name, from.NSPath, pr.pod(p), p.Name, e2eAddr(from.PrimaryIP))
		e2eExpect(pr.t, p.Name+" -> internet", p.NSPath, pr.internet, "internet", e2eAddr(p.Node.PrimaryIP))
	}
}

// e2eStall stops the node's daemon with SIGSTOP and returns the function
// that resumes it, which the test's cleanup also calls.
func e2eStall(t *testing.T, n *cluster.Node) func() {
	t.Helper()
	pid := n.PID()
	if pid <= 0 {
		t.Fatalf("vnet-ipamd of %s is not running", n.Name)
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := true
	resume := func() {
		if stopped {
			stopped = false
			if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
				t.Errorf("resume vnet-ipamd: %v", err)
			}
		}
	}
	t.Cleanup(resume)
	return resume
}

// e2eMetrics reads the daemon's metrics on the node's loopback.
func e2eMetrics(t *testing.T, n *cluster.Node) string {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: nsnet.DialContextIn(n.NSPath)}}
	resp, err := client.Get("http://" + n.Config.MetricsAddr.String() + "/metrics")
	if err != nil {
		t.Fatalf("metrics of %s: %v", n.Name, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// e2eHighAddress is an address near the top of the subnet, far from the
// low addresses the daemons' pools take.
func e2eHighAddress(t *testing.T, subnet netip.Prefix) netip.Addr {
	t.Helper()
	a := subnet.Masked().Addr().As4()
	host := uint32(1)<<(32-subnet.Bits()) - 1
	v := (uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])) | host
	v -= 20
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// e2eOperator changes network interfaces through the ARM API, as an
// operator does in the portal or with the CLI: outside vnet-ipamd.
type e2eOperator struct {
	t    *testing.T
	desc sim.Description
	nics *armnetwork.InterfacesClient
}

func newE2EOperator(t *testing.T, e *e2eEnv) *e2eOperator {
	t.Helper()
	nics, err := armops.Interfaces(e.desc, e.sim.ARM())
	if err != nil {
		t.Fatal(err)
	}
	return &e2eOperator{t: t, desc: e.desc, nics: nics}
}

func (o *e2eOperator) get(name string) (armnetwork.Interface, string) {
	o.t.Helper()
	resp, err := o.nics.Get(context.Background(), o.desc.ResourceGroup, name, nil)
	if err != nil {
		o.t.Fatalf("operator: get nic %s: %v", name, err)
	}
	return resp.Interface, *resp.Etag
}

// put writes the NIC (with If-Match when etag is set) and waits until the
// change is committed.
func (o *e2eOperator) put(name string, nic armnetwork.Interface, etag string) {
	o.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	putCtx := ctx
	if etag != "" {
		putCtx = policy.WithHTTPHeader(ctx, http.Header{"If-Match": []string{etag}})
	}
	poller, err := o.nics.BeginCreateOrUpdate(putCtx, o.desc.ResourceGroup, name, nic, nil)
	if err == nil {
		_, err = poller.PollUntilDone(ctx, &runtime.PollUntilDoneOptions{Frequency: 50 * time.Millisecond})
	}
	if err != nil {
		o.t.Fatalf("operator: put nic %s: %v", name, err)
	}
}

// removeAddress deletes the ipConfiguration holding ip from the NIC.
func (o *e2eOperator) removeAddress(name string, ip netip.Addr) {
	o.t.Helper()
	nic, etag := o.get(name)
	keep := nic.Properties.IPConfigurations[:0:0]
	for _, c := range nic.Properties.IPConfigurations {
		if *c.Properties.PrivateIPAddress != ip.String() {
			keep = append(keep, c)
		}
	}
	if len(keep) == len(nic.Properties.IPConfigurations) {
		o.t.Fatalf("operator: %s is not on nic %s", ip, name)
	}
	nic.Properties.IPConfigurations = keep
	o.put(name, nic, etag)
}

// putNIC creates or replaces a NIC without VM whose ipConfigurations hold
// primary and secondaries as static addresses.
func (o *e2eOperator) putNIC(name string, primary netip.Addr, secondaries ...netip.Addr) {
	o.t.Helper()
	subnet := fmt.Sprintf("/subscriptions/%s/resourceGroups/%s/providers/Microsoft.Network/virtualNetworks/%s/subnets/%s",
		o.desc.SubscriptionID, o.desc.ResourceGroup, o.desc.VNet, o.desc.Subnet)
	config := func(name string, ip netip.Addr, isPrimary bool) *armnetwork.InterfaceIPConfiguration {
		return &armnetwork.InterfaceIPConfiguration{
			Name: to.Ptr(name),
			Properties: &armnetwork.InterfaceIPConfigurationPropertiesFormat{
				Primary:                   to.Ptr(isPrimary),
				PrivateIPAllocationMethod: to.Ptr(armnetwork.IPAllocationMethodStatic),
				PrivateIPAddress:          to.Ptr(ip.String()),
				Subnet:                    &armnetwork.Subnet{ID: to.Ptr(subnet)},
			},
		}
	}
	nic := armnetwork.Interface{
		Location:   to.Ptr(o.desc.Location),
		Properties: &armnetwork.InterfacePropertiesFormat{IPConfigurations: []*armnetwork.InterfaceIPConfiguration{config("ipconfig1", primary, true)}},
	}
	for i, ip := range secondaries {
		nic.Properties.IPConfigurations = append(nic.Properties.IPConfigurations, config(fmt.Sprintf("taken%d", i), ip, false))
	}
	o.put(name, nic, "")
}

// allocationMethod is how the NIC's ipConfiguration holding ip got it.
func (o *e2eOperator) allocationMethod(name string, ip netip.Addr) armnetwork.IPAllocationMethod {
	o.t.Helper()
	nic, _ := o.get(name)
	for _, c := range nic.Properties.IPConfigurations {
		if *c.Properties.PrivateIPAddress == ip.String() {
			return *c.Properties.PrivateIPAllocationMethod
		}
	}
	return ""
}
