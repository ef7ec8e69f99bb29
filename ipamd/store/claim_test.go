package store

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestQuarantine checks which states Quarantine changes, that a quarantined
// address is never assigned, and that Promote frees it at its end and not
// before.
func TestQuarantine(t *testing.T) {
	dir := t.TempDir()
	clk := &clock{now: t0}
	s := openTest(t, dir, clk)
	must(s.AddFree(nic0, ips(1, 2, 3, 4, 5, 6)...))(t)
	must(s.Assign(owner("a")))(t) // 1
	must(s.Assign(owner("b")))(t) // 2, then cooling
	_, _, err := s.Release(att("b"))
	mustDo(t, err)
	mustDo(t, s.MarkReleasing(ip(3)))
	must(s.Assign(owner("l")))(t) // 4, cooling, and the cloud lost it
	_, _, err = s.Release(att("l"))
	mustDo(t, err)
	must(s.Reconcile(onNIC(nic0, ips(1, 2, 3, 5, 6)...)))(t)
	clk.advance(time.Second)
	t1 := clk.Now()
	until := t1.Add(10 * time.Second)

	lostRec, _ := lookup(s, ip(4))
	if !lostRec.Lost() || lostRec.State != StateCooling {
		t.Fatalf("setup: %s is %+v, want cooling and lost", ip(4), lostRec)
	}
	got := must(s.Quarantine(until, map[netip.Addr]string{
		ip(1): nic0, ip(2): nic0, ip(3): nic0, ip(4): nic0, ip(5): nic0, ip(9): nic1,
	}))(t)
	if want := ips(2, 5, 9); !cmp.Equal(want, got, cmpAddr) {
		t.Errorf("Quarantine changed %v, want %v (assigned, releasing and lost untouched)", got, want)
	}
	quarantined := func(n int, iface string, since, until time.Time) Record {
		return Record{IP: ip(n), Interface: iface, State: StateQuarantined, Since: since, Until: until}
	}
	want := []Record{
		assigned(1, "a", t0),
		quarantined(2, nic0, t1, until),
		releasing(3, t0),
		lostRec,
		quarantined(5, nic0, t1, until),
		free(6, t0),
		quarantined(9, nic1, t1, until),
	}
	if diff := cmp.Diff(want, s.List(), cmpAddr); diff != "" {
		t.Errorf("records (-want +got):\n%s", diff)
	}
	if c := s.Counts(); c.Quarantined != 3 || c.Total() != 7 {
		t.Errorf("counts %+v, want 3 quarantined of 7", c)
	}
	// A shorter quarantine does not shorten; a longer one extends.
	if got := must(s.Quarantine(t1, map[netip.Addr]string{ip(5): nic0}))(t); len(got) != 0 {
		t.Errorf("a shorter quarantine changed %v", got)
	}
	must(s.Quarantine(until.Add(time.Minute), map[netip.Addr]string{ip(5): nic0}))(t)

	// Only the free address is assigned.
	r := must(s.Assign(owner("c")))(t)
	if r.IP != ip(6) {
		t.Errorf("Assign took %s, want the only free address %s", r.IP, ip(6))
	}
	if _, err := s.Assign(owner("d")); !errors.Is(err, ErrNoFree) {
		t.Errorf("Assign with only quarantined addresses left: %v, want ErrNoFree", err)
	}
	// Promote frees them at their end, not before, whatever the cooldown.
	if got := must(s.Promote(until.Add(-time.Millisecond), 0))(t); len(got) != 0 {
		t.Errorf("Promote before the end of the quarantine freed %v", got)
	}
	if got := must(s.Promote(until, time.Hour))(t); !cmp.Equal(ips(2, 9), got, cmpAddr) {
		t.Errorf("Promote at the end freed %v, want %v", got, ips(2, 9))
	}
	mustDo(t, s.Validate())
	want = s.List()
	mustDo(t, s.Close())
	s = openTest(t, dir, clk)
	if diff := cmp.Diff(want, s.List(), cmpAddr); diff != "" {
		t.Errorf("records after reopen (-want +got):\n%s", diff)
	}
	if r, _ := lookup(s, ip(5)); r.State != StateQuarantined || !r.Until.Equal(until.Add(time.Minute)) {
		t.Errorf("extended quarantine after reopen: %+v", r)
	}
}

