package kube

import (
	"strings"
	"testing"
	"time"

	"github.com/vnet-cni/vnet-cni/cloud"
	"github.com/vnet-cni/vnet-cni/ipamd/daemon"
	"github.com/vnet-cni/vnet-cni/ipamd/store"
)

// A condition gives one Event when it begins, none while it lasts, and
// none when it comes back within the interval.
func TestDedupe(t *testing.T) {
	t0 := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	d := newDedupe(10 * time.Minute)
	steps := []struct {
		at     time.Duration
		reason string
		want   bool
	}{
		{0, "", false},
		{time.Second, ReasonLimitReached, true},
		{2 * time.Second, ReasonLimitReached, false},
		{3 * time.Second, "", false},
		{4 * time.Second, ReasonLimitReached, false}, // back within the interval
		{5 * time.Second, ReasonSubnetFull, true},    // another reason
		{11 * time.Minute, "", false},
		{12 * time.Minute, ReasonLimitReached, true}, // after the interval
	}
	for i, s := range steps {
		ev, ok := d.observe(t0.Add(s.at), s.reason, "msg")
		if ok != s.want || (ok && ev.reason != s.reason) {
			t.Errorf("step %d (%s at %s): event %v %+v, want %v", i, s.reason, s.at, ok, ev, s.want)
		}
	}
}

func TestConditionOf(t *testing.T) {
	active := func(k cloud.Kind) *daemon.CloudError { return &daemon.CloudError{Kind: k, Message: "m", Active: true} }
	tests := []struct {
		r    daemon.Report
		want string
	}{
		{daemon.Report{}, ""},
		{daemon.Report{LimitReached: true}, ReasonLimitReached},
		{daemon.Report{LimitReached: true, CloudError: active(cloud.SubnetFull)}, ReasonSubnetFull},
		{daemon.Report{LimitReached: true, CloudError: active(cloud.Denied)}, ReasonWriteDenied},
		{daemon.Report{CloudError: active(cloud.Throttled)}, ReasonThrottled},
		{daemon.Report{CloudError: active(cloud.Transient)}, ""},
		{daemon.Report{CloudError: &daemon.CloudError{Kind: cloud.SubnetFull}}, ""}, // over
	}
	for i, tc := range tests {
		if got, _ := conditionOf(tc.r); got != tc.want {
			t.Errorf("%d: %q, want %q", i, got, tc.want)
		}
	}
	// A refused write says how many addresses the pool keeps serving.
	r := daemon.Report{LimitReached: true, CloudError: active(cloud.Denied), Counts: store.Counts{Assigned: 28, Cooling: 2}}
	if _, msg := conditionOf(r); !strings.Contains(msg, "holds only its 30 addresses") || !strings.HasSuffix(msg, ": m") {
		t.Errorf("%s message %q, want the pool's 30 addresses and the cloud's message", ReasonWriteDenied, msg)
	}
}
