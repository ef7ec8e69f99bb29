package daemon

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/vnet-cni/vnet-cni/cloud"
	"github.com/vnet-cni/vnet-cni/cloud/azure"
	"github.com/vnet-cni/vnet-cni/cloud/sim"
	"github.com/vnet-cni/vnet-cni/ipamd/api"
)

// outsider is another writer of the cloud: node n's NIC through the real
// provider, as an operator's tool or another node's daemon would change it.
func (h *harness) outsider(n int) *azure.Provider {
	h.t.Helper()
	cfg := h.cfg
	if n != 0 {
		imdsH, ok := h.sim.IMDSHandler(h.sim.Description().Nodes[n].Name)
		if !ok {
			h.t.Fatalf("no imds for node %d", n)
		}
		srv := httptest.NewServer(imdsH)
		h.t.Cleanup(srv.Close)
		cfg.IMDSEndpoint = srv.URL
	}
	p, err := azure.New(context.Background(), cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	return p
}

func nicID(t *testing.T, p *azure.Provider) string {
	t.Helper()
	in, err := p.Instance(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return in.Interfaces[0].ID
}

func (h *harness) record(ip netip.Addr) api.AddressRecord {
	h.t.Helper()
	l, err := h.client.List(context.Background(), api.ListRequest{})
	if err != nil {
		h.t.Fatal(err)
	}
	for _, r := range l.Addresses {
		if r.IP == ip {
			return r
		}
	}
	return api.AddressRecord{}
}

// drainPool allocates until the pool is empty and fails if a held address
// is handed out.
func (h *harness) drainPool(held ...netip.Addr) {
	h.t.Helper()
	for i := range 100 {
		a, err := h.allocate("drain" + string(rune('a'+i/26)) + string(rune('a'+i%26)))
		if api.IsTryAgain(err) {
			return
		}
		if err != nil {
			h.t.Fatal(err)
		}
		if slices.Contains(held, a.IP) {
			h.t.Fatalf("the pool handed out %s, an address a pod holds", a.IP)
		}
	}
	h.t.Fatal("the pool never ran empty")
}

// TestLostAddressIsPutBack removes an assigned address from the NIC outside
// the daemon: the resync keeps it assigned and puts it back with one NIC
// update, and the pool never hands it out.
func TestLostAddressIsPutBack(t *testing.T) {
	h := newHarness(t, sim.Options{}, Options{Targets: targets(2, 0, 6, 2, time.Hour), AllocateWait: 200 * time.Millisecond})
	h.waitFor("ready", 10*time.Second, func(s api.StatusResponse) bool { return s.Ready })
	a, err := h.allocate("a")
	if err != nil {
		t.Fatal(err)
	}
	h.waitFor("refill", 10*time.Second, func(s api.StatusResponse) bool { return s.Pool.Free >= 2 })
	out := h.outsider(0)
	if err := out.RemoveAddresses(context.Background(), nicID(t, out), []netip.Addr{a.IP}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !slices.Contains(h.nicSecondaries(), a.IP) {
		if time.Now().After(deadline) {
			t.Fatalf("%s not put back on the NIC; status %+v", a.IP, h.status())
		}
		time.Sleep(20 * time.Millisecond)
	}
	h.waitFor("lost flag cleared", 5*time.Second, func(s api.StatusResponse) bool { return len(s.Lost) == 0 })
	if r := h.record(a.IP); r.State != "assigned" || r.ContainerID != "a" || !r.LostSince.IsZero() {
		t.Errorf("record after the restore %+v, want assigned to a", r)
	}
	if v := testutil.ToFloat64(h.d.metrics.restores.WithLabelValues("ok")); v != 1 {
		t.Errorf("restores ok = %v, want 1", v)
	}
	h.drainPool(a.IP)
}

// TestLostAddressTakenElsewhere gives a removed address to another NIC while
// the daemon is stopped: the daemon cannot put it back, keeps it with its
// owner and out of the pool, and reports it; once the other NIC lets it go it
// goes back, and only its owner's release (and the cooldown) frees it. A
// lost address whose owner released it and that never comes back is
// forgotten after the cooldown.
func TestLostAddressTakenElsewhere(t *testing.T) {
	h := newHarness(t, sim.Options{Nodes: 2}, Options{Targets: targets(2, 0, 6, 2, time.Hour), AllocateWait: 200 * time.Millisecond,
		Cooldown: 300 * time.Millisecond})
	h.waitFor("ready", 10*time.Second, func(s api.StatusResponse) bool { return s.Ready })
	a, err := h.allocate("a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := h.allocate("b")
	if err != nil {
		t.Fatal(err)
	}
	h.waitFor("refill", 10*time.Second, func(s api.StatusResponse) bool { return s.Pool.Free >= 2 })
	dir := h.storeDir
	h.stop()
	ctx := context.Background()
	out0, out1 := h.outsider(0), h.outsider(1)
	if err := out0.RemoveAddresses(ctx, nicID(t, out0), []netip.Addr{a.IP, b.IP}); err != nil {
		t.Fatal(err)
	}
	if err := out1.RestoreAddresses(ctx, nicID(t, out1), []netip.Addr{a.IP}); err != nil {
		t.Fatal(err)
	}
	h.start(dir)

	// b goes back (tried alone after the update with both was refused),
	// a cannot.
	st := h.waitFor("a reported lost and b back", 10*time.Second, func(s api.StatusResponse) bool {
		return len(s.Lost) == 1 && s.Lost[0].RestoreError != ""
	})
	if l := st.Lost[0]; l.IP != a.IP || l.ContainerID != "a" || l.State != "assigned" || !strings.Contains(l.RestoreError, "PrivateIPAddressIsAllocated") {
		t.Errorf("lost %+v, want %s of a refused with PrivateIPAddressIsAllocated", l, a.IP)
	}
	if nic := h.nicSecondaries(); slices.Contains(nic, a.IP) || !slices.Contains(nic, b.IP) {
		t.Errorf("the NIC holds %v, want %s back and not %s", nic, b.IP, a.IP)
	}
	if v := testutil.ToFloat64(h.d.metrics.restores.WithLabelValues(cloud.AddressInUse.String())); v < 1 {
		t.Errorf("refused restores = %v, want at least 1", v)
	}
	if chk, err := h.client.Check(ctx, api.CheckRequest{ContainerID: "a", IfName: "eth0"}); err != nil || chk.Assignment == nil || chk.Assignment.IP != a.IP {
		t.Errorf("check a = %+v, %v; want %s", chk.Assignment, err, a.IP)
	}
	h.drainPool(a.IP, b.IP)

	// The other NIC lets it go: the daemon puts it back.
	if err := out1.RemoveAddresses(ctx, nicID(t, out1), []netip.Addr{a.IP}); err != nil {
		t.Fatal(err)
	}
	h.waitFor("a back", 10*time.Second, func(s api.StatusResponse) bool { return len(s.Lost) == 0 })
	if !slices.Contains(h.nicSecondaries(), a.IP) {
		t.Errorf("%s not on the NIC after the restore", a.IP)
	}
	if _, err := h.client.Release(ctx, api.ReleaseRequest{ContainerID: "a", IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	h.waitFor("a free after its cooldown", 5*time.Second, func(api.StatusResponse) bool { return h.record(a.IP).State == "free" })

	// b is lost again and taken; its owner releases it: forgotten after
	// the cooldown, never free.
	h.stop()
	if err := out0.RemoveAddresses(ctx, nicID(t, out0), []netip.Addr{b.IP}); err != nil {
		t.Fatal(err)
	}
	if err := out1.RestoreAddresses(ctx, nicID(t, out1), []netip.Addr{b.IP}); err != nil {
		t.Fatal(err)
	}
	h.start(dir)
	h.waitFor("b lost", 10*time.Second, func(s api.StatusResponse) bool { return len(s.Lost) == 1 })
	if _, err := h.client.Release(ctx, api.ReleaseRequest{ContainerID: "b", IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	h.waitFor("b forgotten", 5*time.Second, func(s api.StatusResponse) bool {
		return len(s.Lost) == 0 && h.record(b.IP).State == ""
	})
}

// TestSupersededReleases releases an attachment with stamps from before and
// after its latest allocation, over the socket and through the spool: only
// the later ones free it, and a release spooled in another boot frees
// nothing.
func TestSupersededReleases(t *testing.T) {
	spool := filepath.Join(t.TempDir(), "spool")
	h := newHarness(t, sim.Options{}, Options{Targets: targets(2, 0, 6, 2, time.Hour), ReleaseSpool: spool})
	h.waitFor("ready", 10*time.Second, func(s api.StatusResponse) bool { return s.Ready })
	ctx := context.Background()
	del := api.NewStamp() // a DEL of an earlier assignment
	time.Sleep(time.Millisecond)
	a, err := h.client.Allocate(ctx, api.AllocateRequest{ContainerID: "a", IfName: "eth0", At: api.NewStamp()})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := h.client.Release(ctx, api.ReleaseRequest{ContainerID: "a", IfName: "eth0", At: del})
	if err != nil || resp.Known || !resp.Superseded {
		t.Errorf("release stamped before the allocation = %+v, %v; want superseded", resp, err)
	}
	writeSpool := func(r api.PendingRelease) {
		t.Helper()
		if err := os.MkdirAll(spool, 0o700); err != nil {
			t.Fatal(err)
		}
		data, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(spool, r.ContainerID+".release.json"), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	waitDrained := func() {
		t.Helper()
		h.d.kick()
		deadline := time.Now().Add(5 * time.Second)
		for {
			left, _ := os.ReadDir(spool)
			if len(left) == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("spool not drained: %v", left)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	writeSpool(api.PendingRelease{ContainerID: "a", IfName: "eth0", At: del.Wall, Boot: del.Boot, BootID: del.BootID})
	waitDrained()
	// A file of an earlier version: its wall-clock time is before the allocation.
	writeSpool(api.PendingRelease{ContainerID: "a", IfName: "eth0", At: del.Wall})
	waitDrained()
	// Spooled in another boot, however late its boot clock.
	writeSpool(api.PendingRelease{ContainerID: "a", IfName: "eth0", At: time.Now().Add(time.Hour), Boot: 1 << 62, BootID: "another-boot"})
	waitDrained()
	if r := h.record(a.Assignment.IP); r.State != "assigned" || r.ContainerID != "a" {
		t.Fatalf("after superseded releases %s is %+v, want assigned to a", a.Assignment.IP, r)
	}
	if v := testutil.ToFloat64(h.d.metrics.supersededReleases); v != 4 {
		t.Errorf("superseded releases = %v, want 4", v)
	}

	// An ADD again after the DEL: the DEL's spooled release is older.
	after := api.NewStamp()
	time.Sleep(time.Millisecond)
	if _, err := h.client.Allocate(ctx, api.AllocateRequest{ContainerID: "a", IfName: "eth0", At: api.NewStamp()}); err != nil {
		t.Fatal(err)
	}
	writeSpool(api.PendingRelease{ContainerID: "a", IfName: "eth0", At: after.Wall, Boot: after.Boot, BootID: after.BootID})
	waitDrained()
	if r := h.record(a.Assignment.IP); r.State != "assigned" {
		t.Fatalf("a release from between two allocations freed the second: %+v", r)
	}
	// A DEL after the latest allocation releases, spooled or not.
	now := api.NewStamp()
	writeSpool(api.PendingRelease{ContainerID: "a", IfName: "eth0", At: now.Wall, Boot: now.Boot, BootID: now.BootID})
	waitDrained()
	if r := h.record(a.Assignment.IP); r.State != "cooling" {
		t.Errorf("a release after the allocation left %+v, want cooling", r)
	}
	b, err := h.client.Allocate(ctx, api.AllocateRequest{ContainerID: "b", IfName: "eth0", At: api.NewStamp()})
	if err != nil {
		t.Fatal(err)
	}
	resp, err = h.client.Release(ctx, api.ReleaseRequest{ContainerID: "b", IfName: "eth0", At: api.NewStamp()})
	if err != nil || !resp.Known || resp.IP != b.Assignment.IP {
		t.Errorf("release after the allocation = %+v, %v; want %s released", resp, err, b.Assignment.IP)
	}
	// GC made before an allocation keeps it.
	gcAt := api.NewStamp()
	time.Sleep(time.Millisecond)
	c, err := h.client.Allocate(ctx, api.AllocateRequest{ContainerID: "c", IfName: "eth0", At: api.NewStamp()})
	if err != nil {
		t.Fatal(err)
	}
	gc, err := h.client.GC(ctx, api.GCRequest{Valid: []api.Attachment{}, At: gcAt})
	if err != nil || len(gc.Released) != 0 {
		t.Errorf("gc made before c's allocation released %+v, %v; want nothing", gc.Released, err)
	}
	if r := h.record(c.Assignment.IP); r.State != "assigned" {
		t.Errorf("c after an older gc: %+v", r)
	}
}
