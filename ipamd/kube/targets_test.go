package kube

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/vnet-cni/vnet-cni/ipamd/pool"
)

func ptr(v int) *int { return &v }

func TestCompose(t *testing.T) {
	base := pool.Targets{WarmIPTarget: 10, MinIPTarget: 2, MaxIPs: 0, BatchSize: 10}
	fixed := base
	fixed.MaxIPs = 30
	tests := []struct {
		name        string
		base        pool.Targets
		allocatable int
		o           Overrides
		want        pool.Targets
		from        string
		err         string
	}{
		{"from the node", base, 17, Overrides{}, pool.Targets{WarmIPTarget: 10, MinIPTarget: 2, MaxIPs: 17, BatchSize: 10}, FromNode, ""},
		{"node unknown: the fallback", base, 0, Overrides{}, pool.Targets{WarmIPTarget: 10, MinIPTarget: 2, MaxIPs: 30, BatchSize: 10}, FromDefault, ""},
		{"small node lowers the warm target", base, 4, Overrides{}, pool.Targets{WarmIPTarget: 4, MinIPTarget: 2, MaxIPs: 4, BatchSize: 10}, FromNode, ""},
		{"huge node bounded", base, 5000, Overrides{}, pool.Targets{WarmIPTarget: 10, MinIPTarget: 2, MaxIPs: MaxAddresses, BatchSize: 10}, FromNode, ""},
		{"config wins over the node", fixed, 17, Overrides{}, fixed, FromConfig, ""},
		{"override warm", base, 17, Overrides{WarmIPTarget: ptr(3)}, pool.Targets{WarmIPTarget: 3, MinIPTarget: 2, MaxIPs: 17, BatchSize: 10}, FromVNetNode, ""},
		{"override every field", fixed, 17, Overrides{WarmIPTarget: ptr(5), MinIPTarget: ptr(6), MaxIPs: ptr(40), BatchSize: ptr(1)}, pool.Targets{WarmIPTarget: 5, MinIPTarget: 6, MaxIPs: 40, BatchSize: 1}, FromVNetNode, ""},
		{"override max below the config's warm", base, 17, Overrides{MaxIPs: ptr(5)}, pool.Targets{WarmIPTarget: 10, MinIPTarget: 2, MaxIPs: 17, BatchSize: 10}, FromNode, "warmIPTarget 10 out of range 0..5"},
		{"override warm above the node's max", base, 17, Overrides{WarmIPTarget: ptr(18)}, pool.Targets{WarmIPTarget: 10, MinIPTarget: 2, MaxIPs: 17, BatchSize: 10}, FromNode, "warmIPTarget 18 out of range 0..17"},
		{"override batch zero", fixed, 0, Overrides{BatchSize: ptr(0)}, fixed, FromConfig, "batchSize 0 out of range"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, from, err := Compose(tc.base, tc.allocatable, 30, tc.o)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("targets (-want +got):\n%s", diff)
			}
			if from != tc.from {
				t.Errorf("from %q, want %q", from, tc.from)
			}
			switch {
			case tc.err == "" && err != nil:
				t.Errorf("error %v", err)
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Errorf("error %v, want one with %q", err, tc.err)
			}
		})
	}
}
