package daemon

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/vnet-cni/vnet-cni/cloud/sim"
	"github.com/vnet-cni/vnet-cni/ipamd/api"
)

// TestReadOnlyIdentityServesTheTemplate: a node whose NIC a cluster template
// created with addresses, and whose identity may only read, serves those
// addresses without a cloud write. When they run out, the one write the
// pool makes is refused (403) and not repeated; the allocation beyond them
// says why; addresses released meanwhile come back after their cooldown,
// though the worker is backing off from the cloud.
func TestReadOnlyIdentityServesTheTemplate(t *testing.T) {
	const template = 6
	h := newHarnessAs(t, sim.Options{TemplateIPs: template},
		Options{Targets: targets(0, template, 30, 1, time.Hour), Cooldown: 300 * time.Millisecond, AllocateWait: 200 * time.Millisecond,
			ResyncInterval: 100 * time.Millisecond},
		func(s *sim.Sim) string { tok, _ := s.ARM().IssueReadOnlyToken(sim.Audience); return tok })
	st := h.waitFor("the template's addresses in the pool", 10*time.Second, func(s api.StatusResponse) bool {
		return s.Ready && s.Pool.Free == template
	})
	if st.Pool.Total != template {
		t.Errorf("pool total = %d, want the template's %d", st.Pool.Total, template)
	}
	for i := range template {
		if _, err := h.allocate(fmt.Sprintf("pod-%d", i)); err != nil {
			t.Fatalf("allocation %d of the template's %d: %v", i+1, template, err)
		}
	}
	if got := h.puts(); got != 0 {
		t.Errorf("%d NIC writes while the template's addresses lasted, want 0", got)
	}

	_, err := h.allocate("one-too-many")
	if !api.IsTryAgain(err) || !strings.Contains(err.Error(), "exhausted") || !strings.Contains(err.Error(), "AuthorizationFailed") {
		t.Errorf("allocation beyond the template: %v, want TryAgain saying the pool is exhausted and why (AuthorizationFailed)", err)
	}
	st = h.waitFor("the refusal reported", 5*time.Second, func(s api.StatusResponse) bool {
		return strings.Contains(s.LastCloudError, "AuthorizationFailed")
	})
	if !st.LimitReached {
		t.Errorf("status %+v, want limit reached", st)
	}
	// Resyncs (reads) go on every 100 ms; the write is not asked again.
	time.Sleep(1500 * time.Millisecond)
	if got := h.sim.ARM().Stats().Calls["NetworkInterfaces_CreateOrUpdate"]; got["403"] != 1 || len(got) != 1 {
		t.Errorf("NIC writes = %v, want exactly one, refused with 403", got)
	}

	// A pod goes; its address comes back after the cooldown.
	if _, err := h.client.Release(t.Context(), api.ReleaseRequest{ContainerID: "pod-0", IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err = h.allocate("after-cooldown"); err == nil {
			break
		}
		if !api.IsTryAgain(err) || time.Now().After(deadline) {
			t.Fatalf("allocation after a release and its cooldown: %v", err)
		}
	}
	if got := h.sim.ARM().Stats().Calls["NetworkInterfaces_CreateOrUpdate"]; got["403"] != 1 || len(got) != 1 {
		t.Errorf("NIC writes = %v, want still exactly one", got)
	}
}