// TestClaim runs Claim from known states: a live attachment's address is
// never left free, whatever the store says, and never taken from another
// attachment that the store has it assigned to.
func TestClaim(t *testing.T) {
	t1 := t0.Add(time.Minute)
	until := t1.Add(30 * time.Second)
	claim := func(n int, id string) Claim { return Claim{IP: ip(n), Owner: Owner{ContainerID: id, IfName: "eth0"}} }
	supersede := func(c Claim) Claim {
		c.Supersede = true
		return c
	}
	rebuilt := func(n int, id string) Record {
		return Record{IP: ip(n), Interface: nic0, State: StateAssigned, Owner: Owner{ContainerID: id, IfName: "eth0"}, Since: t1, AssignedAt: t1}
	}
	quarantined := func(n int) Record {
		return Record{IP: ip(n), Interface: nic0, State: StateQuarantined, Since: t1, Until: until}
	}
	lost := func(r Record) Record {
		r.LostAt = t0
		return r
	}
	tests := []struct {
		name          string
		before        []Record
		claims        []Claim
		after         []Record
		rebuilt       int
		conflicts     []string // claimed IP/holder
		displacedIPs  []netip.Addr
		superseded    []string // IP/former holder
		previousState []State
	}{
		{
			name:   "unknown address",
			claims: []Claim{{IP: ip(1), Interface: nic1, Owner: Owner{ContainerID: "a", IfName: "eth0"}}},
			after:  []Record{on(nic1, rebuilt(1, "a"))}, rebuilt: 1, previousState: []State{""},
		},
		{
			name: "free address", before: []Record{free(1, t0)}, claims: []Claim{claim(1, "a")},
			after: []Record{rebuilt(1, "a")}, rebuilt: 1, previousState: []State{StateFree},
		},
		{
			name: "quarantined address", before: []Record{quarantined(1)}, claims: []Claim{claim(1, "a")},
			after: []Record{rebuilt(1, "a")}, rebuilt: 1, previousState: []State{StateQuarantined},
		},
		{
			name: "releasing address", before: []Record{releasing(1, t0)}, claims: []Claim{claim(1, "a")},
			after: []Record{rebuilt(1, "a")}, rebuilt: 1, previousState: []State{StateReleasing},
		},
		{
			name:   "cooling address of the same attachment keeps the pod details",
			before: []Record{cooling(1, "a", t0, t0)}, claims: []Claim{claim(1, "a")},
			after:   []Record{{IP: ip(1), Interface: nic0, State: StateAssigned, Owner: owner("a"), Since: t1, AssignedAt: t1}},
			rebuilt: 1, previousState: []State{StateCooling},
		},
		{
			name:   "an address the cloud lost stays lost",
			before: []Record{lost(cooling(1, "b", t0, t0))}, claims: []Claim{claim(1, "a")},
			after: []Record{lost(rebuilt(1, "a"))}, rebuilt: 1, previousState: []State{StateCooling},
		},
		{
			name:   "cooling address of another attachment",
			before: []Record{cooling(1, "b", t0, t0)}, claims: []Claim{claim(1, "a")},
			after: []Record{rebuilt(1, "a")}, rebuilt: 1, previousState: []State{StateCooling},
		},
		{
			name: "already assigned to the claim's attachment", before: []Record{assigned(1, "a", t0)}, claims: []Claim{claim(1, "a")},
			after: []Record{assigned(1, "a", t0)},
		},
		{
			name: "assigned to another attachment", before: []Record{assigned(1, "b", t0)}, claims: []Claim{claim(1, "a")},
			after: []Record{assigned(1, "b", t0)}, conflicts: []string{"10.1.0.1/b"},
		},
		{
			name:   "a superseding claim takes an address assigned to another attachment",
			before: []Record{assigned(1, "b", t0)}, claims: []Claim{supersede(claim(1, "a"))},
			after: []Record{rebuilt(1, "a")}, rebuilt: 1, superseded: []string{"10.1.0.1/b"}, previousState: []State{StateAssigned},
		},
		{
			name:   "a superseding claim keeps a lost address lost",
			before: []Record{lost(assigned(1, "b", t0))}, claims: []Claim{supersede(claim(1, "a"))},
			after: []Record{lost(rebuilt(1, "a"))}, rebuilt: 1, superseded: []string{"10.1.0.1/b"}, previousState: []State{StateAssigned},
		},
		{
			name:   "a superseding claim leaves its former holder free to claim another address",
			before: []Record{assigned(1, "b", t0), free(2, t0)}, claims: []Claim{supersede(claim(1, "a")), claim(2, "b")},
			after: []Record{rebuilt(1, "a"), rebuilt(2, "b")}, rebuilt: 2, superseded: []string{"10.1.0.1/b"},
			previousState: []State{StateAssigned, StateFree},
		},
		{
			name:   "a superseding claim loses to an earlier claim of the same address",
			before: []Record{free(1, t0)}, claims: []Claim{claim(1, "a"), supersede(claim(1, "b"))},
			after: []Record{rebuilt(1, "a")}, rebuilt: 1, conflicts: []string{"10.1.0.1/a"}, previousState: []State{StateFree},
		},
		{
			name:   "the attachment held another address",
			before: []Record{assigned(1, "a", t0), free(2, t0)}, claims: []Claim{claim(2, "a")},
			after: []Record{quarantined(1), rebuilt(2, "a")}, rebuilt: 1, displacedIPs: ips(1), previousState: []State{StateFree},
		},
		{
			name:   "two claims of one address",
			before: []Record{free(1, t0)}, claims: []Claim{claim(1, "a"), claim(1, "b")},
			after: []Record{rebuilt(1, "a")}, rebuilt: 1, conflicts: []string{"10.1.0.1/a"}, previousState: []State{StateFree},
		},
		{
			name:   "a swap between two attachments",
			before: []Record{assigned(1, "a", t0), assigned(2, "b", t0)}, claims: []Claim{claim(1, "b"), claim(2, "a")},
			after: []Record{assigned(1, "a", t0), assigned(2, "b", t0)}, conflicts: []string{"10.1.0.1/a", "10.1.0.2/b"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			clk := &clock{now: t0}
			s := openTest(t, dir, clk)
			if len(tc.before) > 0 {
				s.mu.Lock()
				err := s.commitLocked(entry{Op: "test", Put: tc.before})
				s.mu.Unlock()
				mustDo(t, err)
			}
			mustDo(t, s.Validate())
			clk.now = t1
			res := must(s.Claim(until, tc.claims...))(t)
			if diff := cmp.Diff(sortRecords(tc.after), s.List(), cmpAddr); diff != "" {
				t.Errorf("records (-want +got):\n%s", diff)
			}
			if len(res.Rebuilt) != tc.rebuilt {
				t.Errorf("rebuilt %v, want %d", res.Rebuilt, tc.rebuilt)
			}
			var prev []State
			for _, r := range res.Previous {
				prev = append(prev, r.State)
			}
			if !cmp.Equal(tc.previousState, prev) {
				t.Errorf("previous states %v, want %v", prev, tc.previousState)
			}
			var conflicts []string
			for _, c := range res.Conflicts {
				conflicts = append(conflicts, c.Claim.IP.String()+"/"+c.Holder.ContainerID)
			}
			if !cmp.Equal(tc.conflicts, conflicts) {
				t.Errorf("conflicts %v, want %v", conflicts, tc.conflicts)
			}
			var displaced []netip.Addr
			for _, r := range res.Displaced {
				displaced = append(displaced, r.IP)
			}
			if !cmp.Equal(tc.displacedIPs, displaced, cmpAddr) {
				t.Errorf("displaced %v, want %v", displaced, tc.displacedIPs)
			}
			var superseded []string
			for _, r := range res.Superseded {
				superseded = append(superseded, r.IP.String()+"/"+r.Owner.ContainerID)
			}
			if !cmp.Equal(tc.superseded, superseded) {
				t.Errorf("superseded %v, want %v", superseded, tc.superseded)
			}
			mustDo(t, s.Validate())
			want := s.List()
			mustDo(t, s.Close())
			s = openTest(t, dir, clk)
			if diff := cmp.Diff(want, s.List(), cmpAddr); diff != "" {
				t.Errorf("records after reopen (-want +got):\n%s", diff)
			}
		})
	}
}

