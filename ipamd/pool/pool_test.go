package pool

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

var t0 = time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)

// ip returns 10.0.0.<n> (n < 256) or 10.0.<n/256>.<n%256>.
func ip(n int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, 0, byte(n / 256), byte(n % 256)})
}

// freeSince returns n free addresses starting at 10.0.0.<first>, all free since at.
func freeSince(first, n int, at time.Time) []FreeIP {
	out := make([]FreeIP, 0, n)
	for i := range n {
		out = append(out, FreeIP{IP: ip(first + i), Since: at})
	}
	return out
}

func ips(ns ...int) []netip.Addr {
	out := make([]netip.Addr, 0, len(ns))
	for _, n := range ns {
		out = append(out, ip(n))
	}
	return out
}

func concat(parts ...[]FreeIP) []FreeIP {
	var out []FreeIP
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// azureNIC is the capacity of an Azure NIC: 256 ipConfigurations, one of
// them the primary; t3Medium that of an EC2 t3.medium's primary ENI (6
// addresses, one of them the primary).
const (
	azureNIC = 255
	t3Medium = 5
)

func TestPlan(t *testing.T) {
	def := Targets{WarmIPTarget: 10, MinIPTarget: 0, MaxIPs: 30, BatchSize: 10, ReleaseDelay: time.Minute}
	with := func(f func(*Targets)) Targets {
		tg := def
		f(&tg)
		return tg
	}
	old := t0.Add(-2 * time.Minute) // free for longer than the release delay
	recent := t0.Add(-10 * time.Second)

	tests := []struct {
		name   string
		in     Input
		want   Decision
		reason string // a substring of Decision.Reason
	}{
		{
			name:   "empty pool fills to the warm target",
			in:     Input{Now: t0, Targets: def},
			want:   Decision{Action: ActionAllocate, Allocate: 10, Wanted: 10},
			reason: "short by 10",
		},
		{
			name:   "refill on demand after an assignment rounds up to the batch",
			in:     Input{Now: t0, Free: freeSince(1, 9, old), Assigned: 1, Targets: def},
			want:   Decision{Action: ActionAllocate, Allocate: 10, Wanted: 1},
			reason: "allocating 10",
		},
		{
			name:   "batch rounding of a deficit larger than one batch",
			in:     Input{Now: t0, Free: freeSince(1, 2, old), Targets: with(func(t *Targets) { t.WarmIPTarget = 15; t.BatchSize = 4 })},
			want:   Decision{Action: ActionAllocate, Allocate: 16, Wanted: 13},
			reason: "batch 4",
		},
		{
			name: "batch of one allocates exactly the deficit",
			in:   Input{Now: t0, Free: freeSince(1, 7, old), Targets: with(func(t *Targets) { t.BatchSize = 1 })},
			want: Decision{Action: ActionAllocate, Allocate: 3, Wanted: 3},
		},
		{
			name: "batch size below one means one",
			in:   Input{Now: t0, Free: freeSince(1, 7, old), Targets: with(func(t *Targets) { t.BatchSize = 0 })},
			want: Decision{Action: ActionAllocate, Allocate: 3, Wanted: 3},
		},
		{
			name: "pending requests on an empty pool are demand above the warm target",
			in:   Input{Now: t0, Assigned: 5, Pending: 3, Targets: with(func(t *Targets) { t.WarmIPTarget = 0; t.BatchSize = 1 })},
			want: Decision{Action: ActionAllocate, Allocate: 3, Wanted: 3},
		},
		{
			name: "warm target zero and nothing pending does nothing",
			in:   Input{Now: t0, Assigned: 5, Targets: with(func(t *Targets) { t.WarmIPTarget = 0 })},
			want: Decision{Action: ActionNone},
		},
		{
			name:   "batch is capped by maxIPs and the cap is reported",
			in:     Input{Now: t0, Free: freeSince(1, 5, old), Assigned: 20, Targets: def},
			want:   Decision{Action: ActionAllocate, Allocate: 5, Wanted: 5},
			reason: "allocating 5",
		},
		{
			name:   "cap cuts below the deficit: allocate what fits and report the limit",
			in:     Input{Now: t0, Free: freeSince(1, 2, old), Assigned: 25, Targets: def},
			want:   Decision{Action: ActionAllocate, Allocate: 3, Wanted: 8, LimitReached: true},
			reason: "limit reached",
		},
		{
			name:   "at maxIPs: limit reached, no allocation",
			in:     Input{Now: t0, Assigned: 30, Targets: def},
			want:   Decision{Action: ActionNone, Wanted: 10, LimitReached: true},
			reason: "limit reached",
		},
		{
			name:   "maxIPs above the provider's capacity is capped at it (an Azure NIC: 255 secondaries)",
			in:     Input{Now: t0, Free: freeSince(1, 3, old), Assigned: 250, Targets: with(func(t *Targets) { t.MaxIPs = 1000 })},
			want:   Decision{Action: ActionAllocate, Allocate: 2, Wanted: 7, LimitReached: true},
			reason: "maximum of 255",
		},
		{
			name: "maxIPs zero means the provider's capacity",
			in:   Input{Now: t0, Assigned: 255, Targets: with(func(t *Targets) { t.MaxIPs = 0 })},
			want: Decision{Action: ActionNone, Wanted: 10, LimitReached: true},
		},
		{
			name:   "a small provider capacity wins over maxIPs (a t3.medium's primary ENI)",
			in:     Input{Now: t0, Free: freeSince(1, 1, old), Assigned: 2, Capacity: t3Medium, Targets: def},
			want:   Decision{Action: ActionAllocate, Allocate: 2, Wanted: 9, LimitReached: true},
			reason: "maximum of 5",
		},
		{
			name:   "no capacity, no room",
			in:     Input{Now: t0, Capacity: -1, Targets: def},
			want:   Decision{Action: ActionNone, Wanted: 10, LimitReached: true},
			reason: "at most 0",
		},
		{
			name:   "min floor: total below minIPTarget allocates even with warm satisfied",
			in:     Input{Now: t0, Free: freeSince(1, 10, old), Assigned: 2, Targets: with(func(t *Targets) { t.MinIPTarget = 20; t.BatchSize = 1 })},
			want:   Decision{Action: ActionAllocate, Allocate: 8, Wanted: 8},
			reason: "short by 8",
		},
		{
			name: "min floor rounds up to the batch",
			in:   Input{Now: t0, Free: freeSince(1, 10, old), Targets: with(func(t *Targets) { t.MinIPTarget = 25 })},
			want: Decision{Action: ActionAllocate, Allocate: 20, Wanted: 15},
		},
		{
			name: "cooling addresses count toward the total for the min floor",
			in:   Input{Now: t0, Free: freeSince(1, 10, old), Cooling: 10, Targets: with(func(t *Targets) { t.MinIPTarget = 20 })},
			want: Decision{Action: ActionNone},
		},
		{
			name:   "cooling addresses are not free: warm deficit despite many cooling",
			in:     Input{Now: t0, Free: freeSince(1, 2, old), Cooling: 15, Targets: def},
			want:   Decision{Action: ActionAllocate, Allocate: 10, Wanted: 8},
			reason: "2 free",
		},
		{
			name:   "cooling addresses count toward maxIPs",
			in:     Input{Now: t0, Assigned: 10, Cooling: 20, Targets: def},
			want:   Decision{Action: ActionNone, Wanted: 10, LimitReached: true},
			reason: "limit reached",
		},
		{
			name: "within the hysteresis band after a rounded-up fill: nothing to do",
			in:   Input{Now: t0, Free: freeSince(1, 19, old), Targets: def},
			want: Decision{Action: ActionNone},
		},
		{
			name:   "excess released down to the warm target once free for the delay",
			in:     Input{Now: t0, Free: freeSince(1, 22, old), Targets: def},
			want:   Decision{Action: ActionRelease, Release: ips(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12)},
			reason: "releasing 12",
		},
		{
			name:   "excess not released before the delay; recheck when the oldest is eligible",
			in:     Input{Now: t0, Free: freeSince(1, 22, recent), Targets: def},
			want:   Decision{Action: ActionNone, RecheckAt: recent.Add(time.Minute)},
			reason: "none free for the release delay",
		},
		{
			name: "only addresses free for the delay are released, longest free first",
			in: Input{Now: t0, Targets: def, Free: concat(
				freeSince(100, 15, recent), // young
				freeSince(50, 5, old),      // old
				[]FreeIP{{IP: ip(40), Since: t0.Add(-90 * time.Second)}},
			)},
			want:   Decision{Action: ActionRelease, Release: ips(40, 50, 51, 52, 53, 54), RecheckAt: recent.Add(time.Minute)},
			reason: "5 more wait",
		},
		{
			name: "exactly the release delay counts as eligible",
			in:   Input{Now: t0, Free: freeSince(1, 20, t0.Add(-time.Minute)), Targets: def},
			want: Decision{Action: ActionRelease, Release: ips(1, 2, 3, 4, 5, 6, 7, 8, 9, 10)},
		},
		{
			name: "release never goes below the min floor",
			in:   Input{Now: t0, Free: freeSince(1, 25, old), Assigned: 5, Targets: with(func(t *Targets) { t.MinIPTarget = 27 })},
			want: Decision{Action: ActionRelease, Release: ips(1, 2, 3)},
		},
		{
			name: "release delay zero releases excess at once",
			in:   Input{Now: t0, Free: freeSince(1, 21, t0), Targets: with(func(t *Targets) { t.ReleaseDelay = 0 })},
			want: Decision{Action: ActionRelease, Release: ips(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)},
		},
		{
			name:   "above a lowered maxIPs: release free addresses down to it even below warm",
			in:     Input{Now: t0, Free: freeSince(1, 8, old), Assigned: 25, Targets: with(func(t *Targets) { t.MaxIPs = 28 })},
			want:   Decision{Action: ActionRelease, Release: ips(1, 2, 3, 4, 5), Wanted: 2, LimitReached: true},
			reason: "above the maximum",
		},
		{
			name: "above maxIPs with nothing free: limit reached, nothing to release",
			in:   Input{Now: t0, Assigned: 32, Targets: def},
			want: Decision{Action: ActionNone, Wanted: 10, LimitReached: true},
		},
		{
			name:   "release in flight blocks allocation",
			in:     Input{Now: t0, Free: freeSince(1, 2, old), Assigned: 10, Releasing: 5, Targets: def},
			want:   Decision{Action: ActionNone},
			reason: "in flight",
		},
		{
			name:   "release in flight blocks a second release",
			in:     Input{Now: t0, Free: freeSince(1, 25, old), Releasing: 5, Targets: def},
			want:   Decision{Action: ActionNone},
			reason: "in flight",
		},
		{
			name:   "release in flight blocks allocation even with pending requests",
			in:     Input{Now: t0, Pending: 2, Releasing: 1, Targets: def},
			want:   Decision{Action: ActionNone},
			reason: "in flight",
		},
		{
			name: "negative counts are treated as zero",
			in:   Input{Now: t0, Assigned: -5, Cooling: -1, Releasing: -1, Pending: -3, Targets: with(func(t *Targets) { t.WarmIPTarget = -1 })},
			want: Decision{Action: ActionNone},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.in.Capacity == 0 {
				tc.in.Capacity = azureNIC
			}
			got := Plan(tc.in)
			if diff := cmp.Diff(tc.want, got, cmpopts.IgnoreFields(Decision{}, "Reason"), cmpopts.EquateComparable(netip.Addr{})); diff != "" {
				t.Errorf("Plan() mismatch (-want +got):\n%s\nreason: %s", diff, got.Reason)
			}
			if got.Reason == "" {
				t.Errorf("Plan() gave no reason")
			}
			if !strings.Contains(got.Reason, tc.reason) {
				t.Errorf("Plan().Reason = %q, want it to contain %q", got.Reason, tc.reason)
			}
		})
	}
}

