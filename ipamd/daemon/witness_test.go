package daemon

import (
	"context"
	"errors"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/vnet-cni/vnet-cni/cloud/azure"
	"github.com/vnet-cni/vnet-cni/cloud/sim"
	"github.com/vnet-cni/vnet-cni/cloud/sim/arm"
	"github.com/vnet-cni/vnet-cni/ipamd/api"
	"github.com/vnet-cni/vnet-cni/ipamd/store"
)

// fakeWitness is a datapath the test sets: which pods hold which address.
// The real one (bridge/linux over the node's pod veths) is exercised by the
// end-to-end tests in integration/.
type fakeWitness struct {
	mu      sync.Mutex
	nic     string
	present bool
	pods    map[netip.Addr]Witnessed
	err     error
	// afterRead, when set, runs once after a read has taken its state and
	// before it returns: what changes while the daemon acts on the read.
	afterRead func()
}

func newFakeWitness() *fakeWitness { return &fakeWitness{pods: map[netip.Addr]Witnessed{}} }

func (f *fakeWitness) setNIC(mac string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nic = strings.ToLower(strings.NewReplacer(":", "", "-", "").Replace(mac))
}

func (f *fakeWitness) Read(ctx context.Context, _ []string) (WitnessState, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return WitnessState{}, f.err
	}
	pods := slices.SortedFunc(maps.Values(f.pods), func(a, b Witnessed) int { return a.IP.Compare(b.IP) })
	st := WitnessState{Attachments: pods, Present: f.present || len(pods) > 0, MACs: []string{"000000000000", f.nic}}
	after := f.afterRead
	f.afterRead = nil
	f.mu.Unlock()
	if after != nil {
		after()
	}
	f.mu.Lock()
	return st, ctx.Err()
}

func (f *fakeWitness) Key(containerID, ifName string) string {
	return "veth:" + containerID + "/" + ifName
}

// pod records a live pod (an empty id: a veth that does not name its attachment).
func (f *fakeWitness) pod(ip netip.Addr, id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	w := Witnessed{Key: f.Key(id, "eth0"), IP: ip, ContainerID: id, IfName: "eth0"}
	if id == "" {
		w = Witnessed{Key: "veth:old-" + ip.String(), IP: ip}
	}
	f.pods[ip] = w
}

func (f *fakeWitness) gone(ip netip.Addr) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.pods, ip)
}

func (f *fakeWitness) fail(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.err = err
}

// witnessOpts are daemon options with the witness and short timings.
func witnessOpts(w *fakeWitness) Options {
	return Options{
		Targets: targets(3, 0, 12, 3, time.Hour), InitialBatch: 6,
		Cooldown: 300 * time.Millisecond, AllocateWait: 300 * time.Millisecond,
		RecoveryGrace: 1500 * time.Millisecond, Witness: w,
	}
}

// drain allocates until the pool is empty at its ceiling and returns what
// it got.
func (h *harness) drain(tag string) []netip.Addr {
	h.t.Helper()
	var got []netip.Addr
	for i := 0; i < 100; i++ {
		a, err := h.allocate(tag + string(rune('a'+i)))
		if err == nil {
			got = append(got, a.IP)
			continue
		}
		if !api.IsTryAgain(err) {
			h.t.Fatalf("drain: %v", err)
		}
		if st := h.status(); st.Pool.Free == 0 && st.Pool.Total >= st.Pool.Max {
			return got
		}
	}
	h.t.Fatal("drain: the pool never ran dry")
	return nil
}

func (h *harness) storeRecord(ip netip.Addr) store.Record {
	h.t.Helper()
	for _, r := range h.st.List() {
		if r.IP == ip {
			return r
		}
	}
	return store.Record{}
}

func synced(s api.StatusResponse) bool { return s.Subnet.IsValid() }