func TestClaimRefusesInvalid(t *testing.T) {
	s := openTest(t, t.TempDir(), &clock{now: t0})
	must(s.AddFree(nic0, ip(1)))(t)
	for _, c := range []Claim{
		{IP: netip.Addr{}, Owner: owner("a")},
		{IP: ip(1), Owner: Owner{ContainerID: "a"}},
	} {
		if _, err := s.Claim(t0, Claim{IP: ip(1), Owner: owner("b")}, c); err == nil {
			t.Errorf("Claim with %+v succeeded", c)
		}
	}
	if r, _ := lookup(s, ip(1)); r.State != StateFree {
		t.Errorf("a refused Claim changed %s to %s", ip(1), r.State)
	}
}

// TestClaimSeen: a claim made from a witness read before the address last
// changed (the attachment's DEL released it after the read) is stale and
// changes nothing; one read after the change is made.
func TestClaimSeen(t *testing.T) {
	s := openTest(t, t.TempDir(), &clock{now: t0})
	must(s.AddFree(nic0, ips(1, 2)...))(t)
	r := must(s.Assign(owner("a")))(t)
	seen := s.Seq()
	_, _, err := s.Release(att("a"))
	mustDo(t, err)
	res := must(s.Claim(t0, Claim{IP: r.IP, Owner: owner("a"), Seen: seen}))(t)
	if len(res.Stale) != 1 || len(res.Rebuilt) != 0 || len(res.Conflicts) != 0 {
		t.Errorf("claim read before the release: %+v, want stale", res)
	}
	if got, _ := lookup(s, r.IP); got.State != StateCooling {
		t.Errorf("%s after a stale claim: %s, want cooling", r.IP, got.State)
	}
	res = must(s.Claim(t0, Claim{IP: r.IP, Owner: owner("a"), Seen: s.Seq()}))(t)
	if len(res.Rebuilt) != 1 || len(res.Stale) != 0 {
		t.Errorf("claim read after the release: %+v, want rebuilt", res)
	}
	if got, _ := lookup(s, r.IP); got.State != StateAssigned {
		t.Errorf("%s after the claim: %s, want assigned", r.IP, got.State)
	}
	// A stale claim of an address another attachment holds is still a conflict.
	seen = s.Seq()
	_, _, err = s.Release(att("a"))
	mustDo(t, err)
	must(s.Promote(t0.Add(time.Hour), 0))(t)
	b := must(s.Assign(owner("b")))(t)
	res = must(s.Claim(t0, Claim{IP: b.IP, Owner: owner("c"), Seen: seen}))(t)
	if len(res.Conflicts) != 1 {
		t.Errorf("stale claim of %s, assigned to b: %+v, want a conflict", b.IP, res)
	}
}