// TestPlanInvariants checks properties that must hold for every input on a grid
// of states: never above the ceiling, never release more than is free, never
// release an address that is not free, never act while a release is in flight.
func TestPlanInvariants(t *testing.T) {
	targets := []Targets{
		{WarmIPTarget: 10, MaxIPs: 30, BatchSize: 10, ReleaseDelay: time.Minute},
		{WarmIPTarget: 0, MinIPTarget: 5, MaxIPs: 8, BatchSize: 3},
		{WarmIPTarget: 40, MinIPTarget: 100, MaxIPs: 255, BatchSize: 16},
		{WarmIPTarget: 1, MaxIPs: 1, BatchSize: 1},
	}
	for ti, tg := range targets {
		for _, capacity := range []int{azureNIC, t3Medium, 0} {
			t.Run(fmt.Sprintf("targets%d/capacity%d", ti, capacity), func(t *testing.T) {
				for free := 0; free <= 40; free += 3 {
					for assigned := 0; assigned <= 260; assigned += 13 {
						for _, cooling := range []int{0, 4} {
							for _, releasing := range []int{0, 2} {
								in := Input{Now: t0, Free: freeSince(1000, free, t0.Add(-time.Duration(free)*time.Minute)),
									Assigned: assigned, Cooling: cooling, Releasing: releasing, Targets: tg, Capacity: capacity}
								checkInvariants(t, in, Plan(in))
							}
						}
					}
				}
			})
		}
	}
}