// TestRecoveryAfterStoreLoss deletes the store of a node with live pods and
// an ADD in flight (its address assigned, its veth not recording it yet):
// the live pods' assignments are rebuilt, every other address the node had
// is quarantined for the grace period (not ready meanwhile), the ADD in
// flight gets its address when its veth appears, and no allocation ever
// returns an address a pod holds.
func TestRecoveryAfterStoreLoss(t *testing.T) {
	w := newFakeWitness()
	h := newHarness(t, sim.Options{}, witnessOpts(w))
	h.waitFor("ready", 10*time.Second, func(s api.StatusResponse) bool { return s.Ready })
	live := map[netip.Addr]string{}
	for _, id := range []string{"p1", "p2", "p3"} {
		a, err := h.allocate(id)
		if err != nil {
			t.Fatal(err)
		}
		w.pod(a.IP, id)
		live[a.IP] = id
	}
	inflight, err := h.allocate("inflight")
	if err != nil {
		t.Fatal(err)
	}
	h.stop()
	if err := os.RemoveAll(h.storeDir); err != nil {
		t.Fatal(err)
	}
	h.start(h.storeDir)

	st := h.waitFor("synced", 10*time.Second, synced)
	if st.Ready || !strings.Contains(st.Reason, "quarantined") || st.Pool.Quarantined == 0 {
		t.Errorf("status during the recovery: %+v, want not ready naming the quarantine", st)
	}
	handed := h.drain("during")
	w.pod(inflight.IP, "inflight") // the ADD in flight records its pod
	live[inflight.IP] = "inflight"
	h.waitFor("ready after the grace", 10*time.Second, func(s api.StatusResponse) bool { return s.Ready })
	handed = append(handed, h.drain("after")...)
	for _, ip := range handed {
		if id, ok := live[ip]; ok {
			t.Errorf("%s of live pod %s handed out", ip, id)
		}
	}
	for ip, id := range live {
		if r := h.storeRecord(ip); r.State != store.StateAssigned || r.Owner.ContainerID != id {
			t.Errorf("%s of %s: %+v, want assigned to it", ip, id, r)
		}
	}
	if _, ok := h.st.Recovering(); ok {
		t.Error("still recovering after the grace")
	}
	if got := testutil.ToFloat64(h.d.metrics.recoveries.WithLabelValues(store.RecoveryLost)); got != 1 {
		t.Errorf("recoveries{lost} = %v, want 1", got)
	}
	if got := testutil.ToFloat64(h.d.metrics.witnessRebuilt); got != 4 {
		t.Errorf("witness_rebuilt_total = %v, want 4 (three pods, then the ADD in flight)", got)
	}
}

