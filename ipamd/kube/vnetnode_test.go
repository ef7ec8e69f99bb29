package kube

import (
	"net/netip"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/vnet-cni/vnet-cni/ipamd/daemon"
	"github.com/vnet-cni/vnet-cni/ipamd/noderoute"
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

// TestRouteStatus: kubenet's route in the status, with its pod CIDR and
// next hop; messages longer than the CRD's maxLength are cut at a
// character's boundary, also the last cloud error's.
func TestRouteStatus(t *testing.T) {
	since := time.Date(2026, 12, 1, 12, 0, 0, 500_000_000, time.UTC)
	r := routeStatusOf(noderoute.State{Reason: noderoute.ReasonRouteLimitReached, Message: "no room",
		Since: since, PodCIDR: netip.MustParsePrefix("10.100.3.0/24"), NextHop: netip.MustParseAddr("10.240.0.5")})
	want := RouteStatus{PodCIDR: "10.100.3.0/24", NextHop: "10.240.0.5", Reason: "RouteLimitReached", Message: "no room",
		Since: metav1.NewTime(since.Truncate(time.Second))}
	if *r != want {
		t.Errorf("route status %+v, want %+v", *r, want)
	}
	long := strings.Repeat("é", 600) // 1,200 bytes
	if m := routeStatusOf(noderoute.State{Message: long}).Message; len(m) > maxStatusMessage || !utf8.ValidString(m) || len(m) != 1024 {
		t.Errorf("route message of %d bytes (valid UTF-8 %v), want 1024", len(m), utf8.ValidString(m))
	}
	odd := "x" + long // the cut falls inside a character
	if m := boundMessage(odd); len(m) != 1023 || !utf8.ValidString(m) {
		t.Errorf("cut inside a character: %d bytes (valid UTF-8 %v), want 1023", len(m), utf8.ValidString(m))
	}
	s := statusOf(daemon.Report{CloudError: &daemon.CloudError{Message: long}}, 1, nil)
	if s.LastCloudError == nil || len(s.LastCloudError.Message) != 1024 {
		t.Errorf("last cloud error %+v, want its message cut to 1024 bytes", s.LastCloudError)
	}
}
