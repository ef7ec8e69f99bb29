package kube

import (
	"testing"

	"github.com/vnet-cni/vnet-cni/ipamd/daemon"
)

// TestStatusNICs: the NICS column names Azure NICs and ENIs by their short
// names and kubenet's pod CIDR by the CIDR itself.
func TestStatusNICs(t *testing.T) {
	for _, tc := range []struct {
		ifaces []string
		want   string
	}{
		{[]string{"/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/networkInterfaces/vm0-nic"}, "vm0-nic"},
		{[]string{"eni-0a1", "eni-0b2"}, "eni-0a1,eni-0b2"},
		{[]string{"podcidr/10.100.3.0/24"}, "10.100.3.0/24"},
	} {
		if got := statusOf(daemon.Report{Ready: true, Interfaces: tc.ifaces}, 1, nil).NICs; got != tc.want {
			t.Errorf("%v: NICs %q, want %q", tc.ifaces, got, tc.want)
		}
	}
}