func checkInvariants(t *testing.T, in Input, d Decision) {
	t.Helper()
	total := len(in.Free) + in.Assigned + in.Cooling
	ceiling := Ceiling(in.Targets, in.Capacity)
	ctx := fmt.Sprintf("free=%d assigned=%d cooling=%d releasing=%d %+v: %+v",
		len(in.Free), in.Assigned, in.Cooling, in.Releasing, in.Targets, d)
	if in.Releasing > 0 && d.Action != ActionNone {
		t.Errorf("acts while a release is in flight: %s", ctx)
	}
	switch d.Action {
	case ActionAllocate:
		if d.Allocate <= 0 || total+d.Allocate > ceiling {
			t.Errorf("allocation beyond the ceiling %d: %s", ceiling, ctx)
		}
		if len(d.Release) != 0 {
			t.Errorf("allocate decision carries releases: %s", ctx)
		}
	case ActionRelease:
		isFree := map[netip.Addr]bool{}
		for _, f := range in.Free {
			isFree[f.IP] = true
		}
		seen := map[netip.Addr]bool{}
		for _, a := range d.Release {
			if !isFree[a] || seen[a] {
				t.Errorf("releases %s which is not free or twice: %s", a, ctx)
			}
			seen[a] = true
		}
		if len(d.Release) == 0 || d.Allocate != 0 {
			t.Errorf("malformed release: %s", ctx)
		}
		if total > ceiling {
			break
		}
		if len(in.Free)-len(d.Release) < in.Targets.WarmIPTarget || total-len(d.Release) < in.Targets.MinIPTarget {
			t.Errorf("release goes below the warm or min target: %s", ctx)
		}
	case ActionNone:
		if d.Allocate != 0 || len(d.Release) != 0 {
			t.Errorf("none decision carries work: %s", ctx)
		}
	}
	if d.LimitReached && d.Wanted <= d.Allocate {
		t.Errorf("limit reached but nothing withheld: %s", ctx)
	}
}

func TestActionString(t *testing.T) {
	for a, want := range map[Action]string{ActionNone: "none", ActionAllocate: "allocate", ActionRelease: "release", Action(9): "action(9)"} {
		if got := a.String(); got != want {
			t.Errorf("Action(%d).String() = %q, want %q", int(a), got, want)
		}
	}
}

// TestPlanDoesNotModifyInput makes sure the caller's slice keeps its order.
func TestPlanDoesNotModifyInput(t *testing.T) {
	free := concat(freeSince(1, 15, t0), freeSince(20, 10, t0.Add(-time.Hour)))
	before := append([]FreeIP(nil), free...)
	Plan(Input{Now: t0, Free: free, Targets: Targets{WarmIPTarget: 1, BatchSize: 1}, Capacity: azureNIC})
	if diff := cmp.Diff(before, free, cmpopts.EquateComparable(netip.Addr{})); diff != "" {
		t.Errorf("Plan modified Input.Free (-before +after):\n%s", diff)
	}
}
