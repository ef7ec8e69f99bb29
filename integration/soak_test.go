package integration

import (
	"context"
	"testing"

	"github.com/vnet-cni/vnet-cni/integration/soak"
	"github.com/vnet-cni/vnet-cni/internal/nstest"
)

// TestSoak runs the churn soak's short profile: 2 nodes, 100 pod slots
// each, random ADD/DEL for 20 s with 10 % 5xx, 429 storms, 2 s of ARM
// latency, vnet-ipamd SIGKILLed at random (the first kill damages its
// store) and ipConfigurations deleted out of band; then kernel, stores and
// cloud must agree (see package soak). `make soak` runs the long profile.
func TestSoak(t *testing.T) {
	nstest.RequireRoot(t)
	if testing.Short() {
		t.Skip("soak skipped in -short")
	}
	res, err := soak.Run(context.Background(), soak.Short(), soak.Options{
		Dir: t.TempDir(), BinDir: "../bin", Prefix: nstest.Prefix(t),
	})
	for _, v := range res.Violations {
		t.Errorf("violation: %s", v)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d adds, %d dels, %d failed calls, %d live pods, %s", res.Adds, res.Dels, res.Failed, res.LivePods, res.Elapsed)
	t.Log(res.FaultLine())
	t.Log(res.Line())
	if res.Adds == 0 || res.Dels == 0 || res.Restarts == 0 || res.Faults == 0 {
		t.Errorf("the soak did not exercise churn, faults and restarts: %+v", res)
	}
	if res.Damages.Total() == 0 || res.Drifts == 0 {
		t.Errorf("the soak did not exercise store damage and cloud drift: %+v", res)
	}
}
