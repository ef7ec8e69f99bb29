package pool

import (
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestSpread(t *testing.T) {
	for _, tc := range []struct {
		name   string
		rooms  []Room
		n      int
		shares []Share
		rest   int
	}{
		{name: "nothing asked", rooms: []Room{{"eni-0", 9}}, n: 0},
		{name: "negative asks nothing", rooms: []Room{{"eni-0", 9}}, n: -3},
		{name: "no interface", n: 4, rest: 4},
		{name: "fits on the first", rooms: []Room{{"eni-0", 9}, {"eni-1", 9}}, n: 5,
			shares: []Share{{"eni-0", 5}}},
		{name: "fills the first, then the next", rooms: []Room{{"eni-0", 3}, {"eni-1", 9}}, n: 5,
			shares: []Share{{"eni-0", 3}, {"eni-1", 2}}},
		{name: "full ones are skipped", rooms: []Room{{"eni-0", 0}, {"eni-1", -2}, {"eni-2", 9}}, n: 4,
			shares: []Share{{"eni-2", 4}}},
		{name: "what fits nowhere is the rest", rooms: []Room{{"eni-0", 2}, {"eni-1", 1}}, n: 10,
			shares: []Share{{"eni-0", 2}, {"eni-1", 1}}, rest: 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			shares, rest := Spread(tc.rooms, tc.n)
			if diff := cmp.Diff(tc.shares, shares); diff != "" {
				t.Errorf("shares (-want +got):\n%s", diff)
			}
			if rest != tc.rest {
				t.Errorf("rest = %d, want %d", rest, tc.rest)
			}
		})
	}
}

// TestReleaseByRank: of the eligible free addresses, those of the interface
// ranked highest (attached last) go first, so it can empty; young ones wait
// whatever their rank.
func TestReleaseByRank(t *testing.T) {
	tg := Targets{WarmIPTarget: 2, BatchSize: 1, ReleaseDelay: time.Minute, MaxIPs: 100}
	old, young := t0.Add(-time.Hour), t0.Add(-time.Second)
	free := []FreeIP{
		{IP: ip(1), Since: old, Rank: 0},
		{IP: ip(2), Since: old, Rank: 0},
		{IP: ip(3), Since: old.Add(time.Minute), Rank: 1},
		{IP: ip(4), Since: old.Add(2 * time.Minute), Rank: 1},
		{IP: ip(5), Since: young, Rank: 2},
		{IP: ip(6), Since: old, Rank: 0},
	}
	d := Plan(Input{Now: t0, Free: free, Targets: tg, Capacity: 100})
	if d.Action != ActionRelease {
		t.Fatalf("action = %s (%s), want release", d.Action, d.Reason)
	}
	// Excess 4 of 6: both rank-1 addresses, then the two oldest of rank 0;
	// the young rank-2 one is not eligible.
	if diff := cmp.Diff(ips(1, 2, 3, 4), d.Release, cmpopts.EquateComparable(netip.Addr{})); diff != "" {
		t.Errorf("release (-want +got):\n%s", diff)
	}
	if !d.RecheckAt.IsZero() {
		t.Errorf("RecheckAt = %s, want zero: enough addresses were eligible", d.RecheckAt)
	}

	// With only two eligible addresses, both go and RecheckAt names the next one.
	free = []FreeIP{
		{IP: ip(1), Since: old, Rank: 0},
		{IP: ip(2), Since: young, Rank: 5},
		{IP: ip(3), Since: old, Rank: 1},
		{IP: ip(4), Since: young.Add(time.Millisecond)},
		{IP: ip(5), Since: young.Add(time.Millisecond)},
	}
	d = Plan(Input{Now: t0, Free: free, Targets: tg, Capacity: 100})
	if diff := cmp.Diff(ips(1, 3), d.Release, cmpopts.EquateComparable(netip.Addr{})); diff != "" {
		t.Errorf("release (-want +got):\n%s", diff)
	}
	if want := young.Add(time.Minute); !d.RecheckAt.Equal(want) {
		t.Errorf("RecheckAt = %s, want %s", d.RecheckAt, want)
	}
}
