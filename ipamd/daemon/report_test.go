package daemon

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/vnet-cni/vnet-cni/cloud"
	"github.com/vnet-cni/vnet-cni/cloud/sim"
	"github.com/vnet-cni/vnet-cni/ipamd/api"
)

// TestReport: the Report has the counts, the interfaces and what set the
// targets; a refused write is its CloudError (kind, message, time), kept
// and counted; SetTargetsFrom changes the ceiling and its source in the
// Report, Status and the metric, and signals Changes.
func TestReport(t *testing.T) {
	const template = 3
	h := newHarnessAs(t, sim.Options{TemplateIPs: template},
		Options{Targets: targets(0, template, 30, 1, time.Hour), AllocateWait: 100 * time.Millisecond, ResyncInterval: 100 * time.Millisecond},
		func(s *sim.Sim) string { tok, _ := s.ARM().IssueReadOnlyToken(sim.Audience); return tok })
	h.waitFor("the template's addresses in the pool", 10*time.Second, func(s api.StatusResponse) bool {
		return s.Ready && s.Pool.Free == template
	})
	r := h.d.Report()
	if !r.Ready || r.Counts.Free != template || r.TargetsFrom != TargetsFromConfig || r.Ceiling != 30 || len(r.Interfaces) != 1 ||
		!strings.HasSuffix(r.Interfaces[0], "/networkInterfaces/node0-nic") || r.CloudError != nil {
		t.Errorf("report %+v", r)
	}
	for i := range template {
		if _, err := h.allocate(fmt.Sprintf("pod-%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := h.allocate("one-too-many"); !api.IsTryAgain(err) {
		t.Fatalf("allocation beyond the template: %v", err)
	}
	h.waitFor("the refusal reported", 5*time.Second, func(s api.StatusResponse) bool { return s.LastCloudError != "" })
	r = h.d.Report()
	if e := r.CloudError; e == nil || e.Kind != cloud.Denied || !e.Active || e.Count != 1 || e.At.IsZero() ||
		!strings.HasPrefix(e.Message, "NetworkInterfaces_CreateOrUpdate: denied (AuthorizationFailed): ") ||
		strings.Contains(e.Message, "RESPONSE 403") || !r.LimitReached || r.Counts.Assigned != template {
		t.Errorf("report after the refused write: %+v, cloud error %+v", r, r.CloudError)
	}

	// Drain the signal, then change the targets.
	select {
	case <-h.d.Changes():
	default:
	}
	tg := targets(0, template, 12, 1, time.Hour)
	if err := h.d.SetTargetsFrom(tg, "vnetnode"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-h.d.Changes():
	default:
		t.Error("SetTargetsFrom did not signal Changes")
	}
	if r := h.d.Report(); r.Ceiling != 12 || r.TargetsFrom != "vnetnode" || r.Targets != tg {
		t.Errorf("report after SetTargetsFrom: %+v", r)
	}
	st, err := h.client.Status(t.Context(), api.StatusRequest{})
	if err != nil || st.Pool.Max != 12 || st.Pool.MaxFrom != "vnetnode" {
		t.Errorf("status pool %+v (%v), want max 12 from vnetnode", st.Pool, err)
	}
	mfs, err := h.d.Metrics().Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, mf := range mfs {
		if mf.GetName() != "vnetcni_ipamd_pool_ceiling" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if l := m.GetLabel(); len(l) == 1 && l[0].GetValue() == "vnetnode" && m.GetGauge().GetValue() == 12 {
				found = true
			}
		}
	}
	if !found {
		t.Error("no vnetcni_ipamd_pool_ceiling{from=\"vnetnode\"} 12")
	}
}