// TestRecoveryOfStaleAssignments: a damaged store salvaged to an older
// state has assignments that later changes, lost with the damage, undid:
// p1 and p2 were deleted and p1's address went to pod c. The recovery gives
// the live veth the address (no conflict), keeps p2's address out of the
// pool for the grace while its veth may still appear (as q's does, an ADD
// that was in flight), and releases it after the grace, while q keeps its
// address.
func TestRecoveryOfStaleAssignments(t *testing.T) {
	w := newFakeWitness()
	h := newHarness(t, sim.Options{}, witnessOpts(w))
	h.waitFor("ready", 10*time.Second, func(s api.StatusResponse) bool { return s.Ready })
	ip := map[string]netip.Addr{}
	for _, id := range []string{"p1", "p2", "p3", "q"} {
		a, err := h.allocate(id)
		if err != nil {
			t.Fatal(err)
		}
		ip[id] = a.IP
	}
	for _, id := range []string{"p1", "p2", "p3"} {
		w.pod(ip[id], id)
	}
	h.stop()
	journal := filepath.Join(h.storeDir, "journal")
	before, err := os.ReadFile(journal)
	if err != nil {
		t.Fatal(err)
	}
	// The changes the damage takes: p1 and p2 deleted.
	st, err := store.Open(h.storeDir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"p1", "p2"} {
		if _, _, err := st.Release(store.Attachment{ContainerID: id, IfName: "eth0"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	after, err := os.ReadFile(journal)
	if err != nil {
		t.Fatal(err)
	}
	first := 0
	for first < min(len(before), len(after)) && before[first] == after[first] {
		first++
	}
	if first+40 >= len(after) {
		t.Fatalf("no new journal record after offset %d of %d", first, len(after))
	}
	after[first+40] ^= 0xff // inside the first release's record
	if err := os.WriteFile(journal, after, 0o600); err != nil {
		t.Fatal(err)
	}
	w.gone(ip["p1"])
	w.gone(ip["p2"])
	w.pod(ip["p1"], "c")

	h.start(h.storeDir)
	if m, ok := h.st.Recovering(); !ok || m.Kind != store.RecoveryDamaged {
		t.Fatalf("Recovering() = %+v, %v; want damaged", m, ok)
	}
	h.waitFor("synced", 10*time.Second, synced)
	if r := h.storeRecord(ip["p1"]); r.State != store.StateAssigned || r.Owner.ContainerID != "c" {
		t.Errorf("%s, held by c's veth: %+v, want assigned to c", ip["p1"], r)
	}
	if n := h.d.witnessConflictCount(); n != 0 {
		t.Errorf("%d witness conflicts, want 0 (the damaged store's assignment is superseded)", n)
	}
	if r := h.storeRecord(ip["p2"]); r.State != store.StateAssigned || r.Owner.ContainerID != "p2" {
		t.Errorf("%s during the grace: %+v, want still assigned to p2", ip["p2"], r)
	}
	w.pod(ip["q"], "q") // the ADD in flight makes its veth
	h.waitFor("ready after the grace", 10*time.Second, func(s api.StatusResponse) bool { return s.Ready })
	if err := waitUntil(5*time.Second, func() bool { return h.storeRecord(ip["p2"]).State != store.StateAssigned }); err != nil {
		t.Errorf("%s of p2, which has no veth, not released after the grace: %+v", ip["p2"], h.storeRecord(ip["p2"]))
	}
	time.Sleep(2 * h.opts.Cooldown)
	freed := false
	for _, got := range h.drain("after") {
		switch got {
		case ip["p1"], ip["p3"], ip["q"]:
			t.Errorf("%s of a live pod handed out", got)
		case ip["p2"]:
			freed = true
		}
	}
	if !freed {
		t.Errorf("%s of p2 never back in the pool", ip["p2"])
	}
	for _, id := range []string{"p3", "q"} {
		if r := h.storeRecord(ip[id]); r.State != store.StateAssigned || r.Owner.ContainerID != id {
			t.Errorf("%s of %s: %+v, want assigned to it", ip[id], id, r)
		}
	}
	if got := testutil.ToFloat64(h.d.metrics.recoveryReleased); got != 2 {
		t.Errorf("recovery_released_total = %v, want 2 (p1 superseded, p2 released)", got)
	}
}

// TestWitnessReadBeforeDEL: a pod deleted while the daemon reads the
// witness (its veth in the read, its release right after) is not given its
// address back by that read.
func TestWitnessReadBeforeDEL(t *testing.T) {
	w := newFakeWitness()
	h := newHarness(t, sim.Options{}, witnessOpts(w))
	h.waitFor("ready", 10*time.Second, func(s api.StatusResponse) bool { return s.Ready })
	a, err := h.allocate("p1")
	if err != nil {
		t.Fatal(err)
	}
	w.pod(a.IP, "p1")
	done := make(chan error, 1)
	w.mu.Lock()
	w.afterRead = func() {
		w.gone(a.IP) // the DEL: the veth goes, then the address
		_, err := h.client.Release(context.Background(), api.ReleaseRequest{ContainerID: "p1", IfName: "eth0"})
		done <- err
	}
	w.mu.Unlock()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the daemon never read the witness")
	}
	// Two more resyncs: the claim of the stale read would be made by now.
	time.Sleep(2 * h.opts.ResyncInterval)
	if r := h.storeRecord(a.IP); r.State == store.StateAssigned {
		t.Errorf("%s of the deleted pod: %+v, want released", a.IP, r)
	}
	if got := testutil.ToFloat64(h.d.metrics.witnessRebuilt); got != 0 {
		t.Errorf("witness_rebuilt_total = %v, want 0", got)
	}
}

// TestFreshBootIsQuiet: an empty store on a node without vnet-cni's
// datapath is a new node or boot; the NIC's addresses are free at once and
// nothing is recovered. With the datapath there (even without a pod), the
// same empty store is a lost one.
func TestFreshBootIsQuiet(t *testing.T) {
	w := newFakeWitness()
	h := newHarness(t, sim.Options{}, witnessOpts(w))
	h.waitFor("ready", 10*time.Second, func(s api.StatusResponse) bool { return s.Ready })
	onNIC := len(h.nicSecondaries())

	// A reboot: the store on tmpfs is gone, and so is the datapath.
	h.stop()
	h.start(t.TempDir())
	st := h.waitFor("ready", 10*time.Second, func(s api.StatusResponse) bool { return s.Ready })
	if st.Pool.Free != onNIC || st.Pool.Quarantined != 0 {
		t.Errorf("pool after a fresh boot %+v, want the NIC's %d addresses free", st.Pool, onNIC)
	}
	if _, ok := h.st.Recovering(); ok {
		t.Error("recovering after a fresh boot")
	}

	// The store deleted while vnet-cni's bridge exists.
	w.mu.Lock()
	w.present = true
	w.mu.Unlock()
	h.stop()
	h.start(t.TempDir())
	st = h.waitFor("synced", 10*time.Second, synced)
	if st.Ready || st.Pool.Quarantined != onNIC {
		t.Errorf("pool after losing the store %+v, want not ready and the NIC's %d addresses quarantined", st.Pool, onNIC)
	}
	h.waitFor("ready after the grace", 10*time.Second, func(s api.StatusResponse) bool { return s.Ready && s.Pool.Free >= onNIC })
}

// TestRecoveryResumesAfterRestart: a daemon that dies before its recovery
// reached the cloud finds the recovery again at its next start.
func TestRecoveryResumesAfterRestart(t *testing.T) {
	w := newFakeWitness()
	h := newHarness(t, sim.Options{}, witnessOpts(w))
	h.waitFor("ready", 10*time.Second, func(s api.StatusResponse) bool { return s.Ready })
	a, err := h.allocate("p1")
	if err != nil {
		t.Fatal(err)
	}
	w.pod(a.IP, "p1")
	h.stop()
	// Garbage after the last record: a damaged journal.
	f, err := os.OpenFile(filepath.Join(h.storeDir, "journal"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("not a record"), 0); err != nil {
		t.Fatal(err)
	}
	_ = f.Close()
	h.sim.ARM().SetFaults(arm.Faults{Storm: &arm.Storm{Duration: arm.Duration(time.Hour), RetryAfterSeconds: 1}})
	h.start(h.storeDir)
	time.Sleep(300 * time.Millisecond)
	if m, ok := h.st.Recovering(); !ok || m.Kind != store.RecoveryDamaged {
		t.Fatalf("Recovering() = %+v, %v; want damaged", m, ok)
	}
	if _, err := h.allocate("early"); !api.IsNotReady(err) {
		t.Errorf("allocate before the recovery's sync: %v, want NotReady", err)
	}
	h.stop()
	h.sim.ARM().SetFaults(arm.Faults{})
	h.start(h.storeDir)
	st := h.waitFor("synced", 10*time.Second, synced)
	if st.Ready || st.Pool.Quarantined == 0 {
		t.Errorf("status after the restart %+v, want the recovery's quarantine", st)
	}
	if r := h.storeRecord(a.IP); r.State != store.StateAssigned || r.Owner.ContainerID != "p1" {
		t.Errorf("%s: %+v, want assigned to p1", a.IP, r)
	}
	if got := testutil.ToFloat64(h.d.metrics.recoveries.WithLabelValues(store.RecoveryDamaged)); got != 1 {
		t.Errorf("recoveries{damaged} = %v, want 1", got)
	}
}

// TestWitnessGuardsPromotion: a live pod's address released behind its
// back (a GC that left it out) is claimed back before its cooldown ends
// instead of becoming free.
func TestWitnessGuardsPromotion(t *testing.T) {
	w := newFakeWitness()
	opts := witnessOpts(w)
	// No resync in the way: only the check before freeing can see the pod.
	opts.ResyncInterval = time.Hour
	h := newHarness(t, sim.Options{}, opts)
	h.waitFor("ready", 10*time.Second, func(s api.StatusResponse) bool { return s.Ready })
	a, err := h.allocate("p1")
	if err != nil {
		t.Fatal(err)
	}
	w.pod(a.IP, "p1")
	if _, err := h.client.GC(context.Background(), api.GCRequest{Valid: []api.Attachment{}}); err != nil {
		t.Fatal(err)
	}
	if r := h.storeRecord(a.IP); r.State != store.StateCooling {
		t.Fatalf("%s after GC: %s, want cooling", a.IP, r.State)
	}
	time.Sleep(2 * h.opts.Cooldown)
	for _, ip := range h.drain("x") {
		if ip == a.IP {
			t.Errorf("%s of the live pod handed out after its cooldown", ip)
		}
	}
	if r := h.storeRecord(a.IP); r.State != store.StateAssigned || r.Owner.ContainerID != "p1" {
		t.Errorf("%s: %+v, want assigned to p1 again", a.IP, r)
	}
	// Once the pod is gone, its DEL frees it as usual.
	w.gone(a.IP)
	if _, err := h.client.Release(context.Background(), api.ReleaseRequest{ContainerID: "p1", IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	if err := waitUntil(5*time.Second, func() bool { return h.storeRecord(a.IP).State == store.StateFree }); err != nil {
		t.Errorf("%s after the pod's DEL: %s, want free after the cooldown", a.IP, h.storeRecord(a.IP).State)
	}
}

// TestPromotionWaitsForWitness: while the witness cannot be read, nothing
// becomes free; once it can, the cooled address does.
func TestPromotionWaitsForWitness(t *testing.T) {
	w := newFakeWitness()
	opts := witnessOpts(w)
	opts.ResyncInterval = time.Hour
	h := newHarness(t, sim.Options{}, opts)
	h.waitFor("ready", 10*time.Second, func(s api.StatusResponse) bool { return s.Ready })
	a, err := h.allocate("p1")
	if err != nil {
		t.Fatal(err)
	}
	w.fail(errors.New("netlink: dump interrupted"))
	if _, err := h.client.Release(context.Background(), api.ReleaseRequest{ContainerID: "p1", IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(4 * h.opts.Cooldown)
	if r := h.storeRecord(a.IP); r.State != store.StateCooling {
		t.Errorf("%s with the witness unreadable: %s, want still cooling", a.IP, r.State)
	}
	w.fail(nil)
	if err := waitUntil(5*time.Second, func() bool { return h.storeRecord(a.IP).State == store.StateFree }); err != nil {
		t.Errorf("%s not free once the witness reads again: %s", a.IP, h.storeRecord(a.IP).State)
	}
}

// TestWitnessConflict: the store has a live pod's address assigned to
// another attachment. It stays assigned (out of the pool), the conflict is
// counted, and when the other attachment releases it, the live pod gets it.
func TestWitnessConflict(t *testing.T) {
	w := newFakeWitness()
	h := newHarness(t, sim.Options{}, witnessOpts(w))
	h.waitFor("ready", 10*time.Second, func(s api.StatusResponse) bool { return s.Ready })
	a, err := h.allocate("holder")
	if err != nil {
		t.Fatal(err)
	}
	w.pod(a.IP, "live")
	if err := waitUntil(5*time.Second, func() bool { return h.d.witnessConflictCount() == 1 }); err != nil {
		t.Fatalf("conflict not counted: %v", err)
	}
	if r := h.storeRecord(a.IP); r.Owner.ContainerID != "holder" {
		t.Errorf("%s: %+v, want still assigned to holder", a.IP, r)
	}
	if _, err := h.client.Release(context.Background(), api.ReleaseRequest{ContainerID: "holder", IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * h.opts.Cooldown)
	for _, ip := range h.drain("x") {
		if ip == a.IP {
			t.Errorf("%s of the live pod handed out", ip)
		}
	}
	if r := h.storeRecord(a.IP); r.State != store.StateAssigned || r.Owner.ContainerID != "live" {
		t.Errorf("%s: %+v, want assigned to the live pod", a.IP, r)
	}
	if err := waitUntil(5*time.Second, func() bool { return h.d.witnessConflictCount() == 0 }); err != nil {
		t.Errorf("conflict still counted: %v", err)
	}
}

// TestWitnessWithoutOwner: a veth that records its address but not its
// attachment (an earlier plugin's) holds the address: quarantined while it
// exists, free after the grace once it is gone.
func TestWitnessWithoutOwner(t *testing.T) {
	w := newFakeWitness()
	h := newHarness(t, sim.Options{}, witnessOpts(w))
	h.waitFor("ready", 10*time.Second, func(s api.StatusResponse) bool { return s.Ready })
	var held netip.Addr
	for _, r := range h.st.List() {
		if r.State == store.StateFree {
			held = r.IP
			break
		}
	}
	w.pod(held, "")
	if err := waitUntil(5*time.Second, func() bool { return h.storeRecord(held).State == store.StateQuarantined }); err != nil {
		t.Fatalf("%s not held: %v", held, err)
	}
	// Held beyond one grace period while the veth is there.
	time.Sleep(2 * h.opts.RecoveryGrace)
	for _, ip := range h.drain("x") {
		if ip == held {
			t.Errorf("%s, held by a live veth, handed out", ip)
		}
	}
	if st := h.status(); !st.Ready {
		t.Errorf("a held address makes the daemon not ready: %s", st.Reason)
	}
	w.gone(held)
	if err := waitUntil(5*time.Second, func() bool { return h.storeRecord(held).State != store.StateQuarantined }); err != nil {
		t.Errorf("%s still held after its veth is gone: %v", held, err)
	}
}

// TestWitnessRequired: a witness that cannot be read stops the daemon from
// starting, and one that is not the node's namespace stops it from syncing.
func TestWitnessRequired(t *testing.T) {
	w := newFakeWitness()
	h := newHarness(t, sim.Options{}, witnessOpts(w))
	h.waitFor("ready", 10*time.Second, func(s api.StatusResponse) bool { return s.Ready })
	h.stop()

	w.fail(errors.New("netlink: operation not permitted"))
	st, err := store.Open(h.storeDir, store.Options{Salvage: true})
	if err != nil {
		t.Fatal(err)
	}
	_, err = New(st, func(ctx context.Context) (Cloud, error) { return azure.New(ctx, h.cfg) }, h.opts)
	if err == nil || !strings.Contains(err.Error(), "datapath witness") {
		t.Errorf("New with an unreadable witness: %v, want an error naming the witness", err)
	}
	_ = st.Close()

	w.fail(nil)
	w.setNIC("00:11:22:33:44:55")
	h.start(t.TempDir())
	time.Sleep(500 * time.Millisecond)
	if st := h.status(); st.Ready || !strings.Contains(st.Reason, "not the node's network namespace") {
		t.Errorf("status with a witness of another namespace: %+v", st)
	}
}

func waitUntil(timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return errors.New("timed out")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}
